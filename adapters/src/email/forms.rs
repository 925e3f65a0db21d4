//! Letters the site's feedback form sends: a configured rule recognises
//! them by sender and subject and reads their `Label: value` lines into a
//! `lead.received` with the campaign the form passed on.

use serde_json::{Map, Value, json};
use switchboard_config::FormRule;
use switchboard_storage::{Campaign, Channel, Contact, ContactKey, Interaction, Kind};
use time::OffsetDateTime;

use super::Letter;
use crate::contact::{normalize_email, normalize_phone};

/// A lead read from a form letter.
#[derive(Debug)]
pub(crate) struct Lead {
    rule: String,
    fields: Map<String, Value>,
    contact: Contact,
    campaign: Campaign,
}

/// The lead in `letter` if a rule matches it and it names a way to reach
/// the customer.
pub(crate) fn lead(
    rules: &[FormRule],
    letter: &Letter,
    country: phonenumber::country::Id,
) -> Option<Lead> {
    let rule = rules.iter().find(|r| matches(r, letter))?;
    let mut values: Map<String, Value> = Map::new();
    for line in letter.text.lines() {
        let Some((label, value)) = line.split_once(':') else {
            continue;
        };
        let (label, value) = (label.trim(), value.trim());
        if value.is_empty() {
            continue;
        }
        for (field, wanted) in &rule.fields {
            if label.eq_ignore_ascii_case(wanted.trim())
                || label.to_lowercase() == wanted.trim().to_lowercase()
            {
                values
                    .entry(field.clone())
                    .or_insert_with(|| json!(value.chars().take(2000).collect::<String>()));
            }
        }
    }
    let get = |k: &str| values.get(k).and_then(Value::as_str).map(str::to_owned);
    let phone = get("phone").and_then(|p| normalize_phone(&p, country).ok());
    let email = get("email").and_then(|e| normalize_email(&e).ok());
    let key = match (&phone, &email) {
        (Some(p), _) => ContactKey::phone(p),
        (None, Some(e)) => ContactKey::email(e),
        (None, None) => return None,
    };
    let mut campaign = Campaign::from_utm(|k| get(&format!("utm_{k}")));
    if campaign.source.is_none() && !rule.source.is_empty() {
        campaign.source = Some(rule.source.clone());
    }
    Some(Lead {
        rule: rule.name.clone(),
        contact: Contact {
            key: key.into_string(),
            phone,
            email,
            user_id: None,
            name: get("name"),
        },
        fields: values,
        campaign,
    })
}

fn matches(rule: &FormRule, letter: &Letter) -> bool {
    let from_ok = rule.from.is_empty()
        || letter
            .sender()
            .is_some_and(|s| s.eq_ignore_ascii_case(rule.from.trim()));
    let subject_ok = rule.subject_contains.is_empty()
        || letter
            .subject
            .to_lowercase()
            .contains(&rule.subject_contains.to_lowercase());
    from_ok && subject_ok
}

impl Lead {
    pub(crate) fn into_interaction(self, letter: &Letter) -> Interaction {
        let mut payload = json!({ "form": self.rule });
        if let Some(Value::String(c)) = self.fields.get("comment") {
            payload["message"] = json!(c);
        }
        payload["fields"] = Value::Object(self.fields);
        let mut ev = Interaction::new(
            Kind::LeadReceived,
            Channel::Email,
            self.contact,
            letter.date.unwrap_or_else(OffsetDateTime::now_utc),
            payload,
        );
        ev.campaign = (!self.campaign.is_empty()).then_some(self.campaign);
        ev
    }
}
