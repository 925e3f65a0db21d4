//! The channel adapters beside the gateway: each one receives until
//! shutdown, their webhook deliveries are processed from the inbox, and
//! every command the CRM writes to the feed's `commands`
//! topic is handed to the adapter serving the line it names. A command
//! that fails for a reason that may pass (a mail server down) is retried
//! with backoff before anything after it; the batch is committed only once
//! each command was carried out or rejected for good.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use switchboard_adapters::{Adapter, AdapterContext, CommandError, Retries, sleep_or_shutdown};
use switchboard_storage::{Command, FeedSource};
use tokio::task::JoinSet;

use crate::metrics::COMMANDS;

/// The consumer group commands are read as.
pub const COMMANDS_GROUP: &str = "channels";

/// The adapters this gateway runs.
#[derive(Debug)]
pub struct Channels {
    adapters: Vec<Arc<dyn Adapter>>,
    ctx: AdapterContext,
}

impl Channels {
    pub fn new(ctx: AdapterContext) -> Self {
        Self {
            adapters: Vec::new(),
            ctx,
        }
    }

    pub fn add(&mut self, adapter: Arc<dyn Adapter>) {
        self.adapters.push(adapter);
    }

    /// The webhooks of every adapter added so far.
    pub fn hooks(&self) -> crate::hooks::Hooks {
        crate::hooks::Hooks::new(&self.adapters, self.ctx.inbox.clone())
    }

    pub fn is_empty(&self) -> bool {
        self.adapters.is_empty()
    }

    pub fn context(&self) -> &AdapterContext {
        &self.ctx
    }

    /// Runs every adapter and executes commands read from `source` until
    /// the context's shutdown token fires.
    pub async fn run<S: FeedSource + 'static>(self, source: S) {
        let mut tasks = JoinSet::new();
        for a in &self.adapters {
            tasks.spawn(a.run(self.ctx.clone()));
        }
        let lines = Arc::new(by_line(&self.adapters));
        tasks.spawn(crate::hooks::process(Arc::clone(&lines), self.ctx.clone()));
        tasks.spawn(execute_commands(lines, self.ctx, source));
        while tasks.join_next().await.is_some() {}
    }
}

/// Each line (`email:sales`, `telegram:tg`) and the adapter serving it.
pub(crate) type ByLine = HashMap<String, Arc<dyn Adapter>>;

fn by_line(adapters: &[Arc<dyn Adapter>]) -> ByLine {
    adapters
        .iter()
        .flat_map(|a| a.lines().into_iter().map(move |l| (l, Arc::clone(a))))
        .collect()
}

async fn execute_commands<S: FeedSource>(lines: Arc<ByLine>, ctx: AdapterContext, mut source: S) {
    let mut retries = Retries::default();
    loop {
        let batch = tokio::select! {
            () = ctx.shutdown.cancelled() => return,
            b = source.poll(100, Duration::from_millis(500)) => b,
        };
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "commands not read");
                tokio::select! {
                    () = ctx.shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        if batch.is_empty() {
            continue;
        }
        for record in &batch {
            let cmd: Command = match serde_json::from_slice(&record.value) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(offset = record.offset, error = %e, "unreadable command skipped");
                    COMMANDS.with_label_values(&["unknown", "unreadable"]).inc();
                    continue;
                }
            };
            let channel = cmd.channel.as_str();
            tracing::debug!(command = %cmd.id, target = %cmd.target, "command read");
            let Some(adapter) = lines.get(&cmd.target) else {
                // Calls and lines of other channels are not ours.
                COMMANDS.with_label_values(&[channel, "not_ours"]).inc();
                continue;
            };
            loop {
                match adapter.execute(&cmd, &ctx).await {
                    Ok(()) => {
                        tracing::info!(command = %cmd.id, target = %cmd.target, "command carried out");
                        retries.reset();
                        COMMANDS.with_label_values(&[channel, "done"]).inc();
                        break;
                    }
                    Err(CommandError::Rejected(why)) => {
                        tracing::warn!(command = %cmd.id, target = %cmd.target, %why, "command rejected");
                        COMMANDS.with_label_values(&[channel, "rejected"]).inc();
                        break;
                    }
                    Err(e) => {
                        let wait = retries.next_wait();
                        tracing::warn!(command = %cmd.id, target = %cmd.target, error = %e, retry_in = ?wait, "command failed");
                        COMMANDS.with_label_values(&[channel, "retried"]).inc();
                        if sleep_or_shutdown(&ctx.shutdown, wait).await {
                            return;
                        }
                    }
                }
            }
        }
        if let Err(e) = source.commit(&batch).await {
            tracing::warn!(error = %e, "commands not committed; they will be replayed");
        }
    }
}
