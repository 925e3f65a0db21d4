//! The location service (RFC 3261 §10): address of record → bindings.
//! In memory for one node; `switchboard-redis` shares it between nodes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use switchboard_sip::registrar::{Change, ContactUpdate};

/// Seconds since the Unix epoch.
pub type Secs = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    /// TCP and TLS carry messages reliably: no retransmissions (§17).
    pub fn reliable(self) -> bool {
        self != Transport::Udp
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }
}

/// One registered contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The Contact URI as the phone wrote it.
    pub contact: Box<str>,
    /// Where the REGISTER came from: behind NAT, where requests must go.
    pub received: SocketAddr,
    pub transport: Transport,
    pub expires_at: Secs,
    pub call_id: Box<str>,
    pub cseq: u32,
    pub q: Option<Box<str>>,
    pub instance: Option<Box<str>>,
    /// Path (RFC 3327) to reach the phone through edge proxies.
    pub path: Box<[Box<str>]>,
}

/// What a REGISTER asks of the location service.
#[derive(Debug, Clone)]
pub struct Update<'a> {
    pub aor: &'a str,
    pub call_id: &'a str,
    pub cseq: u32,
    pub change: &'a Change<'a>,
    pub received: SocketAddr,
    pub transport: Transport,
    pub path: &'a [&'a str],
    pub now: Secs,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocationError {
    /// Same Call-ID with a CSeq not higher than the binding's (RFC 3261
    /// §10.3 step 7): an old request arriving late.
    #[error("out-of-order REGISTER")]
    OutOfOrder,
    #[error("location store: {0}")]
    Store(String),
}

/// The outcome of an update: the bindings now in force, and whether the
/// address of record went from none to some or from some to none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Updated {
    pub bindings: Vec<Binding>,
    pub was_registered: bool,
}

/// Applies one REGISTER's change to an AOR's bindings, in place.
pub fn apply(bindings: &mut Vec<Binding>, u: &Update<'_>) -> Result<(), LocationError> {
    bindings.retain(|b| b.expires_at > u.now);
    match u.change {
        Change::Fetch => {}
        Change::RemoveAll => {
            if bindings
                .iter()
                .any(|b| *b.call_id == *u.call_id && u.cseq <= b.cseq)
            {
                return Err(LocationError::OutOfOrder);
            }
            bindings.clear();
        }
        Change::Update(contacts) => {
            for c in contacts {
                if let Some(existing) = bindings.iter().find(|b| same_contact(b, c))
                    && *existing.call_id == *u.call_id
                    && u.cseq < existing.cseq
                {
                    return Err(LocationError::OutOfOrder);
                }
            }
            for c in contacts {
                bindings.retain(|b| !same_contact(b, c));
                if c.expires_s > 0 {
                    bindings.push(Binding {
                        contact: c.uri.into(),
                        received: u.received,
                        transport: u.transport,
                        expires_at: u.now + u64::from(c.expires_s),
                        call_id: u.call_id.into(),
                        cseq: u.cseq,
                        q: c.q.map(Into::into),
                        instance: c.instance.map(Into::into),
                        path: u.path.iter().map(|p| (*p).into()).collect(),
                    });
                }
            }
        }
    }
    Ok(())
}

/// Whether `c` names binding `b`: the same [`contact_key`], compared
/// without building either key.
fn same_contact(b: &Binding, c: &ContactUpdate<'_>) -> bool {
    match (b.instance.as_deref(), c.instance) {
        (Some(x), Some(y)) => x == y,
        (None, None) => b.contact.eq_ignore_ascii_case(c.uri),
        _ => false,
    }
}

/// A binding's identity within its AOR: the device instance (RFC 5626)
/// when given, else the contact URI, case-insensitively.
pub fn contact_key(uri: &str, instance: Option<&str>) -> String {
    match instance {
        Some(i) => format!("instance:{i}"),
        None => uri.to_ascii_lowercase(),
    }
}

/// The backend chosen by `sip.location`.
#[derive(Debug)]
pub enum AnyLocation {
    Memory(MemoryLocation),
    Redis(super::redis_location::RedisLocation),
}

impl Location for AnyLocation {
    async fn update(&self, u: &Update<'_>) -> Result<Updated, LocationError> {
        match self {
            Self::Memory(l) => l.update(u).await,
            Self::Redis(l) => l.update(u).await,
        }
    }
    async fn lookup(&self, aor: &str, now: Secs) -> Result<Vec<Binding>, LocationError> {
        match self {
            Self::Memory(l) => l.lookup(aor, now).await,
            Self::Redis(l) => l.lookup(aor, now).await,
        }
    }
    fn count(&self) -> usize {
        match self {
            Self::Memory(l) => l.count(),
            Self::Redis(l) => l.count(),
        }
    }
    async fn expire(&self, now: Secs) -> Vec<String> {
        match self {
            Self::Memory(l) => l.expire(now).await,
            Self::Redis(l) => l.expire(now).await,
        }
    }
}

/// The location service. Implementations keep [`apply`]'s rules.
pub trait Location: Send + Sync + 'static {
    fn update(&self, u: &Update<'_>)
    -> impl Future<Output = Result<Updated, LocationError>> + Send;
    fn lookup(
        &self,
        aor: &str,
        now: Secs,
    ) -> impl Future<Output = Result<Vec<Binding>, LocationError>> + Send;
    /// Bindings in force (for the gauge), approximately.
    fn count(&self) -> usize;
    /// Removes expired bindings; returns the AORs that have none left.
    fn expire(&self, now: Secs) -> impl Future<Output = Vec<String>> + Send;
}

const SHARDS: usize = 64;

type Shard = Mutex<HashMap<Box<str>, Vec<Binding>>>;

/// Bindings in this process, sharded to keep lock contention low.
#[derive(Debug)]
pub struct MemoryLocation {
    shards: Box<[Shard]>,
    count: std::sync::atomic::AtomicUsize,
}

impl Default for MemoryLocation {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            count: std::sync::atomic::AtomicUsize::new(0),
        }
    }
}

impl MemoryLocation {
    fn shard(&self, aor: &str) -> &Shard {
        &self.shards[(super::fnv(&[aor]) % SHARDS as u64) as usize]
    }
}

impl Location for MemoryLocation {
    async fn update(&self, u: &Update<'_>) -> Result<Updated, LocationError> {
        use std::sync::atomic::Ordering;
        let mut map = self.shard(u.aor).lock().unwrap_or_else(|p| p.into_inner());
        let (before, result) = match map.get_mut(u.aor) {
            Some(list) => {
                let before = list.len();
                let was = list.iter().any(|b| b.expires_at > u.now);
                apply(list, u)?;
                (
                    before,
                    Updated {
                        bindings: list.clone(),
                        was_registered: was,
                    },
                )
            }
            None => {
                let mut list = Vec::new();
                apply(&mut list, u)?;
                let out = Updated {
                    bindings: list.clone(),
                    was_registered: false,
                };
                if !list.is_empty() {
                    map.insert(u.aor.into(), list);
                }
                (0, out)
            }
        };
        let after = result.bindings.len();
        if after == 0 {
            map.remove(u.aor);
        }
        if after >= before {
            self.count.fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.count.fetch_sub(before - after, Ordering::Relaxed);
        }
        Ok(result)
    }

    async fn lookup(&self, aor: &str, now: Secs) -> Result<Vec<Binding>, LocationError> {
        let map = self.shard(aor).lock().unwrap_or_else(|p| p.into_inner());
        Ok(map
            .get(aor)
            .map(|l| l.iter().filter(|b| b.expires_at > now).cloned().collect())
            .unwrap_or_default())
    }

    fn count(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn expire(&self, now: Secs) -> Vec<String> {
        let mut emptied = Vec::new();
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|aor, list| {
                let before = list.len();
                list.retain(|b| b.expires_at > now);
                removed += before - list.len();
                if list.is_empty() {
                    emptied.push(aor.to_string());
                    false
                } else {
                    true
                }
            });
        }
        self.count
            .fetch_sub(removed, std::sync::atomic::Ordering::Relaxed);
        emptied
    }
}

/// The rules every backend keeps, run by each backend's tests.
#[doc(hidden)]
#[allow(clippy::unwrap_used, clippy::missing_panics_doc)]
pub mod conformance {
    use super::*;

    fn contact(uri: &str, expires_s: u32) -> ContactUpdate<'_> {
        ContactUpdate {
            uri,
            expires_s,
            q: None,
            instance: None,
        }
    }

    fn update<'a>(
        aor: &'a str,
        change: &'a Change<'a>,
        call_id: &'a str,
        cseq: u32,
        now: Secs,
    ) -> Update<'a> {
        Update {
            aor,
            call_id,
            cseq,
            change,
            received: SocketAddr::from(([127, 0, 0, 1], 5070)),
            transport: Transport::Udp,
            path: &[],
            now,
        }
    }

    /// Panics on the first rule broken. `aor` must be unused in `loc`.
    pub async fn run(loc: &impl Location, aor: &str) {
        let two = Change::Update(vec![
            contact("sip:a@10.0.0.1", 60),
            contact("sip:a@10.0.0.2", 120),
        ]);
        let r = loc.update(&update(aor, &two, "c1", 1, 1000)).await.unwrap();
        assert_eq!((r.bindings.len(), r.was_registered), (2, false));
        assert_eq!(r.bindings.iter().map(|b| b.expires_at).min(), Some(1060));
        assert!(loc.expire(1000).await.is_empty());
        assert_eq!(loc.count(), 2);
        // A late, older request from the same Call-ID is refused.
        assert_eq!(
            loc.update(&update(aor, &two, "c1", 0, 1001)).await,
            Err(LocationError::OutOfOrder)
        );
        // Another phone (another Call-ID) adds its own; the AOR was registered.
        let third = Change::Update(vec![contact("sip:a@10.0.0.3", 60)]);
        let r = loc
            .update(&update(aor, &third, "c2", 1, 1001))
            .await
            .unwrap();
        assert_eq!((r.bindings.len(), r.was_registered), (3, true));
        // A query changes nothing.
        assert_eq!(
            loc.update(&update(aor, &Change::Fetch, "c3", 1, 1001))
                .await
                .unwrap()
                .bindings
                .len(),
            3
        );
        // At 1061 s the 60 s bindings (until 1060 and 1061) are gone.
        assert_eq!(loc.lookup(aor, 1061).await.unwrap().len(), 1);
        assert!(loc.expire(1061).await.is_empty());
        assert_eq!(loc.count(), 1);
        // Expires 0 removes one (URIs compare case-insensitively)...
        let remove = Change::Update(vec![contact("sip:A@10.0.0.2", 0)]);
        let r = loc
            .update(&update(aor, &remove, "c1", 2, 1062))
            .await
            .unwrap();
        assert!(r.bindings.is_empty() && r.was_registered);
        // ...and * removes all.
        loc.update(&update(aor, &two, "c1", 3, 1063)).await.unwrap();
        let r = loc
            .update(&update(aor, &Change::RemoveAll, "c1", 4, 1064))
            .await
            .unwrap();
        assert!(r.bindings.is_empty() && r.was_registered);
        assert_eq!(loc.lookup(aor, 1064).await.unwrap(), vec![]);
        loc.expire(1064).await;
        assert_eq!(loc.count(), 0);
        // Bindings that simply expire leave the AOR empty, and the sweep says so.
        let one = Change::Update(vec![contact("sip:a@10.0.0.4", 60)]);
        loc.update(&update(aor, &one, "c4", 1, 2000)).await.unwrap();
        assert_eq!(loc.expire(2061).await, vec![aor.to_owned()]);
        assert_eq!(loc.count(), 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_location_passes_the_conformance_suite() {
        conformance::run(&MemoryLocation::default(), "1001").await;
    }

    /// Against the Redis on 127.0.0.1:6379 (`SWITCHBOARD_TEST_REDIS`).
    #[tokio::test]
    async fn redis_location_passes_the_conformance_suite() {
        let url = std::env::var("SWITCHBOARD_TEST_REDIS")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let prefix = format!("sbtest:{}:", uuid::Uuid::new_v4().simple());
        let loc = super::super::redis_location::RedisLocation::connect(&url, &prefix)
            .await
            .expect("Redis must be running for these tests (scripts/test starts it)");
        conformance::run(&loc, "1001").await;
    }
}
