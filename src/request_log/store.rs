//! The database behind the request log, whichever it is: a SQLite file (the default) or a
//! PostgreSQL server shared by a fleet of replicas. One set of operations over both.

use std::path::Path;

use super::postgres::{self, Postgres};
use super::sqlite::Sqlite;
use super::{IncidentFilter, LogFilter, RequestRecord};
use crate::config::LogDatabase;
use crate::incident::{Event, Incident};

/// Why the request log could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("request log database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL failed (its message never holds the connection URL).
    #[error("request log database (PostgreSQL): {0}")]
    Postgres(#[from] ::postgres::Error),
    /// The PostgreSQL URL could not be parsed (it is not repeated here: it may hold a password).
    #[error("request log database: the PostgreSQL URL is not valid")]
    BadUrl,
    /// The certificate authorities for a TLS connection could not be read.
    #[error("request log database: the CA file {0}: {1}")]
    CaFile(std::path::PathBuf, String),
    /// A stored attempt list could not be decoded.
    #[error("request log row {0} is corrupt: {1}")]
    Corrupt(String, serde_json::Error),
}

impl StoreError {
    /// True when the same write may succeed later (the server is unreachable, the connection
    /// dropped, the file is busy or the disk full): the writer keeps the rows and retries.
    /// False when the rows themselves were refused: retrying would refuse them again.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Postgres(e) => match e.code() {
                // SQLSTATE classes that pass: connection (08), transaction rollback (40),
                // insufficient resources (53, a full disk among them), operator
                // intervention (57: a shutdown, a statement timeout), system error (58).
                Some(state) => {
                    e.is_closed()
                        || state
                            .code()
                            .get(..2)
                            .is_some_and(|class| ["08", "40", "53", "57", "58"].contains(&class))
                }
                // No answer from the server at all: I/O, a dropped connection.
                None => true,
            },
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.code,
                rusqlite::ErrorCode::DatabaseBusy
                    | rusqlite::ErrorCode::DatabaseLocked
                    | rusqlite::ErrorCode::DiskFull
                    | rusqlite::ErrorCode::SystemIoFailure
                    | rusqlite::ErrorCode::CannotOpen
            ),
            StoreError::Sqlite(_)
            | StoreError::BadUrl
            | StoreError::CaFile(..)
            | StoreError::Corrupt(..) => false,
        }
    }
}

/// What one retention pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    /// Rows deleted one by one.
    pub rows: usize,
    /// Whole time partitions dropped (PostgreSQL).
    pub partitions: usize,
}

/// An open request-log database.
#[derive(Debug)]
pub struct Store(Db);

#[derive(Debug)]
enum Db {
    /// A SQLite file.
    Sqlite(Sqlite),
    /// A PostgreSQL server; its time partitions span `span_ms`.
    Postgres(Box<Postgres>, i64),
}

impl Store {
    /// Opens the database for writing, creating its schema if needed.
    pub fn open(db: &LogDatabase, retention: std::time::Duration) -> Result<Store, StoreError> {
        match db {
            LogDatabase::Sqlite(path) => Ok(Store(Db::Sqlite(Sqlite::open(path)?))),
            LogDatabase::Postgres(pg) => {
                let span = postgres::partition_span(retention);
                let now = crate::observation::unix_ms_now();
                Ok(Store(Db::Postgres(
                    Box::new(Postgres::open(pg, span, now)?),
                    span,
                )))
            }
        }
    }

    /// Opens the database to read it (a SQLite file read-only).
    pub fn reader(db: &LogDatabase) -> Result<Store, StoreError> {
        match db {
            LogDatabase::Sqlite(path) => Store::open_read_only(path),
            LogDatabase::Postgres(pg) => {
                Ok(Store(Db::Postgres(Box::new(Postgres::connect(pg)?), 0)))
            }
        }
    }

    /// Opens an existing SQLite file read-only (for `candor logs --db` and the tests).
    pub fn open_read_only(path: &Path) -> Result<Store, StoreError> {
        Ok(Store(Db::Sqlite(Sqlite::open_read_only(path)?)))
    }

    /// True when the store can no longer be used and must be opened again.
    pub fn is_broken(&self) -> bool {
        match &self.0 {
            Db::Sqlite(_) => false,
            Db::Postgres(pg, _) => pg.is_closed(),
        }
    }

    /// Writes a batch, all of it or none.
    pub fn insert(&mut self, batch: &[RequestRecord]) -> Result<(), StoreError> {
        match &mut self.0 {
            Db::Sqlite(s) => s.insert(batch),
            Db::Postgres(pg, _) => pg.insert(batch),
        }
    }

    /// Removes rows older than `cutoff_ms` (and, on PostgreSQL, makes the partitions the
    /// next rows need).
    pub fn delete_before(&mut self, cutoff_ms: i64) -> Result<Removed, StoreError> {
        match &mut self.0 {
            Db::Sqlite(s) => Ok(Removed {
                rows: s.delete_before(cutoff_ms)?,
                partitions: 0,
            }),
            Db::Postgres(pg, span) => {
                let span = *span;
                pg.ensure_partitions(crate::observation::unix_ms_now(), span)?;
                let (partitions, rows) = pg.drop_before(cutoff_ms)?;
                Ok(Removed { rows, partitions })
            }
        }
    }

    /// Rows matching `filter`, newest first.
    pub fn query(
        &mut self,
        filter: &LogFilter,
        now_ms: i64,
    ) -> Result<Vec<RequestRecord>, StoreError> {
        match &mut self.0 {
            Db::Sqlite(s) => s.query(filter, now_ms),
            Db::Postgres(pg, _) => pg.query(filter, now_ms),
        }
    }

    /// Records an incident event: upserts the incident and appends to its history.
    pub fn write_incident(&mut self, e: &Event) -> Result<(), StoreError> {
        match &mut self.0 {
            Db::Sqlite(s) => s.write_incident(e),
            Db::Postgres(pg, _) => pg.write_incident(e),
        }
    }

    /// Incidents matching `filter`, newest first.
    pub fn incidents(
        &mut self,
        f: &IncidentFilter,
        now_ms: i64,
    ) -> Result<Vec<Incident>, StoreError> {
        match &mut self.0 {
            Db::Sqlite(s) => s.incidents(f, now_ms),
            Db::Postgres(pg, _) => pg.incidents(f, now_ms),
        }
    }

    /// One incident with its history.
    pub fn incident(&mut self, id: &str) -> Result<Option<Incident>, StoreError> {
        Ok(self
            .incidents(&IncidentFilter::one(id), 0)?
            .into_iter()
            .next())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite(code: std::ffi::c_int) -> StoreError {
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(code),
            None,
        ))
    }

    #[test]
    fn a_busy_or_full_database_is_retried_and_a_refused_row_is_not() {
        assert!(sqlite(rusqlite::ffi::SQLITE_BUSY).is_transient());
        assert!(sqlite(rusqlite::ffi::SQLITE_FULL).is_transient());
        assert!(!sqlite(rusqlite::ffi::SQLITE_CONSTRAINT).is_transient());
        assert!(!StoreError::BadUrl.is_transient());
    }
}
