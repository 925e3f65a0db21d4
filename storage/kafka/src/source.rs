//! A Kafka consumer-group member as a [`FeedSource`].

use std::collections::HashMap;
use std::time::Duration;

use futures::FutureExt;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use switchboard_config::FeedConfig;
use switchboard_storage::{FeedError, FeedSource, Record, Topic};

use crate::client::{KafkaError, base_config, kafka_topic};
use crate::metrics;

/// Reads `<namespace>.<topic>` as consumer group `<namespace>.<group>`.
/// Offsets are committed only by [`FeedSource::commit`], never automatically.
pub struct KafkaSource {
    consumer: StreamConsumer,
    /// Kafka topic name → local topic name.
    local: HashMap<String, &'static str>,
    /// Local topic name → Kafka topic name.
    remote: HashMap<&'static str, String>,
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource")
            .field("topics", &self.remote)
            .finish_non_exhaustive()
    }
}

impl KafkaSource {
    /// Joins the group; topics are expected to exist (see
    /// [`crate::ensure_topics`]), and are picked up once created if not.
    pub fn new(feed: &FeedConfig, group: &str, topics: &[Topic]) -> Result<Self, KafkaError> {
        let mut c = base_config(feed);
        c.set("group.id", feed.qualified(group))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("topic.metadata.refresh.interval.ms", "2000");
        let consumer: StreamConsumer = c.create().map_err(KafkaError::Config)?;
        let remote: HashMap<&'static str, String> = topics
            .iter()
            .map(|t| (t.as_str(), kafka_topic(feed, *t)))
            .collect();
        let names: Vec<&str> = remote.values().map(String::as_str).collect();
        consumer
            .subscribe(&names)
            .map_err(|source| KafkaError::Broker {
                op: "subscribe",
                source,
            })?;
        let local = remote.iter().map(|(l, r)| (r.clone(), *l)).collect();
        Ok(Self {
            consumer,
            local,
            remote,
        })
    }

    fn record(&self, m: &rdkafka::message::BorrowedMessage<'_>) -> Option<Record> {
        let topic = self.local.get(m.topic())?;
        Some(Record {
            topic: (*topic).to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            key: m
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default(),
            value: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        })
    }
}

fn broker(op: &'static str) -> impl FnOnce(rdkafka::error::KafkaError) -> FeedError {
    move |source| KafkaError::Broker { op, source }.into()
}

impl FeedSource for KafkaSource {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>, FeedError> {
        let mut out = Vec::new();
        let first = match tokio::time::timeout(wait, self.consumer.recv()).await {
            Err(_) => return Ok(out),
            Ok(result) => result.map_err(broker("consume"))?,
        };
        out.extend(self.record(&first));
        drop(first);
        while out.len() < max {
            match self.consumer.recv().now_or_never() {
                Some(Ok(m)) => out.extend(self.record(&m)),
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "kafka consumer error after a batch");
                    break;
                }
                None => break,
            }
        }
        metrics::CONSUMED.inc_by(out.len() as u64);
        Ok(out)
    }

    async fn commit(&mut self, records: &[Record]) -> Result<(), FeedError> {
        let mut next: HashMap<(&str, i32), i64> = HashMap::new();
        for r in records {
            let e = next.entry((r.topic.as_str(), r.partition)).or_insert(0);
            *e = (*e).max(r.offset + 1);
        }
        if next.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in next {
            let Some(name) = self.remote.get(topic) else {
                continue;
            };
            tpl.add_partition_offset(name, partition, Offset::Offset(offset))
                .map_err(broker("commit"))?;
        }
        self.consumer
            .commit(&tpl, CommitMode::Async)
            .map_err(broker("commit"))
    }
}
