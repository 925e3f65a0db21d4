//! Feed throughput, measured beside its peer in the same run.
//!
//! 1. Embedded: interactions published to the SQLite log by many concurrent
//!    producers (as HTTP handlers do), each acknowledged only once committed
//!    with `synchronous = full`.
//! 2. Kafka path: a running relay (idempotent producer, `acks=all`) shipping
//!    a backlog of events committed to the outbox to a Tansu broker, timed
//!    until Kafka has acknowledged every one — the rate at which the outbox
//!    drains. Also printed (not in the BENCH line): producers publishing
//!    while the relay ships, end to end, on the same two cores as the broker.
//! 3. Raw rdkafka: the same events, keys and durability settings produced
//!    straight to the same broker by a warmed-up producer, timed until every
//!    delivery is acknowledged.
//!
//! Rounds alternate raw and ours; the best round of each is reported.
//! Sizes: `FEED_BENCH_EMBEDDED` (default 200000), `FEED_BENCH_KAFKA`
//! (default 100000), `FEED_BENCH_ROUNDS` (default 3).
//! Run: `cargo bench -p switchboard-tests --bench feed` (needs Tansu; see README).

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use switchboard_config::{FeedBackend, FeedConfig};
use switchboard_kafka::{Relay, RelayOptions};
use switchboard_storage::{FeedLog, LogConsumer, LogOptions, Topic};
use switchboard_tests::env_usize;
use switchboard_tests::{Broker, BrokerStorage, sample_lead};
use tokio_util::sync::CancellationToken;

const PRODUCERS: usize = 256;

/// Publishes `n` events from `PRODUCERS` concurrent tasks; returns when all
/// are committed.
async fn publish_all(log: &FeedLog, n: usize) {
    let mut tasks = Vec::with_capacity(PRODUCERS);
    for p in 0..PRODUCERS {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = p;
            while i < n {
                log.publish(&sample_lead(i)).await.unwrap();
                i += PRODUCERS;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

async fn embedded(n: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let log = FeedLog::open(&dir.path().join("feed.sqlite"), LogOptions::default()).unwrap();
    let started = Instant::now();
    publish_all(&log, n).await;
    n as f64 / started.elapsed().as_secs_f64()
}

fn feed_config(broker: &Broker, namespace: &str) -> FeedConfig {
    let mut feed = FeedConfig {
        backend: FeedBackend::Kafka,
        namespace: namespace.into(),
        ..FeedConfig::default()
    };
    feed.kafka.brokers = vec![broker.address()];
    feed
}

async fn shipped_through(watcher: &LogConsumer) -> i64 {
    let committed = watcher.committed().await.unwrap();
    committed.iter().map(|(_, next)| *next).max().unwrap_or(0)
}

/// The Kafka path through the outbox with a running, connected relay.
/// `Backlog`: `n` events are committed to the outbox at once and the time to
/// ship all of them is measured (the drain rate, as after an outage).
/// `Live`: `n` events are published by the producers while the relay ships,
/// and publishing plus shipping is measured.
#[derive(Clone, Copy, PartialEq)]
enum Load {
    Backlog,
    Live,
}

async fn through_outbox(broker: &Broker, n: usize, name: &str, load: Load) -> f64 {
    let feed = feed_config(broker, &format!("bench-{name}"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("feed.sqlite");
    let log = FeedLog::open(&path, LogOptions::default()).unwrap();
    let watcher =
        LogConsumer::open(&path, "kafka-relay", &Topic::ALL, LogOptions::default()).unwrap();
    let stop = CancellationToken::new();
    let relay =
        tokio::spawn(Relay::new(log.clone(), feed, RelayOptions::default()).run(stop.clone()));
    // Warm up: the relay has created its topics and its producer has its id.
    log.publish(&sample_lead(usize::MAX / 2)).await.unwrap();
    while shipped_through(&watcher).await <= log.last_offset() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let started = match load {
        Load::Backlog => {
            let records = (0..n)
                .map(|i| switchboard_storage::NewRecord::interaction(&sample_lead(i)).unwrap())
                .collect();
            log.append_batch(records).await.unwrap();
            Instant::now()
        }
        Load::Live => {
            let started = Instant::now();
            publish_all(&log, n).await;
            started
        }
    };
    let last = log.last_offset();
    while shipped_through(&watcher).await <= last {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    stop.cancel();
    relay.await.unwrap().unwrap();
    rate
}

async fn raw(broker: &Broker, n: usize, round: usize) -> f64 {
    let feed = feed_config(broker, &format!("bench-raw-{round}"));
    switchboard_kafka::ensure_topics(&feed).await.unwrap();
    let topic = feed.qualified("interactions");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.address())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "30000")
        .create()
        .unwrap();
    // Warm up: the producer has its id and its connections.
    producer
        .send(
            FutureRecord::to(&topic).key("warm-up").payload("{}"),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    // The same bytes the outbox holds, serialised beforehand as the outbox's
    // were when they were published.
    let records: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| {
            let ev = sample_lead(i);
            (ev.contact.key.clone(), serde_json::to_vec(&ev).unwrap())
        })
        .collect();
    let started = Instant::now();
    let mut in_flight: VecDeque<DeliveryFuture> = VecDeque::new();
    for (key, value) in &records {
        loop {
            match producer.send_result(FutureRecord::to(&topic).key(key).payload(value)) {
                Ok(f) => {
                    in_flight.push_back(f);
                    break;
                }
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    _,
                )) => {
                    in_flight.pop_front().unwrap().await.unwrap().unwrap();
                }
                Err((e, _)) => panic!("raw produce failed: {e}"),
            }
        }
    }
    for f in in_flight {
        f.await.unwrap().unwrap();
    }
    n as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let n_embedded = env_usize("FEED_BENCH_EMBEDDED", 200_000);
    let n_kafka = env_usize("FEED_BENCH_KAFKA", 100_000);
    let rounds = env_usize("FEED_BENCH_ROUNDS", 3).max(1);

    let mut best_embedded: f64 = 0.0;
    for round in 0..rounds {
        let r = embedded(n_embedded).await;
        println!(
            "round {round}: embedded {r:.0} events/s ({n_embedded} events, {PRODUCERS} producers)"
        );
        best_embedded = best_embedded.max(r);
    }

    let broker = Broker::start(BrokerStorage::Memory).await.unwrap();
    // Warm the broker and the client library up.
    raw(&broker, 5_000.min(n_kafka), 99).await;
    let (mut best_raw, mut best_ours, mut best_e2e): (f64, f64, f64) = (0.0, 0.0, 0.0);
    for round in 0..rounds {
        let r = raw(&broker, n_kafka, round).await;
        println!("round {round}: raw rdkafka {r:.0} events/s ({n_kafka} events)");
        best_raw = best_raw.max(r);
        let o = through_outbox(&broker, n_kafka, &format!("drain-{round}"), Load::Backlog).await;
        println!("round {round}: outbox drained to kafka {o:.0} events/s ({n_kafka} events)");
        best_ours = best_ours.max(o);
        let e = through_outbox(&broker, n_kafka, &format!("e2e-{round}"), Load::Live).await;
        println!("round {round}: publish + ship at once {e:.0} events/s ({n_kafka} events)");
        best_e2e = best_e2e.max(e);
    }
    println!(
        "end to end (publish and ship at once, sharing the cores with the broker): {:.0} events/s, {:.2} of raw",
        best_e2e,
        best_e2e / best_raw
    );
    println!(
        "BENCH feed_embedded_per_s={:.0} feed_kafka_per_s={:.0} rdkafka_raw_per_s={:.0} kafka_ratio={:.2}",
        best_embedded,
        best_ours,
        best_raw,
        best_ours / best_raw
    );
}
