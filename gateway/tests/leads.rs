//! The widget lead endpoint, in process: what the site gets back and what
//! lands in the feed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::Value;
use switchboard_config::GatewayConfig;
use switchboard_gateway::Gateway;
use switchboard_storage::{FeedLog, FeedSource, Interaction, LogOptions, Topic};
use tower::ServiceExt;

struct Fixture {
    _dir: tempfile::TempDir,
    feed: FeedLog,
    gateway: Gateway,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let feed = FeedLog::open(&dir.path().join("feed.sqlite"), LogOptions::default()).unwrap();
    let gateway = Gateway::new(&GatewayConfig::default(), feed.clone());
    Fixture {
        _dir: dir,
        feed,
        gateway,
    }
}

async fn post(g: &Gateway, content_type: &str, body: impl Into<Body>) -> (StatusCode, Value) {
    let req = Request::post("/v1/leads/widget")
        .header(header::CONTENT_TYPE, content_type)
        .body(body.into())
        .unwrap();
    let resp = g.router().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn feed_events(feed: &FeedLog) -> Vec<Interaction> {
    let mut c = feed.consumer("test", &[Topic::Interactions]).unwrap();
    c.poll(100, Duration::ZERO)
        .await
        .unwrap()
        .iter()
        .map(|r| serde_json::from_slice(&r.value).unwrap())
        .collect()
}

#[tokio::test]
async fn a_json_lead_is_accepted_and_lands_in_the_feed() {
    let f = fixture();
    let (status, body) = post(
        &f.gateway,
        "application/json",
        r#"{"name":"Иван","phone":"8 (916) 123-45-67","email":"Ivan@Example.com",
            "message":"Перезвоните","page_url":"https://example.com/price",
            "utm_source":"yandex","utm_medium":"cpc","utm_campaign":"winter"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["contact_key"], "tel:+79161234567");
    let events = feed_events(&f.feed).await;
    assert_eq!(events.len(), 1);
    let ev = &events[0];
    assert_eq!(ev.id.to_string(), body["id"].as_str().unwrap());
    assert_eq!(ev.contact.email.as_deref(), Some("ivan@example.com"));
    assert_eq!(
        ev.campaign.as_ref().unwrap().campaign.as_deref(),
        Some("winter")
    );
}

#[tokio::test]
async fn an_html_form_post_is_accepted() {
    let f = fixture();
    let (status, body) = post(
        &f.gateway,
        "application/x-www-form-urlencoded; charset=UTF-8",
        "name=Anna&email=anna%40example.com&utm_source=google",
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["contact_key"], "email:anna@example.com");
    assert_eq!(feed_events(&f.feed).await.len(), 1);
}

#[tokio::test]
async fn bad_input_gets_the_right_status_and_nothing_reaches_the_feed() {
    let f = fixture();
    let huge = format!(
        r#"{{"phone":"+79161234567","message":"{}"}}"#,
        "x".repeat(10 * 1024 * 1024)
    );
    let cases: Vec<(&str, Body, StatusCode, &str)> = vec![
        (
            "application/json",
            Body::from("{not json"),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            "application/json",
            Body::from(r#"{"phone": 79161234567}"#),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            "text/plain",
            Body::from("phone=1"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "application/json",
            Body::from(huge),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            "application/json",
            Body::from(r#"{"phone":"not a phone"}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "application/json",
            Body::from(r#"{"name":"nobody"}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
    ];
    for (ct, body, want, code) in cases {
        let (status, resp) = post(&f.gateway, ct, body).await;
        assert_eq!(status, want, "{resp}");
        assert_eq!(resp["error"]["code"], code, "{resp}");
    }
    let (_, resp) = post(
        &f.gateway,
        "application/json",
        r#"{"phone":"12345","email":"x@"}"#,
    )
    .await;
    assert!(resp["error"]["fields"]["phone"].is_string(), "{resp}");
    assert!(resp["error"]["fields"]["email"].is_string(), "{resp}");
    assert!(feed_events(&f.feed).await.is_empty());
    // Still serving.
    let (status, _) = post(
        &f.gateway,
        "application/json",
        r#"{"phone":"+79161234567"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn browsers_on_other_origins_may_post_the_form() {
    let f = fixture();
    let req = Request::options("/v1/leads/widget")
        .header(header::ORIGIN, "https://shop.example.com")
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "content-type")
        .body(Body::empty())
        .unwrap();
    let resp = f.gateway.router().oneshot(req).await.unwrap();
    assert!(resp.status().is_success());
    assert_eq!(resp.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
}

#[test]
fn openapi_document_is_checked_in_and_current() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    let generated = switchboard_gateway::openapi_json();
    assert!(
        switchboard_service::openapi_is_checked_in(&path, &generated),
        "gateway/openapi.json is stale; regenerate with UPDATE_OPENAPI=1 cargo test -p switchboard-gateway openapi"
    );
    let doc: Value = serde_json::from_str(&generated).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/v1/leads/widget"]["post"].is_object());
}
