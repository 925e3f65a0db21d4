//! `[routing]`: managers, queues, rules and SLAs — who gets each contact.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The routing section. With no managers, nothing is assigned and leads stay
/// with the CRM's defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// `memory` (one gateway node) or `redis` (state shared by every node).
    pub state: RoutingStateBackend,
    /// Redis for `state = "redis"`.
    pub redis_url: String,
    /// Prefix of every key Switchboard writes in Redis (several deployments
    /// can share one Redis with different prefixes).
    pub redis_prefix: String,
    /// Queue for interactions no rule matches; empty: the first queue.
    pub default_queue: String,
    /// How long an assignment counts toward a manager's load unless it
    /// ends sooner (a call hangs up, a lead is answered).
    #[serde(with = "per_workload_durations")]
    pub hold: PerWorkload<Option<Duration>>,
    pub managers: Vec<ManagerConfig>,
    pub queues: Vec<QueueConfig>,
    pub rules: Vec<RuleConfig>,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            state: RoutingStateBackend::Memory,
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_prefix: "switchboard:".into(),
            default_queue: String::new(),
            hold: PerWorkload {
                call: Some(Duration::from_secs(4 * 3600)),
                chat: Some(Duration::from_secs(3600)),
                email: Some(Duration::from_secs(24 * 3600)),
                lead: Some(Duration::from_secs(3600)),
            },
            managers: Vec::new(),
            queues: Vec::new(),
            rules: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoutingStateBackend {
    Memory,
    Redis,
}

/// What a manager is handling: each kind has its own load and capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Phone and browser calls.
    Call,
    /// Messengers, the site chat.
    Chat,
    Email,
    /// Leads from forms and lead services.
    Lead,
}

impl Workload {
    pub const ALL: [Workload; 4] = [
        Workload::Call,
        Workload::Chat,
        Workload::Email,
        Workload::Lead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Workload::Call => "call",
            Workload::Chat => "chat",
            Workload::Email => "email",
            Workload::Lead => "lead",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// A value per workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerWorkload<T> {
    pub call: T,
    pub chat: T,
    pub email: T,
    pub lead: T,
}

impl<T: Copy> PerWorkload<T> {
    pub fn get(&self, w: Workload) -> T {
        match w {
            Workload::Call => self.call,
            Workload::Chat => self.chat,
            Workload::Email => self.email,
            Workload::Lead => self.lead,
        }
    }
}

/// How many of each workload a manager handles at once.
pub type Capacity = PerWorkload<u32>;

impl Default for Capacity {
    fn default() -> Self {
        Self {
            call: 1,
            chat: 5,
            email: 20,
            lead: 10,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ManagerConfig {
    /// Stable id, used in events and `PUT /v1/managers/{id}/presence`.
    pub id: String,
    pub name: String,
    /// Queues this manager takes work from (besides queues naming them).
    pub queues: Vec<String>,
    pub skills: Vec<String>,
    /// Share of work under the `weighted` policy.
    pub weight: u32,
    pub capacity: Capacity,
    /// IANA time zone of `hours` and `holidays`.
    pub timezone: String,
    /// Working hours, e.g. `["mon-fri 09:00-18:00", "sat 10:00-14:00"]`;
    /// empty: always.
    pub hours: Vec<String>,
    /// Days off, `YYYY-MM-DD`.
    pub holidays: Vec<String>,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            id: String::new(),
            name: String::new(),
            queues: Vec::new(),
            skills: Vec::new(),
            weight: 1,
            capacity: Capacity::default(),
            timezone: "UTC".into(),
            hours: Vec::new(),
            holidays: Vec::new(),
        }
    }
}

/// How a queue picks among its available managers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// The manager assigned least recently.
    RoundRobin,
    /// The manager with the lowest load relative to capacity.
    LeastBusy,
    /// Round robin in proportion to `weight`.
    Weighted,
    /// Calls ring every available manager at once; other work is least busy.
    RingAll,
}

/// What happens to work arriving outside the queue's hours.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum OutOfHours {
    /// Leave it unassigned as "missed, call back" for the CRM to make a task.
    Callback,
    /// Route it to another queue (a night shift).
    Queue { queue: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overflow {
    /// Where work goes when nobody here can take it.
    pub queue: String,
    /// How long it may wait here first.
    #[serde(with = "crate::model::humantime_serde")]
    pub after: Duration,
}

/// What to do when a response deadline passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnBreach {
    /// Give it to another manager of the queue.
    Reassign,
    /// Give it to the queue's supervisor.
    Escalate,
}

/// Response deadlines per workload; absent: none.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlaConfig {
    /// From assignment to the manager's first response.
    #[serde(with = "per_workload_durations")]
    pub first_response: PerWorkload<Option<Duration>>,
    /// From a customer's later message to the manager's next response.
    #[serde(with = "per_workload_durations")]
    pub next_response: PerWorkload<Option<Duration>>,
    pub on_breach: OnBreach,
}

impl Default for SlaConfig {
    fn default() -> Self {
        Self {
            first_response: PerWorkload {
                call: None,
                chat: None,
                email: None,
                lead: None,
            },
            next_response: PerWorkload {
                call: None,
                chat: None,
                email: None,
                lead: None,
            },
            on_breach: OnBreach::Reassign,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    pub name: String,
    pub policy: Policy,
    /// Offer work to the contact's responsible manager first.
    pub responsible_first: bool,
    /// How long work waits for a responsible manager who is busy or away
    /// (calls: rings them alone) before the queue distributes it.
    #[serde(with = "crate::model::humantime_serde")]
    pub responsible_timeout: Duration,
    /// Managers of this queue (besides those listing it in their `queues`).
    pub members: Vec<String>,
    /// Skills a manager needs to take work from this queue.
    pub required_skills: Vec<String>,
    /// Who gets escalations.
    pub supervisor: Option<String>,
    pub overflow: Option<Overflow>,
    /// Business hours, like a manager's; empty: always open.
    pub hours: Vec<String>,
    pub timezone: String,
    pub holidays: Vec<String>,
    pub out_of_hours: OutOfHours,
    pub sla: SlaConfig,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            policy: Policy::RoundRobin,
            responsible_first: true,
            responsible_timeout: Duration::from_secs(30),
            members: Vec::new(),
            required_skills: Vec::new(),
            supervisor: None,
            overflow: None,
            hours: Vec::new(),
            timezone: "UTC".into(),
            holidays: Vec::new(),
            out_of_hours: OutOfHours::Callback,
            sla: SlaConfig::default(),
        }
    }
}

/// Sends matching interactions to a queue; the first matching rule wins. An
/// empty list matches anything.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuleConfig {
    pub queue: String,
    /// Channels (`sip`, `email`, `telegram`, `widget`, ...).
    pub channels: Vec<String>,
    /// The company number, mailbox or bot it arrived on.
    pub lines: Vec<String>,
    /// `campaign.source` values.
    pub campaign_sources: Vec<String>,
    /// Customer languages (`ru`, `en`).
    pub languages: Vec<String>,
}

/// A weekly schedule in minutes since midnight, per weekday (Monday first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WeeklyHours {
    pub days: [Vec<(u16, u16)>; 7],
}

impl WeeklyHours {
    /// Parses `["mon-fri 09:00-18:00", "sat 10:00-14:00", "sun,wed 12:00-13:00"]`.
    pub fn parse(specs: &[String]) -> Result<Self, String> {
        let mut week = WeeklyHours::default();
        for spec in specs {
            let (days, range) = spec
                .trim()
                .split_once(char::is_whitespace)
                .ok_or_else(|| format!("{spec:?} is not \"DAYS HH:MM-HH:MM\""))?;
            let (from, to) = range
                .trim()
                .split_once('-')
                .ok_or_else(|| format!("{spec:?}: the time range needs a '-'"))?;
            let (from, to) = (minute_of_day(from)?, minute_of_day(to)?);
            if from >= to {
                return Err(format!(
                    "{spec:?}: the range must end after it starts (same day)"
                ));
            }
            for day in parse_days(days)? {
                week.days[day].push((from, to));
            }
        }
        for day in &mut week.days {
            day.sort_unstable();
        }
        Ok(week)
    }

    pub fn is_always(&self) -> bool {
        self.days.iter().all(Vec::is_empty)
    }
}

fn minute_of_day(text: &str) -> Result<u16, String> {
    let (h, m) = text
        .trim()
        .split_once(':')
        .ok_or_else(|| format!("{text:?} is not HH:MM"))?;
    let (h, m): (u16, u16) = (
        h.parse().map_err(|_| format!("{text:?} is not HH:MM"))?,
        m.parse().map_err(|_| format!("{text:?} is not HH:MM"))?,
    );
    if m > 59 || h > 24 || (h == 24 && m != 0) {
        return Err(format!("{text:?} is not a time of day (00:00 to 24:00)"));
    }
    Ok(h * 60 + m)
}

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn day_index(name: &str) -> Result<usize, String> {
    DAY_NAMES
        .iter()
        .position(|d| d.eq_ignore_ascii_case(name.trim()))
        .ok_or_else(|| format!("{name:?} is not a day (mon, tue, wed, thu, fri, sat, sun)"))
}

fn parse_days(spec: &str) -> Result<BTreeSet<usize>, String> {
    let mut out = BTreeSet::new();
    for part in spec.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (day_index(a)?, day_index(b)?);
                if a > b {
                    return Err(format!("{part:?}: days run Monday to Sunday"));
                }
                out.extend(a..=b);
            }
            None => {
                out.insert(day_index(part)?);
            }
        }
    }
    Ok(out)
}

/// Serde for `{ call = "30s", chat = "2m" }` with absent entries as `None`.
mod per_workload_durations {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::PerWorkload;

    #[derive(Default, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Raw {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        call: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        chat: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        email: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lead: Option<String>,
    }

    pub(super) fn serialize<S: Serializer>(
        v: &PerWorkload<Option<Duration>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let f = |d: Option<Duration>| d.map(|d| humantime::format_duration(d).to_string());
        Raw {
            call: f(v.call),
            chat: f(v.chat),
            email: f(v.email),
            lead: f(v.lead),
        }
        .serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<PerWorkload<Option<Duration>>, D::Error> {
        let raw = Raw::deserialize(d)?;
        let parse = |v: Option<String>| -> Result<Option<Duration>, D::Error> {
            v.map(|text| {
                humantime::parse_duration(&text).map_err(|e| {
                    serde::de::Error::custom(format!(
                        "{text:?}: {e}; expected a duration such as \"90s\" or \"4h\""
                    ))
                })
            })
            .transpose()
        };
        Ok(PerWorkload {
            call: parse(raw.call)?,
            chat: parse(raw.chat)?,
            email: parse(raw.email)?,
            lead: parse(raw.lead)?,
        })
    }
}
