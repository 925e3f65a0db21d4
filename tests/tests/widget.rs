//! The site chat widget in headless Chromium (playwright-core driving
//! Debian's Chromium, `tests/browser/widget.mjs`): a visitor lands on a
//! page of the company's site with UTM tags, opens the chat and writes;
//! the message reaches the feed with the page and the campaign and the CRM
//! with its conversation; the manager's reply from the CRM appears in the
//! page; on another page of the site the same visitor sees the whole
//! conversation and writes again. A page of another origin cannot open
//! the chat. The corporate chat runs on the same script and socket: two
//! employees sign in with their extensions and talk.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use axum::Router;
use axum::response::Html;
use axum::routing::get;
use serde_json::{Value, json};
use switchboard_storage::{Channel, Interaction, Kind};
use switchboard_tests::{Launch, Switchboard, feed_interactions};
use tokio::io::{AsyncBufReadExt, BufReader};

/// The company's site on `listener`: two pages that embed the widget from
/// the gateway. Dropping the sender stops it.
fn site(listener: tokio::net::TcpListener, gateway: &str) -> tokio::sync::oneshot::Sender<()> {
    let page = |title: &str| {
        Html(format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title></head>\
             <body><h1>{title}</h1><script src=\"{gateway}/widget.js\" data-line=\"site\" async></script></body></html>"
        ))
    };
    let (pricing, contacts) = (page("Цены"), page("Контакты"));
    let team = Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Intranet</title></head>\
         <body><script src=\"{gateway}/widget.js\" data-line=\"team\"></script></body></html>"
    ));
    let router = Router::new()
        .route("/pricing", get(move || async move { pricing }))
        .route("/contacts", get(move || async move { contacts }))
        .route("/team", get(move || async move { team }));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
    });
    stop
}

async fn start(dir: &Path, site_origin: &str) -> Switchboard {
    let config = dir.join("switchboard.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[routing.managers]]
id = "anna"
name = "Anna"
queues = ["sales"]

[[routing.queues]]
name = "sales"
policy = "round_robin"

[[channels]]
type = "widget"
name = "site"
secret = "widget-secret-0123456789"
allowed_origins = ["{site_origin}"]
title = "Чат с магазином"

[[channels]]
type = "team"
name = "team"
secret = "team-secret-0123456789"

[[sip.users]]
extension = "1001"
password = "demo1001"
manager = "anna"

[[sip.users]]
extension = "1002"
password = "demo1002"
manager = "anna"
"#
        ),
    )
    .unwrap();
    Launch::new(&dir.join("data"))
        .config(&config)
        .start()
        .await
        .unwrap()
}

/// A WebSocket handshake from a page of `origin`; the answer's status.
async fn handshake(sb: &Switchboard, line: &str, origin: &str) -> u16 {
    sb.gateway_request(reqwest::Method::GET, &format!("/v1/chat/{line}/ws"))
        .await
        .unwrap()
        .header("origin", origin)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_visitor_chats_with_a_manager_from_the_site_across_page_loads() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The site's origin goes into the gateway's config, the gateway's
    // address into the site's pages.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let site_url = format!("http://{}", listener.local_addr().unwrap());
    let sb = start(dir.path(), &site_url).await;
    let _site = site(listener, &sb.gateway_url("").unwrap());

    // The script is served; a page of another origin may not open the chat,
    // and there is no chat line of another name.
    let (status, js) = sb.get_text("gateway", "/widget.js").await.unwrap();
    assert_eq!(status, 200);
    assert!(js.contains("/v1/chat/"));
    assert_eq!(handshake(&sb, "site", "http://evil.example").await, 403);
    assert_eq!(handshake(&sb, "other", &site_url).await, 404);
    assert_eq!(handshake(&sb, "site", &site_url).await, 101);

    // As the browser's address bar has it (utm_term is "диван").
    let landing = format!(
        "{site_url}/pricing?utm_source=yandex&utm_medium=cpc&utm_campaign=winter&utm_term=%D0%B4%D0%B8%D0%B2%D0%B0%D0%BD"
    );
    let mut browser = tokio::process::Command::new("node")
        .arg("widget.mjs")
        .args([
            landing.as_str(),
            &format!("{site_url}/contacts"),
            "Здравствуйте! Есть доставка в Тверь?",
            "А самовывоз?",
        ])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("browser"))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node (scripts/test --setup installs it and playwright-core)");
    let mut steps = BufReader::new(browser.stdout.take().unwrap()).lines();
    let mut next_step = async || loop {
        let line = tokio::time::timeout(Duration::from_secs(100), steps.next_line())
            .await
            .expect("the browser script is bounded in time")
            .unwrap()
            .unwrap_or_else(|| "FAIL the browser script ended".into());
        assert!(!line.starts_with("FAIL"), "{line}\n{}", sb.logs());
        if !line.starts_with("PAGEERROR") {
            return line;
        }
        eprintln!("{line}");
    };

    // The visitor wrote: the message is in the feed with the page it was
    // written on and the campaign of the landing page.
    let sent = next_step().await;
    let visitor = sent.strip_prefix("SENT ").unwrap().to_owned();
    assert_eq!(visitor.len(), 32, "{sent}");
    let is_visitors = |e: &Interaction| {
        e.kind == Kind::MessageReceived && e.contact.key == format!("widget:{visitor}")
    };
    let got = sb
        .feed_until(&data, is_visitors, 1, Duration::from_secs(15))
        .await
        .unwrap();
    let msg = &got[0];
    assert_eq!(msg.channel, Channel::Widget);
    assert_eq!(msg.payload["text"], "Здравствуйте! Есть доставка в Тверь?");
    assert_eq!(msg.payload["page"]["url"], landing.as_str());
    assert_eq!(msg.payload["page"]["title"], "Цены");
    let conversation = format!("widget:site:{visitor}");
    assert_eq!(msg.conversation.as_deref(), Some(conversation.as_str()));
    let c = msg.campaign.clone().expect("the landing page's UTM tags");
    assert_eq!(
        (
            c.source.as_deref(),
            c.medium.as_deref(),
            c.campaign.as_deref(),
            c.keyword.as_deref()
        ),
        (Some("yandex"), Some("cpc"), Some("winter"), Some("диван"))
    );

    // The manager answers from the CRM; the reply appears in the page.
    sb.answer(&format!("widget:{visitor}"), msg, "Да, доставим завтра 🚚")
        .await
        .unwrap();
    let reply = next_step().await;
    assert_eq!(reply, format!("REPLY {}", json!("Да, доставим завтра 🚚")));
    sb.feed_until(
        &data,
        |e| e.kind == Kind::MessageSent && e.channel == Channel::Widget,
        1,
        Duration::from_secs(10),
    )
    .await
    .unwrap();

    // Another page: the same visitor, the whole conversation, still open.
    let reloaded = next_step().await;
    let state: Value = serde_json::from_str(reloaded.strip_prefix("RELOADED ").unwrap()).unwrap();
    assert_eq!(state["visitor"], visitor.as_str());
    assert_eq!(
        state["shown"],
        json!([
            ["visitor", "Здравствуйте! Есть доставка в Тверь?"],
            ["manager", "Да, доставим завтра 🚚"]
        ])
    );
    assert_eq!(state["open"], true);

    // The second message carries its own page and the visit's campaign.
    assert_eq!(next_step().await, "SENT2");
    let got = sb
        .feed_until(&data, is_visitors, 2, Duration::from_secs(15))
        .await
        .unwrap();
    assert_eq!(got.len(), 2, "each message once");
    assert_eq!(got[1].payload["text"], "А самовывоз?");
    assert_eq!(
        got[1].payload["page"]["url"],
        format!("{site_url}/contacts")
    );
    assert_eq!(got[1].conversation.as_deref(), Some(conversation.as_str()));
    assert_eq!(
        got[1].campaign.as_ref().and_then(|c| c.source.as_deref()),
        Some("yandex")
    );
    let status = tokio::time::timeout(Duration::from_secs(30), browser.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());

    // Nothing was taken twice, and the widget's counters say so.
    let received = feed_interactions(&data)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == Kind::MessageReceived)
        .count();
    assert_eq!(received, 2);
    let taken = sb
        .gateway_metric(
            "switchboard_chat_messages_total",
            &[("direction", "in"), ("outcome", "taken")],
        )
        .await
        .unwrap();
    assert_eq!(taken, 2.0);
    // The browser is gone: so are its sessions.
    let mut open = f64::NAN;
    for _ in 0..300 {
        open = sb
            .gateway_metric("switchboard_chat_open_sessions", &[])
            .await
            .unwrap();
        if open == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(open, 0.0);
    sb.terminate(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test]
async fn employees_talk_in_the_corporate_chat_after_signing_in() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let site_url = format!("http://{}", listener.local_addr().unwrap());
    let sb = start(dir.path(), &site_url).await;
    let _site = site(listener, &sb.gateway_url("").unwrap());

    let out = tokio::process::Command::new("node")
        .arg("team.mjs")
        .arg(format!("{site_url}/team"))
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("browser"))
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(100), out)
        .await
        .expect("the browser script is bounded in time")
        .expect("node (scripts/test --setup installs it and playwright-core)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let done = stdout
        .lines()
        .find_map(|l| l.strip_prefix("DONE "))
        .unwrap_or_else(|| {
            panic!(
                "{stdout}\n{}\n{}",
                String::from_utf8_lossy(&out.stderr),
                sb.logs()
            )
        });
    let seen: Value = serde_json::from_str(done).unwrap();
    assert_eq!(seen["refused"], true, "a wrong password must not sign in");
    let question = "Коллеги, кто возьмёт клиента из Твери?";
    assert_eq!(
        seen["borisSaw"],
        json!([["other", format!("1001: {question}")], ["mine", "Беру"]])
    );
    let annas = json!([["mine", question], ["other", "1002: Беру"]]);
    assert_eq!(seen["annaSaw"], annas);
    assert_eq!(seen["annaAfterReload"], annas);
    assert_eq!(seen["signInAfterReload"], false);

    // Employees' talk is not a customer's: nothing of it is in the feed.
    let interactions = feed_interactions(&data).await.unwrap();
    assert!(
        interactions.iter().all(|e| e.channel != Channel::Chat),
        "{interactions:#?}"
    );
    sb.terminate(Duration::from_secs(10)).await.unwrap();
}
