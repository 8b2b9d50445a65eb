//! The SQLite file behind the request log (the default, nothing to install): schema,
//! batched inserts in one transaction, retention by deleting old rows, and the explorer's
//! queries.

use std::path::Path;

use rusqlite::types::{ToSqlOutput, Value, ValueRef};
use rusqlite::{Connection, OpenFlags, params};

use super::columns::{self, Cells, Dialect, INCIDENT_COLUMNS, Val};
use super::{IncidentFilter, LogFilter, RequestRecord, StoreError};
use crate::incident::{Event, Incident};

/// An open SQLite request log.
#[derive(Debug)]
pub(super) struct Sqlite {
    conn: Connection,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL UNIQUE,
    trace_id TEXT,
    ts_ms INTEGER NOT NULL,
    operation TEXT NOT NULL,
    client_key_id TEXT,
    requested_model TEXT NOT NULL,
    provider TEXT,
    served_model TEXT,
    system_fingerprint TEXT,
    node TEXT,
    quantization TEXT,
    stream INTEGER NOT NULL,
    status INTEGER NOT NULL,
    error_type TEXT,
    error_message TEXT,
    in_flight INTEGER,
    queue_depth REAL,
    kv_usage REAL,
    ttft_ms REAL,
    e2e_ms REAL NOT NULL,
    decode_tps REAL,
    max_gap_ms REAL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    tokens_counted INTEGER NOT NULL,
    cost_usd REAL,
    finish_reason TEXT,
    max_tokens INTEGER,
    deadline_ms INTEGER,
    route_reason TEXT,
    within_targets INTEGER NOT NULL,
    attempts TEXT NOT NULL,
    route_candidates TEXT,
    source TEXT,
    quality TEXT
);
CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts_ms);
CREATE INDEX IF NOT EXISTS requests_provider_ts ON requests (provider, ts_ms);
CREATE INDEX IF NOT EXISTS requests_model_ts ON requests (requested_model, ts_ms);
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

/// Columns added after the first release, added to older files on open.
const ADDED: [(&str, &str); 3] = [
    ("route_candidates", "TEXT"),
    ("source", "TEXT"),
    ("quality", "TEXT"),
];

impl Sqlite {
    /// Opens (creating if needed) the database for writing, in WAL mode.
    pub(super) fn open(path: &Path) -> Result<Sqlite, StoreError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        // Files written by earlier versions lack the columns added since.
        for (column, kind) in ADDED {
            let has: bool = conn.query_row(
                "SELECT COUNT(*) > 0 FROM pragma_table_info('requests') WHERE name = ?1",
                [column],
                |row| row.get(0),
            )?;
            if !has {
                conn.execute_batch(&format!("ALTER TABLE requests ADD COLUMN {column} {kind}"))?;
            }
        }
        Ok(Sqlite { conn })
    }

    /// Opens an existing database read-only.
    pub(super) fn open_read_only(path: &Path) -> Result<Sqlite, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(Sqlite { conn })
    }

    /// Writes a batch in one transaction.
    pub(super) fn insert(&mut self, batch: &[RequestRecord]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(&format!(
                "INSERT OR REPLACE INTO requests ({}) VALUES ({})",
                *columns::REQUEST_NAMES,
                Dialect::Sqlite.args(columns::REQUEST_COLUMNS.len())
            ))?;
            for r in batch {
                stmt.execute(rusqlite::params_from_iter(columns::request_values(r)?))?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Deletes rows older than `cutoff_ms`; returns how many.
    pub(super) fn delete_before(&self, cutoff_ms: i64) -> Result<usize, StoreError> {
        Ok(self
            .conn
            .execute("DELETE FROM requests WHERE ts_ms < ?1", params![cutoff_ms])?)
    }

    /// Rows matching `filter`, newest first.
    pub(super) fn query(
        &self,
        filter: &LogFilter,
        now_ms: i64,
    ) -> Result<Vec<RequestRecord>, StoreError> {
        let (sql, args) = filter.to_sql(now_ms, Dialect::Sqlite);
        let sql = format!("SELECT {} FROM requests {sql}", *columns::REQUEST_NAMES);
        self.rows(&sql, args, |r| columns::request_from(r))
    }

    /// Records an incident event: upserts the incident and appends to its history.
    pub(super) fn write_incident(&mut self, e: &Event) -> Result<(), StoreError> {
        let i = &e.incident;
        let tx = self.conn.transaction()?;
        tx.execute(
            &format!(
                "INSERT INTO incidents ({INCIDENT_COLUMNS}) VALUES ({})
                 ON CONFLICT(id) DO UPDATE SET severity = ?5, state = ?6, updated_ms = ?9,
                 resolved_ms = ?10, summary = ?11, action = ?12, evidence = ?13",
                Dialect::Sqlite.args(13)
            ),
            rusqlite::params_from_iter(columns::incident_values(i)),
        )?;
        tx.execute(
            "INSERT INTO incident_events (incident_id, at_ms, kind, summary, evidence) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![i.id, i.updated_ms, e.kind.as_str(), i.summary, i.evidence.to_string()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Incidents matching `filter`, newest first, with their histories when it asks.
    pub(super) fn incidents(
        &self,
        f: &IncidentFilter,
        now_ms: i64,
    ) -> Result<Vec<Incident>, StoreError> {
        let (sql, args) = f.to_sql(now_ms, Dialect::Sqlite);
        let mut out = self.rows(&sql, args, |r| columns::incident_from(r))?;
        if f.history {
            for i in &mut out {
                i.history = self.rows(
                    &super::incidents::history_sql(Dialect::Sqlite),
                    vec![i.id.clone().into()],
                    |r| super::incidents::history_from(r),
                )?;
            }
        }
        Ok(out)
    }

    fn rows<T>(
        &self,
        sql: &str,
        args: Vec<Val>,
        read: impl Fn(&rusqlite::Row<'_>) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let mut stmt = self.conn.prepare(sql)?;
        let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(read(row)?);
        }
        Ok(out)
    }
}

impl rusqlite::ToSql for Val {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        let v = match self {
            Val::Text(Some(t)) => return Ok(ToSqlOutput::Borrowed(ValueRef::Text(t.as_bytes()))),
            Val::Text(None) => Value::Null,
            Val::Int(v) => v.map_or(Value::Null, Value::Integer),
            Val::Real(v) => v.map_or(Value::Null, Value::Real),
            Val::Flag(v) => Value::Integer(i64::from(*v)),
        };
        Ok(ToSqlOutput::Owned(v))
    }
}

impl Cells for rusqlite::Row<'_> {
    fn text(&self, i: usize) -> Result<Option<String>, StoreError> {
        Ok(self.get(i)?)
    }

    fn int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        Ok(self.get(i)?)
    }

    fn real(&self, i: usize) -> Result<Option<f64>, StoreError> {
        Ok(self.get(i)?)
    }

    fn flag(&self, i: usize) -> Result<bool, StoreError> {
        Ok(self.get(i)?)
    }
}
