//! The whole product on its embedded defaults, driven over HTTP as a new
//! user would: post a lead, see it in the contact's timeline, restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use serde_json::json;
use switchboard_tests::{Launch, lead_form};

#[tokio::test]
async fn a_lead_reaches_the_timeline_within_two_seconds_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let sb = Launch::new(dir.path()).start().await.unwrap();
    let (status, accepted) = sb
        .post_lead(&json!({
            "name": "Иван Петров",
            "phone": "8 (916) 123-45-67",
            "email": "Ivan@Example.com",
            "message": "Перезвоните",
            "page_url": "https://example.com/price",
            "utm_source": "yandex", "utm_medium": "cpc", "utm_campaign": "winter"
        }))
        .await
        .unwrap();
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap().to_owned();
    let key = accepted["contact_key"].as_str().unwrap().to_owned();
    assert_eq!(key, "tel:+79161234567");

    let timeline = sb
        .wait_for_timeline(&key, &id, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(timeline["contact"]["name"], "Иван Петров");
    assert_eq!(timeline["contact"]["email"], "ivan@example.com");
    let item = &timeline["items"][0];
    assert_eq!(item["kind"], "lead.received");
    assert_eq!(item["campaign"]["campaign"], "winter");
    assert_eq!(item["payload"]["message"], "Перезвоните");

    let status = sb.terminate(Duration::from_secs(15)).await.unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(dir.path().join("feed.sqlite").exists());
    assert!(dir.path().join("crm.sqlite").exists());

    let again = Launch::new(dir.path()).start().await.unwrap();
    let timeline = again
        .wait_for_timeline(&key, &id, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(
        timeline["items"].as_array().unwrap().len(),
        1,
        "replayed twice: {timeline}"
    );
    again.terminate(Duration::from_secs(15)).await.unwrap();
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_the_service_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let sb = Launch::new(dir.path()).start().await.unwrap();
    let post = |ct: &'static str, body: Vec<u8>| {
        let sb = &sb;
        async move {
            let resp = sb
                .gateway_request(reqwest::Method::POST, "/v1/leads/widget")
                .await
                .unwrap()
                .header("content-type", ct)
                .body(body)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            (
                status,
                resp.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        }
    };
    let (status, body) = post("application/json", b"{\"phone\": ".to_vec()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_json")),
        "{body}"
    );
    let (status, body) = post(
        "application/json",
        r#"{"phone":"позвоните мне"}"#.as_bytes().to_vec(),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(body["error"]["fields"]["phone"].is_string(), "{body}");
    let ten_mb = [
        b"{\"phone\":\"+79161234567\",\"message\":\"".as_slice(),
        &vec![b'x'; 10 << 20],
        b"\"}",
    ]
    .concat();
    let (status, body) = post("application/json", ten_mb).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("payload_too_large")),
        "{body}"
    );

    let (status, _) = sb.post_lead(&lead_form(1)).await.unwrap();
    assert_eq!(status, 202, "the gateway stopped accepting after bad input");
    assert_eq!(sb.get_text("gateway", "/healthz").await.unwrap().0, 200);
    assert_eq!(sb.get_text("crm", "/readyz").await.unwrap().0, 200);
    let ids = sb.all_interaction_ids().await.unwrap();
    assert!(ids.len() <= 1, "rejected leads reached the CRM: {ids:?}");
    sb.terminate(Duration::from_secs(15)).await.unwrap();
}

#[tokio::test]
async fn both_metrics_endpoints_pass_promtool() {
    let dir = tempfile::tempdir().unwrap();
    let sb = Launch::new(dir.path()).start().await.unwrap();
    sb.post_lead(&lead_form(7)).await.unwrap();
    sb.crm_get("/v1/interactions").await.unwrap();
    for service in ["gateway", "crm"] {
        let (status, text) = sb.get_text(service, "/metrics").await.unwrap();
        assert_eq!(status, 200);
        assert!(text.contains("switchboard_http_requests_total"), "{text}");
        let mut child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect(
                "promtool must be installed (Debian package `prometheus`; .ci/run installs it)",
            );
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool rejected {service} metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    sb.terminate(Duration::from_secs(15)).await.unwrap();
}

#[tokio::test]
async fn gateway_and_crm_api_as_separate_processes_share_the_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = Launch::new(dir.path())
        .command("gateway")
        .start()
        .await
        .unwrap();
    assert!(gateway.crm.is_none());
    let crm = Launch::new(dir.path())
        .command("crm-api")
        .start()
        .await
        .unwrap();
    assert!(crm.gateway.is_none());
    let started = Instant::now();
    let mut last = None;
    for n in 0..20 {
        let (status, body) = gateway.post_lead(&lead_form(100 + n)).await.unwrap();
        assert_eq!(status, 202);
        last = Some((
            body["contact_key"].as_str().unwrap().to_owned(),
            body["id"].as_str().unwrap().to_owned(),
        ));
    }
    let (key, id) = last.unwrap();
    crm.wait_for_timeline(&key, &id, Duration::from_secs(2))
        .await
        .unwrap();
    let ids = crm.all_interaction_ids().await.unwrap();
    assert_eq!(ids.len(), 20, "after {:?}", started.elapsed());
    gateway.terminate(Duration::from_secs(15)).await.unwrap();
    crm.terminate(Duration::from_secs(15)).await.unwrap();
}

#[tokio::test]
async fn a_crash_loses_no_accepted_lead() {
    let dir = tempfile::tempdir().unwrap();
    let sb = Launch::new(dir.path())
        .command("gateway")
        .start()
        .await
        .unwrap();
    let mut accepted = Vec::new();
    for n in 0..50 {
        let (status, body) = sb.post_lead(&lead_form(n)).await.unwrap();
        assert_eq!(status, 202);
        accepted.push(body["id"].as_str().unwrap().to_owned());
    }
    sb.kill9().await.unwrap();
    let crm = Launch::new(dir.path())
        .command("crm-api")
        .start()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut ids = crm.all_interaction_ids().await.unwrap();
    while ids.len() < accepted.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        ids = crm.all_interaction_ids().await.unwrap();
    }
    ids.sort();
    accepted.sort();
    assert_eq!(ids, accepted);
    crm.terminate(Duration::from_secs(15)).await.unwrap();
}
