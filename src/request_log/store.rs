//! The SQLite file behind the request log: schema, batched inserts, retention and queries.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, params};

use super::{AttemptRecord, LogFilter, RequestRecord};

/// Why the request log could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("request log database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored attempt list could not be decoded.
    #[error("request log row {0} is corrupt: {1}")]
    Corrupt(String, serde_json::Error),
}

/// An open request-log database.
#[derive(Debug)]
pub struct Store {
    pub(super) conn: Connection,
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
";

const COLUMNS: &str = "request_id, trace_id, ts_ms, operation, client_key_id, requested_model, \
    provider, served_model, system_fingerprint, node, quantization, stream, status, error_type, \
    error_message, in_flight, queue_depth, kv_usage, ttft_ms, e2e_ms, decode_tps, max_gap_ms, \
    prompt_tokens, completion_tokens, tokens_counted, cost_usd, finish_reason, max_tokens, \
    deadline_ms, route_reason, within_targets, attempts, route_candidates, source, quality";

/// Columns added after the first release, added to older files on open.
const ADDED: [(&str, &str); 3] = [
    ("route_candidates", "TEXT"),
    ("source", "TEXT"),
    ("quality", "TEXT"),
];

impl Store {
    /// Opens (creating if needed) the database for writing, in WAL mode.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(super::incidents::SCHEMA)?;
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
        Ok(Store { conn })
    }

    /// Opens an existing database read-only (for `candor logs` and the admin API).
    pub fn open_read_only(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(Store { conn })
    }

    /// Writes a batch in one transaction.
    pub fn insert(&mut self, batch: &[RequestRecord]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let placeholders = (1..=35)
                .map(|i| format!("?{i}"))
                .collect::<Vec<_>>()
                .join(",");
            let mut stmt = tx.prepare_cached(&format!(
                "INSERT OR REPLACE INTO requests ({COLUMNS}) VALUES ({placeholders})"
            ))?;
            for r in batch {
                let attempts = serde_json::to_string(&r.attempts)
                    .map_err(|e| StoreError::Corrupt(r.request_id.clone(), e))?;
                let candidates = (!r.route_candidates.is_empty())
                    .then(|| serde_json::to_string(&r.route_candidates))
                    .transpose()
                    .map_err(|e| StoreError::Corrupt(r.request_id.clone(), e))?;
                let quality = r
                    .quality
                    .as_ref()
                    .map(serde_json::to_string)
                    .transpose()
                    .map_err(|e| StoreError::Corrupt(r.request_id.clone(), e))?;
                stmt.execute(params![
                    r.request_id,
                    r.trace_id,
                    r.ts_ms,
                    r.operation,
                    r.client_key_id,
                    r.requested_model,
                    r.provider,
                    r.served_model,
                    r.system_fingerprint,
                    r.node,
                    r.quantization,
                    r.stream,
                    r.status,
                    r.error_type,
                    r.error_message,
                    r.in_flight,
                    r.queue_depth,
                    r.kv_usage,
                    r.ttft_ms,
                    r.e2e_ms,
                    r.decode_tps,
                    r.max_gap_ms,
                    r.prompt_tokens.map(clamp),
                    r.completion_tokens.map(clamp),
                    r.tokens_counted,
                    r.cost_usd,
                    r.finish_reason,
                    r.max_tokens.map(clamp),
                    r.deadline_ms,
                    r.route_reason,
                    r.within_targets,
                    attempts,
                    candidates,
                    r.source,
                    quality,
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Deletes rows older than `cutoff_ms`; returns how many.
    pub fn delete_before(&self, cutoff_ms: i64) -> Result<usize, StoreError> {
        Ok(self
            .conn
            .execute("DELETE FROM requests WHERE ts_ms < ?1", params![cutoff_ms])?)
    }

    /// Rows matching `filter`, newest first.
    pub fn query(&self, filter: &LogFilter, now_ms: i64) -> Result<Vec<RequestRecord>, StoreError> {
        let (sql, args) = filter.to_sql(now_ms);
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT {COLUMNS} FROM requests {sql}"))?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args.iter()), |row| {
            Ok((
                RequestRecord {
                    request_id: row.get(0)?,
                    trace_id: row.get(1)?,
                    ts_ms: row.get(2)?,
                    operation: row.get(3)?,
                    client_key_id: row.get(4)?,
                    requested_model: row.get(5)?,
                    provider: row.get(6)?,
                    served_model: row.get(7)?,
                    system_fingerprint: row.get(8)?,
                    node: row.get(9)?,
                    quantization: row.get(10)?,
                    stream: row.get(11)?,
                    status: row.get(12)?,
                    error_type: row.get(13)?,
                    error_message: row.get(14)?,
                    in_flight: row.get(15)?,
                    queue_depth: row.get(16)?,
                    kv_usage: row.get(17)?,
                    ttft_ms: row.get(18)?,
                    e2e_ms: row.get(19)?,
                    decode_tps: row.get(20)?,
                    max_gap_ms: row.get(21)?,
                    prompt_tokens: row.get::<_, Option<i64>>(22)?.map(unclamp),
                    completion_tokens: row.get::<_, Option<i64>>(23)?.map(unclamp),
                    tokens_counted: row.get(24)?,
                    cost_usd: row.get(25)?,
                    finish_reason: row.get(26)?,
                    max_tokens: row.get::<_, Option<i64>>(27)?.map(unclamp),
                    deadline_ms: row.get(28)?,
                    route_reason: row.get(29)?,
                    within_targets: row.get(30)?,
                    attempts: Vec::new(),
                    route_candidates: Vec::new(),
                    source: row
                        .get::<_, Option<String>>(33)?
                        .unwrap_or_else(|| "client".into()),
                    quality: None,
                },
                row.get::<_, String>(31)?,
                row.get::<_, Option<String>>(32)?,
                row.get::<_, Option<String>>(34)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (mut record, attempts, candidates, quality) = row?;
            if let Some(q) = quality {
                record.quality = Some(
                    serde_json::from_str(&q)
                        .map_err(|e| StoreError::Corrupt(record.request_id.clone(), e))?,
                );
            }
            record.attempts = serde_json::from_str::<Vec<AttemptRecord>>(&attempts)
                .map_err(|e| StoreError::Corrupt(record.request_id.clone(), e))?;
            if let Some(c) = candidates {
                record.route_candidates = serde_json::from_str(&c)
                    .map_err(|e| StoreError::Corrupt(record.request_id.clone(), e))?;
            }
            out.push(record);
        }
        Ok(out)
    }
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn unclamp(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}
