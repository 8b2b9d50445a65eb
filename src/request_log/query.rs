//! Filters over the request log, shared by `candor logs` and the admin API.

use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use super::columns::{Dialect, Val, Where};

/// Which statuses to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    /// 2xx only.
    Ok,
    /// Everything that is not 2xx.
    Error,
    /// One status class, e.g. 5 for 5xx.
    Class(u16),
    /// One exact status.
    Exact(u16),
}

impl FromStr for StatusFilter {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "ok" | "success" => Ok(StatusFilter::Ok),
            "error" | "err" | "failed" => Ok(StatusFilter::Error),
            _ if s.len() == 3 && s.ends_with("xx") => s[..1]
                .parse()
                .ok()
                .filter(|c| (1..=5).contains(c))
                .map(StatusFilter::Class)
                .ok_or_else(|| format!("bad status class {s:?}")),
            _ => s
                .parse()
                .ok()
                .filter(|c| (100..=599).contains(c))
                .map(StatusFilter::Exact)
                .ok_or_else(|| {
                    format!("status must be ok, error, 5xx or a code like 503, not {s:?}")
                }),
        }
    }
}

impl<'de> Deserialize<'de> for StatusFilter {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A query over the request log. Every field narrows the result.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogFilter {
    /// Provider id.
    pub provider: Option<String>,
    /// Requested model.
    pub model: Option<String>,
    /// Status.
    pub status: Option<StatusFilter>,
    /// End to end above this.
    #[serde(default, with = "humantime_serde")]
    pub slower_than: Option<Duration>,
    /// Arrived within this long before now.
    #[serde(default, with = "humantime_serde")]
    pub since: Option<Duration>,
    /// One request by id.
    pub request_id: Option<String>,
    /// `client` or `synthetic` (canaries).
    pub source: Option<String>,
    /// At most this many rows (default 100, at most 10,000).
    pub limit: Option<u32>,
}

impl LogFilter {
    /// The `WHERE … ORDER BY … LIMIT` tail in `dialect` and its bound values.
    pub(super) fn to_sql(&self, now_ms: i64, dialect: Dialect) -> (String, Vec<Val>) {
        let mut w = Where::new(dialect);
        if let Some(p) = &self.provider {
            w.bind("provider =", p.clone());
        }
        if let Some(m) = &self.model {
            w.bind("requested_model =", m.clone());
        }
        if let Some(src) = &self.source {
            w.bind("COALESCE(source, 'client') =", src.clone());
        }
        if let Some(id) = &self.request_id {
            w.bind("request_id =", id.clone());
        }
        if let Some(d) = self.slower_than {
            w.bind("e2e_ms >", d.as_secs_f64() * 1000.0);
        }
        if let Some(d) = self.since {
            let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
            w.bind("ts_ms >=", now_ms.saturating_sub(ms));
        }
        match self.status {
            None => {}
            Some(StatusFilter::Ok) => w.raw("status BETWEEN 200 AND 299".into()),
            Some(StatusFilter::Error) => w.raw("status NOT BETWEEN 200 AND 299".into()),
            Some(StatusFilter::Class(c)) => {
                w.raw(format!("status BETWEEN {} AND {}", c * 100, c * 100 + 99));
            }
            Some(StatusFilter::Exact(c)) => w.raw(format!("status = {c}")),
        }
        let (mut sql, args) = w.finish();
        let limit = self.limit.unwrap_or(100).clamp(1, 10_000);
        sql.push_str(&format!(" ORDER BY ts_ms DESC, id DESC LIMIT {limit}"));
        (sql, args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_filters() {
        assert_eq!("ok".parse(), Ok(StatusFilter::Ok));
        assert_eq!("error".parse(), Ok(StatusFilter::Error));
        assert_eq!("5xx".parse(), Ok(StatusFilter::Class(5)));
        assert_eq!("503".parse(), Ok(StatusFilter::Exact(503)));
        assert!("9xx".parse::<StatusFilter>().is_err());
        assert!("abc".parse::<StatusFilter>().is_err());
    }

    #[test]
    fn filters_bind_their_values_in_either_dialect() {
        let f = LogFilter {
            provider: Some("p0".into()),
            status: Some(StatusFilter::Class(5)),
            slower_than: Some(Duration::from_millis(1500)),
            limit: Some(20),
            ..LogFilter::default()
        };
        let (sql, args) = f.to_sql(0, Dialect::Postgres);
        assert_eq!(
            sql,
            "WHERE provider = $1 AND e2e_ms > $2 AND status BETWEEN 500 AND 599 \
             ORDER BY ts_ms DESC, id DESC LIMIT 20"
        );
        assert_eq!(args, vec![Val::from("p0".to_owned()), Val::from(1500.0)]);
        let (sql, _) = f.to_sql(0, Dialect::Sqlite);
        assert!(
            sql.starts_with("WHERE provider = ?1 AND e2e_ms > ?2"),
            "{sql}"
        );
        let (sql, args) = LogFilter::default().to_sql(0, Dialect::Sqlite);
        assert_eq!(sql, " ORDER BY ts_ms DESC, id DESC LIMIT 100");
        assert!(args.is_empty());
    }
}
