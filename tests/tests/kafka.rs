//! The distributed setup: the feed on a Kafka-protocol broker (Tansu) and
//! the CRM on PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use switchboard_crm::testing::TestDatabase;
use switchboard_storage::{FeedLog, LogConsumer, LogOptions, Topic};
use switchboard_tests::{Broker, BrokerStorage, Launch, lead_form};

fn on_kafka(launch: Launch, broker: &Broker, db: &TestDatabase) -> Launch {
    launch
        .env("SWITCHBOARD_FEED__BACKEND", "kafka")
        .env("SWITCHBOARD_FEED__KAFKA__BROKERS", broker.address())
        .env(
            "SWITCHBOARD_FEED__NAMESPACE",
            format!("t{}", uuid::Uuid::new_v4().simple()),
        )
        .env("SWITCHBOARD_CRM__DATABASE_URL", &db.url)
}

#[tokio::test]
async fn a_lead_reaches_the_timeline_through_kafka_and_postgres_and_survives_a_restart() {
    let broker = Broker::start(BrokerStorage::Durable).await.unwrap();
    let db = TestDatabase::create().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let launch = on_kafka(Launch::new(dir.path()), &broker, &db);
    let sb = launch.clone().start().await.unwrap();
    let (status, body) = sb.post_lead(&lead_form(42)).await.unwrap();
    assert_eq!(status, 202, "{body}");
    let (key, id) = (
        body["contact_key"].as_str().unwrap().to_owned(),
        body["id"].as_str().unwrap().to_owned(),
    );
    sb.wait_for_timeline(&key, &id, Duration::from_secs(2))
        .await
        .unwrap();
    assert!(
        sb.terminate(Duration::from_secs(20))
            .await
            .unwrap()
            .success()
    );

    let again = launch.start().await.unwrap();
    let timeline = again
        .wait_for_timeline(&key, &id, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(timeline["items"].as_array().unwrap().len(), 1);
    again.terminate(Duration::from_secs(20)).await.unwrap();
    db.drop_now().await.unwrap();
}

/// Leads keep coming while the broker is killed and restarted; every
/// accepted lead reaches the CRM, and exactly once.
#[tokio::test]
async fn a_broker_outage_delays_events_and_loses_or_duplicates_none() {
    let mut broker = Broker::start(BrokerStorage::Durable).await.unwrap();
    let db = TestDatabase::create().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sb = on_kafka(Launch::new(dir.path()), &broker, &db)
        .start()
        .await
        .unwrap();

    let mut accepted = Vec::new();
    let started = Instant::now();
    let mut n = 0u32;
    let mut broker_down = false;
    let mut broker_back = false;
    // ~12 s of leads at ~50/s; the broker dies at 3 s and returns at 7 s.
    while started.elapsed() < Duration::from_secs(12) {
        let (status, body) = sb.post_lead(&lead_form(n)).await.unwrap();
        assert_eq!(status, 202, "lead {n} refused: {body}");
        accepted.push(body["id"].as_str().unwrap().to_owned());
        n += 1;
        if !broker_down && started.elapsed() > Duration::from_secs(3) {
            broker.stop().await.unwrap();
            broker_down = true;
        }
        if broker_down && !broker_back && started.elapsed() > Duration::from_secs(7) {
            broker.restart().await.unwrap();
            broker_back = true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(broker_down && broker_back);

    let deadline = Instant::now() + Duration::from_secs(90);
    let mut ids = sb.all_interaction_ids().await.unwrap();
    while ids.len() < accepted.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        ids = sb.all_interaction_ids().await.unwrap();
    }
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(
        unique.len(),
        ids.len(),
        "the CRM holds an interaction twice"
    );
    let want: HashSet<&String> = accepted.iter().collect();
    let missing: Vec<_> = want.difference(&unique).collect();
    assert!(
        missing.is_empty(),
        "{} of {} accepted leads never reached the CRM",
        missing.len(),
        accepted.len()
    );
    assert_eq!(ids.len(), accepted.len());
    sb.terminate(Duration::from_secs(20)).await.unwrap();
    db.drop_now().await.unwrap();
}

/// SIGTERM ships what is in the outbox before exiting.
#[tokio::test]
async fn sigterm_flushes_the_outbox_to_kafka() {
    let broker = Broker::start(BrokerStorage::Durable).await.unwrap();
    let db = TestDatabase::create().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sb = on_kafka(Launch::new(dir.path()).command("gateway"), &broker, &db)
        .start()
        .await
        .unwrap();
    let forms: Vec<_> = (0..200).map(lead_form).collect();
    let posts = forms.iter().map(|f| sb.post_lead(f));
    for (n, t) in futures::future::join_all(posts)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(t.unwrap().0, 202, "lead {n}");
    }
    let status = sb.terminate(Duration::from_secs(20)).await.unwrap();
    assert!(status.success(), "{status}");

    let path = dir.path().join("feed.sqlite");
    let last = FeedLog::open(&path, LogOptions::default())
        .unwrap()
        .last_offset();
    let relay =
        LogConsumer::open(&path, "kafka-relay", &Topic::ALL, LogOptions::default()).unwrap();
    let shipped = relay.committed().await.unwrap();
    let next = shipped.iter().map(|(_, n)| *n).max().unwrap_or(0);
    assert!(
        next > last,
        "outbox not flushed: relay at {next}, last appended {last}"
    );
    db.drop_now().await.unwrap();
}
