//! JivoSite's Webhooks API: `chat_accepted` and `offline_message` become
//! leads with the visitor's campaign (`session.utm_json`) and page;
//! `chat_finished` brings the chat's transcript. JivoSite signs nothing,
//! so its webhook address carries the line's token
//! (`/v1/hooks/<line>/<token>`); a delivery id is the event and its chat
//! (or offline message), so JivoSite's retries make one lead.

use futures::future::BoxFuture;
use serde_json::{Value, json};
use switchboard_config::{ConfigError, JivositeConfig};
use switchboard_storage::{Campaign, Channel, Command, Contact, Interaction, Kind};

use super::Line;
use crate::inbox::Delivery;
use crate::metrics::MESSAGES;
use crate::{Accepted, Adapter, AdapterContext, CommandError, HookError, HookReply, HookRequest};

#[derive(Debug, Clone)]
pub(super) struct Jivosite {
    line: Line,
    token: String,
    country: phonenumber::country::Id,
}

impl Jivosite {
    pub(super) fn new(
        c: &JivositeConfig,
        key: &str,
        country: phonenumber::country::Id,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            line: Line::new(&c.name, Channel::Jivosite, &c.owner),
            token: c.token.resolve(&format!("{key}.token"))?,
            country,
        })
    }

    /// The visitor: by phone, else email, else JivoSite's visitor number.
    fn visitor(&self, v: &Value, fallback: &str) -> Contact {
        let visitor = &v["visitor"];
        let field = |k: &str| visitor[k].as_str().map(str::to_owned);
        let number = match &visitor["number"] {
            Value::String(s) if !s.is_empty() => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => fallback.to_owned(),
        };
        super::person(
            Channel::Jivosite,
            self.country,
            field("name"),
            field("phone"),
            field("email"),
            &number,
        )
    }
}

/// `session.utm_json` as JivoSite sends it.
fn campaign(v: &Value) -> Option<Campaign> {
    let utm = &v["session"]["utm_json"];
    Campaign::from_utm(|k| super::text(&utm[k])).known()
}

/// A chat's or offline message's own id, as text.
fn id_of(v: &Value) -> Option<String> {
    super::text(v).filter(|s| s.len() <= 100)
}

impl Adapter for Jivosite {
    fn lines(&self) -> Vec<String> {
        vec![self.line.target()]
    }

    fn run(&self, ctx: AdapterContext) -> BoxFuture<'static, ()> {
        self.line.idle(&ctx)
    }

    fn execute<'a>(
        &'a self,
        _cmd: &'a Command,
        _ctx: &'a AdapterContext,
    ) -> BoxFuture<'a, Result<(), CommandError>> {
        Box::pin(async {
            Err(CommandError::Rejected(
                "JivoSite chats are answered in JivoSite's own app".into(),
            ))
        })
    }

    fn hooks(&self) -> Vec<(String, String)> {
        self.line.hook()
    }

    fn accept(&self, _line: &str, req: &HookRequest<'_>) -> Result<Accepted, HookError> {
        super::address_token(req, &self.token)?;
        let v = super::body_json(req.body)?;
        let event = v["event_name"]
            .as_str()
            .ok_or_else(|| HookError::Malformed("no event_name".into()))?;
        let id = match event {
            "chat_accepted" | "chat_finished" => id_of(&v["chat_id"]),
            "offline_message" => id_of(&v["offline_message_id"]),
            _ => None,
        };
        let store = match (event, id) {
            ("chat_accepted" | "chat_finished" | "offline_message", Some(id)) => {
                Some(format!("{event}:{id}"))
            }
            ("chat_accepted" | "chat_finished" | "offline_message", None) => {
                return Err(HookError::Malformed(format!("{event} without its id")));
            }
            _ => None,
        };
        Ok(Accepted {
            store,
            reply: HookReply::json(&json!({"result": "ok"})),
        })
    }

    fn process<'a>(
        &'a self,
        d: &'a Delivery,
        _ctx: &'a AdapterContext,
    ) -> BoxFuture<'a, Result<Vec<Interaction>, CommandError>> {
        Box::pin(async move {
            let v = super::stored_json(d)?;
            let event = v["event_name"].as_str().unwrap_or("");
            let chat = id_of(&v["chat_id"]).unwrap_or_else(|| d.id.clone());
            let contact = self.visitor(&v, &chat);
            let at = super::unix_millis(Some(d.received_at));
            let page = json!({"url": v["page"]["url"], "title": v["page"]["title"]});
            let (kind, payload) = match event {
                "chat_accepted" => (
                    Kind::LeadReceived,
                    json!({"event": event, "chat_id": chat, "page": page, "agent": v["agent"]["name"],
                           "comment": v["visitor"]["description"]}),
                ),
                "offline_message" => (
                    Kind::LeadReceived,
                    json!({"event": event, "page": page, "comment": v["message"]}),
                ),
                "chat_finished" => {
                    let transcript: Vec<Value> = v["chat"]["messages"]
                        .as_array()
                        .map(|list| {
                            list.iter()
                                .map(|m| json!({"from": m["type"], "text": m["message"], "at": m["timestamp"]}))
                                .collect()
                        })
                        .unwrap_or_default();
                    (
                        Kind::MessageReceived,
                        json!({"event": event, "chat_id": chat, "page": page, "transcript": transcript}),
                    )
                }
                _ => return Ok(Vec::new()),
            };
            let mut ev = self.line.event(kind, d, &chat, contact, at, payload);
            ev.campaign = campaign(&v);
            MESSAGES
                .with_label_values(&[
                    "jivosite",
                    if kind == Kind::LeadReceived {
                        "lead"
                    } else {
                        "received"
                    },
                ])
                .inc();
            Ok(vec![ev])
        })
    }
}
