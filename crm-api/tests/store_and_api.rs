//! The CRM store and REST API on both databases: every test runs on SQLite
//! and on PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use common::{Backends, apply, get, lead, team};
use serde_json::Value;
use switchboard_crm::Store;
use switchboard_crm::testing::TestDatabase;
use switchboard_storage::{Channel, FeedLog, Interaction, Kind, LogOptions, NewRecord, Topic};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn timeline_pages_newest_first_without_gaps_or_repeats() {
    let b = Backends::new().await;
    let stores = b.stores().await;
    for (name, store) in &stores {
        let mut events: Vec<Interaction> = (0..7)
            .map(|i| lead("+79161234567", "Иван", 100 - i))
            .collect();
        events.push(lead("+79031112233", "Пётр", 1));
        assert_eq!(apply(store, &events).await.0.new, 8, "{name}");
        let t = team(store, b.dir.path()).await;
        let crm = &t.crm;

        let mut seen = Vec::new();
        let mut uri = "/v1/contacts/tel:+79161234567/timeline?limit=3".to_owned();
        loop {
            let r = get(crm, &uri, &t.admin).await;
            let (status, body) = (r.status, r.body);
            assert_eq!(status, StatusCode::OK, "{name}: {body}");
            assert_eq!(body["contact"]["phone"], "+79161234567", "{name}");
            assert_eq!(body["contact"]["interaction_count"], 7, "{name}");
            for item in body["items"].as_array().unwrap() {
                seen.push(item["id"].as_str().unwrap().to_owned());
            }
            match body["next_cursor"].as_str() {
                Some(c) => {
                    uri = format!("/v1/contacts/tel:+79161234567/timeline?limit=3&cursor={c}")
                }
                None => break,
            }
        }
        let want: Vec<String> = events[..7].iter().rev().map(|e| e.id.to_string()).collect();
        assert_eq!(seen, want, "{name}: newest first, each once");

        let r = get(crm, "/v1/interactions?limit=200", &t.admin).await;
        let (status, body) = (r.status, r.body);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["items"].as_array().unwrap().len(), 8, "{name}");
        assert!(body.get("next_cursor").is_none(), "{name}");
        assert_eq!(
            body["items"][0]["contact"]["name"], "Пётр",
            "{name}: newest first"
        );
    }
    b.finish(stores).await;
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let b = Backends::new().await;
    let stores = b.stores().await;
    for (name, store) in &stores {
        let t = team(store, b.dir.path()).await;
        let crm = &t.crm;
        let unauthenticated = common::call(
            crm,
            axum::http::Method::GET,
            "/v1/interactions",
            None,
            None,
            &[],
        )
        .await;
        assert_eq!(unauthenticated.status, StatusCode::UNAUTHORIZED, "{name}");
        let forged = get(crm, "/v1/interactions", "sbt_forged").await;
        assert_eq!(forged.status, StatusCode::UNAUTHORIZED, "{name}");
        for (uri, status, code) in [
            (
                "/v1/contacts/tel:+70000000000/timeline",
                StatusCode::NOT_FOUND,
                "not_found",
            ),
            (
                "/v1/interactions?limit=0",
                StatusCode::BAD_REQUEST,
                "invalid_limit",
            ),
            (
                "/v1/interactions?limit=201",
                StatusCode::BAD_REQUEST,
                "invalid_limit",
            ),
            (
                "/v1/interactions?cursor=bogus",
                StatusCode::BAD_REQUEST,
                "invalid_cursor",
            ),
            (
                "/v1/interactions?kind=lead.recieved",
                StatusCode::BAD_REQUEST,
                "invalid_filter",
            ),
            ("/v1/nowhere", StatusCode::NOT_FOUND, "not_found"),
        ] {
            let r = get(crm, uri, &t.admin).await;
            let (got, body) = (r.status, r.body);
            assert_eq!(got, status, "{name} {uri}: {body}");
            assert_eq!(body["error"]["code"], code, "{name} {uri}: {body}");
        }
    }
    b.finish(stores).await;
}

#[tokio::test]
async fn a_repeated_event_changes_nothing() {
    let b = Backends::new().await;
    let stores = b.stores().await;
    for (name, store) in &stores {
        let events = vec![
            lead("+79161234567", "Иван", 5),
            lead("+79161234567", "Иван", 4),
        ];
        assert_eq!(apply(store, &events).await.0.new, 2);
        let again = apply(store, &events).await.0;
        assert_eq!((again.new, again.duplicate), (0, 2), "{name}");
        let t = team(store, b.dir.path()).await;
        let r = get(&t.crm, "/v1/contacts/tel:+79161234567/timeline", &t.admin).await;
        assert_eq!(r.body["contact"]["interaction_count"], 2, "{name}");
    }
    b.finish(stores).await;
}

#[tokio::test]
async fn filters_select_by_kind_channel_and_contact() {
    let b = Backends::new().await;
    let stores = b.stores().await;
    for (name, store) in &stores {
        let mut call = lead("+79161234567", "Иван", 3);
        call.kind = Kind::CallMissed;
        call.channel = Channel::Sip;
        apply(
            store,
            &[
                lead("+79161234567", "Иван", 5),
                call,
                lead("+79030000000", "Анна", 1),
            ],
        )
        .await;
        let t = team(store, b.dir.path()).await;
        let count = |body: &Value| body["items"].as_array().unwrap().len();
        let body = get(&t.crm, "/v1/interactions?kind=call.missed", &t.admin)
            .await
            .body;
        assert_eq!(count(&body), 1, "{name}");
        let body = get(&t.crm, "/v1/interactions?channel=widget", &t.admin)
            .await
            .body;
        assert_eq!(count(&body), 2, "{name}");
        let body = get(
            &t.crm,
            "/v1/interactions?contact_key=tel:%2B79030000000",
            &t.admin,
        )
        .await
        .body;
        assert_eq!(count(&body), 1, "{name}");
        let body = get(&t.crm, "/v1/interactions", &t.anna).await.body;
        assert_eq!(
            count(&body),
            0,
            "{name}: a manager sees only their clients' interactions"
        );
    }
    b.finish(stores).await;
}

/// Feeds `events` plus one undecodable record through the embedded log into
/// `store` with the real consumer, and waits until all are processed.
async fn consume_all(log: &FeedLog, store: &Store, group: &str, expect_new: usize) {
    let source = log.consumer(group, &[Topic::Interactions]).unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(switchboard_crm::consume(
        store.clone(),
        source,
        None,
        stop.clone(),
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ids = store.snapshot().await.unwrap().interactions;
        if ids.len() >= expect_new && store.reject_count().await.unwrap() >= 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "consumer applied only {}",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn replaying_the_feed_into_an_empty_store_gives_the_same_state() {
    let b = Backends::new().await;
    let feed_dir = tempfile::tempdir().unwrap();
    let log = FeedLog::open(&feed_dir.path().join("feed.sqlite"), LogOptions::default()).unwrap();
    let mut events = Vec::new();
    for i in 0..300 {
        let phone = format!("+7916{:07}", i % 40);
        let mut e = lead(&phone, &format!("client {}", i % 40), 1000 - i);
        if i % 3 == 0 {
            e.contact.name = None; // a later nameless event must not erase the name
        }
        events.push(e);
    }
    // Routing assigns half of the contacts to a manager.
    for i in 0..20 {
        events.push(common::assigned(&format!("+7916{i:07}"), "anna"));
    }
    // The relay may ship a record twice; the feed then holds it twice.
    events.push(events[10].clone());
    for e in &events {
        log.publish(e).await.unwrap();
    }
    log.append(NewRecord {
        topic: Topic::Interactions,
        key: "tel:+70000000000".into(),
        value: b"{not json".to_vec(),
    })
    .await
    .unwrap();

    let stores = b.stores().await;
    for (name, store) in &stores {
        consume_all(&log, store, &format!("crm-{name}"), 320).await;
        let first = store.snapshot().await.unwrap();
        assert_eq!(
            first.interactions.len(),
            320,
            "{name}: the duplicate was applied once"
        );
        assert_eq!(
            store.reject_count().await.unwrap(),
            1,
            "{name}: the bad record is kept"
        );
        // A fresh store of the same kind, fed from offset 0 by a new group.
        let replay = match *name {
            "sqlite" => {
                let dir = tempfile::tempdir().unwrap();
                let s = Store::connect(
                    &format!("sqlite://{}", dir.path().join("r.sqlite").display()),
                    2,
                )
                .await
                .unwrap();
                consume_all(&log, &s, "replay-sqlite", 320).await;
                let snap = s.snapshot().await.unwrap();
                s.close().await;
                snap
            }
            _ => {
                let db = TestDatabase::create().await.unwrap();
                let s = Store::connect(&db.url, 2).await.unwrap();
                consume_all(&log, &s, "replay-postgres", 320).await;
                let snap = s.snapshot().await.unwrap();
                s.close().await;
                db.drop_now().await.unwrap();
                snap
            }
        };
        assert_eq!(replay, first, "{name}: replay differs");
        let c = first
            .contacts
            .iter()
            .find(|c| c.key == "tel:+79160000000")
            .unwrap();
        assert_eq!(c.name.as_deref(), Some("client 0"), "{name}");
        assert_eq!(
            first.clients.len(),
            40,
            "{name}: one potential client per phone"
        );
        assert!(
            first.clients.iter().all(|c| c.contains(" potential ")),
            "{name}"
        );
        let owned = first
            .clients
            .iter()
            .filter(|c| c.rsplit(' ').nth(1) != Some("-"))
            .count();
        assert_eq!(
            owned, 20,
            "{name}: routing gave half the clients an owner: {:?}",
            first.clients
        );
    }
    b.finish(stores).await;
}

#[test]
fn openapi_document_is_checked_in_and_current() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    let generated = switchboard_crm::openapi_json();
    assert!(
        switchboard_service::openapi_is_checked_in(&path, &generated),
        "crm-api/openapi.json is stale; regenerate with UPDATE_OPENAPI=1 cargo test -p switchboard-crm openapi"
    );
    let doc: Value = serde_json::from_str(&generated).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/v1/contacts/{key}/timeline"]["get"].is_object());
}

/// A deal of a client who came from a lead service closes: its report to
/// that service waits in the store's command outbox, written with the deal,
/// until the feed takes it — here a CRM without a feed first (nothing lost),
/// then one with a feed sends both reports, oldest first.
#[tokio::test]
async fn a_closed_deal_reports_to_its_lead_service_through_the_outbox() {
    use switchboard_storage::{Campaign, Command, CommandKind, FeedSource};
    let b = Backends::new().await;
    let stores = b.stores().await;
    for (backend, store) in &stores {
        let t = team(store, b.dir.path()).await;
        let offline = switchboard_crm::Crm::new(store.clone(), None, b.dir.path().join("files"));
        let phone = "+79160000301";
        let mut ev = lead(phone, "Ульяна", 5);
        ev.channel = Channel::Roistat;
        ev.payload = serde_json::json!({"line": "rs", "lead_id": "22"});
        ev.campaign = Some(Campaign {
            source: Some("yandex".into()),
            visit_id: Some("799".into()),
            ..Campaign::default()
        });
        apply(store, &[ev]).await;
        let clients = get(&offline, "/v1/clients?q=%2B79160000301", &t.admin).await;
        let client = clients.body["items"][0]["id"].as_str().unwrap().to_owned();
        let close = |crm: switchboard_crm::Crm, title: &'static str, stage: String| {
            let (admin, client) = (t.admin.clone(), client.clone());
            async move {
                let made = common::post(
                    &crm,
                    "/v1/deals",
                    &admin,
                    serde_json::json!({"client_id": client, "title": title, "amount_minor": 990_000}),
                )
                .await;
                assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);
                let id = made.body["id"].as_str().unwrap().to_owned();
                let etag = made.headers["etag"].to_str().unwrap().to_owned();
                let moved = common::call(
                    &crm,
                    axum::http::Method::PATCH,
                    &format!("/v1/deals/{id}"),
                    Some(&admin),
                    Some(serde_json::json!({"stage_id": stage, "lost_reason": "дорого"})),
                    &[("if-match", &etag)],
                )
                .await;
                assert_eq!(moved.status, StatusCode::OK, "{}", moved.body);
                id
            }
        };
        // No feed: the report waits, with the deal.
        let won = close(
            offline.clone(),
            "Шторы",
            "00000000-0000-7000-8000-000000000015".to_owned(),
        )
        .await;
        let queued = store.queued_commands(10).await.unwrap();
        assert_eq!(queued.len(), 1, "{backend}");
        let cmd: Command = serde_json::from_str(&queued[0].1).unwrap();
        assert_eq!(cmd.kind, CommandKind::DealReport);
        assert_eq!(cmd.target, "roistat:rs");
        assert_eq!(cmd.payload["deal_id"], won.as_str());
        assert_eq!(cmd.payload["status"], "won");
        assert_eq!(cmd.payload["amount_minor"], 990_000);
        assert_eq!(cmd.payload["lead"]["visit_id"], "799");
        // With a feed: both reports go out, oldest first, and the outbox
        // is empty.
        let pipelines = get(&t.crm, "/v1/pipelines", &t.admin).await;
        let lost = pipelines.body["items"][0]["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["outcome"] == "lost")
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let lost_deal = close(t.crm.clone(), "Карниз", lost).await;
        assert!(
            store.queued_commands(10).await.unwrap().is_empty(),
            "{backend}"
        );
        let mut source = t.feed.consumer("test", &[Topic::Commands]).unwrap();
        let records = source.poll(10, Duration::from_secs(1)).await.unwrap();
        let sent: Vec<(String, String)> = records
            .iter()
            .map(|r| {
                let c: Command = serde_json::from_slice(&r.value).unwrap();
                (
                    c.payload["deal_id"].as_str().unwrap().to_owned(),
                    c.payload["status"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(
            sent,
            vec![
                (won.clone(), "won".to_owned()),
                (lost_deal, "lost".to_owned())
            ],
            "{backend}"
        );
    }
    b.finish(stores).await;
}
