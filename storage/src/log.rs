//! The embedded feed: an append-only log in one SQLite file.
//!
//! One writer thread per process owns the write connection and commits
//! appends in groups (one transaction, one disk sync for everything queued),
//! so many concurrent producers cost one sync between them. Offsets are the
//! table's AUTOINCREMENT row ids: they increase across all topics and are
//! never reused. Readers — in this process or others, WAL mode lets them run
//! beside the writer — keep a committed offset per consumer group and topic.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, params};
use tokio::sync::{mpsc, oneshot, watch};

use crate::envelope::{Command, Interaction, OwnerChange, Topic};
use crate::source::{FeedSource, Record};
use crate::{FeedError, metrics};

/// Most records written in one transaction.
const MAX_GROUP: usize = 8192;
/// Requests queued for the writer before producers wait.
const QUEUE: usize = 4096;
/// How long a connection waits for another process's lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    appended_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS records_by_topic ON records (topic, seq);
CREATE TABLE IF NOT EXISTS consumer_offsets (
    grp TEXT NOT NULL,
    topic TEXT NOT NULL,
    next_seq INTEGER NOT NULL,
    committed_at INTEGER NOT NULL,
    PRIMARY KEY (grp, topic)
) WITHOUT ROWID;
";

/// How the log syncs and how readers in other processes poll.
#[derive(Debug, Clone)]
pub struct LogOptions {
    pub synchronous: switchboard_config::Synchronous,
    pub poll_interval: Duration,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self::from(&switchboard_config::SqliteFeedConfig::default())
    }
}

impl From<&switchboard_config::SqliteFeedConfig> for LogOptions {
    fn from(c: &switchboard_config::SqliteFeedConfig) -> Self {
        Self {
            synchronous: c.synchronous,
            poll_interval: c.poll_interval,
        }
    }
}

/// A record to append.
#[derive(Debug, Clone)]
pub struct NewRecord {
    pub topic: Topic,
    pub key: String,
    pub value: Vec<u8>,
}

impl NewRecord {
    /// An interaction for the `interactions` topic, keyed by contact.
    pub fn interaction(ev: &Interaction) -> Result<Self, FeedError> {
        Self::interaction_with(ev, &ev.payload, 512)
    }

    /// [`NewRecord::interaction`] with the payload given apart, written
    /// from the caller's own type (see [`Interaction::write_json_with`]);
    /// `capacity` is a guess at the record's size.
    pub fn interaction_with<P: serde::Serialize + ?Sized>(
        ev: &Interaction,
        payload: &P,
        capacity: usize,
    ) -> Result<Self, FeedError> {
        let mut value = Vec::with_capacity(capacity);
        ev.write_json_with(payload, &mut value)?;
        Ok(Self {
            topic: Topic::Interactions,
            key: ev.contact.key.clone(),
            value,
        })
    }

    /// An owner change for the `owners` topic, keyed by contact.
    pub fn owner(change: &OwnerChange) -> Result<Self, FeedError> {
        Ok(Self {
            topic: Topic::Owners,
            key: change.contact_key.clone(),
            value: serde_json::to_vec(change)?,
        })
    }

    /// A command for the `commands` topic, keyed by target.
    pub fn command(cmd: &Command) -> Result<Self, FeedError> {
        Ok(Self {
            topic: Topic::Commands,
            key: cmd.target.clone(),
            value: serde_json::to_vec(cmd)?,
        })
    }
}

type Reply<T> = oneshot::Sender<Result<T, FeedError>>;

enum Request {
    Append {
        records: Vec<NewRecord>,
        reply: Reply<Vec<i64>>,
    },
    Prune {
        below: i64,
        retain_for: Vec<String>,
        reply: Reply<u64>,
    },
}

/// A batch handed to the writer ([`FeedLog::submit_batch`]).
#[derive(Debug)]
#[must_use = "a batch is durable only once `committed` says so"]
pub struct Appending(oneshot::Receiver<Result<Vec<i64>, FeedError>>);

impl Appending {
    /// Resolves once the batch is committed, with its offsets.
    pub async fn committed(self) -> Result<Vec<i64>, FeedError> {
        self.0.await.map_err(|_| FeedError::Closed)?
    }
}

/// The append side of the embedded log. Cheap to clone; the writer thread
/// stops when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct FeedLog {
    tx: mpsc::Sender<Request>,
    appended: watch::Receiver<i64>,
    path: Arc<PathBuf>,
    options: LogOptions,
}

impl FeedLog {
    /// Opens (creating if needed) the log at `path` and starts its writer.
    pub fn open(path: &Path, options: LogOptions) -> Result<Self, FeedError> {
        let conn = open_connection(path, options.synchronous)?;
        let last: i64 = conn
            .query_row("SELECT COALESCE(MAX(seq), 0) FROM records", [], |r| {
                r.get(0)
            })
            .map_err(FeedError::sqlite("open"))?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let (appended_tx, appended) = watch::channel(last);
        std::thread::Builder::new()
            .name("feed-writer".into())
            .spawn(move || writer_loop(conn, rx, appended_tx))
            .map_err(|source| FeedError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            tx,
            appended,
            path: Arc::new(path.to_path_buf()),
            options,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record; resolves once it is committed, with its offset.
    pub async fn append(&self, record: NewRecord) -> Result<i64, FeedError> {
        let mut offsets = self.append_batch(vec![record]).await?;
        offsets.pop().ok_or(FeedError::Closed)
    }

    /// Appends records in order, atomically; resolves once committed.
    pub async fn append_batch(&self, records: Vec<NewRecord>) -> Result<Vec<i64>, FeedError> {
        self.submit_batch(records).await?.committed().await
    }

    /// Hands records to the writer, to be appended atomically after
    /// everything handed over before them, and returns without waiting for
    /// the commit ([`Appending::committed`] does). A producer with several
    /// batches in flight keeps its order, and the writer commits the
    /// batches queued together in one transaction. Waits only while the
    /// writer's queue is full.
    pub async fn submit_batch(&self, records: Vec<NewRecord>) -> Result<Appending, FeedError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Append { records, reply })
            .await
            .map_err(|_| FeedError::Closed)?;
        Ok(Appending(rx))
    }

    /// Appends an interaction; resolves once it is durable.
    pub async fn publish(&self, ev: &Interaction) -> Result<i64, FeedError> {
        self.append(NewRecord::interaction(ev)?).await
    }

    /// Deletes records below offset `below` (shipped to Kafka, say) that
    /// the consumer groups in `retain_for` have also committed past; a group
    /// that never committed keeps everything. Returns how many were deleted.
    pub async fn prune_below(&self, below: i64, retain_for: &[String]) -> Result<u64, FeedError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Prune {
                below,
                retain_for: retain_for.to_vec(),
                reply,
            })
            .await
            .map_err(|_| FeedError::Closed)?;
        rx.await.map_err(|_| FeedError::Closed)?
    }

    /// Whether the writer thread is running (it stops only if it panicked).
    pub fn is_open(&self) -> bool {
        !self.tx.is_closed()
    }

    /// The highest offset committed by this process's writer (0 when empty).
    pub fn last_offset(&self) -> i64 {
        *self.appended.borrow()
    }

    /// A consumer-group member reading `topics`, woken as soon as this
    /// process appends.
    pub fn consumer(&self, group: &str, topics: &[Topic]) -> Result<LogConsumer, FeedError> {
        let mut c = LogConsumer::open(&self.path, group, topics, self.options.clone())?;
        c.wake = Some(self.appended.clone());
        Ok(c)
    }
}

fn open_connection(
    path: &Path,
    synchronous: switchboard_config::Synchronous,
) -> Result<Connection, FeedError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| FeedError::Open {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(FeedError::sqlite("open"))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(FeedError::sqlite("open"))?;
    let sync = match synchronous {
        switchboard_config::Synchronous::Full => "FULL",
        switchboard_config::Synchronous::Normal => "NORMAL",
    };
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync};"
    ))
    .map_err(FeedError::sqlite("open"))?;
    conn.execute_batch(SCHEMA)
        .map_err(FeedError::sqlite("create schema"))?;
    Ok(conn)
}

fn now_micros() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

fn writer_loop(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Request>,
    appended: watch::Sender<i64>,
) {
    let mut group: Vec<(Vec<NewRecord>, Reply<Vec<i64>>)> = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let mut pending = Some(first);
        let mut count = 0;
        // Take everything already queued, up to MAX_GROUP records, into one
        // transaction. A prune runs on its own, in queue order.
        while let Some(req) = pending.take().or_else(|| {
            if count < MAX_GROUP {
                rx.try_recv().ok()
            } else {
                None
            }
        }) {
            match req {
                Request::Append { records, reply } => {
                    count += records.len();
                    group.push((records, reply));
                }
                Request::Prune {
                    below,
                    retain_for,
                    reply,
                } => {
                    commit_group(&mut conn, &mut group, &appended);
                    count = 0;
                    let _ = reply.send(prune(&conn, below, &retain_for));
                }
            }
        }
        commit_group(&mut conn, &mut group, &appended);
    }
    // Last producer gone: fold the WAL back so the file is self-contained.
    let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
}

fn commit_group(
    conn: &mut Connection,
    group: &mut Vec<(Vec<NewRecord>, Reply<Vec<i64>>)>,
    appended: &watch::Sender<i64>,
) {
    if group.is_empty() {
        return;
    }
    let started = Instant::now();
    let result = write_group(conn, group);
    metrics::COMMIT_SECONDS.observe(started.elapsed().as_secs_f64());
    match result {
        Ok(offsets) => {
            // Publish the new end before answering, so a producer that reads
            // `last_offset` after its append sees its own records.
            let last = offsets
                .iter()
                .filter_map(|o| o.last())
                .max()
                .copied()
                .unwrap_or(0);
            appended.send_if_modified(|v| {
                let changed = last > *v;
                *v = (*v).max(last);
                changed
            });
            let mut per_topic: HashMap<Topic, u64> = HashMap::new();
            for ((records, reply), offsets) in group.drain(..).zip(offsets) {
                for r in &records {
                    *per_topic.entry(r.topic).or_default() += 1;
                }
                let _ = reply.send(Ok(offsets));
            }
            for (topic, n) in per_topic {
                metrics::APPENDED
                    .with_label_values(&[topic.as_str()])
                    .inc_by(n);
            }
        }
        Err(e) => {
            metrics::APPEND_ERRORS.inc();
            tracing::error!(error = %e, "feed append failed");
            let source = Arc::new(e);
            for (_, reply) in group.drain(..) {
                let _ = reply.send(Err(FeedError::Sqlite {
                    op: "append",
                    source: Arc::clone(&source),
                }));
            }
        }
    }
}

fn write_group(
    conn: &mut Connection,
    group: &[(Vec<NewRecord>, Reply<Vec<i64>>)],
) -> Result<Vec<Vec<i64>>, rusqlite::Error> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let now = now_micros();
    let mut all = Vec::with_capacity(group.len());
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO records (topic, key, value, appended_at) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for (records, _) in group {
            let mut offsets = Vec::with_capacity(records.len());
            for r in records {
                stmt.execute(params![r.topic.as_str(), r.key, r.value, now])?;
                offsets.push(tx.last_insert_rowid());
            }
            all.push(offsets);
        }
    }
    tx.commit()?;
    Ok(all)
}

fn prune(conn: &Connection, mut below: i64, retain_for: &[String]) -> Result<u64, FeedError> {
    for group in retain_for {
        let (rows, min): (i64, Option<i64>) = conn
            .query_row(
                "SELECT COUNT(*), MIN(next_seq) FROM consumer_offsets WHERE grp = ?1",
                [group],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(FeedError::sqlite("prune"))?;
        below = below.min(if rows == 0 { 0 } else { min.unwrap_or(0) });
    }
    let mut total = 0u64;
    loop {
        let n = conn
            .execute(
                "DELETE FROM records WHERE seq IN \
                 (SELECT seq FROM records WHERE seq < ?1 ORDER BY seq LIMIT 10000)",
                [below],
            )
            .map_err(FeedError::sqlite("prune"))?;
        total += n as u64;
        if n < 10_000 {
            return Ok(total);
        }
    }
}

/// A member of a named consumer group on the embedded log. Each group keeps
/// its own committed offset per topic; a new group starts at the beginning.
#[derive(Debug)]
pub struct LogConsumer {
    conn: Arc<Mutex<Connection>>,
    group: String,
    /// Next offset to read, per topic.
    positions: Vec<(Topic, i64)>,
    wake: Option<watch::Receiver<i64>>,
    poll_interval: Duration,
}

impl LogConsumer {
    /// Opens a reader on a log file, possibly written by another process.
    pub fn open(
        path: &Path,
        group: &str,
        topics: &[Topic],
        options: LogOptions,
    ) -> Result<Self, FeedError> {
        // A consumer's committed offset needs no sync to disk: losing the
        // last commits to a power cut only makes the group re-read records,
        // which every consumer deduplicates.
        let conn = open_connection(path, switchboard_config::Synchronous::Normal)?;
        let positions = read_committed(&conn, group, topics)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            group: group.to_owned(),
            positions,
            wake: None,
            poll_interval: options.poll_interval,
        })
    }

    /// Records after the group's position, oldest first, across its topics.
    async fn read(&self, max: usize) -> Result<Vec<Record>, FeedError> {
        let conn = Arc::clone(&self.conn);
        let positions = self.positions.clone();
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            let mut stmt = conn
                .prepare_cached(
                    "SELECT seq, key, value FROM records \
                     WHERE topic = ?1 AND seq >= ?2 ORDER BY seq LIMIT ?3",
                )
                .map_err(FeedError::sqlite("read"))?;
            let mut out = Vec::new();
            for (topic, next) in positions {
                let rows = stmt
                    .query_map(params![topic.as_str(), next, limit], |r| {
                        Ok(Record {
                            topic: topic.as_str().to_owned(),
                            partition: 0,
                            offset: r.get(0)?,
                            key: r.get(1)?,
                            value: r.get(2)?,
                        })
                    })
                    .map_err(FeedError::sqlite("read"))?;
                for row in rows {
                    out.push(row.map_err(FeedError::sqlite("read"))?);
                }
            }
            out.sort_by_key(|r| r.offset);
            out.truncate(max);
            Ok(out)
        })
        .await
        .map_err(|_| FeedError::Closed)?
    }
}

impl FeedSource for LogConsumer {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>, FeedError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(w) = self.wake.as_mut() {
                w.borrow_and_update();
            }
            let records = self.read(max).await?;
            if !records.is_empty() {
                for r in &records {
                    if let Some(p) = self
                        .positions
                        .iter_mut()
                        .find(|(t, _)| t.as_str() == r.topic)
                    {
                        p.1 = p.1.max(r.offset + 1);
                    }
                }
                metrics::CONSUMED
                    .with_label_values(&[self.group.as_str()])
                    .inc_by(records.len() as u64);
                return Ok(records);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(records);
            }
            let nap = tokio::time::sleep_until(deadline.min(now + self.poll_interval));
            match self.wake.as_mut() {
                Some(w) => {
                    tokio::select! {
                        _ = w.changed() => {}
                        () = nap => {}
                    }
                }
                None => nap.await,
            }
        }
    }

    async fn commit(&mut self, records: &[Record]) -> Result<(), FeedError> {
        let mut next: HashMap<String, i64> = HashMap::new();
        for r in records {
            let e = next.entry(r.topic.clone()).or_insert(0);
            *e = (*e).max(r.offset + 1);
        }
        if next.is_empty() {
            return Ok(());
        }
        let conn = Arc::clone(&self.conn);
        let group = self.group.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(FeedError::sqlite("commit offset"))?;
            let now = now_micros();
            for (topic, next) in next {
                tx.execute(
                    "INSERT INTO consumer_offsets (grp, topic, next_seq, committed_at) \
                     VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (grp, topic) DO UPDATE SET \
                     next_seq = MAX(next_seq, excluded.next_seq), committed_at = excluded.committed_at",
                    params![group, topic, next, now],
                )
                .map_err(FeedError::sqlite("commit offset"))?;
            }
            tx.commit().map_err(FeedError::sqlite("commit offset"))
        })
        .await
        .map_err(|_| FeedError::Closed)?
    }
}

impl LogConsumer {
    /// The group's committed position per topic (next offset to read), as
    /// stored; for lag reporting and for pruning what every group has taken.
    pub async fn committed(&self) -> Result<Vec<(Topic, i64)>, FeedError> {
        let conn = Arc::clone(&self.conn);
        let group = self.group.clone();
        let topics: Vec<Topic> = self.positions.iter().map(|(t, _)| *t).collect();
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            read_committed(&conn, &group, &topics)
        })
        .await
        .map_err(|_| FeedError::Closed)?
    }

    /// Moves the read position back to the committed offsets, so records
    /// returned but not committed are returned again (after a failed
    /// downstream delivery).
    pub async fn rewind(&mut self) -> Result<(), FeedError> {
        self.positions = self.committed().await?;
        Ok(())
    }
}

fn read_committed(
    conn: &Connection,
    group: &str,
    topics: &[Topic],
) -> Result<Vec<(Topic, i64)>, FeedError> {
    let mut out = Vec::with_capacity(topics.len());
    for &topic in topics {
        let next: i64 = conn
            .query_row(
                "SELECT COALESCE((SELECT next_seq FROM consumer_offsets \
                 WHERE grp = ?1 AND topic = ?2), 0)",
                params![group, topic.as_str()],
                |r| r.get(0),
            )
            .map_err(FeedError::sqlite("read committed offset"))?;
        out.push((topic, next));
    }
    Ok(out)
}
