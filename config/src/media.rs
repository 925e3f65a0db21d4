//! `[media]`: the RTP relay every call's audio passes through, and the
//! recordings it writes.

use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ConfigError;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// Off: SDP passes through untouched and media flows phone to phone
    /// (nothing is recorded).
    pub enabled: bool,
    /// Address the RTP sockets bind to; empty: the SIP UDP listener's.
    pub bind_address: String,
    /// Address put in the SDP we send (`c=`); empty: `bind_address`, or
    /// `sip.advertised_host` when that is an IP address.
    pub advertised_address: String,
    /// RTP ports are taken in pairs (RTP even, RTCP the next odd one)
    /// from this range, inclusive.
    pub port_min: u16,
    pub port_max: u16,
    /// Codecs offered and accepted, by RTP encoding name: "PCMU", "PCMA".
    /// telephone-event (RFC 4733 DTMF) always passes.
    pub codecs: Vec<String>,
    /// No RTP from either side for this long ends the call (BYE to both).
    #[serde(with = "crate::model::humantime_serde")]
    pub rtp_timeout: Duration,
    /// Record answered calls (a trunk's or a user's `record` overrides it).
    pub record: bool,
    /// Recordings older than this many days are deleted; 0: kept forever.
    pub retention_days: u32,
    /// Threads relaying RTP (each waits on its calls' sockets with one
    /// epoll set); 0: one per CPU.
    pub threads: usize,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            bind_address: String::new(),
            advertised_address: String::new(),
            port_min: 10_000,
            port_max: 20_000,
            codecs: vec!["PCMU".into(), "PCMA".into()],
            rtp_timeout: Duration::from_secs(60),
            record: true,
            retention_days: 0,
            threads: 0,
        }
    }
}

pub(crate) fn validate_media(m: &MediaConfig) -> Result<(), ConfigError> {
    for (key, value) in [
        ("media.bind_address", &m.bind_address),
        ("media.advertised_address", &m.advertised_address),
    ] {
        if !value.is_empty() && value.parse::<IpAddr>().is_err() {
            return Err(ConfigError::invalid(
                key,
                value,
                "an IP address such as \"192.0.2.1\", or empty",
            ));
        }
    }
    if m.port_min < 1024 || !m.port_min.is_multiple_of(2) {
        return Err(ConfigError::invalid(
            "media.port_min",
            m.port_min,
            "an even port of 1024 or more",
        ));
    }
    if m.port_max <= m.port_min {
        return Err(ConfigError::invalid(
            "media.port_max",
            m.port_max,
            "a port above media.port_min",
        ));
    }
    if m.codecs.is_empty() {
        return Err(ConfigError::invalid(
            "media.codecs",
            "[]",
            "one or more of \"PCMU\", \"PCMA\"",
        ));
    }
    for c in &m.codecs {
        if c != "PCMU" && c != "PCMA" {
            return Err(ConfigError::invalid(
                "media.codecs",
                c,
                "\"PCMU\" or \"PCMA\"",
            ));
        }
    }
    if m.rtp_timeout < Duration::from_secs(1) || m.rtp_timeout > Duration::from_secs(3600) {
        return Err(ConfigError::invalid(
            "media.rtp_timeout",
            humantime::format_duration(m.rtp_timeout),
            "a duration between 1s and 1h",
        ));
    }
    Ok(())
}
