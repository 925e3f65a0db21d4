//! Real serialized envelopes validate against the checked-in JSON Schemas,
//! and the schemas reject what v1 does not allow.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};
use switchboard_storage::envelope::VERSION;
use switchboard_storage::{
    COMMAND_SCHEMA_V1, Campaign, Channel, Command, CommandKind, Contact, ContactKey,
    INTERACTION_SCHEMA_V1, Interaction, Kind,
};

fn interaction_validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(INTERACTION_SCHEMA_V1).unwrap();
    jsonschema::validator_for(&schema).unwrap()
}

fn command_validator() -> jsonschema::Validator {
    let interaction: Value = serde_json::from_str(INTERACTION_SCHEMA_V1).unwrap();
    let schema: Value = serde_json::from_str(COMMAND_SCHEMA_V1).unwrap();
    let registry = jsonschema::Registry::new()
        .add(
            "https://switchboard.example/schema/interaction.v1.json",
            interaction,
        )
        .unwrap()
        .prepare()
        .unwrap();
    jsonschema::options()
        .with_registry(&registry)
        .build(&schema)
        .unwrap()
}

fn lead() -> Interaction {
    let mut ev = Interaction::new(
        Kind::LeadReceived,
        Channel::Widget,
        Contact {
            key: ContactKey::phone("+79161234567").into_string(),
            phone: Some("+79161234567".into()),
            email: Some("ivan@example.com".into()),
            user_id: None,
            name: Some("Иван".into()),
        },
        time::OffsetDateTime::now_utc(),
        json!({"message": "call me", "page_url": "https://example.com/price"}),
    );
    ev.campaign = Some(Campaign {
        source: Some("yandex".into()),
        medium: Some("cpc".into()),
        campaign: Some("winter".into()),
        ..Campaign::default()
    });
    ev
}

fn assert_valid(v: &jsonschema::Validator, instance: &Value) {
    let errors: Vec<String> = v.iter_errors(instance).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{instance}\n{errors:#?}");
}

#[test]
fn real_interactions_validate() {
    let v = interaction_validator();
    assert_valid(&v, &serde_json::to_value(lead()).unwrap());

    let mut call = Interaction::new(
        Kind::CallMissed,
        Channel::Sip,
        Contact {
            key: ContactKey::phone("+74951234567").into_string(),
            phone: Some("+74951234567".into()),
            email: None,
            user_id: None,
            name: None,
        },
        time::OffsetDateTime::now_utc(),
        json!({"direction": "incoming"}),
    );
    call.manager = Some("m-17".into());
    call.conversation = Some("a84b4c76e66710@pc33.example.com".into());
    assert_valid(&v, &serde_json::to_value(&call).unwrap());

    let tg = Interaction::new(
        Kind::MessageReceived,
        Channel::Telegram,
        Contact {
            key: ContactKey::account(Channel::Telegram, "123456789").into_string(),
            phone: None,
            email: None,
            user_id: Some("123456789".into()),
            name: None,
        },
        time::OffsetDateTime::now_utc(),
        json!({"text": "привет"}),
    );
    assert_valid(&v, &serde_json::to_value(&tg).unwrap());
}

#[test]
fn real_commands_validate() {
    let v = command_validator();
    let cmd = Command {
        v: VERSION,
        id: uuid::Uuid::now_v7(),
        issued_at: time::OffsetDateTime::now_utc(),
        kind: CommandKind::MessageSend,
        channel: Channel::Email,
        target: "email:sales@example.com".into(),
        contact: Contact {
            key: ContactKey::email("ivan@example.com").into_string(),
            phone: None,
            email: Some("ivan@example.com".into()),
            user_id: None,
            name: None,
        },
        manager: Some("m-1".into()),
        conversation: Some("<abc@example.com>".into()),
        payload: json!({"text": "Here is the offer"}),
    };
    assert_valid(&v, &serde_json::to_value(&cmd).unwrap());
}

#[test]
fn schema_rejects_what_v1_does_not_allow() {
    let v = interaction_validator();
    let good = serde_json::to_value(lead()).unwrap();
    type Mutation = Box<dyn Fn(&mut Value)>;
    let mutations: Vec<(&str, Mutation)> = vec![
        (
            "missing id",
            Box::new(|e| {
                e.as_object_mut().unwrap().remove("id");
            }),
        ),
        (
            "uuid v4 id",
            Box::new(|e| e["id"] = json!(uuid::Uuid::nil().to_string())),
        ),
        (
            "non-UTC time",
            Box::new(|e| e["occurred_at"] = json!("2026-11-26T21:00:00+03:00")),
        ),
        (
            "unknown kind",
            Box::new(|e| e["kind"] = json!("lead.recieved")),
        ),
        ("unknown channel", Box::new(|e| e["channel"] = json!("fax"))),
        ("version 2", Box::new(|e| e["v"] = json!(2))),
        (
            "phone not E.164",
            Box::new(|e| e["contact"]["phone"] = json!("8 916 123-45-67")),
        ),
        (
            "upper-case email",
            Box::new(|e| e["contact"]["email"] = json!("Ivan@Example.com")),
        ),
        (
            "payload not object",
            Box::new(|e| e["payload"] = json!("text")),
        ),
        ("extra field", Box::new(|e| e["priority"] = json!(1))),
    ];
    for (what, mutate) in mutations {
        let mut bad = good.clone();
        mutate(&mut bad);
        assert!(
            !v.is_valid(&bad),
            "schema accepted an event with {what}: {bad}"
        );
    }
}

#[test]
fn owner_changes_validate() {
    let interaction: Value = serde_json::from_str(INTERACTION_SCHEMA_V1).unwrap();
    let schema: Value = serde_json::from_str(switchboard_storage::OWNER_SCHEMA_V1).unwrap();
    let registry = jsonschema::Registry::new()
        .add(
            "https://switchboard.example/schema/interaction.v1.json",
            interaction,
        )
        .unwrap()
        .prepare()
        .unwrap();
    let v = jsonschema::options()
        .with_registry(&registry)
        .build(&schema)
        .unwrap();
    for manager in [Some("ivanov".to_owned()), None] {
        let change = switchboard_storage::OwnerChange {
            v: VERSION,
            contact_key: "tel:+79161234567".into(),
            manager,
            changed_at: time::OffsetDateTime::now_utc(),
        };
        assert_valid(&v, &serde_json::to_value(&change).unwrap());
    }
    assert!(!v.is_valid(
        &json!({"v": 1, "contact_key": "tel:+79161234567", "changed_at": "2026-11-26T00:00:00Z"})
    ));
}

#[test]
fn envelope_round_trips() {
    let ev = lead();
    let text = serde_json::to_string(&ev).unwrap();
    let back: Interaction = serde_json::from_str(&text).unwrap();
    assert_eq!(back, ev);
}
