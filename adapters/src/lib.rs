//! Channel adapters: everything that turns a non-voice channel into
//! [`switchboard_storage::Interaction`]s and carries out the CRM's
//! [`switchboard_storage::Command`]s on it. Adapters know nothing of SIP and
//! never talk to the CRM except through the feed.
//!
//! Every channel implements [`Adapter`]: it receives until the context's
//! shutdown token fires, and executes the commands addressed to its lines.
//! Today: the site widget's lead form, email (IMAP, POP3, SMTP), and the
//! messengers and lead services of [`messengers`], whose webhooks wait in
//! the [`inbox`] until they become interactions.

pub mod blobs;
pub mod contact;
pub mod email;
pub mod inbox;
pub mod messengers;
pub mod metrics;
pub mod widget;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use switchboard_storage::{Command, FeedLog, Interaction};
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
    /// Where webhook deliveries (and polled updates) wait to be processed,
    /// and which commands were carried out.
    pub inbox: inbox::Inbox,
}

impl AdapterContext {
    /// A context for tests: a fresh token and health board.
    ///
    /// # Panics
    /// When the inbox cannot be created in `data_dir`.
    #[allow(clippy::expect_used)]
    pub fn for_test(feed: FeedLog, data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        Self {
            shutdown: CancellationToken::new(),
            feed,
            inbox: inbox::Inbox::open(&data_dir.join("inbox.sqlite")).expect("test inbox"),
            data_dir,
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

/// Opens an adapter's own SQLite file in WAL mode with `synchronous =
/// NORMAL` (a power cut may lose the last commits, never consistency: each
/// caller says why that loses nothing) and creates its `schema`.
pub(crate) fn open_local_db(
    path: &std::path::Path,
    schema: &str,
) -> rusqlite::Result<rusqlite::Connection> {
    let db = rusqlite::Connection::open(path)?;
    db.pragma_update(None, "journal_mode", "WAL")?;
    db.pragma_update(None, "synchronous", "NORMAL")?;
    db.busy_timeout(std::time::Duration::from_secs(5))?;
    db.execute_batch(schema)?;
    Ok(db)
}

/// Backoff before retry `attempt` (0-based) after a failure: 1 s doubling
/// to 60 s. Adapters reconnect and the gateway retries commands with it.
pub fn backoff(attempt: u32) -> std::time::Duration {
    std::time::Duration::from_secs(1u64 << attempt.min(6)).min(std::time::Duration::from_secs(60))
}

/// Consecutive failures of one piece of work, and how long to wait before
/// trying it again ([`backoff`]).
#[derive(Debug, Default)]
pub struct Retries(u32);

impl Retries {
    /// Counts a failure; the wait before the next try.
    pub fn next_wait(&mut self) -> std::time::Duration {
        let wait = backoff(self.0);
        self.0 = self.0.saturating_add(1);
        wait
    }

    /// The work succeeded: the next failure waits the shortest time again.
    pub fn reset(&mut self) {
        self.0 = 0;
    }
}

/// Sleeps for `wait` unless `shutdown` fires first; `true` when it did.
pub async fn sleep_or_shutdown(shutdown: &CancellationToken, wait: std::time::Duration) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => true,
        () = tokio::time::sleep(wait) => false,
    }
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

    /// The webhooks this adapter answers: `(name, line)`, the delivery to
    /// `/v1/hooks/<name>` being stored for `line` (`telegram:<name>`).
    fn hooks(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Checks one delivery to `/v1/hooks/<name>` (signature or secret,
    /// shape, the service's delivery id) and says what to store and what
    /// to answer. It runs on the request path, so it does no I/O.
    fn accept(&self, name: &str, req: &HookRequest<'_>) -> Result<Accepted, HookError> {
        let _ = (name, req);
        Err(HookError::NotFound)
    }

    /// Turns one stored delivery into interactions (downloading what it
    /// refers to). `Ok(vec![])`: nothing a customer did (a status event).
    fn process<'a>(
        &'a self,
        delivery: &'a inbox::Delivery,
        ctx: &'a AdapterContext,
    ) -> BoxFuture<'a, Result<Vec<Interaction>, CommandError>> {
        let _ = (delivery, ctx);
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// One webhook delivery as the gateway received it.
#[derive(Debug, Clone, Copy)]
pub struct HookRequest<'a> {
    pub headers: &'a http::HeaderMap,
    /// The secret path segment of `/v1/hooks/<line>/<token>`, if any.
    pub token: Option<&'a str>,
    pub body: &'a [u8],
}

impl HookRequest<'_> {
    /// A header's value as text (`None` when absent or not ASCII).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// What to do with a verified delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// Store the body under this delivery id (the service's own); `None`:
    /// nothing to keep (a handshake, a status ping).
    pub store: Option<String>,
    /// What the service expects to hear back.
    pub reply: HookReply,
}

/// The answer to a webhook delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookReply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl HookReply {
    /// 200 with a plain-text body (VK wants `ok`).
    pub fn text(body: impl Into<String>) -> Self {
        Self {
            status: 200,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }

    /// 200 with a JSON body.
    pub fn json(body: &serde_json::Value) -> Self {
        Self {
            status: 200,
            content_type: "application/json",
            body: body.to_string(),
        }
    }
}

/// Why a delivery was refused; the gateway answers and stores nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HookError {
    /// No line of that name takes webhooks (404).
    #[error("no webhook line of this name")]
    NotFound,
    /// The signature or secret is missing or wrong (403).
    #[error("not signed by the service: {0}")]
    Forbidden(&'static str),
    /// The body is not what the service sends (400).
    #[error("malformed delivery: {0}")]
    Malformed(String),
}

/// Compares secrets in time that does not depend on where they differ.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A UUIDv7 that is the same every time for the same `seed`: an event
/// re-published after a crash or a redelivery has the id consumers already
/// absorbed. `at` gives the timestamp part (none: the epoch).
pub fn stable_id(seed: &str, at: Option<time::OffsetDateTime>) -> uuid::Uuid {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(seed.as_bytes());
    let millis = at.map_or(0, |t| (t.unix_timestamp_nanos() / 1_000_000).max(0) as u64);
    let mut random = [0u8; 10];
    random.copy_from_slice(&digest[..10]);
    uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid()
}
