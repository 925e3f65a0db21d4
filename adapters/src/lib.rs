//! Channel adapters: everything that turns a non-voice channel into
//! [`switchboard_storage::Interaction`]s and carries out the CRM's
//! [`switchboard_storage::Command`]s on it. Adapters know nothing of SIP and
//! never talk to the CRM except through the feed.
//!
//! Every channel implements [`Adapter`]: it receives until the context's
//! shutdown token fires, and executes the commands addressed to its lines.
//! Today: the site widget's lead form and email (IMAP, POP3, SMTP).

pub mod contact;
pub mod email;
pub mod metrics;
pub mod widget;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use switchboard_storage::{Command, FeedLog};
use tokio_util::sync::CancellationToken;

/// What the gateway gives every adapter.
#[derive(Debug, Clone)]
pub struct AdapterContext {
    /// Fires when the gateway stops; `run` returns soon after.
    pub shutdown: CancellationToken,
    /// Where interactions go (the local log, the outbox on Kafka).
    pub feed: FeedLog,
    /// The node's data directory (attachments, adapter state).
    pub data_dir: PathBuf,
    /// Per-line health, shown by the gateway's `/readyz`.
    pub health: Health,
}

impl AdapterContext {
    /// A context for tests: a fresh token and health board.
    pub fn for_test(feed: FeedLog, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            shutdown: CancellationToken::new(),
            feed,
            data_dir: data_dir.into(),
            health: Health::default(),
        }
    }
}

/// Each line's state: `Ok`, or why it is not working.
#[derive(Debug, Clone, Default)]
pub struct Health {
    lines: Arc<Mutex<BTreeMap<String, Result<(), String>>>>,
}

impl Health {
    pub fn set(&self, line: &str, state: Result<(), String>) {
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        lines.insert(line.to_owned(), state);
    }

    pub fn snapshot(&self) -> BTreeMap<String, Result<(), String>> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Why a command was not carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The far side or our storage failed; the same command may work later.
    #[error("failed, will retry: {0}")]
    Retry(String),
    /// The command cannot be carried out as given (no such line, no
    /// address, refused permanently); retrying changes nothing.
    #[error("rejected: {0}")]
    Rejected(String),
}

/// Backoff before retry `attempt` (0-based) after a failure: 1 s doubling
/// to 60 s. Adapters reconnect and the gateway retries commands with it.
pub fn backoff(attempt: u32) -> std::time::Duration {
    std::time::Duration::from_secs(1u64 << attempt.min(6)).min(std::time::Duration::from_secs(60))
}

/// One kind of channel.
pub trait Adapter: Send + Sync + std::fmt::Debug + 'static {
    /// The command targets this adapter executes, e.g. `email:sales`.
    fn lines(&self) -> Vec<String>;

    /// Receives from the channel until `ctx.shutdown` fires.
    fn run(&self, ctx: AdapterContext) -> BoxFuture<'static, ()>;

    /// Carries out one command addressed to one of [`Adapter::lines`];
    /// the outcome goes to the feed as an interaction.
    fn execute<'a>(
        &'a self,
        cmd: &'a Command,
        ctx: &'a AdapterContext,
    ) -> BoxFuture<'a, Result<(), CommandError>>;
}
