//! The Kafka feed backend.
//!
//! Producers never write to Kafka directly: they append to the embedded log
//! (the outbox) and [`Relay`] ships it to `<namespace>.<topic>`, advancing
//! the outbox's committed offset only after Kafka acknowledged (`acks=all`,
//! idempotent producer). A broker outage therefore delays events and loses
//! none. [`KafkaSource`] is the consumer side: a consumer-group member whose
//! offsets are committed by the application after its effect is durable.

mod client;
pub mod metrics;
mod relay;
mod source;

pub use client::{KafkaError, check_config, ensure_topics};
pub use relay::{Relay, RelayOptions};
pub use source::KafkaSource;
