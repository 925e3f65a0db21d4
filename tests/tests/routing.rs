//! Routing end to end: a lead arrives, is assigned to A; A does not respond
//! within the SLA; it is escalated, and the contact's timeline shows it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard_tests::{Launch, Switchboard, lead_form};

const CONFIG: &str = r#"
[[routing.managers]]
id = "anna"
name = "Anna"
queues = ["sales"]

[[routing.managers]]
id = "sergey"
name = "Sergey"

[[routing.queues]]
name = "sales"
policy = "round_robin"
supervisor = "sergey"
[routing.queues.sla]
first_response = { lead = "2s" }
on_breach = "escalate"
"#;

async fn timeline_kinds(sb: &Switchboard, key: &str) -> Vec<Value> {
    let (_, body) = sb
        .crm_get(&format!("/v1/contacts/{key}/timeline"))
        .await
        .unwrap();
    body["items"].as_array().cloned().unwrap_or_default()
}

async fn wait_for_kind(sb: &Switchboard, key: &str, kind: &str, within: Duration) -> Value {
    let started = Instant::now();
    loop {
        let items = timeline_kinds(sb, key).await;
        if let Some(item) = items.iter().find(|i| i["kind"] == kind) {
            return item.clone();
        }
        assert!(
            started.elapsed() < within,
            "no {kind} in {key}'s timeline after {within:?}: {items:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_unanswered_lead_is_escalated_and_the_timeline_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchboard.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let sb = Launch::new(&dir.path().join("data"))
        .config(&config)
        .start()
        .await
        .unwrap();

    let resp = sb
        .gateway_request(reqwest::Method::PUT, "/v1/managers/anna/presence")
        .await
        .unwrap()
        .json(&json!({"presence": "online"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = sb
        .gateway_request(reqwest::Method::PUT, "/v1/managers/nobody/presence")
        .await
        .unwrap()
        .json(&json!({"presence": "online"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    let (status, lead) = sb.post_lead(&lead_form(77)).await.unwrap();
    assert_eq!(status, 202);
    let key = lead["contact_key"].as_str().unwrap().to_owned();

    let assigned = wait_for_kind(&sb, &key, "routing.assigned", Duration::from_secs(2)).await;
    assert_eq!(assigned["manager"], "anna");
    assert_eq!(assigned["payload"]["for"], lead["id"]);
    assert_eq!(assigned["payload"]["queue"], "sales");

    // Anna does not answer within 2 s.
    let escalated = wait_for_kind(&sb, &key, "routing.escalated", Duration::from_secs(10)).await;
    assert_eq!(escalated["manager"], "sergey");
    assert_eq!(escalated["payload"]["from"], "anna");
    assert_eq!(
        escalated["payload"]["reason"],
        "sla_first_response_breached"
    );
    let kinds: Vec<String> = timeline_kinds(&sb, &key)
        .await
        .iter()
        .map(|i| i["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        kinds,
        ["routing.escalated", "routing.assigned", "lead.received"],
        "newest first"
    );

    let (status, text) = sb.get_text("gateway", "/v1/managers").await.unwrap();
    assert_eq!(status, 200);
    let managers: Value = serde_json::from_str(&text).unwrap();
    let load = |id: &str| {
        managers["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .unwrap()["load"]["lead"]
            .as_u64()
            .unwrap()
    };
    assert_eq!((load("anna"), load("sergey")), (0, 1), "{managers}");
    sb.terminate(Duration::from_secs(15)).await.unwrap();
}
