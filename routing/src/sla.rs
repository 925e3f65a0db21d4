//! Response deadlines: a state machine driven by explicit time.
//!
//! Assigned work has a first-response deadline; after the manager responds,
//! each new message from the customer starts a next-response deadline. A
//! deadline that passes without a response is a [`Breach`], returned once
//! by [`SlaTracker::expired`]; the caller reassigns or escalates.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use switchboard_config::Workload;

use crate::Millis;
use crate::directory::{ManagerIx, QueueIx};

/// Which deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    FirstResponse,
    NextResponse,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::FirstResponse => "first_response",
            Phase::NextResponse => "next_response",
        }
    }
}

/// A deadline that passed without a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breach {
    pub contact: Arc<str>,
    pub workload: Workload,
    pub manager: ManagerIx,
    pub queue: QueueIx,
    pub phase: Phase,
    pub deadline: Millis,
}

#[derive(Debug, Clone)]
struct Pending {
    manager: ManagerIx,
    queue: QueueIx,
    phase: Phase,
    deadline: Millis,
}

type Key = (Arc<str>, Workload);

/// Pending deadlines, by contact and workload.
#[derive(Debug, Default)]
pub struct SlaTracker {
    pending: HashMap<Key, Pending>,
    by_time: BTreeSet<(Millis, Key)>,
}

impl SlaTracker {
    pub fn new() -> Self {
        Self::default()
    }

    fn set(&mut self, key: Key, p: Pending) {
        if let Some(old) = self.pending.insert(key.clone(), p.clone()) {
            self.by_time.remove(&(old.deadline, key.clone()));
        }
        self.by_time.insert((p.deadline, key));
    }

    fn clear(&mut self, key: &Key) {
        if let Some(old) = self.pending.remove(key) {
            self.by_time.remove(&(old.deadline, key.clone()));
        }
    }

    /// Work was (re)assigned: the first-response clock starts (or, with no
    /// deadline, any pending one stops).
    pub fn assigned(
        &mut self,
        contact: &str,
        workload: Workload,
        manager: ManagerIx,
        queue: QueueIx,
        deadline: Option<Millis>,
    ) {
        let key = (Arc::from(contact), workload);
        match deadline {
            Some(deadline) => self.set(
                key,
                Pending {
                    manager,
                    queue,
                    phase: Phase::FirstResponse,
                    deadline,
                },
            ),
            None => self.clear(&key),
        }
    }

    /// The customer wrote again: unless a deadline is already running, the
    /// next-response clock starts.
    pub fn customer_wrote(
        &mut self,
        contact: &str,
        workload: Workload,
        manager: ManagerIx,
        queue: QueueIx,
        deadline: Option<Millis>,
    ) {
        let key = (Arc::from(contact), workload);
        if self.pending.contains_key(&key) {
            return;
        }
        if let Some(deadline) = deadline {
            self.set(
                key,
                Pending {
                    manager,
                    queue,
                    phase: Phase::NextResponse,
                    deadline,
                },
            );
        }
    }

    /// The manager responded: the running deadline is met.
    pub fn responded(&mut self, contact: &str, workload: Workload) {
        self.clear(&(Arc::from(contact), workload));
    }

    /// The work ended (call over, conversation closed).
    pub fn forget(&mut self, contact: &str, workload: Workload) {
        self.responded(contact, workload);
    }

    /// Deadlines passed by `now`, each returned once, earliest first.
    pub fn expired(&mut self, now: Millis) -> Vec<Breach> {
        let mut out = Vec::new();
        while let Some(first) = self.by_time.first() {
            if first.0 > now {
                break;
            }
            let Some((deadline, key)) = self.by_time.pop_first() else {
                break;
            };
            if let Some(p) = self.pending.remove(&key) {
                out.push(Breach {
                    contact: key.0,
                    workload: key.1,
                    manager: p.manager,
                    queue: p.queue,
                    phase: p.phase,
                    deadline,
                });
            }
        }
        out
    }

    /// When the next deadline falls, if any: when to call [`Self::expired`].
    pub fn next_deadline(&self) -> Option<Millis> {
        self.by_time.first().map(|(t, _)| *t)
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_response_deadline_breaches_once_unless_answered() {
        let mut sla = SlaTracker::new();
        sla.assigned("tel:+1", Workload::Chat, 0, 0, Some(1_000));
        sla.assigned("tel:+2", Workload::Chat, 1, 0, Some(2_000));
        assert_eq!(sla.next_deadline(), Some(1_000));
        assert!(sla.expired(999).is_empty());
        sla.responded("tel:+2", Workload::Chat);
        let b = sla.expired(5_000);
        assert_eq!(b.len(), 1);
        assert_eq!(&*b[0].contact, "tel:+1");
        assert_eq!(b[0].phase, Phase::FirstResponse);
        assert_eq!(b[0].manager, 0);
        assert!(sla.expired(10_000).is_empty(), "a breach is reported once");
        assert!(sla.is_empty());
    }

    #[test]
    fn next_response_starts_when_the_customer_writes_after_an_answer() {
        let mut sla = SlaTracker::new();
        sla.assigned("c", Workload::Email, 3, 1, Some(100));
        sla.responded("c", Workload::Email);
        sla.customer_wrote("c", Workload::Email, 3, 1, Some(500));
        // A second message does not push the deadline back.
        sla.customer_wrote("c", Workload::Email, 3, 1, Some(900));
        let b = sla.expired(600);
        assert_eq!(b.len(), 1);
        assert_eq!((b[0].phase, b[0].deadline), (Phase::NextResponse, 500));
    }

    #[test]
    fn reassignment_restarts_the_clock_for_the_new_manager() {
        let mut sla = SlaTracker::new();
        sla.assigned("c", Workload::Lead, 0, 0, Some(100));
        sla.assigned("c", Workload::Lead, 2, 0, Some(300));
        assert!(sla.expired(200).is_empty());
        let b = sla.expired(300);
        assert_eq!(b[0].manager, 2);
        assert_eq!(sla.len(), 0);
    }
}
