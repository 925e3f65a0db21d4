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
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
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
    pub change: &'a Change,
    pub received: SocketAddr,
    pub transport: Transport,
    pub path: &'a [String],
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
                        contact: c.uri.as_str().into(),
                        received: u.received,
                        transport: u.transport,
                        expires_at: u.now + u64::from(c.expires_s),
                        call_id: u.call_id.into(),
                        cseq: u.cseq,
                        q: c.q.as_deref().map(Into::into),
                        instance: c.instance.as_deref().map(Into::into),
                        path: u.path.iter().map(|p| p.as_str().into()).collect(),
                    });
                }
            }
        }
    }
    Ok(())
}

fn same_contact(b: &Binding, c: &ContactUpdate) -> bool {
    match (&b.instance, &c.instance) {
        (Some(x), Some(y)) => **x == **y,
        _ => b.contact.eq_ignore_ascii_case(&c.uri),
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
        let h = aor.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        &self.shards[(h % SHARDS as u64) as usize]
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

#[cfg(test)]
mod tests {
    use super::*;

    fn contact(uri: &str, expires_s: u32) -> ContactUpdate {
        ContactUpdate {
            uri: uri.into(),
            expires_s,
            q: None,
            instance: None,
        }
    }

    fn update<'a>(change: &'a Change, call_id: &'a str, cseq: u32, now: Secs) -> Update<'a> {
        Update {
            aor: "1001",
            call_id,
            cseq,
            change,
            received: "127.0.0.1:5070".parse().unwrap_or_else(|_| unreachable!()),
            transport: Transport::Udp,
            path: &[],
            now,
        }
    }

    #[tokio::test]
    async fn bindings_add_refresh_expire_and_remove() -> Result<(), LocationError> {
        let loc = MemoryLocation::default();
        let two = Change::Update(vec![
            contact("sip:a@10.0.0.1", 60),
            contact("sip:a@10.0.0.2", 120),
        ]);
        let r = loc.update(&update(&two, "c1", 1, 1000)).await?;
        assert_eq!((r.bindings.len(), r.was_registered), (2, false));
        assert_eq!(loc.count(), 2);
        // A late, older request from the same Call-ID is refused.
        assert_eq!(
            loc.update(&update(&two, "c1", 0, 1001)).await,
            Err(LocationError::OutOfOrder)
        );
        // Another phone (another Call-ID) adds its own.
        let third = Change::Update(vec![contact("sip:a@10.0.0.3", 60)]);
        assert_eq!(
            loc.update(&update(&third, "c2", 1, 1001))
                .await?
                .bindings
                .len(),
            3
        );
        // After 61 s the 60 s bindings are gone.
        assert_eq!(loc.lookup("1001", 1061).await?.len(), 1);
        assert!(loc.expire(1061).await.is_empty());
        assert_eq!(loc.count(), 1);
        // Expires 0 removes one; * removes all.
        let remove = Change::Update(vec![contact("sip:a@10.0.0.2", 0)]);
        let r = loc.update(&update(&remove, "c1", 2, 1062)).await?;
        assert!(r.bindings.is_empty() && r.was_registered);
        assert_eq!(loc.count(), 0);
        loc.update(&update(&two, "c1", 3, 1063)).await?;
        let r = loc
            .update(&update(&Change::RemoveAll, "c1", 4, 1064))
            .await?;
        assert!(r.bindings.is_empty());
        assert_eq!(loc.lookup("1001", 1064).await?, vec![]);
        Ok(())
    }
}
