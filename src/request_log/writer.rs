//! The one writer of the request log: takes the records queued every flush interval (without
//! being woken by each), writes them in transactions of at most `batch_size` rows, writes
//! incident events as they come, applies retention, and flushes on close.
//!
//! While the database cannot be written (PostgreSQL unreachable, a SQLite disk full) the
//! writer holds what it was sent, up to `buffer` rows, and writes it in order once the
//! database is back, reconnecting with a growing pause between tries; only rows beyond the
//! buffer, or rows the database refuses outright, are lost (and counted).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::Duration;

use tokio::time::Instant;

use super::{LogSender, LogStatus, RequestRecord, Store, StoreError};
use crate::config::{LogDatabase, RequestLogConfig};
use crate::incident::Event;
use crate::observation::unix_ms_now;

/// What the writer thread is told besides records: rare, so it waits on these (and is woken
/// by each) while records pile up in their own queue without waking it.
#[derive(Debug)]
pub(super) enum Control {
    /// An incident event (written at once).
    Incident(Box<Event>),
    /// Flush what is queued, then stop.
    Close,
}

/// The writer's half: run it on its own thread with [`Writer::run`].
#[derive(Debug)]
pub struct Writer {
    store: Option<Store>,
    records: Receiver<Box<RequestRecord>>,
    control: Receiver<Control>,
    config: RequestLogConfig,
    close: SyncSender<Control>,
    status: Arc<LogStatus>,
    /// Rows taken from the queue, not yet written.
    pending: VecDeque<RequestRecord>,
    /// Incident events not yet written.
    events: VecDeque<Event>,
    retry: Retry,
}

/// How often retention runs.
const RETENTION_EVERY: Duration = Duration::from_secs(60);
/// Incident events and the close request that may wait for the writer.
const CONTROL_QUEUE: usize = 1024;
/// Incident events held while the database cannot be written.
const EVENT_BUFFER: usize = 4096;
/// The longest pause between two tries at a database that fails.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// When to try the database again after a failure.
#[derive(Debug, Default)]
struct Retry {
    at: Option<Instant>,
    pause: Duration,
}

impl Retry {
    fn due(&self, now: Instant) -> bool {
        self.at.is_none_or(|t| now >= t)
    }

    /// A try failed at `now`: wait twice as long as last time (from `first`), at most
    /// `MAX_BACKOFF` (or `first`, when that is longer).
    fn failed(&mut self, now: Instant, first: Duration) {
        self.pause = (self.pause * 2).max(first).min(MAX_BACKOFF.max(first));
        self.at = Some(now + self.pause);
    }

    fn succeeded(&mut self) {
        *self = Retry::default();
    }
}

impl Writer {
    /// Opens the database and returns the writer and the request path's sender. A SQLite
    /// file that cannot be opened, or a PostgreSQL URL that cannot be parsed, is an error; a
    /// PostgreSQL server that cannot be reached now is not (serving does not wait on it):
    /// the writer holds rows and connects when it can, and the log reads failing meanwhile.
    pub fn open(config: &RequestLogConfig) -> Result<(Writer, LogSender), StoreError> {
        let status = Arc::new(LogStatus::default());
        let store = match Store::open(&config.database, config.retention) {
            Ok(store) => Some(store),
            Err(error)
                if matches!(config.database, LogDatabase::Postgres(_)) && error.is_transient() =>
            {
                tracing::error!(%error, "request log database unreachable; holding rows until it is back");
                status.write_failed(unix_ms_now());
                None
            }
            Err(error) => return Err(error),
        };
        let (records_tx, records) = sync_channel(config.queue);
        let (control_tx, control) = sync_channel(CONTROL_QUEUE);
        let sender = LogSender {
            records: records_tx,
            control: control_tx.clone(),
            status: Arc::clone(&status),
        };
        Ok((
            Writer {
                store,
                records,
                control,
                config: config.clone(),
                close: control_tx,
                status,
                pending: VecDeque::new(),
                events: VecDeque::new(),
                retry: Retry::default(),
            },
            sender,
        ))
    }

    /// A handle that asks the writer to flush and stop.
    pub fn closer(&self) -> Closer {
        Closer(self.close.clone())
    }

    /// Writes until closed. Blocking: run on a dedicated thread.
    ///
    /// The writer never waits on the record queue: a receiver blocked there is woken (a futex
    /// call and a context switch) by every record the request path sends. It waits on the
    /// control queue for at most a flush interval instead, then takes every record queued —
    /// one wake per batch, and incidents still written the moment they arrive.
    pub fn run(mut self) -> Result<(), StoreError> {
        let mut last_retention: Option<Instant> = None;
        loop {
            let closing = self.receive();
            self.take_records();
            self.write(closing);
            if last_retention.is_none_or(|t| t.elapsed() >= RETENTION_EVERY) {
                last_retention = Some(Instant::now());
                self.retain();
            }
            if closing {
                let left = self.pending.len() + self.events.len();
                if left > 0 {
                    tracing::error!(
                        rows = left,
                        "request log closed with rows it could not write; they are lost"
                    );
                    self.status.count_lost(left);
                }
                return Ok(());
            }
        }
    }

    /// Waits up to a flush interval for control messages; true when told to close.
    fn receive(&mut self) -> bool {
        let mut closing = false;
        let mut next = match self.control.recv_timeout(self.config.flush_interval) {
            Ok(c) => Some(c),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                closing = true;
                None
            }
        };
        while let Some(c) = next {
            match c {
                Control::Incident(e) if self.events.len() < EVENT_BUFFER => {
                    self.events.push_back(*e);
                }
                Control::Incident(_) => self.status.count_lost(1),
                Control::Close => closing = true,
            }
            next = self.control.try_recv().ok();
        }
        closing
    }

    /// Moves every queued record into the buffer; beyond it, records are lost (counted).
    fn take_records(&mut self) {
        while let Ok(r) = self.records.try_recv() {
            if self.pending.len() < self.config.buffer {
                self.pending.push_back(*r);
            } else {
                self.status.count_lost(1);
            }
        }
        self.status.set_buffered(self.pending.len());
    }

    /// Writes incident events, then rows in batches, while the database takes them. With
    /// nothing to write, a log marked failing still tries to reach its database, so that
    /// it reads well again once the database is back even with no traffic.
    fn write(&mut self, closing: bool) {
        let now = Instant::now();
        let idle = self.pending.is_empty() && self.events.is_empty();
        if idle && self.status.failing_since().is_none() {
            return;
        }
        if !closing && !self.retry.due(now) {
            return;
        }
        if !self.connect() {
            return;
        }
        let Some(store) = self.store.as_mut() else {
            return;
        };
        let result = write_all(
            store,
            &mut self.events,
            &mut self.pending,
            &self.config,
            &self.status,
        );
        self.status.set_buffered(self.pending.len());
        match result {
            Ok(()) => {
                self.status.write_ok();
                self.retry.succeeded();
            }
            Err(error) => self.failed(&error),
        }
    }

    /// Opens the store again when it broke or never opened; false when that fails.
    fn connect(&mut self) -> bool {
        if self.store.as_ref().is_some_and(Store::is_broken) {
            self.store = None;
        }
        if self.store.is_none() {
            match Store::open(&self.config.database, self.config.retention) {
                Ok(store) => {
                    tracing::info!("request log database reachable again; writing what it held");
                    self.store = Some(store);
                }
                Err(error) => {
                    self.failed(&error);
                    return false;
                }
            }
        }
        true
    }

    fn failed(&mut self, error: &StoreError) {
        if self.status.failing_since().is_none() {
            tracing::error!(%error, buffered = self.pending.len(), "request log write failed; holding rows and retrying");
        }
        self.status.write_failed(unix_ms_now());
        self.retry
            .failed(Instant::now(), self.config.flush_interval);
    }

    fn retain(&mut self) {
        let Some(store) = self.store.as_mut() else {
            return;
        };
        let cutoff =
            unix_ms_now() - i64::try_from(self.config.retention.as_millis()).unwrap_or(i64::MAX);
        match store.delete_before(cutoff) {
            Ok(removed) if removed == super::Removed::default() => {}
            Ok(removed) => tracing::info!(
                rows = removed.rows,
                partitions = removed.partitions,
                "request log retention removed old rows"
            ),
            Err(error) => tracing::warn!(%error, "request log retention failed"),
        }
    }
}

/// Writes `events`, then `pending` in batches, removing what was written; stops at the
/// first failure that may pass (what is left stays for the next try). Rows or events the
/// database refuses outright are dropped and counted, so one bad row cannot hold the rest.
fn write_all(
    store: &mut Store,
    events: &mut VecDeque<Event>,
    pending: &mut VecDeque<RequestRecord>,
    config: &RequestLogConfig,
    status: &LogStatus,
) -> Result<(), StoreError> {
    while let Some(e) = events.front() {
        match store.write_incident(e) {
            Ok(()) => {}
            Err(error) if error.is_transient() => return Err(error),
            Err(error) => {
                tracing::error!(%error, incident = %e.incident.id, "incident write refused; event lost");
                status.count_lost(1);
            }
        }
        events.pop_front();
    }
    while !pending.is_empty() {
        let n = pending.len().min(config.batch_size);
        let batch = &pending.make_contiguous()[..n];
        match store.insert(batch) {
            Ok(()) => status.count_written(n),
            Err(error) if error.is_transient() => return Err(error),
            Err(error) => {
                tracing::error!(%error, rows = n, "request log write refused; rows lost");
                status.count_lost(n);
            }
        }
        pending.drain(..n);
    }
    Ok(())
}

/// Asks the writer to flush and stop.
#[derive(Debug, Clone)]
pub struct Closer(SyncSender<Control>);

impl Closer {
    /// Sends the close request (waits for queue space: shutdown may block briefly).
    pub fn close(&self) {
        let _ = self.0.send(Control::Close);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_to_a_ceiling_and_start_over_after_a_success() {
        let t0 = Instant::now();
        let first = Duration::from_millis(200);
        let mut r = Retry::default();
        assert!(r.due(t0));
        r.failed(t0, first);
        assert!(!r.due(t0 + Duration::from_millis(199)));
        assert!(r.due(t0 + first));
        let mut pauses = Vec::new();
        for _ in 0..8 {
            r.failed(t0, first);
            pauses.push(r.pause);
        }
        assert_eq!(pauses[0], Duration::from_millis(400));
        assert_eq!(pauses[1], Duration::from_millis(800));
        assert_eq!(*pauses.last().unwrap(), MAX_BACKOFF);
        r.succeeded();
        assert!(r.due(t0));
        r.failed(t0, first);
        assert_eq!(r.pause, first);
        // A flush interval longer than the ceiling is the pause, not a panic.
        let mut slow = Retry::default();
        slow.failed(t0, Duration::from_secs(10));
        slow.failed(t0, Duration::from_secs(10));
        assert_eq!(slow.pause, Duration::from_secs(10));
    }
}
