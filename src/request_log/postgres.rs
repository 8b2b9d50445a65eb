//! PostgreSQL behind the request log, for replicas that share one log: each batch copied
//! (binary `COPY`) into a session's staging table and moved into `requests` in the same
//! transaction, skipping rows already there (a batch retried after a lost connection is not
//! written twice); `requests` partitioned by time, retention by dropping whole partitions;
//! and the explorer's queries, each bounded by a statement timeout.

use std::sync::LazyLock;
use std::time::Duration;

use bytes::BytesMut;
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::config::SslMode;
use postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use postgres::{Client, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::columns::{self, Cells, Dialect, INCIDENT_COLUMNS, Kind, REQUEST_COLUMNS, Val};
use super::{IncidentFilter, LogFilter, RequestRecord, StoreError};
use crate::config::PostgresTarget;
use crate::incident::{Event, Incident};

/// An open connection to the PostgreSQL request log.
pub(super) struct Postgres {
    client: Client,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Postgres")
    }
}

/// Longest a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest one statement may run (a query from the explorer, a batch, retention).
const STATEMENT_TIMEOUT: &str = "30s";
/// Serialises schema changes between replicas opening the same database at once.
const SCHEMA_LOCK: i64 = 0x00ca_7d07_0001;
/// Columns no row may leave empty.
const NOT_NULL: [&str; 10] = [
    "request_id",
    "ts_ms",
    "operation",
    "requested_model",
    "stream",
    "status",
    "e2e_ms",
    "tokens_counted",
    "within_targets",
    "attempts",
];
/// Partitions made ahead of the clock, so rows never wait on one being created.
const AHEAD: i64 = 2;

const INCIDENT_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS incidents (
    id TEXT PRIMARY KEY,
    mode TEXT NOT NULL,
    subject TEXT NOT NULL,
    provider TEXT,
    severity TEXT NOT NULL,
    state TEXT NOT NULL,
    onset_ms BIGINT NOT NULL,
    opened_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    resolved_ms BIGINT,
    summary TEXT NOT NULL,
    action TEXT NOT NULL,
    evidence TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS incidents_opened ON incidents (opened_ms);
CREATE TABLE IF NOT EXISTS incident_events (
    incident_id TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    kind TEXT NOT NULL,
    summary TEXT NOT NULL,
    evidence TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS incident_events_id ON incident_events (incident_id, at_ms);
";

fn sql_type(kind: Kind) -> &'static str {
    match kind {
        Kind::Text => "TEXT",
        Kind::Int => "BIGINT",
        Kind::Real => "DOUBLE PRECISION",
        Kind::Flag => "BOOLEAN",
    }
}

fn copy_type(kind: Kind) -> Type {
    match kind {
        Kind::Text => Type::TEXT,
        Kind::Int => Type::INT8,
        Kind::Real => Type::FLOAT8,
        Kind::Flag => Type::BOOL,
    }
}

/// The request columns' definitions.
fn column_defs() -> String {
    REQUEST_COLUMNS
        .iter()
        .map(|(name, kind)| {
            let null = if NOT_NULL.contains(name) {
                " NOT NULL"
            } else {
                ""
            };
            format!("{name} {}{null}", sql_type(*kind))
        })
        .collect::<Vec<_>>()
        .join(",\n    ")
}

fn schema() -> String {
    format!(
        "CREATE SEQUENCE IF NOT EXISTS requests_id_seq;
CREATE TABLE IF NOT EXISTS requests (
    id BIGINT NOT NULL DEFAULT nextval('requests_id_seq'),
    {},
    UNIQUE (request_id, ts_ms)
) PARTITION BY RANGE (ts_ms);
CREATE TABLE IF NOT EXISTS requests_default PARTITION OF requests DEFAULT;
CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts_ms);
CREATE INDEX IF NOT EXISTS requests_provider_ts ON requests (provider, ts_ms);
CREATE INDEX IF NOT EXISTS requests_model_ts ON requests (requested_model, ts_ms);
CREATE INDEX IF NOT EXISTS requests_request_id ON requests (request_id);
{INCIDENT_SCHEMA}",
        column_defs()
    )
}

/// One time partition of `requests`: `[start_ms, end_ms)`, named after its bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Partition {
    start_ms: i64,
    end_ms: i64,
}

impl Partition {
    fn name(self) -> String {
        format!("requests_p{}_{}", self.start_ms, self.end_ms)
    }

    fn parse(name: &str) -> Option<Partition> {
        let (start, end) = name.strip_prefix("requests_p")?.split_once('_')?;
        Some(Partition {
            start_ms: start.parse().ok()?,
            end_ms: end.parse().ok()?,
        })
    }

    fn overlaps(self, other: Partition) -> bool {
        self.start_ms < other.end_ms && other.start_ms < self.end_ms
    }
}

/// How much time one partition holds: an hour for a retention of up to two days (so old
/// rows leave within the hour), else a day.
pub(super) fn partition_span(retention: Duration) -> i64 {
    if retention <= Duration::from_secs(2 * 86_400) {
        3_600_000
    } else {
        86_400_000
    }
}

/// The partitions to have at `now_ms`: the current span, the one before, and `AHEAD`.
fn wanted(now_ms: i64, span_ms: i64) -> impl Iterator<Item = Partition> {
    let current = now_ms.div_euclid(span_ms) * span_ms;
    (-1..=AHEAD).map(move |k| Partition {
        start_ms: current + k * span_ms,
        end_ms: current + (k + 1) * span_ms,
    })
}

impl Postgres {
    /// Connects (timeouts set, nothing of the URL in any error); over TLS when the URL says
    /// `sslmode=require`.
    pub(super) fn connect(target: &PostgresTarget) -> Result<Postgres, StoreError> {
        let mut config: postgres::Config = target
            .url
            .expose()
            .parse()
            .map_err(|_| StoreError::BadUrl)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.application_name("candor");
        let mut client = if config.get_ssl_mode() == SslMode::Require {
            config.connect(MakeRustlsConnect::new(tls_config(
                target.ca_file.as_deref(),
            )?))?
        } else {
            config.connect(NoTls)?
        };
        client.batch_execute(&format!("SET statement_timeout = '{STATEMENT_TIMEOUT}'"))?;
        Ok(Postgres { client })
    }

    /// Connects and creates the schema if needed, with partitions for `now_ms`.
    pub(super) fn open(
        target: &PostgresTarget,
        span_ms: i64,
        now_ms: i64,
    ) -> Result<Postgres, StoreError> {
        let mut pg = Postgres::connect(target)?;
        let mut tx = pg.locked()?;
        tx.batch_execute(&schema())?;
        tx.commit()?;
        // The writer's staging table lives as long as its session.
        pg.client.batch_execute(&BATCH.staging)?;
        pg.ensure_partitions(now_ms, span_ms)?;
        Ok(pg)
    }

    /// True once the connection is gone (the writer reconnects).
    pub(super) fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Writes a batch in one transaction: binary `COPY` into the staging table, then into
    /// `requests`, rows already there (same id and time) left as they are.
    pub(super) fn insert(&mut self, batch: &[RequestRecord]) -> Result<(), StoreError> {
        let mut tx = self.client.transaction()?;
        let mut writer = BinaryCopyInWriter::new(tx.copy_in(&BATCH.copy)?, &BATCH.types);
        for r in batch {
            let values = columns::request_values(r)?;
            writer.write(&params(&values))?;
        }
        writer.finish()?;
        tx.execute(&BATCH.insert, &[])?;
        tx.commit()?;
        Ok(())
    }

    /// A transaction holding the schema lock (released when it ends).
    fn locked(&mut self) -> Result<postgres::Transaction<'_>, StoreError> {
        let mut tx = self.client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])?;
        Ok(tx)
    }

    /// Creates the partitions `now_ms` needs that no existing one covers (a range whose rows
    /// already sit in the default partition is left there).
    pub(super) fn ensure_partitions(
        &mut self,
        now_ms: i64,
        span_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.locked()?;
        let existing = partitions(&mut tx)?;
        for p in wanted(now_ms, span_ms) {
            if existing.iter().any(|e| e.overlaps(p)) {
                continue;
            }
            let stranded = tx
                .query_opt(
                    "SELECT 1 FROM requests_default WHERE ts_ms >= $1 AND ts_ms < $2 LIMIT 1",
                    &[&p.start_ms, &p.end_ms],
                )?
                .is_some();
            if !stranded {
                tx.batch_execute(&format!(
                    "CREATE TABLE IF NOT EXISTS {} PARTITION OF requests FOR VALUES FROM ({}) TO ({})",
                    p.name(),
                    p.start_ms,
                    p.end_ms
                ))?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Drops the partitions wholly older than `cutoff_ms` and deletes older rows from the
    /// default partition; returns the partitions dropped and the rows deleted.
    pub(super) fn drop_before(&mut self, cutoff_ms: i64) -> Result<(usize, usize), StoreError> {
        let mut tx = self.locked()?;
        let old: Vec<Partition> = partitions(&mut tx)?
            .into_iter()
            .filter(|p| p.end_ms <= cutoff_ms)
            .collect();
        for p in &old {
            tx.batch_execute(&format!("DROP TABLE IF EXISTS {}", p.name()))?;
        }
        let rows = tx.execute(
            "DELETE FROM requests_default WHERE ts_ms < $1",
            &[&cutoff_ms],
        )?;
        tx.commit()?;
        Ok((old.len(), usize::try_from(rows).unwrap_or(usize::MAX)))
    }

    /// Rows matching `filter`, newest first.
    pub(super) fn query(
        &mut self,
        filter: &LogFilter,
        now_ms: i64,
    ) -> Result<Vec<RequestRecord>, StoreError> {
        let (sql, args) = filter.to_sql(now_ms, Dialect::Postgres);
        let sql = format!("SELECT {} FROM requests {sql}", *columns::REQUEST_NAMES);
        self.rows(&sql, &args, columns::request_from)
    }

    /// Records an incident event: upserts the incident and appends to its history.
    pub(super) fn write_incident(&mut self, e: &Event) -> Result<(), StoreError> {
        let i = &e.incident;
        let values = columns::incident_values(i);
        let mut tx = self.client.transaction()?;
        tx.execute(
            &format!(
                "INSERT INTO incidents ({INCIDENT_COLUMNS}) VALUES ({})
                 ON CONFLICT (id) DO UPDATE SET severity = $5, state = $6, updated_ms = $9,
                 resolved_ms = $10, summary = $11, action = $12, evidence = $13",
                Dialect::Postgres.args(values.len())
            ),
            &params(&values),
        )?;
        let event: [Val; 5] = [
            i.id.clone().into(),
            i.updated_ms.into(),
            e.kind.as_str().to_owned().into(),
            i.summary.clone().into(),
            i.evidence.to_string().into(),
        ];
        tx.execute(
            "INSERT INTO incident_events (incident_id, at_ms, kind, summary, evidence) VALUES ($1, $2, $3, $4, $5)",
            &params(&event),
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Incidents matching `filter`, newest first, with their histories when it asks.
    pub(super) fn incidents(
        &mut self,
        f: &IncidentFilter,
        now_ms: i64,
    ) -> Result<Vec<Incident>, StoreError> {
        let (sql, args) = f.to_sql(now_ms, Dialect::Postgres);
        let mut out = self.rows(&sql, &args, columns::incident_from)?;
        if f.history {
            let sql = super::incidents::history_sql(Dialect::Postgres);
            for i in &mut out {
                i.history =
                    self.rows(&sql, &[i.id.clone().into()], super::incidents::history_from)?;
            }
        }
        Ok(out)
    }

    fn rows<T>(
        &mut self,
        sql: &str,
        args: &[Val],
        read: impl Fn(&postgres::Row) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        self.client
            .query(sql, &params(args))?
            .iter()
            .map(read)
            .collect()
    }
}

/// TLS for the connection: the server's certificate checked against the authorities in
/// `ca_file`, or the system's roots.
fn tls_config(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, StoreError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let bad = |e: String| StoreError::CaFile(path.to_owned(), e);
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))? {
                roots
                    .add(cert.map_err(|e| bad(e.to_string()))?)
                    .map_err(|e| bad(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(bad("no certificate in it".into()));
            }
        }
        None => {
            // Certificates the system cannot parse are skipped, as every client does.
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::CaFile("(protocol versions)".into(), e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn params(values: &[Val]) -> Vec<&(dyn ToSql + Sync)> {
    values.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

/// The statements a batch runs, built once from the column list: the session's staging
/// table, the binary `COPY` into it with its column types, and the move into `requests`.
struct BatchSql {
    staging: String,
    copy: String,
    types: Vec<Type>,
    insert: String,
}

static BATCH: LazyLock<BatchSql> = LazyLock::new(|| {
    let names = &*columns::REQUEST_NAMES;
    let staging: Vec<String> = REQUEST_COLUMNS
        .iter()
        .map(|(name, kind)| format!("{name} {}", sql_type(*kind)))
        .collect();
    BatchSql {
        staging: format!(
            "CREATE TEMP TABLE IF NOT EXISTS requests_in ({}) ON COMMIT DELETE ROWS",
            staging.join(", ")
        ),
        copy: format!("COPY requests_in ({names}) FROM STDIN BINARY"),
        types: REQUEST_COLUMNS.iter().map(|(_, k)| copy_type(*k)).collect(),
        insert: format!(
            "INSERT INTO requests ({names}) SELECT {names} FROM requests_in ON CONFLICT DO NOTHING"
        ),
    }
});

/// The time partitions `requests` has now.
fn partitions(tx: &mut postgres::Transaction<'_>) -> Result<Vec<Partition>, StoreError> {
    Ok(tx
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'requests'::regclass",
            &[],
        )?
        .iter()
        .filter_map(|row| Partition::parse(row.get::<_, &str>(0)))
        .collect())
}

impl ToSql for Val {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            // PostgreSQL text cannot hold NUL; an upstream's error message might.
            Val::Text(Some(t)) if t.contains('\0') => t.replace('\0', "\u{fffd}").to_sql(ty, out),
            Val::Text(t) => t.to_sql(ty, out),
            Val::Int(v) => v.to_sql(ty, out),
            Val::Real(v) => v.to_sql(ty, out),
            Val::Flag(v) => v.to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        [
            Type::TEXT,
            Type::VARCHAR,
            Type::INT8,
            Type::FLOAT8,
            Type::BOOL,
        ]
        .contains(ty)
    }

    to_sql_checked!();
}

impl Cells for postgres::Row {
    fn text(&self, i: usize) -> Result<Option<String>, StoreError> {
        Ok(self.try_get(i)?)
    }

    fn int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        Ok(self.try_get(i)?)
    }

    fn real(&self, i: usize) -> Result<Option<f64>, StoreError> {
        Ok(self.try_get(i)?)
    }

    fn flag(&self, i: usize) -> Result<bool, StoreError> {
        Ok(self.try_get(i)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_named_by_their_bounds_and_cover_the_clock() {
        let span = partition_span(Duration::from_secs(86_400));
        assert_eq!(span, 3_600_000);
        assert_eq!(partition_span(Duration::from_secs(7 * 86_400)), 86_400_000);
        let now = 10 * span + 123;
        let parts: Vec<Partition> = wanted(now, span).collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(parts[0].start_ms, 9 * span);
        assert_eq!(parts[3].end_ms, 13 * span);
        assert!(parts.windows(2).all(|w| w[0].end_ms == w[1].start_ms));
        for p in parts {
            assert_eq!(Partition::parse(&p.name()), Some(p));
        }
        assert_eq!(Partition::parse("requests_default"), None);
        let day = Partition {
            start_ms: 0,
            end_ms: 86_400_000,
        };
        assert!(day.overlaps(Partition {
            start_ms: 3_600_000,
            end_ms: 7_200_000
        }));
        assert!(!day.overlaps(Partition {
            start_ms: 86_400_000,
            end_ms: 90_000_000
        }));
    }
}
