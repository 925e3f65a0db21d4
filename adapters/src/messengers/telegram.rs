//! A Telegram bot: updates by `getUpdates` long polling or by webhook (with
//! `X-Telegram-Bot-Api-Secret-Token` checked); messages with text, photos,
//! documents and voice (files downloaded into the attachment store);
//! replies with `sendMessage`. teloxide-core parses updates and speaks the
//! Bot API; polling reads updates raw so the inbox keeps them as Telegram
//! sent them.

use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{Value, json};
use switchboard_config::{ConfigError, TelegramConfig, TelegramMode};
use switchboard_storage::{Channel, Command, Interaction, Kind};
use teloxide_core::net::Download;
use teloxide_core::prelude::Requester;
use teloxide_core::types::{ChatId, FileMeta, Message, Update, UpdateKind};
use teloxide_core::{Bot, RequestError};

use super::{Line, http_client, store};
use crate::blobs::Blobs;
use crate::inbox::Delivery;
use crate::metrics::MESSAGES;
use crate::{
    Accepted, Adapter, AdapterContext, CommandError, HookError, HookReply, HookRequest, Retries,
    sleep_or_shutdown,
};

#[derive(Debug, Clone)]
pub(super) struct Telegram {
    line: Line,
    bot: Bot,
    mode: TelegramMode,
    webhook_url: String,
    webhook_secret: Option<String>,
    poll_timeout: Duration,
    max_file_bytes: u64,
    blobs: Blobs,
    http: reqwest::Client,
}

impl Telegram {
    pub(super) fn new(c: &TelegramConfig, key: &str, blobs: Blobs) -> Result<Self, ConfigError> {
        let token = c.token.resolve(&format!("{key}.token"))?;
        let api = reqwest::Url::parse(c.api_url.trim_end_matches('/')).map_err(|_| {
            ConfigError::invalid(&format!("{key}.api_url"), &c.api_url, "an http(s) URL")
        })?;
        let webhook_secret = match c.mode {
            TelegramMode::Webhook => {
                Some(c.webhook_secret.resolve(&format!("{key}.webhook_secret"))?)
            }
            TelegramMode::Polling => None,
        };
        let http = http_client();
        Ok(Self {
            line: Line::new(&c.name, Channel::Telegram, &c.owner),
            bot: Bot::with_client(&token, http.clone()).set_api_url(api),
            mode: c.mode,
            webhook_url: c.webhook_url.clone(),
            webhook_secret,
            poll_timeout: c.poll_timeout,
            max_file_bytes: c.max_file_bytes,
            blobs,
            http,
        })
    }

    /// Calls a Bot API method with a JSON body and returns its `result`.
    async fn call(&self, method: &str, body: &Value, wait: Duration) -> Result<Value, String> {
        let resp = self
            .http
            .post(format!(
                "{}/bot{}/{method}",
                self.bot.api_url().as_str().trim_end_matches('/'),
                self.bot.token()
            ))
            .timeout(wait + Duration::from_secs(10))
            .json(body)
            .send()
            .await
            .map_err(|e| format!("{method}: {}", e.without_url()))?;
        let status = resp.status();
        let v: Value = resp
            .json()
            .await
            .map_err(|e| format!("{method}: {status}: {}", e.without_url()))?;
        if v["ok"] == json!(true) {
            Ok(v["result"].clone())
        } else {
            Err(format!(
                "{method}: {status}: {}",
                v["description"].as_str().unwrap_or("no description")
            ))
        }
    }

    async fn poll(&self, ctx: AdapterContext) {
        let health_key = self.line.target();
        // getUpdates is refused while a webhook is set.
        let _ = self.call("deleteWebhook", &json!({}), Duration::ZERO).await;
        let mut offset: i64 = 0;
        let mut retries = Retries::default();
        loop {
            let body = json!({"offset": offset, "timeout": self.poll_timeout.as_secs()});
            let got = tokio::select! {
                () = ctx.shutdown.cancelled() => return,
                r = self.call("getUpdates", &body, self.poll_timeout) => r,
            };
            let stored = match got {
                Ok(Value::Array(updates)) => self.keep(&ctx, updates, &mut offset).await,
                Ok(other) => Err(format!("getUpdates: not a list: {other}")),
                Err(e) => Err(e),
            };
            match stored {
                Ok(()) => {
                    retries.reset();
                    ctx.health.set(&health_key, Ok(()));
                }
                Err(e) => {
                    ctx.health.set(&health_key, Err(e.clone()));
                    let wait = retries.next_wait();
                    tracing::warn!(line = %self.line.name, error = %e, retry_in = ?wait, "telegram polling failed");
                    if sleep_or_shutdown(&ctx.shutdown, wait).await {
                        return;
                    }
                }
            }
        }
    }

    /// Stores polled updates in the inbox (all at once: one commit); the
    /// next `getUpdates` offset confirms them to Telegram only after they
    /// are on disk.
    async fn keep(
        &self,
        ctx: &AdapterContext,
        updates: Vec<Value>,
        offset: &mut i64,
    ) -> Result<(), String> {
        let target = self.line.target();
        let line = target.as_str();
        let mut stores = Vec::with_capacity(updates.len());
        let mut last = *offset;
        for u in updates {
            let Some(id) = u["update_id"].as_i64() else {
                MESSAGES.with_label_values(&["telegram", "rejected"]).inc();
                continue;
            };
            let body = serde_json::to_vec(&u).map_err(|e| e.to_string())?;
            stores.push(async move { ctx.inbox.store(line, &id.to_string(), body).await });
            last = last.max(id + 1);
        }
        futures::future::try_join_all(stores)
            .await
            .map_err(|e| e.to_string())?;
        *offset = last;
        Ok(())
    }

    async fn set_webhook(&self, ctx: AdapterContext) {
        let health_key = self.line.target();
        if self.webhook_url.is_empty() {
            ctx.health.set(&health_key, Ok(()));
            return;
        }
        let body = json!({
            "url": self.webhook_url,
            "secret_token": self.webhook_secret,
        });
        let mut retries = Retries::default();
        loop {
            match self.call("setWebhook", &body, Duration::ZERO).await {
                Ok(_) => {
                    ctx.health.set(&health_key, Ok(()));
                    tracing::info!(line = %self.line.name, "telegram webhook set");
                    return;
                }
                Err(e) => {
                    ctx.health.set(&health_key, Err(e.clone()));
                    let wait = retries.next_wait();
                    tracing::warn!(line = %self.line.name, error = %e, retry_in = ?wait, "setWebhook failed");
                    if sleep_or_shutdown(&ctx.shutdown, wait).await {
                        return;
                    }
                }
            }
        }
    }

    /// Downloads one file of a message into the store.
    async fn fetch(
        &self,
        kind: &str,
        meta: &FileMeta,
        name: Option<String>,
        mime: Option<String>,
    ) -> Result<Value, CommandError> {
        let mut entry = json!({
            "kind": kind,
            "size": meta.size,
            "name": name,
            "content_type": mime,
        });
        if u64::from(meta.size) > self.max_file_bytes {
            entry["not_stored"] = json!("too_large");
            return Ok(entry);
        }
        let file = self.bot.get_file(meta.id.clone()).await.map_err(failure)?;
        let mut data = Vec::with_capacity(meta.size as usize);
        self.bot
            .download_file(&file.path, &mut data)
            .await
            .map_err(|e| CommandError::Retry(format!("file download: {e}")))?;
        if data.len() as u64 > self.max_file_bytes {
            entry["not_stored"] = json!("too_large");
            return Ok(entry);
        }
        store(&self.blobs, data, entry).await
    }

    async fn message(
        &self,
        d: &Delivery,
        m: &Message,
        edited: bool,
    ) -> Result<Vec<Interaction>, CommandError> {
        let Some(from) = &m.from else {
            // Channel posts and anonymous admins: nobody to answer.
            MESSAGES.with_label_values(&["telegram", "ignored"]).inc();
            return Ok(Vec::new());
        };
        let mut attachments = Vec::new();
        if let Some(sizes) = m.photo()
            && let Some(best) = sizes
                .iter()
                .max_by_key(|p| u64::from(p.width) * u64::from(p.height))
        {
            attachments.push(
                self.fetch("photo", &best.file, None, Some("image/jpeg".into()))
                    .await?,
            );
        }
        if let Some(doc) = m.document() {
            let mime = doc.mime_type.as_ref().map(ToString::to_string);
            attachments.push(
                self.fetch("document", &doc.file, doc.file_name.clone(), mime)
                    .await?,
            );
        }
        if let Some(voice) = m.voice() {
            let mime = voice.mime_type.as_ref().map(ToString::to_string);
            attachments.push(self.fetch("voice", &voice.file, None, mime).await?);
        }
        let name = match &from.last_name {
            Some(last) => format!("{} {last}", from.first_name),
            None => from.first_name.clone(),
        };
        let chat = m.chat.id.0.to_string();
        let mut payload = json!({
            "chat_id": m.chat.id.0,
            "message_id": m.id.0,
            "text": m.text().or_else(|| m.caption()),
            "attachments": attachments,
            "update_id": d.id,
        });
        if let Some(username) = &from.username {
            payload["username"] = json!(username);
        }
        if edited {
            payload["edited"] = json!(true);
        }
        if let Some(sticker) = m.sticker() {
            payload["sticker"] = json!(sticker.emoji);
        }
        let contact = self.line.account(&from.id.0.to_string(), Some(name));
        let ev = self.line.event(
            Kind::MessageReceived,
            d,
            &chat,
            contact,
            super::unix_time(Some(m.date.timestamp())),
            payload,
        );
        MESSAGES.with_label_values(&["telegram", "received"]).inc();
        Ok(vec![ev])
    }
}

fn failure(e: RequestError) -> CommandError {
    match e {
        RequestError::Api(_) | RequestError::MigrateToChatId(_) => {
            CommandError::Rejected(format!("Telegram refused: {e}"))
        }
        other => CommandError::Retry(format!("Telegram: {other}")),
    }
}

impl Adapter for Telegram {
    fn lines(&self) -> Vec<String> {
        vec![self.line.target()]
    }

    fn run(&self, ctx: AdapterContext) -> BoxFuture<'static, ()> {
        let me = self.clone();
        Box::pin(async move {
            match me.mode {
                TelegramMode::Polling => me.poll(ctx).await,
                TelegramMode::Webhook => me.set_webhook(ctx).await,
            }
        })
    }

    fn execute<'a>(
        &'a self,
        cmd: &'a Command,
        ctx: &'a AdapterContext,
    ) -> BoxFuture<'a, Result<(), CommandError>> {
        Box::pin(async move {
            let text = super::command_text(cmd)?;
            let chat: i64 = self.line.peer_of(cmd)?.parse().map_err(|_| {
                CommandError::Rejected("the conversation names no Telegram chat".into())
            })?;
            self.line
                .deliver(cmd, ctx, async {
                    let sent = self
                        .bot
                        .send_message(ChatId(chat), text)
                        .await
                        .map_err(failure)?;
                    Ok(json!({"chat_id": chat, "message_id": sent.id.0}))
                })
                .await
        })
    }

    fn hooks(&self) -> Vec<(String, String)> {
        match self.mode {
            TelegramMode::Webhook => self.line.hook(),
            TelegramMode::Polling => Vec::new(),
        }
    }

    fn accept(&self, _line: &str, req: &HookRequest<'_>) -> Result<Accepted, HookError> {
        let Some(secret) = &self.webhook_secret else {
            return Err(HookError::NotFound);
        };
        let given = req.header("x-telegram-bot-api-secret-token").unwrap_or("");
        if !crate::same_secret(given.as_bytes(), secret.as_bytes()) {
            return Err(HookError::Forbidden("X-Telegram-Bot-Api-Secret-Token"));
        }
        let v = super::body_json(req.body)?;
        let id = v["update_id"]
            .as_i64()
            .ok_or_else(|| HookError::Malformed("no update_id".into()))?;
        Ok(Accepted {
            store: Some(id.to_string()),
            reply: HookReply::text(""),
        })
    }

    fn process<'a>(
        &'a self,
        d: &'a Delivery,
        _ctx: &'a AdapterContext,
    ) -> BoxFuture<'a, Result<Vec<Interaction>, CommandError>> {
        Box::pin(async move {
            let update: Update = match serde_json::from_slice(&d.body) {
                Ok(u) => u,
                Err(e) => return Err(CommandError::Rejected(format!("not an update: {e}"))),
            };
            match &update.kind {
                UpdateKind::Message(m) => self.message(d, m, false).await,
                UpdateKind::EditedMessage(m) => self.message(d, m, true).await,
                _ => {
                    MESSAGES.with_label_values(&["telegram", "ignored"]).inc();
                    Ok(Vec::new())
                }
            }
        })
    }
}
