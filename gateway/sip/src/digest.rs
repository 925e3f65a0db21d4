//! HTTP Digest authentication as SIP uses it (RFC 3261 §22, RFC 7616,
//! RFC 8760): SHA-256 and MD5, `qop=auth`, nonces that carry their issue
//! time and a keyed tag (so any node holding the secret can check them and
//! an expired one is answered `stale=true`), and nonce counts that refuse
//! replays.

use std::borrow::Cow;

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
    pub fn hash(self, parts: &[&[u8]]) -> Hex {
        fn run<D: sha2::Digest>(mut d: D, parts: &[&[u8]]) -> Hex {
            for (i, p) in parts.iter().enumerate() {
                if i > 0 {
                    d.update(b":");
                }
                d.update(p);
            }
            Hex::of(&d.finalize())
        }
        match self {
            Algorithm::Md5 => run(Md5::new(), parts),
            Algorithm::Sha256 => run(Sha256::new(), parts),
        }
    }
}

/// A digest in lower-case hex, kept on the stack: checking a request's
/// credentials computes several and keeps none.
#[derive(Clone, Copy)]
pub struct Hex {
    digits: [u8; 64],
    len: usize,
}

impl Hex {
    /// `bytes` (at most 32 of them) in lower-case hex.
    pub fn of(bytes: &[u8]) -> Self {
        let mut digits = [0; 64];
        let len = (bytes.len() * 2).min(64);
        // The buffer is exactly twice as long as the bytes kept, so this
        // cannot fail.
        let _ = hex::encode_to_slice(&bytes[..len / 2], &mut digits[..len]);
        Hex { digits, len }
    }

    pub fn as_str(&self) -> &str {
        // Only hex digits are stored.
        std::str::from_utf8(&self.digits[..self.len]).unwrap_or_default()
    }
}

impl std::fmt::Display for Hex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for Hex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// `H(username:realm:password)`, computed once per user and algorithm.
pub fn ha1(alg: Algorithm, username: &str, realm: &str, password: &str) -> String {
    alg.hash(&[username.as_bytes(), realm.as_bytes(), password.as_bytes()])
        .as_str()
        .to_owned()
}

/// The `response` a client holding `ha1` must send for `qop=auth`.
pub fn response(alg: Algorithm, ha1: &str, c: &Credentials<'_>, method: &str) -> Hex {
    let ha2 = alg.hash(&[method.as_bytes(), c.uri.as_bytes()]);
    alg.hash(&[
        ha1.as_bytes(),
        c.nonce.as_bytes(),
        c.nc.as_bytes(),
        c.cnonce.as_bytes(),
        b"auth",
        ha2.as_str().as_bytes(),
    ])
}

/// An `Authorization` / `Proxy-Authorization` header with the Digest
/// scheme. Its fields borrow from the header unless unescaping changed them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials<'a> {
    pub username: Cow<'a, str>,
    pub realm: Cow<'a, str>,
    pub nonce: Cow<'a, str>,
    pub uri: Cow<'a, str>,
    /// Lower case.
    pub response: Cow<'a, str>,
    pub algorithm: Option<Cow<'a, str>>,
    pub qop: Option<Cow<'a, str>>,
    pub nc: Cow<'a, str>,
    pub cnonce: Cow<'a, str>,
}

impl<'a> Credentials<'a> {
    /// `Ok(None)` when the scheme is not Digest (RFC 4475 §3.3.7: answer
    /// with a challenge in a scheme we know).
    pub fn parse(value: &'a str) -> Result<Option<Self>, &'static str> {
        let value = value.trim_ascii();
        let (scheme, rest) = value.split_once([' ', '\t']).unwrap_or((value, ""));
        if !scheme.eq_ignore_ascii_case("Digest") {
            return Ok(None);
        }
        let mut c = Credentials::default();
        for (k, v) in auth_params(rest)? {
            let is = |name: &str| k.eq_ignore_ascii_case(name);
            if is("username") {
                c.username = v;
            } else if is("realm") {
                c.realm = v;
            } else if is("nonce") {
                c.nonce = v;
            } else if is("uri") {
                c.uri = v;
            } else if is("response") {
                c.response = match v {
                    Cow::Borrowed(b) => crate::ascii_lowercase(b),
                    Cow::Owned(o) => Cow::Owned(o.to_ascii_lowercase()),
                };
            } else if is("algorithm") {
                c.algorithm = Some(v);
            } else if is("qop") {
                c.qop = Some(v);
            } else if is("nc") {
                c.nc = v;
            } else if is("cnonce") {
                c.cnonce = v;
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

/// `k=v, k="v", …` with quoted strings (backslash escapes) allowed. Values
/// are borrowed unless they hold escapes.
fn auth_params(s: &str) -> Result<Vec<(&str, Cow<'_, str>)>, &'static str> {
    let mut out = Vec::with_capacity(10);
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
        let key = s[start..i].trim_ascii();
        if i >= b.len() || b[i] != b'=' {
            return Err("auth parameter without a value");
        }
        i += 1;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let value = if b.get(i) == Some(&b'"') {
            i += 1;
            let start = i;
            let mut escaped = false;
            loop {
                match b.get(i) {
                    None => return Err("unterminated quoted auth parameter"),
                    Some(b'\\') => {
                        escaped = true;
                        i += 2;
                    }
                    Some(b'"') => break,
                    Some(_) => i += 1,
                }
            }
            let raw = &b[start..i];
            i += 1;
            if escaped {
                let mut v = Vec::with_capacity(raw.len());
                let mut j = 0;
                while j < raw.len() {
                    if raw[j] == b'\\' {
                        j += 1;
                    }
                    if let Some(&c) = raw.get(j) {
                        v.push(c);
                    }
                    j += 1;
                }
                Cow::Owned(String::from_utf8_lossy(&v).into_owned())
            } else {
                // Quotes are ASCII, so the slice between them is whole text.
                Cow::Borrowed(&s[start..i - 1])
            }
        } else {
            let start = i;
            while i < b.len() && b[i] != b',' {
                i += 1;
            }
            Cow::Borrowed(s[start..i].trim_ascii())
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

    fn tag(&self, body: &str) -> Hex {
        let mut h = Sha256::new();
        h.update(self.secret);
        h.update(body.as_bytes());
        Hex::of(&h.finalize()[..12])
    }

    pub fn issue(&self, now_s: u64, serial: u64) -> String {
        let mut nonce = format!("{now_s:x}.{serial:x}");
        let tag = self.tag(&nonce);
        nonce.push('.');
        nonce.push_str(tag.as_str());
        nonce
    }

    /// The serial a nonce was issued with (meaningful once `check` passed).
    pub fn serial(nonce: &str) -> Option<u64> {
        nonce
            .split('.')
            .nth(1)
            .and_then(|t| u64::from_str_radix(t, 16).ok())
    }

    pub fn check(&self, nonce: &str, now_s: u64) -> NonceCheck {
        let Some((body, tag)) = nonce.rsplit_once('.') else {
            return NonceCheck::Unknown;
        };
        if !constant_time_eq(self.tag(body).as_str().as_bytes(), tag.as_bytes()) {
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

/// What [`NonceCounts::check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountCheck {
    /// A higher count than before: accept.
    Advanced,
    /// The same count from the same request (same branch): a UDP
    /// retransmission, to be answered again.
    Retransmission,
    /// The same or a lower count from another request: a replay.
    Replay,
    /// The nonce's slot was reused by a newer nonce: ask again, `stale=true`.
    Forgotten,
}

/// Nonce counts in a fixed ring indexed by the nonce's serial, so memory
/// stays constant whatever the request rate: a nonce whose slot a newer
/// nonce took is simply re-challenged (`stale=true`).
#[derive(Debug)]
pub struct NonceCounts {
    slots: Vec<(u64, u32, u64)>,
}

impl NonceCounts {
    /// `capacity` slots (rounded up to a power of two).
    pub fn new(capacity: usize) -> Self {
        NonceCounts {
            slots: vec![(u64::MAX, 0, 0); capacity.next_power_of_two()],
        }
    }

    fn slot(&mut self, serial: u64) -> &mut (u64, u32, u64) {
        let mask = self.slots.len() as u64 - 1;
        &mut self.slots[(serial & mask) as usize]
    }

    /// A nonce with this serial was issued.
    pub fn issued(&mut self, serial: u64) {
        *self.slot(serial) = (serial, 0, 0);
    }

    /// Checks and records count `nc` used by the request with branch hash
    /// `branch`.
    pub fn check(&mut self, serial: u64, nc: u32, branch: u64) -> CountCheck {
        let slot = self.slot(serial);
        if slot.0 != serial {
            return CountCheck::Forgotten;
        }
        if nc > slot.1 {
            *slot = (serial, nc, branch);
            CountCheck::Advanced
        } else if nc == slot.1 && branch == slot.2 {
            CountCheck::Retransmission
        } else {
            CountCheck::Replay
        }
    }
}

/// A `WWW-Authenticate` / `Proxy-Authenticate` value. It depends only on
/// the realm and the nonce, never on who asked (no user enumeration).
pub fn challenge(alg: Algorithm, realm: &str, nonce: &str, stale: bool) -> String {
    let mut out = String::with_capacity(80 + realm.len() + nonce.len());
    for part in [
        "Digest realm=\"",
        realm,
        "\", nonce=\"",
        nonce,
        "\", algorithm=",
        alg.name(),
        ", qop=\"auth\"",
        if stale { ", stale=true" } else { "" },
    ] {
        out.push_str(part);
    }
    out
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
        assert_eq!(response(Algorithm::Md5, &h, &c, "GET").as_str(), c.response);
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
        assert_eq!(
            response(Algorithm::Sha256, &h, &c, "GET").as_str(),
            c.response
        );
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
    fn nonces_carry_their_time_and_serial_in_hex() {
        let n = Nonces::new([7; 32], 300);
        for (now, serial) in [(0, 0), (1000, 1), (0x6a1f_00ff, 0xabc), (u64::MAX, 16)] {
            let nonce = n.issue(now, serial);
            assert!(
                nonce.starts_with(&format!("{now:x}.{serial:x}.")),
                "{nonce}"
            );
            assert_eq!(Nonces::serial(&nonce), Some(serial));
        }
    }

    #[test]
    fn nonce_counts_refuse_replays_and_forget_old_slots() {
        let mut counts = NonceCounts::new(4);
        counts.issued(1);
        assert_eq!(counts.check(1, 1, 77), CountCheck::Advanced);
        assert_eq!(counts.check(1, 1, 77), CountCheck::Retransmission);
        assert_eq!(counts.check(1, 1, 78), CountCheck::Replay);
        assert_eq!(counts.check(1, 2, 79), CountCheck::Advanced);
        assert_eq!(
            counts.check(2, 1, 80),
            CountCheck::Forgotten,
            "never issued"
        );
        counts.issued(5); // takes serial 1's slot
        assert_eq!(counts.check(1, 3, 81), CountCheck::Forgotten);
        assert_eq!(
            Nonces::serial(&Nonces::new([1; 32], 60).issue(10, 0xab)),
            Some(0xab)
        );
    }
}
