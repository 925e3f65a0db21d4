//! Routing throughput, beside its peer in the same run.
//!
//! 1. In-memory decisions on one core: `decide()` over a queue of 20
//!    managers with mixed presence, load and turns, one thread.
//! 2. Redis claims: the atomic claim script through `RedisState` (one
//!    multiplexed connection, 50 claims in flight), distinct contacts.
//! 3. Ceiling: `redis-benchmark` running the same script (`EVALSHA`, one
//!    round trip per claim, 50 connections) against the same Redis.
//!
//! Sizes: `ROUTING_BENCH_DECISIONS` (default 5000000), `ROUTING_BENCH_CLAIMS`
//! (default 200000). Run: `cargo bench -p switchboard-tests --bench routing`.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use switchboard_config::{ManagerConfig, Policy, QueueConfig, RoutingConfig, Workload};
use switchboard_redis::RedisState;
use switchboard_routing::{Directory, Request, Snapshot, decide};
use switchboard_storage::state::{Claim, ManagerStatus, Presence, RoutingState};
use switchboard_tests::env_usize;

const IN_FLIGHT: usize = 50;
const MANAGERS: usize = 20;

fn decisions(n: usize) -> f64 {
    let config = RoutingConfig {
        managers: (0..MANAGERS)
            .map(|i| ManagerConfig {
                id: format!("m{i:02}"),
                queues: vec!["sales".into()],
                skills: vec!["ru".into()],
                ..ManagerConfig::default()
            })
            .collect(),
        queues: vec![QueueConfig {
            name: "sales".into(),
            policy: Policy::RoundRobin,
            required_skills: vec!["ru".into()],
            ..QueueConfig::default()
        }],
        ..RoutingConfig::default()
    };
    let dir = Directory::new(&config).unwrap();
    let now = 1_800_000_000_000;
    let shifts = dir.shifts(now);
    let mut statuses: Vec<ManagerStatus> = (0..MANAGERS)
        .map(|i| ManagerStatus {
            presence: [
                Presence::Online,
                Presence::Online,
                Presence::Away,
                Presence::Offline,
            ][i % 4],
            registered: i % 3 != 0,
            load: [0, (i % 6) as u32, 3, (i % 11) as u32],
            last_turn: (i * 7919 % 101) as u64,
            pass: 0,
        })
        .collect();
    let workloads = [
        Workload::Chat,
        Workload::Lead,
        Workload::Email,
        Workload::Call,
    ];
    let started = Instant::now();
    for i in 0..n {
        let responsible = if i % 5 == 0 {
            Some((i % MANAGERS) as u32)
        } else {
            None
        };
        let d = decide(
            &dir,
            &Request {
                workload: workloads[i % 4],
                queue: 0,
                responsible,
                waiting_since: now,
                exclude: &[],
                now,
            },
            &Snapshot {
                statuses: &statuses,
                shifts: &shifts,
            },
        );
        // Feed the outcome back so each decision sees a new state.
        if let switchboard_routing::Outcome::Assign { manager, .. } = black_box(d).outcome {
            statuses[manager as usize].last_turn = i as u64 + 1_000;
        }
    }
    n as f64 / started.elapsed().as_secs_f64()
}

async fn claims(state: Arc<RedisState>, n: usize) -> f64 {
    let next = Arc::new(AtomicUsize::new(0));
    let now = 1_800_000_000_000;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..IN_FLIGHT {
        let (state, next) = (Arc::clone(&state), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return;
                }
                let contact = format!("bench:c{i}");
                let manager = format!("m{:02}", i % MANAGERS);
                state
                    .claim(&Claim {
                        contact: &contact,
                        workload: Workload::Lead,
                        manager: &manager,
                        capacity: u32::MAX,
                        stride: 1,
                        hold: Duration::from_secs(60),
                        now,
                    })
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// `redis-benchmark` running one claim per request with the same script.
fn ceiling(state: &RedisState, prefix: &str, n: usize) -> f64 {
    let sha = state.claim_script_sha();
    let probe = Claim {
        contact: "ceil:c__rand_int__",
        workload: Workload::Lead,
        manager: "m07",
        capacity: u32::MAX,
        stride: 1,
        hold: Duration::from_secs(60),
        now: 1_800_000_000_000,
    };
    let (keys, args) = state.claim_invocation(&probe);
    let out = std::process::Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", "6379", "-q"])
        .args([
            "-n",
            &n.to_string(),
            "-c",
            &IN_FLIGHT.to_string(),
            "-r",
            "100000000",
        ])
        .arg("EVALSHA")
        .arg(&sha)
        .arg(keys.len().to_string())
        .args(&keys)
        .args(&args)
        .output()
        .expect("redis-benchmark (Debian package redis-tools) must be installed");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .zip(text.split_whitespace().skip(1))
        .find(|(_, unit)| *unit == "requests")
        .and_then(|(v, _)| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("cannot read redis-benchmark output for prefix {prefix}: {text}"))
}

#[tokio::main]
async fn main() {
    let n_decisions = env_usize("ROUTING_BENCH_DECISIONS", 5_000_000);
    let n_claims = env_usize("ROUTING_BENCH_CLAIMS", 200_000);

    let d = decisions(n_decisions);
    println!(
        "in-memory decisions: {d:.0}/s on one core ({n_decisions} decisions, {MANAGERS} managers)"
    );

    let url =
        std::env::var("SWITCHBOARD_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("sbbench:{}:", uuid::Uuid::new_v4().simple());
    let state = Arc::new(RedisState::connect(&url, &prefix).await.unwrap());
    // Load the script and warm the connection.
    claims(Arc::clone(&state), 1_000).await;
    let ours = claims(Arc::clone(&state), n_claims).await;
    println!(
        "redis claims through RedisState: {ours:.0}/s ({n_claims} claims, {IN_FLIGHT} in flight)"
    );
    let ceil = ceiling(&state, &prefix, n_claims);
    println!("redis-benchmark EVALSHA of the same script: {ceil:.0}/s ({IN_FLIGHT} connections)");

    // Leave nothing behind in the shared Redis.
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    for chunk in keys.chunks(1000) {
        let _: () = redis::cmd("DEL")
            .arg(chunk)
            .query_async(&mut conn)
            .await
            .unwrap_or(());
    }
    println!(
        "BENCH routing_decisions_per_s={d:.0} redis_claims_per_s={ours:.0} redis_ceiling_per_s={ceil:.0}"
    );
}
