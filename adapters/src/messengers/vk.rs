//! A VK community: the Callback API in (the `confirmation` handshake, the
//! `secret` check, `message_new`, `market_order_new` as a lead with the
//! order's items and sum) and `messages.send` out, with a `random_id` taken
//! from the command's id so a resent command is one message.

use futures::future::BoxFuture;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use switchboard_config::{ConfigError, VkConfig};
use switchboard_storage::{Campaign, Channel, Command, ContactKey, Interaction, Kind};

use super::{Line, http_client};
use crate::blobs::Blobs;
use crate::inbox::Delivery;
use crate::metrics::MESSAGES;
use crate::{Accepted, Adapter, AdapterContext, CommandError, HookError, HookReply, HookRequest};

#[derive(Debug, Clone)]
pub(super) struct Vk {
    line: Line,
    group_id: u64,
    confirmation: String,
    secret: String,
    access_token: String,
    api_url: String,
    api_version: String,
    country: phonenumber::country::Id,
    http: reqwest::Client,
    blobs: Blobs,
}

impl Vk {
    pub(super) fn new(
        c: &VkConfig,
        key: &str,
        country: phonenumber::country::Id,
        blobs: Blobs,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            line: Line::new(&c.name, Channel::Vk, &c.owner),
            group_id: c.group_id,
            confirmation: c.confirmation.clone(),
            secret: c.secret.resolve(&format!("{key}.secret"))?,
            access_token: c.access_token.resolve(&format!("{key}.access_token"))?,
            api_url: c.api_url.trim_end_matches('/').to_owned(),
            api_version: c.api_version.clone(),
            country,
            http: http_client(),
            blobs,
        })
    }

    async fn message(
        &self,
        d: &Delivery,
        object: &Value,
    ) -> Result<Vec<Interaction>, CommandError> {
        let m = &object["message"];
        let (Some(from), Some(peer)) = (m["from_id"].as_i64(), m["peer_id"].as_i64()) else {
            MESSAGES.with_label_values(&["vk", "rejected"]).inc();
            return Ok(Vec::new());
        };
        if from <= 0 {
            // Another community or our own message echoed back.
            MESSAGES.with_label_values(&["vk", "ignored"]).inc();
            return Ok(Vec::new());
        }
        let mut attachments = Vec::new();
        for a in m["attachments"].as_array().into_iter().flatten() {
            let (entry, url) = attachment(a);
            attachments.push(match url {
                Some(url) => {
                    super::download(&self.http, &self.blobs, &self.api_url, &url, entry).await?
                }
                None => entry,
            });
        }
        let payload = json!({
            "peer_id": peer,
            "message_id": m["id"],
            "text": m["text"].as_str().filter(|t| !t.is_empty()),
            "attachments": attachments,
            "event_id": d.id,
        });
        let contact = self.line.account(&from.to_string(), None);
        let at = super::unix_time(m["date"].as_i64());
        let ev = self.line.event(
            Kind::MessageReceived,
            d,
            &peer.to_string(),
            contact,
            at,
            payload,
        );
        MESSAGES.with_label_values(&["vk", "received"]).inc();
        Ok(vec![ev])
    }

    fn order(&self, d: &Delivery, o: &Value) -> Vec<Interaction> {
        let Some(user) = o["user_id"].as_i64() else {
            MESSAGES.with_label_values(&["vk", "rejected"]).inc();
            return Vec::new();
        };
        let recipient = &o["recipient"];
        let mut contact = self.line.account(
            &user.to_string(),
            recipient["name"].as_str().map(str::to_owned),
        );
        if let Some(phone) = recipient["phone"]
            .as_str()
            .and_then(|p| crate::contact::normalize_phone(p, self.country).ok())
        {
            contact.key = ContactKey::phone(&phone).into_string();
            contact.phone = Some(phone);
        }
        let items: Vec<Value> = o["preview_order_items"]
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|i| {
                        json!({
                            "title": i["title"].as_str().or_else(|| i["item"]["title"].as_str()),
                            "quantity": i["quantity"],
                            "price": money(&i["price"]),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let payload = json!({
            "order_id": o["id"],
            "display_order_id": o["display_order_id"],
            "items": items,
            "sum": money(&o["total_price"]),
            "currency": o["total_price"]["currency"]["name"],
            "comment": o["comment"],
            "address": o["delivery"]["address"],
            "event_id": d.id,
        });
        let at = super::unix_time(o["date"].as_i64());
        let mut ev = self.line.event(
            Kind::LeadReceived,
            d,
            &user.to_string(),
            contact,
            at,
            payload,
        );
        ev.campaign = Some(Campaign {
            source: Some("vk".into()),
            medium: Some("market".into()),
            ..Campaign::default()
        });
        MESSAGES.with_label_values(&["vk", "lead"]).inc();
        vec![ev]
    }
}

/// VK prices are in hundredths (`"amount": "123400"` is 1234.00).
fn money(price: &Value) -> Value {
    let amount = match &price["amount"] {
        Value::String(s) => s.parse::<i64>().ok(),
        v => v.as_i64(),
    };
    amount.map_or(Value::Null, |a| json!(a as f64 / 100.0))
}

/// What a message's attachment is; VK's files stay on VK's servers.
/// What a message's attachment is, and the file to download for it.
fn attachment(a: &Value) -> (Value, Option<String>) {
    let kind = a["type"].as_str().unwrap_or("unknown");
    let body = &a[kind];
    let url = match kind {
        "photo" => body["sizes"].as_array().and_then(|sizes| {
            sizes
                .iter()
                .max_by_key(|s| {
                    s["width"].as_i64().unwrap_or(0) * s["height"].as_i64().unwrap_or(0)
                })
                .and_then(|s| s["url"].as_str())
        }),
        "doc" => body["url"].as_str(),
        "audio_message" => body["link_ogg"].as_str(),
        _ => None,
    };
    (
        json!({"kind": kind, "url": url, "name": body["title"]}),
        url.map(str::to_owned),
    )
}

impl Adapter for Vk {
    fn lines(&self) -> Vec<String> {
        vec![self.line.target()]
    }

    fn run(&self, ctx: AdapterContext) -> BoxFuture<'static, ()> {
        // Callbacks come to us; nothing to keep open.
        self.line.idle(&ctx)
    }

    fn execute<'a>(
        &'a self,
        cmd: &'a Command,
        ctx: &'a AdapterContext,
    ) -> BoxFuture<'a, Result<(), CommandError>> {
        Box::pin(async move {
            let text = super::command_text(cmd)?;
            let peer: i64 =
                self.line.peer_of(cmd)?.parse().map_err(|_| {
                    CommandError::Rejected("the conversation names no VK peer".into())
                })?;
            // The same command always gets the same random_id, so VK sends
            // a repeated call once.
            let digest = Sha256::digest(cmd.id.as_bytes());
            let random_id = i32::from_be_bytes([digest[0] & 0x7f, digest[1], digest[2], digest[3]]);
            self.line
                .deliver(cmd, ctx, async {
                    let form = [
                        ("access_token", self.access_token.clone()),
                        ("v", self.api_version.clone()),
                        ("peer_id", peer.to_string()),
                        ("message", text.to_owned()),
                        ("random_id", random_id.to_string()),
                    ];
                    let resp = self
                        .http
                        .post(format!("{}/method/messages.send", self.api_url))
                        .form(&form)
                        .send()
                        .await
                        .and_then(reqwest::Response::error_for_status)
                        .map_err(|e| super::http_failure("messages.send", &e.without_url()))?;
                    let v: Value = resp
                        .json()
                        .await
                        .map_err(|e| CommandError::Retry(format!("messages.send: {e}")))?;
                    if let Some(err) = v.get("error") {
                        let code = err["error_code"].as_i64().unwrap_or(0);
                        let why = format!("messages.send: {code} {}", err["error_msg"].as_str().unwrap_or(""));
                        // 1 unknown, 6 too many requests, 10 internal: may pass.
                        return Err(if matches!(code, 1 | 6 | 10) {
                            CommandError::Retry(why)
                        } else {
                            CommandError::Rejected(why)
                        });
                    }
                    Ok(json!({"peer_id": peer, "message_id": v["response"], "random_id": random_id}))
                })
                .await
        })
    }

    fn hooks(&self) -> Vec<(String, String)> {
        self.line.hook()
    }

    fn accept(&self, _line: &str, req: &HookRequest<'_>) -> Result<Accepted, HookError> {
        let v = super::body_json(req.body)?;
        if v["group_id"].as_u64() != Some(self.group_id) {
            return Err(HookError::Forbidden("group_id is not this community's"));
        }
        let secret = v["secret"].as_str();
        let kind = v["type"].as_str().unwrap_or("");
        if kind == "confirmation" {
            // VK asks before it sends anything; a secret, if sent, must match.
            if secret.is_some_and(|s| !crate::same_secret(s.as_bytes(), self.secret.as_bytes())) {
                return Err(HookError::Forbidden("secret"));
            }
            return Ok(Accepted {
                store: None,
                reply: HookReply::text(self.confirmation.clone()),
            });
        }
        if !secret.is_some_and(|s| crate::same_secret(s.as_bytes(), self.secret.as_bytes())) {
            return Err(HookError::Forbidden("secret"));
        }
        let id = v["event_id"]
            .as_str()
            .filter(|id| !id.is_empty() && id.len() <= 100)
            .ok_or_else(|| HookError::Malformed("no event_id".into()))?;
        let store = matches!(kind, "message_new" | "market_order_new").then(|| id.to_owned());
        Ok(Accepted {
            store,
            reply: HookReply::text("ok"),
        })
    }

    fn process<'a>(
        &'a self,
        d: &'a Delivery,
        _ctx: &'a AdapterContext,
    ) -> BoxFuture<'a, Result<Vec<Interaction>, CommandError>> {
        Box::pin(async move {
            let v = super::stored_json(d)?;
            Ok(match v["type"].as_str() {
                Some("message_new") => self.message(d, &v["object"]).await?,
                Some("market_order_new") => self.order(d, &v["object"]),
                _ => Vec::new(),
            })
        })
    }
}
