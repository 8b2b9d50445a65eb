use std::time::Duration;

use super::*;

fn env(name: &str) -> Option<String> {
    match name {
        "KEY" => Some("sk-secret".into()),
        "ADMIN" => Some("adm".into()),
        _ => None,
    }
}

const MINIMAL: &str = r#"
[[providers]]
id = "a"
base_url = "http://127.0.0.1:9000/v1/"
models = ["m"]
"#;

#[test]
fn minimal_config_gets_defaults() {
    let c = Config::parse(MINIMAL, env).unwrap();
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.timeouts.total, defaults::TOTAL);
    assert_eq!(
        c.providers[0].base_url, "http://127.0.0.1:9000/v1",
        "trailing slash trimmed"
    );
    assert_eq!(c.targets.error_rate, 0.01);
    assert!(c.server.admin_token.is_none() && c.server.client_keys.is_empty());
}

#[test]
fn secrets_come_from_the_environment_and_never_print() {
    let text = format!(
        "[server]\nadmin_token_env = \"ADMIN\"\n[[server.client_keys]]\nid = \"t\"\nkey_env = \"KEY\"\n{MINIMAL}api_key_env = \"KEY\"\n"
    );
    let c = Config::parse(&text, env).unwrap();
    assert_eq!(
        c.providers[0].api_key.as_ref().unwrap().expose(),
        "sk-secret"
    );
    let printed = format!("{c:?}");
    assert!(
        !printed.contains("sk-secret") && !printed.contains("adm\""),
        "{printed}"
    );
    assert!(c.server.client_keys[0].key.matches(b"sk-secret"));
    assert!(!c.server.client_keys[0].key.matches(b"sk-secreT"));
    assert!(!c.server.client_keys[0].key.matches(b"sk-secret2"));
}

#[test]
fn model_map_and_prices() {
    let text = r#"
[[providers]]
id = "a"
base_url = "https://x.example/v1"
models = ["public", "other"]
model_map = { public = "vendor/model-v2" }
price = { input_per_million = 2.0, output_per_million = 8.0 }
"#;
    let c = Config::parse(text, env).unwrap();
    let p = &c.providers[0];
    assert_eq!(p.upstream_model("public"), "vendor/model-v2");
    assert_eq!(p.upstream_model("other"), "other");
    assert!((p.price.cost(1000, 500) - 0.006).abs() < 1e-12);
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = r#"
[targets]
error_rate = 2.0
decode_tokens_per_s = -1
[request_log]
batch_size = 0
[[providers]]
id = "bad id!"
base_url = "not a url"
models = ["m"]
model_map = { x = "y" }
node_header = "bad header"
"#;
    let Err(ConfigError::Invalid(problems)) = Config::parse(text, env) else {
        panic!("must be invalid");
    };
    for want in [
        "targets.error_rate",
        "targets.decode_tokens_per_s",
        "request_log",
        "providers[0].id",
        "providers[0].base_url",
        "providers[0].model_map",
        "providers[0].node_header",
    ] {
        assert!(
            problems.iter().any(|p| p.starts_with(want)),
            "missing {want}: {problems:?}"
        );
    }
}

#[test]
fn every_unknown_key_is_reported_at_once_and_bad_durations_are_parse_errors() {
    let text = format!(
        "[server]\nlisten_addr = \"x\"\nmax_body = 3\n[timeoutz]\nttft = \"1s\"\nidle = \"2s\"\n\
         [timeouts]\nttf = \"1s\"\n{MINIMAL}"
    );
    let Err(ConfigError::Invalid(problems)) = Config::parse(&text, env) else {
        panic!("unknown keys must be problems");
    };
    // The unknown table is one problem (its keys are not reported again), and each
    // problem names its line and what was expected.
    assert_eq!(problems.len(), 4, "{problems:#?}");
    for want in [
        "line 2: unknown field `listen_addr`",
        "line 3: unknown field `max_body`, expected one of `listen`",
        "line 4: unknown field `timeoutz`",
        "line 8: unknown field `ttf`",
    ] {
        assert!(
            problems.iter().any(|p| p.starts_with(want)),
            "{want}: {problems:#?}"
        );
    }
    // Problems found after the unknown keys are reported with them.
    let text = "[server]\nlisten_addr = \"x\"\nmax_in_flight = 0\n";
    let Err(ConfigError::Invalid(problems)) = Config::parse(text, env) else {
        panic!("expected problems");
    };
    assert!(
        problems.iter().any(|p| p.contains("max_in_flight")),
        "{problems:#?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("listen_addr")),
        "{problems:#?}"
    );
    let e = Config::parse(&format!("[timeouts]\nttft = \"soon\"\n{MINIMAL}"), env).unwrap_err();
    assert!(matches!(e, ConfigError::Parse(_)));
    assert!(e.to_string().contains("ttft"), "{e}");
}

#[test]
fn no_providers_is_an_error() {
    assert!(Config::parse("", env).is_err());
}

#[test]
fn targets_judge_requests() {
    let t = Targets {
        ttft: Duration::from_millis(500),
        decode_tokens_per_s: 20.0,
        e2e: Duration::from_secs(5),
        error_rate: 0.01,
    };
    let ms = Duration::from_millis;
    assert!(
        t.met_by(true, Some(ms(100)), ms(9000), Some(25.0)),
        "fast decode excuses a long answer"
    );
    assert!(
        t.met_by(true, Some(ms(100)), ms(3000), Some(5.0)),
        "short answer needs no rate"
    );
    assert!(
        !t.met_by(true, Some(ms(900)), ms(1000), Some(50.0)),
        "slow first token"
    );
    assert!(!t.met_by(false, Some(ms(10)), ms(10), Some(50.0)), "failed");
    assert!(
        t.met_by(true, None, ms(4000), None),
        "non-streamed within e2e"
    );
}

#[test]
fn routing_defaults_and_problems() {
    let c = Config::parse(MINIMAL, env).unwrap();
    assert_eq!(c.routing, RoutingConfig::default());
    assert_eq!(c.routing.policy, Policy::Candor);
    assert_eq!(c.scrape.stale_after, Duration::from_secs(15));

    let text = format!(
        "[routing]\npolicy = \"least_busy\"\n[[routing.hedge]]\nmodel = \"m\"\ndelay = \"250ms\"\n[scrape]\ninterval = \"2s\"\n{MINIMAL}"
    );
    let c = Config::parse(&text, env).unwrap();
    assert_eq!(c.routing.policy, Policy::LeastBusy);
    assert_eq!(
        c.routing.hedge["m"].delay,
        HedgeDelay::Fixed(Duration::from_millis(250))
    );
    assert_eq!(
        c.scrape.stale_after,
        Duration::from_secs(6),
        "three intervals"
    );

    let text = format!(
        "[routing]\nretry_budget = 1.5\nmax_ejection = \"1s\"\n[[routing.hedge]]\nmodel = \"nobody-serves-this\"\ndelay = \"later\"\n{MINIMAL}"
    );
    let Err(ConfigError::Invalid(problems)) = Config::parse(&text, env) else {
        panic!("must be invalid");
    };
    for want in [
        "routing.retry_budget",
        "routing.max_ejection",
        "routing.hedge[0].delay",
        "routing.hedge: model \"nobody-serves-this\"",
    ] {
        assert!(
            problems.iter().any(|p| p.starts_with(want)),
            "missing {want}: {problems:?}"
        );
    }
    assert!(matches!(
        Config::parse(&format!("[routing]\npolicy = \"fastest\"\n{MINIMAL}"), env),
        Err(ConfigError::Parse(_))
    ));
}

#[test]
fn urls_are_shown_without_credentials() {
    assert_eq!(
        shown_url("https://user:s3cret@api.example.com/v1"),
        "https://***@api.example.com/v1"
    );
    assert_eq!(
        shown_url("http://h:1/v1?key=s3cret&x=1"),
        "http://h:1/v1?key=***&x=***"
    );
    assert_eq!(shown_url("http://h:1/v1"), "http://h:1/v1");
    assert_eq!(shown_url("ht tp://u:s3cret@h"), "ht tp://***@h");
    let text = "[[canaries.probe]]\nname = \"p\"\nprompt = \"x\"\nexpect_exact = \"y\"\n\
        models = [\"nope\"]\n[[providers]]\nid = \"a\"\nbase_url = \"ftp://u:s3cret@h\"\n\
        models = [\"m\"]\n";
    let e = Config::parse(text, env).unwrap_err().to_string();
    assert!(
        e.contains("canaries.probe[0].models: model \"nope\""),
        "{e}"
    );
    assert!(!e.contains("s3cret"), "{e}");
}

#[test]
fn tracing_is_off_by_default_and_validated_when_on() {
    assert!(Config::parse(MINIMAL, env).unwrap().tracing.is_none());
    let on = format!(
        "[tracing]\nendpoint = \"http://127.0.0.1:6006/v1/traces\"\nheaders_env = {{ authorization = \"KEY\" }}\nsample_ratio = 0.25\n{MINIMAL}"
    );
    let c = Config::parse(&on, env).unwrap();
    let t = c.tracing.unwrap();
    assert_eq!(t.sample_ratio, 0.25);
    assert_eq!(t.service_name, "candor");
    assert_eq!(t.headers[0].0.as_str(), "authorization");
    assert_eq!(t.headers[0].1.expose(), "sk-secret");
    assert!(
        !format!("{t:?}").contains("sk-secret"),
        "the header value never prints"
    );

    let bad = format!(
        "[tracing]\nendpoint = \"localhost:6006\"\nheaders_env = {{ \"bad header\" = \"KEY\", x-key = \"UNSET_VAR\" }}\nsample_ratio = 1.5\nbatch_size = 0\n{MINIMAL}"
    );
    let Err(ConfigError::Invalid(problems)) = Config::parse(&bad, env) else {
        panic!("an invalid [tracing] section must be refused");
    };
    let all = problems.join("\n");
    for want in [
        "tracing.endpoint",
        "tracing.headers_env.bad header: \"bad header\" is not a valid header name",
        "tracing.headers_env.x-key: environment variable UNSET_VAR is not set",
        "tracing.sample_ratio: must be between 0 and 1, got 1.5",
        "tracing.batch_size: must be above 0",
    ] {
        assert!(all.contains(want), "{want} missing from:\n{all}");
    }
}

#[test]
fn a_provider_key_can_come_from_a_file_and_never_prints() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, "sk-from-file\n").unwrap();
    let text = format!("{MINIMAL}api_key_file = \"{}\"\n", key.display());
    let c = Config::parse(&text, env).unwrap();
    assert_eq!(
        c.providers[0].api_key.as_ref().unwrap().expose(),
        "sk-from-file"
    );

    let both = format!(
        "{MINIMAL}api_key_file = \"{}\"\napi_key_env = \"KEY\"\n",
        key.display()
    );
    let missing = format!(
        "{MINIMAL}api_key_file = \"{}\"\n",
        dir.path().join("nope").display()
    );
    std::fs::write(dir.path().join("empty"), " \n").unwrap();
    let empty = format!(
        "{MINIMAL}api_key_file = \"{}\"\n",
        dir.path().join("empty").display()
    );
    for (text, want) in [
        (both, "set api_key_env or api_key_file, not both"),
        (missing, "providers[0].api_key_file: cannot read"),
        (empty, "is empty"),
    ] {
        let Err(ConfigError::Invalid(problems)) = Config::parse(&text, env) else {
            panic!("refused: {want}");
        };
        let all = problems.join("\n");
        assert!(all.contains(want), "{want} not in {all}");
        assert!(!all.contains("sk-from-file"));
    }
}

#[test]
fn a_reload_names_the_sections_that_need_a_restart() {
    let old =
        format!("[server]\nlisten = \"127.0.0.1:8080\"\n[routing]\npolicy = \"candor\"\n{MINIMAL}");
    let providers_and_keys = format!(
        "[server]\nlisten = \"127.0.0.1:8080\"\nadmin_token_env = \"ADMIN\"\n[routing]\npolicy = \"candor\"\n{MINIMAL}[[providers]]\nid = \"b\"\nbase_url = \"http://127.0.0.1:9001/v1\"\nmodels = [\"m\"]\n"
    );
    assert!(restart_required(&old, &providers_and_keys).is_empty());
    let more = format!(
        "[server]\nlisten = \"127.0.0.1:9090\"\n[routing]\npolicy = \"least_loaded\"\n[slo]\nobjective = 0.99\n{MINIMAL}"
    );
    assert_eq!(
        restart_required(&old, &more),
        ["routing", "server.listen", "slo"]
    );
}

#[test]
fn the_request_log_is_sqlite_unless_a_postgres_url_is_named() {
    let c = Config::parse(MINIMAL, env).unwrap();
    assert_eq!(
        c.request_log.database,
        LogDatabase::Sqlite(PathBuf::from("candor.db"))
    );
    assert_eq!(c.request_log.buffer, 50_000);
    let pg = |url: &'static str| {
        move |name: &str| match name {
            "PG" => Some(url.to_owned()),
            other => env(other),
        }
    };
    let text = format!("[request_log]\npostgres_url_env = \"PG\"\n{MINIMAL}");
    let c = Config::parse(&text, pg("postgresql://candor:pw-9x@db:5432/log")).unwrap();
    assert!(matches!(c.request_log.database, LogDatabase::Postgres(_)));
    assert!(!format!("{:?}", c.request_log).contains("pw-9x"));

    // Not both; a URL that is not one is named without being shown; an unset variable is
    // named.
    let both = format!("[request_log]\npath = \"x.db\"\npostgres_url_env = \"PG\"\n{MINIMAL}");
    let bad = Config::parse(&both, pg("postgresql://a@b/c"))
        .unwrap_err()
        .to_string();
    assert!(bad.contains("not both"), "{bad}");
    let bad = Config::parse(&text, pg("mysql://pw-9x@@db:::1"))
        .unwrap_err()
        .to_string();
    assert!(bad.contains("PG does not hold a PostgreSQL URL"), "{bad}");
    assert!(!bad.contains("pw-9x"), "{bad}");
    let bad = Config::parse(&text, env).unwrap_err().to_string();
    assert!(bad.contains("PG is not set"), "{bad}");
    let ca_alone = format!("[request_log]\npostgres_ca_file = \"ca.pem\"\n{MINIMAL}");
    let bad = Config::parse(&ca_alone, env).unwrap_err().to_string();
    assert!(bad.contains("only with postgres_url_env"), "{bad}");
    let with_ca = format!(
        "[request_log]\npostgres_url_env = \"PG\"\npostgres_ca_file = \"ca.pem\"\n{MINIMAL}"
    );
    let c = Config::parse(&with_ca, pg("postgresql://a@b/c?sslmode=require")).unwrap();
    let LogDatabase::Postgres(target) = c.request_log.database else {
        panic!("not PostgreSQL");
    };
    assert_eq!(target.ca_file, Some(PathBuf::from("ca.pem")));
}
