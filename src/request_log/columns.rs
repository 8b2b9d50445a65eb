//! The request log's columns in one list for both databases: a record's values in column
//! order for writing, a record or an incident rebuilt from a row's cells for reading, and
//! the placeholders each database's SQL uses.

use std::sync::LazyLock;

use super::{AttemptRecord, RequestRecord, StoreError};
use crate::incident::Incident;

/// The SQL dialect a statement is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dialect {
    /// SQLite: `?1`, `?2`, …
    Sqlite,
    /// PostgreSQL: `$1`, `$2`, …
    Postgres,
}

impl Dialect {
    /// The placeholder of the `n`th bound value (from 1).
    pub(super) fn arg(self, n: usize) -> String {
        match self {
            Dialect::Sqlite => format!("?{n}"),
            Dialect::Postgres => format!("${n}"),
        }
    }

    /// `1..=n` placeholders joined by commas.
    pub(super) fn args(self, n: usize) -> String {
        (1..=n).map(|i| self.arg(i)).collect::<Vec<_>>().join(",")
    }
}

/// A `WHERE` clause under construction: conditions joined by `AND`, each value bound to
/// the dialect's next placeholder.
#[derive(Debug)]
pub(super) struct Where {
    dialect: Dialect,
    clauses: Vec<String>,
    args: Vec<Val>,
}

impl Where {
    pub(super) fn new(dialect: Dialect) -> Where {
        Where {
            dialect,
            clauses: Vec::new(),
            args: Vec::new(),
        }
    }

    /// Adds `{lhs} {placeholder}` with `v` bound to it (`lhs` like `"provider ="`).
    pub(super) fn bind(&mut self, lhs: &str, v: impl Into<Val>) {
        self.args.push(v.into());
        self.clauses
            .push(format!("{lhs} {}", self.dialect.arg(self.args.len())));
    }

    /// Adds a condition with no bound value.
    pub(super) fn raw(&mut self, clause: String) {
        self.clauses.push(clause);
    }

    /// `WHERE …` (empty when there is no condition) and the bound values.
    pub(super) fn finish(self) -> (String, Vec<Val>) {
        let sql = if self.clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", self.clauses.join(" AND "))
        };
        (sql, self.args)
    }
}

/// What a column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Text,
    Int,
    Real,
    Flag,
}

/// The request columns in the order [`request_values`] gives them and [`request_from`]
/// reads them (every query selects them in this order).
pub(super) const REQUEST_COLUMNS: [(&str, Kind); 35] = [
    ("request_id", Kind::Text),
    ("trace_id", Kind::Text),
    ("ts_ms", Kind::Int),
    ("operation", Kind::Text),
    ("client_key_id", Kind::Text),
    ("requested_model", Kind::Text),
    ("provider", Kind::Text),
    ("served_model", Kind::Text),
    ("system_fingerprint", Kind::Text),
    ("node", Kind::Text),
    ("quantization", Kind::Text),
    ("stream", Kind::Flag),
    ("status", Kind::Int),
    ("error_type", Kind::Text),
    ("error_message", Kind::Text),
    ("in_flight", Kind::Int),
    ("queue_depth", Kind::Real),
    ("kv_usage", Kind::Real),
    ("ttft_ms", Kind::Real),
    ("e2e_ms", Kind::Real),
    ("decode_tps", Kind::Real),
    ("max_gap_ms", Kind::Real),
    ("prompt_tokens", Kind::Int),
    ("completion_tokens", Kind::Int),
    ("tokens_counted", Kind::Flag),
    ("cost_usd", Kind::Real),
    ("finish_reason", Kind::Text),
    ("max_tokens", Kind::Int),
    ("deadline_ms", Kind::Int),
    ("route_reason", Kind::Text),
    ("within_targets", Kind::Flag),
    ("attempts", Kind::Text),
    ("route_candidates", Kind::Text),
    ("source", Kind::Text),
    ("quality", Kind::Text),
];

/// The request columns' names, comma-separated.
pub(super) static REQUEST_NAMES: LazyLock<String> = LazyLock::new(|| {
    REQUEST_COLUMNS
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(", ")
});

/// The incident columns, in the order [`incident_from`] reads them.
pub(super) const INCIDENT_COLUMNS: &str = "id, mode, subject, provider, severity, state, \
    onset_ms, opened_ms, updated_ms, resolved_ms, summary, action, evidence";

/// One cell's value, to bind to a statement.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Val {
    Text(Option<String>),
    Int(Option<i64>),
    Real(Option<f64>),
    Flag(bool),
}

impl From<String> for Val {
    fn from(v: String) -> Val {
        Val::Text(Some(v))
    }
}

impl From<i64> for Val {
    fn from(v: i64) -> Val {
        Val::Int(Some(v))
    }
}

impl From<f64> for Val {
    fn from(v: f64) -> Val {
        Val::Real(Some(v))
    }
}

/// A record's values in [`REQUEST_COLUMNS`] order (lists and descriptors as JSON text).
pub(super) fn request_values(r: &RequestRecord) -> Result<Vec<Val>, StoreError> {
    let json = |v: Result<String, serde_json::Error>| {
        v.map_err(|e| StoreError::Corrupt(r.request_id.clone(), e))
    };
    let attempts = json(serde_json::to_string(&r.attempts))?;
    let candidates = (!r.route_candidates.is_empty())
        .then(|| json(serde_json::to_string(&r.route_candidates)))
        .transpose()?;
    let quality = r
        .quality
        .as_ref()
        .map(|q| json(serde_json::to_string(q)))
        .transpose()?;
    let text = |v: &Option<String>| Val::Text(v.clone());
    let count = |v: Option<u64>| Val::Int(v.map(|v| i64::try_from(v).unwrap_or(i64::MAX)));
    Ok(vec![
        r.request_id.clone().into(),
        text(&r.trace_id),
        r.ts_ms.into(),
        r.operation.clone().into(),
        text(&r.client_key_id),
        r.requested_model.clone().into(),
        text(&r.provider),
        text(&r.served_model),
        text(&r.system_fingerprint),
        text(&r.node),
        text(&r.quantization),
        Val::Flag(r.stream),
        i64::from(r.status).into(),
        text(&r.error_type),
        text(&r.error_message),
        Val::Int(r.in_flight),
        Val::Real(r.queue_depth),
        Val::Real(r.kv_usage),
        Val::Real(r.ttft_ms),
        Val::Real(Some(r.e2e_ms)),
        Val::Real(r.decode_tps),
        Val::Real(r.max_gap_ms),
        count(r.prompt_tokens),
        count(r.completion_tokens),
        Val::Flag(r.tokens_counted),
        Val::Real(r.cost_usd),
        text(&r.finish_reason),
        count(r.max_tokens),
        Val::Int(r.deadline_ms),
        text(&r.route_reason),
        Val::Flag(r.within_targets),
        attempts.into(),
        Val::Text(candidates),
        r.source.clone().into(),
        Val::Text(quality),
    ])
}

/// A row's cells, read by position, whichever database it came from.
pub(super) trait Cells {
    /// A text cell (`None` for NULL).
    fn text(&self, i: usize) -> Result<Option<String>, StoreError>;
    /// An integer cell.
    fn int(&self, i: usize) -> Result<Option<i64>, StoreError>;
    /// A real cell.
    fn real(&self, i: usize) -> Result<Option<f64>, StoreError>;
    /// A true/false cell.
    fn flag(&self, i: usize) -> Result<bool, StoreError>;
}

/// A record from a row of the request columns.
pub(super) fn request_from(c: &impl Cells) -> Result<RequestRecord, StoreError> {
    let request_id = c.text(0)?.unwrap_or_default();
    let corrupt = |e| StoreError::Corrupt(request_id.clone(), e);
    let count = |i| -> Result<Option<u64>, StoreError> {
        Ok(c.int(i)?.map(|v| u64::try_from(v).unwrap_or(0)))
    };
    let attempts: Vec<AttemptRecord> =
        serde_json::from_str(&c.text(31)?.unwrap_or_default()).map_err(corrupt)?;
    let route_candidates = match c.text(32)? {
        Some(t) => serde_json::from_str(&t).map_err(corrupt)?,
        None => Vec::new(),
    };
    let quality = match c.text(34)? {
        Some(t) => Some(serde_json::from_str(&t).map_err(corrupt)?),
        None => None,
    };
    Ok(RequestRecord {
        trace_id: c.text(1)?,
        ts_ms: c.int(2)?.unwrap_or(0),
        operation: c.text(3)?.unwrap_or_default(),
        client_key_id: c.text(4)?,
        requested_model: c.text(5)?.unwrap_or_default(),
        provider: c.text(6)?,
        served_model: c.text(7)?,
        system_fingerprint: c.text(8)?,
        node: c.text(9)?,
        quantization: c.text(10)?,
        stream: c.flag(11)?,
        status: c.int(12)?.and_then(|s| u16::try_from(s).ok()).unwrap_or(0),
        error_type: c.text(13)?,
        error_message: c.text(14)?,
        in_flight: c.int(15)?,
        queue_depth: c.real(16)?,
        kv_usage: c.real(17)?,
        ttft_ms: c.real(18)?,
        e2e_ms: c.real(19)?.unwrap_or(0.0),
        decode_tps: c.real(20)?,
        max_gap_ms: c.real(21)?,
        prompt_tokens: count(22)?,
        completion_tokens: count(23)?,
        tokens_counted: c.flag(24)?,
        cost_usd: c.real(25)?,
        finish_reason: c.text(26)?,
        max_tokens: count(27)?,
        deadline_ms: c.int(28)?,
        route_reason: c.text(29)?,
        within_targets: c.flag(30)?,
        attempts,
        route_candidates,
        // Rows written before the column existed are clients'.
        source: c.text(33)?.unwrap_or_else(|| "client".into()),
        quality,
        request_id,
    })
}

/// An incident (without its history) from a row of [`INCIDENT_COLUMNS`].
pub(super) fn incident_from(c: &impl Cells) -> Result<Incident, StoreError> {
    let id = c.text(0)?.unwrap_or_default();
    let evidence = serde_json::from_str(&c.text(12)?.unwrap_or_default())
        .map_err(|e| StoreError::Corrupt(id.clone(), e))?;
    Ok(Incident {
        mode: c.text(1)?.unwrap_or_default(),
        subject: c.text(2)?.unwrap_or_default(),
        provider: c.text(3)?,
        severity: c.text(4)?.unwrap_or_default(),
        state: c.text(5)?.unwrap_or_default(),
        onset_ms: c.int(6)?.unwrap_or(0),
        opened_ms: c.int(7)?.unwrap_or(0),
        updated_ms: c.int(8)?.unwrap_or(0),
        resolved_ms: c.int(9)?,
        summary: c.text(10)?.unwrap_or_default(),
        action: c.text(11)?.unwrap_or_default(),
        evidence,
        history: Vec::new(),
        id,
    })
}

/// An incident's values in [`INCIDENT_COLUMNS`] order.
pub(super) fn incident_values(i: &Incident) -> Vec<Val> {
    vec![
        i.id.clone().into(),
        i.mode.clone().into(),
        i.subject.clone().into(),
        Val::Text(i.provider.clone()),
        i.severity.clone().into(),
        i.state.clone().into(),
        i.onset_ms.into(),
        i.opened_ms.into(),
        i.updated_ms.into(),
        Val::Int(i.resolved_ms),
        i.summary.clone().into(),
        i.action.clone().into(),
        i.evidence.to_string().into(),
    ]
}
