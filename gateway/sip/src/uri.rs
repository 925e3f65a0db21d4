//! URIs as SIP uses them (RFC 3261 §19.1, RFC 3966 for `tel:`, RFC 5118
//! for IPv6 references). Any other scheme is kept opaque: a registrar must
//! be able to read `To: isbn:…` well enough to refuse it.

use std::borrow::Cow;
use std::fmt;
use std::net::Ipv6Addr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scheme {
    Sip,
    Sips,
    Tel,
    Other(String),
}

/// A parsed URI. For `sip:`/`sips:` every part is filled; for other
/// schemes only `scheme` and `opaque`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uri {
    pub scheme: Scheme,
    /// The user part, still escaped as received (`user;par=u%40example.net`).
    pub user: Option<String>,
    /// Host as written; IPv6 references keep their brackets.
    pub host: String,
    pub port: Option<u16>,
    /// `;name[=value]` URI parameters, in order.
    pub params: Vec<(String, Option<String>)>,
    /// The `?…` header part, escaped as received.
    pub headers: Option<String>,
    /// For non-SIP schemes: everything after the colon.
    pub opaque: String,
}

fn valid_uri_char(c: char) -> bool {
    !(c.is_whitespace() || c.is_control() || c == '<' || c == '>' || c == '"')
}

/// A URI's parts as slices of its text, every rule already checked: what
/// [`Uri::parse`] copies out, for readers that keep nothing (the
/// registrar reading a REGISTER's To).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UriRef<'a> {
    /// As written (`Uri::scheme` is the parsed form).
    pub scheme: &'a str,
    /// The user part, still escaped.
    pub user: Option<&'a str>,
    /// As written; IPv6 references keep their brackets.
    pub host: &'a str,
    pub port: Option<u16>,
    /// The `;…` parameters without the first `;`, checked.
    pub params: Option<&'a str>,
    /// The `?…` header part, escaped as received.
    pub headers: Option<&'a str>,
    /// For non-SIP schemes: everything after the colon.
    pub opaque: &'a str,
}

fn scheme_of(text: &str) -> Scheme {
    if text.eq_ignore_ascii_case("sip") {
        Scheme::Sip
    } else if text.eq_ignore_ascii_case("sips") {
        Scheme::Sips
    } else if text.eq_ignore_ascii_case("tel") {
        Scheme::Tel
    } else {
        Scheme::Other(text.to_ascii_lowercase())
    }
}

impl<'a> UriRef<'a> {
    pub fn parse(s: &'a str) -> Result<Self, &'static str> {
        if s.is_empty() {
            return Err("empty URI");
        }
        // In ASCII, the usual case, whitespace and controls are the bytes up
        // to the space, and DEL: no decoding, no Unicode tables.
        let valid = if s.is_ascii() {
            s.bytes()
                .all(|b| b > b' ' && b != 0x7f && !matches!(b, b'<' | b'>' | b'"'))
        } else {
            s.chars().all(valid_uri_char)
        };
        if !valid {
            return Err("URI contains whitespace, quotes or angle brackets");
        }
        let (scheme, rest) = split_at(s, b':').ok_or("URI without a scheme")?;
        let mut chars = scheme.chars();
        if !chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        {
            return Err("bad URI scheme");
        }
        if rest.is_empty() {
            return Err("URI without anything after the scheme");
        }
        let mut parts = UriRef {
            scheme,
            user: None,
            host: "",
            port: None,
            params: None,
            headers: None,
            opaque: "",
        };
        if !(scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips")) {
            parts.opaque = rest;
            return Ok(parts);
        }
        // The user part may hold `?`, `;` and `:` (RFC 4475 §3.1.1.2), never
        // an unescaped `@`: it ends at the first one.
        let after_user = match split_at(rest, b'@') {
            Some((u, h)) => {
                if u.is_empty() {
                    return Err("empty user part");
                }
                check_escapes(u)?;
                parts.user = Some(u);
                h
            }
            None => rest,
        };
        let hostpart = match split_at(after_user, b'?') {
            Some((m, h)) => {
                if h.is_empty() {
                    return Err("empty URI headers");
                }
                parts.headers = Some(h);
                m
            }
            None => after_user,
        };
        let hostport = match split_at(hostpart, b';') {
            Some((hp, p)) => {
                for (name, _) in params(p) {
                    if name.is_empty() {
                        return Err("empty URI parameter");
                    }
                    check_escapes(name)?;
                }
                parts.params = Some(p);
                hp
            }
            None => hostpart,
        };
        (parts.host, parts.port) = split_host_port(hostport)?;
        Ok(parts)
    }

    pub fn is_sip(&self) -> bool {
        self.scheme.eq_ignore_ascii_case("sip") || self.scheme.eq_ignore_ascii_case("sips")
    }

    /// The user part with `%HH` escapes decoded (lossy for invalid UTF-8);
    /// borrowed when it has none.
    pub fn user_unescaped(&self) -> Option<Cow<'a, str>> {
        self.user.map(unescape)
    }
}

impl From<UriRef<'_>> for Uri {
    fn from(p: UriRef<'_>) -> Self {
        Uri {
            scheme: scheme_of(p.scheme),
            user: p.user.map(str::to_owned),
            host: p.host.to_owned(),
            port: p.port,
            params: p.params.map_or_else(Vec::new, |text| {
                params(text)
                    .map(|(n, v)| (n.to_owned(), v.map(str::to_owned)))
                    .collect()
            }),
            headers: p.headers.map(str::to_owned),
            opaque: p.opaque.to_owned(),
        }
    }
}

impl Uri {
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        UriRef::parse(s).map(Uri::from)
    }

    /// Checks `s` by [`Uri::parse`]'s rules without building the URI;
    /// returns its `?headers` part, if it has one.
    pub fn check(s: &str) -> Result<Option<&str>, &'static str> {
        UriRef::parse(s).map(|p| p.headers)
    }

    pub fn is_sip(&self) -> bool {
        matches!(self.scheme, Scheme::Sip | Scheme::Sips)
    }

    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref())
    }

    /// The user part with `%HH` escapes decoded (lossy for invalid UTF-8).
    pub fn user_unescaped(&self) -> Option<String> {
        self.user.as_deref().map(|u| unescape(u).into_owned())
    }
}

impl fmt::Display for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match &self.scheme {
            Scheme::Sip => "sip",
            Scheme::Sips => "sips",
            Scheme::Tel => "tel",
            Scheme::Other(s) => s,
        };
        if !self.is_sip() {
            return write!(f, "{scheme}:{}", self.opaque);
        }
        write!(f, "{scheme}:")?;
        if let Some(u) = &self.user {
            write!(f, "{u}@")?;
        }
        f.write_str(&self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        for (n, v) in &self.params {
            match v {
                Some(v) => write!(f, ";{n}={v}")?,
                None => write!(f, ";{n}")?,
            }
        }
        if let Some(h) = &self.headers {
            write!(f, "?{h}")?;
        }
        Ok(())
    }
}

/// `s` split around the first `sep` (an ASCII byte), by a plain scan: the
/// parts of a URI are too short for a vectorised search to pay off.
pub(crate) fn split_at(s: &str, sep: u8) -> Option<(&str, &str)> {
    let i = s.bytes().position(|b| b == sep)?;
    Some((&s[..i], &s[i + 1..]))
}

fn check_escapes(s: &str) -> Result<(), &'static str> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
            {
                return Err("% not followed by two hex digits");
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    Ok(())
}

/// Decodes `%HH` escapes; borrows `s` when it has none.
pub fn unescape(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (b.get(i + 1), b.get(i + 2))
            && let (Some(h), Some(l)) = ((*h as char).to_digit(16), (*l as char).to_digit(16))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// `name[=value]` pairs of a `;`-separated parameter list (as `split(';')`
/// would cut it, an empty list being one empty name), split by byte.
pub(crate) fn params(p: &str) -> impl Iterator<Item = (&str, Option<&str>)> {
    let mut rest = Some(p);
    std::iter::from_fn(move || {
        let list = rest?;
        let (part, more) = split_at(list, b';').map_or((list, None), |(a, b)| (a, Some(b)));
        rest = more;
        Some(split_at(part, b'=').map_or((part, None), |(n, v)| (n, Some(v))))
    })
}

/// `host[:port]` where host is a name, an IPv4 address or a bracketed IPv6
/// reference. An IPv6 address without brackets is refused (RFC 5118 §4.2);
/// `[2001:db8:::192.0.2.1]` is tolerated (§4.10).
pub fn split_host_port(s: &str) -> Result<(&str, Option<u16>), &'static str> {
    if s.is_empty() {
        return Err("empty host");
    }
    let (host, port) = if let Some(inner) = s.strip_prefix('[') {
        let end = inner.find(']').ok_or("IPv6 reference without ]")?;
        let addr = &inner[..end];
        if addr.parse::<Ipv6Addr>().is_err()
            && addr.replacen(":::", "::", 1).parse::<Ipv6Addr>().is_err()
        {
            return Err("bad IPv6 reference");
        }
        let after = &inner[end + 1..];
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("junk after IPv6 reference")?),
        };
        (&s[..end + 2], port)
    } else {
        match split_at(s, b':') {
            Some((h, p)) => {
                if p.bytes().any(|b| b == b':') {
                    return Err("IPv6 address must be in [brackets]");
                }
                (h, Some(p))
            }
            None => (s, None),
        }
    };
    if !host.starts_with('[')
        && (host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'))
    {
        return Err("bad host name");
    }
    let port = match port {
        None => None,
        Some(p) => {
            if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err("bad port");
            }
            Some(p.parse::<u16>().map_err(|_| "port out of range")?)
        }
    };
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sip_uris() {
        let u = Uri::parse("sip:user;par=u%40example.net@example.com").unwrap();
        assert_eq!(u.user.as_deref(), Some("user;par=u%40example.net"));
        assert_eq!(
            u.user_unescaped().as_deref(),
            Some("user;par=u@example.net")
        );
        assert_eq!(u.host, "example.com");

        let u = Uri::parse("sip:[2001:db8::10:5070]").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("[2001:db8::10:5070]", None));
        let u = Uri::parse("sip:[2001:db8::10]:5070;transport=tcp?Route=%3Csip:x%3E").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("[2001:db8::10]", Some(5070)));
        assert_eq!(u.param("transport"), Some(Some("tcp")));
        assert_eq!(u.headers.as_deref(), Some("Route=%3Csip:x%3E"));
        assert_eq!(
            u.to_string(),
            "sip:[2001:db8::10]:5070;transport=tcp?Route=%3Csip:x%3E"
        );
        assert!(Uri::parse("sip:[2001:db8:::192.0.2.1]").is_ok());
    }

    #[test]
    fn refusals() {
        for bad in [
            "sip:user@2001:db8::10",
            "<sip:user@example.com>",
            "sip:user@example.com; lr",
            "sip:user@example.com:99999",
            "sip:user@exa mple.com",
            "sip:user@example.com;;",
            "nocolon",
            "sip:",
        ] {
            assert!(Uri::parse(bad).is_err(), "{bad} should be refused");
        }
        let u = Uri::parse("isbn:2983792873").unwrap();
        assert_eq!(u.scheme, Scheme::Other("isbn".into()));
        assert!(!u.is_sip());
    }
}
