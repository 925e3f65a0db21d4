//! A Viber bot: webhooks signed with `X-Viber-Content-Signature` (the
//! body's HMAC-SHA256 keyed with the bot's token, in hex) and messages sent
//! with `/pa/send_message`.

use futures::future::BoxFuture;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use switchboard_config::{ConfigError, ViberConfig};
use switchboard_storage::{Channel, Command, Interaction, Kind};

use super::{Line, http_client};
use crate::blobs::Blobs;
use crate::inbox::Delivery;
use crate::metrics::MESSAGES;
use crate::{Accepted, Adapter, AdapterContext, CommandError, HookError, HookReply, HookRequest};

#[derive(Debug, Clone)]
pub(super) struct Viber {
    line: Line,
    auth_token: String,
    sender_name: String,
    api_url: String,
    http: reqwest::Client,
    blobs: Blobs,
}

impl Viber {
    pub(super) fn new(c: &ViberConfig, key: &str, blobs: Blobs) -> Result<Self, ConfigError> {
        Ok(Self {
            line: Line::new(&c.name, Channel::Viber, &c.owner),
            auth_token: c.auth_token.resolve(&format!("{key}.auth_token"))?,
            sender_name: c.sender_name.clone(),
            api_url: c.api_url.trim_end_matches('/').to_owned(),
            http: http_client(),
            blobs,
        })
    }

    fn signed(&self, body: &[u8], signature: &str) -> bool {
        let Ok(given) = hex::decode(signature.trim()) else {
            return false;
        };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(self.auth_token.as_bytes()) else {
            return false;
        };
        mac.update(body);
        mac.verify_slice(&given).is_ok()
    }
}

impl Adapter for Viber {
    fn lines(&self) -> Vec<String> {
        vec![self.line.target()]
    }

    fn run(&self, ctx: AdapterContext) -> BoxFuture<'static, ()> {
        self.line.idle(&ctx)
    }

    fn execute<'a>(
        &'a self,
        cmd: &'a Command,
        ctx: &'a AdapterContext,
    ) -> BoxFuture<'a, Result<(), CommandError>> {
        Box::pin(async move {
            let text = super::command_text(cmd)?;
            let receiver = self.line.peer_of(cmd)?;
            self.line
                .deliver(cmd, ctx, async {
                    let body = json!({
                        "receiver": receiver,
                        "min_api_version": 1,
                        "sender": {"name": self.sender_name},
                        "type": "text",
                        "text": text,
                    });
                    let resp = self
                        .http
                        .post(format!("{}/pa/send_message", self.api_url))
                        .header("X-Viber-Auth-Token", &self.auth_token)
                        .json(&body)
                        .send()
                        .await
                        .and_then(reqwest::Response::error_for_status)
                        .map_err(|e| super::http_failure("send_message", &e.without_url()))?;
                    let v: Value = resp
                        .json()
                        .await
                        .map_err(|e| CommandError::Retry(format!("send_message: {e}")))?;
                    match v["status"].as_i64() {
                        Some(0) => {
                            Ok(json!({"receiver": receiver, "message_token": v["message_token"]}))
                        }
                        // 12: too many requests.
                        Some(12) => Err(CommandError::Retry(
                            "send_message: too many requests".into(),
                        )),
                        status => Err(CommandError::Rejected(format!(
                            "send_message: status {status:?}: {}",
                            v["status_message"].as_str().unwrap_or("")
                        ))),
                    }
                })
                .await
        })
    }

    fn hooks(&self) -> Vec<(String, String)> {
        self.line.hook()
    }

    fn accept(&self, _line: &str, req: &HookRequest<'_>) -> Result<Accepted, HookError> {
        let signature = req
            .header("x-viber-content-signature")
            .ok_or(HookError::Forbidden("no X-Viber-Content-Signature"))?;
        if !self.signed(req.body, signature) {
            return Err(HookError::Forbidden("X-Viber-Content-Signature"));
        }
        let v = super::body_json(req.body)?;
        let event = v["event"]
            .as_str()
            .ok_or_else(|| HookError::Malformed("no event".into()))?;
        let store = if event == "message" {
            let token = match &v["message_token"] {
                Value::Number(n) => n.to_string(),
                Value::String(s) if !s.is_empty() => s.clone(),
                _ => {
                    return Err(HookError::Malformed(
                        "a message without message_token".into(),
                    ));
                }
            };
            Some(token)
        } else {
            // webhook (the set-up check), delivered, seen, subscribed…
            None
        };
        Ok(Accepted {
            store,
            reply: HookReply::text(""),
        })
    }

    fn process<'a>(
        &'a self,
        d: &'a Delivery,
        _ctx: &'a AdapterContext,
    ) -> BoxFuture<'a, Result<Vec<Interaction>, CommandError>> {
        Box::pin(async move {
            let v = super::stored_json(d)?;
            let sender = &v["sender"];
            let Some(user) = sender["id"].as_str().filter(|s| !s.is_empty()) else {
                MESSAGES.with_label_values(&["viber", "rejected"]).inc();
                return Ok(Vec::new());
            };
            let m = &v["message"];
            let mut payload = json!({
                "type": m["type"],
                "text": m["text"],
                "media": m["media"],
                "file_name": m["file_name"],
                "message_token": d.id,
            });
            // picture, video, file: the media link is downloaded and kept.
            if let Some(url) = m["media"].as_str().filter(|_| m["type"] != "sticker") {
                let entry = json!({"kind": m["type"], "name": m["file_name"], "url": url});
                payload["attachments"] =
                    json!([
                        super::download(&self.http, &self.blobs, &self.api_url, url, entry).await?
                    ]);
            }
            let at = super::unix_millis(v["timestamp"].as_i64());
            let contact = self
                .line
                .account(user, sender["name"].as_str().map(str::to_owned));
            let ev = self
                .line
                .event(Kind::MessageReceived, d, user, contact, at, payload);
            MESSAGES.with_label_values(&["viber", "received"]).inc();
            Ok(vec![ev])
        })
    }
}
