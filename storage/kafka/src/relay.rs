//! The outbox relay: embedded log → Kafka.
//!
//! Reads the log as consumer group `kafka-relay`, keeps up to `window`
//! records in flight to an idempotent `acks=all` producer, and commits the
//! group's offset up to the last record Kafka acknowledged with every record
//! before it acknowledged too. Any failed delivery rewinds to that offset and
//! resends: duplicates are possible (consumers dedupe by envelope id), loss
//! is not. Shipped records are pruned from the outbox.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use futures::FutureExt;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use switchboard_config::FeedConfig;
use switchboard_storage::{FeedError, FeedLog, FeedSource, LogConsumer, Record, Topic};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::{KafkaError, MAX_MESSAGE_BYTES, base_config, ensure_topics, kafka_topic};
use crate::metrics;

/// Tuning of the relay; the defaults suit one gateway node.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// Consumer group on the embedded log.
    pub group: String,
    /// Most records sent and not yet acknowledged.
    pub window: usize,
    /// Most records read from the outbox at once.
    pub batch: usize,
    /// How often acknowledged progress is committed to the outbox.
    pub commit_every: Duration,
    /// How often shipped records are deleted from the outbox.
    pub prune_every: Duration,
    /// Delivery timeout per record; a record not acknowledged in time is resent.
    pub delivery_timeout: Duration,
    /// Other consumer groups of the outbox (the gateway's routing); shipped
    /// records are kept until they have taken them too.
    pub retain_for: Vec<String>,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            group: "kafka-relay".into(),
            window: 50_000,
            batch: 2_000,
            commit_every: Duration::from_millis(100),
            prune_every: Duration::from_secs(10),
            delivery_timeout: Duration::from_secs(30),
            retain_for: Vec::new(),
        }
    }
}

/// Ships the outbox to Kafka until shut down; see the module docs.
#[derive(Debug)]
pub struct Relay {
    log: FeedLog,
    feed: FeedConfig,
    options: RelayOptions,
}

/// Why one connected stretch of pumping ended.
enum Stop {
    /// Shutdown was requested and everything in the outbox was acknowledged.
    Drained,
    /// A delivery failed; resend from the last commit.
    Delivery(rdkafka::error::KafkaError),
}

impl Relay {
    pub fn new(log: FeedLog, feed: FeedConfig, options: RelayOptions) -> Self {
        Self { log, feed, options }
    }

    fn producer(&self) -> Result<FutureProducer, KafkaError> {
        let mut c = base_config(&self.feed);
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "message.timeout.ms",
                self.options.delivery_timeout.as_millis().to_string(),
            )
            .set("message.max.bytes", MAX_MESSAGE_BYTES.to_string());
        c.create().map_err(KafkaError::Config)
    }

    /// Runs until `shutdown` is cancelled and the outbox is drained. Bound it
    /// with the shutdown grace period: what is not shipped by then stays in
    /// the outbox and goes out at the next start.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), FeedError> {
        let mut consumer = self.log.consumer(&self.options.group, &Topic::ALL)?;
        let topics: HashMap<&'static str, String> = Topic::ALL
            .iter()
            .map(|t| (t.as_str(), kafka_topic(&self.feed, *t)))
            .collect();
        let mut backoff = Duration::from_millis(200);
        loop {
            let ready =
                tokio::time::timeout(Duration::from_secs(15), ensure_topics(&self.feed)).await;
            match ready {
                Ok(Ok(())) => {}
                Ok(Err(e)) if !e.is_retryable() => return Err(e.into()),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "kafka not ready; events wait in the outbox");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
                Err(_) => {
                    tracing::warn!(retry_in = ?backoff, "kafka did not answer; events wait in the outbox");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            }
            let producer = self.producer()?;
            tracing::info!(brokers = %self.feed.kafka.brokers.join(","), "relay shipping the outbox to kafka");
            match self
                .pump(&mut consumer, &producer, &topics, &shutdown)
                .await?
            {
                Stop::Drained => {
                    tracing::info!("outbox drained to kafka");
                    return Ok(());
                }
                Stop::Delivery(e) => {
                    metrics::DELIVERY_ERRORS.inc();
                    tracing::warn!(error = %e, retry_in = ?backoff, "kafka delivery failed; resending from the outbox");
                    consumer.rewind().await?;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    /// Reads, sends and settles until drained or a delivery fails. Reads are
    /// never raced against acknowledgements (a read abandoned half-way would
    /// be wasted work): acknowledgements that are already in are settled
    /// first, then the outbox is read while the window has room, and only
    /// when there is nothing to read does the loop wait for one or the other.
    async fn pump(
        &self,
        consumer: &mut LogConsumer,
        producer: &FutureProducer,
        topics: &HashMap<&'static str, String>,
        shutdown: &CancellationToken,
    ) -> Result<Stop, FeedError> {
        let mut in_flight: VecDeque<(Record, DeliveryFuture)> = VecDeque::new();
        let mut progress = Progress::default();
        let poll_wait = Duration::from_millis(100);
        loop {
            // Settle what Kafka has already acknowledged, oldest first.
            while let Some(result) = in_flight.front_mut().and_then(|(_, d)| d.now_or_never()) {
                if let Some((record, _)) = in_flight.pop_front()
                    && let Err(e) = settle(record, result, &mut progress)
                {
                    progress.commit(consumer, &self.log, &self.options).await?;
                    return Ok(Stop::Delivery(e));
                }
            }
            metrics::IN_FLIGHT.set(i64::try_from(in_flight.len()).unwrap_or(i64::MAX));
            if progress.due(&self.options) || (in_flight.is_empty() && progress.has_uncommitted()) {
                progress.commit(consumer, &self.log, &self.options).await?;
            }

            let batch = if in_flight.len() < self.options.window {
                // Wait for new records only when nothing is in flight.
                let wait = if in_flight.is_empty() {
                    poll_wait
                } else {
                    Duration::ZERO
                };
                consumer.poll(self.options.batch, wait).await?
            } else {
                Vec::new()
            };
            if batch.is_empty() {
                if in_flight.is_empty() {
                    if shutdown.is_cancelled() {
                        progress.commit(consumer, &self.log, &self.options).await?;
                        return Ok(Stop::Drained);
                    }
                    continue;
                }
                // The window is full or the outbox is empty: wait for the
                // oldest delivery.
                if let Some((record, delivery)) = in_flight.pop_front()
                    && let Err(e) = settle(record, delivery.await, &mut progress)
                {
                    progress.commit(consumer, &self.log, &self.options).await?;
                    return Ok(Stop::Delivery(e));
                }
                continue;
            }
            for record in batch {
                if let Err(e) = send(producer, topics, record, &mut in_flight, &mut progress).await
                {
                    progress.commit(consumer, &self.log, &self.options).await?;
                    return Ok(Stop::Delivery(e));
                }
            }
        }
    }
}

/// Sends one record, waiting for the oldest delivery when librdkafka's queue
/// is full.
async fn send(
    producer: &FutureProducer,
    topics: &HashMap<&'static str, String>,
    mut record: Record,
    in_flight: &mut VecDeque<(Record, DeliveryFuture)>,
    progress: &mut Progress,
) -> Result<(), rdkafka::error::KafkaError> {
    let Some(topic) = topics.get(record.topic.as_str()) else {
        // The log only holds known topics; an unknown one is skipped loudly.
        tracing::error!(topic = %record.topic, offset = record.offset, "outbox record on an unknown topic");
        return Ok(());
    };
    loop {
        let sent = producer.send_result(
            FutureRecord::to(topic)
                .key(record.key.as_bytes())
                .payload(record.value.as_slice()),
        );
        match sent {
            Ok(delivery) => {
                // librdkafka copied the payload; keep only what commit needs.
                record.value = Vec::new();
                in_flight.push_back((record, delivery));
                return Ok(());
            }
            Err((
                rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                _,
            )) => match in_flight.pop_front() {
                Some((oldest, delivery)) => settle(oldest, delivery.await, progress)?,
                None => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Err((e, _)) => return Err(e),
        }
    }
}

fn settle(
    record: Record,
    outcome: Result<OwnedDeliveryResult, futures::channel::oneshot::Canceled>,
    progress: &mut Progress,
) -> Result<(), rdkafka::error::KafkaError> {
    match outcome {
        Ok(Ok(_)) => {
            metrics::SHIPPED.inc();
            progress.acked(record);
            Ok(())
        }
        Ok(Err((e, _))) => Err(e),
        Err(_) => Err(rdkafka::error::KafkaError::Canceled),
    }
}

/// Acknowledged records not yet committed to the outbox.
#[derive(Default)]
struct Progress {
    /// The last acknowledged record per topic.
    acked: HashMap<String, Record>,
    last_commit: Option<Instant>,
    last_prune: Option<Instant>,
    pruning: Option<tokio::task::JoinHandle<()>>,
    /// Every record at or below this offset is acknowledged and committed.
    committed_through: i64,
}

impl Progress {
    fn acked(&mut self, record: Record) {
        match self.acked.get_mut(&record.topic) {
            Some(last) => *last = record,
            None => {
                self.acked.insert(record.topic.clone(), record);
            }
        }
    }

    fn has_uncommitted(&self) -> bool {
        !self.acked.is_empty()
    }

    fn due(&self, options: &RelayOptions) -> bool {
        self.has_uncommitted()
            && self
                .last_commit
                .is_none_or(|t| t.elapsed() >= options.commit_every)
    }

    async fn commit(
        &mut self,
        consumer: &mut LogConsumer,
        log: &FeedLog,
        options: &RelayOptions,
    ) -> Result<(), FeedError> {
        if self.acked.is_empty() {
            return Ok(());
        }
        let records: Vec<Record> = self.acked.drain().map(|(_, r)| r).collect();
        consumer.commit(&records).await?;
        // Deliveries settle in offset order, so everything up to the highest
        // acknowledged offset is shipped.
        if let Some(max) = records.iter().map(|r| r.offset).max() {
            self.committed_through = self.committed_through.max(max);
        }
        self.last_commit = Some(Instant::now());
        let pruning = self.pruning.as_ref().is_some_and(|p| !p.is_finished());
        if !pruning
            && self
                .last_prune
                .is_none_or(|t| t.elapsed() >= options.prune_every)
        {
            // In the background: deleting is the writer's work, not the relay's.
            self.last_prune = Some(Instant::now());
            let log = log.clone();
            let below = self.committed_through + 1;
            let retain_for = options.retain_for.clone();
            self.pruning = Some(tokio::spawn(async move {
                match log.prune_below(below, &retain_for).await {
                    Ok(pruned) => tracing::debug!(pruned, "pruned shipped records from the outbox"),
                    Err(e) => {
                        tracing::warn!(error = %e, "pruning the outbox failed; retried later")
                    }
                }
            }));
        }
        Ok(())
    }
}
