//! Abuse limits per source address: a token bucket for requests, counted
//! authentication failures that end in a ban, and scanner user agents.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use switchboard_config::SipSecurityConfig;

/// Milliseconds on a monotonic clock the caller provides.
pub type Ms = u64;

#[derive(Debug, Default)]
struct Source {
    tokens: f64,
    refilled_at: Ms,
    failures: u32,
    window_start: Ms,
    banned_until: Ms,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Banned,
    RateLimited,
}

const SHARDS: usize = 16;

#[derive(Debug)]
pub struct Guard {
    rate: f64,
    burst: f64,
    ban_after: u32,
    window: Ms,
    ban_for: Ms,
    scanners: Vec<String>,
    shards: Box<[Mutex<HashMap<IpAddr, Source>>]>,
}

fn ms(d: Duration) -> Ms {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Guard {
    pub fn new(cfg: &SipSecurityConfig) -> Self {
        Self {
            rate: f64::from(cfg.requests_per_second),
            burst: f64::from(cfg.requests_per_second) * 2.0,
            ban_after: cfg.ban_after_failures,
            window: ms(cfg.failure_window),
            ban_for: ms(cfg.ban_for),
            scanners: cfg
                .scanner_user_agents
                .iter()
                .map(|s| s.to_ascii_lowercase())
                .collect(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, Source>> {
        let h = match ip {
            IpAddr::V4(v4) => u64::from(u32::from(*v4)),
            IpAddr::V6(v6) => (u128::from(*v6) % u128::from(u64::MAX)) as u64,
        };
        &self.shards[(h.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 60) as usize % SHARDS]
    }

    /// Whether a request from `ip` may be looked at.
    pub fn admit(&self, ip: IpAddr, now: Ms) -> Verdict {
        if self.rate == 0.0 && self.ban_after == 0 {
            return Verdict::Pass;
        }
        let mut map = self.shard(&ip).lock().unwrap_or_else(|p| p.into_inner());
        let Some(src) = map.get_mut(&ip) else {
            if self.rate > 0.0 {
                map.insert(
                    ip,
                    Source {
                        tokens: self.burst - 1.0,
                        refilled_at: now,
                        ..Source::default()
                    },
                );
            }
            return Verdict::Pass;
        };
        if src.banned_until > now {
            return Verdict::Banned;
        }
        if self.rate > 0.0 {
            let elapsed = now.saturating_sub(src.refilled_at) as f64 / 1000.0;
            src.tokens = (src.tokens + elapsed * self.rate).min(self.burst);
            src.refilled_at = now;
            if src.tokens < 1.0 {
                return Verdict::RateLimited;
            }
            src.tokens -= 1.0;
        }
        Verdict::Pass
    }

    /// Counts a failed authentication; true when it banned the source.
    pub fn auth_failed(&self, ip: IpAddr, now: Ms) -> bool {
        if self.ban_after == 0 {
            return false;
        }
        let mut map = self.shard(&ip).lock().unwrap_or_else(|p| p.into_inner());
        let src = map.entry(ip).or_insert_with(|| Source {
            tokens: self.burst,
            refilled_at: now,
            ..Source::default()
        });
        if now.saturating_sub(src.window_start) > self.window {
            src.window_start = now;
            src.failures = 0;
        }
        src.failures += 1;
        if src.failures >= self.ban_after {
            src.banned_until = now + self.ban_for;
            src.failures = 0;
            return true;
        }
        false
    }

    /// Whether the User-Agent is a known scanner's.
    pub fn is_scanner(&self, user_agent: Option<&str>) -> bool {
        let Some(ua) = user_agent else { return false };
        let ua = ua.to_ascii_lowercase();
        self.scanners.iter().any(|s| ua.contains(s.as_str()))
    }

    /// Sources currently banned.
    pub fn banned(&self, now: Ms) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .values()
                    .filter(|v| v.banned_until > now)
                    .count()
            })
            .sum()
    }

    /// Forgets sources with nothing pending (call now and then).
    pub fn sweep(&self, now: Ms) {
        for shard in self.shards.iter() {
            shard
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|_, s| {
                    s.banned_until > now
                        || (s.failures > 0 && now.saturating_sub(s.window_start) <= self.window)
                        || (self.rate > 0.0
                            && s.tokens < self.burst
                            && now.saturating_sub(s.refilled_at) < 60_000)
                });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(rps: u32, ban_after: u32) -> SipSecurityConfig {
        SipSecurityConfig {
            ban_after_failures: ban_after,
            failure_window: Duration::from_secs(600),
            ban_for: Duration::from_secs(600),
            requests_per_second: rps,
            ..SipSecurityConfig::default()
        }
    }

    #[test]
    fn ten_failures_ban_one_source_only() {
        let g = Guard::new(&cfg(0, 10));
        let bad: IpAddr = [10, 0, 0, 1].into();
        let good: IpAddr = [10, 0, 0, 2].into();
        for i in 0..9 {
            assert!(!g.auth_failed(bad, i));
        }
        assert_eq!(g.admit(bad, 10), Verdict::Pass);
        assert!(g.auth_failed(bad, 10));
        assert_eq!(g.admit(bad, 11), Verdict::Banned);
        assert_eq!(g.admit(good, 11), Verdict::Pass);
        assert_eq!(g.banned(11), 1);
        // The ban ends after ban_for.
        assert_eq!(g.admit(bad, 10 + 600_001), Verdict::Pass);
    }

    #[test]
    fn token_bucket_per_source() {
        let g = Guard::new(&cfg(5, 0));
        let ip: IpAddr = [10, 0, 0, 3].into();
        let passed = (0..20).filter(|_| g.admit(ip, 0) == Verdict::Pass).count();
        assert_eq!(passed, 10, "a burst of twice the rate");
        assert_eq!(g.admit([10, 0, 0, 4].into(), 0), Verdict::Pass);
        // One second later five more.
        let passed = (0..20)
            .filter(|_| g.admit(ip, 1000) == Verdict::Pass)
            .count();
        assert_eq!(passed, 5);
    }

    #[test]
    fn scanners_by_user_agent() {
        let g = Guard::new(&cfg(0, 0));
        assert!(g.is_scanner(Some("friendly-scanner")));
        assert!(g.is_scanner(Some("SIPVicious 0.3")));
        assert!(!g.is_scanner(Some("baresip v3")));
        assert!(!g.is_scanner(None));
    }
}
