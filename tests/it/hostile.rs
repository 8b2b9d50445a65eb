//! A hostile client against the real binary: requests built to crash, starve or stall the
//! gateway get a clear error and leave it serving everyone else.

use std::time::Duration;

use tokio::time::Instant;

use serde_json::Value;

use crate::support::*;

/// One provider `p0` behind `[server]` settings `server`; no client keys (the default).
async fn serve(mock: &Mock, server: &str) -> Served {
    Served::start(&format!(
        "[server]\nlisten = \"{{listen}}\"\n{server}\n[request_log]\npath = \"{{dir}}/log.db\"\n\
         [[providers]]\nid = \"p0\"\nbase_url = \"{}\"\nmodels = [\"m\"]\n",
        mock.url
    ))
    .await
}

/// Status and OpenAI-shaped error body of a response.
async fn refused(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let body = r.text().await.unwrap();
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body:?}"));
    assert!(v["error"]["message"].is_string(), "not OpenAI-shaped: {v}");
    (status, v)
}

#[tokio::test]
async fn deeply_nested_json_is_refused_without_harm() {
    let mock = spawn_mock(Script::words(2)).await;
    let mut gw = serve(&mock, "").await;
    let deep = |n: usize| format!("{}\"x\"{}", "[".repeat(n), "]".repeat(n));
    let bodies = [
        (
            "/v1/chat/completions",
            format!(
                r#"{{"model":"m","messages":[{{"role":"user","content":{}}}]}}"#,
                deep(25_000)
            ),
        ),
        (
            "/v1/completions",
            format!(r#"{{"model":"m","prompt":{}}}"#, deep(25_000)),
        ),
        // Just past the bound, where a recursive walk was slow rather than fatal.
        (
            "/v1/chat/completions",
            format!(
                r#"{{"model":"m","messages":[{{"content":{}}}]}}"#,
                deep(2_000)
            ),
        ),
        // Deep nesting in a field Candor does not read is bounded too.
        (
            "/v1/chat/completions",
            format!(r#"{{"model":"m","tools":{},"messages":[]}}"#, deep(25_000)),
        ),
    ];
    for (path, body) in &bodies {
        let started = Instant::now();
        let (status, v) = refused(gw.post_raw(path, body.clone()).await).await;
        assert_eq!(status, 400, "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("nested"),
            "{v}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
    }
    // A JSON array is not a request, even one whose elements line up with the fields.
    let r = gw
        .post_raw("/v1/chat/completions", r#"["m", false]"#.into())
        .await;
    assert_eq!(refused(r).await.0, 400);
    // A known path asked with the wrong method gets the error shape too.
    let r = gw.get("/v1/chat/completions").await.unwrap();
    assert!(r.headers().contains_key("allow"), "{:?}", r.headers());
    let (status, v) = refused(r).await;
    assert_eq!(status, 405);
    assert_eq!(v["error"]["code"], "method_not_allowed");

    assert!(
        mock.seen().is_empty(),
        "nothing refused may reach the upstream"
    );
    assert!(gw.alive(), "the gateway died: {}", gw.output());
    assert_eq!(gw.chat(false).await.status(), 200);
    gw.stop();
}

/// Connects to the gateway's port.
async fn connect(gw: &Served) -> tokio::net::TcpStream {
    let addr = gw.url.trim_start_matches("http://");
    tokio::net::TcpStream::connect(addr).await.unwrap()
}

/// Reads until the peer closes (or `limit` passes): what it sent, and whether it closed.
async fn read_until_closed(tcp: &mut tokio::net::TcpStream, limit: Duration) -> (String, bool) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => return (String::from_utf8_lossy(&got).into(), false),
            Ok(Ok(0) | Err(_)) => return (String::from_utf8_lossy(&got).into(), true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn connections_that_outwait_their_limits_are_closed() {
    use tokio::io::AsyncWriteExt;
    let mock = spawn_mock(Script::words(2)).await;
    let mut gw = serve(
        &mock,
        "header_read_timeout = \"1s\"\nidle_timeout = \"2s\"\nbody_read_timeout = \"1s\"\nmax_in_flight = 2",
    )
    .await;
    let started = Instant::now();
    // Nothing sent: closed at the idle limit.
    let mut silent = connect(&gw).await;
    // Half a request head: closed at the header limit, counted from its first byte.
    let mut half = connect(&gw).await;
    half.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let (_, closed) = read_until_closed(&mut half, Duration::from_secs(5)).await;
    assert!(closed, "a half-sent head kept its connection");
    let half_at = started.elapsed();
    assert!(
        half_at < Duration::from_millis(1900),
        "closed after {half_at:?}"
    );
    let (_, closed) = read_until_closed(&mut silent, Duration::from_secs(5)).await;
    assert!(closed, "a silent connection stayed open");
    assert!(started.elapsed() >= Duration::from_millis(1900));

    // Bodies that trickle in: each holds a max_in_flight slot only until the body limit,
    // then gets 408; meanwhile others are shed, and afterwards served.
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut tcp = connect(&gw).await;
        tcp.write_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
        )
        .await
        .unwrap();
        slow.push(tcp);
    }
    eventually("both slow bodies admitted", || async {
        (gw.metric("candor_requests_in_flight").await == 2.0).then_some(())
    })
    .await;
    let shed = gw.chat(false).await;
    assert_eq!(
        shed.status(),
        503,
        "both slots should be held by the slow bodies"
    );
    for tcp in &mut slow {
        let (answer, _) = read_until_closed(tcp, Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("body_read_timeout"), "{answer}");
    }
    assert_eq!(gw.chat(false).await.status(), 200);

    // A kept-alive connection with nothing more to ask is closed at the idle limit.
    let mut kept = connect(&gw).await;
    kept.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let before = Instant::now();
    let (answer, closed) = read_until_closed(&mut kept, Duration::from_secs(6)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(closed && before.elapsed() >= Duration::from_millis(1900));
    gw.stop();
}

#[tokio::test]
async fn a_connection_flood_leaves_probes_answered() {
    let mock = spawn_mock(Script::words(2)).await;
    // 256 descriptors: at most 128 client connections, then 32 for probes only.
    let mut gw = Served::start_with_fds(
        &format!(
            "[server]\nlisten = \"{{listen}}\"\nidle_timeout = \"60s\"\n[request_log]\n\
             path = \"{{dir}}/log.db\"\n[[providers]]\nid = \"p0\"\nbase_url = \"{}\"\n\
             models = [\"m\"]\n",
            mock.url
        ),
        Some(256),
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..300 {
        held.push(connect(&gw).await);
    }
    // Idle connections beyond the limit wait in the backlog; they are not answered with
    // errors, and the process does not spin on accept failures. Every request below takes
    // a connection of its own, as a probe from outside would.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let status_of = |path: &'static str, post: bool| {
        let (http, url) = (http.clone(), gw.at(path));
        async move {
            let r = if post {
                http.post(url).json(&chat(false))
            } else {
                http.get(url)
            };
            r.send().await.ok()
        }
    };
    // The held connections fill the client slots and the probe reserve: closing some of
    // the last ones accepted frees reserve slots once the gateway sees them close.
    held.truncate(150);
    for path in ["/livez", "/metrics"] {
        eventually(path, || async {
            status_of(path, false).await.filter(|r| r.status() == 200)
        })
        .await;
    }
    let r = status_of("/v1/chat/completions", true).await.unwrap();
    let (status, v) = refused(r).await;
    assert_eq!(status, 503);
    assert_eq!(v["error"]["code"], "too_many_connections");
    // Every held connection closed: clients are served again.
    drop(held);
    eventually("a chat served after the flood", || async {
        status_of("/v1/chat/completions", true)
            .await
            .filter(|r| r.status() == 200)
    })
    .await;
    let logs = gw.stop();
    assert!(
        !logs.contains("Too many open files"),
        "accept ran out of descriptors"
    );
}

#[tokio::test]
async fn oversized_and_cut_upstream_events_end_in_a_well_formed_error() {
    let first = chunk("hello", None, false);
    // An event that never ends: 16 MiB of one JSON string after a first token.
    let mut writes = vec![bytes::Bytes::from(first.clone())];
    writes.push(bytes::Bytes::from_static(b"data: {\"x\":\""));
    writes.extend((0..16).map(|_| bytes::Bytes::from(vec![b'a'; 1 << 20])));
    let mock = spawn_mock(Script::Raw(writes)).await;
    let mut gw = serve(&mock, "max_sse_event_bytes = 65536").await;
    let rss_before = gw.rss_kib();
    let events = |body: &str| -> Vec<Value> {
        body.split("\n\n")
            .filter(|e| !e.trim().is_empty())
            .map(|e| {
                let data = e.strip_prefix("data: ").unwrap_or_else(|| panic!("{e:?}"));
                serde_json::from_str(data).unwrap_or_else(|_| panic!("not JSON: {data:?}"))
            })
            .collect()
    };
    let body = gw.chat(true).await.text().await.unwrap();
    let got = events(&body);
    assert_eq!(got.len(), 2, "{body:.300}");
    assert_eq!(got[1]["error"]["code"], "too_large", "{body:.300}");
    let grew = gw.rss_kib().saturating_sub(rss_before);
    assert!(grew < 12 * 1024, "RSS grew by {grew} KiB");

    // The upstream closes in the middle of an event: the client gets the whole events,
    // then an error event of its own, never the fragment.
    mock.set(Script::Raw(vec![
        bytes::Bytes::from(first),
        bytes::Bytes::from_static(b"data: {\"partial\":"),
    ]));
    let body = gw.chat(true).await.text().await.unwrap();
    let got = events(&body);
    assert_eq!(got.len(), 2, "{body}");
    assert_eq!(got[1]["error"]["code"], "truncated", "{body}");
    // Before any token, an oversized event fails the attempt as the upstream's fault.
    mock.set(Script::Raw(vec![
        bytes::Bytes::from_static(b"data: {\"x\":\""),
        bytes::Bytes::from(vec![b'a'; 1 << 20]),
    ]));
    let (status, v) = refused(gw.chat(true).await).await;
    assert_eq!(status, 502, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("SSE event"),
        "{v}"
    );
    gw.stop();
}

#[tokio::test]
async fn a_request_log_that_cannot_be_written_holds_its_rows_and_says_so() {
    let mock = spawn_mock(Script::words(2)).await;
    let mut gw = serve(&mock, "").await;
    let send = || async {
        let r = gw.chat(false).await;
        assert_eq!(r.status(), 200, "serving goes on whatever the log does");
    };
    let gauge_is = |name: &'static str, want: f64| {
        let gw = &gw;
        eventually(name, move || async move {
            (gw.metric(name).await == want).then_some(())
        })
    };
    let db = gw.dir.path().join("log.db");
    let written = |n: usize| {
        let db = db.clone();
        eventually("rows to be written", move || {
            let db = db.clone();
            async move {
                let mut store = candor::request_log::Store::open_read_only(&db).ok()?;
                let filter = candor::request_log::LogFilter::default();
                let rows = store.query(&filter, i64::MAX / 2).ok()?;
                (rows.len() == n).then_some(())
            }
        })
    };
    send().await;
    written(1).await;
    // Another process takes the database's write lock and keeps it: every write the
    // gateway tries fails once its busy timeout (5 s) runs out.
    let locker = rusqlite::Connection::open(&db).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    send().await;
    gauge_is("candor_request_log_failing", 1.0).await;
    gauge_is("candor_request_log_buffered_rows", 1.0).await;
    send().await;
    gauge_is("candor_request_log_buffered_rows", 2.0).await;
    let r = gw.get("/health").await.unwrap();
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    let log = &v["request_log"];
    assert!(log["failing_since_unix_ms"].is_i64(), "{log}");
    assert_eq!(log["rows_buffered"], 2, "{log}");
    assert_eq!(log["rows_lost"], 0, "{log}");

    // The lock released, the held rows are written in order and nothing was lost.
    locker.execute_batch("ROLLBACK").unwrap();
    drop(locker);
    gauge_is("candor_request_log_failing", 0.0).await;
    gauge_is("candor_request_log_buffered_rows", 0.0).await;
    assert_eq!(gw.metric("candor_request_log_dropped_total").await, 0.0);
    let v: Value = gw.get("/health").await.unwrap().json().await.unwrap();
    assert!(v["request_log"]["failing_since_unix_ms"].is_null());
    // Every answered request is on record.
    written(3).await;
    gw.stop();
}

#[tokio::test]
async fn credentials_in_a_provider_url_are_never_shown() {
    let mock = spawn_mock(Script::words(2)).await;
    let url_with_secret = mock.url.replacen("http://", "http://user:PWSECRET@", 1);
    let mut gw = Served::start(&format!(
        "[server]\nlisten = \"{{listen}}\"\n[request_log]\npath = \"{{dir}}/log.db\"\n\
         [[providers]]\nid = \"p0\"\nbase_url = \"{url_with_secret}\"\nmodels = [\"m\"]\n\
         metrics_url = \"http://127.0.0.1:9/metrics?token=QSECRET\"\n"
    ))
    .await;
    let mut seen = String::new();
    for path in ["/api/providers", "/api/health", "/health", "/metrics"] {
        seen.push_str(&gw.get(path).await.unwrap().text().await.unwrap());
    }
    assert!(seen.contains("***@127.0.0.1"), "{seen}");
    let logs = gw.stop();
    for secret in ["PWSECRET", "QSECRET"] {
        assert!(!seen.contains(secret), "{secret} shown: {seen}");
        assert!(!logs.contains(secret), "{secret} logged");
    }
}
