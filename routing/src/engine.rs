//! One decision: given the request and the managers' state, who gets it.

use switchboard_config::{Policy, Workload};
use switchboard_storage::state::{ManagerStatus, Presence};

use crate::Millis;
use crate::directory::{AfterHours, Directory, ManagerIx, QueueIx};
use crate::schedule::Shifts;

/// How long work waits before it is decided again when nobody can take it
/// and nothing says how long to wait (a change of presence retries sooner).
const RETRY_MS: Millis = 10_000;
/// Hand-offs (overflow, out of hours) followed in one decision.
const MAX_HOPS: usize = 8;

/// What is being decided.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub workload: Workload,
    /// The queue the rules chose (or the one it waits in).
    pub queue: QueueIx,
    /// The contact's responsible manager, when the CRM knows one.
    pub responsible: Option<ManagerIx>,
    /// When the work started waiting: responsible and overflow timeouts
    /// count from here.
    pub waiting_since: Millis,
    /// Managers not to choose (declined, missed the SLA, lost a race).
    pub exclude: &'a [ManagerIx],
    pub now: Millis,
}

/// The managers' state at decision time, indexed like the directory.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot<'a> {
    pub statuses: &'a [ManagerStatus],
    pub shifts: &'a Shifts,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Give it to this manager; `deadline` is the first-response SLA.
    Assign {
        manager: ManagerIx,
        deadline: Option<Millis>,
    },
    /// Ring these managers at once (calls, `ring_all`), in this order of preference.
    Ring {
        managers: Vec<ManagerIx>,
        deadline: Option<Millis>,
    },
    /// Nobody now; decide again at `until` (or when presence changes).
    Wait { until: Millis },
    /// Out of hours: a "missed, call back" for the CRM.
    Callback,
}

/// Why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The contact's responsible manager.
    Responsible,
    RoundRobin,
    LeastBusy,
    Weighted,
    RingAll,
    /// The responsible manager is busy or away; waiting for them.
    WaitingForResponsible,
    /// Nobody in the queue can take it now.
    NoneAvailable,
    /// The queue is closed.
    OutOfHours,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Responsible => "responsible_manager",
            Reason::RoundRobin => "round_robin",
            Reason::LeastBusy => "least_busy",
            Reason::Weighted => "weighted",
            Reason::RingAll => "ring_all",
            Reason::WaitingForResponsible => "waiting_for_responsible",
            Reason::NoneAvailable => "none_available",
            Reason::OutOfHours => "out_of_hours",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The queue that decided (after any hand-off).
    pub queue: QueueIx,
    pub outcome: Outcome,
    pub reason: Reason,
    /// The queue the work came from when it overflowed or was out of hours.
    pub handed_off_from: Option<QueueIx>,
}

/// Whether manager `m` can take new work of kind `w` now.
fn available(dir: &Directory, m: ManagerIx, req: &Request<'_>, snap: &Snapshot<'_>) -> bool {
    let Some(status) = snap.statuses.get(m as usize) else {
        return false;
    };
    if req.exclude.contains(&m) || !snap.shifts.manager_on(m as usize) {
        return false;
    }
    let w = req.workload;
    if status.load[w.index()] >= dir.manager(m).capacity.get(w) {
        return false;
    }
    match w {
        // A call needs a phone to ring.
        Workload::Call => status.presence == Presence::Online && status.registered,
        _ => status.presence == Presence::Online,
    }
}

/// Decides who gets the work; see the crate docs. Pure: the same inputs
/// always give the same decision.
pub fn decide(dir: &Directory, req: &Request<'_>, snap: &Snapshot<'_>) -> Decision {
    let w = req.workload;
    let mut q = req.queue;
    let mut from = None;
    for _ in 0..MAX_HOPS {
        let queue = dir.queue(q);
        let decision = |outcome, reason| Decision {
            queue: q,
            outcome,
            reason,
            handed_off_from: from,
        };
        if !snap.shifts.queue_open(q as usize) {
            match queue.after_hours {
                AfterHours::Queue(next) => {
                    from = from.or(Some(q));
                    q = next;
                    continue;
                }
                AfterHours::Callback => return decision(Outcome::Callback, Reason::OutOfHours),
            }
        }
        let deadline = queue.first_response_deadline(w, req.now);

        if queue.responsible_first
            && let Some(r) = req.responsible
        {
            if available(dir, r, req, snap) {
                return decision(
                    Outcome::Assign {
                        manager: r,
                        deadline,
                    },
                    Reason::Responsible,
                );
            }
            let reachable_later = snap.statuses.get(r as usize).is_some_and(|s| {
                s.presence != Presence::Offline && s.presence != Presence::DoNotDisturb
            }) && !req.exclude.contains(&r);
            let until = req.waiting_since.saturating_add(queue.responsible_timeout);
            if reachable_later && req.now < until {
                return decision(Outcome::Wait { until }, Reason::WaitingForResponsible);
            }
        }

        let candidates = queue.members.iter().copied().filter(|&m| {
            dir.manager(m).skills & queue.required_skills == queue.required_skills
                && available(dir, m, req, snap)
        });
        let status = |m: ManagerIx| &snap.statuses[m as usize];
        let picked = match queue.policy {
            Policy::RingAll if w == Workload::Call => {
                let mut all: Vec<ManagerIx> = candidates.collect();
                if !all.is_empty() {
                    // Stable: equal turns keep id order.
                    all.sort_by_key(|&m| status(m).last_turn);
                    return decision(
                        Outcome::Ring {
                            managers: all,
                            deadline,
                        },
                        Reason::RingAll,
                    );
                }
                None
            }
            Policy::RoundRobin => candidates
                .min_by_key(|&m| status(m).last_turn)
                .map(|m| (m, Reason::RoundRobin)),
            Policy::LeastBusy | Policy::RingAll => candidates
                .min_by(|&a, &b| {
                    let (sa, sb) = (status(a), status(b));
                    let (ca, cb) = (
                        u64::from(dir.manager(a).capacity.get(w)),
                        u64::from(dir.manager(b).capacity.get(w)),
                    );
                    // load_a / cap_a against load_b / cap_b, without division.
                    (u64::from(sa.load[w.index()]) * cb)
                        .cmp(&(u64::from(sb.load[w.index()]) * ca))
                        .then(sa.last_turn.cmp(&sb.last_turn))
                })
                .map(|m| (m, Reason::LeastBusy)),
            Policy::Weighted => {
                // Stride scheduling; a manager far behind (new, or back from
                // leave) is lifted to within two strides of the leader so it
                // does not take a burst of work.
                let all: Vec<ManagerIx> = candidates.collect();
                let top = all.iter().map(|&m| status(m).pass).max().unwrap_or(0);
                let window = all
                    .iter()
                    .map(|&m| dir.manager(m).stride)
                    .max()
                    .unwrap_or(0)
                    * 2;
                all.iter()
                    .copied()
                    .min_by_key(|&m| {
                        (
                            status(m).pass.max(top.saturating_sub(window)),
                            status(m).last_turn,
                        )
                    })
                    .map(|m| (m, Reason::Weighted))
            }
        };
        if let Some((manager, reason)) = picked {
            return decision(Outcome::Assign { manager, deadline }, reason);
        }

        match queue.overflow {
            Some((next, after)) => {
                let until = req.waiting_since.saturating_add(after);
                if req.now >= until {
                    from = from.or(Some(q));
                    q = next;
                    continue;
                }
                return decision(Outcome::Wait { until }, Reason::NoneAvailable);
            }
            None => {
                return decision(
                    Outcome::Wait {
                        until: req.now.saturating_add(RETRY_MS),
                    },
                    Reason::NoneAvailable,
                );
            }
        }
    }
    Decision {
        queue: q,
        outcome: Outcome::Wait {
            until: req.now.saturating_add(RETRY_MS),
        },
        reason: Reason::NoneAvailable,
        handed_off_from: from,
    }
}
