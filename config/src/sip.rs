//! `[sip]`: listeners, the registrar, digest authentication, users (the
//! managers' extensions) and abuse limits.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ConfigError;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SipConfig {
    /// Off: no SIP listeners at all.
    pub enabled: bool,
    #[serde(with = "crate::model::socket_addrs")]
    pub udp_listen: Vec<SocketAddr>,
    #[serde(with = "crate::model::socket_addrs")]
    pub tcp_listen: Vec<SocketAddr>,
    /// SIP over TLS (1.2 and 1.3), used when both files below are set.
    #[serde(with = "crate::model::socket_addrs")]
    pub tls_listen: Vec<SocketAddr>,
    /// PEM certificate chain for TLS; empty: no TLS listener.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key for TLS.
    pub tls_key_file: Option<PathBuf>,
    /// Digest realm shown to phones.
    pub realm: String,
    /// Domains (host part of the To URI) this registrar serves; empty: any.
    pub domains: Vec<String>,
    /// Digest algorithms offered, most preferred first.
    pub algorithms: Vec<String>,
    /// How long a nonce is good for; older ones get `stale=true`.
    #[serde(with = "crate::model::humantime_serde")]
    pub nonce_lifetime: Duration,
    /// Key of the nonces' tags. Empty: random at each start (one node).
    /// Several gateway nodes behind one address need the same secret.
    pub nonce_secret: String,
    pub default_expires: u32,
    pub min_expires: u32,
    pub max_expires: u32,
    /// `memory` (one node) or `redis` (bindings shared by every node).
    pub location: LocationBackend,
    pub redis_url: String,
    pub redis_prefix: String,
    /// Idle TCP connections are closed after this long.
    #[serde(with = "crate::model::humantime_serde")]
    pub tcp_idle_timeout: Duration,
    pub security: SipSecurityConfig,
    /// Host (name or address) put in our Via and Contact headers; empty:
    /// the UDP listener's address.
    pub advertised_host: String,
    /// A call ringing this long without an answer moves to the next
    /// candidate (or ends as missed).
    #[serde(with = "crate::model::humantime_serde")]
    pub ring_timeout: Duration,
    /// The managers' extensions.
    pub users: Vec<SipUser>,
    /// PBXs and SIP trunks calls come from (and external calls go to).
    pub trunks: Vec<SipTrunk>,
    /// Company numbers and the manager each rings when routing has no
    /// better answer.
    pub numbers: Vec<SipNumber>,
}

/// A PBX or carrier trunk.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SipTrunk {
    pub name: String,
    /// Source IP addresses whose requests are this trunk's, without
    /// authentication.
    pub addresses: Vec<std::net::IpAddr>,
    /// Digest credentials the trunk may authenticate with instead.
    pub username: String,
    pub password: String,
    /// Where calls from managers to external numbers are sent, e.g.
    /// "127.0.0.1:5080"; empty: this trunk takes no outgoing calls.
    pub outbound: String,
    /// Record this trunk's calls; unset: `media.record`.
    pub record: Option<bool>,
}

impl fmt::Debug for SipTrunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SipTrunk")
            .field("name", &self.name)
            .field("addresses", &self.addresses)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("outbound", &self.outbound)
            .field("record", &self.record)
            .finish()
    }
}

/// A company number customers call.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SipNumber {
    /// E.164, e.g. "+74950000000".
    pub number: String,
    /// The manager (routing.managers[].id or a sip.users[].manager) it rings.
    pub manager: String,
}

impl Default for SipConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            udp_listen: vec![SocketAddr::from(([127, 0, 0, 1], 5060))],
            tcp_listen: vec![SocketAddr::from(([127, 0, 0, 1], 5060))],
            tls_listen: vec![SocketAddr::from(([127, 0, 0, 1], 5061))],
            tls_cert_file: None,
            tls_key_file: None,
            realm: "switchboard".into(),
            domains: Vec::new(),
            algorithms: vec!["SHA-256".into(), "MD5".into()],
            nonce_lifetime: Duration::from_secs(300),
            nonce_secret: String::new(),
            default_expires: 3600,
            min_expires: 60,
            max_expires: 7200,
            location: LocationBackend::Memory,
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_prefix: "switchboard:".into(),
            tcp_idle_timeout: Duration::from_secs(600),
            security: SipSecurityConfig::default(),
            advertised_host: String::new(),
            ring_timeout: Duration::from_secs(30),
            users: Vec::new(),
            trunks: Vec::new(),
            numbers: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LocationBackend {
    Memory,
    Redis,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SipSecurityConfig {
    /// Failed authentications from one address before it is banned; 0: never.
    pub ban_after_failures: u32,
    /// Window the failures are counted in.
    #[serde(with = "crate::model::humantime_serde")]
    pub failure_window: Duration,
    #[serde(with = "crate::model::humantime_serde")]
    pub ban_for: Duration,
    /// Requests per second one source address may send (burst: twice as
    /// many); 0: no limit.
    pub requests_per_second: u32,
    /// User-Agent substrings (case-insensitive) of scanners, dropped unanswered.
    pub scanner_user_agents: Vec<String>,
}

impl Default for SipSecurityConfig {
    fn default() -> Self {
        Self {
            ban_after_failures: 10,
            failure_window: Duration::from_secs(600),
            ban_for: Duration::from_secs(600),
            requests_per_second: 50,
            scanner_user_agents: [
                "friendly-scanner",
                "sipvicious",
                "sip-scan",
                "sipcli",
                "sundayddr",
                "iwar",
                "sivus",
                "vaxsipuseragent",
                "pplsip",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

/// One extension. The password is given inline or read from a file.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SipUser {
    /// The user part phones register with, e.g. "1001".
    pub extension: String,
    pub password: String,
    /// A file holding the password (trailing newline ignored).
    pub password_file: Option<PathBuf>,
    /// The routing manager this extension belongs to (`routing.managers[].id`).
    pub manager: String,
    /// Record calls this extension answers or places; unset: the trunk's
    /// setting, else `media.record`.
    pub record: Option<bool>,
}

impl fmt::Debug for SipUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SipUser")
            .field("extension", &self.extension)
            .field("password", &"<redacted>")
            .field("password_file", &self.password_file)
            .field("manager", &self.manager)
            .field("record", &self.record)
            .finish()
    }
}

impl SipUser {
    /// The password, reading `password_file` when set.
    pub fn resolve_password(&self) -> Result<String, ConfigError> {
        match &self.password_file {
            Some(path) => ConfigError::read_secret_file("sip.users[].password_file", path),
            None => Ok(self.password.clone()),
        }
    }
}

pub(crate) fn validate_sip(s: &SipConfig) -> Result<(), ConfigError> {
    if s.realm.is_empty() || s.realm.contains(['"', '\\']) || s.realm.len() > 128 {
        return Err(ConfigError::invalid(
            "sip.realm",
            &s.realm,
            "1 to 128 characters without quotes or backslashes",
        ));
    }
    if s.algorithms.is_empty() {
        return Err(ConfigError::invalid(
            "sip.algorithms",
            "[]",
            "one or more of \"SHA-256\", \"MD5\"",
        ));
    }
    for a in &s.algorithms {
        if a != "SHA-256" && a != "MD5" {
            return Err(ConfigError::invalid(
                "sip.algorithms",
                a,
                "\"SHA-256\" or \"MD5\"",
            ));
        }
    }
    if s.nonce_lifetime < Duration::from_secs(10) || s.nonce_lifetime > Duration::from_secs(86_400)
    {
        return Err(ConfigError::invalid(
            "sip.nonce_lifetime",
            humantime::format_duration(s.nonce_lifetime),
            "a duration between 10s and 24h",
        ));
    }
    if s.min_expires == 0 || s.min_expires > s.max_expires {
        return Err(ConfigError::invalid(
            "sip.min_expires",
            s.min_expires,
            "at least 1 and at most sip.max_expires",
        ));
    }
    if !(s.min_expires..=s.max_expires).contains(&s.default_expires) {
        return Err(ConfigError::invalid(
            "sip.default_expires",
            s.default_expires,
            "between sip.min_expires and sip.max_expires",
        ));
    }
    if s.location == LocationBackend::Redis
        && !(s.redis_url.starts_with("redis://") || s.redis_url.starts_with("rediss://"))
    {
        return Err(ConfigError::invalid(
            "sip.redis_url",
            crate::redact_url(&s.redis_url),
            "redis://HOST:PORT or rediss://HOST:PORT",
        ));
    }
    match (&s.tls_cert_file, &s.tls_key_file) {
        (Some(_), None) => {
            return Err(ConfigError::invalid(
                "sip.tls_key_file",
                "(unset)",
                "the private key for sip.tls_cert_file",
            ));
        }
        (None, Some(_)) => {
            return Err(ConfigError::invalid(
                "sip.tls_cert_file",
                "(unset)",
                "the certificate chain for sip.tls_key_file",
            ));
        }
        (Some(cert), Some(key)) => {
            for (name, path) in [("sip.tls_cert_file", cert), ("sip.tls_key_file", key)] {
                if std::fs::metadata(path).is_err() {
                    return Err(ConfigError::invalid(
                        name,
                        path.display(),
                        "a readable PEM file",
                    ));
                }
            }
        }
        (None, None) => {}
    }
    if s.ring_timeout < Duration::from_secs(1) || s.ring_timeout > Duration::from_secs(600) {
        return Err(ConfigError::invalid(
            "sip.ring_timeout",
            humantime::format_duration(s.ring_timeout),
            "a duration between 1s and 10m",
        ));
    }
    for (i, t) in s.trunks.iter().enumerate() {
        let key = format!("sip.trunks[{i}]");
        if t.name.is_empty() {
            return Err(ConfigError::invalid(
                &format!("{key}.name"),
                &t.name,
                "a name for logs and events",
            ));
        }
        if t.addresses.is_empty() && t.username.is_empty() {
            return Err(ConfigError::invalid(
                &format!("{key}.addresses"),
                "[]",
                "source addresses, or a username and password to authenticate the trunk",
            ));
        }
        if !t.username.is_empty() && t.password.len() < 6 {
            return Err(ConfigError::invalid(
                &format!("{key}.password"),
                "<redacted>",
                "a password of 6 characters or more",
            ));
        }
        if !t.outbound.is_empty() && t.outbound.parse::<SocketAddr>().is_err() {
            return Err(ConfigError::invalid(
                &format!("{key}.outbound"),
                &t.outbound,
                "IP:PORT such as \"192.0.2.10:5060\"",
            ));
        }
    }
    for (i, n) in s.numbers.iter().enumerate() {
        let key = format!("sip.numbers[{i}]");
        let ok = n.number.len() > 4
            && n.number.starts_with('+')
            && n.number[1..].bytes().all(|b| b.is_ascii_digit());
        if !ok {
            return Err(ConfigError::invalid(
                &format!("{key}.number"),
                &n.number,
                "an E.164 number such as \"+74950000000\"",
            ));
        }
        if n.manager.is_empty() {
            return Err(ConfigError::invalid(
                &format!("{key}.manager"),
                &n.manager,
                "the manager this number rings",
            ));
        }
        if !s.users.iter().any(|u| u.manager == n.manager) {
            return Err(ConfigError::invalid(
                &format!("{key}.manager"),
                &n.manager,
                "a manager named by one of sip.users[].manager",
            ));
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, u) in s.users.iter().enumerate() {
        let key = format!("sip.users[{i}]");
        let ok = !u.extension.is_empty()
            && u.extension.len() <= 32
            && u.extension
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'));
        if !ok {
            return Err(ConfigError::invalid(
                &format!("{key}.extension"),
                &u.extension,
                "1 to 32 characters of A-Z, a-z, 0-9, '.', '_', '-', '+'",
            ));
        }
        if !seen.insert(u.extension.as_str()) {
            return Err(ConfigError::invalid(
                &format!("{key}.extension"),
                &u.extension,
                "an extension not used by another user",
            ));
        }
        match &u.password_file {
            Some(path) if !u.password.is_empty() => {
                return Err(ConfigError::invalid(
                    &format!("{key}.password_file"),
                    path.display(),
                    "either password or password_file, not both",
                ));
            }
            Some(path) => {
                ConfigError::read_secret_file(&format!("{key}.password_file"), path)?;
            }
            None if u.password.len() < 6 => {
                return Err(ConfigError::invalid(
                    &format!("{key}.password"),
                    "<redacted>",
                    "a password of 6 characters or more",
                ));
            }
            None => {}
        }
    }
    Ok(())
}
