//! Incidents: findings open, update and resolve them. One incident per failure mode and
//! subject; a finding absent for `resolve_after` resolves it. Pure: the health task steps it
//! with each tick's findings and Unix `now_ms`, and forwards the events to the request-log
//! database and the alert sinks.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::detect::{Finding, Severity};

/// How often an open incident's evidence is written to its history while it changes.
const HISTORY_EVERY_MS: i64 = 5_000;

/// An incident as stored and served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// Unique id.
    pub id: String,
    /// Failure mode name.
    pub mode: String,
    /// Provider id or `gateway`.
    pub subject: String,
    /// The provider, when about one.
    pub provider: Option<String>,
    /// `warning` or `critical` (the highest it reached while open).
    pub severity: String,
    /// `open` or `resolved`.
    pub state: String,
    /// When the signal began to move (Unix ms).
    pub onset_ms: i64,
    /// When the incident opened.
    pub opened_ms: i64,
    /// Last update.
    pub updated_ms: i64,
    /// When it resolved.
    pub resolved_ms: Option<i64>,
    /// Latest summary.
    pub summary: String,
    /// Suggested action.
    pub action: String,
    /// Latest evidence (the finding's facts and root cause).
    pub evidence: serde_json::Value,
    /// Evidence over time, oldest first (filled when read with history).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryEntry>,
}

/// One entry of an incident's evidence history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// When (Unix ms).
    pub at_ms: i64,
    /// `opened`, `updated`, `escalated` or `resolved`.
    pub kind: String,
    /// Summary then.
    pub summary: String,
    /// Evidence then.
    pub evidence: serde_json::Value,
}

/// What happened to an incident at a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Newly open.
    Opened,
    /// Still open; evidence refreshed.
    Updated,
    /// Still open, now critical.
    Escalated,
    /// Closed.
    Resolved,
}

impl EventKind {
    /// Name in storage and alerts.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Opened => "opened",
            EventKind::Updated => "updated",
            EventKind::Escalated => "escalated",
            EventKind::Resolved => "resolved",
        }
    }
}

/// An incident event: its kind and the incident after it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// The incident now.
    pub incident: Incident,
}

#[derive(Debug, Clone)]
struct Open {
    incident: Incident,
    last_seen_ms: i64,
    last_written_ms: i64,
    severity: Severity,
}

/// The open incidents, keyed by mode and subject.
#[derive(Debug, Clone)]
pub struct Incidents {
    open: BTreeMap<String, Open>,
    seq: u64,
    /// Drawn once per process: replicas that share one database never give two incidents
    /// opened in the same millisecond the same id.
    origin: u32,
}

impl Default for Incidents {
    fn default() -> Incidents {
        Incidents {
            open: BTreeMap::new(),
            seq: 0,
            origin: rand::random(),
        }
    }
}

fn evidence(f: &Finding) -> serde_json::Value {
    serde_json::json!({ "facts": f.facts, "root_cause": f.root_cause })
}

impl Incidents {
    /// Takes one tick's findings at `now_ms`; returns what opened, changed or resolved.
    pub fn step<'a>(
        &mut self,
        now_ms: i64,
        findings: impl IntoIterator<Item = &'a Finding>,
        resolve_after: Duration,
    ) -> Vec<Event> {
        let mut events = Vec::new();
        for f in findings {
            let key = f.key();
            match self.open.get_mut(&key) {
                Some(o) => {
                    o.last_seen_ms = now_ms;
                    let inc = &mut o.incident;
                    inc.summary.clone_from(&f.summary);
                    inc.action.clone_from(&f.action);
                    inc.evidence = evidence(f);
                    inc.updated_ms = now_ms;
                    if f.severity > o.severity {
                        o.severity = f.severity;
                        inc.severity = f.severity.as_str().into();
                        o.last_written_ms = now_ms;
                        events.push(Event {
                            kind: EventKind::Escalated,
                            incident: inc.clone(),
                        });
                    } else if now_ms - o.last_written_ms >= HISTORY_EVERY_MS {
                        o.last_written_ms = now_ms;
                        events.push(Event {
                            kind: EventKind::Updated,
                            incident: inc.clone(),
                        });
                    }
                }
                None => {
                    self.seq += 1;
                    let incident = Incident {
                        id: format!("{:x}-{:08x}-{}", now_ms, self.origin, self.seq),
                        mode: f.mode.as_str().into(),
                        subject: f.subject.clone(),
                        provider: f.provider.clone(),
                        severity: f.severity.as_str().into(),
                        state: "open".into(),
                        onset_ms: f.onset_unix_ms,
                        opened_ms: now_ms,
                        updated_ms: now_ms,
                        resolved_ms: None,
                        summary: f.summary.clone(),
                        action: f.action.clone(),
                        evidence: evidence(f),
                        history: Vec::new(),
                    };
                    events.push(Event {
                        kind: EventKind::Opened,
                        incident: incident.clone(),
                    });
                    self.open.insert(
                        key,
                        Open {
                            incident,
                            last_seen_ms: now_ms,
                            last_written_ms: now_ms,
                            severity: f.severity,
                        },
                    );
                }
            }
        }
        let quiet = i64::try_from(resolve_after.as_millis()).unwrap_or(i64::MAX);
        let gone: Vec<String> = self
            .open
            .iter()
            .filter(|(_, o)| now_ms - o.last_seen_ms >= quiet)
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            if let Some(mut o) = self.open.remove(&k) {
                o.incident.state = "resolved".into();
                o.incident.resolved_ms = Some(now_ms);
                o.incident.updated_ms = now_ms;
                o.incident.summary = format!("resolved: {}", o.incident.summary);
                events.push(Event {
                    kind: EventKind::Resolved,
                    incident: o.incident,
                });
            }
        }
        events
    }

    /// The open incidents.
    pub fn open(&self) -> impl Iterator<Item = &Incident> {
        self.open.values().map(|o| &o.incident)
    }

    /// Open incidents by (mode, provider or subject), for the gauge.
    pub fn counts(&self) -> BTreeMap<(String, String), u64> {
        let mut out = BTreeMap::new();
        for o in self.open.values() {
            let i = &o.incident;
            *out.entry((
                i.mode.clone(),
                i.provider.clone().unwrap_or_else(|| i.subject.clone()),
            ))
            .or_default() += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests;
