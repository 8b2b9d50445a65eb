//! The `candor` binary: `config check` and `logs`.

use std::process::Command;

use crate::support::*;

fn candor(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_candor"))
        .args(args)
        .env("CANDOR_ADMIN_TOKEN", "x")
        .env("CANDOR_KEY_TEAM_SEARCH", "y")
        .env("OPENAI_API_KEY", "z")
        .env("CANDOR_WEBHOOK_URL", "http://127.0.0.1:9/hook")
        .env("SLACK_WEBHOOK_URL", "http://127.0.0.1:9/slack")
        .env("PAGERDUTY_ROUTING_KEY", "rk")
        .env("OTLP_AUTH_HEADER", "Bearer otlp-test")
        .output()
        .unwrap()
}

#[test]
fn the_example_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/candor.toml");
    let out = candor(&["config", "check", path]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ok (2 provider(s), 2 model(s)"), "{text}");
}

#[test]
fn config_check_reports_every_problem_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[server]
listen = "nowhere"
listn = "typo one"
[timeouts]
idel = "typo two"
ttft = "10m"
total = "1m"
[[providers]]
id = "a"
base_url = "ftp://x"
models = []
[[providers]]
id = "a"
base_url = "http://ok:1/v1"
models = ["m"]
api_key_env = "CANDOR_TEST_SURELY_UNSET"
"#,
    )
    .unwrap();
    let out = candor(&["config", "check", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "line 4: unknown field `listn`",
        "line 6: unknown field `idel`",
        "server.listen",
        "timeouts.ttft: must not exceed timeouts.total",
        "providers[0].base_url",
        "providers[0].models",
        "providers[1].id: duplicate provider id \"a\"",
        "providers[1].api_key_env: environment variable CANDOR_TEST_SURELY_UNSET is not set",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    std::fs::write(&path, "[server]\nlisten = 1\nunknown = true\n").unwrap();
    let out = candor(&["config", "check", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line"),
        "parse errors name the line"
    );
}

#[tokio::test]
async fn logs_filters_and_prints_table_and_json() {
    let good = spawn_mock(Script::words(2)).await;
    let bad = spawn_mock(Script::Status {
        code: 500,
        body: "x".into(),
    })
    .await;
    let mut gw = TestGateway::start(&[&good, &bad], TestGateway::IN_ORDER).await;
    for _ in 0..4 {
        gw.chat(true).await.bytes().await.unwrap();
    }
    gw.rows(4).await;
    gw.stop().await;
    let db = gw.db();
    let db = db.to_str().unwrap();
    let out = candor(&["logs", "--db", db]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("TIME (UTC)"), "{table}");
    assert_eq!(table.lines().count(), 5, "{table}");
    assert!(table.contains(" p0 "));

    let out = candor(&[
        "logs",
        "--db",
        db,
        "--json",
        "--provider",
        "p0",
        "--status",
        "ok",
        "--since",
        "1h",
    ]);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "every request ended on p0");
    let retried = lines
        .iter()
        .filter(|l| l["attempts"].as_array().unwrap().len() == 2)
        .count();
    assert_eq!(retried, 2);

    let out = candor(&["logs", "--db", db, "--slower-than", "1h"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("(no requests match)"));
    let out = candor(&["logs", "--db", "/nonexistent/x.db"]);
    assert_eq!(out.status.code(), Some(2));
}
