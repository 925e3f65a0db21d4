//! Messengers and lead services against doubles of their APIs on loopback:
//! a Telegram photo message arrives by long polling, is stored, assigned
//! and answered through the Bot API; webhooks of Telegram, VK, Viber and
//! JivoSite are verified (403 and nothing in the feed otherwise), answered
//! as each service expects, and idempotent on the service's delivery id;
//! replies go out through each service's API. Roistat and CoMagic leads
//! carry their campaign, and a deal made from one reports its outcome back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::{Digest, Sha256};
use switchboard_adapters::blobs::Blobs;
use switchboard_storage::{Interaction, Kind};
use switchboard_tests::doubles::Double;
use switchboard_tests::{Launch, Switchboard, feed_interactions};

const ROUTING: &str = r#"
[[routing.managers]]
id = "anna"
name = "Anna"
queues = ["sales"]

[[routing.queues]]
name = "sales"
policy = "round_robin"
"#;

async fn start(dir: &Path, channels: &str) -> Switchboard {
    let config = dir.join("switchboard.toml");
    std::fs::write(&config, format!("{ROUTING}\n{channels}")).unwrap();
    let sb = Launch::new(&dir.join("data"))
        .config(&config)
        .start()
        .await
        .unwrap();
    let (status, _) = sb
        .gateway_request(reqwest::Method::PUT, "/v1/managers/anna/presence")
        .await
        .unwrap()
        .json(&json!({"presence": "online"}))
        .send()
        .await
        .map(|r| (r.status().as_u16(), ()))
        .unwrap();
    assert_eq!(status, 200);
    sb
}

/// Waits until the feed holds an interaction `want` accepts; returns all
/// such interactions.
async fn feed_until(
    sb: &Switchboard,
    data: &Path,
    want: impl Fn(&Interaction) -> bool,
    within: Duration,
) -> Vec<Interaction> {
    sb.feed_until(data, want, 1, within).await.unwrap()
}

async fn hook(
    sb: &Switchboard,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut req = sb
        .gateway_request(reqwest::Method::POST, path)
        .await
        .unwrap()
        .header("content-type", "application/json")
        .body(body.to_vec());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test]
async fn a_telegram_photo_arrives_by_polling_is_assigned_and_answered() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let tg = Double::telegram("4242:TEST-TOKEN").await.unwrap();
    let photo: Vec<u8> = (0..60_000u32).map(|i| (i * 7 % 251) as u8).collect();
    tg.add_file("photo-small", photo[..500].to_vec());
    tg.add_file("photo-big", photo.clone());
    tg.push_update(json!({
        "update_id": 1001,
        "message": {
            "message_id": 7,
            "date": 1_764_700_000,
            "chat": {"id": 555, "type": "private", "first_name": "Иван"},
            "from": {"id": 555, "is_bot": false, "first_name": "Иван", "last_name": "Петров", "username": "ivanp"},
            "photo": [
                {"file_id": "photo-small", "file_unique_id": "s", "width": 90, "height": 60, "file_size": 500},
                {"file_id": "photo-big", "file_unique_id": "b", "width": 1280, "height": 853, "file_size": 60000}
            ],
            "caption": "Нужен такой же 🙂"
        }
    }));
    let sb = start(
        dir.path(),
        &format!(
            "[[channels]]\ntype = \"telegram\"\nname = \"tg-sales\"\ntoken = \"4242:TEST-TOKEN\"\napi_url = \"{}\"\npoll_timeout = \"2s\"\n",
            tg.url()
        ),
    )
    .await;

    let got = feed_until(
        &sb,
        &data,
        |e| e.kind == Kind::MessageReceived && e.contact.key == "telegram:555",
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(got.len(), 1);
    let msg = &got[0];
    assert_eq!(msg.payload["text"], "Нужен такой же 🙂");
    assert_eq!(msg.contact.name.as_deref(), Some("Иван Петров"));
    assert_eq!(msg.conversation.as_deref(), Some("telegram:tg-sales:555"));
    // The largest photo was downloaded and stored by its digest.
    let sha = hex::encode(Sha256::digest(&photo));
    assert_eq!(msg.payload["attachments"][0]["sha256"], sha.as_str());
    assert_eq!(msg.payload["attachments"][0]["kind"], "photo");
    let stored = stored_file(&data, &sha);
    assert_eq!(stored, photo);

    // Routing assigns it to the online manager.
    let assigned = feed_until(
        &sb,
        &data,
        |e| e.kind == Kind::RoutingAssigned && e.contact.key == "telegram:555",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(assigned[0].manager.as_deref(), Some("anna"));

    // The manager answers from the CRM; the Bot API gets sendMessage.
    sb.answer("telegram:555", msg, "Здравствуйте! Есть в наличии.")
        .await
        .unwrap();
    let sent = tg.wait_for("sendMessage", 1, Duration::from_secs(15)).await;
    assert_eq!(sent.len(), 1, "{}", sb.logs());
    assert_eq!(sent[0].body["chat_id"], 555);
    assert_eq!(sent[0].body["text"], "Здравствуйте! Есть в наличии.");
    let out = feed_until(
        &sb,
        &data,
        |e| e.kind == Kind::MessageSent && e.contact.key == "telegram:555",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        out[0].conversation.as_deref(),
        Some("telegram:tg-sales:555")
    );
    assert!(out[0].payload["message_id"].as_i64().is_some());

    // The update was confirmed to Telegram (a later offset), and a new one
    // arrives too; the first is not taken again.
    tg.push_update(json!({
        "update_id": 1002,
        "message": {"message_id": 8, "date": 1_764_700_100,
            "chat": {"id": 555, "type": "private", "first_name": "Иван"},
            "from": {"id": 555, "is_bot": false, "first_name": "Иван"}, "text": "Спасибо"}
    }));
    feed_until(
        &sb,
        &data,
        |e| e.kind == Kind::MessageReceived && e.payload["text"] == "Спасибо",
        Duration::from_secs(10),
    )
    .await;
    let polls = tg.seen("getUpdates");
    assert!(polls.iter().any(|p| p.body["offset"] == 1002), "{polls:?}");
    let received = feed_interactions(&data)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == Kind::MessageReceived)
        .count();
    assert_eq!(received, 2);
    sb.terminate(Duration::from_secs(10)).await.unwrap();
}

fn viber_signature(token: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(token.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[tokio::test]
async fn webhooks_are_verified_acknowledged_once_and_answered_through_each_api() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let vk = Double::vk("vk-access").await.unwrap();
    let viber = Double::viber("viber-token").await.unwrap();
    let tg = Double::telegram("77:HOOK").await.unwrap();
    let sb = start(
        dir.path(),
        &format!(
            r#"
[[channels]]
type = "telegram"
name = "tgw"
token = "77:HOOK"
mode = "webhook"
webhook_secret = "tg-hook-secret"
api_url = "{tg}"

[[channels]]
type = "vk"
name = "club"
group_id = 77
confirmation = "c0nf1rm"
secret = "vk-secret"
access_token = "vk-access"
api_url = "{vk}"

[[channels]]
type = "viber"
name = "vb"
auth_token = "viber-token"
api_url = "{viber}"

[[channels]]
type = "jivosite"
name = "jivo"
token = "jivo-0123456789abcdef"
"#,
            tg = tg.url(),
            vk = vk.url(),
            viber = viber.url()
        ),
    )
    .await;

    // Telegram: the secret token header or 403; a retried update is one event.
    let update = br#"{"update_id":9001,"message":{"message_id":3,"date":1764700000,"chat":{"id":777,"type":"private","first_name":"Olga"},"from":{"id":777,"is_bot":false,"first_name":"Olga"},"text":"hello"}}"#;
    assert_eq!(hook(&sb, "/v1/hooks/tgw", &[], update).await.0, 403);
    let wrong = [("x-telegram-bot-api-secret-token", "guess")];
    assert_eq!(hook(&sb, "/v1/hooks/tgw", &wrong, update).await.0, 403);
    let right = [("x-telegram-bot-api-secret-token", "tg-hook-secret")];
    assert_eq!(hook(&sb, "/v1/hooks/tgw", &right, update).await.0, 200);
    assert_eq!(hook(&sb, "/v1/hooks/tgw", &right, update).await.0, 200);

    // VK: the handshake, the secret, message_new and a market order.
    let (status, text) = hook(
        &sb,
        "/v1/hooks/club",
        &[],
        br#"{"type":"confirmation","group_id":77}"#,
    )
    .await;
    assert_eq!((status, text.as_str()), (200, "c0nf1rm"));
    let vk_msg = r#"{"type":"message_new","group_id":77,"event_id":"ev-1","v":"5.199","secret":"SECRET","object":{"message":{"id":11,"date":1764700000,"peer_id":3301,"from_id":3301,"text":"Сколько стоит?","attachments":[{"type":"doc","doc":{"title":"room.pdf","url":"VKFILE"}},{"type":"doc","doc":{"title":"gone.pdf","url":"VKGONE"}}]}}}"#
        .replace("VKFILE", &format!("{}/media/room.pdf", vk.url()))
        .replace("VKGONE", &format!("{}/media/gone.pdf", vk.url()));
    let plan: Vec<u8> = b"%PDF-1.4 plan of the room ".repeat(2000);
    vk.add_file("room.pdf", plan.clone());
    let forged = vk_msg.replace("SECRET", "not-it");
    assert_eq!(
        hook(&sb, "/v1/hooks/club", &[], forged.as_bytes()).await.0,
        403
    );
    let genuine = vk_msg.replace("SECRET", "vk-secret");
    let (status, text) = hook(&sb, "/v1/hooks/club", &[], genuine.as_bytes()).await;
    assert_eq!((status, text.as_str()), (200, "ok"));
    let order = r#"{"type":"market_order_new","group_id":77,"event_id":"ev-2","secret":"vk-secret","object":{"id":5,"user_id":3301,"date":1764700000,"total_price":{"amount":"250000","currency":{"id":643,"name":"RUB"}},"preview_order_items":[{"title":"Ламинат, м²","quantity":10,"price":{"amount":"25000"}}],"recipient":{"name":"Пётр","phone":"+7 903 555-44-33"}}}"#;
    assert_eq!(
        hook(&sb, "/v1/hooks/club", &[], order.as_bytes()).await.0,
        200
    );

    // Viber: the body's HMAC-SHA256 signature or 403.
    let picture: Vec<u8> = (0..40_000u32).map(|i| (i * 13 % 251) as u8).collect();
    viber.add_file("photo.jpg", picture.clone());
    let viber_msg = r#"{"event":"message","timestamp":1764700000000,"message_token":5100000000000000077,"sender":{"id":"V1b3r+User=","name":"Marina"},"message":{"type":"picture","text":"Привет","media":"VBFILE","file_name":"photo.jpg"}}"#
        .replace("VBFILE", &format!("{}/media/photo.jpg", viber.url()));
    let viber_msg = viber_msg.as_bytes();
    let bad_signature = viber_signature("other-token", viber_msg);
    assert_eq!(
        hook(
            &sb,
            "/v1/hooks/vb",
            &[("x-viber-content-signature", &bad_signature)],
            viber_msg
        )
        .await
        .0,
        403
    );
    let signature = viber_signature("viber-token", viber_msg);
    assert_eq!(
        hook(
            &sb,
            "/v1/hooks/vb",
            &[("x-viber-content-signature", &signature)],
            viber_msg
        )
        .await
        .0,
        200
    );

    // JivoSite: the address's token or 403; the same webhook twice is one lead.
    let jivo = r#"{"event_name":"offline_message","widget_id":"2853","offline_message_id":"om-17","visitor":{"name":"Kirill","phone":"8 (916) 555-00-11"},"message":"Перезвоните","session":{"utm_json":{"source":"yandex","medium":"cpc","campaign":"spring"}},"page":{"url":"https://shop.example/","title":"Shop"}}"#;
    let answer = delivered_twice(&sb, "jivo", "jivo-0123456789abcdef", jivo).await;
    assert_eq!(answer, r#"{"result":"ok"}"#);

    // Bad bodies: 400 and 413; no such line: 404.
    let (status, _) = hook(&sb, "/v1/hooks/club", &[], b"{not json").await;
    assert_eq!(status, 400);
    let huge = vec![b' '; 70 * 1024];
    assert_eq!(hook(&sb, "/v1/hooks/club", &[], &huge).await.0, 413);
    assert_eq!(hook(&sb, "/v1/hooks/nope", &[], b"{}").await.0, 404);

    // Each accepted delivery is one event; the refused ones are none.
    let lead = feed_until(
        &sb,
        &data,
        |e| e.kind == Kind::LeadReceived && e.contact.key == "tel:+79165550011",
        Duration::from_secs(10),
    )
    .await;
    let campaign = lead[0].campaign.clone().unwrap();
    assert_eq!(
        (campaign.source.as_deref(), campaign.campaign.as_deref()),
        (Some("yandex"), Some("spring"))
    );
    feed_until(
        &sb,
        &data,
        |e| e.channel == switchboard_storage::Channel::Viber,
        Duration::from_secs(10),
    )
    .await;
    feed_until(
        &sb,
        &data,
        |e| e.kind == Kind::LeadReceived && e.channel == switchboard_storage::Channel::Vk,
        Duration::from_secs(10),
    )
    .await;
    let events = feed_until(
        &sb,
        &data,
        |e| e.contact.key == "telegram:777",
        Duration::from_secs(10),
    )
    .await;
    // Give a duplicate, had one been stored, time to show.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all = feed_interactions(&data).await.unwrap();
    let customer: Vec<&Interaction> = all
        .iter()
        .filter(|e| matches!(e.kind, Kind::MessageReceived | Kind::LeadReceived))
        .collect();
    let count = |f: &dyn Fn(&Interaction) -> bool| customer.iter().filter(|e| f(e)).count();
    assert_eq!(
        count(&|e| e.contact.key == "telegram:777"),
        1,
        "{customer:#?}"
    );
    assert_eq!(
        count(&|e| e.channel == switchboard_storage::Channel::Jivosite),
        1
    );
    assert_eq!(count(&|e| e.channel == switchboard_storage::Channel::Vk), 2);
    assert_eq!(
        count(&|e| e.channel == switchboard_storage::Channel::Viber),
        1
    );
    assert_eq!(customer.len(), 5, "{customer:#?}");
    // Files linked from VK and Viber messages are downloaded and kept; a
    // link that is gone is recorded, the message kept.
    let stored = |e: &Interaction, i: usize, bytes: &[u8]| {
        let sha = hex::encode(Sha256::digest(bytes));
        assert_eq!(
            e.payload["attachments"][i]["sha256"],
            sha.as_str(),
            "{e:#?}"
        );
        let kept = stored_file(&data, &sha);
        assert_eq!(kept, bytes);
    };
    let vk_message = customer
        .iter()
        .find(|e| e.kind == Kind::MessageReceived && e.channel == switchboard_storage::Channel::Vk)
        .unwrap();
    stored(vk_message, 0, &plan);
    assert_eq!(
        vk_message.payload["attachments"][1]["not_stored"],
        "unavailable: 404 Not Found"
    );
    let viber_message = customer
        .iter()
        .find(|e| e.channel == switchboard_storage::Channel::Viber)
        .unwrap();
    stored(viber_message, 0, &picture);
    assert_eq!(events[0].payload["text"], "hello");
    let order_lead = all
        .iter()
        .find(|e| e.kind == Kind::LeadReceived && e.channel == switchboard_storage::Channel::Vk)
        .unwrap();
    assert_eq!(order_lead.payload["sum"], json!(2500.0));
    assert_eq!(order_lead.contact.key, "tel:+79035554433");
    // The CRM has the JivoSite lead once.
    let jivo_lead = all
        .iter()
        .find(|e| e.channel == switchboard_storage::Channel::Jivosite)
        .unwrap();
    let timeline = sb
        .wait_for_timeline(
            "tel:+79165550011",
            &jivo_lead.id.to_string(),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let leads = timeline["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["kind"] == "lead.received")
        .count();
    assert_eq!(leads, 1, "{timeline:#}");

    // Replies go out through VK's messages.send and Viber's send_message.
    let vk_in = all
        .iter()
        .find(|e| e.kind == Kind::MessageReceived && e.channel == switchboard_storage::Channel::Vk)
        .unwrap();
    assert_eq!(vk_in.conversation.as_deref(), Some("vk:club:3301"));
    sb.answer("vk:3301", vk_in, "2500 ₽ за всё").await.unwrap();
    let viber_in = all
        .iter()
        .find(|e| e.channel == switchboard_storage::Channel::Viber)
        .unwrap();
    assert_eq!(
        viber_in.conversation.as_deref(),
        Some("viber:vb:V1b3r+User=")
    );
    sb.answer("viber:V1b3r+User=", viber_in, "Добрый день!")
        .await
        .unwrap();
    let sent = vk
        .wait_for("messages.send", 1, Duration::from_secs(15))
        .await;
    assert_eq!(sent.len(), 1, "{}", sb.logs());
    assert_eq!(sent[0].body["peer_id"], "3301");
    assert_eq!(sent[0].body["message"], "2500 ₽ за всё");
    assert!(
        sent[0].body["random_id"]
            .as_str()
            .unwrap()
            .parse::<i32>()
            .is_ok()
    );
    let sent = viber
        .wait_for("send_message", 1, Duration::from_secs(15))
        .await;
    assert_eq!(sent.len(), 1, "{}", sb.logs());
    assert_eq!(sent[0].body["receiver"], "V1b3r+User=");
    assert_eq!(sent[0].body["text"], "Добрый день!");
    feed_until(
        &sb,
        &data,
        |e| e.kind == Kind::MessageSent && e.channel == switchboard_storage::Channel::Viber,
        Duration::from_secs(10),
    )
    .await;
    feed_until(
        &sb,
        &data,
        |e| e.kind == Kind::MessageSent && e.channel == switchboard_storage::Channel::Vk,
        Duration::from_secs(10),
    )
    .await;

    let forbidden = sb
        .gateway_metric(
            "switchboard_webhooks_total",
            &[("channel", "vk"), ("outcome", "forbidden")],
        )
        .await
        .unwrap();
    assert_eq!(forbidden, 1.0);
    let duplicates = sb
        .gateway_metric(
            "switchboard_webhooks_total",
            &[("channel", "jivosite"), ("outcome", "duplicate")],
        )
        .await
        .unwrap();
    assert_eq!(duplicates, 1.0);
    sb.terminate(Duration::from_secs(10)).await.unwrap();
}

/// A line whose address holds its token: another token (or none) gets 403;
/// the right one, twice (a service's retry), gets 200 both times. The
/// second answer.
async fn delivered_twice(sb: &Switchboard, line: &str, token: &str, body: &str) -> String {
    for wrong in [
        format!("/v1/hooks/{line}/not-the-token"),
        format!("/v1/hooks/{line}"),
    ] {
        assert_eq!(hook(sb, &wrong, &[], body.as_bytes()).await.0, 403);
    }
    let mut last = String::new();
    for _ in 0..2 {
        let (status, answer) = hook(
            sb,
            &format!("/v1/hooks/{line}/{token}"),
            &[],
            body.as_bytes(),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        last = answer;
    }
    last
}

/// Moves a deal to `stage` through the CRM API (If-Match from a GET).
async fn move_deal(sb: &Switchboard, deal: &str, stage: &str, extra: serde_json::Value) {
    let resp = sb
        .crm_request(reqwest::Method::GET, &format!("/v1/deals/{deal}"))
        .unwrap()
        .send()
        .await
        .unwrap();
    let etag = resp.headers()["etag"].to_str().unwrap().to_owned();
    let mut body = json!({"stage_id": stage});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let resp = sb
        .crm_request(reqwest::Method::PATCH, &format!("/v1/deals/{deal}"))
        .unwrap()
        .header("if-match", etag)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    assert_eq!(status, 200, "{}", resp.text().await.unwrap());
}

/// The CRM client holding `phone`, once the lead `id` reached it.
/// The first lead that came in through `channel`.
async fn lead_from(
    sb: &Switchboard,
    data: &Path,
    channel: switchboard_storage::Channel,
) -> Interaction {
    feed_until(
        sb,
        data,
        |e| e.kind == Kind::LeadReceived && e.channel == channel,
        Duration::from_secs(10),
    )
    .await
    .remove(0)
}

/// The CRM client of contact `key` (`tel:…`, `email:…`), once `lead` is on
/// its timeline.
async fn client_of(sb: &Switchboard, key: &str, lead: &Interaction) -> String {
    sb.wait_for_timeline(key, &lead.id.to_string(), Duration::from_secs(10))
        .await
        .unwrap();
    let text = key.split_once(':').map_or(key, |(_, t)| t);
    let (status, body) = sb
        .crm_get(&format!(
            "/v1/clients?q={}",
            text.replace('+', "%2B").replace('@', "%40")
        ))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    body["items"][0]["id"].as_str().unwrap().to_owned()
}

async fn new_deal(sb: &Switchboard, client: &str, title: &str, amount_minor: i64) -> String {
    let (status, deal) = sb
        .crm_post(
            "/v1/deals",
            &json!({"client_id": client, "title": title, "amount_minor": amount_minor}),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{deal}");
    deal["id"].as_str().unwrap().to_owned()
}

/// The default pipeline's closing stages (migrations).
const WON: &str = "00000000-0000-7000-8000-000000000015";

#[tokio::test]
async fn lead_services_bring_their_campaign_and_hear_how_the_deal_ended() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let roistat = Double::roistat(4242, "rs-api-key").await.unwrap();
    let comagic = Double::data_api("cm-access").await.unwrap();
    let uis = Double::data_api("uis-access").await.unwrap();
    let sb = start(
        dir.path(),
        &format!(
            r#"
[[channels]]
type = "roistat"
name = "rs"
token = "rs-0123456789abcdef"
project = 4242
api_key = "rs-api-key"
api_url = "{}"

[[channels]]
type = "comagic"
name = "cm"
token = "cm-0123456789abcdef"
access_token = "cm-access"
api_url = "{}"

[[channels]]
type = "uis"
name = "uis"
token = "uis-0123456789abcdef"
access_token = "uis-access"
api_url = "{}"
"#,
            roistat.url(),
            comagic.url(),
            uis.url()
        ),
    )
    .await;

    // Roistat: the address's token or 403; a redelivered lead is one lead.
    let lead = r#"{"id":"22","title":"Заявка с сайта","name":"Ульяна","phone":"9166190383","email":"","text":"Две шторы 280x150","roistat":"799","creation_date":"2026-12-01 10:31:23","fields":{"utm_source":"yandex","utm_medium":"cpc","utm_campaign":"winter","utm_term":"шторы на заказ"}}"#;
    delivered_twice(&sb, "rs", "rs-0123456789abcdef", lead).await;
    // CoMagic: a call notification (the account's template of its variables).
    let call = r#"{"notification_name":"Входящий звонок","communication_id":99017,"communication_type":"call","contact_phone_number":"79035550101","virtual_phone_number":"74950000000","utm_source":"google","utm_medium":"cpc","utm_campaign":"brand","utm_term":"шторы","visitor_session_id":555123,"site_domain_name":"shop.example"}"#;
    delivered_twice(&sb, "cm", "cm-0123456789abcdef", call).await;

    let rs_lead = lead_from(&sb, &data, switchboard_storage::Channel::Roistat).await;
    assert_eq!(rs_lead.contact.key, "tel:+79166190383");
    assert_eq!(rs_lead.payload["comment"], "Две шторы 280x150");
    let c = rs_lead.campaign.clone().unwrap();
    assert_eq!(
        (
            c.source.as_deref(),
            c.medium.as_deref(),
            c.campaign.as_deref(),
            c.keyword.as_deref(),
            c.visit_id.as_deref()
        ),
        (
            Some("yandex"),
            Some("cpc"),
            Some("winter"),
            Some("шторы на заказ"),
            Some("799")
        )
    );
    let cm_lead = lead_from(&sb, &data, switchboard_storage::Channel::Comagic).await;
    assert_eq!(cm_lead.contact.key, "tel:+79035550101");
    let c = cm_lead.campaign.clone().unwrap();
    assert_eq!(
        (
            c.source.as_deref(),
            c.campaign.as_deref(),
            c.visit_id.as_deref()
        ),
        (Some("google"), Some("brand"), Some("555123"))
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let leads = feed_interactions(&data)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == Kind::LeadReceived)
        .count();
    assert_eq!(leads, 2, "a redelivery made a second lead");

    // A deal of the Roistat client is won: Roistat hears of it, with the
    // amount and the visit it came from.
    let client = client_of(&sb, "tel:+79166190383", &rs_lead).await;
    let deal = new_deal(&sb, &client, "Шторы в гостиную", 1_250_000).await;
    move_deal(&sb, &deal, WON, json!({})).await;
    let orders = roistat
        .wait_for("add-orders", 1, Duration::from_secs(15))
        .await;
    assert_eq!(orders.len(), 1, "{}", sb.logs());
    let order = &orders[0].body[0];
    assert_eq!(order["id"], deal.as_str());
    assert_eq!(order["status"], "won");
    assert_eq!(order["price"], "12500.00");
    assert_eq!(order["roistat"], "799");
    assert_eq!(roistat.seen("set-statuses").len(), 1);

    // A deal of the CoMagic caller is lost: the Data API gets the outcome
    // tied to the call.
    let client = client_of(&sb, "tel:+79035550101", &cm_lead).await;
    let deal = new_deal(&sb, &client, "Карниз", 300_000).await;
    let (_, pipelines) = sb.crm_get("/v1/pipelines").await.unwrap();
    let lost = pipelines["items"][0]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["outcome"] == "lost")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    move_deal(&sb, &deal, &lost, json!({"lost_reason": "дорого"})).await;
    let uploads = comagic
        .wait_for("upload.deals_history", 1, Duration::from_secs(15))
        .await;
    assert_eq!(uploads.len(), 1, "{}", sb.logs());
    let reported = &uploads[0].body["deals"][0];
    assert_eq!(reported["ext_id"], deal.as_str());
    assert_eq!(reported["status"], "lost");
    assert_eq!(reported["communication_id"], 99017);
    assert_eq!(reported["communication_type"], "call");
    assert_eq!(reported["amount"], json!(3000.0));
    // Roistat heard nothing of the CoMagic deal.
    assert_eq!(roistat.seen("add-orders").len(), 1);

    // UIS, the same platform: a site request (offline message) from an
    // email address; its won deal goes to UIS's Data API, not CoMagic's.
    let request = r#"{"notification_name":"Заявка","communication_id":77001,"communication_type":"offline_message","contact_email":"Olga@Example.com","contact_full_name":"Ольга","message":"Нужен замер","utm_source":"vk","utm_medium":"social","visitor_session_id":"vs-9"}"#;
    delivered_twice(&sb, "uis", "uis-0123456789abcdef", request).await;
    let uis_lead = lead_from(&sb, &data, switchboard_storage::Channel::Uis).await;
    assert_eq!(uis_lead.contact.key, "email:olga@example.com");
    assert_eq!(uis_lead.payload["message"], "Нужен замер");
    let client = client_of(&sb, "email:olga@example.com", &uis_lead).await;
    let deal = new_deal(&sb, &client, "Замер и монтаж", 150_000).await;
    move_deal(&sb, &deal, WON, json!({})).await;
    let uploads = uis
        .wait_for("upload.deals_history", 1, Duration::from_secs(15))
        .await;
    assert_eq!(uploads.len(), 1, "{}", sb.logs());
    let reported = &uploads[0].body["deals"][0];
    assert_eq!(
        (
            reported["status"].as_str(),
            reported["communication_id"].as_i64(),
            reported["communication_type"].as_str()
        ),
        (Some("won"), Some(77001), Some("offline_message"))
    );
    assert_eq!(comagic.seen("upload.deals_history").len(), 1);
    sb.terminate(Duration::from_secs(10)).await.unwrap();
}

/// A file the gateway's attachment store keeps, read beside it.
fn stored_file(data: &Path, sha: &str) -> Vec<u8> {
    Blobs::open_read_only(data.join("attachments"))
        .unwrap()
        .read(sha)
        .unwrap_or_else(|| panic!("{sha} is not in the attachment store"))
}
