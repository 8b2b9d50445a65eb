//! `[server.tls]`: the real binary terminating TLS with a self-signed certificate, used by
//! the official OpenAI Python SDK.

use crate::support::*;

#[tokio::test]
async fn the_openai_sdk_talks_to_candor_over_tls() {
    let mock = spawn_mock(Script::words(3)).await;
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = throwaway_ca(certs.path());
    let mut gw = Served::start_tls(
        &format!(
            "[server]\nlisten = \"{{listen}}\"\n[[server.client_keys]]\nid = \"tls\"\n\
             key_env = \"TEST_CLIENT_KEY\"\n[server.tls]\ncert_path = \"{}\"\nkey_path = \"{}\"\n\
             [request_log]\npath = \"{{dir}}/log.db\"\n[[providers]]\nid = \"p0\"\n\
             base_url = \"{}\"\nmodels = [\"m\"]\n",
            cert.display(),
            key.display(),
            mock.url
        ),
        &ca,
    )
    .await;
    let url = format!("{}/v1", gw.url);
    assert!(url.starts_with("https://"));
    let ca = ca.display().to_string();
    let v = sdk_script(
        "openai_tls.py",
        vec![url, CLIENT_KEY.into(), "m".into(), ca],
    )
    .await;
    assert_eq!(v["chat"], "w0 w1 w2 ");
    assert_eq!(v["stream"], "w0 w1 w2 ");
    assert_eq!(v["untrusted"], "APIConnectionError");
    // Plain HTTP on the TLS port is refused, not served.
    let plain = reqwest::Client::new()
        .get(gw.url.replace("https://", "http://") + "/livez")
        .send()
        .await;
    assert!(plain.map_or(true, |r| !r.status().is_success()));
    gw.stop();
}
