//! `name-addr` / `addr-spec` header values: To, From, Contact, Route,
//! Path (RFC 3261 §20.10, §25.1).

use crate::message::is_token_char;
use crate::uri::{Uri, UriRef};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    /// The display name without quotes (escapes kept).
    pub display: Option<String>,
    /// The URI's text as written between `<>` (or the bare addr-spec).
    pub uri_text: String,
    pub uri: Uri,
    /// Header parameters after the address (`;tag=…`, `;expires=…`, `;q=…`).
    pub params: Vec<(String, Option<String>)>,
}

/// A name-addr's parts as slices of its text, every rule already checked:
/// what [`NameAddr::parse`] copies out, for readers that keep nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameAddrRef<'a> {
    /// The display name without quotes (escapes kept).
    pub display: Option<&'a str>,
    /// The URI's text as written between `<>` (or the bare addr-spec).
    pub uri_text: &'a str,
    pub uri: UriRef<'a>,
    /// The header parameters after the address, checked.
    tail: &'a str,
}

impl<'a> NameAddrRef<'a> {
    /// Splits and checks one value. `is_contact` adds the Contact rules for
    /// `expires` and `q`. The URI is read before the parameters are
    /// checked, so its error is the one reported.
    pub fn parse(value: &'a str, is_contact: bool) -> Result<Self, &'static str> {
        let v = value.trim_ascii();
        let (display, uri_text, tail) = if let Some(quoted) = v.strip_prefix('"') {
            let mut escaped = false;
            let mut end = None;
            for (i, c) in quoted.char_indices() {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    end = Some(i);
                    break;
                }
            }
            let end = end.ok_or("unterminated quoted display name")?;
            let rest = quoted[end + 1..].trim_ascii_start();
            let (uri, tail) = bracketed(rest)?;
            (Some(&quoted[..end]), uri, tail)
        } else if let Some(lt) = memchr::memchr(b'<', v.as_bytes()) {
            let display = v[..lt].trim_ascii();
            if !display
                .bytes()
                .all(|c| is_token_char(c) || c == b' ' || c == b'\t')
            {
                return Err("display name with special characters must be quoted");
            }
            let (uri, tail) = bracketed(&v[lt..])?;
            ((!display.is_empty()).then_some(display), uri, tail)
        } else {
            // addr-spec: parameters belong to the header, so a URI with its
            // own parameters, headers or commas must be in <> (§20).
            let (uri, tail) = match memchr::memchr(b';', v.as_bytes()) {
                Some(i) => (v[..i].trim_ascii_end(), &v[i..]),
                None => (v, ""),
            };
            if uri.contains(['?', ',']) {
                return Err("a URI with headers or commas must be enclosed in <>");
            }
            (None, uri, tail)
        };
        let uri = UriRef::parse(uri_text)?;
        for param in header_params(tail) {
            let (n, val) = param?;
            if is_contact {
                let expires = n.eq_ignore_ascii_case("expires");
                let q = n.eq_ignore_ascii_case("q");
                match val {
                    Some(e)
                        if expires && (!e.bytes().all(|b| b.is_ascii_digit()) || e.is_empty()) =>
                    {
                        return Err("Contact expires must be a number");
                    }
                    Some(v) if q && !valid_q(v) => {
                        return Err("Contact q must be between 0 and 1");
                    }
                    None if expires || q => return Err("Contact parameter needs a value"),
                    _ => {}
                }
            }
        }
        Ok(NameAddrRef {
            display,
            uri_text,
            uri,
            tail,
        })
    }

    /// A header parameter (`Some(None)` for a flag).
    pub fn param(&self, name: &str) -> Option<Option<&'a str>> {
        header_params(self.tail)
            .flatten()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
}

impl NameAddr {
    /// Parses one value by [`NameAddrRef::parse`]'s rules and copies it out.
    pub fn parse(value: &str, is_contact: bool) -> Result<Self, &'static str> {
        let p = NameAddrRef::parse(value, is_contact)?;
        Ok(NameAddr {
            display: p.display.map(str::to_owned),
            uri_text: p.uri_text.to_owned(),
            uri: Uri::from(p.uri),
            params: header_params(p.tail)
                .map(|param| param.map(|(n, v)| (n.to_owned(), v.map(str::to_owned))))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Checks a value by [`NameAddr::parse`]'s rules without building it.
    pub fn check(value: &str, is_contact: bool) -> Result<(), &'static str> {
        NameAddrRef::parse(value, is_contact).map(drop)
    }

    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref())
    }

    pub fn tag(&self) -> Option<&str> {
        self.param("tag").flatten()
    }
}

fn valid_q(q: &str) -> bool {
    q.parse::<f32>().is_ok_and(|x| (0.0..=1.0).contains(&x)) && q.len() <= 5
}

/// `<uri>` at the start of `s`; returns the URI text and what follows.
fn bracketed(s: &str) -> Result<(&str, &str), &'static str> {
    let inner = s.strip_prefix('<').ok_or("expected <URI>")?;
    let end = memchr::memchr(b'>', inner.as_bytes()).ok_or("missing > after the URI")?;
    Ok((&inner[..end], &inner[end + 1..]))
}

/// `;name[=value]` parameters, each checked; nothing else may follow the
/// address.
fn header_params(tail: &str) -> impl Iterator<Item = Result<(&str, Option<&str>), &'static str>> {
    let tail = tail.trim_ascii();
    let (rest, junk) = match tail.strip_prefix(';') {
        Some(rest) => (Some(rest), None),
        None if tail.is_empty() => (None, None),
        None => (None, Some(Err("unexpected text after the address"))),
    };
    junk.into_iter()
        .chain(rest.into_iter().flat_map(split_params).map(|part| {
            let (n, v) = match part.split_once('=') {
                Some((n, v)) => (n.trim_ascii(), Some(v.trim_ascii())),
                None => (part.trim_ascii(), None),
            };
            if n.is_empty() || !n.bytes().all(is_token_char) {
                return Err("empty or malformed header parameter");
            }
            if let Some(v) = v {
                let quoted = v.len() >= 2 && v.starts_with('"') && v.ends_with('"');
                if v.is_empty()
                    || !(quoted
                        || v.bytes()
                            .all(|c| is_token_char(c) || matches!(c, b'[' | b']' | b':')))
                {
                    return Err("malformed header parameter value");
                }
            }
            Ok((n, v))
        }))
}

/// Splits at `;` outside quotes.
fn split_params(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let s = rest?;
        let mut in_quote = false;
        for (i, c) in s.char_indices() {
            match c {
                '"' => in_quote = !in_quote,
                ';' if !in_quote => {
                    rest = Some(&s[i + 1..]);
                    return Some(&s[..i]);
                }
                _ => {}
            }
        }
        rest = None;
        Some(s)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let a = NameAddr::parse(
            "\"Bell, Alexander\" <sip:a.g.bell@example.com>;tag=433423",
            false,
        )
        .unwrap();
        assert_eq!(a.display.as_deref(), Some("Bell, Alexander"));
        assert_eq!(a.tag(), Some("433423"));
        let a = NameAddr::parse("caller<sip:caller@example.com>;tag=323", false).unwrap();
        assert_eq!(a.display.as_deref(), Some("caller"));
        let a = NameAddr::parse("sip:caller@example.net;tag=134161461246", false).unwrap();
        assert_eq!(a.uri.host, "example.net");
        assert_eq!(a.tag(), Some("134161461246"));
        let c = NameAddr::parse("<sip:user@host;unknownparam>;expires=60;q=0.5", true).unwrap();
        assert_eq!(c.uri.param("unknownparam"), Some(None));
        assert_eq!(c.param("expires"), Some(Some("60")));
    }

    #[test]
    fn refusals() {
        for bad in [
            "\"Mr. J. User <sip:j.user@example.com>",
            "Bell, Alexander <sip:a.g.bell@example.com>;tag=43",
            "\"Watson\" < sip:t.watson@example.org >",
            "\"Joe\" <sip:joe@example.org>;;;;",
            "sip:user@example.com?Route=%3Csip:sip.example.com%3E",
            "<sip:joe@example.org",
        ] {
            assert!(
                NameAddr::parse(bad, false).is_err(),
                "{bad} should be refused"
            );
        }
        assert!(NameAddr::parse("<sip:a@b>;expires=soon", true).is_err());
        assert!(NameAddr::parse("<sip:a@b>;q=2", true).is_err());
    }
}
