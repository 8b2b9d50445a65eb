//! Incidents in the request-log database: one row per incident (its latest state) and one
//! row per event (its evidence history).

use rusqlite::params;
use serde::Deserialize;

use super::{Store, StoreError};
use crate::incident::{Event, HistoryEntry, Incident};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS incidents (
    id TEXT PRIMARY KEY,
    mode TEXT NOT NULL,
    subject TEXT NOT NULL,
    provider TEXT,
    severity TEXT NOT NULL,
    state TEXT NOT NULL,
    onset_ms INTEGER NOT NULL,
    opened_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    resolved_ms INTEGER,
    summary TEXT NOT NULL,
    action TEXT NOT NULL,
    evidence TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS incidents_opened ON incidents (opened_ms);
CREATE TABLE IF NOT EXISTS incident_events (
    incident_id TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    summary TEXT NOT NULL,
    evidence TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS incident_events_id ON incident_events (incident_id, at_ms);
";

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

const COLUMNS: &str = "id, mode, subject, provider, severity, state, onset_ms, opened_ms, \
    updated_ms, resolved_ms, summary, action, evidence";

impl Store {
    /// Records an incident event: upserts the incident and appends to its history.
    pub fn write_incident(&mut self, e: &Event) -> Result<(), StoreError> {
        let i = &e.incident;
        let evidence = i.evidence.to_string();
        let tx = self.conn.transaction()?;
        tx.execute(
            &format!(
                "INSERT INTO incidents ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
                 ON CONFLICT(id) DO UPDATE SET severity = ?5, state = ?6, updated_ms = ?9,
                 resolved_ms = ?10, summary = ?11, action = ?12, evidence = ?13"
            ),
            params![
                i.id,
                i.mode,
                i.subject,
                i.provider,
                i.severity,
                i.state,
                i.onset_ms,
                i.opened_ms,
                i.updated_ms,
                i.resolved_ms,
                i.summary,
                i.action,
                evidence
            ],
        )?;
        tx.execute(
            "INSERT INTO incident_events (incident_id, at_ms, kind, summary, evidence) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![i.id, i.updated_ms, e.kind.as_str(), i.summary, evidence],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Incidents matching `filter`, newest first.
    pub fn incidents(&self, f: &IncidentFilter, now_ms: i64) -> Result<Vec<Incident>, StoreError> {
        let mut sql = format!("SELECT {COLUMNS} FROM incidents WHERE 1 = 1");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        let mut arg = |sql: &mut String, clause: &str, v: rusqlite::types::Value| {
            args.push(v);
            sql.push_str(&format!(" AND {clause} ?{}", args.len()));
        };
        if let Some(id) = &f.id {
            arg(&mut sql, "id =", id.clone().into());
        }
        if let Some(s) = &f.state {
            arg(&mut sql, "state =", s.clone().into());
        }
        if let Some(p) = &f.provider {
            arg(&mut sql, "provider =", p.clone().into());
        }
        if let Some(m) = &f.mode {
            arg(&mut sql, "mode =", m.clone().into());
        }
        if let Some(since) = f.since {
            let cutoff = now_ms - i64::try_from(since.as_millis()).unwrap_or(i64::MAX);
            arg(&mut sql, "updated_ms >=", cutoff.into());
        }
        sql.push_str(&format!(
            " ORDER BY opened_ms DESC LIMIT {}",
            f.limit.unwrap_or(100).min(1000)
        ));
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args.iter()), |row| {
            Ok((
                Incident {
                    id: row.get(0)?,
                    mode: row.get(1)?,
                    subject: row.get(2)?,
                    provider: row.get(3)?,
                    severity: row.get(4)?,
                    state: row.get(5)?,
                    onset_ms: row.get(6)?,
                    opened_ms: row.get(7)?,
                    updated_ms: row.get(8)?,
                    resolved_ms: row.get(9)?,
                    summary: row.get(10)?,
                    action: row.get(11)?,
                    evidence: serde_json::Value::Null,
                    history: Vec::new(),
                },
                row.get::<_, String>(12)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (mut i, evidence) = row?;
            i.evidence = serde_json::from_str(&evidence)
                .map_err(|e| StoreError::Corrupt(i.id.clone(), e))?;
            if f.history {
                i.history = self.history(&i.id)?;
            }
            out.push(i);
        }
        Ok(out)
    }

    /// One incident with its history.
    pub fn incident(&self, id: &str) -> Result<Option<Incident>, StoreError> {
        let f = IncidentFilter {
            id: Some(id.to_owned()),
            history: true,
            ..IncidentFilter::default()
        };
        Ok(self.incidents(&f, 0)?.into_iter().next())
    }

    fn history(&self, id: &str) -> Result<Vec<HistoryEntry>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT at_ms, kind, summary, evidence FROM incident_events WHERE incident_id = ?1 ORDER BY at_ms",
        )?;
        let rows = stmt.query_map(params![id], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (at_ms, kind, summary, evidence) = row?;
            out.push(HistoryEntry {
                at_ms,
                kind,
                summary,
                evidence: serde_json::from_str(&evidence)
                    .map_err(|e| StoreError::Corrupt(id.to_owned(), e))?,
            });
        }
        Ok(out)
    }
}
