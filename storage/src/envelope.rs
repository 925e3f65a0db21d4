//! The feed's envelopes, version 1.
//!
//! `schema/interaction.v1.json` and `schema/command.v1.json` describe the
//! JSON these types serialize to; tests validate real events against them.
//! Adding an optional field or a new kind keeps version 1; anything that would
//! make an old consumer misread an event needs version 2.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// The envelope version this code writes.
pub const VERSION: u32 = 1;

/// A feed topic. Kafka names are `<namespace>.<topic>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    /// Every interaction, keyed by contact key.
    Interactions,
    /// CRM → gateway actions, keyed by target.
    Commands,
    /// Contact key → responsible manager (compacted).
    Owners,
}

impl Topic {
    pub const ALL: [Topic; 3] = [Topic::Interactions, Topic::Commands, Topic::Owners];

    pub fn as_str(self) -> &'static str {
        match self {
            Topic::Interactions => "interactions",
            Topic::Commands => "commands",
            Topic::Owners => "owners",
        }
    }
}

/// What happened. Serialized as a dotted name (`lead.received`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[non_exhaustive]
pub enum Kind {
    #[serde(rename = "message.received")]
    MessageReceived,
    #[serde(rename = "message.sent")]
    MessageSent,
    #[serde(rename = "call.ringing")]
    CallRinging,
    #[serde(rename = "call.answered")]
    CallAnswered,
    #[serde(rename = "call.ended")]
    CallEnded,
    #[serde(rename = "call.missed")]
    CallMissed,
    #[serde(rename = "recording.ready")]
    RecordingReady,
    #[serde(rename = "lead.received")]
    LeadReceived,
    #[serde(rename = "routing.assigned")]
    RoutingAssigned,
    #[serde(rename = "routing.reassigned")]
    RoutingReassigned,
    #[serde(rename = "routing.escalated")]
    RoutingEscalated,
    /// Routing could not assign it yet (nobody available, waiting for the
    /// responsible manager) or, out of hours, left it as "missed, call back".
    #[serde(rename = "routing.queued")]
    RoutingQueued,
}

impl Kind {
    /// The wire name, e.g. `lead.received`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::MessageReceived => "message.received",
            Kind::MessageSent => "message.sent",
            Kind::CallRinging => "call.ringing",
            Kind::CallAnswered => "call.answered",
            Kind::CallEnded => "call.ended",
            Kind::CallMissed => "call.missed",
            Kind::RecordingReady => "recording.ready",
            Kind::LeadReceived => "lead.received",
            Kind::RoutingAssigned => "routing.assigned",
            Kind::RoutingReassigned => "routing.reassigned",
            Kind::RoutingEscalated => "routing.escalated",
            Kind::RoutingQueued => "routing.queued",
        }
    }
}

/// Where the customer reached us.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Channel {
    Sip,
    Webrtc,
    Email,
    Telegram,
    Vk,
    Viber,
    Widget,
    Chat,
    Jivosite,
    Roistat,
    Comagic,
    Uis,
}

impl Channel {
    /// The wire name, e.g. `widget`.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Sip => "sip",
            Channel::Webrtc => "webrtc",
            Channel::Email => "email",
            Channel::Telegram => "telegram",
            Channel::Vk => "vk",
            Channel::Viber => "viber",
            Channel::Widget => "widget",
            Channel::Chat => "chat",
            Channel::Jivosite => "jivosite",
            Channel::Roistat => "roistat",
            Channel::Comagic => "comagic",
            Channel::Uis => "uis",
        }
    }
}

/// The stable key of a customer identity: `tel:+79161234567`,
/// `email:ivan@example.com`, `telegram:12345`. It is the partition key, so
/// one identity's events stay in order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContactKey(String);

impl ContactKey {
    /// From an E.164 number (`+` and digits).
    pub fn phone(e164: &str) -> Self {
        Self(format!("tel:{e164}"))
    }

    /// From an already lower-cased address.
    pub fn email(address: &str) -> Self {
        Self(format!("email:{address}"))
    }

    /// From an account on a messenger or service.
    pub fn account(channel: Channel, user_id: &str) -> Self {
        Self(format!("{}:{user_id}", channel.as_str()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// The customer as seen on this channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Contact {
    /// Partition key; see [`ContactKey`].
    pub key: String,
    /// E.164, e.g. `+79161234567`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// Lower-cased.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The messenger's or service's user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The name the customer gave, as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Where a contact came from: UTM tags and the lead services' visit ids.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Campaign {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub medium: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign: Option<String>,
    /// `utm_term`, or the keyword a lead service reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyword: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// A lead service's visit id (Roistat, Comagic, UIS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visit_id: Option<String>,
}

impl Campaign {
    pub fn is_empty(&self) -> bool {
        *self == Campaign::default()
    }

    /// The campaign of a set of UTM tags, `tag` giving each by its name
    /// without the prefix: `source`, `medium`, `campaign`, `term` (the
    /// keyword) and `content`.
    pub fn from_utm(mut tag: impl FnMut(&str) -> Option<String>) -> Self {
        Self {
            source: tag("source"),
            medium: tag("medium"),
            campaign: tag("campaign"),
            keyword: tag("term"),
            content: tag("content"),
            visit_id: None,
        }
    }

    /// `None` when nothing is known of it.
    pub fn known(self) -> Option<Self> {
        (!self.is_empty()).then_some(self)
    }
}

/// One thing that happened with a customer, on any channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Interaction {
    /// Envelope version; this code writes [`VERSION`].
    pub v: u32,
    /// UUIDv7; the idempotency key. A repeated id is already applied.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = "uuid"))]
    pub id: Uuid,
    /// When it happened (RFC 3339, UTC).
    #[serde(with = "rfc3339_utc")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub occurred_at: OffsetDateTime,
    /// When Switchboard wrote it (RFC 3339, UTC).
    #[serde(with = "rfc3339_utc")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub recorded_at: OffsetDateTime,
    pub kind: Kind,
    pub channel: Channel,
    pub contact: Contact,
    /// The manager involved, when one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager: Option<String>,
    /// Thread or call id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign: Option<Campaign>,
    /// Channel-specific details; always a JSON object.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub payload: serde_json::Value,
}

impl Interaction {
    /// A new envelope with a fresh UUIDv7, recorded now.
    pub fn new(
        kind: Kind,
        channel: Channel,
        contact: Contact,
        occurred_at: OffsetDateTime,
        payload: serde_json::Value,
    ) -> Self {
        Self {
            v: VERSION,
            id: Uuid::now_v7(),
            occurred_at: occurred_at.to_offset(time::UtcOffset::UTC),
            recorded_at: OffsetDateTime::now_utc(),
            kind,
            channel,
            contact,
            manager: None,
            conversation: None,
            campaign: None,
            payload,
        }
    }

    /// Appends this envelope as JSON to `out`, with `payload` in place of
    /// [`Interaction::payload`] (which is not read): the same text as
    /// serializing an envelope holding that payload, written straight from
    /// the caller's own type, so a busy channel need not build a
    /// `serde_json::Value` for every event.
    pub fn write_json_with<P: Serialize + ?Sized>(
        &self,
        payload: &P,
        out: &mut Vec<u8>,
    ) -> serde_json::Result<()> {
        // Naming every field makes a new one a compile error here until it
        // is written below too.
        let Self {
            v,
            id,
            occurred_at,
            recorded_at,
            kind,
            channel,
            contact,
            manager,
            conversation,
            campaign,
            payload: _,
        } = self;
        serde_json::to_writer(
            out,
            &Written {
                v: *v,
                id,
                occurred_at: *occurred_at,
                recorded_at: *recorded_at,
                kind: *kind,
                channel: *channel,
                contact,
                manager: manager.as_deref(),
                conversation: conversation.as_deref(),
                campaign: campaign.as_ref(),
                payload,
            },
        )
    }
}

/// [`Interaction`] as written, by reference and with a payload of any type
/// (see [`Interaction::write_json_with`]); its fields and their order are
/// the envelope's.
#[derive(Serialize)]
struct Written<'a, P: ?Sized> {
    v: u32,
    id: &'a Uuid,
    #[serde(with = "rfc3339_utc")]
    occurred_at: OffsetDateTime,
    #[serde(with = "rfc3339_utc")]
    recorded_at: OffsetDateTime,
    kind: Kind,
    channel: Channel,
    contact: &'a Contact,
    #[serde(skip_serializing_if = "Option::is_none")]
    manager: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    conversation: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    campaign: Option<&'a Campaign>,
    payload: &'a P,
}

/// What the CRM asks the gateway to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[non_exhaustive]
pub enum CommandKind {
    /// Send a message (a reply, an offer) on the command's channel.
    #[serde(rename = "message.send")]
    MessageSend,
    /// Click-to-call: ring the manager, then the customer.
    #[serde(rename = "call.place")]
    CallPlace,
    /// Tell the lead service a lead came from how its deal ended (won,
    /// lost, amount), for the service's end-to-end analytics.
    #[serde(rename = "deal.report")]
    DealReport,
}

/// A CRM → gateway action. The outcome comes back as an [`Interaction`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Command {
    pub v: u32,
    /// UUIDv7; the idempotency key.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = "uuid"))]
    pub id: Uuid,
    #[serde(with = "rfc3339_utc")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub issued_at: OffsetDateTime,
    pub kind: CommandKind,
    pub channel: Channel,
    /// Which line executes it (a bot, a mailbox, a trunk); the partition key.
    pub target: String,
    pub contact: Contact,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub payload: serde_json::Value,
}

/// A change of a contact's responsible manager, on the compacted `owners`
/// topic (keyed by contact key). The CRM publishes it; gateways apply it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OwnerChange {
    pub v: u32,
    pub contact_key: String,
    /// The new responsible manager; `None` clears it.
    pub manager: Option<String>,
    #[serde(with = "rfc3339_utc")]
    pub changed_at: OffsetDateTime,
}

/// RFC 3339 in UTC (`2026-11-26T18:00:00.123456Z`); any offset is accepted on
/// input and converted.
mod rfc3339_utc {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::format_description::well_known::Rfc3339;
    use time::{OffsetDateTime, UtcOffset};

    pub(super) fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        let text = t
            .to_offset(UtcOffset::UTC)
            .format(&Rfc3339)
            .map_err(serde::ser::Error::custom)?;
        s.serialize_str(&text)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        OffsetDateTime::parse(&text, &Rfc3339)
            .map(|t| t.to_offset(UtcOffset::UTC))
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_and_channel_names_match_serde() {
        for kind in [
            Kind::MessageReceived,
            Kind::MessageSent,
            Kind::CallRinging,
            Kind::CallAnswered,
            Kind::CallEnded,
            Kind::CallMissed,
            Kind::RecordingReady,
            Kind::LeadReceived,
            Kind::RoutingAssigned,
            Kind::RoutingReassigned,
            Kind::RoutingEscalated,
            Kind::RoutingQueued,
        ] {
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::Value::from(kind.as_str())
            );
        }
        assert_eq!(
            serde_json::to_value(Channel::Jivosite).unwrap(),
            serde_json::Value::from(Channel::Jivosite.as_str())
        );
    }

    #[test]
    fn timestamps_are_utc_with_z() {
        let t = OffsetDateTime::parse(
            "2026-11-26T21:00:00.5+03:00",
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        let ev = Interaction::new(
            Kind::LeadReceived,
            Channel::Widget,
            Contact {
                key: ContactKey::phone("+79161234567").into_string(),
                phone: Some("+79161234567".into()),
                email: None,
                user_id: None,
                name: None,
            },
            t,
            serde_json::json!({}),
        );
        let json = serde_json::to_value(&ev).unwrap();
        assert_eq!(json["occurred_at"], "2026-11-26T18:00:00.5Z");
        let back: Interaction = serde_json::from_value(json).unwrap();
        assert_eq!(back, ev);
        assert_eq!(ev.id.get_version_num(), 7);
    }

    #[test]
    fn an_envelope_written_with_its_payload_apart_is_the_same_text() {
        let mut ev = Interaction::new(
            Kind::MessageReceived,
            Channel::Email,
            Contact {
                key: ContactKey::email("anna@example.ru").into_string(),
                phone: None,
                email: Some("anna@example.ru".into()),
                user_id: None,
                name: Some("Анна \"Ромашка\"".into()),
            },
            OffsetDateTime::now_utc(),
            serde_json::json!({"subject": "Счёт", "text": "line\nbreak", "size": 10}),
        );
        let text = |ev: &Interaction| {
            let mut out = b"prefix".to_vec();
            ev.write_json_with(&ev.payload, &mut out).unwrap();
            String::from_utf8(out).unwrap()
        };
        // Without the optional fields, then with all of them.
        assert_eq!(
            text(&ev),
            format!("prefix{}", serde_json::to_string(&ev).unwrap())
        );
        ev.manager = Some("m1".into());
        ev.conversation = Some("t-1".into());
        ev.campaign = Some(Campaign {
            source: Some("yandex".into()),
            ..Campaign::default()
        });
        assert_eq!(
            text(&ev),
            format!("prefix{}", serde_json::to_string(&ev).unwrap())
        );
        // The envelope's own payload is not what is written.
        let mut out = Vec::new();
        ev.write_json_with(&serde_json::json!({"other": true}), &mut out)
            .unwrap();
        let back: Interaction = serde_json::from_slice(&out).unwrap();
        assert_eq!(back.payload, serde_json::json!({"other": true}));
        assert_eq!(back.contact, ev.contact);
        assert_eq!(back.campaign, ev.campaign);
    }
}
