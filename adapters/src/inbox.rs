//! The webhook inbox: every verified delivery from a messenger or a lead
//! service is stored here (`data/inbox.sqlite`) before the service gets its
//! 200, and becomes interactions from here. A service that retries, or
//! sends the same event twice, finds its delivery id already stored: the
//! repeat is acknowledged and ignored. A crash between storing and
//! publishing only delays: pending deliveries are processed after restart,
//! and their interactions carry ids derived from the delivery, so a
//! re-publish is absorbed downstream.
//!
//! One writer thread owns the connection and commits stores in groups (one
//! transaction and one disk sync for everything queued), so a burst of
//! concurrent webhooks costs one sync between them. The inbox also keeps
//! which commands were carried out, so a replayed command is not sent twice.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot, watch};

/// Stores taken into one transaction at most.
const MAX_GROUP: usize = 4096;
/// Requests queued for the writer before callers wait.
const QUEUE: usize = 8192;
/// Processed deliveries are remembered this long (services retry for hours,
/// not weeks).
pub const KEEP_DONE: Duration = Duration::from_secs(7 * 24 * 3600);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS deliveries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    line TEXT NOT NULL,
    delivery TEXT NOT NULL,
    body BLOB NOT NULL,
    received_at INTEGER NOT NULL,
    done_at INTEGER,
    outcome TEXT,
    UNIQUE (line, delivery)
);
CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries (seq) WHERE done_at IS NULL;
CREATE TABLE IF NOT EXISTS commands_done (
    id TEXT PRIMARY KEY,
    done_at INTEGER NOT NULL,
    result TEXT NOT NULL
) WITHOUT ROWID;
";

/// Why the inbox failed; the caller answers 503 and the service retries.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum InboxError {
    #[error("inbox storage failed: {0}")]
    Storage(String),
    #[error("the inbox writer has stopped")]
    Closed,
}

fn storage(e: rusqlite::Error) -> InboxError {
    InboxError::Storage(e.to_string())
}

/// A stored delivery waiting to become interactions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub seq: i64,
    /// The line it arrived for (`telegram:<name>`).
    pub line: String,
    /// The service's own id of the delivery (Telegram `update_id`, VK
    /// `event_id`, Viber `message_token`, …).
    pub id: String,
    pub body: Vec<u8>,
    /// Unix milliseconds when it was stored.
    pub received_at: i64,
}

type Reply<T> = oneshot::Sender<Result<T, InboxError>>;

enum Request {
    Store {
        line: String,
        id: String,
        body: Vec<u8>,
        reply: Reply<bool>,
    },
    Pending {
        limit: usize,
        reply: Reply<Vec<Delivery>>,
    },
    Done {
        seqs: Vec<(i64, &'static str)>,
        reply: Reply<()>,
    },
    CommandDone {
        id: String,
        result: String,
        reply: Reply<()>,
    },
    WasDone {
        id: String,
        reply: Reply<Option<String>>,
    },
    Prune {
        older_than_ms: i64,
        reply: Reply<u64>,
    },
}

/// The inbox. Cheap to clone; the writer stops when the last clone drops.
#[derive(Debug, Clone)]
pub struct Inbox {
    tx: mpsc::Sender<Request>,
    stored: watch::Receiver<i64>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Inbox {
    /// Opens (creating) the inbox at `path` and starts its writer.
    pub fn open(path: &Path) -> Result<Self, InboxError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| InboxError::Storage(e.to_string()))?;
        }
        let conn = Connection::open(path).map_err(storage)?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(storage)?;
        // FULL: a commit is on disk before the service hears 200.
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;")
            .map_err(storage)?;
        conn.execute_batch(SCHEMA).map_err(storage)?;
        let last: i64 = conn
            .query_row("SELECT COALESCE(MAX(seq), 0) FROM deliveries", [], |r| {
                r.get(0)
            })
            .map_err(storage)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let (stored_tx, stored) = watch::channel(last);
        std::thread::Builder::new()
            .name("inbox-writer".into())
            .spawn(move || writer(conn, rx, stored_tx))
            .map_err(|e| InboxError::Storage(e.to_string()))?;
        Ok(Self { tx, stored })
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, InboxError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| InboxError::Closed)?;
        rx.await.map_err(|_| InboxError::Closed)?
    }

    /// Stores a delivery durably. `false`: this line already has a delivery
    /// with this id (a retry), and nothing changed.
    pub async fn store(&self, line: &str, id: &str, body: Vec<u8>) -> Result<bool, InboxError> {
        self.ask(|reply| Request::Store {
            line: line.to_owned(),
            id: id.to_owned(),
            body,
            reply,
        })
        .await
    }

    /// Up to `limit` unprocessed deliveries, oldest first.
    pub async fn pending(&self, limit: usize) -> Result<Vec<Delivery>, InboxError> {
        self.ask(|reply| Request::Pending { limit, reply }).await
    }

    /// Marks deliveries processed, each with its outcome (`published`,
    /// `ignored`, `rejected`).
    pub async fn done(&self, seqs: Vec<(i64, &'static str)>) -> Result<(), InboxError> {
        if seqs.is_empty() {
            return Ok(());
        }
        self.ask(|reply| Request::Done { seqs, reply }).await
    }

    /// Remembers that a command was carried out, with what came of it
    /// (the service's message id, say).
    pub async fn command_done(&self, id: &str, result: &str) -> Result<(), InboxError> {
        self.ask(|reply| Request::CommandDone {
            id: id.to_owned(),
            result: result.to_owned(),
            reply,
        })
        .await
    }

    /// What came of a command carried out before (a replay after a crash),
    /// or `None`.
    pub async fn was_done(&self, id: &str) -> Result<Option<String>, InboxError> {
        self.ask(|reply| Request::WasDone {
            id: id.to_owned(),
            reply,
        })
        .await
    }

    /// Forgets processed deliveries and commands older than `age`.
    pub async fn prune(&self, age: Duration) -> Result<u64, InboxError> {
        let older_than_ms = now_ms() - age.as_millis() as i64;
        self.ask(|reply| Request::Prune {
            older_than_ms,
            reply,
        })
        .await
    }

    /// The highest sequence number stored so far.
    pub fn last_stored(&self) -> i64 {
        *self.stored.borrow()
    }

    /// Waits until something is stored after `seq` (or the writer stops).
    pub async fn changed_after(&self, seq: i64) {
        let mut rx = self.stored.clone();
        let _ = rx.wait_for(|&last| last > seq).await;
    }
}

fn writer(mut conn: Connection, mut rx: mpsc::Receiver<Request>, stored: watch::Sender<i64>) {
    let mut stores = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        while let Some(req) = next.take() {
            match req {
                Request::Store {
                    line,
                    id,
                    body,
                    reply,
                } => {
                    stores.push((line, id, body, reply));
                    if stores.len() < MAX_GROUP {
                        next = rx.try_recv().ok();
                    }
                }
                other => {
                    commit_stores(&mut conn, &mut stores, &stored);
                    serve(&mut conn, other);
                    next = rx.try_recv().ok();
                }
            }
        }
        commit_stores(&mut conn, &mut stores, &stored);
    }
}

type PendingStore = (String, String, Vec<u8>, Reply<bool>);

fn commit_stores(
    conn: &mut Connection,
    stores: &mut Vec<PendingStore>,
    stored: &watch::Sender<i64>,
) {
    if stores.is_empty() {
        return;
    }
    let now = now_ms();
    let result = (|| {
        let tx = conn.transaction()?;
        let mut fresh = Vec::with_capacity(stores.len());
        {
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO deliveries (line, delivery, body, received_at) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for (line, id, body, _) in stores.iter() {
                fresh.push(insert.execute(params![line, id, body, now])? == 1);
            }
        }
        let last: i64 = tx.query_row("SELECT COALESCE(MAX(seq), 0) FROM deliveries", [], |r| {
            r.get(0)
        })?;
        tx.commit()?;
        Ok::<_, rusqlite::Error>((fresh, last))
    })();
    match result {
        Ok((fresh, last)) => {
            stored.send_replace(last);
            for ((_, _, _, reply), new) in stores.drain(..).zip(fresh) {
                let _ = reply.send(Ok(new));
            }
        }
        Err(e) => {
            let e = storage(e);
            for (_, _, _, reply) in stores.drain(..) {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

fn serve(conn: &mut Connection, req: Request) {
    match req {
        Request::Store { .. } => {}
        Request::Pending { limit, reply } => {
            let r = (|| {
                let mut q = conn.prepare_cached(
                    "SELECT seq, line, delivery, body, received_at FROM deliveries
                     WHERE done_at IS NULL ORDER BY seq LIMIT ?1",
                )?;
                let rows = q.query_map(params![limit as i64], |r| {
                    Ok(Delivery {
                        seq: r.get(0)?,
                        line: r.get(1)?,
                        id: r.get(2)?,
                        body: r.get(3)?,
                        received_at: r.get(4)?,
                    })
                })?;
                rows.collect::<Result<Vec<_>, _>>()
            })();
            let _ = reply.send(r.map_err(storage));
        }
        Request::Done { seqs, reply } => {
            let now = now_ms();
            let r = (|| {
                let tx = conn.transaction()?;
                {
                    let mut up = tx.prepare_cached(
                        "UPDATE deliveries SET done_at = ?2, outcome = ?3 WHERE seq = ?1",
                    )?;
                    for (seq, outcome) in &seqs {
                        up.execute(params![seq, now, outcome])?;
                    }
                }
                tx.commit()
            })();
            let _ = reply.send(r.map_err(storage));
        }
        Request::CommandDone { id, result, reply } => {
            let r = conn
                .execute(
                    "INSERT OR IGNORE INTO commands_done (id, done_at, result) VALUES (?1, ?2, ?3)",
                    params![id, now_ms(), result],
                )
                .map(|_| ());
            let _ = reply.send(r.map_err(storage));
        }
        Request::WasDone { id, reply } => {
            let r = conn
                .query_row(
                    "SELECT result FROM commands_done WHERE id = ?1",
                    params![id],
                    |r| r.get::<_, String>(0),
                )
                .optional();
            let _ = reply.send(r.map_err(storage));
        }
        Request::Prune {
            older_than_ms,
            reply,
        } => {
            let r = (|| {
                let a = conn.execute(
                    "DELETE FROM deliveries WHERE done_at IS NOT NULL AND done_at < ?1",
                    params![older_than_ms],
                )?;
                let b = conn.execute(
                    "DELETE FROM commands_done WHERE done_at < ?1",
                    params![older_than_ms],
                )?;
                Ok::<_, rusqlite::Error>((a + b) as u64)
            })();
            let _ = reply.send(r.map_err(storage));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_repeated_delivery_is_stored_once_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inbox.sqlite");
        let inbox = Inbox::open(&path).unwrap();
        let stores: Vec<_> = (0..100)
            .map(|i| {
                let inbox = inbox.clone();
                tokio::spawn(async move {
                    inbox
                        .store(
                            "tg",
                            &format!("{}", i % 50),
                            format!("body {i}").into_bytes(),
                        )
                        .await
                })
            })
            .collect();
        let mut fresh = 0;
        for s in stores {
            if s.await.unwrap().unwrap() {
                fresh += 1;
            }
        }
        assert_eq!(fresh, 50, "each delivery id is new once");
        // Another line may use the same id.
        assert!(inbox.store("vk", "0", b"x".to_vec()).await.unwrap());
        let pending = inbox.pending(1000).await.unwrap();
        assert_eq!(pending.len(), 51);
        let first: Vec<_> = pending
            .iter()
            .take(10)
            .map(|d| (d.seq, "published"))
            .collect();
        inbox.done(first).await.unwrap();
        drop(inbox);

        let inbox = Inbox::open(&path).unwrap();
        let pending = inbox.pending(1000).await.unwrap();
        assert_eq!(pending.len(), 41, "processed deliveries stay processed");
        assert!(
            !inbox.store("tg", "3", b"again".to_vec()).await.unwrap(),
            "a processed delivery is still known"
        );
        assert_eq!(inbox.was_done("cmd-1").await.unwrap(), None);
        inbox
            .command_done("cmd-1", "{\"message_id\":7}")
            .await
            .unwrap();
        assert_eq!(
            inbox.was_done("cmd-1").await.unwrap().as_deref(),
            Some("{\"message_id\":7}")
        );
        // Nothing is old enough to forget yet.
        assert_eq!(inbox.prune(KEEP_DONE).await.unwrap(), 0);
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(inbox.prune(Duration::ZERO).await.unwrap(), 10 + 1);
        assert!(
            inbox
                .store("tg", "3", b"after a week".to_vec())
                .await
                .unwrap()
        );
    }
}
