//! Email ingestion: letters in a Dovecot mailbox into the feed, beside a
//! bare IMAP fetch of the same letters with Python's `imaplib` in the same
//! run (the ceiling: what reading the mailbox alone costs).
//!
//! `EMAIL_LETTERS` letters (10000) — plain and HTML bodies in UTF-8 and
//! KOI8-R, one in ten with a small PDF attachment — are written into the
//! Maildir; Dovecot indexes them once (a warm-up SELECT), then each round
//! times `imaplib` fetching them all (`UID FETCH 1:* BODY.PEEK[]`) and a
//! fresh `switchboard gateway` taking them from connect to the last one in
//! the feed (parsed, attachments stored, published, cursor committed).
//! `EMAIL_ROUNDS` (3) rounds; the best of each side is reported, and the
//! means. Each round also shows the CPU each side used: the client
//! (`switchboard` for its whole run, start and stop included; `imaplib`
//! for its fetch) and Dovecot serving it (all its processes). On a small
//! machine the two sides' CPU together, shared by its cores, bounds the
//! round.
//!
//! Needs `dovecot` and the release binary: `cargo build --release -p
//! switchboard && cargo bench -p switchboard-tests --bench email`.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use switchboard_tests::budget::{cpu_seconds, cpu_seconds_with_children};
use switchboard_tests::mail::Dovecot;
use switchboard_tests::{bench_gateway, env_usize, feed_interactions};

const USER: &str = "bench";
const PASS: &str = "bench-secret";

fn letter(i: usize) -> Vec<u8> {
    let body = format!(
        "Здравствуйте!\r\n\r\nПрошу выставить счёт на {i} штук товара из прайс-листа, \
         доставка до склада в Подольске. Оплата по безналу.\r\n\r\n\
         С уважением,\r\nИван Петров\r\nООО «Ромашка», тел. +7 916 123-45-67\r\n"
    );
    let mut raw = format!(
        "From: =?utf-8?B?0JjQstCw0L0=?= <client{}@example.ru>\r\nTo: sales@example.com\r\n\
         Subject: Order {i}\r\nMessage-ID: <bench-{i}@example.ru>\r\n\
         Date: Wed, 02 Dec 2026 10:00:00 +0300\r\nMIME-Version: 1.0\r\n",
        i % 2000
    );
    if i.is_multiple_of(10) {
        raw.push_str(&format!(
            "Content-Type: multipart/mixed; boundary=\"m{i}\"\r\n\r\n--m{i}\r\n\
             Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{body}\r\n--m{i}\r\n\
             Content-Type: application/pdf; name=\"request-{i}.pdf\"\r\n\
             Content-Disposition: attachment; filename=\"request-{i}.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        ));
        for line in 0..40 {
            raw.push_str(&format!("JVBERi0xLjQK{:064}\r\n", i * 100 + line));
        }
        raw.push_str(&format!("--m{i}--\r\n"));
    } else {
        raw.push_str(&format!(
            "Content-Type: multipart/alternative; boundary=\"a{i}\"\r\n\r\n--a{i}\r\n\
             Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{body}\r\n--a{i}\r\n\
             Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
             <html><body><p>{}</p></body></html>\r\n--a{i}--\r\n",
            body.replace("\r\n", "<br>")
        ));
    }
    raw.into_bytes()
}

/// What one `imaplib` fetch of the INBOX took.
struct Fetch {
    /// From SELECT to the last letter.
    secs: f64,
    letters: usize,
    /// The client's CPU over the same span.
    cpu: f64,
}

/// `imaplib` fetching every letter of the INBOX.
fn imaplib_fetch(port: u16) -> Fetch {
    let script = format!(
        r#"
import imaplib, time
m = imaplib.IMAP4("127.0.0.1", {port})
m.login("{USER}", "{PASS}")
t, c = time.perf_counter(), time.process_time()
m.select("INBOX")
typ, data = m.uid("FETCH", "1:*", "(BODY.PEEK[])")
n = sum(1 for d in data if isinstance(d, tuple))
print(time.perf_counter() - t, n, time.process_time() - c)
m.logout()
"#
    );
    let python = std::env::var("AIOSMTPD_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(python)
        .args(["-c", &script])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut parts = text.split_whitespace();
    Fetch {
        secs: parts.next().unwrap().parse().unwrap(),
        letters: parts.next().unwrap().parse().unwrap(),
        cpu: parts.next().unwrap().parse().unwrap(),
    }
}

/// Dovecot's CPU seconds so far, every process of it (a connection's
/// process that ended included). Read after a pause, so that a process
/// that just ended has been reaped.
fn dovecot_cpu(dovecot: &Dovecot) -> f64 {
    std::thread::sleep(Duration::from_millis(100));
    cpu_seconds_with_children(dovecot.pid().expect("dovecot runs"))
}

/// One round's figures, in seconds.
struct Round {
    /// Ours, from the first fetch to the last letter committed.
    ours: f64,
    /// imaplib's fetch.
    theirs: f64,
    /// CPU: ours, Dovecot serving us, imaplib, Dovecot serving imaplib.
    cpu: [f64; 4],
}

fn mean(xs: impl ExactSizeIterator<Item = f64>) -> f64 {
    let n = xs.len().max(1);
    xs.sum::<f64>() / n as f64
}

fn fastest(xs: impl Iterator<Item = f64>) -> f64 {
    xs.fold(f64::INFINITY, f64::min)
}

#[tokio::main]
async fn main() {
    let letters = env_usize("EMAIL_LETTERS", 10_000);
    let rounds = env_usize("EMAIL_ROUNDS", 3);
    let dovecot = Dovecot::start(&[(USER, PASS)]).await.unwrap();
    let bytes: usize = (0..letters).map(|i| letter(i).len()).sum();
    dovecot
        .fill_maildir(USER, (0..letters).map(letter))
        .unwrap();
    println!(
        "{letters} letters, {:.1} MB, in the Maildir",
        bytes as f64 / 1e6
    );
    // Dovecot indexes the new Maildir once, before anything is timed.
    let warm = imaplib_fetch(dovecot.imap_port);
    assert_eq!(warm.letters, letters, "dovecot serves every letter");

    let mut done: Vec<Round> = Vec::with_capacity(rounds);
    for round in 1..=rounds {
        let before = dovecot_cpu(&dovecot);
        let fetch = imaplib_fetch(dovecot.imap_port);
        let dovecot_for_imaplib = dovecot_cpu(&dovecot) - before;
        assert_eq!(fetch.letters, letters);
        let secs = fetch.secs;
        let ceiling = letters as f64 / secs;

        // The daemon syncs its feed and its attachment packs, and a sync
        // commits the file system's journal: what the bench itself just
        // wrote (the Maildir, Dovecot's index) is flushed first, as it is
        // not the daemon's to pay.
        assert!(
            std::process::Command::new("sync")
                .status()
                .unwrap()
                .success()
        );
        let work = tempfile::tempdir().unwrap();
        let config = format!(
            r#"
[sip]
enabled = false

[[email.mailboxes]]
name = "sales"
address = "sales@example.com"

[email.mailboxes.incoming]
host = "127.0.0.1"
port = {}
security = "none"
username = "{USER}"
password = "{PASS}"
"#,
            dovecot.imap_port
        );
        let before = dovecot_cpu(&dovecot);
        let started = Instant::now();
        let sb = bench_gateway(work.path(), &config).await.unwrap();
        let deadline = Duration::from_secs(600);
        loop {
            let taken = sb
                .gateway_metric(
                    "switchboard_email_letters_total",
                    &[("mailbox", "sales"), ("outcome", "received")],
                )
                .await
                .unwrap();
            if taken as usize >= letters {
                break;
            }
            assert!(
                started.elapsed() < deadline,
                "{taken} of {letters} after {deadline:?}:\n{}",
                sb.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sb.wait_for_log("letters taken", Duration::from_secs(60))
            .await
            .unwrap();
        let wall = started.elapsed().as_secs_f64();
        // The daemon logs how long taking the letters took, from asking the
        // server for them to the last one committed (login and SELECT aside,
        // as imaplib's time leaves out its login).
        let logs = sb.logs();
        let taken_ms: f64 = logs
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"] == "letters taken")
            .filter_map(|v| v["ms"].as_f64())
            .sum();
        if std::env::var_os("EMAIL_BENCH_LOG").is_some() {
            println!("{logs}");
        }
        assert!(taken_ms > 0.0, "no 'letters taken' in the log:\n{logs}");
        let secs_ours = taken_ms / 1000.0;
        let ours = letters as f64 / secs_ours;
        // Its connection is still open: Dovecot's process for it counts.
        let cpu_ours = cpu_seconds(sb.pid().expect("switchboard runs"));
        let dovecot_for_us = dovecot_cpu(&dovecot) - before;
        sb.terminate(Duration::from_secs(30)).await.unwrap();
        let events = feed_interactions(&work.path().join("data")).await.unwrap();
        assert_eq!(events.len(), letters, "every letter once in the feed");
        println!(
            "round {round}: switchboard {ours:.0} letters/s ({secs_ours:.2} s from the first fetch to the last letter \
             committed; {wall:.2} s with the daemon's start), imaplib {ceiling:.0} letters/s ({secs:.2} s); \
             CPU: switchboard {cpu_ours:.2} s + Dovecot {dovecot_for_us:.2} s, imaplib {:.2} s + Dovecot {dovecot_for_imaplib:.2} s",
            fetch.cpu
        );
        done.push(Round {
            ours: secs_ours,
            theirs: secs,
            cpu: [cpu_ours, dovecot_for_us, fetch.cpu, dovecot_for_imaplib],
        });
    }
    let column = |i: usize| mean(done.iter().map(|r| r.cpu[i]));
    let (ours, theirs) = (
        mean(done.iter().map(|r| r.ours)),
        mean(done.iter().map(|r| r.theirs)),
    );
    let best_ours = letters as f64 / fastest(done.iter().map(|r| r.ours));
    let best_ceiling = letters as f64 / fastest(done.iter().map(|r| r.theirs));
    println!(
        "mean of {rounds} rounds: switchboard {:.0} letters/s, imaplib {:.0} letters/s (ratio {:.2}); \
         CPU a round: switchboard {:.2} s + Dovecot {:.2} s, imaplib {:.2} s + Dovecot {:.2} s",
        letters as f64 / ours,
        letters as f64 / theirs,
        theirs / ours,
        column(0),
        column(1),
        column(2),
        column(3),
    );
    println!(
        "BENCH email_ingest_per_s={best_ours:.0} imap_fetch_ceiling_per_s={best_ceiling:.0} email_ratio={:.2}",
        best_ours / best_ceiling
    );
}
