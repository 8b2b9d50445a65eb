//! Configuration reload without a restart: what a reload did (`Outcome`), the record `/health`
//! and `/metrics` show (`Status`), and the handle the admin API asks through (`Control`).
//! The reload itself runs in `app` (it restarts scrapers, so it lives where tasks start):
//! the file is read and validated in full first, and only a valid file changes anything.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::upstream::{Change, Upstreams};

/// How a reload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The new file is in force.
    Applied,
    /// The file was invalid; nothing changed.
    Refused,
}

impl Verdict {
    /// The label in `/metrics`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Applied => "applied",
            Verdict::Refused => "refused",
        }
    }
}

/// What one reload did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    /// When, Unix ms.
    pub at_unix_ms: i64,
    /// Applied or refused.
    pub result: Verdict,
    /// Every problem of a refused file, with its path in the file.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// Providers that joined (or came back).
    pub added: Vec<String>,
    /// Providers taken out (their open streams finish).
    pub removed: Vec<String>,
    /// Providers whose settings changed on the same server: health, baselines and
    /// incidents carried on.
    pub updated: Vec<String>,
    /// Providers whose URL or models changed: their health started afresh.
    pub replaced: Vec<String>,
    /// Sections that changed in the file but take effect only after a restart.
    pub restart_required: Vec<String>,
}

impl Outcome {
    /// A refused reload.
    pub fn refused(at_unix_ms: i64, problems: Vec<String>) -> Outcome {
        Outcome {
            at_unix_ms,
            result: Verdict::Refused,
            problems,
            added: Vec::new(),
            removed: Vec::new(),
            updated: Vec::new(),
            replaced: Vec::new(),
            restart_required: Vec::new(),
        }
    }

    /// An applied reload whose provider changes were `changes` (slots of `upstreams`).
    pub fn applied(
        at_unix_ms: i64,
        upstreams: &Upstreams,
        changes: &[Change],
        restart_required: Vec<String>,
    ) -> Outcome {
        let mut o = Outcome {
            result: Verdict::Applied,
            restart_required,
            ..Outcome::refused(at_unix_ms, Vec::new())
        };
        for &c in changes {
            let id = upstreams
                .get(c.index())
                .map(|p| p.config.id.clone())
                .unwrap_or_default();
            match c {
                Change::Added(_) => o.added.push(id),
                Change::Removed(_) => o.removed.push(id),
                Change::Updated(_) => o.updated.push(id),
                Change::Replaced(_) => o.replaced.push(id),
            }
        }
        o
    }
}

/// Reloads so far: the latest, and counts by result.
#[derive(Debug, Default)]
pub struct Status {
    last: Mutex<Option<Outcome>>,
    applied: AtomicU64,
    refused: AtomicU64,
}

impl Status {
    /// Records a reload.
    pub fn record(&self, outcome: &Outcome) {
        match outcome.result {
            Verdict::Applied => &self.applied,
            Verdict::Refused => &self.refused,
        }
        .fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last.lock() {
            *last = Some(outcome.clone());
        }
    }

    /// The latest reload, if any.
    pub fn last(&self) -> Option<Outcome> {
        self.last.lock().ok().and_then(|l| l.clone())
    }

    /// Appends the reload counters to a `/metrics` page.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = write!(
            out,
            "# HELP candor_config_reloads_total Configuration reloads (SIGHUP or POST \
             /api/config/reload), by result.\n\
             # TYPE candor_config_reloads_total counter\n\
             candor_config_reloads_total{{result=\"applied\"}} {}\n\
             candor_config_reloads_total{{result=\"refused\"}} {}\n",
            self.applied.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        );
    }
}

/// A request for a reload, answered with its outcome.
pub type Request = oneshot::Sender<Outcome>;

/// The admin API's way to ask for a reload: `None` when Candor was started without a file.
#[derive(Debug, Clone, Default)]
pub struct Control {
    /// Reloads so far.
    pub status: std::sync::Arc<Status>,
    /// Where reload requests go.
    pub requests: Option<mpsc::Sender<Request>>,
}

impl Control {
    /// Asks for a reload and waits for its outcome; `None` when reload is not available.
    pub async fn reload(&self) -> Option<Outcome> {
        let tx = self.requests.as_ref()?;
        let (reply, outcome) = oneshot::channel();
        tx.send(reply).await.ok()?;
        outcome.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_keeps_the_latest_outcome_and_counts_by_result() {
        let s = Status::default();
        s.record(&Outcome::refused(1, vec!["providers[0].id: bad".into()]));
        let mut ok = Outcome::refused(2, Vec::new());
        ok.result = Verdict::Applied;
        s.record(&ok);
        assert_eq!(s.last().unwrap().at_unix_ms, 2);
        let mut page = String::new();
        s.render(&mut page);
        assert!(page.contains("candor_config_reloads_total{result=\"applied\"} 1\n"));
        assert!(page.contains("candor_config_reloads_total{result=\"refused\"} 1\n"));
    }
}
