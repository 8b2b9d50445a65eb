//! Incidents open on a finding, escalate, keep their onset, and resolve after a quiet spell.

use std::time::Duration;

use super::*;
use crate::detect::{Fact, Finding, Mode, Severity};

fn finding(mode: Mode, subject: &str, severity: Severity, onset: i64) -> Finding {
    Finding {
        mode,
        subject: subject.into(),
        provider: Some(subject.into()),
        severity,
        onset_unix_ms: onset,
        summary: format!("{} on {subject}", mode.as_str()),
        facts: vec![Fact::new("x", 1.0, "ratio", "one fact".into())],
        action: "act".into(),
        root_cause: None,
    }
}

const QUIET: Duration = Duration::from_secs(10);

#[test]
fn a_finding_opens_escalates_and_resolves_one_incident() {
    let mut inc = Incidents::default();
    let f = finding(Mode::HardwareDegradation, "b", Severity::Warning, 900);
    let ev = inc.step(1_000, std::slice::from_ref(&f), QUIET);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].kind, EventKind::Opened);
    let id = ev[0].incident.id.clone();
    assert_eq!(
        ev[0].incident.onset_ms, 900,
        "onset is when the signal moved"
    );
    // Seen again: no new incident; evidence history every few seconds.
    assert!(inc.step(1_500, std::slice::from_ref(&f), QUIET).is_empty());
    let ev = inc.step(7_000, std::slice::from_ref(&f), QUIET);
    assert_eq!(
        ev.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [EventKind::Updated]
    );
    // Worse: escalated, same incident.
    let worse = finding(Mode::HardwareDegradation, "b", Severity::Critical, 950);
    let ev = inc.step(8_000, std::slice::from_ref(&worse), QUIET);
    assert_eq!(ev[0].kind, EventKind::Escalated);
    assert_eq!(ev[0].incident.id, id);
    assert_eq!(ev[0].incident.severity, "critical");
    assert_eq!(
        inc.counts()
            .get(&("hardware_degradation".into(), "b".into())),
        Some(&1)
    );
    assert!(inc.open().any(
        |i| i.mode == Mode::HardwareDegradation.as_str() && i.provider.as_deref() == Some("b")
    ));
    // A short gap does not resolve it; a quiet spell does.
    assert!(inc.step(12_000, &[], QUIET).is_empty());
    let ev = inc.step(15_000, std::slice::from_ref(&worse), QUIET);
    assert!(ev.iter().all(|e| e.kind == EventKind::Updated));
    let ev = inc.step(25_000, &[], QUIET);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].kind, EventKind::Resolved);
    assert_eq!(ev[0].incident.id, id);
    assert_eq!(ev[0].incident.resolved_ms, Some(25_000));
    assert_eq!(inc.open().count(), 0);
    // The same failure later is a new incident.
    let ev = inc.step(40_000, std::slice::from_ref(&f), QUIET);
    assert_eq!(ev[0].kind, EventKind::Opened);
    assert_ne!(ev[0].incident.id, id);
}

#[test]
fn modes_and_subjects_are_separate_incidents() {
    let mut inc = Incidents::default();
    let ev = inc.step(
        1_000,
        &[
            finding(Mode::BatchQueueDeadlock, "a", Severity::Critical, 1),
            finding(Mode::BatchQueueDeadlock, "b", Severity::Critical, 1),
            finding(Mode::ErrorBurst, "a", Severity::Warning, 1),
        ],
        QUIET,
    );
    assert_eq!(ev.len(), 3);
    assert_eq!(inc.open().count(), 3);
}
