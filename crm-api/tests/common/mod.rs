//! What the CRM API tests share: a store on each database, a team of users
//! with tokens, requests through the real router.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code, unreachable_pub)]

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use serde_json::{Value, json};
use switchboard_crm::testing::TestDatabase;
use switchboard_crm::{Crm, Role, Store};
use switchboard_storage::{Channel, Contact, ContactKey, FeedLog, Interaction, Kind, LogOptions};
use tower::ServiceExt;

/// A store on each backend; the PostgreSQL database is dropped by `finish`.
pub struct Backends {
    pub dir: tempfile::TempDir,
    pg: Option<TestDatabase>,
}

impl Backends {
    pub async fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            pg: Some(
                TestDatabase::create()
                    .await
                    .expect("PostgreSQL must be running for the CRM tests (see README)"),
            ),
        }
    }

    pub async fn stores(&self) -> Vec<(&'static str, Store)> {
        let sqlite = Store::connect(
            &format!("sqlite://{}", self.dir.path().join("crm.sqlite").display()),
            4,
        )
        .await
        .unwrap();
        let pg = Store::connect(&self.pg.as_ref().unwrap().url, 4)
            .await
            .unwrap();
        vec![("sqlite", sqlite), ("postgres", pg)]
    }

    pub async fn finish(mut self, stores: Vec<(&'static str, Store)>) {
        for (_, s) in stores {
            s.close().await;
        }
        if let Some(pg) = self.pg.take() {
            pg.drop_now().await.unwrap();
        }
    }
}

pub fn interaction(kind: Kind, phone: &str, name: Option<&str>, minutes_ago: i64) -> Interaction {
    Interaction::new(
        kind,
        Channel::Widget,
        Contact {
            key: ContactKey::phone(phone).into_string(),
            phone: Some(phone.into()),
            email: None,
            user_id: None,
            name: name.map(str::to_owned),
        },
        time::OffsetDateTime::now_utc() - time::Duration::minutes(minutes_ago),
        json!({"form": "widget"}),
    )
}

pub fn lead(phone: &str, name: &str, minutes_ago: i64) -> Interaction {
    let mut ev = interaction(Kind::LeadReceived, phone, Some(name), minutes_ago);
    ev.payload = json!({"form": "widget", "message": format!("from {name}")});
    ev
}

/// A routing decision for `phone` to manager `routing_id`.
pub fn assigned(phone: &str, routing_id: &str) -> Interaction {
    let mut ev = interaction(Kind::RoutingAssigned, phone, None, 0);
    ev.manager = Some(routing_id.into());
    ev.payload = json!({"queue": "sales", "reason": "round_robin"});
    ev
}

pub async fn apply(
    store: &Store,
    events: &[Interaction],
) -> (
    switchboard_crm::Applied,
    Vec<switchboard_storage::OwnerChange>,
) {
    let texts: Vec<String> = events
        .iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .collect();
    let batch: Vec<(Interaction, &str)> = events
        .iter()
        .cloned()
        .zip(texts.iter().map(String::as_str))
        .collect();
    store.apply(&batch, &[]).await.unwrap()
}

/// A team: an administrator, two managers and a head in Sales, a head in Support.
pub struct Team {
    pub crm: Crm,
    /// The data directory the CRM serves recordings from.
    pub dir: std::path::PathBuf,
    pub feed: FeedLog,
    pub admin: String,
    pub anna: String,
    pub anna_id: String,
    pub boris: String,
    pub boris_id: String,
    pub head: String,
    pub other_head: String,
    pub other_head_id: String,
}

pub async fn team(store: &Store, dir: &std::path::Path) -> Team {
    let feed = FeedLog::open(
        &dir.join(format!("feed-{}.sqlite", uuid::Uuid::new_v4())),
        LogOptions::default(),
    )
    .unwrap();
    let mut tokens = Vec::new();
    let mut ids = Vec::new();
    for (login, role, dept) in [
        ("boss", Role::Admin, None),
        ("anna", Role::Manager, Some("Sales")),
        ("boris", Role::Manager, Some("Sales")),
        ("helen", Role::Head, Some("Sales")),
        ("victor", Role::Head, Some("Support")),
    ] {
        let u = store.upsert_user(login, login, role, dept).await.unwrap();
        tokens.push(store.create_token(&u.id, "test").await.unwrap());
        ids.push(u.id);
    }
    Team {
        crm: Crm::new(store.clone(), Some(feed.clone()), dir.join("files"))
            .with_data_dir(dir.to_owned()),
        feed,
        dir: dir.to_owned(),
        admin: tokens[0].clone(),
        anna: tokens[1].clone(),
        anna_id: ids[1].clone(),
        boris: tokens[2].clone(),
        boris_id: ids[2].clone(),
        head: tokens[3].clone(),
        other_head: tokens[4].clone(),
        other_head_id: ids[4].clone(),
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

/// One request through the real router.
pub async fn call(
    crm: &Crm,
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: Option<Value>,
    extra: &[(&str, &str)],
) -> Reply {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .unwrap();
    let resp = crm.router().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    Reply {
        status,
        headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

pub async fn get(crm: &Crm, uri: &str, token: &str) -> Reply {
    call(crm, Method::GET, uri, Some(token), None, &[]).await
}

pub async fn post(crm: &Crm, uri: &str, token: &str, body: Value) -> Reply {
    call(crm, Method::POST, uri, Some(token), Some(body), &[]).await
}
