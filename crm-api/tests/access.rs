//! Who may see and do what, on both databases; the API conventions
//! (ETag/If-Match, Idempotency-Key, Commands, audit) as a client sees them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use axum::http::{Method, StatusCode};
use common::{Backends, Team, apply, assigned, call, get, interaction, lead, post, team};
use serde_json::{Value, json};
use switchboard_crm::Store;
use switchboard_storage::{Command, FeedSource, Kind, Topic};

/// Records owned by Anna, for probing from Boris's side.
struct Fixtures {
    client: String,
    contact_key: String,
    interaction: String,
    deal: String,
    task: String,
    ticket: String,
    attachment: String,
    /// A call of Anna's client with a recording.
    call: String,
    /// A user whose tokens the probes may create and revoke.
    spare_user: String,
}

async fn anna_records(store: &Store, t: &Team) -> Fixtures {
    let ev = lead("+79165550001", "Клиент Анны", 5);
    // A recorded call of that client, as the gateway reports it.
    let call_id = format!("call-{}", uuid::Uuid::new_v4());
    let rel = format!("recordings/2026/11/27/{call_id}.wav");
    std::fs::create_dir_all(t.dir.join("recordings/2026/11/27")).unwrap();
    std::fs::write(t.dir.join(&rel), b"RIFF-not-really").unwrap();
    let mut recording = interaction(Kind::RecordingReady, "+79165550001", None, 1);
    recording.conversation = Some(call_id.clone());
    recording.payload = json!({"call_id": call_id, "path": rel});
    apply(
        store,
        &[ev.clone(), assigned("+79165550001", "anna"), recording],
    )
    .await;
    let clients = get(&t.crm, "/v1/clients", &t.anna).await;
    let client = clients.body["items"][0]["id"]
        .as_str()
        .expect("routing gave Anna the client")
        .to_owned();
    let deal = post(
        &t.crm,
        "/v1/deals",
        &t.anna,
        json!({"client_id": client, "title": "Deal"}),
    )
    .await;
    assert_eq!(deal.status, StatusCode::CREATED, "{}", deal.body);
    let task = post(
        &t.crm,
        "/v1/tasks",
        &t.anna,
        json!({"title": "Call back", "client_id": client}),
    )
    .await;
    assert_eq!(task.status, StatusCode::CREATED, "{}", task.body);
    let ticket = post(
        &t.crm,
        "/v1/tickets",
        &t.anna,
        json!({"client_id": client, "subject": "Broken"}),
    )
    .await;
    assert_eq!(ticket.status, StatusCode::CREATED, "{}", ticket.body);
    let upload = call(
        &t.crm,
        Method::POST,
        &format!("/v1/clients/{client}/attachments?filename=offer.txt"),
        Some(&t.anna),
        Some(json!("the offer")),
        &[],
    )
    .await;
    assert_eq!(upload.status, StatusCode::CREATED, "{}", upload.body);
    Fixtures {
        client,
        contact_key: ev.contact.key.clone(),
        interaction: ev.id.to_string(),
        deal: deal.body["id"].as_str().unwrap().to_owned(),
        task: task.body["id"].as_str().unwrap().to_owned(),
        ticket: ticket.body["id"].as_str().unwrap().to_owned(),
        attachment: upload.body["id"].as_str().unwrap().to_owned(),
        call: call_id,
        spare_user: store
            .upsert_user("spare", "Spare", switchboard_crm::Role::Manager, None)
            .await
            .unwrap()
            .id,
    }
}

/// For an OpenAPI path template, the concrete path to Anna's record and a
/// request body that would succeed for her.
fn probe(template: &str, method: &str, f: &Fixtures) -> Option<(String, Option<Value>)> {
    let body = |v: Value| if method == "get" { None } else { Some(v) };
    Some(match template {
        "/v1/clients/{id}" => (
            format!("/v1/clients/{}", f.client),
            body(json!({"name": "Renamed"})),
        ),
        "/v1/clients/{id}/promote" => (format!("/v1/clients/{}/promote", f.client), None),
        "/v1/clients/{id}/timeline" => (format!("/v1/clients/{}/timeline", f.client), None),
        "/v1/clients/{id}/contact-persons" => (
            format!("/v1/clients/{}/contact-persons", f.client),
            body(json!({"name": "Мария", "position": "CFO"})),
        ),
        "/v1/clients/{id}/notes" => (
            format!("/v1/clients/{}/notes", f.client),
            body(json!({"body": "note"})),
        ),
        "/v1/clients/{id}/attachments" => (
            format!("/v1/clients/{}/attachments?filename=x.txt", f.client),
            body(json!("bytes")),
        ),
        "/v1/contacts/{key}/timeline" => (format!("/v1/contacts/{}/timeline", f.contact_key), None),
        "/v1/deals/{id}" => (
            format!("/v1/deals/{}", f.deal),
            body(json!({"title": "Renamed"})),
        ),
        "/v1/deals/{id}/history" => (format!("/v1/deals/{}/history", f.deal), None),
        "/v1/tasks/{id}" => (
            format!("/v1/tasks/{}", f.task),
            body(json!({"title": "Renamed"})),
        ),
        "/v1/tickets/{id}" => (
            format!("/v1/tickets/{}", f.ticket),
            body(json!({"subject": "Renamed"})),
        ),
        "/v1/tickets/{id}/time" => (
            format!("/v1/tickets/{}/time", f.ticket),
            body(json!({"minutes": 5})),
        ),
        "/v1/attachments/{id}" => (format!("/v1/attachments/{}", f.attachment), None),
        "/v1/calls/{id}/recording" => (format!("/v1/calls/{}/recording", f.call), None),
        "/v1/conversations/{id}/replies" => (
            format!("/v1/conversations/{}/replies", f.interaction),
            body(json!({"text": "hi"})),
        ),
        "/v1/users/{id}/tokens" => (format!("/v1/users/{}/tokens", f.spare_user), None),
        "/v1/audit/{entity}/{id}" => (format!("/v1/audit/client/{}", f.client), None),
        _ => return None,
    })
}

/// Generated from the OpenAPI document: every operation on a path with an
/// id answers Boris 404 for Anna's record (403 only where the operation
/// documents it), while Anna herself (or an admin, for admin operations)
/// succeeds. A new id-bearing endpoint without a probe fails this test.
#[tokio::test]
async fn nobody_reaches_another_managers_records_by_id() {
    let b = Backends::new().await;
    let stores = b.stores().await;
    let doc: Value = serde_json::from_str(&switchboard_crm::openapi_json()).unwrap();
    for (name, store) in &stores {
        let t = team(store, b.dir.path()).await;
        let f = anna_records(store, &t).await;
        let mut checked = 0;
        for (template, ops) in doc["paths"].as_object().unwrap() {
            if !template.contains('{') {
                continue;
            }
            for (method, op) in ops.as_object().unwrap() {
                let (path, body) = probe(template, method, &f).unwrap_or_else(|| {
                    panic!("no access probe for {method} {template}: add one to this test")
                });
                let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                let headers: &[(&str, &str)] = if m == Method::PATCH {
                    &[("if-match", "\"1\"")]
                } else {
                    &[]
                };
                let documented_403 = op["responses"].get("403").is_some();
                let as_boris = call(
                    &t.crm,
                    m.clone(),
                    &path,
                    Some(&t.boris),
                    body.clone(),
                    headers,
                )
                .await;
                let as_other_head = call(
                    &t.crm,
                    m.clone(),
                    &path,
                    Some(&t.other_head),
                    body.clone(),
                    headers,
                )
                .await;
                for (who, r) in [
                    ("boris", &as_boris),
                    ("the other department's head", &as_other_head),
                ] {
                    let ok = r.status == StatusCode::NOT_FOUND
                        || (documented_403 && r.status == StatusCode::FORBIDDEN);
                    assert!(
                        ok,
                        "{name}: {method} {template} as {who}: {} {}",
                        r.status, r.body
                    );
                }
                let owner =
                    if template.starts_with("/v1/users") || template.starts_with("/v1/audit") {
                        &t.admin
                    } else {
                        &t.anna
                    };
                // The owner writes against the version they just read.
                let fresh = get(&t.crm, &path, owner)
                    .await
                    .headers
                    .get("etag")
                    .map(|v| v.to_str().unwrap().to_owned());
                let etag_header = [("if-match", fresh.as_deref().unwrap_or("\"1\""))];
                let owner_headers: &[(&str, &str)] = if m == Method::PATCH {
                    &etag_header
                } else {
                    &[]
                };
                let as_owner = call(&t.crm, m, &path, Some(owner), body, owner_headers).await;
                assert!(
                    as_owner.status.is_success(),
                    "{name}: {method} {template} as its owner: {} {}",
                    as_owner.status,
                    as_owner.body
                );
                checked += 1;
            }
        }
        assert!(checked >= 18, "{name}: only {checked} operations checked");
    }
    b.finish(stores).await;
}

#[tokio::test]
async fn heads_see_their_department_and_admins_everything() {
    let b = Backends::new().await;
    let stores = b.stores().await;
    for (name, store) in &stores {
        let t = team(store, b.dir.path()).await;
        let f = anna_records(store, &t).await;
        for (who, token, status) in [
            ("head of Sales", &t.head, StatusCode::OK),
            ("admin", &t.admin, StatusCode::OK),
            ("head of Support", &t.other_head, StatusCode::NOT_FOUND),
            ("boris", &t.boris, StatusCode::NOT_FOUND),
        ] {
            let r = get(&t.crm, &format!("/v1/deals/{}", f.deal), token).await;
            assert_eq!(r.status, status, "{name}: {who}");
        }
        let lists = |token: &str| {
            let crm = t.crm.clone();
            let token = token.to_owned();
            async move {
                get(&crm, "/v1/clients", &token).await.body["items"]
                    .as_array()
                    .unwrap()
                    .len()
            }
        };
        assert_eq!(
            (
                lists(&t.anna).await,
                lists(&t.boris).await,
                lists(&t.head).await
            ),
            (1, 0, 1),
            "{name}"
        );
    }
    b.finish(stores).await;
}

#[tokio::test]
async fn managers_cannot_assign_and_heads_only_within_their_department() {
    let b = Backends::new().await;
    let stores = b.stores().await;
    for (name, store) in &stores {
        let t = team(store, b.dir.path()).await;
        let r = post(
            &t.crm,
            "/v1/clients",
            &t.anna,
            json!({"name": "X", "owner_id": t.boris_id}),
        )
        .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: {}", r.body);
        let r = post(
            &t.crm,
            "/v1/clients",
            &t.anna,
            json!({"name": "X", "department": "Sales"}),
        )
        .await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{name}: unknown fields are refused: {}",
            r.body
        );
        let mine = post(
            &t.crm,
            "/v1/clients",
            &t.anna,
            json!({"name": "Mine", "phones": ["+79160000001"]}),
        )
        .await;
        assert_eq!(mine.status, StatusCode::CREATED, "{name}: {}", mine.body);
        assert_eq!(mine.body["owner_id"], t.anna_id.as_str());
        let id = mine.body["id"].as_str().unwrap();
        let r = call(
            &t.crm,
            Method::PATCH,
            &format!("/v1/clients/{id}"),
            Some(&t.anna),
            Some(json!({"owner_id": t.boris_id})),
            &[("if-match", "\"1\"")],
        )
        .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: {}", r.body);
        let r = call(
            &t.crm,
            Method::PATCH,
            &format!("/v1/clients/{id}"),
            Some(&t.head),
            Some(json!({"owner_id": t.other_head_id})),
            &[("if-match", "\"1\"")],
        )
        .await;
        assert_eq!(
            r.status,
            StatusCode::FORBIDDEN,
            "{name}: a head assigns within the department: {}",
            r.body
        );
        let r = call(
            &t.crm,
            Method::PATCH,
            &format!("/v1/clients/{id}"),
            Some(&t.head),
            Some(json!({"owner_id": t.boris_id})),
            &[("if-match", "\"1\"")],
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.body);
        assert_eq!(
            get(&t.crm, &format!("/v1/clients/{id}"), &t.anna)
                .await
                .status,
            StatusCode::NOT_FOUND,
            "{name}"
        );
        assert_eq!(
            get(&t.crm, &format!("/v1/clients/{id}"), &t.boris)
                .await
                .status,
            StatusCode::OK,
            "{name}"
        );
        // The owner change went out on the owners topic.
        let mut owners = t.feed.consumer("test", &[Topic::Owners]).unwrap();
        let changes = owners.poll(10, std::time::Duration::ZERO).await.unwrap();
        let last: Value = serde_json::from_slice(&changes.last().unwrap().value).unwrap();
        assert_eq!(
            (last["contact_key"].as_str(), last["manager"].as_str()),
            (Some("tel:+79160000001"), Some("boris")),
            "{name}"
        );
        // A phone belongs to one client only.
        let dup = post(
            &t.crm,
            "/v1/clients",
            &t.anna,
            json!({"name": "Dup", "phones": ["+79160000001"]}),
        )
        .await;
        assert_eq!(dup.status, StatusCode::CONFLICT, "{name}: {}", dup.body);
    }
    b.finish(stores).await;
}

#[tokio::test]
async fn etags_guard_against_lost_updates() {
    let b = Backends::new().await;
    let stores = b.stores().await;
    for (name, store) in &stores {
        let t = team(store, b.dir.path()).await;
        let c = post(&t.crm, "/v1/clients", &t.anna, json!({"name": "Versioned"})).await;
        let id = c.body["id"].as_str().unwrap();
        assert_eq!(c.headers["etag"], "\"1\"");
        let uri = format!("/v1/clients/{id}");
        let r = call(
            &t.crm,
            Method::PATCH,
            &uri,
            Some(&t.anna),
            Some(json!({"name": "A"})),
            &[],
        )
        .await;
        assert_eq!(r.status, StatusCode::PRECONDITION_REQUIRED, "{name}");
        let r = call(
            &t.crm,
            Method::PATCH,
            &uri,
            Some(&t.anna),
            Some(json!({"name": "A"})),
            &[("if-match", "\"1\"")],
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.body);
        assert_eq!(r.headers["etag"], "\"2\"");
        let r = call(
            &t.crm,
            Method::PATCH,
            &uri,
            Some(&t.anna),
            Some(json!({"name": "B"})),
            &[("if-match", "\"1\"")],
        )
        .await;
        assert_eq!(
            r.status,
            StatusCode::PRECONDITION_FAILED,
            "{name}: a stale ETag is refused"
        );
        assert_eq!(get(&t.crm, &uri, &t.anna).await.body["name"], "A");
    }
    b.finish(stores).await;
}

#[tokio::test]
async fn an_idempotency_key_makes_a_retry_safe() {
    let b = Backends::new().await;
    let stores = b.stores().await;
    for (name, store) in &stores {
        let t = team(store, b.dir.path()).await;
        let body = json!({"title": "Once"});
        let key = [("idempotency-key", "retry-1")];
        let first = call(
            &t.crm,
            Method::POST,
            "/v1/tasks",
            Some(&t.anna),
            Some(body.clone()),
            &key,
        )
        .await;
        let second = call(
            &t.crm,
            Method::POST,
            "/v1/tasks",
            Some(&t.anna),
            Some(body),
            &key,
        )
        .await;
        assert_eq!(first.status, StatusCode::CREATED, "{name}");
        assert_eq!(
            (second.status, &second.body),
            (first.status, &first.body),
            "{name}: the same answer"
        );
        assert_eq!(second.headers["idempotent-replayed"], "true");
        let tasks = get(&t.crm, "/v1/tasks", &t.anna).await;
        assert_eq!(
            tasks.body["items"].as_array().unwrap().len(),
            1,
            "{name}: created once"
        );
        let other = call(
            &t.crm,
            Method::POST,
            "/v1/tasks",
            Some(&t.anna),
            Some(json!({"title": "Different"})),
            &key,
        )
        .await;
        assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}");
        // Keys are per user.
        let boris = call(
            &t.crm,
            Method::POST,
            "/v1/tasks",
            Some(&t.boris),
            Some(json!({"title": "Once"})),
            &key,
        )
        .await;
        assert_eq!(boris.status, StatusCode::CREATED, "{name}");
        assert_ne!(boris.body["id"], first.body["id"]);
    }
    b.finish(stores).await;
}

#[tokio::test]
async fn a_lead_becomes_a_potential_client_then_a_customer_with_its_history() {
    let b = Backends::new().await;
    let stores = b.stores().await;
    for (name, store) in &stores {
        let t = team(store, b.dir.path()).await;
        let f = anna_records(store, &t).await;
        let person = post(
            &t.crm,
            &format!("/v1/clients/{}/contact-persons", f.client),
            &t.anna,
            json!({"name": "Мария", "position": "CFO", "emails": ["Maria@Romashka.ru"]}),
        )
        .await;
        assert_eq!(
            person.status,
            StatusCode::CREATED,
            "{name}: {}",
            person.body
        );
        assert_eq!(person.body["emails"], json!(["maria@romashka.ru"]));
        // Her email now identifies the client: a letter from her lands on its card.
        let mut letter = common::interaction(
            switchboard_storage::Kind::MessageReceived,
            "+70000000000",
            None,
            0,
        );
        letter.contact = switchboard_storage::Contact {
            key: "email:maria@romashka.ru".into(),
            phone: None,
            email: Some("maria@romashka.ru".into()),
            user_id: None,
            name: Some("Maria".into()),
        };
        apply(store, &[letter.clone()]).await;
        let pipelines = post(&t.crm, "/v1/pipelines", &t.admin, json!({"name": "Renewals", "stages": [
            {"name": "Reminder", "deadline_hours": 48}, {"name": "Renewed", "outcome": "won"}, {"name": "Churned", "outcome": "lost"}]})).await;
        assert_eq!(
            pipelines.status,
            StatusCode::CREATED,
            "{name}: {}",
            pipelines.body
        );
        assert_eq!(
            post(
                &t.crm,
                "/v1/pipelines",
                &t.anna,
                json!({"name": "Mine", "stages": [{"name": "a"}]})
            )
            .await
            .status,
            StatusCode::FORBIDDEN
        );
        let c = get(&t.crm, &format!("/v1/clients/{}", f.client), &t.anna).await;
        assert_eq!(
            (c.body["status"].as_str(), c.body["source"].clone()),
            (Some("potential"), Value::Null),
            "{name}"
        );
        assert_eq!(c.body["phones"], json!(["+79165550001"]));
        let potential = get(&t.crm, "/v1/clients?status=potential", &t.anna).await;
        assert_eq!(potential.body["items"].as_array().unwrap().len(), 1);
        let p = post(
            &t.crm,
            &format!("/v1/clients/{}/promote", f.client),
            &t.anna,
            json!({}),
        )
        .await;
        assert_eq!(p.body["status"], "current", "{name}: {}", p.body);
        let again = post(
            &t.crm,
            &format!("/v1/clients/{}/promote", f.client),
            &t.anna,
            json!({}),
        )
        .await;
        assert_eq!(again.status, StatusCode::CONFLICT, "{name}");
        // Move the deal to Won and read the card.
        let won = "00000000-0000-7000-8000-000000000015";
        let r = call(
            &t.crm,
            Method::PATCH,
            &format!("/v1/deals/{}", f.deal),
            Some(&t.anna),
            Some(json!({"stage_id": won})),
            &[("if-match", "\"1\"")],
        )
        .await;
        assert_eq!(
            (r.status, r.body["status"].as_str()),
            (StatusCode::OK, Some("won")),
            "{name}: {}",
            r.body
        );
        let lost = "00000000-0000-7000-8000-000000000016";
        let r = call(
            &t.crm,
            Method::PATCH,
            &format!("/v1/deals/{}", f.deal),
            Some(&t.anna),
            Some(json!({"stage_id": lost})),
            &[("if-match", "\"2\"")],
        )
        .await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{name}: lost needs a reason"
        );
        let history = get(&t.crm, &format!("/v1/deals/{}/history", f.deal), &t.anna).await;
        assert_eq!(history.body["items"].as_array().unwrap().len(), 2, "{name}");
        let card = get(
            &t.crm,
            &format!("/v1/clients/{}/timeline", f.client),
            &t.anna,
        )
        .await;
        let kinds: Vec<&str> = card.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["kind"].as_str().unwrap())
            .collect();
        for kind in [
            "interaction",
            "client.promoted",
            "deal.created",
            "deal.stage_changed",
            "task.created",
            "ticket.opened",
            "attachment",
        ] {
            assert!(
                kinds.contains(&kind),
                "{name}: {kind} missing from the card: {kinds:?}"
            );
        }
        assert!(
            card.body["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["ref_id"] == letter.id.to_string()),
            "{name}: the contact person's letter is on the card"
        );
        let lead_entry = card.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["kind"] == "interaction" && i["data"]["kind"] == "lead.received")
            .unwrap();
        assert_eq!(lead_entry["ref_id"], f.interaction.as_str());
    }
    b.finish(stores).await;
}

#[tokio::test]
async fn replies_and_calls_become_commands_and_writes_are_audited() {
    let b = Backends::new().await;
    let stores = b.stores().await;
    for (name, store) in &stores {
        let t = team(store, b.dir.path()).await;
        let f = anna_records(store, &t).await;
        let r = post(
            &t.crm,
            &format!("/v1/conversations/{}/replies", f.interaction),
            &t.anna,
            json!({"text": "Здравствуйте!"}),
        )
        .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{name}: {}", r.body);
        let r = post(&t.crm, "/v1/calls", &t.anna, json!({"client_id": f.client})).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{name}: {}", r.body);
        let r = post(
            &t.crm,
            "/v1/calls",
            &t.boris,
            json!({"client_id": f.client}),
        )
        .await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{name}: not Boris's client"
        );
        let mut commands = t.feed.consumer("test", &[Topic::Commands]).unwrap();
        let got: Vec<Command> = commands
            .poll(10, std::time::Duration::ZERO)
            .await
            .unwrap()
            .iter()
            .map(|r| serde_json::from_slice(&r.value).unwrap())
            .collect();
        assert_eq!(got.len(), 2, "{name}");
        assert_eq!(got[0].payload["text"], "Здравствуйте!");
        assert_eq!(got[0].payload["reply_to"], f.interaction.as_str());
        assert_eq!(got[0].manager.as_deref(), Some("anna"));
        assert_eq!(got[1].contact.phone.as_deref(), Some("+79165550001"));

        let audit = get(&t.crm, &format!("/v1/audit/deal/{}", f.deal), &t.admin).await;
        let entries = audit.body["items"].as_array().unwrap();
        assert_eq!(entries[0]["action"], "create", "{name}");
        assert_eq!(entries[0]["user_id"], t.anna_id.as_str());
        // A revoked token stops working (at once here: a fresh router).
        let revoke = call(
            &t.crm,
            Method::DELETE,
            &format!("/v1/users/{}/tokens", t.boris_id),
            Some(&t.admin),
            None,
            &[],
        )
        .await;
        assert_eq!(revoke.body["revoked"], 1, "{name}: {}", revoke.body);
        let fresh = switchboard_crm::Crm::new(store.clone(), None, b.dir.path().join("files"));
        assert_eq!(
            get(&fresh, "/v1/me", &t.boris).await.status,
            StatusCode::UNAUTHORIZED,
            "{name}"
        );
        // Credentials never come back.
        for token in [&t.admin, &t.anna] {
            for uri in ["/v1/me", "/v1/users"] {
                let r = get(&t.crm, uri, &t.admin).await;
                assert!(
                    !r.body.to_string().contains(token.as_str()),
                    "{name}: {uri} shows a token"
                );
                assert!(
                    !r.body.to_string().contains("sha256"),
                    "{name}: {uri} shows a token hash"
                );
            }
        }
    }
    b.finish(stores).await;
}

#[tokio::test]
async fn search_and_filters_find_clients() {
    let b = Backends::new().await;
    let stores = b.stores().await;
    for (name, store) in &stores {
        let t = team(store, b.dir.path()).await;
        for (n, phone, email) in [
            ("ООО Ромашка", "+74951234567", "info@romashka.ru"),
            ("Иванов Пётр", "+79161112233", "petr@mail.ru"),
        ] {
            let r = post(
                &t.crm,
                "/v1/clients",
                &t.anna,
                json!({"name": n, "kind": "company", "phones": [phone], "emails": [email]}),
            )
            .await;
            assert_eq!(r.status, StatusCode::CREATED, "{name}: {}", r.body);
        }
        let find = |q: &str| {
            let crm = t.crm.clone();
            let token = t.anna.clone();
            let q = q.to_owned();
            async move {
                let r = get(&crm, &format!("/v1/clients?q={q}"), &token).await;
                r.body["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c["name"].as_str().unwrap().to_owned())
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(
            find("%D1%80%D0%BE%D0%BC%D0%B0%D1%88").await,
            vec!["ООО Ромашка"],
            "{name}: by part of the name, any case"
        );
        assert_eq!(
            find("1112233").await,
            vec!["Иванов Пётр"],
            "{name}: by phone digits"
        );
        assert_eq!(
            find("petr%40mail").await,
            vec!["Иванов Пётр"],
            "{name}: by email"
        );
        assert!(
            find("%25").await.is_empty(),
            "{name}: LIKE wildcards are literal"
        );
        let mut counts = BTreeMap::new();
        for owner in ["me", t.boris_id.as_str()] {
            let r = get(&t.crm, &format!("/v1/clients?owner={owner}"), &t.head).await;
            counts.insert(owner.to_owned(), r.body["items"].as_array().unwrap().len());
        }
        assert_eq!(counts["me"], 0, "{name}");
        assert_eq!(counts[t.boris_id.as_str()], 0, "{name}");
        let r = get(
            &t.crm,
            "/v1/clients?updated_since=2000-01-01T00:00:00Z&limit=1",
            &t.anna,
        )
        .await;
        assert_eq!(r.body["items"].as_array().unwrap().len(), 1);
        let cursor = r.body["next_cursor"].as_str().unwrap();
        let r2 = get(
            &t.crm,
            &format!("/v1/clients?updated_since=2000-01-01T00:00:00Z&limit=1&cursor={cursor}"),
            &t.anna,
        )
        .await;
        assert_ne!(
            r2.body["items"][0]["id"], r.body["items"][0]["id"],
            "{name}: the next page moves on"
        );
    }
    b.finish(stores).await;
}

#[tokio::test]
async fn attachments_round_trip_whatever_their_name() {
    let b = Backends::new().await;
    let stores = b.stores().await;
    for (name, store) in &stores {
        let t = team(store, b.dir.path()).await;
        let c = post(&t.crm, "/v1/clients", &t.anna, json!({"name": "Files"})).await;
        let id = c.body["id"].as_str().unwrap();
        let up = call(
            &t.crm,
            Method::POST,
            &format!("/v1/clients/{id}/attachments?filename=%D0%9F%D1%80%D0%B0%D0%B9%D1%81%20%222026%22.pdf"),
            Some(&t.anna),
            Some(json!("%PDF-1.7 price list")),
            &[],
        )
        .await;
        assert_eq!(up.status, StatusCode::CREATED, "{name}: {}", up.body);
        assert_eq!(up.body["filename"], "Прайс \"2026\".pdf");
        let down = get(
            &t.crm,
            &format!("/v1/attachments/{}", up.body["id"].as_str().unwrap()),
            &t.anna,
        )
        .await;
        assert_eq!(down.status, StatusCode::OK, "{name}");
        let disposition = down.headers["content-disposition"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            disposition.contains("filename*=UTF-8''%D0%9F"),
            "{name}: {disposition}"
        );
        assert_eq!(
            down.headers["content-type"], "application/json",
            "{name}: the type it was sent with"
        );
    }
    b.finish(stores).await;
}
