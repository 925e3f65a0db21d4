//! Webhook checks that need no network: signatures, secrets, delivery ids.

use super::*;
use crate::{HookError, HookRequest};
use hmac::{Hmac, Mac};
use switchboard_config::Config;

fn adapters(toml: &str) -> (tempfile::TempDir, Vec<Arc<dyn Adapter>>) {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_toml_str(toml, std::iter::empty()).unwrap();
    let blobs = Blobs::open(dir.path().join("attachments")).unwrap();
    let list = build(&config.channels, &blobs, phonenumber::country::Id::RU).unwrap();
    (dir, list)
}

fn request<'a>(
    headers: &'a http::HeaderMap,
    token: Option<&'a str>,
    body: &'a [u8],
) -> HookRequest<'a> {
    HookRequest {
        headers,
        token,
        body,
    }
}

#[test]
fn viber_takes_only_bodies_signed_with_the_token() {
    let (_dir, list) =
        adapters("[[channels]]\ntype = \"viber\"\nname = \"vb\"\nauth_token = \"s3cret\"\n");
    let viber = &list[0];
    let body = br#"{"event":"message","timestamp":1764700000000,"message_token":5100000000000000001,"sender":{"id":"abc=","name":"Anna"},"message":{"type":"text","text":"hi"}}"#;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"s3cret").unwrap();
    mac.update(body);
    let good = hex::encode(mac.finalize().into_bytes());
    let mut headers = http::HeaderMap::new();
    headers.insert("x-viber-content-signature", good.parse().unwrap());
    let ok = viber.accept("vb", &request(&headers, None, body)).unwrap();
    assert_eq!(ok.store.as_deref(), Some("5100000000000000001"));
    // One changed byte of the body, or of the signature: refused.
    let mut tampered = body.to_vec();
    tampered[30] ^= 1;
    assert_eq!(
        viber.accept("vb", &request(&headers, None, &tampered)),
        Err(HookError::Forbidden("X-Viber-Content-Signature"))
    );
    let mut bad = good.clone().into_bytes();
    bad[0] = if bad[0] == b'0' { b'1' } else { b'0' };
    headers.insert(
        "x-viber-content-signature",
        String::from_utf8(bad).unwrap().parse().unwrap(),
    );
    assert!(matches!(
        viber.accept("vb", &request(&headers, None, body)),
        Err(HookError::Forbidden(_))
    ));
    assert!(matches!(
        viber.accept("vb", &request(&http::HeaderMap::new(), None, body)),
        Err(HookError::Forbidden(_))
    ));
}

#[test]
fn vk_answers_the_handshake_and_checks_group_and_secret() {
    let (_dir, list) = adapters(
        "[[channels]]\ntype = \"vk\"\nname = \"club\"\ngroup_id = 77\nconfirmation = \"c0nf1rm\"\nsecret = \"vk-secret\"\naccess_token = \"t\"\n",
    );
    let vk = &list[0];
    let h = http::HeaderMap::new();
    let confirm = vk
        .accept(
            "club",
            &request(&h, None, br#"{"type":"confirmation","group_id":77}"#),
        )
        .unwrap();
    assert_eq!(
        (confirm.store, confirm.reply.body.as_str()),
        (None, "c0nf1rm")
    );
    let msg = br#"{"type":"message_new","group_id":77,"event_id":"e1","secret":"vk-secret","object":{"message":{"id":1,"from_id":5,"peer_id":5,"text":"hi","date":1764700000}}}"#;
    let ok = vk.accept("club", &request(&h, None, msg)).unwrap();
    assert_eq!(
        (ok.store.as_deref(), ok.reply.body.as_str()),
        (Some("e1"), "ok")
    );
    let wrong = String::from_utf8_lossy(msg).replace("vk-secret", "guess");
    assert_eq!(
        vk.accept("club", &request(&h, None, wrong.as_bytes())),
        Err(HookError::Forbidden("secret"))
    );
    let other_group = String::from_utf8_lossy(msg).replace("77", "78");
    assert!(matches!(
        vk.accept("club", &request(&h, None, other_group.as_bytes())),
        Err(HookError::Forbidden(_))
    ));
    // A status event is acknowledged and not kept.
    let typing = br#"{"type":"message_typing_state","group_id":77,"event_id":"e2","secret":"vk-secret","object":{}}"#;
    assert_eq!(
        vk.accept("club", &request(&h, None, typing)).unwrap().store,
        None
    );
    assert!(matches!(
        vk.accept("club", &request(&h, None, b"{not json")),
        Err(HookError::Malformed(_))
    ));
}

#[test]
fn telegram_webhook_needs_the_secret_token_and_jivosite_its_address_token() {
    let (_dir, list) = adapters(
        "[[channels]]\ntype = \"telegram\"\nname = \"tg\"\ntoken = \"1:x\"\nmode = \"webhook\"\nwebhook_secret = \"tg-secret\"\n\
         [[channels]]\ntype = \"jivosite\"\nname = \"jivo\"\ntoken = \"0123456789abcdef\"\n",
    );
    let update = br#"{"update_id":42,"message":{"message_id":1,"date":1764700000,"chat":{"id":5,"type":"private","first_name":"A"},"from":{"id":5,"is_bot":false,"first_name":"A"},"text":"hi"}}"#;
    let mut h = http::HeaderMap::new();
    assert!(matches!(
        list[0].accept("tg", &request(&h, None, update)),
        Err(HookError::Forbidden(_))
    ));
    h.insert(
        "x-telegram-bot-api-secret-token",
        "tg-secret".parse().unwrap(),
    );
    assert_eq!(
        list[0]
            .accept("tg", &request(&h, None, update))
            .unwrap()
            .store
            .as_deref(),
        Some("42")
    );
    assert_eq!(
        list[0].hooks(),
        vec![("tg".to_owned(), "telegram:tg".to_owned())]
    );

    let chat =
        br#"{"event_name":"chat_accepted","chat_id":4398,"visitor":{"phone":"+7 916 123-45-67"}}"#;
    let h = http::HeaderMap::new();
    assert!(matches!(
        list[1].accept("jivo", &request(&h, None, chat)),
        Err(HookError::Forbidden(_))
    ));
    assert!(matches!(
        list[1].accept("jivo", &request(&h, Some("0123456789abcdeF"), chat)),
        Err(HookError::Forbidden(_))
    ));
    let ok = list[1]
        .accept("jivo", &request(&h, Some("0123456789abcdef"), chat))
        .unwrap();
    assert_eq!(ok.store.as_deref(), Some("chat_accepted:4398"));
}

fn delivery(line: &str, id: &str, body: &[u8]) -> Delivery {
    Delivery {
        seq: 1,
        line: line.to_owned(),
        id: id.to_owned(),
        body: body.to_vec(),
        received_at: 1_764_700_000_000,
    }
}

#[tokio::test]
async fn a_market_order_and_a_jivosite_chat_become_leads_with_what_they_carry() {
    let (dir, list) = adapters(
        "[[channels]]\ntype = \"vk\"\nname = \"club\"\ngroup_id = 77\nconfirmation = \"c\"\nsecret = \"s\"\naccess_token = \"t\"\n\
         [[channels]]\ntype = \"jivosite\"\nname = \"jivo\"\nowner = \"ivanov\"\ntoken = \"0123456789abcdef\"\n",
    );
    let feed =
        switchboard_storage::FeedLog::open(&dir.path().join("feed.sqlite"), Default::default())
            .unwrap();
    let ctx = AdapterContext::for_test(feed, dir.path());
    let order = r#"{"type":"market_order_new","group_id":77,"event_id":"o1","secret":"s","object":{
        "id":9,"user_id":5,"date":1764700000,"display_order_id":"5-9","comment":"к вечеру",
        "total_price":{"amount":"359000","currency":{"id":643,"name":"RUB"}},
        "recipient":{"name":"Анна","phone":"8 916 123-45-67"},
        "preview_order_items":[{"title":"Чайник","quantity":2,"price":{"amount":"129500"}},
                               {"item":{"title":"Кружка"},"quantity":1,"price":{"amount":"100000"}}]}}"#.as_bytes();
    let evs = list[0]
        .process(&delivery("vk:club", "o1", order), &ctx)
        .await
        .unwrap();
    assert_eq!(evs.len(), 1);
    let lead = &evs[0];
    assert_eq!(lead.kind, Kind::LeadReceived);
    assert_eq!(lead.contact.key, "tel:+79161234567");
    assert_eq!(lead.contact.name.as_deref(), Some("Анна"));
    assert_eq!(lead.payload["sum"], json!(3590.0));
    assert_eq!(
        lead.payload["items"][0],
        json!({"title": "Чайник", "quantity": 2, "price": 1295.0})
    );
    assert_eq!(lead.payload["items"][1]["title"], "Кружка");
    assert_eq!(lead.conversation.as_deref(), Some("vk:club:5"));
    // Processing the same delivery again gives the same event id.
    let again = list[0]
        .process(&delivery("vk:club", "o1", order), &ctx)
        .await
        .unwrap();
    assert_eq!(again[0].id, lead.id);

    let chat = br#"{"event_name":"chat_accepted","chat_id":4398,"widget_id":"2853",
        "visitor":{"name":"John","email":"John@Example.com","number":"2746"},
        "session":{"utm_json":{"source":"google","medium":"cpc","campaign":"spring","term":"buy kettle"}},
        "page":{"url":"https://shop.example/kettles","title":"Kettles"}}"#;
    let evs = list[1]
        .process(&delivery("jivosite:jivo", "chat_accepted:4398", chat), &ctx)
        .await
        .unwrap();
    let lead = &evs[0];
    assert_eq!(lead.kind, Kind::LeadReceived);
    assert_eq!(lead.contact.key, "email:john@example.com");
    assert_eq!(lead.manager.as_deref(), Some("ivanov"));
    let c = lead.campaign.as_ref().unwrap();
    assert_eq!(
        (
            c.source.as_deref(),
            c.medium.as_deref(),
            c.campaign.as_deref(),
            c.keyword.as_deref()
        ),
        (
            Some("google"),
            Some("cpc"),
            Some("spring"),
            Some("buy kettle")
        )
    );
    assert_eq!(lead.payload["page"]["url"], "https://shop.example/kettles");
    assert_eq!(lead.payload["line"], "jivo");
}

fn chat(toml: &str, members: Vec<Member>) -> (tempfile::TempDir, Chat) {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_toml_str(toml, std::iter::empty()).unwrap();
    let inbox = crate::inbox::Inbox::open(&dir.path().join("inbox.sqlite")).unwrap();
    let chat = Chat::new(&config.channels, members, dir.path(), inbox)
        .unwrap()
        .unwrap();
    (dir, chat)
}

#[test]
fn a_visitor_keeps_their_conversation_only_with_their_own_token() {
    let toml = "[[channels]]\ntype = \"widget\"\nname = \"site\"\nsecret = \"0123456789abcdef-one\"\n\
                [[channels]]\ntype = \"widget\"\nname = \"shop\"\nsecret = \"0123456789abcdef-two\"\n";
    let (_dir, chat) = chat(toml, Vec::new());
    let site = chat.line("site").unwrap().clone();
    let (visitor, token) = chat.identify(&site, &json!({})).unwrap();
    assert_eq!(visitor.len(), 32);
    // The same id and token: the same visitor.
    let again = chat
        .identify(&site, &json!({"visitor": visitor, "token": token}))
        .unwrap();
    assert_eq!(again, (visitor.clone(), token.clone()));
    // Someone else's id with a made-up token, or the token of another
    // line: a new visitor, never the one named.
    let mut forged = token.clone().into_bytes();
    forged[0] = if forged[0] == b'0' { b'1' } else { b'0' };
    let forged = String::from_utf8(forged).unwrap();
    for hello in [
        json!({"visitor": visitor, "token": forged}),
        json!({"visitor": visitor}),
        json!({"visitor": "../../etc", "token": token}),
    ] {
        let (other, _) = chat.identify(&site, &hello).unwrap();
        assert_ne!(other, visitor, "{hello}");
    }
    let shop = chat.line("shop").unwrap().clone();
    let (other, _) = chat
        .identify(&shop, &json!({"visitor": visitor, "token": token}))
        .unwrap();
    assert_ne!(other, visitor);
}

#[test]
fn an_employee_signs_in_with_their_extension_and_nobody_else_does() {
    let members = vec![Member {
        extension: "1001".into(),
        password: "demo1001".into(),
    }];
    let (_dir, chat) = chat(
        "[[channels]]\ntype = \"team\"\nname = \"team\"\nsecret = \"0123456789abcdef-team\"\n",
        members,
    );
    let team = chat.line("team").unwrap().clone();
    assert!(team.is_team());
    for hello in [
        json!({}),
        json!({"user": "1001", "password": "demo1002"}),
        json!({"user": "1002", "password": "demo1001"}),
        json!({"user": "1001"}),
        json!({"visitor": "1001", "token": "0000"}),
    ] {
        assert_eq!(
            chat.identify(&team, &hello),
            Err(ChatError::SignIn),
            "{hello}"
        );
    }
    let (who, token) = chat
        .identify(&team, &json!({"user": "1001", "password": "demo1001"}))
        .unwrap();
    assert_eq!(who, "1001");
    // The session token signs the employee in on the next page load.
    assert_eq!(
        chat.identify(&team, &json!({"visitor": "1001", "token": token})),
        Ok(("1001".to_owned(), token.clone()))
    );
    // Team lines take no commands: the adapter serves widget lines only.
    assert!(chat.lines().is_empty());
}

#[tokio::test]
async fn a_resent_chat_message_is_one_message_and_limits_hold() {
    let (_dir, chat) = chat(
        "[[channels]]\ntype = \"widget\"\nname = \"site\"\nsecret = \"0123456789abcdef-one\"\nmax_message_chars = 10\n",
        Vec::new(),
    );
    let site = chat.line("site").unwrap().clone();
    let (visitor, _) = chat.identify(&site, &json!({})).unwrap();
    let (history, mut tab) = chat.open(&site, &visitor).await.unwrap();
    assert!(history.is_empty());
    let ctx = json!({"page": "https://shop.example/?utm_source=vk"});
    let first = chat
        .visitor_said(&site, &visitor, "m1", "Привет", &ctx)
        .await
        .unwrap();
    let again = chat
        .visitor_said(&site, &visitor, "m1", "Привет", &ctx)
        .await
        .unwrap();
    assert_eq!(first.seq, again.seq);
    // The open tab heard it once.
    assert_eq!(tab.recv().await.unwrap().text, "Привет");
    assert!(tab.try_recv().is_err());
    for (id, text) in [("m2", "   "), ("m3", "слишком длинное"), ("", "ok")] {
        assert!(matches!(
            chat.visitor_said(&site, &visitor, id, text, &ctx).await,
            Err(ChatError::Invalid(_))
        ));
    }
    let (history, _) = chat.open(&site, &visitor).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].from, "visitor");
    // Tabs that closed are forgotten: a visitor who left holds no memory.
    assert_eq!(chat.open_tabs(), 2);
    drop(tab);
    chat.closed(&site, &visitor);
    assert_eq!(chat.open_tabs(), 0);
}
