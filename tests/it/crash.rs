//! `kill -9` under load: the request log loses at most what arrived in its last flush
//! interval, the database is never corrupt, and a restarted gateway carries on with it.

use std::time::Duration;

use tokio::time::Instant;

use crate::support::*;

/// One provider, the request log flushed every `FLUSH`, writing to `db`.
fn config(mock: &Mock, db: &std::path::Path) -> String {
    format!(
        "[server]\nlisten = \"{{listen}}\"\n[request_log]\npath = \"{}\"\nflush_interval = \"{}ms\"\n\
         [[providers]]\nid = \"p0\"\nbase_url = \"{}\"\nmodels = [\"m\"]\n",
        db.display(),
        FLUSH.as_millis(),
        mock.url
    )
}

const FLUSH: Duration = Duration::from_millis(200);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_at_most_a_flush_interval_and_never_the_database() {
    let mock = spawn_mock(Script::words(3)).await;
    let keep = tempfile::tempdir().unwrap();
    let db = keep.path().join("log.db");
    let mut gw = Served::start(&config(&mock, &db)).await;
    // Eight clients send requests back to back; each answer's request id and time is kept.
    let stop_at = Instant::now() + Duration::from_secs(3);
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (http, url) = (gw.http.clone(), gw.at("/v1/chat/completions"));
        clients.push(tokio::spawn(async move {
            let mut answered = Vec::new();
            while Instant::now() < stop_at {
                let Ok(r) = http.post(&url).json(&chat(true)).send().await else {
                    break;
                };
                let id = r.headers()["x-candor-request-id"]
                    .to_str()
                    .unwrap()
                    .to_owned();
                if r.text().await.is_ok() {
                    answered.push((id, Instant::now()));
                }
            }
            answered
        }));
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let killed_at = Instant::now();
    gw.kill9();
    let mut answered = Vec::new();
    for c in clients {
        answered.extend(c.await.unwrap());
    }
    assert!(
        answered.len() > 50,
        "only {} requests answered",
        answered.len()
    );

    let conn = rusqlite::Connection::open(&db).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let stored: std::collections::HashSet<String> = conn
        .prepare("SELECT request_id FROM requests")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    // Every request answered well before the kill — two flush intervals, for the writer's
    // batch in progress — is on record.
    let settled: Vec<&String> = answered
        .iter()
        .filter(|(_, at)| *at + 2 * FLUSH < killed_at)
        .map(|(id, _)| id)
        .collect();
    let missing: Vec<&&String> = settled.iter().filter(|id| !stored.contains(**id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} settled requests lost ({} stored of {} answered)",
        missing.len(),
        settled.len(),
        stored.len(),
        answered.len()
    );
    drop(conn);

    // A new gateway on the same file carries on: old rows kept, new ones added.
    let mut again = Served::start(&config(&mock, &db)).await;
    let r = again.chat(false).await;
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-candor-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    again.stop();
    let conn = rusqlite::Connection::open(&db).unwrap();
    let n: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM requests WHERE request_id = ?1",
            [&id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1, "the restarted gateway's request is on record");
    let total: i64 = conn
        .query_row("SELECT COUNT(*) FROM requests", [], |r| r.get(0))
        .unwrap();
    assert!(total as usize > stored.len(), "old rows kept");
}
