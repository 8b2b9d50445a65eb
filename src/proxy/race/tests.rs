use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::sleep;

use super::*;

fn error(retryable: bool) -> CallError {
    CallError {
        kind: "server_error",
        status: Some(503),
        blame: Blame::Upstream,
        retryable,
        message: "upstream answered 503".into(),
        body: None,
        retry_after: None,
    }
}

/// Sets its flag when dropped: proves a losing attempt was cancelled.
struct Dropped(Arc<AtomicBool>);
impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn the_first_answer_wins_and_the_other_attempt_is_cancelled() {
    let cancelled = Arc::new(AtomicBool::new(false));
    let guard = Dropped(Arc::clone(&cancelled));
    let fired = AtomicBool::new(true);
    let slow = async move {
        let _guard = guard;
        sleep(Duration::from_secs(10)).await;
        Ok::<u32, CallError>(1)
    };
    let hedge = async {
        sleep(Duration::from_millis(300)).await;
        Ok(2)
    };
    let started = tokio::time::Instant::now();
    let end = race_pair(slow, hedge, &fired).await;
    assert!(matches!(end, PairEnd::Second(Ok(2))), "{end:?}");
    assert_eq!(started.elapsed(), Duration::from_millis(300));
    assert!(
        cancelled.load(Ordering::SeqCst),
        "the slow attempt was dropped"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failure_before_the_hedge_went_out_ends_the_race() {
    let fired = AtomicBool::new(false);
    let failing = async { Err::<u32, _>(error(true)) };
    let hedge = std::future::pending();
    assert!(matches!(
        race_pair(failing, hedge, &fired).await,
        PairEnd::First(Err(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn after_the_hedge_went_out_one_failure_waits_for_the_other() {
    let fired = AtomicBool::new(true);
    let failing = async { Err::<u32, _>(error(true)) };
    let hedge = async {
        sleep(Duration::from_millis(50)).await;
        Ok(7)
    };
    assert!(matches!(
        race_pair(failing, hedge, &fired).await,
        PairEnd::Second(Ok(7))
    ));
    let a = async { Err::<u32, _>(error(true)) };
    let b = async {
        sleep(Duration::from_millis(50)).await;
        Err(error(true))
    };
    assert!(matches!(race_pair(a, b, &fired).await, PairEnd::Both(_, _)));
}

#[tokio::test(start_paused = true)]
async fn a_client_error_ends_the_race_at_once() {
    let fired = AtomicBool::new(true);
    let bad = async { Err::<u32, _>(error(false)) };
    let hedge = async {
        sleep(Duration::from_secs(1)).await;
        Ok(1)
    };
    assert!(matches!(
        race_pair(bad, hedge, &fired).await,
        PairEnd::First(Err(e)) if !e.retryable
    ));
}

#[test]
fn a_timeout_the_clients_deadline_forced_is_not_the_providers_fault() {
    let now = Instant::now();
    let timeout = CallError {
        kind: "timeout_ttft",
        blame: Blame::Upstream,
        ..error(true)
    };
    let before = timeout
        .clone()
        .blame_deadline(Some(now + Duration::from_secs(1)), now);
    assert_eq!(
        before.blame,
        Blame::Upstream,
        "the deadline had not run out"
    );
    let after = timeout.clone().blame_deadline(Some(now), now);
    assert_eq!(
        (after.kind, after.blame),
        ("timeout_deadline", Blame::Client)
    );
    assert!(after.is_timeout(), "still a timeout for the 504");
    assert!(!after.outcome().is_upstream_failure());
    assert_eq!(timeout.blame_deadline(None, now).blame, Blame::Upstream);
    // Other failures keep their blame whatever the deadline.
    assert_eq!(
        error(true).blame_deadline(Some(now), now).blame,
        Blame::Upstream
    );
}
