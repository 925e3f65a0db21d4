//! What a REGISTER asks for (RFC 3261 §10.3): the address of record, the
//! bindings to add, refresh or remove, and the expiry rules. Storing the
//! bindings is the gateway's location service. What is read borrows from
//! the message: the location service copies what it keeps.

use std::borrow::Cow;

use crate::addr::NameAddrRef;
use crate::message::Message;

/// Expiry limits, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpiryPolicy {
    pub default_s: u32,
    pub min_s: u32,
    pub max_s: u32,
}

impl Default for ExpiryPolicy {
    fn default() -> Self {
        ExpiryPolicy {
            default_s: 3600,
            min_s: 60,
            max_s: 7200,
        }
    }
}

/// One Contact of a REGISTER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactUpdate<'a> {
    /// The contact URI as written (URI parameters and escaped headers
    /// kept, RFC 4475 §3.3.13–14); header parameters are not part of it.
    pub uri: &'a str,
    /// Seconds granted; 0 removes the binding.
    pub expires_s: u32,
    /// `q` as written, if any.
    pub q: Option<&'a str>,
    /// `+sip.instance` (RFC 5626), which identifies a device across
    /// contact changes.
    pub instance: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change<'a> {
    /// No Contact: a query for the current bindings.
    Fetch,
    /// `Contact: *` with `Expires: 0`.
    RemoveAll,
    Update(Vec<ContactUpdate<'a>>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Register<'a> {
    /// The user part of the To URI, unescaped.
    pub user: Cow<'a, str>,
    /// The host of the To URI, lower-cased.
    pub domain: Cow<'a, str>,
    pub call_id: &'a str,
    pub cseq: u32,
    pub change: Change<'a>,
    /// Path header values (RFC 3327), in order.
    pub path: Vec<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterError {
    /// 400 with the reason.
    Bad(String),
    /// 423 Interval Too Brief with this Min-Expires.
    TooBrief { min_s: u32 },
}

fn bad(reason: impl Into<String>) -> RegisterError {
    RegisterError::Bad(reason.into())
}

/// Reads a REGISTER that already passed [`Message::validate`].
pub fn interpret<'a>(
    msg: &'a Message,
    policy: &ExpiryPolicy,
) -> Result<Register<'a>, RegisterError> {
    let to = NameAddrRef::parse(msg.header("to").unwrap_or(""), false)
        .map_err(|e| bad(format!("To: {e}")))?;
    if !to.uri.is_sip() {
        return Err(bad("To must be a sip: or sips: address of record"));
    }
    let user = to
        .uri
        .user_unescaped()
        .ok_or_else(|| bad("To has no user part"))?;
    let (cseq, _) = msg.cseq().ok_or_else(|| bad("bad CSeq"))?;
    let header_expires = match msg.header("expires") {
        Some(e) => Some(
            e.trim_ascii()
                .parse::<u32>()
                .map_err(|_| bad("Expires is not a number"))?,
        ),
        None => None,
    };
    let contacts: Vec<&str> = msg.header_values("contact").collect();
    let change = if contacts.is_empty() {
        Change::Fetch
    } else if contacts.contains(&"*") {
        if contacts.len() != 1 || header_expires != Some(0) {
            return Err(bad("Contact: * must be alone and come with Expires: 0"));
        }
        Change::RemoveAll
    } else {
        let mut updates = Vec::with_capacity(contacts.len());
        for c in contacts {
            let addr = NameAddrRef::parse(c, true).map_err(|e| bad(format!("Contact: {e}")))?;
            let asked = match addr.param("expires").flatten() {
                Some(e) => e
                    .parse::<u64>()
                    .unwrap_or(u64::MAX)
                    .min(u64::from(u32::MAX)) as u32,
                None => header_expires.unwrap_or(policy.default_s),
            };
            if asked != 0 && asked < policy.min_s {
                return Err(RegisterError::TooBrief {
                    min_s: policy.min_s,
                });
            }
            updates.push(ContactUpdate {
                uri: addr.uri_text,
                expires_s: asked.min(policy.max_s),
                q: addr.param("q").flatten(),
                instance: addr.param("+sip.instance").flatten(),
            });
        }
        Change::Update(updates)
    };
    Ok(Register {
        user,
        domain: crate::ascii_lowercase(to.uri.host),
        call_id: msg.call_id().unwrap_or(""),
        cseq,
        change,
        path: msg.header_values("path").collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::parse;

    fn register(extra: &str) -> Message {
        let raw = format!(
            "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\n\
To: <sip:1001@Example.com>\r\nFrom: <sip:1001@example.com>;tag=a\r\nCall-ID: c\r\nCSeq: 7 REGISTER\r\n{extra}Content-Length: 0\r\n\r\n"
        );
        let m = parse(raw.as_bytes()).unwrap();
        m.validate().unwrap();
        m
    }

    #[test]
    fn several_contacts_with_their_own_expiry() {
        let m = register(
            "Contact: <sip:1001@10.0.0.1:5060;transport=udp>;expires=120, <sip:1001@10.0.0.2>;q=0.5\r\nExpires: 300\r\n",
        );
        let r = interpret(&m, &ExpiryPolicy::default()).unwrap();
        assert_eq!((&*r.user, &*r.domain, r.cseq), ("1001", "example.com", 7));
        let Change::Update(c) = r.change else {
            panic!("{:?}", r.change)
        };
        assert_eq!(c[0].uri, "sip:1001@10.0.0.1:5060;transport=udp");
        assert_eq!((c[0].expires_s, c[1].expires_s), (120, 300));
        assert_eq!(c[1].q, Some("0.5"));
    }

    #[test]
    fn brief_intervals_are_refused_and_long_ones_capped() {
        let m = register("Contact: <sip:1001@10.0.0.1>\r\nExpires: 10\r\n");
        assert_eq!(
            interpret(&m, &ExpiryPolicy::default()),
            Err(RegisterError::TooBrief { min_s: 60 })
        );
        let m = register("Contact: <sip:1001@10.0.0.1>;expires=999999\r\n");
        let Change::Update(c) = interpret(&m, &ExpiryPolicy::default()).unwrap().change else {
            panic!()
        };
        assert_eq!(c[0].expires_s, 7200);
    }

    #[test]
    fn wildcard_and_fetch() {
        let m = register("Contact: *\r\nExpires: 0\r\n");
        assert_eq!(
            interpret(&m, &ExpiryPolicy::default()).unwrap().change,
            Change::RemoveAll
        );
        let m = register("Contact: *\r\n");
        assert!(matches!(
            interpret(&m, &ExpiryPolicy::default()),
            Err(RegisterError::Bad(_))
        ));
        let m = register("");
        assert_eq!(
            interpret(&m, &ExpiryPolicy::default()).unwrap().change,
            Change::Fetch
        );
    }

    #[test]
    fn contact_parameters_stay_out_of_the_binding_uri() {
        // RFC 4475 §3.3.12/§3.3.13.
        let m = register("Contact: sip:user@host1.example.com;unknownparam\r\n");
        let Change::Update(c) = interpret(&m, &ExpiryPolicy::default()).unwrap().change else {
            panic!()
        };
        assert_eq!(c[0].uri, "sip:user@host1.example.com");
        let m = register("Contact: <sip:user@host1.example.com;unknownparam>\r\n");
        let Change::Update(c) = interpret(&m, &ExpiryPolicy::default()).unwrap().change else {
            panic!()
        };
        assert_eq!(c[0].uri, "sip:user@host1.example.com;unknownparam");
    }
}
