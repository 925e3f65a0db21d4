//! The site widget's lead form: what a visitor types into "leave your phone
//! and we'll call you back", with the page and the UTM tags it came from.

use std::collections::BTreeMap;

use phonenumber::country;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use switchboard_storage::{Campaign, Channel, Contact, ContactKey, Interaction, Kind};

use crate::contact::{normalize_email, normalize_phone};

const MAX_NAME: usize = 200;
const MAX_MESSAGE: usize = 5_000;
const MAX_URL: usize = 2_048;
const MAX_TAG: usize = 200;
const MAX_EXTRA_FIELDS: usize = 50;
const MAX_EXTRA_VALUE: usize = 1_000;

/// The form as posted, JSON or `application/x-www-form-urlencoded`. Fields
/// the site adds beyond these are kept in the event's payload.
#[derive(Debug, Default, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(example = json!({
    "name": "Иван Петров",
    "phone": "8 (916) 123-45-67",
    "email": "ivan@example.com",
    "message": "Перезвоните мне",
    "page_url": "https://example.com/price",
    "utm_source": "yandex",
    "utm_medium": "cpc",
    "utm_campaign": "winter"
})))]
pub struct LeadForm {
    /// The visitor's name, as typed (at most 200 characters).
    pub name: Option<String>,
    /// Any usual spelling; numbers without a country code use
    /// `gateway.default_country`. A phone or an email is required.
    pub phone: Option<String>,
    /// Stored lower-cased.
    pub email: Option<String>,
    /// At most 5000 characters.
    pub message: Option<String>,
    /// The page the form was on (http or https).
    pub page_url: Option<String>,
    pub utm_source: Option<String>,
    pub utm_medium: Option<String>,
    pub utm_campaign: Option<String>,
    pub utm_term: Option<String>,
    pub utm_content: Option<String>,
    /// Any other field of the form (at most 50; strings up to 1000
    /// characters, numbers, booleans) is kept in the event's payload.
    #[serde(flatten)]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub extra: BTreeMap<String, Value>,
}

/// Field name → what is wrong with it, for a 422 response.
pub type FieldErrors = BTreeMap<String, String>;

/// Trims a field; empty means absent.
fn present(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

impl LeadForm {
    /// Validates and normalises the form into a `lead.received` interaction.
    pub fn into_interaction(
        self,
        default_country: country::Id,
    ) -> Result<Interaction, FieldErrors> {
        let mut errors = FieldErrors::new();
        let mut check_len = |field: &str, v: Option<&str>, max: usize| {
            if v.is_some_and(|v| v.chars().count() > max) {
                errors.insert(field.into(), format!("must be at most {max} characters"));
            }
        };
        let name = present(&self.name);
        check_len("name", name, MAX_NAME);
        let message = present(&self.message);
        check_len("message", message, MAX_MESSAGE);
        let page_url = present(&self.page_url);
        check_len("page_url", page_url, MAX_URL);
        let tags = [
            ("utm_source", present(&self.utm_source)),
            ("utm_medium", present(&self.utm_medium)),
            ("utm_campaign", present(&self.utm_campaign)),
            ("utm_term", present(&self.utm_term)),
            ("utm_content", present(&self.utm_content)),
        ];
        for (field, v) in tags {
            check_len(field, v, MAX_TAG);
        }
        if let Some(url) = page_url {
            let ok = (url.starts_with("https://") || url.starts_with("http://"))
                && !url.chars().any(|c| c.is_whitespace() || c.is_control());
            if !ok {
                errors.insert(
                    "page_url".into(),
                    "must be an http:// or https:// address".into(),
                );
            }
        }
        if name.is_some_and(|n| n.chars().any(char::is_control)) {
            errors.insert("name".into(), "must not contain control characters".into());
        }

        let phone = match present(&self.phone).map(|p| normalize_phone(p, default_country)) {
            Some(Ok(p)) => Some(p),
            Some(Err(why)) => {
                errors.insert("phone".into(), why.into());
                None
            }
            None => None,
        };
        let email = match present(&self.email).map(normalize_email) {
            Some(Ok(e)) => Some(e),
            Some(Err(why)) => {
                errors.insert("email".into(), why.into());
                None
            }
            None => None,
        };
        if present(&self.phone).is_none() && present(&self.email).is_none() {
            let why = "give a phone number or an email address".to_owned();
            errors.insert("phone".into(), why.clone());
            errors.insert("email".into(), why);
        }

        let mut extra = Map::new();
        if self.extra.len() > MAX_EXTRA_FIELDS {
            errors.insert(
                "form".into(),
                format!("has more than {MAX_EXTRA_FIELDS} extra fields"),
            );
        }
        for (k, v) in self.extra {
            let ok = match &v {
                Value::String(s) => s.chars().count() <= MAX_EXTRA_VALUE,
                Value::Number(_) | Value::Bool(_) | Value::Null => true,
                Value::Array(_) | Value::Object(_) => false,
            };
            if ok && k.chars().count() <= MAX_TAG {
                extra.insert(k, v);
            } else {
                errors.insert(
                    k.chars().take(MAX_TAG).collect(),
                    format!("must be a string of at most {MAX_EXTRA_VALUE} characters, a number or a boolean"),
                );
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }

        let key = phone
            .as_deref()
            .map(ContactKey::phone)
            .or_else(|| email.as_deref().map(ContactKey::email))
            .ok_or_else(|| {
                FieldErrors::from([(
                    "phone".into(),
                    "give a phone number or an email address".into(),
                )])
            })?;
        let campaign = Campaign::from_utm(|k| {
            let name = format!("utm_{k}");
            tags.iter()
                .find(|(field, _)| *field == name)
                .and_then(|(_, v)| v.map(str::to_owned))
        });
        let mut payload = json!({ "form": "widget" });
        if let Some(m) = message {
            payload["message"] = json!(m);
        }
        if let Some(u) = page_url {
            payload["page_url"] = json!(u);
        }
        if !extra.is_empty() {
            payload["fields"] = Value::Object(extra);
        }
        let mut ev = Interaction::new(
            Kind::LeadReceived,
            Channel::Widget,
            Contact {
                key: key.into_string(),
                phone,
                email,
                user_id: None,
                name: name.map(str::to_owned),
            },
            time::OffsetDateTime::now_utc(),
            payload,
        );
        ev.campaign = campaign.known();
        Ok(ev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> LeadForm {
        let body = serde_urlencoded::to_string(pairs).unwrap();
        serde_urlencoded::from_str(&body).unwrap()
    }

    #[test]
    fn a_good_lead_becomes_an_interaction() {
        let ev = form(&[
            ("name", " Иван Петров "),
            ("phone", "8 (916) 123-45-67"),
            ("email", "Ivan@Example.com"),
            ("message", "Перезвоните"),
            ("page_url", "https://example.com/price?x=1"),
            ("utm_source", "yandex"),
            ("utm_medium", "cpc"),
            ("utm_campaign", "winter"),
            ("utm_term", "crm"),
            ("consent", "yes"),
        ])
        .into_interaction(country::Id::RU)
        .unwrap();
        assert_eq!(ev.kind, Kind::LeadReceived);
        assert_eq!(ev.channel, Channel::Widget);
        assert_eq!(ev.contact.key, "tel:+79161234567");
        assert_eq!(ev.contact.phone.as_deref(), Some("+79161234567"));
        assert_eq!(ev.contact.email.as_deref(), Some("ivan@example.com"));
        assert_eq!(ev.contact.name.as_deref(), Some("Иван Петров"));
        let c = ev.campaign.unwrap();
        assert_eq!(
            (
                c.source.as_deref(),
                c.medium.as_deref(),
                c.campaign.as_deref(),
                c.keyword.as_deref()
            ),
            (Some("yandex"), Some("cpc"), Some("winter"), Some("crm"))
        );
        assert_eq!(ev.payload["message"], "Перезвоните");
        assert_eq!(ev.payload["page_url"], "https://example.com/price?x=1");
        assert_eq!(ev.payload["fields"]["consent"], "yes");
    }

    #[test]
    fn email_only_lead_is_keyed_by_email() {
        let ev = form(&[("email", "A@B.RU")])
            .into_interaction(country::Id::RU)
            .unwrap();
        assert_eq!(ev.contact.key, "email:a@b.ru");
        assert!(ev.campaign.is_none());
    }

    #[test]
    fn every_bad_field_is_reported() {
        let errors = form(&[
            ("phone", "call me maybe"),
            ("email", "nobody"),
            ("page_url", "javascript:alert(1)"),
            ("name", &"x".repeat(201)),
        ])
        .into_interaction(country::Id::RU)
        .unwrap_err();
        for field in ["phone", "email", "page_url", "name"] {
            assert!(
                errors.contains_key(field),
                "{field} not reported: {errors:?}"
            );
        }
    }

    #[test]
    fn a_lead_needs_a_way_to_reach_the_customer() {
        let errors = form(&[("name", "Ivan"), ("phone", "  ")])
            .into_interaction(country::Id::RU)
            .unwrap_err();
        assert!(
            errors["phone"].contains("phone number or an email"),
            "{errors:?}"
        );
    }
}
