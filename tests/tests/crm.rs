//! The CRM through the real binary, as a new user meets it; and the loop
//! between the CRM and routing: an owner set in the CRM is who the next
//! contact from that client goes to.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard_tests::{Launch, Switchboard, lead_form};

struct Api<'a> {
    sb: &'a Switchboard,
    http: reqwest::Client,
    token: String,
}

impl Api<'_> {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        if_match: Option<&str>,
    ) -> (u16, Value, Option<String>) {
        let mut req = self
            .http
            .request(method, format!("http://{}{path}", self.sb.crm.unwrap()))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        if let Some(v) = if_match {
            req = req.header("if-match", v);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let etag = resp
            .headers()
            .get("etag")
            .map(|v| v.to_str().unwrap().to_owned());
        (status, resp.json().await.unwrap_or(Value::Null), etag)
    }

    async fn get(&self, path: &str) -> Value {
        let (status, body, _) = self.send(reqwest::Method::GET, path, None, None).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }
}

async fn eventually<F, Fut>(what: &str, within: Duration, mut probe: F) -> Value
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<Value>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            started.elapsed() < within,
            "{what} did not happen within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_new_user_turns_a_lead_into_a_won_deal() {
    let dir = tempfile::tempdir().unwrap();
    let sb = Launch::new(dir.path()).start().await.unwrap();
    let api = Api {
        sb: &sb,
        http: reqwest::Client::builder().no_proxy().build().unwrap(),
        token: sb.token.clone(),
    };
    let (status, lead) = sb.post_lead(&lead_form(501)).await.unwrap();
    assert_eq!(status, 202);

    let client = eventually("the potential client", Duration::from_secs(2), || async {
        let page = api.get("/v1/clients?status=potential").await;
        page["items"].as_array().unwrap().first().cloned()
    })
    .await;
    assert_eq!(client["name"], "Client 501");
    assert_eq!(
        client["phones"][0],
        lead["contact_key"]
            .as_str()
            .unwrap()
            .trim_start_matches("tel:")
    );
    let id = client["id"].as_str().unwrap();

    let (status, promoted, _) = api
        .send(
            reqwest::Method::POST,
            &format!("/v1/clients/{id}/promote"),
            None,
            None,
        )
        .await;
    assert_eq!(
        (status, promoted["status"].as_str()),
        (200, Some("current"))
    );

    let (status, deal, etag) = api
        .send(reqwest::Method::POST, "/v1/deals", Some(json!({"client_id": id, "title": "Annual plan", "amount_minor": 12_000_000, "currency": "RUB"})), None)
        .await;
    assert_eq!(status, 201, "{deal}");
    let deal_id = deal["id"].as_str().unwrap();
    let pipelines = api.get("/v1/pipelines").await;
    let stages: Vec<Value> = pipelines["items"][0]["stages"].as_array().unwrap().clone();
    let mut etag = etag.unwrap();
    for stage in stages.iter().skip(1).filter(|s| s["outcome"] != "lost") {
        let (status, moved, new_etag) = api
            .send(
                reqwest::Method::PATCH,
                &format!("/v1/deals/{deal_id}"),
                Some(json!({"stage_id": stage["id"]})),
                Some(&etag),
            )
            .await;
        assert_eq!(status, 200, "{moved}");
        etag = new_etag.unwrap();
        if stage["outcome"] == "won" {
            assert_eq!(moved["status"], "won");
        }
    }
    let card = api.get(&format!("/v1/clients/{id}/timeline")).await;
    let kinds: Vec<&str> = card["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds.last(),
        Some(&"interaction"),
        "the lead is the oldest entry: {kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "deal.stage_changed").count(),
        4,
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&"client.promoted") && kinds.contains(&"deal.created"),
        "{kinds:?}"
    );
    sb.terminate(Duration::from_secs(15)).await.unwrap();
}

const ROUTING: &str = r#"
[routing]
# A lead counts toward its manager for a second only, so the next lead of
# the same client is routed afresh.
hold = { lead = "1s" }
[[routing.managers]]
id = "anna"
queues = ["sales"]
[[routing.managers]]
id = "boris"
queues = ["sales"]
[[routing.queues]]
name = "sales"
policy = "round_robin"
responsible_first = true
"#;

#[tokio::test]
async fn an_owner_set_in_the_crm_gets_the_clients_next_contact() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchboard.toml");
    std::fs::write(&config, ROUTING).unwrap();
    let sb = Launch::new(&dir.path().join("data"))
        .config(&config)
        .start()
        .await
        .unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    for m in ["anna", "boris"] {
        let r = sb
            .gateway_request(reqwest::Method::PUT, &format!("/v1/managers/{m}/presence"))
            .await
            .unwrap()
            .json(&json!({"presence": "online"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let api = Api {
        sb: &sb,
        http: http.clone(),
        token: sb.token.clone(),
    };
    for m in ["anna", "boris"] {
        let (status, body, _) = api
            .send(
                reqwest::Method::POST,
                "/v1/users",
                Some(json!({"routing_id": m, "name": m, "role": "manager"})),
                None,
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let form = lead_form(777);
    sb.post_lead(&form).await.unwrap();
    let client = eventually("the routed client", Duration::from_secs(3), || async {
        let page = api.get("/v1/clients").await;
        page["items"]
            .as_array()
            .unwrap()
            .first()
            .filter(|c| c["owner_id"].is_string())
            .cloned()
    })
    .await;
    let id = client["id"].as_str().unwrap();
    let users = api.get("/v1/users").await;
    let user = |login: &str| {
        users["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["routing_id"] == login)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let first_owner = if client["owner_id"] == user("anna").as_str() {
        "anna"
    } else {
        "boris"
    };
    let other = if first_owner == "anna" {
        "boris"
    } else {
        "anna"
    };

    // An administrator gives the client to the other manager.
    let (_, current, etag) = api
        .send(
            reqwest::Method::GET,
            &format!("/v1/clients/{id}"),
            None,
            None,
        )
        .await;
    assert_eq!(current["id"], id);
    let (status, body, _) = api
        .send(
            reqwest::Method::PATCH,
            &format!("/v1/clients/{id}"),
            Some(json!({"owner_id": user(other)})),
            Some(&etag.unwrap()),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // The gateway hears of it on the owners topic; the client's next lead
    // goes to the new owner as the responsible manager.
    let mut again = lead_form(777);
    again["message"] = json!("me again");
    let routed = eventually("routing to the new owner", Duration::from_secs(10), || {
        let sb = &sb;
        let again = again.clone();
        let api = &api;
        async move {
            sb.post_lead(&again).await.unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            let card = api
                .get(&format!("/v1/clients/{id}/timeline?limit=200"))
                .await;
            card["items"]
                .as_array()
                .unwrap()
                .iter()
                .find(|i| i["data"]["kind"] == "routing.assigned" && i["data"]["manager"] == other)
                .cloned()
        }
    })
    .await;
    assert_eq!(
        routed["data"]["payload"]["reason"], "responsible_manager",
        "{routed}"
    );
    sb.terminate(Duration::from_secs(15)).await.unwrap();
}
