//! Admission: a gateway-wide limit on client requests in flight. Beyond it a request is shed
//! at once with a 503 and `retry-after`, so overload shows as a clear answer instead of a
//! queue that grows until clients time out.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// The in-flight count and its limit.
#[derive(Debug)]
pub struct Admission {
    limit: usize,
    in_flight: AtomicUsize,
    shed: AtomicU64,
}

/// One admitted request; its slot is given back when the permit is dropped (for a stream,
/// when the client's body ends or the client goes away).
#[derive(Debug)]
pub struct Permit(Arc<Admission>);

impl Admission {
    /// A gate admitting at most `limit` requests at once.
    pub fn new(limit: usize) -> Arc<Admission> {
        Arc::new(Admission {
            limit,
            in_flight: AtomicUsize::new(0),
            shed: AtomicU64::new(0),
        })
    }

    /// Takes a slot, or counts the request as shed when all `limit` are taken.
    pub fn try_admit(self: &Arc<Self>) -> Option<Permit> {
        let taken = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if taken >= self.limit {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.shed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(Permit(Arc::clone(self)))
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Appends this gate's Prometheus series to a `/metrics` page.
    pub fn render(&self, out: &mut String) {
        let _ = write!(
            out,
            "# HELP candor_requests_shed_total Client requests answered 503 at once because \
             max_in_flight requests were already in flight.\n\
             # TYPE candor_requests_shed_total counter\n\
             candor_requests_shed_total {}\n\
             # HELP candor_requests_in_flight Client requests admitted and not yet finished.\n\
             # TYPE candor_requests_in_flight gauge\n\
             candor_requests_in_flight {}\n\
             # HELP candor_requests_in_flight_limit The max_in_flight limit.\n\
             # TYPE candor_requests_in_flight_limit gauge\n\
             candor_requests_in_flight_limit {}\n",
            self.shed.load(Ordering::Relaxed),
            self.in_flight.load(Ordering::Relaxed),
            self.limit
        );
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_limit_sheds_beyond_and_frees_slots_on_drop() {
        let gate = Admission::new(2);
        let a = gate.try_admit();
        let b = gate.try_admit();
        assert!(a.is_some() && b.is_some());
        assert!(gate.try_admit().is_none());
        assert!(gate.try_admit().is_none());
        drop(a);
        let c = gate.try_admit();
        assert!(c.is_some());
        let mut page = String::new();
        gate.render(&mut page);
        assert!(page.contains("candor_requests_shed_total 2\n"), "{page}");
        assert!(page.contains("candor_requests_in_flight 2\n"), "{page}");
        drop((b, c));
        let mut page = String::new();
        gate.render(&mut page);
        assert!(page.contains("candor_requests_in_flight 0\n"), "{page}");
    }
}
