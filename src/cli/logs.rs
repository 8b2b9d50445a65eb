//! `candor logs`: the request log as a table or JSON, read from its database (a SQLite file,
//! or the PostgreSQL server a configuration names) or from a running gateway's admin API.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::Args;

use super::out;
use crate::config::{Config, LogDatabase};
use crate::observation::unix_ms_now;
use crate::request_log::{LogFilter, RequestRecord, StatusFilter, Store};

/// Arguments of `candor logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Read the database named in this configuration file.
    #[arg(long, short, conflicts_with_all = ["db", "url"])]
    config: Option<PathBuf>,
    /// Read this request-log database file.
    #[arg(long, conflicts_with = "url")]
    db: Option<PathBuf>,
    /// Ask a running gateway instead (e.g. http://127.0.0.1:8080).
    #[arg(long)]
    url: Option<String>,
    /// Admin token for --url.
    #[arg(long, env = "CANDOR_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Only this provider.
    #[arg(long)]
    provider: Option<String>,
    /// Only this requested model.
    #[arg(long)]
    model: Option<String>,
    /// ok, error, 5xx, or a code like 503.
    #[arg(long)]
    status: Option<StatusFilter>,
    /// Only requests slower than this end to end (e.g. 2s, 500ms).
    #[arg(long, value_parser = humantime::parse_duration)]
    slower_than: Option<Duration>,
    /// Only requests from the last … (e.g. 30m, 2h).
    #[arg(long, value_parser = humantime::parse_duration)]
    since: Option<Duration>,
    /// Only `client` requests, or only `synthetic` ones (Candor's canaries).
    #[arg(long)]
    source: Option<String>,
    /// At most this many rows.
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
}

pub(super) async fn run(args: LogsArgs) -> anyhow::Result<ExitCode> {
    let filter = LogFilter {
        provider: args.provider.clone(),
        model: args.model.clone(),
        status: args.status,
        slower_than: args.slower_than,
        since: args.since,
        request_id: None,
        source: args.source.clone(),
        limit: Some(args.limit),
    };
    let rows = if let Some(url) = &args.url {
        fetch(url, args.admin_token.as_deref(), &filter).await?
    } else {
        let database = match (&args.db, &args.config) {
            (Some(db), _) => LogDatabase::Sqlite(db.clone()),
            (None, Some(c)) => Config::load(c)?.request_log.database,
            (None, None) => bail!("say where the log is: --config FILE, --db FILE or --url URL"),
        };
        if let LogDatabase::Sqlite(db) = &database
            && !db.exists()
        {
            bail!("no request log at {}", db.display());
        }
        let filter = filter.clone();
        // The database clients block: off the async runtime.
        tokio::task::spawn_blocking(move || {
            Store::reader(&database).and_then(|mut s| s.query(&filter, unix_ms_now()))
        })
        .await??
    };
    if args.json {
        let mut text = String::new();
        for r in &rows {
            text.push_str(&serde_json::to_string(r)?);
            text.push('\n');
        }
        out(&text);
    } else {
        out(&table(&rows));
    }
    Ok(ExitCode::SUCCESS)
}

async fn fetch(
    url: &str,
    token: Option<&str>,
    f: &LogFilter,
) -> anyhow::Result<Vec<RequestRecord>> {
    let mut query: Vec<(&str, String)> = vec![("limit", f.limit.unwrap_or(50).to_string())];
    if let Some(p) = &f.provider {
        query.push(("provider", p.clone()));
    }
    if let Some(m) = &f.model {
        query.push(("model", m.clone()));
    }
    if let Some(s) = f.status {
        query.push(("status", status_text(s)));
    }
    if let Some(d) = f.slower_than {
        query.push(("slower_than", humantime::format_duration(d).to_string()));
    }
    if let Some(d) = f.since {
        query.push(("since", humantime::format_duration(d).to_string()));
    }
    if let Some(s) = &f.source {
        query.push(("source", s.clone()));
    }
    super::admin_get(url, "/api/requests", token, &query).await
}

fn status_text(s: StatusFilter) -> String {
    match s {
        StatusFilter::Ok => "ok".into(),
        StatusFilter::Error => "error".into(),
        StatusFilter::Class(c) => format!("{c}xx"),
        StatusFilter::Exact(c) => c.to_string(),
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

/// The rows as an aligned text table.
pub(super) fn table(rows: &[RequestRecord]) -> String {
    let header = [
        "TIME (UTC)",
        "REQUEST",
        "MODEL",
        "PROVIDER",
        "STATUS",
        "TTFT ms",
        "E2E ms",
        "TOK/S",
        "IN",
        "OUT",
        "COST $",
        "FINISH",
        "TRIES",
    ];
    let mut cells: Vec<Vec<String>> = vec![header.iter().map(|s| (*s).to_owned()).collect()];
    for r in rows {
        let status = match &r.error_type {
            Some(e) => format!("{} {e}", r.status),
            None => r.status.to_string(),
        };
        cells.push(vec![
            utc(r.ts_ms),
            r.request_id.chars().take(12).collect(),
            r.requested_model.clone(),
            r.provider.clone().unwrap_or_else(|| "-".into()),
            status,
            opt(r.ttft_ms, 0),
            format!("{:.0}", r.e2e_ms),
            opt(r.decode_tps, 1),
            r.prompt_tokens.map_or("-".into(), |v| v.to_string()),
            r.completion_tokens.map_or("-".into(), |v| v.to_string()),
            opt(r.cost_usd, 6),
            r.finish_reason.clone().unwrap_or_else(|| "-".into()),
            r.attempts.len().to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            cells
                .iter()
                .map(|row| row[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    for row in &cells {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        text.push_str(line.join("  ").trim_end());
        text.push('\n');
    }
    if rows.is_empty() {
        text.push_str("(no requests match)\n");
    }
    text
}

/// `YYYY-MM-DD HH:MM:SS.mmm` in UTC.
pub(super) fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms.rem_euclid(1000)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_times() {
        assert_eq!(utc(0), "1970-01-01 00:00:00.000");
        assert_eq!(utc(1_795_000_000_123), "2026-11-18 11:06:40.123");
    }
}
