//! Webhook intake under load: `wrk` posts VK Callback API deliveries (each
//! with its own `event_id` and the community's secret, checked on every
//! request) to `/v1/hooks/club` of the real `switchboard run` at rising
//! concurrency; every 200 means the delivery is on disk in the inbox. Then
//! the CRM's store is counted until it holds one interaction per accepted
//! delivery (nothing lost), within a bound.
//!
//! Needs `wrk` and the release binary: `cargo build --release -p
//! switchboard && cargo bench -p switchboard-tests --bench webhooks`.
//! `WEBHOOK_SECONDS` (5) per level, `WEBHOOK_CONNECTIONS` ("8,32,128").
//! Last line: `BENCH webhook_accepted_per_s=<n> webhook_p99_ms=<n>`.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use sqlx::Connection;
use switchboard_tests::{Launch, env_usize, wrk};

const CONFIG: &str = r#"
[[channels]]
type = "vk"
name = "club"
group_id = 77
confirmation = "c"
secret = "bench-secret"
access_token = "unused"
api_url = "http://127.0.0.1:9"
"#;

fn script(level: usize) -> String {
    format!(
        r#"
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
local counter = 0
request = function()
  counter = counter + 1
  local peer = 100000 + (counter % 1000)
  local body = string.format('{{"type":"message_new","group_id":77,"event_id":"L{level}-%d-%d","v":"5.199","secret":"bench-secret","object":{{"message":{{"id":%d,"date":1764700000,"peer_id":%d,"from_id":%d,"text":"bench %d"}}}}}}', tid, counter, counter, peer, peer, counter)
  return wrk.format("POST", "/v1/hooks/club", {{["Content-Type"] = "application/json"}}, body)
end
"#
    )
}

#[tokio::main]
async fn main() {
    let seconds = env_usize("WEBHOOK_SECONDS", 5);
    let levels: Vec<usize> = std::env::var("WEBHOOK_CONNECTIONS")
        .unwrap_or_else(|_| "8,32,128".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("switchboard.toml");
    std::fs::write(&file, CONFIG).unwrap();
    let data = work.path().join("data");
    let sb = Launch::new(&data)
        .config(&file)
        .env("SWITCHBOARD_LOG__LEVEL", "warn,switchboard=info")
        .start()
        .await
        .unwrap();
    let base = sb.gateway_url("").unwrap().trim_end_matches('/').to_owned();

    let mut best = (0.0f64, f64::NAN, 0usize);
    let mut accepted_total = 0u64;
    for (i, &connections) in levels.iter().enumerate() {
        let r = wrk(&base, &script(i), seconds, connections);
        let accepted = r.requests.saturating_sub(r.errors);
        accepted_total += accepted;
        let per_s = if r.requests == 0 {
            0.0
        } else {
            r.rps * accepted as f64 / r.requests as f64
        };
        println!(
            "{connections} connections: {per_s:.0} accepted/s, p99 {:.2} ms, {} refused ({} requests)",
            r.p99_ms, r.errors, r.requests
        );
        if per_s > best.0 {
            best = (per_s, r.p99_ms, connections);
        }
    }

    // Nothing lost: every 200 is a delivery in the inbox (wrk does not
    // count requests still in flight when its time is up, so the inbox may
    // hold a few more than wrk saw), and the CRM ends up with one
    // interaction per stored delivery.
    let inbox_url = format!("sqlite://{}?mode=ro", data.join("inbox.sqlite").display());
    let mut conn = sqlx::SqliteConnection::connect(&inbox_url).await.unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM deliveries")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    drop(conn);
    assert!(
        stored as u64 >= accepted_total,
        "the inbox holds {stored} deliveries, wrk saw {accepted_total} accepted"
    );
    let url = format!("sqlite://{}?mode=ro", data.join("crm.sqlite").display());
    let started = Instant::now();
    let mut in_crm = 0i64;
    while started.elapsed() < Duration::from_secs(600) {
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        in_crm = sqlx::query_scalar(
            "SELECT count(*) FROM interactions WHERE channel = 'vk' AND kind = 'message.received'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        drop(conn);
        if in_crm >= stored {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "wrk saw {accepted_total} accepted; the inbox stored {stored}; the CRM holds {in_crm} after {:.1?} (lost: {})",
        started.elapsed(),
        stored - in_crm
    );
    sb.terminate(Duration::from_secs(30)).await.unwrap();
    assert_eq!(in_crm, stored, "every accepted webhook must reach the CRM");
    println!("best at {} connections", best.2);
    println!(
        "BENCH webhook_accepted_per_s={:.0} webhook_p99_ms={:.2}",
        best.0, best.1
    );
}
