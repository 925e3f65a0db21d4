//! The outbox relay against a real broker: it advances only after Kafka
//! acknowledged, and what failed is sent again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use switchboard_config::{FeedBackend, FeedConfig};
use switchboard_kafka::{Relay, RelayOptions};
use switchboard_storage::{FeedLog, Interaction, LogConsumer, LogOptions, Topic};
use switchboard_tests::{Broker, BrokerStorage, sample_lead};
use tokio_util::sync::CancellationToken;

async fn shipped_through(path: &std::path::Path) -> i64 {
    let c = LogConsumer::open(path, "kafka-relay", &Topic::ALL, LogOptions::default()).unwrap();
    c.committed()
        .await
        .unwrap()
        .iter()
        .map(|(_, n)| *n)
        .max()
        .unwrap_or(0)
}

#[tokio::test]
async fn deliveries_that_time_out_during_an_outage_are_sent_again() {
    let mut broker = Broker::start(BrokerStorage::Durable).await.unwrap();
    let mut feed = FeedConfig {
        backend: FeedBackend::Kafka,
        namespace: format!("relay{}", uuid::Uuid::new_v4().simple()),
        ..FeedConfig::default()
    };
    feed.kafka.brokers = vec![broker.address()];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("feed.sqlite");
    let log = FeedLog::open(&path, LogOptions::default()).unwrap();
    let options = RelayOptions {
        delivery_timeout: Duration::from_secs(2),
        prune_every: Duration::from_millis(200),
        ..RelayOptions::default()
    };
    let stop = CancellationToken::new();
    let relay = tokio::spawn(Relay::new(log.clone(), feed.clone(), options).run(stop.clone()));

    let mut ids = HashSet::new();
    let first: Vec<Interaction> = (0..100).map(sample_lead).collect();
    for ev in &first {
        log.publish(ev).await.unwrap();
        ids.insert(ev.id.to_string());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while shipped_through(&path).await <= log.last_offset() {
        assert!(
            Instant::now() < deadline,
            "relay did not ship while the broker was up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    broker.stop().await.unwrap();
    let second: Vec<Interaction> = (100..200).map(sample_lead).collect();
    for ev in &second {
        log.publish(ev).await.unwrap();
        ids.insert(ev.id.to_string());
    }
    // Wait until deliveries have timed out and the relay has gone back to
    // resend them (librdkafka reports timeouts on its own schedule).
    let deadline = Instant::now() + Duration::from_secs(30);
    while switchboard_kafka::metrics::DELIVERY_ERRORS.get() == 0 {
        assert!(
            Instant::now() < deadline,
            "no delivery failed while the broker was down; the test did not exercise the resend"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let during = shipped_through(&path).await;
    assert!(
        during <= log.last_offset(),
        "relay advanced past records Kafka never acknowledged"
    );
    broker.restart().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while shipped_through(&path).await <= log.last_offset() {
        assert!(
            Instant::now() < deadline,
            "relay did not resend after the outage"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    relay.await.unwrap().unwrap();

    // Everything is in Kafka (maybe more than once: consumers dedupe).
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.address())
        .set("group.id", format!("{}-check", feed.namespace))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer
        .subscribe(&[&feed.qualified("interactions")])
        .unwrap();
    let mut seen = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < ids.len() && Instant::now() < deadline {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await {
            let ev: Interaction = serde_json::from_slice(m.payload().unwrap()).unwrap();
            assert_eq!(
                m.key().unwrap(),
                ev.contact.key.as_bytes(),
                "record keyed by contact"
            );
            seen.insert(ev.id.to_string());
        }
    }
    assert_eq!(seen, ids.iter().cloned().collect::<HashSet<_>>());
}
