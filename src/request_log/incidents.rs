//! Which incidents to read, in either database's SQL, and one entry of an incident's
//! evidence history from its row.

use serde::Deserialize;

use super::StoreError;
use super::columns::{Cells, Dialect, INCIDENT_COLUMNS, Val, Where};
use crate::incident::HistoryEntry;

/// Which incidents to read (`/api/incidents?state=&provider=&mode=&since=&limit=`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentFilter {
    /// `open` or `resolved`.
    pub state: Option<String>,
    /// Only this provider.
    pub provider: Option<String>,
    /// Only this failure mode.
    pub mode: Option<String>,
    /// Open now or active within the last … (e.g. `30m`).
    #[serde(default, with = "humantime_serde")]
    pub since: Option<std::time::Duration>,
    /// Also return each incident's evidence history.
    #[serde(default)]
    pub history: bool,
    /// At most this many (default 100).
    pub limit: Option<u32>,
    /// Only this incident.
    #[serde(skip)]
    pub id: Option<String>,
}

impl IncidentFilter {
    /// The whole `SELECT` in `dialect` and its bound values: newest first.
    pub(super) fn to_sql(&self, now_ms: i64, dialect: Dialect) -> (String, Vec<Val>) {
        let mut w = Where::new(dialect);
        if let Some(id) = &self.id {
            w.bind("id =", id.clone());
        }
        if let Some(s) = &self.state {
            w.bind("state =", s.clone());
        }
        if let Some(p) = &self.provider {
            w.bind("provider =", p.clone());
        }
        if let Some(m) = &self.mode {
            w.bind("mode =", m.clone());
        }
        if let Some(since) = self.since {
            let cutoff = now_ms - i64::try_from(since.as_millis()).unwrap_or(i64::MAX);
            w.bind("updated_ms >=", cutoff);
        }
        let (filter, args) = w.finish();
        let sql = format!(
            "SELECT {INCIDENT_COLUMNS} FROM incidents {filter} ORDER BY opened_ms DESC LIMIT {}",
            self.limit.unwrap_or(100).min(1000)
        );
        (sql, args)
    }

    /// The filter that reads one incident with its history.
    pub(super) fn one(id: &str) -> IncidentFilter {
        IncidentFilter {
            id: Some(id.to_owned()),
            history: true,
            ..IncidentFilter::default()
        }
    }
}

/// The query for one incident's history, its id bound first.
pub(super) fn history_sql(dialect: Dialect) -> String {
    format!(
        "SELECT at_ms, kind, summary, evidence FROM incident_events WHERE incident_id = {} ORDER BY at_ms",
        dialect.arg(1)
    )
}

/// One history entry from a row of `at_ms, kind, summary, evidence`.
pub(super) fn history_from(c: &impl Cells) -> Result<HistoryEntry, StoreError> {
    let evidence = c.text(3)?.unwrap_or_default();
    Ok(HistoryEntry {
        at_ms: c.int(0)?.unwrap_or(0),
        kind: c.text(1)?.unwrap_or_default(),
        summary: c.text(2)?.unwrap_or_default(),
        evidence: serde_json::from_str(&evidence)
            .map_err(|e| StoreError::Corrupt("an incident's history".into(), e))?,
    })
}
