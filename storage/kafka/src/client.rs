//! Client configuration and topic setup shared by the relay and the source.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use switchboard_config::FeedConfig;
use switchboard_storage::{FeedError, Topic};

/// Largest record the producer sends (the gateway caps bodies at 16 MiB).
pub(crate) const MAX_MESSAGE_BYTES: usize = 20 * 1024 * 1024;

/// A Kafka operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KafkaError {
    /// The client could not be created from the configuration (a bad
    /// `feed.kafka.properties` entry, say). Not retryable.
    #[error("kafka client configuration rejected: {0}")]
    Config(#[source] rdkafka::error::KafkaError),
    /// Talking to the brokers failed; retrying later can succeed.
    #[error("kafka {op} failed: {source}")]
    Broker {
        op: &'static str,
        #[source]
        source: rdkafka::error::KafkaError,
    },
}

impl KafkaError {
    pub(crate) fn is_retryable(&self) -> bool {
        matches!(self, KafkaError::Broker { .. })
    }
}

impl From<KafkaError> for FeedError {
    fn from(e: KafkaError) -> Self {
        FeedError::Backend {
            backend: "kafka",
            retryable: e.is_retryable(),
            source: Box::new(e),
        }
    }
}

/// The properties every client gets: brokers and the operator's extras.
pub(crate) fn base_config(feed: &FeedConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", feed.kafka.brokers.join(","));
    for (k, v) in &feed.kafka.properties {
        c.set(k, v);
    }
    c
}

/// Builds (without connecting) the producer and consumer this configuration
/// asks for, so a bad `feed.kafka.properties` entry is reported at start-up.
pub fn check_config(feed: &FeedConfig) -> Result<(), KafkaError> {
    let _producer: rdkafka::producer::BaseProducer = base_config(feed)
        .set("enable.idempotence", "true")
        .create()
        .map_err(KafkaError::Config)?;
    let _consumer: rdkafka::consumer::BaseConsumer = base_config(feed)
        .set("group.id", feed.qualified(&feed.kafka.crm_group))
        .create()
        .map_err(KafkaError::Config)?;
    Ok(())
}

/// The Kafka topic that holds a local topic.
pub(crate) fn kafka_topic(feed: &FeedConfig, topic: Topic) -> String {
    feed.qualified(topic.as_str())
}

/// Creates the feed's topics when they are missing. The owners topic is
/// compacted: only the latest owner per contact matters.
pub async fn ensure_topics(feed: &FeedConfig) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> =
        base_config(feed).create().map_err(KafkaError::Config)?;
    let names: Vec<String> = Topic::ALL.iter().map(|t| kafka_topic(feed, *t)).collect();
    let topics: Vec<NewTopic<'_>> = Topic::ALL
        .iter()
        .zip(&names)
        .map(|(t, name)| {
            let nt = NewTopic::new(
                name,
                feed.kafka.partitions,
                TopicReplication::Fixed(feed.kafka.replication_factor),
            );
            if *t == Topic::Owners {
                nt.set("cleanup.policy", "compact")
            } else {
                nt
            }
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&topics, &opts)
        .await
        .map_err(|source| KafkaError::Broker {
            op: "create topics",
            source,
        })?;
    for r in results {
        match r {
            Ok(name) => tracing::info!(topic = %name, "created kafka topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(KafkaError::Broker {
                    op: "create topics",
                    source: rdkafka::error::KafkaError::AdminOp(code),
                })
                .inspect_err(|_| tracing::warn!(topic = %name, %code, "cannot create topic"));
            }
        }
    }
    Ok(())
}
