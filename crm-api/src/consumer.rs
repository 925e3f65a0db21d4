//! The feed consumer: applies interactions to the store, then commits.
//!
//! Order matters for "exactly once in effect": the batch is applied in one
//! database transaction (a repeated envelope id changes nothing), and only
//! then is the feed offset committed. A crash in between replays the batch.

use std::time::Duration;

use switchboard_storage::{FeedLog, FeedSource, Interaction, NewRecord, Record, envelope};
use tokio_util::sync::CancellationToken;

use crate::metrics;
use crate::store::{Reject, Store};

/// Most records applied in one transaction.
const BATCH: usize = 500;

/// Consumes until `shutdown`; the batch in hand is finished first. Owner
/// changes that follow from routing decisions are published on `owners`
/// (when there is one) before the batch is committed.
pub async fn run<S: FeedSource>(
    store: Store,
    mut source: S,
    owners: Option<FeedLog>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::default();
    // The outbox is swept now and then, not on every batch: a closing
    // write sends its own command at once; this only catches what the
    // feed could not take then.
    let mut next_sweep = tokio::time::Instant::now();
    loop {
        let batch = tokio::select! {
            () = shutdown.cancelled() => return,
            batch = source.poll(BATCH, Duration::from_millis(500)) => batch,
        };
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                metrics::CONSUMER_ERRORS.with_label_values(&["poll"]).inc();
                backoff.wait(&shutdown, "reading the feed", &e).await;
                continue;
            }
        };
        if let Some(feed) = owners
            .as_ref()
            .filter(|_| tokio::time::Instant::now() >= next_sweep)
        {
            send_queued_commands(&store, feed).await;
            next_sweep = tokio::time::Instant::now() + OUTBOX_SWEEP;
        }
        if batch.is_empty() {
            continue;
        }
        let texts: Vec<Result<Interaction, String>> = batch.iter().map(decode).collect();
        let mut good = Vec::with_capacity(batch.len());
        let mut rejects = Vec::new();
        for (record, decoded) in batch.iter().zip(texts) {
            match decoded {
                Ok(ev) => good.push((ev, std::str::from_utf8(&record.value).unwrap_or_default())),
                Err(reason) => {
                    tracing::warn!(topic = %record.topic, offset = record.offset, %reason, "feed record rejected");
                    rejects.push(Reject { record, reason });
                }
            }
        }
        let changes = loop {
            match store.apply(&good, &rejects).await {
                Ok((applied, changes)) => {
                    metrics::APPLIED
                        .with_label_values(&["new"])
                        .inc_by(applied.new);
                    metrics::APPLIED
                        .with_label_values(&["duplicate"])
                        .inc_by(applied.duplicate);
                    metrics::APPLIED
                        .with_label_values(&["rejected"])
                        .inc_by(applied.rejected);
                    backoff.reset();
                    break changes;
                }
                Err(e) => {
                    metrics::CONSUMER_ERRORS.with_label_values(&["apply"]).inc();
                    if shutdown.is_cancelled() {
                        // Not committed: the batch is applied at the next start.
                        return;
                    }
                    backoff.wait(&shutdown, "applying feed records", &e).await;
                }
            }
        };
        if let Some(feed) = owners.as_ref().filter(|_| !changes.is_empty()) {
            let records: Result<Vec<_>, _> = changes.iter().map(NewRecord::owner).collect();
            match records {
                Ok(records) => {
                    if let Err(e) = feed.append_batch(records).await {
                        // Not committed either: the batch is applied again
                        // (a no-op) and its owners published then.
                        metrics::CONSUMER_ERRORS
                            .with_label_values(&["publish"])
                            .inc();
                        tracing::warn!(error = %e, "owner changes not published; the batch will be re-read");
                        continue;
                    }
                }
                Err(e) => tracing::error!(error = %e, "owner change not serialisable"),
            }
        }
        if let Err(e) = source.commit(&batch).await {
            // The effect is durable; a replay after this is deduplicated.
            metrics::CONSUMER_ERRORS
                .with_label_values(&["commit"])
                .inc();
            tracing::warn!(error = %e, "feed offset commit failed; records may be re-read and deduplicated");
        }
    }
}

/// Decodes an interaction, or says why it cannot be applied.
fn decode(record: &Record) -> Result<Interaction, String> {
    if record.topic != "interactions" {
        return Err(format!("unexpected topic {}", record.topic));
    }
    if std::str::from_utf8(&record.value).is_err() {
        return Err("not UTF-8".into());
    }
    let ev: Interaction =
        serde_json::from_slice(&record.value).map_err(|e| format!("not a v1 interaction: {e}"))?;
    if ev.v != envelope::VERSION {
        return Err(format!("envelope version {} is not supported", ev.v));
    }
    Ok(ev)
}

/// Exponential backoff for retrying a failing dependency, logging once per wait.
#[derive(Debug)]
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Self(Duration::from_millis(100))
    }
}

impl Backoff {
    fn reset(&mut self) {
        *self = Self::default();
    }

    async fn wait(
        &mut self,
        shutdown: &CancellationToken,
        what: &str,
        err: &(dyn std::error::Error + Send + Sync),
    ) {
        tracing::warn!(error = %err, retry_in = ?self.0, "{what} failed");
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = tokio::time::sleep(self.0) => {}
        }
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
    }
}

/// How often the consumer looks for commands left in the outbox.
const OUTBOX_SWEEP: Duration = Duration::from_secs(2);

/// Moves the commands waiting in the store's outbox to the feed, oldest
/// first; stops at the first that cannot go (it is tried again later). A
/// command sent twice after a crash is carried out once: the gateway keeps
/// a ledger by command id.
pub(crate) async fn send_queued_commands(store: &Store, feed: &FeedLog) {
    let queued = match store.queued_commands(100).await {
        Ok(q) => q,
        Err(e) => {
            tracing::warn!(error = %e, "command outbox unreadable");
            return;
        }
    };
    for (id, envelope) in queued {
        let record = match serde_json::from_str::<switchboard_storage::Command>(&envelope)
            .map_err(|e| e.to_string())
            .and_then(|cmd| NewRecord::command(&cmd).map_err(|e| e.to_string()))
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(command = %id, error = %e, "unreadable queued command dropped");
                let _ = store.command_sent(&id).await;
                continue;
            }
        };
        if let Err(e) = feed.append(record).await {
            tracing::warn!(command = %id, error = %e, "queued command not sent yet");
            return;
        }
        if let Err(e) = store.command_sent(&id).await {
            tracing::warn!(command = %id, error = %e, "command sent, not cleared: it will be sent again (and carried out once)");
            return;
        }
        tracing::info!(command = %id, "queued command sent");
    }
}
