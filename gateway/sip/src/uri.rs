//! URIs as SIP uses them (RFC 3261 §19.1, RFC 3966 for `tel:`, RFC 5118
//! for IPv6 references). Any other scheme is kept opaque: a registrar must
//! be able to read `To: isbn:…` well enough to refuse it.

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

impl Uri {
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        if s.is_empty() {
            return Err("empty URI");
        }
        if !s.chars().all(valid_uri_char) {
            return Err("URI contains whitespace, quotes or angle brackets");
        }
        let (scheme, rest) = s.split_once(':').ok_or("URI without a scheme")?;
        let mut chars = scheme.chars();
        if !chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            || !chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        {
            return Err("bad URI scheme");
        }
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "sip" => Scheme::Sip,
            "sips" => Scheme::Sips,
            "tel" => Scheme::Tel,
            other => Scheme::Other(other.to_owned()),
        };
        if rest.is_empty() {
            return Err("URI without anything after the scheme");
        }
        if !matches!(scheme, Scheme::Sip | Scheme::Sips) {
            return Ok(Uri {
                scheme,
                user: None,
                host: String::new(),
                port: None,
                params: Vec::new(),
                headers: None,
                opaque: rest.to_owned(),
            });
        }
        // The user part may hold `?`, `;` and `:` (RFC 4475 §3.1.1.2), never
        // an unescaped `@`: it ends at the first one.
        let (user, after_user) = match rest.split_once('@') {
            Some((u, h)) => {
                if u.is_empty() {
                    return Err("empty user part");
                }
                check_escapes(u)?;
                (Some(u.to_owned()), h)
            }
            None => (None, rest),
        };
        let (hostpart, headers) = match after_user.split_once('?') {
            Some((m, h)) => {
                if h.is_empty() {
                    return Err("empty URI headers");
                }
                (m, Some(h.to_owned()))
            }
            None => (after_user, None),
        };
        let (hostport, params) = match hostpart.split_once(';') {
            Some((hp, p)) => (hp, parse_params(p)?),
            None => (hostpart, Vec::new()),
        };
        let (host, port) = split_host_port(hostport)?;
        Ok(Uri {
            scheme,
            user,
            host,
            port,
            params,
            headers,
            opaque: String::new(),
        })
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
        self.user.as_deref().map(unescape)
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

/// Decodes `%HH` escapes.
pub fn unescape(s: &str) -> String {
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
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_params(p: &str) -> Result<Vec<(String, Option<String>)>, &'static str> {
    let mut out = Vec::new();
    for part in p.split(';') {
        let (name, value) = match part.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (part, None),
        };
        if name.is_empty() {
            return Err("empty URI parameter");
        }
        check_escapes(name)?;
        out.push((name.to_owned(), value));
    }
    Ok(out)
}

/// `host[:port]` where host is a name, an IPv4 address or a bracketed IPv6
/// reference. An IPv6 address without brackets is refused (RFC 5118 §4.2);
/// `[2001:db8:::192.0.2.1]` is tolerated (§4.10).
pub fn split_host_port(s: &str) -> Result<(String, Option<u16>), &'static str> {
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
        (format!("[{addr}]"), port)
    } else {
        match s.split_once(':') {
            Some((h, p)) => {
                if p.contains(':') {
                    return Err("IPv6 address must be in [brackets]");
                }
                (h.to_owned(), Some(p))
            }
            None => (s.to_owned(), None),
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
