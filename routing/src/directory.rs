//! The routing configuration compiled for fast decisions: managers and
//! queues by index, skills as bit sets, durations in milliseconds.

use std::collections::HashMap;
use std::sync::Arc;

use switchboard_config::{Capacity, OnBreach, OutOfHours, Policy, RoutingConfig, Workload};
use switchboard_storage::{Channel, Kind};

use crate::Millis;
use crate::schedule::{Schedule, Shifts};

/// Index of a manager in the [`Directory`].
pub type ManagerIx = u32;
/// Index of a queue in the [`Directory`].
pub type QueueIx = u32;

/// Stride numerator for the weighted policy: a manager's pass grows by
/// `STRIDE / weight` per assignment.
const STRIDE: u64 = 1 << 20;

/// The configuration cannot be compiled (it passed validation, so this is
/// about limits validation does not know).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DirectoryError {
    #[error("routing uses {0} distinct skills; at most 64 are supported")]
    TooManySkills(usize),
    #[error("routing schedule: {0}")]
    Schedule(String),
    #[error("routing refers to unknown {what} {name:?}")]
    Unknown { what: &'static str, name: String },
}

#[derive(Debug, Clone)]
pub struct ManagerDef {
    pub id: Arc<str>,
    pub name: Arc<str>,
    pub capacity: Capacity,
    pub weight: u32,
    /// Added to the manager's pass per assignment (weighted policy).
    pub stride: u64,
    pub(crate) skills: u64,
    pub(crate) schedule: Option<Schedule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterHours {
    Callback,
    Queue(QueueIx),
}

#[derive(Debug, Clone)]
pub struct QueueDef {
    pub name: Arc<str>,
    pub policy: Policy,
    pub responsible_first: bool,
    pub responsible_timeout: Millis,
    /// Members by index, ordered by manager id (ties go to the first).
    pub members: Vec<ManagerIx>,
    pub supervisor: Option<ManagerIx>,
    pub on_breach: OnBreach,
    pub(crate) required_skills: u64,
    pub(crate) overflow: Option<(QueueIx, Millis)>,
    pub(crate) schedule: Option<Schedule>,
    pub(crate) after_hours: AfterHours,
    pub(crate) first_response: [Option<Millis>; 4],
    pub(crate) next_response: [Option<Millis>; 4],
}

impl QueueDef {
    /// Deadline for the first response to work assigned at `now`.
    pub fn first_response_deadline(&self, w: Workload, now: Millis) -> Option<Millis> {
        self.first_response[w.index()].map(|d| now.saturating_add(d))
    }

    /// Deadline for the next response to a customer who wrote at `now`.
    pub fn next_response_deadline(&self, w: Workload, now: Millis) -> Option<Millis> {
        self.next_response[w.index()].map(|d| now.saturating_add(d))
    }
}

#[derive(Debug, Clone)]
struct RuleDef {
    queue: QueueIx,
    channels: Vec<String>,
    lines: Vec<String>,
    campaign_sources: Vec<String>,
    languages: Vec<String>,
}

/// What the rules look at to pick a queue.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteKey<'a> {
    pub channel: Option<Channel>,
    /// The company number, mailbox or bot it arrived on.
    pub line: Option<&'a str>,
    pub campaign_source: Option<&'a str>,
    pub language: Option<&'a str>,
}

/// The compiled routing configuration.
#[derive(Debug, Clone)]
pub struct Directory {
    managers: Vec<ManagerDef>,
    queues: Vec<QueueDef>,
    rules: Vec<RuleDef>,
    default_queue: QueueIx,
    by_id: HashMap<Arc<str>, ManagerIx>,
}

fn ms(d: std::time::Duration) -> Millis {
    Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX)
}

fn ix(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

impl Directory {
    pub fn new(cfg: &RoutingConfig) -> Result<Self, DirectoryError> {
        let mut skill_bits: HashMap<String, u32> = HashMap::new();
        let mut bits = |skills: &[String]| -> Result<u64, DirectoryError> {
            let mut mask = 0u64;
            for s in skills {
                let next = ix(skill_bits.len());
                let bit = *skill_bits.entry(s.clone()).or_insert(next);
                if bit >= 64 {
                    return Err(DirectoryError::TooManySkills(skill_bits.len()));
                }
                mask |= 1 << bit;
            }
            Ok(mask)
        };
        let mut managers = Vec::with_capacity(cfg.managers.len());
        for m in &cfg.managers {
            managers.push(ManagerDef {
                id: Arc::from(m.id.as_str()),
                name: Arc::from(m.name.as_str()),
                capacity: m.capacity,
                weight: m.weight.max(1),
                stride: STRIDE / u64::from(m.weight.max(1)),
                skills: bits(&m.skills)?,
                schedule: Schedule::new(&m.timezone, &m.hours, &m.holidays)
                    .map_err(DirectoryError::Schedule)?,
            });
        }
        let by_id: HashMap<Arc<str>, ManagerIx> = managers
            .iter()
            .enumerate()
            .map(|(i, m)| (Arc::clone(&m.id), ix(i)))
            .collect();
        let queue_ix: HashMap<&str, QueueIx> = cfg
            .queues
            .iter()
            .enumerate()
            .map(|(i, q)| (q.name.as_str(), ix(i)))
            .collect();
        let find_queue = |name: &str| {
            queue_ix
                .get(name)
                .copied()
                .ok_or_else(|| DirectoryError::Unknown {
                    what: "queue",
                    name: name.to_owned(),
                })
        };
        let find_manager = |id: &str| {
            by_id
                .get(id)
                .copied()
                .ok_or_else(|| DirectoryError::Unknown {
                    what: "manager",
                    name: id.to_owned(),
                })
        };
        let mut queues = Vec::with_capacity(cfg.queues.len());
        for q in &cfg.queues {
            let mut members: Vec<ManagerIx> = q
                .members
                .iter()
                .map(|m| find_manager(m))
                .collect::<Result<_, _>>()?;
            members.extend(
                cfg.managers
                    .iter()
                    .enumerate()
                    .filter(|(_, m)| m.queues.contains(&q.name))
                    .map(|(i, _)| ix(i)),
            );
            members.sort_by(|a, b| managers[*a as usize].id.cmp(&managers[*b as usize].id));
            members.dedup();
            let per = |p: &switchboard_config::PerWorkload<Option<std::time::Duration>>| {
                Workload::ALL.map(|w| p.get(w).map(ms))
            };
            queues.push(QueueDef {
                name: Arc::from(q.name.as_str()),
                policy: q.policy,
                responsible_first: q.responsible_first,
                responsible_timeout: ms(q.responsible_timeout),
                members,
                supervisor: q.supervisor.as_deref().map(find_manager).transpose()?,
                on_breach: q.sla.on_breach,
                required_skills: bits(&q.required_skills)?,
                overflow: q
                    .overflow
                    .as_ref()
                    .map(|o| Ok::<_, DirectoryError>((find_queue(&o.queue)?, ms(o.after))))
                    .transpose()?,
                schedule: Schedule::new(&q.timezone, &q.hours, &q.holidays)
                    .map_err(DirectoryError::Schedule)?,
                after_hours: match &q.out_of_hours {
                    OutOfHours::Callback => AfterHours::Callback,
                    OutOfHours::Queue { queue } => AfterHours::Queue(find_queue(queue)?),
                },
                first_response: per(&q.sla.first_response),
                next_response: per(&q.sla.next_response),
            });
        }
        let rules = cfg
            .rules
            .iter()
            .map(|r| {
                Ok(RuleDef {
                    queue: find_queue(&r.queue)?,
                    channels: r.channels.clone(),
                    lines: r.lines.clone(),
                    campaign_sources: r.campaign_sources.clone(),
                    languages: r.languages.clone(),
                })
            })
            .collect::<Result<_, DirectoryError>>()?;
        let default_queue = if cfg.default_queue.is_empty() {
            0
        } else {
            find_queue(&cfg.default_queue)?
        };
        Ok(Self {
            managers,
            queues,
            rules,
            default_queue,
            by_id,
        })
    }

    /// Whether anything can be routed (there are queues).
    pub fn is_enabled(&self) -> bool {
        !self.queues.is_empty()
    }

    pub fn managers(&self) -> &[ManagerDef] {
        &self.managers
    }

    pub fn queues(&self) -> &[QueueDef] {
        &self.queues
    }

    pub fn manager(&self, ix: ManagerIx) -> &ManagerDef {
        &self.managers[ix as usize]
    }

    pub fn queue(&self, ix: QueueIx) -> &QueueDef {
        &self.queues[ix as usize]
    }

    pub fn manager_ix(&self, id: &str) -> Option<ManagerIx> {
        self.by_id.get(id).copied()
    }

    /// Every manager id, in index order (for fetching statuses).
    pub fn manager_ids(&self) -> Vec<&str> {
        self.managers.iter().map(|m| &*m.id).collect()
    }

    /// The queue an interaction goes to: the first rule that matches, else
    /// the default queue.
    pub fn queue_for(&self, key: &RouteKey<'_>) -> QueueIx {
        let matches = |allowed: &[String], value: Option<&str>| {
            allowed.is_empty()
                || value.is_some_and(|v| allowed.iter().any(|a| a.eq_ignore_ascii_case(v)))
        };
        self.rules
            .iter()
            .find(|r| {
                matches(&r.channels, key.channel.map(Channel::as_str))
                    && matches(&r.lines, key.line)
                    && matches(&r.campaign_sources, key.campaign_source)
                    && matches(&r.languages, key.language)
            })
            .map_or(self.default_queue, |r| r.queue)
    }

    /// Who is on shift and which queues are open at `now`, valid to the end
    /// of the current minute.
    pub fn shifts(&self, now: Millis) -> Shifts {
        let open = |s: &Option<Schedule>| s.as_ref().is_none_or(|s| s.is_open(now));
        Shifts {
            managers: self.managers.iter().map(|m| open(&m.schedule)).collect(),
            queues: self.queues.iter().map(|q| open(&q.schedule)).collect(),
            valid_until: (now.div_euclid(60_000) + 1) * 60_000,
        }
    }
}

/// The kind of work an interaction is, if it is work to assign: calls,
/// customers' messages, emails and leads. Outgoing messages and routing
/// events are not.
pub fn workload_of(channel: Channel, kind: Kind) -> Option<Workload> {
    match kind {
        Kind::LeadReceived => Some(Workload::Lead),
        Kind::MessageReceived => Some(match channel {
            Channel::Email => Workload::Email,
            Channel::Sip | Channel::Webrtc => Workload::Call,
            Channel::Jivosite | Channel::Roistat | Channel::Comagic | Channel::Uis => {
                Workload::Lead
            }
            _ => Workload::Chat,
        }),
        Kind::CallRinging | Kind::CallMissed => Some(Workload::Call),
        _ => None,
    }
}
