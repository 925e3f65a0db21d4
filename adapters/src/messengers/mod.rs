//! Messengers and lead services: Telegram (teloxide), VK (Callback API and
//! `messages.send`), Viber (REST bot API), JivoSite (Webhooks API), and
//! Roistat, CoMagic and UIS (`leads`: leads in, deal outcomes out), one
//! adapter per `[[channels]]` line; and the site's chat widget ([`Chat`]),
//! whose WebSocket the gateway carries.
//!
//! Every delivery is checked on the request path ([`crate::Adapter::accept`]:
//! signature or secret, the service's delivery id), stored in the
//! [`crate::inbox`], acknowledged, and turned into interactions from there
//! ([`crate::Adapter::process`]), so files are downloaded after the service
//! has its answer. Conversations are `<channel>:<line>:<peer>`: a reply from
//! the CRM names the conversation, and the peer in it is who gets the
//! message.

mod chat;
mod jivosite;
mod leads;
mod telegram;
mod viber;
mod vk;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use switchboard_config::{ChannelConfig, ConfigError};
use switchboard_storage::{Channel, Command, Contact, ContactKey, Interaction, Kind};
use time::OffsetDateTime;

use crate::blobs::Blobs;
use crate::inbox::Delivery;
use crate::metrics::MESSAGES;
use crate::{Adapter, AdapterContext, CommandError};

pub use chat::{Chat, ChatError, ChatMessage, Member, WidgetLine};

/// The adapters for `[[channels]]`, one per line.
pub fn build(
    configs: &[ChannelConfig],
    blobs: &Blobs,
    country: phonenumber::country::Id,
) -> Result<Vec<Arc<dyn Adapter>>, ConfigError> {
    let mut out: Vec<Arc<dyn Adapter>> = Vec::new();
    for (i, c) in configs.iter().enumerate() {
        let key = format!("channels[{i}]");
        match c {
            ChannelConfig::Telegram(t) => {
                out.push(Arc::new(telegram::Telegram::new(t, &key, blobs.clone())?));
            }
            ChannelConfig::Vk(v) => {
                out.push(Arc::new(vk::Vk::new(v, &key, country, blobs.clone())?));
            }
            ChannelConfig::Viber(v) => {
                out.push(Arc::new(viber::Viber::new(v, &key, blobs.clone())?));
            }
            ChannelConfig::Jivosite(j) => {
                out.push(Arc::new(jivosite::Jivosite::new(j, &key, country)?));
            }
            ChannelConfig::Roistat(r) => {
                out.push(Arc::new(leads::Roistat::new(r, &key, country)?));
            }
            ChannelConfig::Comagic(c) => out.push(Arc::new(leads::CallTracking::new(
                c,
                Channel::Comagic,
                &key,
                country,
            )?)),
            ChannelConfig::Uis(c) => out.push(Arc::new(leads::CallTracking::new(
                c,
                Channel::Uis,
                &key,
                country,
            )?)),
            // The chat widget's lines share one hub the gateway also
            // holds ([`Chat::new`]).
            ChannelConfig::Widget(_) | ChannelConfig::Team(_) => {}
        }
    }
    Ok(out)
}

/// Largest file taken from a VK or Viber message (Telegram's is
/// `max_file_bytes`); larger ones are recorded, not stored.
const MAX_DOWNLOAD: u64 = 25 * 1024 * 1024;

/// A file a service's message links to, downloaded into the attachment
/// store: `entry` gains `sha256` and `size`, or `not_stored` with why. Only
/// `https` addresses, or those of the service's own `api_url`, are
/// fetched (a webhook cannot make the gateway call anything else); a link
/// that is gone (4xx) is recorded as such and the message kept, while a
/// failure that may pass is retried with the delivery.
async fn download(
    http: &reqwest::Client,
    blobs: &Blobs,
    api_url: &str,
    url: &str,
    mut entry: Value,
) -> Result<Value, CommandError> {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        entry["not_stored"] = json!("not a URL");
        return Ok(entry);
    };
    let own = reqwest::Url::parse(api_url).is_ok_and(|api| api.origin() == parsed.origin());
    if parsed.scheme() != "https" && !own {
        entry["not_stored"] = json!("not an https link");
        return Ok(entry);
    }
    let mut resp = match http.get(parsed).send().await {
        Ok(r) if r.status().is_client_error() => {
            entry["not_stored"] = json!(format!("unavailable: {}", r.status()));
            return Ok(entry);
        }
        Ok(r) => r
            .error_for_status()
            .map_err(|e| CommandError::Retry(format!("file download: {}", e.without_url())))?,
        Err(e) => {
            return Err(CommandError::Retry(format!(
                "file download: {}",
                e.without_url()
            )));
        }
    };
    if resp.content_length().is_some_and(|n| n > MAX_DOWNLOAD) {
        entry["not_stored"] = json!("too_large");
        return Ok(entry);
    }
    let mut data = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| CommandError::Retry(format!("file download: {}", e.without_url())))?
    {
        if (data.len() + chunk.len()) as u64 > MAX_DOWNLOAD {
            entry["not_stored"] = json!("too_large");
            return Ok(entry);
        }
        data.extend_from_slice(&chunk);
    }
    store(blobs, data, entry).await
}

/// Puts a downloaded file into the content-addressed store (durably, off
/// the runtime) and records its digest and size in `entry`.
async fn store(blobs: &Blobs, data: Vec<u8>, mut entry: Value) -> Result<Value, CommandError> {
    let size = data.len();
    let blobs = blobs.clone();
    let sha = tokio::task::spawn_blocking(move || blobs.put(&data))
        .await
        .map_err(|e| CommandError::Retry(e.to_string()))?
        .map_err(|e| CommandError::Retry(format!("storing a file: {e}")))?;
    entry["sha256"] = json!(sha);
    entry["size"] = json!(size);
    Ok(entry)
}

/// The HTTP client of the services' APIs: bounded in time, rustls.
fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap_or_default()
}

/// One line: its name, kind and owner, and how its events look.
#[derive(Debug, Clone)]
struct Line {
    name: String,
    channel: Channel,
    owner: Option<String>,
}

impl Line {
    fn new(name: &str, channel: Channel, owner: &str) -> Self {
        Self {
            name: name.to_owned(),
            channel,
            owner: (!owner.is_empty()).then(|| owner.to_owned()),
        }
    }

    /// The webhook this line answers at `/v1/hooks/<name>`.
    fn hook(&self) -> Vec<(String, String)> {
        vec![(self.name.clone(), self.target())]
    }

    /// `run` of a line that only answers webhooks: healthy, nothing to
    /// keep open.
    fn idle(&self, ctx: &AdapterContext) -> futures::future::BoxFuture<'static, ()> {
        ctx.health.set(&self.target(), Ok(()));
        Box::pin(async {})
    }

    /// The command target (`telegram:<name>`).
    fn target(&self) -> String {
        format!("{}:{}", self.channel.as_str(), self.name)
    }

    fn conversation(&self, peer: &str) -> String {
        format!("{}:{}:{peer}", self.channel.as_str(), self.name)
    }

    /// The peer a reply goes to, from the command's conversation.
    fn peer_of<'a>(&self, cmd: &'a Command) -> Result<&'a str, CommandError> {
        let prefix = format!("{}:{}:", self.channel.as_str(), self.name);
        cmd.conversation
            .as_deref()
            .and_then(|c| c.strip_prefix(&prefix))
            .filter(|p| !p.is_empty())
            .ok_or_else(|| {
                CommandError::Rejected(format!(
                    "conversation {:?} is not one of line {}",
                    cmd.conversation,
                    self.target()
                ))
            })
    }

    fn account(&self, user_id: &str, name: Option<String>) -> Contact {
        Contact {
            key: ContactKey::account(self.channel, user_id).into_string(),
            phone: None,
            email: None,
            user_id: Some(user_id.to_owned()),
            name: name.filter(|n| !n.trim().is_empty()),
        }
    }

    /// The event of a delivery, in the conversation with `peer`. Its id is
    /// the same whenever the delivery is processed.
    fn event(
        &self,
        kind: Kind,
        delivery: &Delivery,
        peer: &str,
        contact: Contact,
        at: OffsetDateTime,
        mut payload: Value,
    ) -> Interaction {
        payload["line"] = json!(self.name);
        let mut ev = Interaction::new(kind, self.channel, contact, at, payload);
        ev.id = crate::stable_id(&format!("{}\n{}", self.name, delivery.id), Some(at));
        ev.manager.clone_from(&self.owner);
        ev.conversation = Some(self.conversation(peer));
        ev
    }

    /// `message.sent` for a command carried out, with what the service
    /// said (`result`: its message id).
    fn sent(&self, cmd: &Command, result: &Value) -> Interaction {
        let mut payload = json!({
            "line": self.name,
            "text": cmd.payload.get("text").cloned().unwrap_or(Value::Null),
            "command_id": cmd.id.to_string(),
        });
        if let (Some(p), Some(r)) = (payload.as_object_mut(), result.as_object()) {
            for (k, v) in r {
                p.insert(k.clone(), v.clone());
            }
        }
        let mut ev = Interaction::new(
            Kind::MessageSent,
            self.channel,
            cmd.contact.clone(),
            OffsetDateTime::now_utc(),
            payload,
        );
        ev.id = crate::stable_id(&format!("sent\n{}", cmd.id), Some(cmd.issued_at));
        ev.manager.clone_from(&cmd.manager);
        ev.conversation.clone_from(&cmd.conversation);
        ev
    }

    /// Carries out `cmd` at most once and publishes `message.sent` for it
    /// (again, with the same id, if a crash came between).
    async fn deliver<F>(
        &self,
        cmd: &Command,
        ctx: &AdapterContext,
        send: F,
    ) -> Result<(), CommandError>
    where
        F: std::future::Future<Output = Result<Value, CommandError>>,
    {
        let result = self.once(cmd, ctx, send).await?;
        ctx.feed
            .publish(&self.sent(cmd, &result))
            .await
            .map_err(|e| CommandError::Retry(e.to_string()))?;
        Ok(())
    }

    /// Carries out `cmd` at most once: `send` runs unless a run before
    /// finished, and what it returned is recorded in the inbox's ledger.
    /// The result: this run's, or the recorded one.
    async fn once<F>(
        &self,
        cmd: &Command,
        ctx: &AdapterContext,
        send: F,
    ) -> Result<Value, CommandError>
    where
        F: std::future::Future<Output = Result<Value, CommandError>>,
    {
        let id = cmd.id.to_string();
        let known = ctx
            .inbox
            .was_done(&id)
            .await
            .map_err(|e| CommandError::Retry(e.to_string()))?;
        let result = match known {
            Some(r) => serde_json::from_str(&r).unwrap_or(Value::Null),
            None => {
                let channel = self.channel.as_str();
                let result = send.await.inspect_err(|_| {
                    MESSAGES.with_label_values(&[channel, "send_failed"]).inc();
                })?;
                MESSAGES.with_label_values(&[channel, "sent"]).inc();
                if let Err(e) = ctx.inbox.command_done(&id, &result.to_string()).await {
                    tracing::error!(command = %id, error = %e, "sent, but not recorded: a replay would send it again");
                }
                result
            }
        };
        Ok(result)
    }
}

/// A field as text: strings as they are (trimmed), numbers written out;
/// empty and absent are `None`.
fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A delivery to `/v1/hooks/<line>/<token>` of a service that signs
/// nothing: the address's token must be the line's.
fn address_token(req: &crate::HookRequest<'_>, token: &str) -> Result<(), crate::HookError> {
    let given = req.token.unwrap_or("");
    if crate::same_secret(given.as_bytes(), token.as_bytes()) {
        Ok(())
    } else {
        Err(crate::HookError::Forbidden("the address's token"))
    }
}

/// A person a lead service reports: keyed by phone, else email, else the
/// service's own id of them (`fallback`).
fn person(
    channel: Channel,
    country: phonenumber::country::Id,
    name: Option<String>,
    phone: Option<String>,
    email: Option<String>,
    fallback: &str,
) -> Contact {
    let phone = phone.and_then(|p| crate::contact::normalize_phone(&p, country).ok());
    let email = email.and_then(|e| crate::contact::normalize_email(&e).ok());
    let key = match (&phone, &email) {
        (Some(p), _) => ContactKey::phone(p),
        (None, Some(e)) => ContactKey::email(e),
        (None, None) => ContactKey::account(channel, fallback),
    };
    Contact {
        key: key.into_string(),
        phone,
        email,
        user_id: Some(fallback.to_owned()),
        name: name.filter(|n| !n.trim().is_empty()),
    }
}

/// The text of a `message.send` command.
fn command_text(cmd: &Command) -> Result<&str, CommandError> {
    if cmd.kind != switchboard_storage::CommandKind::MessageSend {
        return Err(CommandError::Rejected(format!(
            "{:?} is not carried out on this channel",
            cmd.kind
        )));
    }
    cmd.payload
        .get("text")
        .and_then(Value::as_str)
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| CommandError::Rejected("no text to send".into()))
}

/// Classifies a failed HTTP exchange with a service's API.
fn http_failure(what: &str, e: &reqwest::Error) -> CommandError {
    match e.status() {
        Some(s) if s.is_client_error() && s.as_u16() != 429 => {
            CommandError::Rejected(format!("{what}: {e}"))
        }
        _ => CommandError::Retry(format!("{what}: {e}")),
    }
}

/// The delivery body as JSON, or why not.
fn body_json(body: &[u8]) -> Result<Value, crate::HookError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| crate::HookError::Malformed(format!("not JSON: {e}")))?;
    if v.is_object() {
        Ok(v)
    } else {
        Err(crate::HookError::Malformed("not a JSON object".into()))
    }
}

/// A stored delivery that does not parse any more cannot become anything;
/// it is kept in the inbox, marked rejected.
fn stored_json(d: &Delivery) -> Result<Value, CommandError> {
    serde_json::from_slice(&d.body).map_err(|e| CommandError::Rejected(format!("stored body: {e}")))
}

/// Unix seconds (as Telegram and VK send them) to a time; now when absent.
fn unix_time(secs: Option<i64>) -> OffsetDateTime {
    unix_millis(secs.map(|s| s.saturating_mul(1000)))
}

/// Unix milliseconds (Viber's, and the inbox's) to a time; now when absent.
fn unix_millis(ms: Option<i64>) -> OffsetDateTime {
    ms.and_then(|ms| OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok())
        .unwrap_or_else(OffsetDateTime::now_utc)
}

#[cfg(test)]
mod tests;
