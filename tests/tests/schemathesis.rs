//! Generated requests (schemathesis, from the served OpenAPI documents)
//! against the running binary: no request may get a 5xx.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use switchboard_tests::{Launch, lead_form};

fn schemathesis(base: &str, token: &str) -> std::process::Output {
    std::process::Command::new(
        std::env::var("SCHEMATHESIS_BIN").unwrap_or_else(|_| "schemathesis".into()),
    )
    .args(["run", &format!("{base}/v1/openapi.json")])
    .args([
        "--checks",
        "not_a_server_error",
        "--max-examples",
        "20",
        "--seed",
        "1",
        "--workers",
        "1",
    ])
    .args(["--generation-database", "none", "--request-timeout", "10"])
    .args(["--header", &format!("Authorization: Bearer {token}")])
    .env("NO_COLOR", "1")
    .output()
    .expect("schemathesis must be installed (pip install schemathesis; scripts/test does)")
}

#[tokio::test]
async fn no_generated_request_gets_a_server_error() {
    let dir = tempfile::tempdir().unwrap();
    let sb = Launch::new(dir.path()).start().await.unwrap();
    // Some data for the operations that read it.
    for n in 0..3 {
        assert_eq!(sb.post_lead(&lead_form(n)).await.unwrap().0, 202);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for base in [
        format!("http://{}", sb.crm.unwrap()),
        format!("http://{}", sb.gateway.unwrap()),
    ] {
        let token = sb.token.clone();
        let out = tokio::task::spawn_blocking(move || schemathesis(&base, &token))
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "schemathesis found server errors:\n{stdout}\n{}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            sb.logs()
        );
    }
    sb.terminate(Duration::from_secs(15)).await.unwrap();
}
