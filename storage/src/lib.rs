//! Switchboard's storage layer: the feed.
//!
//! Every interaction with a customer becomes one [`Interaction`] envelope
//! appended to the feed; the CRM acts through [`Command`] envelopes. The
//! embedded backend is an append-only SQLite log ([`FeedLog`]) with topics,
//! keys, offsets and named consumer groups ([`LogConsumer`]). When the feed
//! is Kafka (crate `switchboard-kafka`), the same log is the producers'
//! outbox. Consumers read through [`FeedSource`], whichever backend it is.
//!
//! It also holds the routing state behind [`state::RoutingState`]
//! (presence, assignments, owners), in memory here and in Redis in crate
//! `switchboard-redis`.

pub mod envelope;
mod error;
mod log;
pub mod metrics;
mod source;
pub mod state;

pub use envelope::{
    Campaign, Channel, Command, CommandKind, Contact, ContactKey, Interaction, Kind, OwnerChange,
    Topic,
};
pub use error::FeedError;
pub use log::{Appending, FeedLog, LogConsumer, LogOptions, NewRecord};
pub use source::{FeedSource, Record};

/// The JSON Schema of the [`Interaction`] envelope, version 1.
pub const INTERACTION_SCHEMA_V1: &str = include_str!("../schema/interaction.v1.json");
/// The JSON Schema of the [`Command`] envelope, version 1.
pub const COMMAND_SCHEMA_V1: &str = include_str!("../schema/command.v1.json");
/// The JSON Schema of the [`OwnerChange`] record, version 1.
pub const OWNER_SCHEMA_V1: &str = include_str!("../schema/owner.v1.json");
