//! What each sink receives, and when: trigger once, escalate, resolve, no flapping.

use std::time::Duration;

use super::*;
use crate::config::Secret;

fn incident(id: &str, severity: &str, state: &str) -> Incident {
    Incident {
        id: id.into(),
        mode: "batch_queue_deadlock".into(),
        subject: "sim-c".into(),
        provider: Some("sim-c".into()),
        severity: severity.into(),
        state: state.into(),
        onset_ms: 1,
        opened_ms: 2,
        updated_ms: 3,
        resolved_ms: None,
        summary: "sim-c stopped producing tokens".into(),
        action: "restart it".into(),
        evidence: json!({"facts": [{"detail": "no token for 3.0 s"}], "root_cause": null}),
        history: Vec::new(),
    }
}

fn sink(kind: SinkKind, min: Severity) -> SinkConfig {
    SinkConfig {
        kind,
        url: Secret::for_tests("http://127.0.0.1:9/hook"),
        routing_key: Some(Secret::for_tests("rk")),
        min_severity: min,
    }
}

fn ev(kind: EventKind, i: Incident) -> Event {
    Event { kind, incident: i }
}

const COOL: Duration = Duration::from_secs(300);

#[test]
fn triggers_once_resolves_once_and_respects_severity() {
    let sinks = [
        sink(SinkKind::Webhook, Severity::Warning),
        sink(SinkKind::Pagerduty, Severity::Critical),
    ];
    let mut d = Dispatcher::default();
    let warn = incident("a", "warning", "open");
    assert_eq!(
        d.decide(&ev(EventKind::Opened, warn.clone()), &sinks, COOL, 0),
        [(0, Action::Trigger)]
    );
    assert!(
        d.decide(&ev(EventKind::Updated, warn), &sinks, COOL, 10)
            .is_empty()
    );
    // Escalated to critical: now PagerDuty hears of it.
    let crit = incident("a", "critical", "open");
    assert_eq!(
        d.decide(&ev(EventKind::Escalated, crit), &sinks, COOL, 20),
        [(0, Action::Trigger), (1, Action::Trigger)]
    );
    let resolved = incident("a", "critical", "resolved");
    assert_eq!(
        d.decide(&ev(EventKind::Resolved, resolved.clone()), &sinks, COOL, 30),
        [(0, Action::Resolve), (1, Action::Resolve)]
    );
    assert!(
        d.decide(&ev(EventKind::Resolved, resolved), &sinks, COOL, 40)
            .is_empty()
    );
}

#[test]
fn a_flapping_incident_does_not_page_again_within_the_cooldown() {
    let sinks = [sink(SinkKind::Slack, Severity::Warning)];
    let mut d = Dispatcher::default();
    assert_eq!(
        d.decide(
            &ev(EventKind::Opened, incident("a", "warning", "open")),
            &sinks,
            COOL,
            0
        )
        .len(),
        1
    );
    assert_eq!(
        d.decide(
            &ev(EventKind::Resolved, incident("a", "warning", "resolved")),
            &sinks,
            COOL,
            1_000
        )
        .len(),
        1
    );
    // Same mode and subject a minute later: suppressed, and so is its resolve.
    assert!(
        d.decide(
            &ev(EventKind::Opened, incident("b", "warning", "open")),
            &sinks,
            COOL,
            60_000
        )
        .is_empty()
    );
    assert!(
        d.decide(
            &ev(EventKind::Resolved, incident("b", "warning", "resolved")),
            &sinks,
            COOL,
            70_000
        )
        .is_empty()
    );
    // After the cooldown it alerts again.
    assert_eq!(
        d.decide(
            &ev(EventKind::Opened, incident("c", "warning", "open")),
            &sinks,
            COOL,
            400_000
        )
        .len(),
        1
    );
}

#[test]
fn bodies_follow_each_sink_format() {
    let i = incident("abc", "critical", "open");
    let link = link("http://candor:8080/", &i);
    assert_eq!(link, "http://candor:8080/#incident=abc");
    let pd = body(SinkKind::Pagerduty, Action::Trigger, &i, &link, Some("rk"));
    assert_eq!(pd["routing_key"], "rk");
    assert_eq!(pd["event_action"], "trigger");
    assert_eq!(pd["dedup_key"], "candor-abc");
    assert_eq!(pd["payload"]["severity"], "critical");
    assert_eq!(pd["payload"]["source"], "candor");
    assert_eq!(pd["links"][0]["href"], link);
    let pd = body(SinkKind::Pagerduty, Action::Resolve, &i, &link, Some("rk"));
    assert_eq!(pd["event_action"], "resolve");
    assert!(
        pd.get("payload").is_none(),
        "resolve carries only the dedup key"
    );
    let slack = body(SinkKind::Slack, Action::Trigger, &i, &link, None);
    let text = slack["text"].as_str().unwrap();
    assert!(text.contains("batch-queue deadlock"), "{text}");
    assert!(text.contains("no token for 3.0 s"), "{text}");
    assert!(text.contains(&link));
    let hook = body(SinkKind::Webhook, Action::Trigger, &i, &link, None);
    assert_eq!(hook["status"], "firing");
    assert_eq!(hook["incident"]["id"], "abc");
}
