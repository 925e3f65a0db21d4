//! HTTP Digest authentication as SIP uses it (RFC 3261 §22, RFC 7616,
//! RFC 8760): SHA-256 and MD5, `qop=auth`, nonces that carry their issue
//! time and a keyed tag (so any node holding the secret can check them and
//! an expired one is answered `stale=true`), and nonce counts that refuse
//! replays.

use std::collections::HashMap;

use md5::Md5;
use sha2::{Digest as _, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Md5,
    Sha256,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        if name.eq_ignore_ascii_case("MD5") {
            Some(Algorithm::Md5)
        } else if name.eq_ignore_ascii_case("SHA-256") {
            Some(Algorithm::Sha256)
        } else {
            None
        }
    }

    /// Lower-case hex of the hash of the parts joined by `:`.
    pub fn hash(self, parts: &[&[u8]]) -> String {
        fn run<D: sha2::Digest>(mut d: D, parts: &[&[u8]]) -> String {
            for (i, p) in parts.iter().enumerate() {
                if i > 0 {
                    d.update(b":");
                }
                d.update(p);
            }
            hex::encode(d.finalize())
        }
        match self {
            Algorithm::Md5 => run(Md5::new(), parts),
            Algorithm::Sha256 => run(Sha256::new(), parts),
        }
    }
}

/// `H(username:realm:password)`, computed once per user and algorithm.
pub fn ha1(alg: Algorithm, username: &str, realm: &str, password: &str) -> String {
    alg.hash(&[username.as_bytes(), realm.as_bytes(), password.as_bytes()])
}

/// The `response` a client holding `ha1` must send for `qop=auth`.
pub fn response(alg: Algorithm, ha1: &str, c: &Credentials, method: &str) -> String {
    let ha2 = alg.hash(&[method.as_bytes(), c.uri.as_bytes()]);
    alg.hash(&[
        ha1.as_bytes(),
        c.nonce.as_bytes(),
        c.nc.as_bytes(),
        c.cnonce.as_bytes(),
        b"auth",
        ha2.as_bytes(),
    ])
}

/// An `Authorization` / `Proxy-Authorization` header with the Digest scheme.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    pub algorithm: Option<String>,
    pub qop: Option<String>,
    pub nc: String,
    pub cnonce: String,
}

impl Credentials {
    /// `Ok(None)` when the scheme is not Digest (RFC 4475 §3.3.7: answer
    /// with a challenge in a scheme we know).
    pub fn parse(value: &str) -> Result<Option<Self>, &'static str> {
        let value = value.trim();
        let (scheme, rest) = value.split_once([' ', '\t']).unwrap_or((value, ""));
        if !scheme.eq_ignore_ascii_case("Digest") {
            return Ok(None);
        }
        let mut c = Credentials::default();
        for (k, v) in auth_params(rest)? {
            match k.to_ascii_lowercase().as_str() {
                "username" => c.username = v,
                "realm" => c.realm = v,
                "nonce" => c.nonce = v,
                "uri" => c.uri = v,
                "response" => c.response = v.to_ascii_lowercase(),
                "algorithm" => c.algorithm = Some(v),
                "qop" => c.qop = Some(v),
                "nc" => c.nc = v,
                "cnonce" => c.cnonce = v,
                _ => {}
            }
        }
        if c.username.is_empty() || c.nonce.is_empty() || c.response.is_empty() || c.uri.is_empty()
        {
            return Err("Digest credentials without username, nonce, uri or response");
        }
        Ok(Some(c))
    }

    /// The algorithm named (MD5 when absent, RFC 7616 §3.3); `None` for
    /// one we do not support.
    pub fn algorithm(&self) -> Option<Algorithm> {
        self.algorithm
            .as_deref()
            .map_or(Some(Algorithm::Md5), Algorithm::parse)
    }

    /// The nonce count as a number, when `qop=auth` is used correctly.
    pub fn nonce_count(&self) -> Option<u32> {
        if !self
            .qop
            .as_deref()
            .is_some_and(|q| q.eq_ignore_ascii_case("auth"))
            || self.cnonce.is_empty()
        {
            return None;
        }
        if self.nc.len() != 8 {
            return None;
        }
        u32::from_str_radix(&self.nc, 16).ok()
    }
}

/// `k=v, k="v", …` with quoted strings (backslash escapes) allowed.
fn auth_params(s: &str) -> Result<Vec<(String, String)>, &'static str> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i] == b',' || b[i].is_ascii_whitespace()) {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let start = i;
        while i < b.len() && b[i] != b'=' && b[i] != b',' {
            i += 1;
        }
        let key = s[start..i].trim().to_owned();
        if i >= b.len() || b[i] != b'=' {
            return Err("auth parameter without a value");
        }
        i += 1;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let value = if b.get(i) == Some(&b'"') {
            i += 1;
            let mut v = Vec::new();
            loop {
                match b.get(i) {
                    None => return Err("unterminated quoted auth parameter"),
                    Some(b'\\') => {
                        if let Some(&c) = b.get(i + 1) {
                            v.push(c);
                        }
                        i += 2;
                    }
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(&c) => {
                        v.push(c);
                        i += 1;
                    }
                }
            }
            String::from_utf8_lossy(&v).into_owned()
        } else {
            let start = i;
            while i < b.len() && b[i] != b',' {
                i += 1;
            }
            s[start..i].trim().to_owned()
        };
        out.push((key, value));
    }
    Ok(out)
}

/// What a nonce's tag and age say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    /// Issued by a node with our secret, `issued_at` seconds.
    Fresh { issued_at: u64 },
    /// Ours but older than the lifetime: challenge again with `stale=true`.
    Stale,
    /// Not ours (forged, garbled or from another realm's secret).
    Unknown,
}

/// Issues and checks nonces: `<issued, hex>.<serial, hex>.<tag>` where the
/// tag is a keyed SHA-256 of the rest, so checking needs no storage.
#[derive(Debug, Clone)]
pub struct Nonces {
    secret: [u8; 32],
    lifetime_s: u64,
}

impl Nonces {
    pub fn new(secret: [u8; 32], lifetime_s: u64) -> Self {
        Nonces { secret, lifetime_s }
    }

    fn tag(&self, body: &str) -> String {
        let mut h = Sha256::new();
        h.update(self.secret);
        h.update(body.as_bytes());
        hex::encode(&h.finalize()[..12])
    }

    pub fn issue(&self, now_s: u64, serial: u64) -> String {
        let body = format!("{now_s:x}.{serial:x}");
        let tag = self.tag(&body);
        format!("{body}.{tag}")
    }

    pub fn check(&self, nonce: &str, now_s: u64) -> NonceCheck {
        let Some((body, tag)) = nonce.rsplit_once('.') else {
            return NonceCheck::Unknown;
        };
        if !constant_time_eq(self.tag(body).as_bytes(), tag.as_bytes()) {
            return NonceCheck::Unknown;
        }
        let Some(issued_at) = body
            .split('.')
            .next()
            .and_then(|t| u64::from_str_radix(t, 16).ok())
        else {
            return NonceCheck::Unknown;
        };
        if issued_at > now_s + 5 {
            return NonceCheck::Unknown;
        }
        if now_s.saturating_sub(issued_at) > self.lifetime_s {
            return NonceCheck::Stale;
        }
        NonceCheck::Fresh { issued_at }
    }
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The highest nonce count seen per nonce, so a replayed request (same or
/// lower count) is refused. Entries leave when their nonce expires.
#[derive(Debug, Default)]
pub struct NonceCounts {
    seen: HashMap<String, (u32, u64)>,
    last_sweep: u64,
}

impl NonceCounts {
    /// Records `nc` for `nonce`; false when it is not higher than before.
    pub fn advance(
        &mut self,
        nonce: &str,
        nc: u32,
        issued_at: u64,
        now_s: u64,
        lifetime_s: u64,
    ) -> bool {
        if now_s >= self.last_sweep + lifetime_s.max(1) {
            self.seen
                .retain(|_, (_, issued)| now_s.saturating_sub(*issued) <= lifetime_s);
            self.last_sweep = now_s;
        }
        match self.seen.get_mut(nonce) {
            Some((last, _)) if nc <= *last => false,
            Some((last, _)) => {
                *last = nc;
                true
            }
            None => {
                self.seen.insert(nonce.to_owned(), (nc, issued_at));
                true
            }
        }
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// A `WWW-Authenticate` / `Proxy-Authenticate` value. It depends only on
/// the realm and the nonce, never on who asked (no user enumeration).
pub fn challenge(alg: Algorithm, realm: &str, nonce: &str, stale: bool) -> String {
    format!(
        "Digest realm=\"{realm}\", nonce=\"{nonce}\", algorithm={}, qop=\"auth\"{}",
        alg.name(),
        if stale { ", stale=true" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2617_example_md5() {
        // RFC 2617 §3.5 (the HTTP example; same algorithm).
        let c = Credentials::parse(
            "Digest username=\"Mufasa\", realm=\"testrealm@host.com\", nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", \
             uri=\"/dir/index.html\", qop=auth, nc=00000001, cnonce=\"0a4f113b\", \
             response=\"6629fae49393a05397450978507c4ef1\", opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"",
        )
        .unwrap()
        .unwrap();
        let h = ha1(
            Algorithm::Md5,
            "Mufasa",
            "testrealm@host.com",
            "Circle Of Life",
        );
        assert_eq!(response(Algorithm::Md5, &h, &c, "GET"), c.response);
        assert_eq!(c.nonce_count(), Some(1));
    }

    #[test]
    fn rfc7616_example_sha256() {
        // RFC 7616 §3.9.1.
        let c = Credentials::parse(
            "Digest username=\"Mufasa\", realm=\"http-auth@example.org\", uri=\"/dir/index.html\", algorithm=SHA-256, \
             nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\", nc=00000001, cnonce=\"f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ\", \
             qop=auth, response=\"753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1\", \
             opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\"",
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.algorithm(), Some(Algorithm::Sha256));
        let h = ha1(
            Algorithm::Sha256,
            "Mufasa",
            "http-auth@example.org",
            "Circle of Life",
        );
        assert_eq!(response(Algorithm::Sha256, &h, &c, "GET"), c.response);
    }

    #[test]
    fn nonces_expire_and_forgeries_fail() {
        let n = Nonces::new([7; 32], 300);
        let nonce = n.issue(1000, 1);
        assert_eq!(n.check(&nonce, 1100), NonceCheck::Fresh { issued_at: 1000 });
        assert_eq!(n.check(&nonce, 1301), NonceCheck::Stale);
        let other = Nonces::new([8; 32], 300);
        assert_eq!(other.check(&nonce, 1100), NonceCheck::Unknown);
        assert_eq!(
            n.check("3e8.1.000000000000000000000000", 1100),
            NonceCheck::Unknown
        );
        assert_eq!(n.check("garbage", 1100), NonceCheck::Unknown);
    }

    #[test]
    fn nonce_counts_refuse_replays() {
        let mut counts = NonceCounts::default();
        assert!(counts.advance("n1", 1, 0, 10, 300));
        assert!(!counts.advance("n1", 1, 0, 11, 300));
        assert!(counts.advance("n1", 2, 0, 12, 300));
        assert!(counts.advance("n2", 1, 0, 12, 300));
        // Expired nonces are forgotten on a sweep.
        assert!(counts.advance("n3", 1, 400, 700, 300));
        assert_eq!(counts.len(), 1);
    }
}
