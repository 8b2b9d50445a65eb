//! Alert delivery: incidents opened, escalated and resolved go to the configured sinks — a
//! generic JSON webhook, a Slack-compatible webhook, PagerDuty Events v2 (trigger and resolve
//! with the incident as dedup key) — with a cooldown against flapping and each alert linking
//! to the dashboard. The decision of what to send is pure ([`Dispatcher`]); the task around
//! it only posts.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{AlertsConfig, SinkConfig, SinkKind};
use crate::detect::{Mode, Severity};
use crate::incident::{Event, EventKind, Incident};

/// Tries per delivery, and the first backoff (doubling).
const TRIES: u32 = 3;
const BACKOFF: Duration = Duration::from_millis(500);
/// Per-request timeout.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Trigger or resolve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Open (or escalate) an alert.
    Trigger,
    /// Close it.
    Resolve,
}

/// Decides, per sink, which incident events become alerts.
#[derive(Debug, Default)]
pub struct Dispatcher {
    /// Last trigger per (sink, incident key) in Unix ms, for the cooldown.
    last: HashMap<(usize, String), i64>,
    /// (sink, incident id) pairs triggered and not yet resolved.
    sent: HashSet<(usize, String)>,
}

fn key(i: &Incident) -> String {
    format!("{}/{}", i.mode, i.subject)
}

fn severity(i: &Incident) -> Severity {
    if i.severity == "critical" {
        Severity::Critical
    } else {
        Severity::Warning
    }
}

impl Dispatcher {
    /// What to send to each of `sinks` for `e` at `now_ms`: `(sink index, action)`.
    pub fn decide(
        &mut self,
        e: &Event,
        sinks: &[SinkConfig],
        cooldown: Duration,
        now_ms: i64,
    ) -> Vec<(usize, Action)> {
        let cool = i64::try_from(cooldown.as_millis()).unwrap_or(i64::MAX);
        let mut out = Vec::new();
        for (s, sink) in sinks.iter().enumerate() {
            let id = (s, e.incident.id.clone());
            match e.kind {
                EventKind::Opened | EventKind::Escalated => {
                    if severity(&e.incident) < sink.min_severity
                        || (self.sent.contains(&id) && e.kind == EventKind::Opened)
                    {
                        continue;
                    }
                    let k = (s, key(&e.incident));
                    // A new incident for a key that alerted moments ago is flapping: the first
                    // alert stands. An escalation always goes out.
                    if e.kind == EventKind::Opened
                        && self.last.get(&k).is_some_and(|&t| now_ms - t < cool)
                    {
                        continue;
                    }
                    self.last.insert(k, now_ms);
                    self.sent.insert(id);
                    out.push((s, Action::Trigger));
                }
                EventKind::Resolved => {
                    if self.sent.remove(&id) {
                        out.push((s, Action::Resolve));
                    }
                }
                EventKind::Updated => {}
            }
        }
        out
    }
}

/// The dashboard link of an incident.
pub fn link(base: &str, i: &Incident) -> String {
    format!("{}/#incident={}", base.trim_end_matches('/'), i.id)
}

/// The body a sink of `kind` receives.
pub fn body(
    kind: SinkKind,
    action: Action,
    i: &Incident,
    link: &str,
    routing_key: Option<&str>,
) -> Value {
    let title = Mode::parse(&i.mode).map_or_else(|| i.mode.clone(), |m| m.title().to_owned());
    let status = match action {
        Action::Trigger => "firing",
        Action::Resolve => "resolved",
    };
    match kind {
        SinkKind::Webhook => json!({
            "status": status,
            "incident": i,
            "title": title,
            "link": link,
        }),
        SinkKind::Slack => {
            let icon = match (action, i.severity.as_str()) {
                (Action::Resolve, _) => ":white_check_mark:",
                (_, "critical") => ":red_circle:",
                _ => ":large_orange_circle:",
            };
            let facts: Vec<String> = i.evidence["facts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| f["detail"].as_str().map(|d| format!("• {d}")))
                .collect();
            let mut text = format!(
                "{icon} *{}* — {title} on `{}` ({})\n{}\n",
                status.to_uppercase(),
                i.subject,
                i.severity,
                i.summary
            );
            if !facts.is_empty() {
                text.push_str(&facts.join("\n"));
                text.push('\n');
            }
            if action == Action::Trigger {
                text.push_str(&format!("_Action:_ {}\n", i.action));
            }
            text.push_str(&format!("<{link}|Open in Candor>"));
            json!({ "text": text })
        }
        SinkKind::Pagerduty => {
            let mut v = json!({
                "routing_key": routing_key.unwrap_or_default(),
                "event_action": match action { Action::Trigger => "trigger", Action::Resolve => "resolve" },
                "dedup_key": format!("candor-{}", i.id),
            });
            if action == Action::Trigger {
                v["payload"] = json!({
                    "summary": truncate(&format!("{title} on {}: {}", i.subject, i.summary), 1024),
                    "source": "candor",
                    "severity": if i.severity == "critical" { "critical" } else { "warning" },
                    "component": i.provider.clone().unwrap_or_else(|| i.subject.clone()),
                    "class": i.mode,
                    "custom_details": {
                        "evidence": i.evidence,
                        "action": i.action,
                        "onset_ms": i.onset_ms,
                    },
                });
                v["links"] = json!([{ "href": link, "text": "Open in Candor" }]);
            }
            v
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// Delivers alerts until `stop` (then drains what is queued).
pub async fn run(
    cfg: AlertsConfig,
    dashboard: String,
    client: reqwest::Client,
    mut rx: mpsc::Receiver<Event>,
    stop: CancellationToken,
) {
    let mut d = Dispatcher::default();
    loop {
        let e = tokio::select! {
            e = rx.recv() => match e { Some(e) => e, None => return },
            () = stop.cancelled() => match rx.try_recv() { Ok(e) => e, Err(_) => return },
        };
        let now = crate::observation::unix_ms_now();
        let link = link(&dashboard, &e.incident);
        for (s, action) in d.decide(&e, &cfg.sinks, cfg.cooldown, now) {
            let Some(sink) = cfg.sinks.get(s) else {
                continue;
            };
            let body = body(
                sink.kind,
                action,
                &e.incident,
                &link,
                sink.routing_key.as_ref().map(|k| k.expose()),
            );
            deliver(&client, sink, &body, &e.incident.id).await;
        }
    }
}

async fn deliver(client: &reqwest::Client, sink: &SinkConfig, body: &Value, id: &str) {
    let mut wait = BACKOFF;
    for attempt in 1..=TRIES {
        let sent = client
            .post(sink.url.expose())
            .timeout(TIMEOUT)
            .json(body)
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => return,
            // The URL is a secret: say which sink kind and what happened, never where.
            Ok(r) => {
                tracing::warn!(sink = ?sink.kind, incident = id, status = r.status().as_u16(), attempt, "alert sink refused the alert")
            }
            Err(e) => {
                tracing::warn!(sink = ?sink.kind, incident = id, error = %e.without_url(), attempt, "alert delivery failed")
            }
        }
        if attempt < TRIES {
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
    }
}

#[cfg(test)]
mod tests;
