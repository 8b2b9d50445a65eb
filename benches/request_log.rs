//! Request-log ingestion: rows per second one writer puts into SQLite and into PostgreSQL,
//! in the writer's own batches (256 rows), with rows shaped like a gateway's (two attempts,
//! three routing candidates, an error on some). Three runs each; the median is the figure.
//! PostgreSQL is measured when `CANDOR_BENCH_PG_URL` names a server (`bench/request_log/run.sh`
//! starts a throwaway one); SQLite always.
//! Run: `cargo bench --bench request_log`.
#![expect(clippy::print_stdout, reason = "a benchmark prints its figures")]
#![expect(
    clippy::disallowed_methods,
    reason = "a benchmark reads the server it measures from its environment"
)]

use std::time::Duration;

use candor::config::{Config, LogDatabase};
use candor::request_log::{AttemptRecord, RequestRecord, Store};
use tokio::time::Instant;

const ROWS: usize = 100_000;
const BATCH: usize = 256;
const RUNS: usize = 3;

fn attempt(provider: &str, ok: bool, t: i64) -> AttemptRecord {
    AttemptRecord {
        provider: provider.into(),
        started_unix_ms: t,
        outcome: if ok { "ok" } else { "server_error" }.into(),
        status: (!ok).then_some(503),
        blame: (!ok).then(|| "upstream".into()),
        error: (!ok).then(|| "upstream answered 503: overloaded".into()),
        connect_ms: Some(0.4),
        headers_ms: Some(31.0),
        ttft_ms: ok.then_some(182.5),
        e2e_ms: 2310.0,
        max_gap_ms: Some(48.0),
        decode_tps: Some(41.7),
        in_flight: 12,
        probe: false,
        hedge: false,
    }
}

fn record(i: usize, now: i64) -> RequestRecord {
    let t = now - (ROWS - i) as i64;
    RequestRecord {
        request_id: format!("{:032x}", (i as u128) * 0x9e37_79b9_7f4a_7c15),
        trace_id: Some(format!("{i:032x}")),
        ts_ms: t,
        operation: "chat".into(),
        client_key_id: Some("team-a".into()),
        requested_model: "llama-3.1-8b".into(),
        provider: Some(format!("p{}", i % 4)),
        served_model: Some("meta-llama/Llama-3.1-8B-Instruct".into()),
        system_fingerprint: Some("fp_44709d6fcb".into()),
        node: Some("gpu-node-7".into()),
        quantization: Some("fp8".into()),
        stream: !i.is_multiple_of(3),
        status: 200,
        in_flight: Some(12),
        queue_depth: Some(3.0),
        kv_usage: Some(0.41),
        ttft_ms: Some(182.5),
        e2e_ms: 2310.0,
        decode_tps: Some(41.7),
        max_gap_ms: Some(48.0),
        prompt_tokens: Some(812),
        completion_tokens: Some(96),
        cost_usd: Some(0.000_11),
        finish_reason: Some("stop".into()),
        max_tokens: Some(256),
        deadline_ms: Some(30_000),
        route_reason: Some("least predicted latency".into()),
        within_targets: true,
        source: "client".into(),
        attempts: if i.is_multiple_of(10) {
            vec![attempt("p1", false, t), attempt("p2", true, t + 40)]
        } else {
            vec![attempt("p2", true, t)]
        },
        ..RequestRecord::default()
    }
}

/// Rows per second for each of `RUNS` runs of `ROWS` rows into a fresh `open()`.
fn measure(open: &dyn Fn(usize) -> Store) -> Vec<f64> {
    let now = candor::observation::unix_ms_now();
    let rows: Vec<RequestRecord> = (0..ROWS).map(|i| record(i, now)).collect();
    (0..RUNS)
        .map(|run| {
            let mut store = open(run);
            // Each run's ids are its own, so no run skips another's rows as already there.
            let rows: Vec<RequestRecord> = rows
                .iter()
                .map(|r| RequestRecord {
                    request_id: format!("{run}-{}", r.request_id),
                    ..r.clone()
                })
                .collect();
            let t0 = Instant::now();
            for batch in rows.chunks(BATCH) {
                store.insert(batch).expect("insert");
            }
            ROWS as f64 / t0.elapsed().as_secs_f64()
        })
        .collect()
}

fn report(name: &str, mut rates: Vec<f64>) -> f64 {
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    let runs: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
    println!(
        "| {name} | {ROWS} | {BATCH} | {} | {median:.0} |",
        runs.join(", ")
    );
    median
}

fn main() {
    let retention = Duration::from_secs(7 * 86_400);
    println!("| database | rows per run | batch | rows/s per run | median rows/s |");
    println!("|---|---|---|---|---|");
    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite = report(
        "SQLite (WAL, synchronous=NORMAL)",
        measure(&|run| {
            let db = LogDatabase::Sqlite(dir.path().join(format!("log-{run}.db")));
            Store::open(&db, retention).expect("open SQLite")
        }),
    );
    let Ok(url) = std::env::var("CANDOR_BENCH_PG_URL") else {
        println!(
            "\n(PostgreSQL not measured: set CANDOR_BENCH_PG_URL, or run bench/request_log/run.sh)"
        );
        return;
    };
    let text = "[request_log]\npostgres_url_env = \"PG\"\n[[providers]]\nid = \"p\"\n\
                base_url = \"http://127.0.0.1:9\"\nmodels = [\"m\"]\n";
    let db = Config::parse(text, |_| Some(url.clone()))
        .expect("a PostgreSQL URL")
        .request_log
        .database;
    let pg = report(
        "PostgreSQL (binary COPY via staging table)",
        measure(&|_| Store::open(&db, retention).expect("open PostgreSQL")),
    );
    println!("\nPostgreSQL / SQLite: {:.2}", pg / sqlite);
}
