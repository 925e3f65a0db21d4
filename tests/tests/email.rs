//! The email channel against a real Dovecot (IMAP with IDLE, POP3) and a
//! real SMTP server (aiosmtpd): letters arrive once — while running,
//! while stopped, after a UIDVALIDITY change — with legacy charsets
//! decoded; the CRM's reply goes out threaded and lands in Sent; form
//! letters become leads; hostile letters are all accounted for.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use mail_parser::MimeHeaders;
use serde_json::json;
use sha2::{Digest, Sha256};
use switchboard_adapters::blobs::Blobs;
use switchboard_storage::{Interaction, Kind};
use switchboard_tests::mail::{Dovecot, SmtpSink, letter};
use switchboard_tests::{Launch, Switchboard, feed_interactions};

const USER: &str = "sales";
const PASS: &str = "sales-secret";

fn config(dir: &Path, protocol: &str, port: u16, smtp: Option<u16>) -> std::path::PathBuf {
    let mut text = format!(
        r#"
[[email.mailboxes]]
name = "sales"
address = "sales@example.com"

[email.mailboxes.incoming]
protocol = "{protocol}"
host = "127.0.0.1"
port = {port}
security = "none"
username = "{USER}"
password = "{PASS}"
poll_interval = "{poll}"
"#,
        poll = if protocol == "imap" { "1h" } else { "1s" }
    );
    if let Some(smtp) = smtp {
        text.push_str(&format!(
            "\n[email.mailboxes.smtp]\nhost = \"127.0.0.1\"\nport = {smtp}\nsecurity = \"none\"\n"
        ));
    }
    text.push_str(
        r#"
[[email.forms]]
name = "site"
from = "forms@example.com"
subject_contains = "Заявка"
source = "site-form"

[email.forms.fields]
name = "Имя"
phone = "Телефон"
comment = "Сообщение"
utm_campaign = "utm_campaign"
"#,
    );
    let path = dir.join("switchboard.toml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn start(data: &Path, config: &Path) -> Switchboard {
    Launch::new(data).config(config).start().await.unwrap()
}

/// Waits until the feed holds `n` email interactions; returns them.
async fn email_events(
    sb: &Switchboard,
    data: &Path,
    n: usize,
    within: Duration,
) -> Vec<Interaction> {
    sb.feed_until(
        data,
        |e| e.channel == switchboard_storage::Channel::Email,
        n,
        within,
    )
    .await
    .unwrap()
}

/// Waits (at most 20 s) until the SMTP server has received a letter;
/// returns every letter it has.
async fn sent_letters(smtp: &SmtpSink, sb: &Switchboard) -> Vec<Vec<u8>> {
    let started = Instant::now();
    loop {
        let r = smtp.received().unwrap();
        if !r.is_empty() {
            return r;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "nothing sent: {}",
            sb.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn koi8r(s: &str) -> Vec<u8> {
    const LOWER: &str = "юабцдефгхийклмнопярстужвьызшэщчъ";
    const UPPER: &str = "ЮАБЦДЕФГХИЙКЛМНОПЯРСТУЖВЬЫЗШЭЩЧЪ";
    s.chars()
        .map(|c| {
            match (
                LOWER.chars().position(|x| x == c),
                UPPER.chars().position(|x| x == c),
            ) {
                (Some(i), _) => 0xC0 + i as u8,
                (_, Some(i)) => 0xE0 + i as u8,
                _ => c as u8,
            }
        })
        .collect()
}

fn cp1251(s: &str) -> Vec<u8> {
    s.chars()
        .map(|c| match c {
            'А'..='я' => (c as u32 - 'А' as u32 + 0xC0) as u8,
            _ => c as u8,
        })
        .collect()
}

fn legacy_letter(charset: &str, from: &str, id: &str, body: &[u8]) -> Vec<u8> {
    let mut raw = format!(
        "From: {from}\r\nTo: sales@example.com\r\nSubject: =?{charset}?B?{}?=\r\nMessage-ID: <{id}>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset={charset}\r\nContent-Transfer-Encoding: 8bit\r\n\r\n",
        b64(&if charset == "koi8-r" { koi8r("Счет") } else { cp1251("Счет") })
    )
    .into_bytes();
    raw.extend_from_slice(body);
    raw.extend_from_slice(b"\r\n");
    raw
}

fn b64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imap_letters_arrive_once_through_idle_restarts_and_a_uidvalidity_change() {
    let dovecot = Dovecot::start(&[(USER, PASS)]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = config(dir.path(), "imap", dovecot.imap_port, None);

    // Two letters in legacy Russian charsets wait in the mailbox.
    dovecot
        .append(
            USER,
            PASS,
            "INBOX",
            &[
                legacy_letter(
                    "koi8-r",
                    "Иван <ivan@example.ru>",
                    "k1@example.ru",
                    &koi8r("Пришлите счет на оплату"),
                ),
                legacy_letter(
                    "windows-1251",
                    "petr@example.ru",
                    "w1@example.ru",
                    &cp1251("Добрый день, нужен счет"),
                ),
            ],
        )
        .await
        .unwrap();
    let sb = start(&data, &cfg).await;
    let events = email_events(&sb, &data, 2, Duration::from_secs(20)).await;
    assert_eq!(events[0].kind, Kind::MessageReceived);
    assert_eq!(
        events[0].payload["text"].as_str().unwrap().trim(),
        "Пришлите счет на оплату"
    );
    assert_eq!(events[0].payload["subject"], "Счет");
    assert_eq!(events[0].contact.email.as_deref(), Some("ivan@example.ru"));
    assert_eq!(events[0].contact.name.as_deref(), Some("Иван"));
    assert_eq!(events[0].payload["line"], "sales");
    assert_eq!(
        events[1].payload["text"].as_str().unwrap().trim(),
        "Добрый день, нужен счет"
    );
    assert_eq!(events[1].payload["subject"], "Счет");
    let started = Instant::now();
    loop {
        let (status, ready) = sb.get_text("gateway", "/readyz").await.unwrap();
        if status == 200 && ready.contains(r#""email:sales":"ok""#) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{status} {ready}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        sb.gateway_metric("switchboard_email_mailbox_up", &[("mailbox", "sales")])
            .await
            .unwrap(),
        1.0
    );

    // Delivered while running: IDLE brings it (polling is set to 1 h).
    sb.wait_for_log("imap mailbox connected", Duration::from_secs(5))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = Instant::now();
    dovecot
        .append(
            USER,
            PASS,
            "INBOX",
            &[letter(
                "anna@example.ru",
                "Вопрос",
                "live@example.ru",
                "Есть в наличии?",
            )],
        )
        .await
        .unwrap();
    let events = email_events(&sb, &data, 3, Duration::from_secs(10)).await;
    eprintln!(
        "letter delivered while running reached the feed in {:?}",
        sent.elapsed()
    );
    assert_eq!(events[2].payload["message_id"], "live@example.ru");
    sb.terminate(Duration::from_secs(10)).await.unwrap();

    // Delivered while stopped: arrives once after the start.
    dovecot
        .append(
            USER,
            PASS,
            "INBOX",
            &[letter(
                "oleg@example.ru",
                "Offline",
                "off@example.ru",
                "written while you were down",
            )],
        )
        .await
        .unwrap();
    let sb = start(&data, &cfg).await;
    let events = email_events(&sb, &data, 4, Duration::from_secs(20)).await;
    assert_eq!(events[3].payload["message_id"], "off@example.ru");
    sb.terminate(Duration::from_secs(10)).await.unwrap();

    // The server renumbers the folder: nothing is taken twice.
    dovecot.renumber(USER, PASS).await.unwrap();
    dovecot
        .append(
            USER,
            PASS,
            "INBOX",
            &[letter(
                "olga@example.ru",
                "After",
                "after@example.ru",
                "after the renumbering",
            )],
        )
        .await
        .unwrap();
    let sb = start(&data, &cfg).await;
    let events = email_events(&sb, &data, 5, Duration::from_secs(20)).await;
    sb.wait_for_log("UIDVALIDITY changed", Duration::from_secs(5))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events_after = feed_interactions(&data).await.unwrap();
    let ids: Vec<_> = events_after
        .iter()
        .map(|e| {
            e.payload["message_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(
        ids,
        [
            "k1@example.ru",
            "w1@example.ru",
            "live@example.ru",
            "off@example.ru",
            "after@example.ru"
        ],
        "each letter exactly once, in order"
    );
    assert_eq!(events.len(), 5);
    // The CRM holds them as five interactions.
    let crm_ids = sb.all_interaction_ids().await.unwrap();
    for e in &events_after {
        assert!(
            crm_ids.contains(&e.id.to_string()),
            "{} not in the CRM",
            e.id
        );
    }
    sb.terminate(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_from_the_crm_goes_out_threaded_and_lands_in_sent() {
    let dovecot = Dovecot::start(&[(USER, PASS)]).await.unwrap();
    let smtp = SmtpSink::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = config(dir.path(), "imap", dovecot.imap_port, Some(smtp.port));
    dovecot
        .append(
            USER,
            PASS,
            "INBOX",
            &[letter(
                "Мария <maria@example.ru>",
                "Цена на ламинат",
                "q1@example.ru",
                "Сколько стоит доставка?",
            )],
        )
        .await
        .unwrap();
    let sb = start(&data, &cfg).await;
    let events = email_events(&sb, &data, 1, Duration::from_secs(20)).await;
    let conversation = events[0].conversation.clone().unwrap();
    // The CRM knows it before a manager answers.
    sb.answer("email:maria@example.ru", &events[0], "Доставка бесплатная.")
        .await
        .unwrap();

    // The SMTP server receives it, threaded under the customer's letter.
    let received = sent_letters(&smtp, &sb).await;
    assert_eq!(received.len(), 1);
    let sent = String::from_utf8_lossy(&received[0]).to_string();
    assert!(sent.contains("In-Reply-To: <q1@example.ru>"), "{sent}");
    assert!(sent.contains("References: <q1@example.ru>"), "{sent}");
    assert!(sent.contains("To: maria@example.ru"), "{sent}");
    assert!(sent.contains("From: sales@example.com"), "{sent}");
    let parsed = mail_parser::MessageParser::default()
        .parse(&received[0])
        .unwrap();
    assert_eq!(parsed.subject(), Some("Re: Цена на ламинат"));
    assert_eq!(parsed.body_text(0).unwrap().trim(), "Доставка бесплатная.");

    // It is in the mailbox's Sent folder, and in the feed as message.sent.
    let started = Instant::now();
    loop {
        let in_sent = dovecot.letters(USER, PASS, "Sent").await.unwrap();
        if in_sent.len() == 1 {
            assert!(String::from_utf8_lossy(&in_sent[0]).contains("In-Reply-To: <q1@example.ru>"));
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "Sent holds {} letters",
            in_sent.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events = email_events(&sb, &data, 2, Duration::from_secs(10)).await;
    let reply = events.iter().find(|e| e.kind == Kind::MessageSent).unwrap();
    assert_eq!(reply.conversation.as_deref(), Some(conversation.as_str()));
    assert_eq!(reply.payload["text"], "Доставка бесплатная.");
    let our_id = reply.payload["message_id"].as_str().unwrap().to_owned();
    assert!(sent.contains(&format!("Message-ID: <{our_id}>")), "{sent}");

    // The customer answers our reply: same conversation.
    let mut answer = letter(
        "maria@example.ru",
        "Re: Цена на ламинат",
        "q2@example.ru",
        "Спасибо!",
    );
    let headers_end = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    answer.splice(
        headers_end..headers_end,
        format!("\r\nIn-Reply-To: <{our_id}>").into_bytes(),
    );
    dovecot
        .append(USER, PASS, "INBOX", &[answer])
        .await
        .unwrap();
    let events = email_events(&sb, &data, 3, Duration::from_secs(10)).await;
    assert_eq!(events[2].payload["message_id"], "q2@example.ru");
    assert_eq!(
        events[2].conversation.as_deref(),
        Some(conversation.as_str())
    );
    sb.terminate(Duration::from_secs(10)).await.unwrap();
    assert_eq!(smtp.received().unwrap().len(), 1, "sent once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pop3_letters_arrive_once_and_form_letters_become_leads() {
    let dovecot = Dovecot::start(&[(USER, PASS)]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = config(dir.path(), "pop3", dovecot.pop3_port, None);
    let form = letter(
        "forms@example.com",
        "Заявка с сайта",
        "form1@example.com",
        "Имя: Сергей\r\nТелефон: 8 (916) 123-45-67\r\nСообщение: Перезвоните\r\nutm_campaign: winter",
    );
    let auto = b"From: boss@example.ru\r\nSubject: Out of office\r\nAuto-Submitted: auto-replied\r\nMessage-ID: <auto1@example.ru>\r\n\r\nI am away\r\n".to_vec();
    dovecot
        .append(
            USER,
            PASS,
            "INBOX",
            &[
                letter("a@example.ru", "Hello", "p1@example.ru", "first"),
                form,
                auto,
            ],
        )
        .await
        .unwrap();
    let sb = start(&data, &cfg).await;
    let events = email_events(&sb, &data, 3, Duration::from_secs(20)).await;
    assert_eq!(events[0].kind, Kind::MessageReceived);
    let lead = &events[1];
    assert_eq!(lead.kind, Kind::LeadReceived);
    assert_eq!(lead.contact.phone.as_deref(), Some("+79161234567"));
    assert_eq!(lead.contact.name.as_deref(), Some("Сергей"));
    assert_eq!(lead.payload["message"], "Перезвоните");
    let campaign = lead.campaign.as_ref().unwrap();
    assert_eq!(campaign.source.as_deref(), Some("site-form"));
    assert_eq!(campaign.campaign.as_deref(), Some("winter"));
    assert_eq!(events[2].payload["auto"], "auto-reply");
    // The auto-reply made no potential client in the CRM.
    let (_, clients) = sb.crm_get("/v1/clients?q=boss").await.unwrap();
    assert_eq!(
        clients["items"].as_array().map(Vec::len),
        Some(0),
        "{clients}"
    );

    // More polls, a restart and a new letter: each letter once.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    sb.terminate(Duration::from_secs(10)).await.unwrap();
    dovecot
        .append(
            USER,
            PASS,
            "INBOX",
            &[letter("b@example.ru", "Later", "p2@example.ru", "second")],
        )
        .await
        .unwrap();
    let sb = start(&data, &cfg).await;
    email_events(&sb, &data, 4, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let all = feed_interactions(&data).await.unwrap();
    let ids: Vec<_> = all
        .iter()
        .map(|e| e.payload["message_id"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        ids,
        [
            "p1@example.ru",
            "form1@example.com",
            "auto1@example.ru",
            "p2@example.ru"
        ]
    );
    sb.terminate(Duration::from_secs(10)).await.unwrap();
}

/// Letters built to break parsers: each still arrives, flagged when it
/// could not be read, and the adapter keeps going.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_letters_are_all_accounted_for() {
    let dovecot = Dovecot::start(&[(USER, PASS)]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = config(dir.path(), "imap", dovecot.imap_port, None);
    let corpus = switchboard_tests::mail::hostile_corpus();
    let names: Vec<&str> = corpus.iter().map(|(n, _)| *n).collect();
    let letters: Vec<Vec<u8>> = corpus.iter().map(|(_, l)| l.clone()).collect();
    dovecot.append(USER, PASS, "INBOX", &letters).await.unwrap();
    dovecot
        .append(
            USER,
            PASS,
            "INBOX",
            &[letter(
                "last@example.ru",
                "after the storm",
                "last@example.ru",
                "still here",
            )],
        )
        .await
        .unwrap();
    let sb = start(&data, &cfg).await;
    let events = email_events(&sb, &data, corpus.len() + 1, Duration::from_secs(60)).await;
    assert_eq!(events.len(), corpus.len() + 1, "{names:?}");
    assert_eq!(
        events.last().unwrap().payload["message_id"],
        "last@example.ru"
    );
    for (e, name) in events.iter().zip(&names) {
        eprintln!(
            "{name}: parse_error={} size={}",
            e.payload["parse_error"], e.payload["size"]
        );
    }
    let by_name = |n: &str| &events[names.iter().position(|x| *x == n).unwrap()];
    // The 50 MB attachment is listed but not stored (limit 25 MiB).
    let big = by_name("50 MB attachment");
    assert_eq!(
        big.payload["attachments"][0]["not_stored"],
        "larger than email.max_attachment_bytes"
    );
    assert!(big.payload["attachments"][0]["size"].as_u64().unwrap() >= 50_000_000);
    // Garbage without headers is kept raw with its problem named.
    let garbage = by_name("binary garbage");
    assert!(
        garbage.payload["parse_error"].is_string(),
        "{:#}",
        garbage.payload
    );
    let raw_sha = garbage.payload["raw_sha256"].as_str().unwrap();
    let store = Blobs::open_read_only(data.join("attachments")).unwrap();
    let kept = store.read(raw_sha).expect("the raw letter is kept");
    assert_eq!(hex::encode(Sha256::digest(&kept)), raw_sha);
    let (status, _) = sb.get_text("gateway", "/readyz").await.unwrap();
    assert_eq!(status, 200);
    sb.terminate(Duration::from_secs(10)).await.unwrap();
}

/// STARTTLS and implicit TLS, with the server's certificate checked against
/// the mailbox's `ca_file`; a server the mailbox cannot verify is reported
/// in `/readyz` and nothing is read from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_starttls_are_verified_against_the_configured_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = switchboard_tests::mail::TestCa::make(dir.path()).unwrap();
    let dovecot = Dovecot::start_tls(&[("imapuser", PASS), ("popuser", PASS)], &ca)
        .await
        .unwrap();
    let smtp = SmtpSink::start_tls(&ca).await.unwrap();
    dovecot
        .append(
            "imapuser",
            PASS,
            "INBOX",
            &[letter(
                "a@example.ru",
                "over starttls",
                "tls1@example.ru",
                "secret",
            )],
        )
        .await
        .unwrap();
    dovecot
        .append(
            "popuser",
            PASS,
            "INBOX",
            &[letter(
                "b@example.ru",
                "over pop3s",
                "tls2@example.ru",
                "secret too",
            )],
        )
        .await
        .unwrap();
    let ca_file = ca.ca.display();
    let text = format!(
        r#"
[[email.mailboxes]]
name = "starttls"
address = "a@example.com"
[email.mailboxes.incoming]
host = "127.0.0.1"
port = {imap}
security = "starttls"
username = "imapuser"
password = "{PASS}"
ca_file = "{ca_file}"
[email.mailboxes.smtp]
host = "127.0.0.1"
port = {smtp}
security = "starttls"
ca_file = "{ca_file}"

[[email.mailboxes]]
name = "pop3s"
address = "b@example.com"
[email.mailboxes.incoming]
protocol = "pop3"
host = "127.0.0.1"
port = {pop3s}
security = "tls"
username = "popuser"
password = "{PASS}"
ca_file = "{ca_file}"
poll_interval = "1s"

[[email.mailboxes]]
name = "untrusted"
address = "c@example.com"
[email.mailboxes.incoming]
host = "127.0.0.1"
port = {imaps}
security = "tls"
username = "imapuser"
password = "{PASS}"
"#,
        imap = dovecot.imap_port,
        pop3s = dovecot.pop3s_port,
        imaps = dovecot.imaps_port,
        smtp = smtp.port,
    );
    let cfg = dir.path().join("switchboard.toml");
    std::fs::write(&cfg, text).unwrap();
    let data = dir.path().join("data");
    let sb = start(&data, &cfg).await;
    let events = email_events(&sb, &data, 2, Duration::from_secs(20)).await;
    let mut lines: Vec<_> = events
        .iter()
        .map(|e| e.payload["line"].as_str().unwrap().to_owned())
        .collect();
    lines.sort();
    assert_eq!(lines, ["pop3s", "starttls"]);
    let started = Instant::now();
    let ready = loop {
        let (status, ready) = sb.get_text("gateway", "/readyz").await.unwrap();
        if ready.contains(r#""email:starttls":"ok""#)
            && ready.contains(r#""email:pop3s":"ok""#)
            && ready.contains("email:untrusted")
            && !ready.contains(r#""email:untrusted":"connecting""#)
        {
            assert_eq!(status, 503, "{ready}");
            break ready;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{ready}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(ready.to_lowercase().contains("certificate"), "{ready}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        feed_interactions(&data).await.unwrap().len(),
        2,
        "nothing from the untrusted server"
    );

    // A reply goes out over SMTP with STARTTLS (the server requires it).
    let over_starttls = events
        .iter()
        .find(|e| e.payload["line"] == "starttls")
        .unwrap();
    sb.answer("email:a@example.ru", over_starttls, "over TLS")
        .await
        .unwrap();
    let received = sent_letters(&smtp, &sb).await;
    let sent = String::from_utf8_lossy(&received[0]).to_string();
    assert!(sent.contains("In-Reply-To: <tls1@example.ru>"), "{sent}");
    sb.terminate(Duration::from_secs(10)).await.unwrap();
}

/// The "one click" offer: a template filled with the CRM's data and a file
/// from the client's card, sent as a reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_templated_offer_with_a_file_from_the_card_goes_out() {
    let dovecot = Dovecot::start(&[(USER, PASS)]).await.unwrap();
    let smtp = SmtpSink::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let templates = dir.path().join("templates");
    std::fs::create_dir_all(&templates).unwrap();
    std::fs::write(
        templates.join("offer.txt"),
        "Subject: Коммерческое предложение: {{ product }}\n\n\
         {{ contact.name }}, цена {{ product }} — {{ price }} ₽ за м².\nОтдел продаж, {{ mailbox }}\n",
    )
    .unwrap();
    let cfg = config(dir.path(), "imap", dovecot.imap_port, Some(smtp.port));
    dovecot
        .append(
            USER,
            PASS,
            "INBOX",
            &[letter(
                "Мария <maria@example.ru>",
                "Ламинат",
                "o1@example.ru",
                "Пришлите предложение",
            )],
        )
        .await
        .unwrap();
    let sb = Launch::new(&data)
        .config(&cfg)
        .env(
            "SWITCHBOARD_EMAIL__TEMPLATES_DIR",
            templates.display().to_string(),
        )
        .start()
        .await
        .unwrap();
    let events = email_events(&sb, &data, 1, Duration::from_secs(20)).await;
    let first = events[0].id.to_string();
    sb.wait_for_timeline("email:maria@example.ru", &first, Duration::from_secs(10))
        .await
        .unwrap();
    // The client was made from this first letter; a price list goes on its card.
    let price_list = b"%PDF-1.4\nprice list\n".to_vec();
    let resp = reqwest::Client::new()
        .post(format!(
            "http://{}/v1/clients/{first}/attachments?filename=price.pdf",
            sb.crm.unwrap()
        ))
        .bearer_auth(&sb.token)
        .header("content-type", "application/pdf")
        .body(price_list.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let file: serde_json::Value = resp.json().await.unwrap();
    let conversation = events[0].conversation.clone().unwrap();
    let (status, body) = sb
        .crm_post(
            &format!("/v1/conversations/{conversation}/replies"),
            &json!({"template": "offer", "data": {"product": "ламинат", "price": 990}, "attachment_ids": [file["id"]]}),
        )
        .await
        .unwrap();
    assert_eq!(status, 202, "{body}");
    // A template that does not exist is refused by the gateway, not sent.
    let (status, _) = sb
        .crm_post(
            &format!("/v1/conversations/{conversation}/replies"),
            &json!({"template": "nope"}),
        )
        .await
        .unwrap();
    assert_eq!(status, 202);

    let received = sent_letters(&smtp, &sb).await;
    let parsed = mail_parser::MessageParser::default()
        .parse(&received[0])
        .unwrap();
    assert_eq!(parsed.subject(), Some("Коммерческое предложение: ламинат"));
    assert_eq!(
        parsed.body_text(0).unwrap().trim().replace("\r\n", "\n"),
        "Мария, цена ламинат — 990 ₽ за м².\nОтдел продаж, sales@example.com"
    );
    let attachment = parsed.attachment(0).unwrap();
    assert_eq!(attachment.attachment_name(), Some("price.pdf"));
    assert_eq!(attachment.contents(), price_list.as_slice());
    assert_eq!(parsed.in_reply_to().as_text(), Some("o1@example.ru"));
    sb.wait_for_log("command rejected", Duration::from_secs(10))
        .await
        .unwrap();
    assert!(sb.logs().contains("no template named"), "{}", sb.logs());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        smtp.received().unwrap().len(),
        1,
        "only the good command was sent"
    );
    sb.terminate(Duration::from_secs(10)).await.unwrap();
}

/// The mail server goes away: the mailbox is reported not ready, the
/// adapter reconnects with backoff when the server is back, and the letter
/// delivered meanwhile arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_outage_delays_letters_and_loses_none() {
    let mut dovecot = Dovecot::start(&[(USER, PASS)]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = config(dir.path(), "imap", dovecot.imap_port, None);
    dovecot
        .append(
            USER,
            PASS,
            "INBOX",
            &[letter("a@example.ru", "before", "before@example.ru", "1")],
        )
        .await
        .unwrap();
    let sb = start(&data, &cfg).await;
    email_events(&sb, &data, 1, Duration::from_secs(20)).await;

    dovecot.stop().await.unwrap();
    let started = Instant::now();
    loop {
        let (status, ready) = sb.get_text("gateway", "/readyz").await.unwrap();
        if status == 503
            && ready.contains("email:sales")
            && !ready.contains(r#""email:sales":"ok""#)
        {
            break;
        }
        // Generous: a loaded CI machine notices a dropped IMAP connection
        // late (CI once took more than 10 s).
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{status} {ready}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        sb.gateway_metric("switchboard_email_mailbox_up", &[("mailbox", "sales")])
            .await
            .unwrap(),
        0.0
    );
    // Delivered by the MTA while IMAP is down.
    dovecot
        .fill_maildir(
            USER,
            [letter("b@example.ru", "during", "during@example.ru", "2")],
        )
        .unwrap();
    dovecot.restart().await.unwrap();
    let events = email_events(&sb, &data, 2, Duration::from_secs(30)).await;
    assert_eq!(events[1].payload["message_id"], "during@example.ru");
    dovecot
        .append(
            USER,
            PASS,
            "INBOX",
            &[letter("c@example.ru", "after", "after@example.ru", "3")],
        )
        .await
        .unwrap();
    email_events(&sb, &data, 3, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ids: Vec<_> = feed_interactions(&data)
        .await
        .unwrap()
        .iter()
        .map(|e| {
            e.payload["message_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(
        ids,
        ["before@example.ru", "during@example.ru", "after@example.ru"]
    );
    sb.terminate(Duration::from_secs(10)).await.unwrap();
}
