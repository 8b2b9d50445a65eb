//! The request log in a real PostgreSQL server (Debian's `postgresql`, started by the test
//! on loopback in a temporary directory, as the `postgres` user when the test runs as
//! root): every answered request lands there, the admin API and `candor logs` read it back,
//! a server stopped mid-traffic costs no client an error and no row, old partitions are
//! dropped, and the URL's password appears nowhere.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

const PASSWORD: &str = "PGSECRET-7f3a";

/// A PostgreSQL server of its own, torn down on drop.
struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
    /// With TLS on: the CA that signed the server's certificate.
    ca: Option<PathBuf>,
}

impl PgServer {
    fn start() -> PgServer {
        PgServer::launch(false)
    }

    /// A server that offers TLS, its certificate signed by a throwaway CA (`self.ca`).
    fn start_tls() -> PgServer {
        PgServer::launch(true)
    }

    fn launch(tls: bool) -> PgServer {
        let bin = pg_bindir();
        let dir = tempfile::tempdir().unwrap();
        let as_postgres = run_capture("id", &["-u"]).trim() == "0";
        std::fs::write(dir.path().join("pw"), PASSWORD).unwrap();
        let ca = tls.then(|| throwaway_ca(dir.path()).0);
        if as_postgres {
            // PostgreSQL refuses to run as root: its files belong to the package's user.
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(ok.success());
        }
        let pg = PgServer {
            port: free_port(),
            dir,
            bin,
            as_postgres,
            ca,
        };
        let data = pg.data();
        let pw = pg.dir.path().join("pw");
        let out = pg.tool(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "candor",
                &format!("--pwfile={}", pw.display()),
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                "-E",
                "UTF8",
            ],
        );
        assert!(out.status.success(), "initdb: {}", text(&out));
        pg.resume();
        pg
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn tool(&self, name: &str, args: &[&str]) -> Output {
        let exe = self.bin.join(name);
        let mut c = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        c.args(args).output().unwrap()
    }

    /// Starts (or starts again) the server and waits until it accepts connections.
    fn resume(&self) {
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        if self.ca.is_some() {
            let d = self.dir.path().display();
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={d}/cert.pem -c ssl_key_file={d}/key.pem"
            ));
        }
        let log = self.dir.path().join("server.log").display().to_string();
        let out = self.tool(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log,
                "-o",
                &options,
                "-w",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {} {}",
            text(&out),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Stops the server (fast shutdown: open connections are cut).
    fn pause(&self) {
        let out = self.tool("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
        assert!(out.status.success(), "pg_ctl stop: {}", text(&out));
    }

    fn url(&self) -> String {
        format!(
            "postgresql://candor:{PASSWORD}@127.0.0.1:{}/postgres",
            self.port
        )
    }

    /// One number from `sql`, read with a client of the test's own.
    async fn count(&self, sql: &str) -> Option<i64> {
        let url = self.url();
        let sql = sql.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).ok()?;
            c.query_one(&sql, &[]).ok()?.try_get::<_, i64>(0).ok()
        })
        .await
        .unwrap()
    }

    /// Waits until `sql` counts `n`.
    async fn counts(&self, sql: &str, n: i64) {
        for _ in 0..300 {
            if self.count(sql).await == Some(n) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{sql} never counted {n} (last {:?})", self.count(sql).await);
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self.tool(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
    }
}

/// Debian's PostgreSQL binaries: `CANDOR_PG_BINDIR`, else the newest under
/// /usr/lib/postgresql.
fn pg_bindir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CANDOR_PG_BINDIR") {
        return dir.into();
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort();
    found.pop().expect(
        "PostgreSQL (Debian package postgresql) must be installed: `scripts/test` installs it",
    )
}

fn run_capture(cmd: &str, args: &[&str]) -> String {
    String::from_utf8_lossy(&Command::new(cmd).args(args).output().unwrap().stdout).into_owned()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn config(mock: &Mock) -> String {
    config_with(mock, "")
}

/// `config` with more `[request_log]` settings.
fn config_with(mock: &Mock, request_log: &str) -> String {
    format!(
        "[server]\nlisten = \"{{listen}}\"\n[request_log]\npostgres_url_env = \"CANDOR_TEST_PG\"\n\
         flush_interval = \"50ms\"\n{request_log}\n[[providers]]\nid = \"p0\"\nbase_url = \"{}\"\nmodels = [\"m\"]\n",
        mock.url
    )
}

async fn answered(gw: &Served, n: usize) {
    for i in 0..n {
        let r = gw.chat(i % 2 == 0).await;
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_log_lives_in_postgres_and_outlasts_an_outage() {
    let pg = PgServer::start();
    let url = pg.url();
    let mock = spawn_mock(Script::words(3)).await;
    let mut gw = Served::start_env(&config(&mock), &[("CANDOR_TEST_PG", &url)]).await;
    const ROWS: &str = "SELECT count(*) FROM requests";

    answered(&gw, 20).await;
    pg.counts(ROWS, 20).await;
    // Rows land in the time partitions made ahead of the clock, not the default one.
    pg.counts("SELECT count(*) FROM requests_default", 0).await;
    let partitions = pg
        .count("SELECT count(*) FROM pg_inherits WHERE inhparent = 'requests'::regclass")
        .await
        .unwrap();
    assert!(partitions >= 4, "{partitions} partitions");
    let listed: Vec<Value> = gw
        .get("/api/requests?limit=100")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.len(), 20);
    assert!(
        listed
            .iter()
            .all(|r| r["provider"] == "p0" && r["status"] == 200)
    );

    // The server goes away mid-traffic: clients never notice, the log says so, holds the
    // rows, and writes every one of them once the server is back.
    pg.pause();
    answered(&gw, 20).await;
    let health = eventually("the log to read failing", || async {
        let v: Value = gw.get("/health").await.ok()?.json().await.ok()?;
        let log = v["request_log"].clone();
        (log["failing_since_unix_ms"].is_i64() && log["rows_buffered"] == 20).then_some(v)
    })
    .await;
    assert_eq!(health["request_log"]["rows_lost"], 0, "{health}");
    assert_eq!(gw.metric("candor_request_log_failing").await, 1.0);
    pg.resume();
    pg.counts(ROWS, 40).await;
    eventually("the log to read well", || async {
        (gw.metric("candor_request_log_failing").await == 0.0
            && gw.metric("candor_request_log_buffered_rows").await == 0.0)
            .then_some(())
    })
    .await;
    assert_eq!(gw.metric("candor_request_log_dropped_total").await, 0.0);
    assert_eq!(
        gw.metric("candor_request_log_rows_written_total").await,
        40.0
    );
    let incidents = gw.get("/api/incidents").await.unwrap();
    assert_eq!(incidents.status(), 200);

    // `candor logs` reads the same rows through the configuration.
    let cfg = gw.dir.path().join("candor.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_candor"))
        .args(["logs", "--json", "--limit", "100", "--config"])
        .arg(&cfg)
        .env("CANDOR_TEST_PG", &url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 40);

    // The password is in the URL and nowhere else.
    let mut seen = String::new();
    for path in [
        "/health",
        "/api/health",
        "/metrics",
        "/api/requests?limit=5",
    ] {
        seen.push_str(&gw.get(path).await.unwrap().text().await.unwrap());
    }
    let logs = gw.stop();
    assert!(logs.contains("request log"), "the outage is logged: {logs}");
    for (what, text) in [("responses", &seen), ("logs", &logs)] {
        assert!(!text.contains(PASSWORD), "the password is in the {what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_whole_partitions() {
    let pg = PgServer::start();
    let url = pg.url();
    let text = "[request_log]\npostgres_url_env = \"PG\"\n[[providers]]\nid = \"p0\"\n\
                base_url = \"http://127.0.0.1:9\"\nmodels = [\"m\"]\n";
    let db = candor::config::Config::parse(text, |_| Some(url.clone()))
        .unwrap()
        .request_log
        .database;
    let url = pg.url();
    let dropped = tokio::task::spawn_blocking(move || {
        let hour: i64 = 3_600_000;
        let mut store = candor::request_log::Store::open(&db, Duration::from_secs(3600)).unwrap();
        // A partition of ten hours ago, with a row in it, and a row too old for any
        // partition (it lands in the default one).
        let old = (candor::observation::unix_ms_now() / hour - 10) * hour;
        let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        client
            .batch_execute(&format!(
                "CREATE TABLE requests_p{old}_{} PARTITION OF requests FOR VALUES FROM ({old}) TO ({})",
                old + hour,
                old + hour
            ))
            .unwrap();
        let row = |id: &str, ts_ms: i64| candor::request_log::RequestRecord {
            request_id: id.into(),
            ts_ms,
            operation: "chat".into(),
            requested_model: "m".into(),
            status: 200,
            source: "client".into(),
            ..Default::default()
        };
        let now = candor::observation::unix_ms_now();
        store
            .insert(&[row("old", old + 1), row("older", old - 50 * hour), row("new", now)])
            .unwrap();
        let removed = store.delete_before(now - 2 * hour).unwrap();
        let left: i64 = client
            .query_one("SELECT count(*) FROM requests", &[])
            .unwrap()
            .get(0);
        (removed, left)
    })
    .await
    .unwrap();
    let (removed, left) = dropped;
    assert_eq!(removed.partitions, 1, "{removed:?}");
    assert_eq!(
        removed.rows, 1,
        "the default partition's old row: {removed:?}"
    );
    assert_eq!(left, 1, "only the new row is left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_sslmode_require_the_log_is_written_over_verified_tls() {
    let pg = PgServer::start_tls();
    let url = format!("{}?sslmode=require", pg.url());
    let ca = pg.ca.clone().unwrap();
    let mock = spawn_mock(Script::words(3)).await;
    let trusted = config_with(&mock, &format!("postgres_ca_file = \"{}\"", ca.display()));
    let mut gw = Served::start_env(&trusted, &[("CANDOR_TEST_PG", &url)]).await;
    answered(&gw, 5).await;
    pg.counts("SELECT count(*) FROM requests", 5).await;
    let over_tls = pg
        .count(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a ON a.pid = s.pid \
             WHERE a.application_name = 'candor' AND s.ssl",
        )
        .await
        .unwrap();
    assert!(over_tls >= 1, "the writer's connection is TLS");
    gw.stop();

    // Without the CA that signed the server's certificate, the system's roots do not
    // trust it: nothing is written, clients are still served, and the log says so.
    let mut gw = Served::start_env(&config(&mock), &[("CANDOR_TEST_PG", &url)]).await;
    answered(&gw, 3).await;
    eventually("the log to read failing", || async {
        let v: Value = gw.get("/health").await.ok()?.json().await.ok()?;
        v["request_log"]["failing_since_unix_ms"]
            .is_i64()
            .then_some(())
    })
    .await;
    assert_eq!(pg.count("SELECT count(*) FROM requests").await, Some(5));
    let logs = gw.stop();
    assert!(!logs.contains(PASSWORD), "the password is in the logs");
}
