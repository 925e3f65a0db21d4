//! Properties of the engine over generated managers, states and requests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use switchboard_config::{Capacity, ManagerConfig, Policy, QueueConfig, RoutingConfig, Workload};
use switchboard_routing::{
    Decision, Directory, Outcome, Reason, Request, Shifts, Snapshot, decide,
};
use switchboard_storage::state::{ManagerStatus, Presence};

const SKILLS: [&str; 2] = ["en", "b2b"];

fn workload() -> impl Strategy<Value = Workload> {
    prop_oneof![
        Just(Workload::Call),
        Just(Workload::Chat),
        Just(Workload::Email),
        Just(Workload::Lead)
    ]
}

fn presence() -> impl Strategy<Value = Presence> {
    prop_oneof![
        Just(Presence::Online),
        Just(Presence::Away),
        Just(Presence::DoNotDisturb),
        Just(Presence::Offline)
    ]
}

fn policy() -> impl Strategy<Value = Policy> {
    prop_oneof![
        Just(Policy::RoundRobin),
        Just(Policy::LeastBusy),
        Just(Policy::Weighted),
        Just(Policy::RingAll)
    ]
}

#[derive(Debug, Clone)]
struct World {
    config: RoutingConfig,
    statuses: Vec<ManagerStatus>,
    workload: Workload,
    responsible: Option<u32>,
    exclude: Vec<u32>,
    waited_ms: i64,
}

fn manager(i: usize, caps: [u32; 4], weight: u32, skills: u8) -> ManagerConfig {
    ManagerConfig {
        id: format!("m{i:02}"),
        queues: vec!["q".into()],
        skills: SKILLS
            .iter()
            .enumerate()
            .filter(|(b, _)| skills & (1 << b) != 0)
            .map(|(_, s)| (*s).to_owned())
            .collect(),
        weight,
        capacity: Capacity {
            call: caps[0],
            chat: caps[1],
            email: caps[2],
            lead: caps[3],
        },
        ..ManagerConfig::default()
    }
}

fn world() -> impl Strategy<Value = World> {
    (1usize..8)
        .prop_flat_map(|n| {
            (
                prop::collection::vec(
                    (
                        prop::array::uniform4(0u32..4),
                        1u32..5,
                        0u8..4,
                        presence(),
                        any::<bool>(),
                        prop::array::uniform4(0u32..5),
                        0u64..20,
                        0u64..(1 << 22),
                    ),
                    n,
                ),
                policy(),
                0u8..4,
                workload(),
                prop::option::of(0..n as u32),
                prop::collection::vec(0..n as u32, 0..3),
                0i64..120_000,
            )
        })
        .prop_map(
            |(ms, policy, required, workload, responsible, exclude, waited_ms)| {
                let managers = ms
                    .iter()
                    .enumerate()
                    .map(|(i, (caps, weight, skills, ..))| manager(i, *caps, *weight, *skills))
                    .collect();
                let statuses = ms
                    .iter()
                    .map(
                        |(_, _, _, presence, registered, load, last_turn, pass)| ManagerStatus {
                            presence: *presence,
                            registered: *registered,
                            load: *load,
                            last_turn: *last_turn,
                            pass: *pass,
                        },
                    )
                    .collect();
                let queue = QueueConfig {
                    name: "q".into(),
                    policy,
                    required_skills: SKILLS
                        .iter()
                        .enumerate()
                        .filter(|(b, _)| required & (1 << b) != 0)
                        .map(|(_, s)| (*s).to_owned())
                        .collect(),
                    ..QueueConfig::default()
                };
                World {
                    config: RoutingConfig {
                        managers,
                        queues: vec![queue],
                        ..RoutingConfig::default()
                    },
                    statuses,
                    workload,
                    responsible,
                    exclude,
                    waited_ms,
                }
            },
        )
}

const NOW: i64 = 1_800_000_000_000;

fn run(dir: &Directory, w: &World) -> Decision {
    let shifts = Shifts::always(dir.managers().len(), dir.queues().len());
    decide(
        dir,
        &Request {
            workload: w.workload,
            queue: 0,
            responsible: w.responsible,
            waiting_since: NOW - w.waited_ms,
            exclude: &w.exclude,
            now: NOW,
        },
        &Snapshot {
            statuses: &w.statuses,
            shifts: &shifts,
        },
    )
}

/// Whether a manager may be given new work of this kind: the definition the
/// engine must respect, written independently of it.
fn may_take(w: &World, m: u32) -> bool {
    let s = &w.statuses[m as usize];
    let cap = w.config.managers[m as usize].capacity.get(w.workload);
    let reachable = match w.workload {
        Workload::Call => s.presence == Presence::Online && s.registered,
        _ => s.presence == Presence::Online,
    };
    reachable && s.load[w.workload.index()] < cap && !w.exclude.contains(&m)
}

fn has_skills(w: &World, m: u32) -> bool {
    let q = &w.config.queues[0];
    q.required_skills
        .iter()
        .all(|s| w.config.managers[m as usize].skills.contains(s))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Never to an offline, away, do-not-disturb, over-capacity or excluded
    /// manager; never to one without the queue's skills unless they are the
    /// responsible manager.
    #[test]
    fn never_assigns_to_someone_who_cannot_take_it(w in world()) {
        let dir = Directory::new(&w.config).unwrap();
        let d = run(&dir, &w);
        let chosen: Vec<u32> = match &d.outcome {
            Outcome::Assign { manager, .. } => vec![*manager],
            Outcome::Ring { managers, .. } => managers.clone(),
            Outcome::Wait { .. } | Outcome::Callback => vec![],
        };
        for m in chosen {
            prop_assert!(may_take(&w, m), "gave {:?} to m{} with {:?}", w.workload, m, w.statuses[m as usize]);
            if d.reason != Reason::Responsible {
                prop_assert!(has_skills(&w, m));
            }
        }
        if matches!(d.outcome, Outcome::Ring { .. }) {
            prop_assert_eq!(w.workload, Workload::Call, "only calls ring several phones");
        }
    }

    /// The responsible manager always wins when reachable.
    #[test]
    fn the_responsible_manager_wins_when_reachable(w in world()) {
        let dir = Directory::new(&w.config).unwrap();
        let d = run(&dir, &w);
        if let Some(r) = w.responsible.filter(|&r| may_take(&w, r)) {
            prop_assert_eq!(d.outcome.clone(), Outcome::Assign { manager: r, deadline: None });
            prop_assert_eq!(d.reason, Reason::Responsible);
        }
    }

    /// When somebody can take it, it is not left waiting (unless for the
    /// responsible manager), and when nobody can, nobody gets it.
    #[test]
    fn work_waits_only_when_it_must(w in world()) {
        let dir = Directory::new(&w.config).unwrap();
        let d = run(&dir, &w);
        let anyone = (0..w.statuses.len() as u32).any(|m| may_take(&w, m) && has_skills(&w, m));
        match d.outcome {
            Outcome::Wait { .. } => prop_assert!(!anyone || d.reason == Reason::WaitingForResponsible),
            Outcome::Assign { .. } | Outcome::Ring { .. } => prop_assert!(anyone || d.reason == Reason::Responsible),
            Outcome::Callback => prop_assert!(false, "the queue is always open here"),
        }
    }

    /// The same inputs give the same decision, even from a directory built
    /// again from the same configuration.
    #[test]
    fn decisions_replay_identically(w in world()) {
        let a = Directory::new(&w.config).unwrap();
        let b = Directory::new(&w.config).unwrap();
        prop_assert_eq!(run(&a, &w), run(&a, &w));
        prop_assert_eq!(run(&a, &w), run(&b, &w));
    }

    /// Round robin over a constant set of candidates: in every window of
    /// consecutive assignments the counts differ by at most one.
    #[test]
    fn round_robin_is_fair(n in 1usize..7, steps in 1usize..150, turns in prop::collection::vec(0u64..5, 7)) {
        let config = RoutingConfig {
            managers: (0..n).map(|i| manager(i, [1000; 4], 1, 0)).collect(),
            queues: vec![QueueConfig { name: "q".into(), policy: Policy::RoundRobin, ..QueueConfig::default() }],
            ..RoutingConfig::default()
        };
        let dir = Directory::new(&config).unwrap();
        let shifts = Shifts::always(n, 1);
        // Everyone starts with some history; what matters is the turns after.
        let mut statuses: Vec<ManagerStatus> = (0..n)
            .map(|i| ManagerStatus { presence: Presence::Online, registered: true, last_turn: turns[i], ..ManagerStatus::default() })
            .collect();
        let mut turn = 100;
        let mut picks = Vec::new();
        for _ in 0..steps {
            let d = decide(&dir, &Request {
                workload: Workload::Chat, queue: 0, responsible: None, waiting_since: NOW, exclude: &[], now: NOW,
            }, &Snapshot { statuses: &statuses, shifts: &shifts });
            let Outcome::Assign { manager, .. } = d.outcome else { panic!("{d:?}") };
            turn += 1;
            statuses[manager as usize].last_turn = turn;
            picks.push(manager as usize);
        }
        for start in 0..picks.len() {
            let mut counts = vec![0usize; n];
            for &p in &picks[start..] {
                counts[p] += 1;
                let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
                prop_assert!(hi - lo <= 1, "window from {} unfair: {:?} in {:?}", start, counts, picks);
            }
        }
    }

    /// Weighted: over a long run, shares follow the weights.
    #[test]
    fn weighted_shares_follow_weights(weights in prop::collection::vec(1u32..5, 2..5)) {
        let n = weights.len();
        let config = RoutingConfig {
            managers: weights.iter().enumerate().map(|(i, w)| manager(i, [1000; 4], *w, 0)).collect(),
            queues: vec![QueueConfig { name: "q".into(), policy: Policy::Weighted, ..QueueConfig::default() }],
            ..RoutingConfig::default()
        };
        let dir = Directory::new(&config).unwrap();
        let shifts = Shifts::always(n, 1);
        let mut statuses: Vec<ManagerStatus> = (0..n)
            .map(|_| ManagerStatus { presence: Presence::Online, ..ManagerStatus::default() })
            .collect();
        let total_weight: u32 = weights.iter().sum();
        let rounds = 60 * total_weight as usize;
        let mut counts = vec![0usize; n];
        for t in 0..rounds {
            let d = decide(&dir, &Request {
                workload: Workload::Lead, queue: 0, responsible: None, waiting_since: NOW, exclude: &[], now: NOW,
            }, &Snapshot { statuses: &statuses, shifts: &shifts });
            let Outcome::Assign { manager, .. } = d.outcome else { panic!("{d:?}") };
            let m = manager as usize;
            statuses[m].pass += dir.manager(manager).stride;
            statuses[m].last_turn = t as u64 + 1;
            counts[m] += 1;
        }
        for (i, w) in weights.iter().enumerate() {
            let want = rounds * *w as usize / total_weight as usize;
            prop_assert!(counts[i].abs_diff(want) <= 2, "weights {:?} gave {:?}", weights, counts);
        }
    }
}
