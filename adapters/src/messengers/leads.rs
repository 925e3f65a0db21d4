//! Lead services with end-to-end analytics: Roistat, CoMagic and UIS.
//!
//! Their webhooks carry no signature, so each line's address holds a
//! secret (`/v1/hooks/<line>/<token>`). A delivery becomes `lead.received`
//! with the campaign the service attributed it to — UTM tags and the
//! service's visit id — and the service's own id of the lead, which is
//! also the delivery id: a redelivery is acknowledged and ignored.
//!
//! When the CRM closes a deal of a client whose lead came from one of them,
//! it issues `deal.report` to that line; the outcome (won or lost, amount)
//! goes back to the service so its reports tie ad spend to money:
//! - Roistat: `POST <api>/project/add-orders?project=<n>` with the
//!   `Api-key` header, after `project/set-statuses` has told Roistat our
//!   three statuses (`open`, `won` as paid, `lost` as canceled).
//! - CoMagic and UIS (one platform): the Data API's JSON-RPC 2.0 method
//!   `upload.deals_history`, the deal tied to the lead's `communication_id`
//!   and `communication_type`.

use std::sync::atomic::{AtomicBool, Ordering};

use futures::future::BoxFuture;
use serde_json::{Map, Value, json};
use switchboard_config::{CallTrackingConfig, ConfigError, RoistatConfig};
use switchboard_storage::{Campaign, Channel, Command, CommandKind, Interaction, Kind};
use time::OffsetDateTime;
use time::macros::format_description;

use super::{Line, http_client, text};
use crate::inbox::Delivery;
use crate::metrics::MESSAGES;
use crate::{Accepted, Adapter, AdapterContext, CommandError, HookError, HookReply, HookRequest};

/// UTM tags (`utm_source`, …) from the first of `places` (objects) that
/// has each, and the service's visit id.
fn utm(places: &[&Value], visit_id: Option<String>) -> Option<Campaign> {
    let mut c = Campaign::from_utm(|k| {
        places
            .iter()
            .find_map(|p| text(&p[format!("utm_{k}").as_str()]))
    });
    c.visit_id = visit_id;
    c.known()
}

/// What a `deal.report` command carries (set by the CRM).
struct DealOutcome<'a> {
    deal_id: &'a str,
    title: &'a str,
    status: &'a str,
    /// In major units (roubles), as the services want it.
    amount: f64,
    created_at: OffsetDateTime,
    lead: &'a Value,
}

impl<'a> DealOutcome<'a> {
    fn of(cmd: &'a Command) -> Result<Self, CommandError> {
        if cmd.kind != CommandKind::DealReport {
            return Err(CommandError::Rejected(format!(
                "{:?} is not carried out by a lead service",
                cmd.kind
            )));
        }
        let p = &cmd.payload;
        let deal_id = p["deal_id"]
            .as_str()
            .ok_or_else(|| CommandError::Rejected("deal.report without deal_id".into()))?;
        let status = p["status"]
            .as_str()
            .filter(|s| matches!(*s, "open" | "won" | "lost"))
            .ok_or_else(|| {
                CommandError::Rejected("deal.report status is not open, won or lost".into())
            })?;
        #[allow(clippy::cast_precision_loss)]
        let amount = p["amount_minor"].as_i64().unwrap_or(0) as f64 / 100.0;
        let created_at = p["created_at"]
            .as_str()
            .and_then(|t| {
                OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
            })
            .unwrap_or(cmd.issued_at);
        Ok(Self {
            deal_id,
            title: p["title"].as_str().unwrap_or(""),
            status,
            amount,
            created_at,
            lead: &p["lead"],
        })
    }
}

/// Roistat: leads in, deal outcomes out.
#[derive(Debug)]
pub(super) struct Roistat {
    line: Line,
    token: String,
    project: u64,
    api_key: String,
    api_url: String,
    country: phonenumber::country::Id,
    http: reqwest::Client,
    statuses_set: AtomicBool,
}

impl Roistat {
    pub(super) fn new(
        c: &RoistatConfig,
        key: &str,
        country: phonenumber::country::Id,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            line: Line::new(&c.name, Channel::Roistat, &c.owner),
            token: c.token.resolve(&format!("{key}.token"))?,
            project: c.project,
            api_key: c.api_key.resolve(&format!("{key}.api_key"))?,
            api_url: c.api_url.trim_end_matches('/').to_owned(),
            country,
            http: http_client(),
            statuses_set: AtomicBool::new(false),
        })
    }

    /// One call of Roistat's API; `{"status": "success"}` or why not.
    async fn call(&self, method: &str, body: &Value) -> Result<Value, CommandError> {
        let resp = self
            .http
            .post(format!("{}/project/{method}", self.api_url))
            .query(&[("project", self.project)])
            .header("Api-key", &self.api_key)
            .json(body)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| super::http_failure(method, &e.without_url()))?;
        let v: Value = resp
            .json()
            .await
            .map_err(|e| CommandError::Retry(format!("{method}: {e}")))?;
        if v["status"].as_str() == Some("success") {
            return Ok(v);
        }
        let why = format!(
            "{method}: {}",
            text(&v["error"]).unwrap_or_else(|| v.to_string())
        );
        // Roistat answers request_limit_error when called too often.
        Err(if why.contains("limit") {
            CommandError::Retry(why)
        } else {
            CommandError::Rejected(why)
        })
    }

    async fn report(&self, cmd: &Command) -> Result<Value, CommandError> {
        let deal = DealOutcome::of(cmd)?;
        if !self.statuses_set.load(Ordering::Acquire) {
            let statuses = json!([
                {"id": "open", "name": "В работе", "type": "progress"},
                {"id": "won", "name": "Успешно", "type": "paid"},
                {"id": "lost", "name": "Отказ", "type": "canceled"},
            ]);
            self.call("set-statuses", &statuses).await?;
            self.statuses_set.store(true, Ordering::Release);
        }
        let order = json!({
            "id": deal.deal_id,
            "name": deal.title,
            "date_create": deal.created_at.unix_timestamp(),
            "status": deal.status,
            "price": format!("{:.2}", deal.amount),
            "roistat": deal.lead["visit_id"],
            "client_id": cmd.payload["client_id"],
            "fields": {"lead_id": deal.lead["lead_id"], "currency": cmd.payload["currency"]},
        });
        self.call("add-orders", &json!([order])).await?;
        Ok(json!({"order_id": deal.deal_id, "status": deal.status}))
    }
}

impl Adapter for Roistat {
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
            self.line.once(cmd, ctx, self.report(cmd)).await?;
            Ok(())
        })
    }

    fn hooks(&self) -> Vec<(String, String)> {
        self.line.hook()
    }

    /// A lead as Roistat sends it: `id`, `title`, `name`, `phone`,
    /// `email`, `text`, `roistat` (the visit), `creation_date`, and the
    /// form's `fields` (UTM tags among them, or at the top level).
    fn accept(&self, _line: &str, req: &HookRequest<'_>) -> Result<Accepted, HookError> {
        super::address_token(req, &self.token)?;
        let v = super::body_json(req.body)?;
        let id =
            text(&v["id"]).ok_or_else(|| HookError::Malformed("a lead without its id".into()))?;
        if id.len() > 100 {
            return Err(HookError::Malformed(
                "the lead's id is longer than 100".into(),
            ));
        }
        Ok(Accepted {
            store: Some(format!("lead:{id}")),
            reply: HookReply::json(&json!({"status": "ok"})),
        })
    }

    fn process<'a>(
        &'a self,
        d: &'a Delivery,
        _ctx: &'a AdapterContext,
    ) -> BoxFuture<'a, Result<Vec<Interaction>, CommandError>> {
        Box::pin(async move {
            let v = super::stored_json(d)?;
            let id = text(&v["id"]).unwrap_or_else(|| d.id.clone());
            let visit = text(&v["roistat"]);
            let contact = super::person(
                Channel::Roistat,
                self.country,
                text(&v["name"]),
                text(&v["phone"]),
                text(&v["email"]),
                visit.as_deref().unwrap_or(&id),
            );
            let fields = if v["fields"].is_object() {
                &v["fields"]
            } else {
                &v["order_fields"]
            };
            let payload = json!({
                "lead_id": id,
                "title": text(&v["title"]),
                "comment": text(&v["text"]).or_else(|| text(&fields["message"])),
                "fields": fields,
            });
            let at = super::unix_millis(Some(d.received_at));
            let mut ev = self
                .line
                .event(Kind::LeadReceived, d, &id, contact, at, payload);
            ev.campaign = utm(&[&v, fields], visit).map(|mut c| {
                c.source = c.source.or_else(|| text(&v["source"]));
                c
            });
            MESSAGES.with_label_values(&["roistat", "lead"]).inc();
            Ok(vec![ev])
        })
    }
}

/// CoMagic or UIS: call and request notifications in, deal outcomes out.
#[derive(Debug)]
pub(super) struct CallTracking {
    line: Line,
    token: String,
    access_token: String,
    api_url: String,
    country: phonenumber::country::Id,
    http: reqwest::Client,
}

impl CallTracking {
    pub(super) fn new(
        c: &CallTrackingConfig,
        channel: Channel,
        key: &str,
        country: phonenumber::country::Id,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            line: Line::new(&c.name, channel, &c.owner),
            token: c.token.resolve(&format!("{key}.token"))?,
            access_token: c.access_token.resolve(&format!("{key}.access_token"))?,
            api_url: c.api_url(channel.as_str()),
            country,
            http: http_client(),
        })
    }

    fn channel(&self) -> &'static str {
        self.line.channel.as_str()
    }

    async fn report(&self, cmd: &Command) -> Result<Value, CommandError> {
        let deal = DealOutcome::of(cmd)?;
        let communication_id = deal.lead["communication_id"]
            .as_i64()
            .or_else(|| text(&deal.lead["communication_id"]).and_then(|s| s.parse().ok()))
            .ok_or_else(|| CommandError::Rejected("the lead carries no communication_id".into()))?;
        let format = format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
        let created = deal
            .created_at
            .format(&format)
            .map_err(|e| CommandError::Rejected(e.to_string()))?;
        let request = json!({
            "jsonrpc": "2.0",
            "id": cmd.id.to_string(),
            "method": "upload.deals_history",
            "params": {
                "access_token": self.access_token,
                "deals": [{
                    "ext_id": deal.deal_id,
                    "name": deal.title,
                    "create_date": created,
                    "status": deal.status,
                    "amount": deal.amount,
                    "communication_id": communication_id,
                    "communication_type": text(&deal.lead["communication_type"]).unwrap_or_else(|| "call".into()),
                }],
            },
        });
        let resp = self
            .http
            .post(&self.api_url)
            .json(&request)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| super::http_failure("upload.deals_history", &e.without_url()))?;
        let v: Value = resp
            .json()
            .await
            .map_err(|e| CommandError::Retry(format!("upload.deals_history: {e}")))?;
        if let Some(err) = v.get("error") {
            let code = err["code"].as_i64().unwrap_or(0);
            let why = format!(
                "upload.deals_history: {code} {}",
                err["message"].as_str().unwrap_or("")
            );
            // JSON-RPC's -32603 internal error and the platform's -32008
            // limit exceeded may pass; the rest will not.
            return Err(if matches!(code, -32603 | -32008) {
                CommandError::Retry(why)
            } else {
                CommandError::Rejected(why)
            });
        }
        Ok(
            json!({"deal_id": deal.deal_id, "status": deal.status, "communication_id": communication_id}),
        )
    }
}

impl Adapter for CallTracking {
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
            self.line.once(cmd, ctx, self.report(cmd)).await?;
            Ok(())
        })
    }

    fn hooks(&self) -> Vec<(String, String)> {
        self.line.hook()
    }

    /// A notification whose body (a template in the account's settings)
    /// carries the platform's variables: `communication_id` and
    /// `communication_type` (call, offline_message, chat), the caller's
    /// `contact_phone_number`, `contact_email`, `contact_full_name`,
    /// `virtual_phone_number`, `utm_*`, `visitor_session_id`,
    /// `site_domain_name`, `campaign_name`, `message`. One lead per
    /// communication: later notifications of it are acknowledged only.
    fn accept(&self, _line: &str, req: &HookRequest<'_>) -> Result<Accepted, HookError> {
        super::address_token(req, &self.token)?;
        let v = super::body_json(req.body)?;
        let id = text(&v["communication_id"])
            .or_else(|| text(&v["call_session_id"]))
            .filter(|id| id.len() <= 100)
            .ok_or_else(|| HookError::Malformed("no communication_id".into()))?;
        let kind = text(&v["communication_type"]).unwrap_or_else(|| "call".into());
        Ok(Accepted {
            store: Some(format!("{kind}:{id}")),
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
            let id = text(&v["communication_id"])
                .or_else(|| text(&v["call_session_id"]))
                .unwrap_or_else(|| d.id.clone());
            let kind = text(&v["communication_type"]).unwrap_or_else(|| "call".into());
            let contact = super::person(
                self.line.channel,
                self.country,
                text(&v["contact_full_name"]),
                text(&v["contact_phone_number"]),
                text(&v["contact_email"]),
                &text(&v["visitor_id"]).unwrap_or_else(|| id.clone()),
            );
            let mut payload = Map::new();
            payload.insert(
                "communication_id".into(),
                id.parse::<i64>().map_or_else(|_| json!(id), |n| json!(n)),
            );
            payload.insert("communication_type".into(), json!(kind));
            for key in [
                "notification_name",
                "virtual_phone_number",
                "site_domain_name",
                "campaign_name",
                "message",
                "call_session_id",
            ] {
                if let Some(t) = text(&v[key]) {
                    payload.insert(key.into(), json!(t));
                }
            }
            let at = super::unix_millis(Some(d.received_at));
            let mut ev = self.line.event(
                Kind::LeadReceived,
                d,
                &id,
                contact,
                at,
                Value::Object(payload),
            );
            let visit = text(&v["visitor_session_id"]).or_else(|| text(&v["visitor_id"]));
            ev.campaign = utm(&[&v], visit).map(|mut c| {
                c.campaign = c.campaign.or_else(|| text(&v["campaign_name"]));
                c
            });
            MESSAGES.with_label_values(&[self.channel(), "lead"]).inc();
            Ok(vec![ev])
        })
    }
}
