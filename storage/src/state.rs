//! Routing state: presence, phone registration, assignments (and so load),
//! turns and owners — behind one trait with an in-memory implementation here
//! and a Redis one (crate `switchboard-redis`) for several gateway nodes.
//!
//! The invariant every implementation keeps: a claim is atomic. Two nodes
//! claiming at once never give one contact (per workload) to two managers and
//! never push a manager past the capacity the claim names.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchboard_config::Workload;

/// Milliseconds since the Unix epoch; the routing layer's clock.
pub type Millis = i64;

/// Whether a manager takes new work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    /// Takes work.
    Online,
    /// Briefly away: no new work, but still the responsible manager.
    Away,
    /// No new work at all.
    DoNotDisturb,
    /// Logged out.
    #[default]
    Offline,
}

impl Presence {
    pub fn as_str(self) -> &'static str {
        match self {
            Presence::Online => "online",
            Presence::Away => "away",
            Presence::DoNotDisturb => "do_not_disturb",
            Presence::Offline => "offline",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "online" => Presence::Online,
            "away" => Presence::Away,
            "do_not_disturb" => Presence::DoNotDisturb,
            "offline" => Presence::Offline,
            _ => return None,
        })
    }
}

/// What the engine needs to know about one manager right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ManagerStatus {
    pub presence: Presence,
    /// A phone (SIP or browser) is registered.
    pub registered: bool,
    /// Live assignments per workload (indexed by `Workload::index`).
    pub load: [u32; 4],
    /// Turn of the manager's last assignment (0: never); round robin
    /// prefers the lowest.
    pub last_turn: u64,
    /// Stride-scheduling pass for the weighted policy; lowest goes next.
    pub pass: u64,
}

/// One atomic claim: give `contact`'s `workload` to `manager` if nobody has
/// it and the manager is below `capacity`.
#[derive(Debug, Clone)]
pub struct Claim<'a> {
    pub contact: &'a str,
    pub workload: Workload,
    pub manager: &'a str,
    pub capacity: u32,
    /// Added to the manager's pass on success (weighted policy).
    pub stride: u64,
    /// How long the assignment counts toward the manager's load unless
    /// released first.
    pub hold: Duration,
    pub now: Millis,
}

/// How a claim ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The contact is now the manager's; `turn` is the assignment's turn.
    Claimed { turn: u64 },
    /// Somebody already has it.
    AlreadyAssigned { manager: String },
    /// The manager is at capacity.
    OverCapacity,
}

/// A state operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The shared store (Redis) did not answer or refused; retrying later
    /// can succeed.
    #[error("routing state {op} failed: {source}")]
    Backend {
        op: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Routing state shared by the engines that decide on it.
pub trait RoutingState: Send + Sync {
    /// Status of each manager in `ids`, in the same order (unknown: offline,
    /// nothing assigned). Load counts only assignments still held at `now`.
    fn statuses(
        &self,
        ids: &[&str],
        now: Millis,
    ) -> impl Future<Output = Result<Vec<ManagerStatus>, StateError>> + Send;

    fn set_presence(
        &self,
        id: &str,
        presence: Presence,
    ) -> impl Future<Output = Result<(), StateError>> + Send;

    fn set_registered(
        &self,
        id: &str,
        registered: bool,
    ) -> impl Future<Output = Result<(), StateError>> + Send;

    /// See [`Claim`]; atomic.
    fn claim(
        &self,
        claim: &Claim<'_>,
    ) -> impl Future<Output = Result<ClaimOutcome, StateError>> + Send;

    /// Ends the contact's assignment for `workload`, if any; returns whose it was.
    fn release(
        &self,
        contact: &str,
        workload: Workload,
    ) -> impl Future<Output = Result<Option<String>, StateError>> + Send;

    /// Who holds the contact's `workload` at `now`, if anyone.
    fn assignee(
        &self,
        contact: &str,
        workload: Workload,
        now: Millis,
    ) -> impl Future<Output = Result<Option<String>, StateError>> + Send;

    /// The contact's responsible manager, as the CRM published it.
    fn owner(
        &self,
        contact: &str,
    ) -> impl Future<Output = Result<Option<String>, StateError>> + Send;

    /// Sets (or with `None` clears) the responsible manager.
    fn set_owner(
        &self,
        contact: &str,
        manager: Option<&str>,
    ) -> impl Future<Output = Result<(), StateError>> + Send;

    /// Sets the responsible manager only if the contact has none; returns
    /// whether it was set.
    fn set_owner_if_none(
        &self,
        contact: &str,
        manager: &str,
    ) -> impl Future<Output = Result<bool, StateError>> + Send;
}

fn hold_until(now: Millis, hold: Duration) -> Millis {
    now.saturating_add(i64::try_from(hold.as_millis()).unwrap_or(i64::MAX))
}

/// Routing state in this process: for one gateway node.
#[derive(Debug, Default)]
pub struct MemoryState {
    inner: Mutex<Memory>,
}

#[derive(Debug, Default)]
struct Memory {
    managers: HashMap<String, MemManager>,
    /// (contact, workload) → (manager, held until).
    assignments: HashMap<(String, Workload), (String, Millis)>,
    owners: HashMap<String, String>,
    turn: u64,
}

#[derive(Debug, Default)]
struct MemManager {
    presence: Presence,
    registered: bool,
    /// Per workload: contact → held until.
    held: [BTreeMap<String, Millis>; 4],
    last_turn: u64,
    pass: u64,
}

impl MemManager {
    fn load(&self, w: Workload, now: Millis) -> u32 {
        let n = self.held[w.index()]
            .values()
            .filter(|&&until| until > now)
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }
}

impl MemoryState {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut Memory) -> T) -> T {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }
}

impl RoutingState for MemoryState {
    async fn statuses(&self, ids: &[&str], now: Millis) -> Result<Vec<ManagerStatus>, StateError> {
        Ok(self.with(|m| {
            ids.iter()
                .map(|id| match m.managers.get(*id) {
                    None => ManagerStatus::default(),
                    Some(mm) => ManagerStatus {
                        presence: mm.presence,
                        registered: mm.registered,
                        load: Workload::ALL.map(|w| mm.load(w, now)),
                        last_turn: mm.last_turn,
                        pass: mm.pass,
                    },
                })
                .collect()
        }))
    }

    async fn set_presence(&self, id: &str, presence: Presence) -> Result<(), StateError> {
        self.with(|m| m.managers.entry(id.to_owned()).or_default().presence = presence);
        Ok(())
    }

    async fn set_registered(&self, id: &str, registered: bool) -> Result<(), StateError> {
        self.with(|m| m.managers.entry(id.to_owned()).or_default().registered = registered);
        Ok(())
    }

    async fn claim(&self, c: &Claim<'_>) -> Result<ClaimOutcome, StateError> {
        Ok(self.with(|m| {
            let key = (c.contact.to_owned(), c.workload);
            if let Some((holder, until)) = m.assignments.get(&key)
                && *until > c.now
            {
                return ClaimOutcome::AlreadyAssigned {
                    manager: holder.clone(),
                };
            }
            let manager = m.managers.entry(c.manager.to_owned()).or_default();
            let held = &mut manager.held[c.workload.index()];
            held.retain(|_, until| *until > c.now);
            if u32::try_from(held.len()).unwrap_or(u32::MAX) >= c.capacity {
                return ClaimOutcome::OverCapacity;
            }
            let until = hold_until(c.now, c.hold);
            held.insert(c.contact.to_owned(), until);
            m.turn += 1;
            let turn = m.turn;
            let manager = m.managers.entry(c.manager.to_owned()).or_default();
            manager.last_turn = turn;
            manager.pass = manager.pass.saturating_add(c.stride);
            m.assignments.insert(key, (c.manager.to_owned(), until));
            ClaimOutcome::Claimed { turn }
        }))
    }

    async fn release(
        &self,
        contact: &str,
        workload: Workload,
    ) -> Result<Option<String>, StateError> {
        Ok(self.with(|m| {
            let (manager, _) = m.assignments.remove(&(contact.to_owned(), workload))?;
            if let Some(mm) = m.managers.get_mut(&manager) {
                mm.held[workload.index()].remove(contact);
            }
            Some(manager)
        }))
    }

    async fn assignee(
        &self,
        contact: &str,
        workload: Workload,
        now: Millis,
    ) -> Result<Option<String>, StateError> {
        Ok(self.with(|m| {
            m.assignments
                .get(&(contact.to_owned(), workload))
                .filter(|(_, until)| *until > now)
                .map(|(who, _)| who.clone())
        }))
    }

    async fn owner(&self, contact: &str) -> Result<Option<String>, StateError> {
        Ok(self.with(|m| m.owners.get(contact).cloned()))
    }

    async fn set_owner(&self, contact: &str, manager: Option<&str>) -> Result<(), StateError> {
        self.with(|m| match manager {
            Some(id) => {
                m.owners.insert(contact.to_owned(), id.to_owned());
            }
            None => {
                m.owners.remove(contact);
            }
        });
        Ok(())
    }

    async fn set_owner_if_none(&self, contact: &str, manager: &str) -> Result<bool, StateError> {
        Ok(self.with(|m| {
            if m.owners.contains_key(contact) {
                false
            } else {
                m.owners.insert(contact.to_owned(), manager.to_owned());
                true
            }
        }))
    }
}

/// The conformance suite every [`RoutingState`] implementation passes
/// (feature `conformance`).
#[cfg(any(test, feature = "conformance"))]
#[allow(clippy::unwrap_used)]
pub mod conformance {
    use super::*;

    fn claim<'a>(contact: &'a str, manager: &'a str, capacity: u32, now: Millis) -> Claim<'a> {
        Claim {
            contact,
            workload: Workload::Chat,
            manager,
            capacity,
            stride: 10,
            hold: Duration::from_secs(60),
            now,
        }
    }

    /// Runs every check; panics with what failed.
    pub async fn run<S: RoutingState>(state: &S, ns: &str) {
        let a = format!("{ns}-a");
        let b = format!("{ns}-b");
        let c1 = format!("{ns}:c1");
        let c2 = format!("{ns}:c2");
        let c3 = format!("{ns}:c3");
        let t0: Millis = 1_800_000_000_000;

        // Unknown managers are offline with nothing held.
        let s = state.statuses(&[&a], t0).await.unwrap();
        assert_eq!(s[0], ManagerStatus::default());

        state.set_presence(&a, Presence::Online).await.unwrap();
        state.set_registered(&a, true).await.unwrap();
        let s = state.statuses(&[&a, &b], t0).await.unwrap();
        assert_eq!((s[0].presence, s[0].registered), (Presence::Online, true));
        assert_eq!(s[1].presence, Presence::Offline);

        // Claims count toward load, up to capacity.
        assert!(matches!(
            state.claim(&claim(&c1, &a, 2, t0)).await.unwrap(),
            ClaimOutcome::Claimed { .. }
        ));
        assert!(matches!(
            state.claim(&claim(&c2, &a, 2, t0)).await.unwrap(),
            ClaimOutcome::Claimed { .. }
        ));
        assert_eq!(
            state.claim(&claim(&c3, &a, 2, t0)).await.unwrap(),
            ClaimOutcome::OverCapacity
        );
        let s = state.statuses(&[&a], t0).await.unwrap();
        assert_eq!(s[0].load[Workload::Chat.index()], 2);
        assert_eq!(s[0].load[Workload::Call.index()], 0);
        assert_eq!(s[0].pass, 20, "stride added per claim");
        assert!(s[0].last_turn > 0);

        // A contact is never given twice.
        assert_eq!(
            state.claim(&claim(&c1, &b, 5, t0)).await.unwrap(),
            ClaimOutcome::AlreadyAssigned { manager: a.clone() }
        );
        assert_eq!(
            state.assignee(&c1, Workload::Chat, t0).await.unwrap(),
            Some(a.clone())
        );
        // ... but per workload: a call from the same contact is separate.
        let mut call = claim(&c1, &b, 1, t0);
        call.workload = Workload::Call;
        assert!(matches!(
            state.claim(&call).await.unwrap(),
            ClaimOutcome::Claimed { .. }
        ));

        // Turns increase across managers.
        let before = state.statuses(&[&a, &b], t0).await.unwrap();
        assert!(before[1].last_turn > before[0].last_turn);

        // Release frees capacity and the contact.
        assert_eq!(
            state.release(&c1, Workload::Chat).await.unwrap(),
            Some(a.clone())
        );
        assert_eq!(state.release(&c1, Workload::Chat).await.unwrap(), None);
        assert_eq!(state.assignee(&c1, Workload::Chat, t0).await.unwrap(), None);
        assert!(matches!(
            state.claim(&claim(&c3, &a, 2, t0)).await.unwrap(),
            ClaimOutcome::Claimed { .. }
        ));

        // Holds expire: after the hold, load drops and the contact is free.
        let later = t0 + 61_000;
        let s = state.statuses(&[&a], later).await.unwrap();
        assert_eq!(
            s[0].load[Workload::Chat.index()],
            0,
            "expired holds still count"
        );
        assert_eq!(
            state.assignee(&c2, Workload::Chat, later).await.unwrap(),
            None
        );
        assert!(matches!(
            state.claim(&claim(&c2, &b, 1, later)).await.unwrap(),
            ClaimOutcome::Claimed { .. }
        ));

        // Owners.
        assert_eq!(state.owner(&c1).await.unwrap(), None);
        assert!(state.set_owner_if_none(&c1, &a).await.unwrap());
        assert!(!state.set_owner_if_none(&c1, &b).await.unwrap());
        assert_eq!(state.owner(&c1).await.unwrap(), Some(a.clone()));
        state.set_owner(&c1, Some(&b)).await.unwrap();
        assert_eq!(state.owner(&c1).await.unwrap(), Some(b.clone()));
        state.set_owner(&c1, None).await.unwrap();
        assert_eq!(state.owner(&c1).await.unwrap(), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_state_passes_the_conformance_suite() {
        conformance::run(&MemoryState::new(), "mem").await;
    }
}
