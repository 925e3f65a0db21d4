//! Routing in the gateway: reads what arrives on the feed, asks the engine
//! who gets it, claims it in the shared state, and writes the decision back
//! to the feed as `routing.assigned` / `routing.queued`; watches response
//! deadlines and reassigns or escalates with `routing.reassigned` /
//! `routing.escalated`. The engine decides; this module owns the clock, the
//! state store and the feed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use switchboard_config::{OnBreach, RoutingConfig, RoutingStateBackend, Workload};
use switchboard_redis::RedisState;
use switchboard_routing::{
    Breach, Decision, Directory, ManagerIx, Outcome, QueueIx, Request, RouteKey, Shifts,
    SlaTracker, Snapshot, decide, workload_of,
};
use switchboard_storage::state::{
    Claim, ClaimOutcome, ManagerStatus, MemoryState, Millis, Presence, RoutingState, StateError,
};
use switchboard_storage::{
    FeedLog, FeedSource, Interaction, Kind, LogConsumer, OwnerChange, Record, Topic,
};
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;

use crate::metrics;

/// How often waiting work is retried when the state store fails.
const STATE_RETRY: Millis = 5_000;
/// Claims attempted for one decision before the work waits.
const CLAIM_ATTEMPTS: usize = 4;

/// The consumer group routing reads the local log as.
pub const ROUTING_GROUP: &str = "routing";

/// Routing could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DispatchError {
    #[error(transparent)]
    Directory(#[from] switchboard_routing::DirectoryError),
    #[error(transparent)]
    State(#[from] StateError),
}

/// Where routing state lives, chosen by `routing.state`.
#[derive(Debug)]
pub enum StateStore {
    Memory(MemoryState),
    Redis(RedisState),
}

impl RoutingState for StateStore {
    async fn statuses(&self, ids: &[&str], now: Millis) -> Result<Vec<ManagerStatus>, StateError> {
        match self {
            Self::Memory(s) => s.statuses(ids, now).await,
            Self::Redis(s) => s.statuses(ids, now).await,
        }
    }
    async fn set_presence(&self, id: &str, p: Presence) -> Result<(), StateError> {
        match self {
            Self::Memory(s) => s.set_presence(id, p).await,
            Self::Redis(s) => s.set_presence(id, p).await,
        }
    }
    async fn set_registered(&self, id: &str, r: bool) -> Result<(), StateError> {
        match self {
            Self::Memory(s) => s.set_registered(id, r).await,
            Self::Redis(s) => s.set_registered(id, r).await,
        }
    }
    async fn claim(&self, c: &Claim<'_>) -> Result<ClaimOutcome, StateError> {
        match self {
            Self::Memory(s) => s.claim(c).await,
            Self::Redis(s) => s.claim(c).await,
        }
    }
    async fn release(&self, contact: &str, w: Workload) -> Result<Option<String>, StateError> {
        match self {
            Self::Memory(s) => s.release(contact, w).await,
            Self::Redis(s) => s.release(contact, w).await,
        }
    }
    async fn assignee(
        &self,
        contact: &str,
        w: Workload,
        now: Millis,
    ) -> Result<Option<String>, StateError> {
        match self {
            Self::Memory(s) => s.assignee(contact, w, now).await,
            Self::Redis(s) => s.assignee(contact, w, now).await,
        }
    }
    async fn owner(&self, contact: &str) -> Result<Option<String>, StateError> {
        match self {
            Self::Memory(s) => s.owner(contact).await,
            Self::Redis(s) => s.owner(contact).await,
        }
    }
    async fn set_owner(&self, contact: &str, m: Option<&str>) -> Result<(), StateError> {
        match self {
            Self::Memory(s) => s.set_owner(contact, m).await,
            Self::Redis(s) => s.set_owner(contact, m).await,
        }
    }
    async fn set_owner_if_none(&self, contact: &str, m: &str) -> Result<bool, StateError> {
        match self {
            Self::Memory(s) => s.set_owner_if_none(contact, m).await,
            Self::Redis(s) => s.set_owner_if_none(contact, m).await,
        }
    }
}

/// Work nobody could take yet.
#[derive(Debug, Clone)]
struct Waiting {
    queue: QueueIx,
    since: Millis,
    retry_at: Millis,
    exclude: Vec<ManagerIx>,
    /// The interaction that brought the work (channel, contact, thread).
    origin: Arc<Interaction>,
    /// Whether `routing.queued` was written for it.
    announced: bool,
}

type Key = (Arc<str>, Workload);

struct Work {
    sla: SlaTracker,
    waiting: BTreeMap<Key, Waiting>,
    /// Interactions of current assignments, for reassignment events.
    origins: BTreeMap<Key, Arc<Interaction>>,
    shifts: Shifts,
}

/// A manager as `GET /v1/managers` shows it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ManagerView {
    pub id: String,
    pub name: String,
    /// `online`, `away`, `do_not_disturb` or `offline`.
    pub presence: String,
    /// A phone is registered.
    pub registered: bool,
    /// Live assignments: `{call, chat, email, lead}`.
    #[schema(value_type = Object)]
    pub load: serde_json::Value,
    #[schema(value_type = Object)]
    pub capacity: serde_json::Value,
}

/// Routing for one gateway node; cheap to clone.
#[derive(Clone)]
pub struct Dispatcher {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("managers", &self.shared.dir.managers().len())
            .field("queues", &self.shared.dir.queues().len())
            .finish_non_exhaustive()
    }
}

struct Shared {
    dir: Directory,
    state: StateStore,
    feed: FeedLog,
    hold: [Duration; 4],
    work: Mutex<Work>,
    kick: Notify,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> Millis {
    Millis::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
        .unwrap_or(Millis::MAX)
}

fn rfc3339(ms: Millis) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

impl Dispatcher {
    /// Compiles the configuration and connects the state store.
    pub async fn new(cfg: &RoutingConfig, feed: FeedLog) -> Result<Self, DispatchError> {
        let dir = Directory::new(cfg)?;
        let state = match cfg.state {
            RoutingStateBackend::Memory => StateStore::Memory(MemoryState::new()),
            RoutingStateBackend::Redis => {
                StateStore::Redis(RedisState::connect(&cfg.redis_url, &cfg.redis_prefix).await?)
            }
        };
        let shifts = dir.shifts(now_ms());
        let hold = Workload::ALL.map(|w| cfg.hold.get(w).unwrap_or(Duration::from_secs(3600)));
        Ok(Self {
            shared: Arc::new(Shared {
                dir,
                state,
                feed,
                hold,
                work: Mutex::new(Work {
                    sla: SlaTracker::new(),
                    waiting: BTreeMap::new(),
                    origins: BTreeMap::new(),
                    shifts,
                }),
                kick: Notify::new(),
            }),
        })
    }

    pub fn directory(&self) -> &Directory {
        &self.shared.dir
    }

    /// Sets a manager's presence; `false` when there is no such manager.
    /// Waiting work is decided again at once.
    pub async fn set_presence(&self, id: &str, presence: Presence) -> Result<bool, StateError> {
        if self.shared.dir.manager_ix(id).is_none() {
            return Ok(false);
        }
        self.shared.state.set_presence(id, presence).await?;
        self.retry_all().await;
        Ok(true)
    }

    /// A manager's phone registered or unregistered (the SIP registrar calls
    /// this). Registering makes an offline manager online; unregistering
    /// only stops calls, a manager may still chat.
    pub async fn set_registered(&self, id: &str, registered: bool) -> Result<bool, StateError> {
        if self.shared.dir.manager_ix(id).is_none() {
            return Ok(false);
        }
        self.shared.state.set_registered(id, registered).await?;
        if registered {
            let status = self.shared.state.statuses(&[id], now_ms()).await?;
            if status
                .first()
                .is_some_and(|s| s.presence == Presence::Offline)
            {
                self.shared.state.set_presence(id, Presence::Online).await?;
            }
        }
        self.retry_all().await;
        Ok(true)
    }

    /// Every manager with presence and load.
    pub async fn managers(&self) -> Result<Vec<ManagerView>, StateError> {
        let dir = &self.shared.dir;
        let statuses = self
            .shared
            .state
            .statuses(&dir.manager_ids(), now_ms())
            .await?;
        Ok(dir
            .managers()
            .iter()
            .zip(statuses)
            .map(|(m, s)| {
                let per =
                    |v: [u32; 4]| json!({"call": v[0], "chat": v[1], "email": v[2], "lead": v[3]});
                ManagerView {
                    id: m.id.to_string(),
                    name: m.name.to_string(),
                    presence: s.presence.as_str().to_owned(),
                    registered: s.registered,
                    load: per(s.load),
                    capacity: per(Workload::ALL.map(|w| m.capacity.get(w))),
                }
            })
            .collect())
    }

    /// Routes until `shutdown`: interactions and owner changes from
    /// `source`, waiting work and deadlines on time.
    pub async fn run(self, mut source: LogConsumer, shutdown: CancellationToken) {
        loop {
            let wait = {
                let work = self.shared.work.lock().await;
                let next = [
                    work.sla.next_deadline(),
                    work.waiting.values().map(|w| w.retry_at).min(),
                ]
                .into_iter()
                .flatten()
                .min();
                let ms = next.map_or(1_000, |t| (t - now_ms()).clamp(0, 1_000));
                Duration::from_millis(u64::try_from(ms).unwrap_or(0))
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.shared.kick.notified() => {}
                batch = source.poll(200, wait) => match batch {
                    Ok(batch) => {
                        for record in &batch {
                            self.handle_record(record).await;
                        }
                        if let Err(e) = source.commit(&batch).await {
                            tracing::warn!(error = %e, "routing could not commit its feed position");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "routing could not read the feed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                },
            }
            self.tick(now_ms()).await;
        }
    }

    async fn handle_record(&self, record: &Record) {
        match record.topic.as_str() {
            "owners" => match serde_json::from_slice::<OwnerChange>(&record.value) {
                Ok(change) => self.apply_owner(&change).await,
                Err(e) => {
                    tracing::warn!(error = %e, offset = record.offset, "owner record skipped")
                }
            },
            "interactions" => match serde_json::from_slice::<Interaction>(&record.value) {
                Ok(ev) => self.handle(Arc::new(ev), now_ms()).await,
                // The CRM keeps undecodable records; routing has nothing to do with them.
                Err(e) => {
                    tracing::debug!(error = %e, offset = record.offset, "interaction not routable")
                }
            },
            _ => {}
        }
    }

    /// Applies a responsible-manager change published by the CRM.
    pub async fn apply_owner(&self, change: &OwnerChange) {
        let manager = change
            .manager
            .as_deref()
            .filter(|m| self.shared.dir.manager_ix(m).is_some());
        if let Err(e) = self
            .shared
            .state
            .set_owner(&change.contact_key, manager)
            .await
        {
            tracing::warn!(error = %e, "owner change not applied");
        }
    }

    /// Reacts to one interaction.
    pub async fn handle(&self, ev: Arc<Interaction>, now: Millis) {
        let contact: Arc<str> = Arc::from(ev.contact.key.as_str());
        match ev.kind {
            Kind::RoutingAssigned
            | Kind::RoutingReassigned
            | Kind::RoutingEscalated
            | Kind::RoutingQueued => return,
            Kind::MessageSent | Kind::CallAnswered if ev.manager.is_some() => {
                let mut work = self.shared.work.lock().await;
                for w in Workload::ALL {
                    work.sla.responded(&contact, w);
                }
                // Answering a lead is handling it.
                if let Ok(Some(holder)) = self
                    .shared
                    .state
                    .assignee(&contact, Workload::Lead, now)
                    .await
                    && Some(&holder) == ev.manager.as_ref()
                {
                    let _ = self.shared.state.release(&contact, Workload::Lead).await;
                    work.origins.remove(&(Arc::clone(&contact), Workload::Lead));
                }
                return;
            }
            Kind::CallEnded => {
                let mut work = self.shared.work.lock().await;
                work.sla.forget(&contact, Workload::Call);
                work.origins.remove(&(Arc::clone(&contact), Workload::Call));
                if let Err(e) = self.shared.state.release(&contact, Workload::Call).await {
                    tracing::warn!(error = %e, "call assignment not released");
                }
                return;
            }
            _ => {}
        }
        // Calls are routed while they ring (the SIP side asks); the rest here.
        let Some(w) = workload_of(ev.channel, ev.kind).filter(|w| *w != Workload::Call) else {
            return;
        };
        // Auto-replies, bounces and bulk mail are nobody's work.
        if !self.shared.dir.is_enabled() || ev.manager.is_some() || ev.payload.get("auto").is_some()
        {
            return;
        }
        let key: Key = (Arc::clone(&contact), w);
        let route_key = RouteKey {
            channel: Some(ev.channel),
            line: ev.payload.get("line").and_then(|v| v.as_str()),
            campaign_source: ev.campaign.as_ref().and_then(|c| c.source.as_deref()),
            language: ev.payload.get("language").and_then(|v| v.as_str()),
        };
        let queue = self.shared.dir.queue_for(&route_key);
        let mut work = self.shared.work.lock().await;
        if work.waiting.contains_key(&key) {
            return;
        }
        match self.shared.state.assignee(&contact, w, now).await {
            Ok(Some(holder)) => {
                // The customer wrote again in an ongoing conversation.
                if let Some(m) = self.shared.dir.manager_ix(&holder) {
                    let deadline = self.shared.dir.queue(queue).next_response_deadline(w, now);
                    work.sla.customer_wrote(&contact, w, m, queue, deadline);
                }
            }
            Ok(None) => {
                let waiting = Waiting {
                    queue,
                    since: now,
                    retry_at: now,
                    exclude: Vec::new(),
                    origin: ev,
                    announced: false,
                };
                self.route(&mut work, key, waiting, now).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "routing state unavailable; the contact waits");
                work.waiting.insert(
                    key,
                    Waiting {
                        queue,
                        since: now,
                        retry_at: now + STATE_RETRY,
                        exclude: Vec::new(),
                        origin: ev,
                        announced: false,
                    },
                );
            }
        }
    }

    /// Decides and claims; records the outcome. On every path the work is
    /// either assigned, waiting, or left as a callback.
    async fn route(&self, work: &mut Work, key: Key, mut waiting: Waiting, now: Millis) {
        let dir = &self.shared.dir;
        let contact = Arc::clone(&key.0);
        let w = key.1;
        let ids = dir.manager_ids();
        if now >= work.shifts.valid_until {
            work.shifts = dir.shifts(now);
        }
        for _ in 0..CLAIM_ATTEMPTS {
            let loaded = async {
                let statuses = self.shared.state.statuses(&ids, now).await?;
                let owner = self.shared.state.owner(&contact).await?;
                Ok::<_, StateError>((statuses, owner))
            }
            .await;
            let (statuses, owner) = match loaded {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(error = %e, "routing state unavailable; the contact waits");
                    waiting.retry_at = now + STATE_RETRY;
                    work.waiting.insert(key, waiting);
                    return;
                }
            };
            let decision = decide(
                dir,
                &Request {
                    workload: w,
                    queue: waiting.queue,
                    responsible: owner.as_deref().and_then(|o| dir.manager_ix(o)),
                    waiting_since: waiting.since,
                    exclude: &waiting.exclude,
                    now,
                },
                &Snapshot {
                    statuses: &statuses,
                    shifts: &work.shifts,
                },
            );
            metrics::DECISIONS
                .with_label_values(&[w.as_str(), decision.reason.as_str()])
                .inc();
            let (manager, deadline) = match &decision.outcome {
                Outcome::Assign { manager, deadline } => (*manager, *deadline),
                Outcome::Ring { managers, deadline } => match managers.first() {
                    Some(m) => (*m, *deadline),
                    None => continue,
                },
                Outcome::Wait { until } => {
                    waiting.retry_at = *until;
                    if !waiting.announced {
                        waiting.announced = true;
                        self.queued(&waiting.origin, &decision, w, ("retry_at", rfc3339(*until)))
                            .await;
                    }
                    work.waiting.insert(key, waiting);
                    return;
                }
                Outcome::Callback => {
                    self.queued(
                        &waiting.origin,
                        &decision,
                        w,
                        ("action", "callback".to_owned()),
                    )
                    .await;
                    work.waiting.remove(&key);
                    return;
                }
            };
            match self.claim(&contact, w, manager, None, now).await {
                Ok(ClaimOutcome::Claimed { .. }) => {
                    self.assigned(
                        work,
                        &key,
                        &waiting.origin,
                        &decision,
                        manager,
                        deadline,
                        now,
                    )
                    .await;
                    work.waiting.remove(&key);
                    return;
                }
                Ok(ClaimOutcome::AlreadyAssigned { manager }) => {
                    tracing::debug!(%manager, "another node assigned the contact first");
                    work.waiting.remove(&key);
                    return;
                }
                Ok(ClaimOutcome::OverCapacity) => waiting.exclude.push(manager),
                Err(e) => {
                    tracing::warn!(error = %e, "claim failed; the contact waits");
                    waiting.retry_at = now + STATE_RETRY;
                    work.waiting.insert(key, waiting);
                    return;
                }
            }
        }
        waiting.retry_at = now + STATE_RETRY;
        work.waiting.insert(key, waiting);
    }

    async fn claim(
        &self,
        contact: &str,
        w: Workload,
        manager: ManagerIx,
        capacity: Option<u32>,
        now: Millis,
    ) -> Result<ClaimOutcome, StateError> {
        let m = self.shared.dir.manager(manager);
        self.shared
            .state
            .claim(&Claim {
                contact,
                workload: w,
                manager: &m.id,
                capacity: capacity.unwrap_or(m.capacity.get(w)),
                stride: m.stride,
                hold: self.shared.hold[w.index()],
                now,
            })
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn assigned(
        &self,
        work: &mut Work,
        key: &Key,
        origin: &Arc<Interaction>,
        decision: &Decision,
        manager: ManagerIx,
        deadline: Option<Millis>,
        now: Millis,
    ) {
        let dir = &self.shared.dir;
        let id = &dir.manager(manager).id;
        work.sla
            .assigned(&key.0, key.1, manager, decision.queue, deadline);
        work.origins.insert(key.clone(), Arc::clone(origin));
        if let Err(e) = self.shared.state.set_owner_if_none(&key.0, id).await {
            tracing::warn!(error = %e, "responsible manager not recorded");
        }
        self.publish(
            origin,
            Kind::RoutingAssigned,
            Some(id),
            json!({
                "queue": &*dir.queue(decision.queue).name,
                "reason": decision.reason.as_str(),
                "workload": key.1.as_str(),
                "deadline": deadline.map(rfc3339),
                "handed_off_from": decision.handed_off_from.map(|q| dir.queue(q).name.to_string()),
                "waited_ms": now - origin_time(origin, now),
                "for": origin.id.to_string(),
            }),
        )
        .await;
    }

    /// Writes `routing.queued`: the work is not with anyone yet, and why.
    async fn queued(
        &self,
        origin: &Interaction,
        decision: &Decision,
        w: Workload,
        extra: (&str, String),
    ) {
        let mut payload = json!({
            "queue": &*self.shared.dir.queue(decision.queue).name,
            "reason": decision.reason.as_str(),
            "workload": w.as_str(),
            "for": origin.id.to_string(),
        });
        payload[extra.0] = json!(extra.1);
        self.publish(origin, Kind::RoutingQueued, None, payload)
            .await;
    }

    async fn publish(
        &self,
        origin: &Interaction,
        kind: Kind,
        manager: Option<&str>,
        payload: serde_json::Value,
    ) {
        let mut ev = Interaction::new(
            kind,
            origin.channel,
            origin.contact.clone(),
            time::OffsetDateTime::now_utc(),
            payload,
        );
        ev.manager = manager.map(str::to_owned);
        ev.conversation = origin.conversation.clone();
        ev.campaign = origin.campaign.clone();
        if let Err(e) = self.shared.feed.publish(&ev).await {
            tracing::error!(error = %e, kind = kind.as_str(), "routing event not written");
        }
    }

    /// Makes everything waiting due now (presence changed) and wakes the
    /// run loop to decide it.
    async fn retry_all(&self) {
        let mut work = self.shared.work.lock().await;
        for w in work.waiting.values_mut() {
            w.retry_at = 0;
        }
        drop(work);
        self.shared.kick.notify_one();
    }

    /// Handles breached deadlines and waiting work that is due.
    pub async fn tick(&self, now: Millis) {
        let mut work = self.shared.work.lock().await;
        for breach in work.sla.expired(now) {
            self.on_breach(&mut work, breach, now).await;
        }
        let due: Vec<Key> = work
            .waiting
            .iter()
            .filter(|(_, w)| w.retry_at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            if let Some(waiting) = work.waiting.remove(&key) {
                self.route(&mut work, key, waiting, now).await;
            }
        }
    }

    async fn on_breach(&self, work: &mut Work, b: Breach, now: Millis) {
        let dir = &self.shared.dir;
        let key: Key = (Arc::clone(&b.contact), b.workload);
        let Some(origin) = work.origins.get(&key).cloned() else {
            return;
        };
        let from = &dir.manager(b.manager).id;
        metrics::SLA_BREACHES
            .with_label_values(&[b.workload.as_str(), b.phase.as_str()])
            .inc();
        let queue = dir.queue(b.queue);
        let reason = format!("sla_{}_breached", b.phase.as_str());
        let target = match queue.on_breach {
            OnBreach::Escalate => queue.supervisor.map(|s| (s, Kind::RoutingEscalated)),
            OnBreach::Reassign => None,
        };
        if let Err(e) = self.shared.state.release(&b.contact, b.workload).await {
            tracing::warn!(error = %e, "breached assignment not released");
        }
        match target {
            Some((supervisor, kind)) => {
                // An escalation goes through whatever the supervisor's load.
                match self
                    .claim(&b.contact, b.workload, supervisor, Some(u32::MAX), now)
                    .await
                {
                    Ok(ClaimOutcome::Claimed { .. }) => {
                        let to = &dir.manager(supervisor).id;
                        self.publish(
                            &origin,
                            kind,
                            Some(to),
                            json!({
                                "queue": &*queue.name,
                                "reason": reason,
                                "workload": b.workload.as_str(),
                                "from": &**from,
                                "to": &**to,
                                "missed_deadline": rfc3339(b.deadline),
                                "for": origin.id.to_string(),
                            }),
                        )
                        .await;
                        // The supervisor's own response has no further deadline.
                        work.sla
                            .assigned(&b.contact, b.workload, supervisor, b.queue, None);
                    }
                    Ok(other) => {
                        tracing::info!(?other, "escalation not needed: the contact moved on")
                    }
                    Err(e) => tracing::warn!(error = %e, "escalation failed"),
                }
            }
            None => {
                let waiting = Waiting {
                    queue: b.queue,
                    since: now,
                    retry_at: now,
                    exclude: vec![b.manager],
                    origin,
                    announced: true,
                };
                work.origins.remove(&key);
                self.reassign(work, key, waiting, from, &reason, b.deadline, now)
                    .await;
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn reassign(
        &self,
        work: &mut Work,
        key: Key,
        waiting: Waiting,
        from: &str,
        reason: &str,
        missed: Millis,
        now: Millis,
    ) {
        let dir = &self.shared.dir;
        let ids = dir.manager_ids();
        let statuses = match self.shared.state.statuses(&ids, now).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "reassignment postponed");
                work.waiting.insert(key, waiting);
                return;
            }
        };
        let decision = decide(
            dir,
            &Request {
                workload: key.1,
                queue: waiting.queue,
                responsible: None,
                waiting_since: waiting.since,
                exclude: &waiting.exclude,
                now,
            },
            &Snapshot {
                statuses: &statuses,
                shifts: &work.shifts,
            },
        );
        if let Outcome::Assign { manager, deadline } = decision.outcome
            && let Ok(ClaimOutcome::Claimed { .. }) =
                self.claim(&key.0, key.1, manager, None, now).await
        {
            let to = &dir.manager(manager).id;
            work.sla
                .assigned(&key.0, key.1, manager, decision.queue, deadline);
            work.origins
                .insert(key.clone(), Arc::clone(&waiting.origin));
            self.publish(
                &waiting.origin,
                Kind::RoutingReassigned,
                Some(to),
                json!({
                    "queue": &*dir.queue(decision.queue).name,
                    "reason": reason,
                    "workload": key.1.as_str(),
                    "from": from,
                    "to": &**to,
                    "missed_deadline": rfc3339(missed),
                    "deadline": deadline.map(rfc3339),
                    "for": waiting.origin.id.to_string(),
                }),
            )
            .await;
            return;
        }
        // Nobody else now: it waits, without the manager who missed it.
        self.route(work, key, waiting, now).await;
    }

    /// Whom to ring for a call from `contact` arriving as `key` describes,
    /// and in what order (the SIP B2BUA asks this, then claims the manager
    /// who answers). Ids in ring order; empty when the call must wait or
    /// is out of hours, as `decision` says.
    pub async fn plan_call(
        &self,
        contact: &str,
        key: &RouteKey<'_>,
        waiting_since: Millis,
        exclude: &[ManagerIx],
        now: Millis,
    ) -> Result<(Decision, Vec<String>), StateError> {
        let dir = &self.shared.dir;
        let statuses = self.shared.state.statuses(&dir.manager_ids(), now).await?;
        let owner = self.shared.state.owner(contact).await?;
        let mut work = self.shared.work.lock().await;
        if now >= work.shifts.valid_until {
            work.shifts = dir.shifts(now);
        }
        let decision = decide(
            dir,
            &Request {
                workload: Workload::Call,
                queue: dir.queue_for(key),
                responsible: owner.as_deref().and_then(|o| dir.manager_ix(o)),
                waiting_since,
                exclude,
                now,
            },
            &Snapshot {
                statuses: &statuses,
                shifts: &work.shifts,
            },
        );
        let ids = match &decision.outcome {
            Outcome::Assign { manager, .. } => vec![dir.manager(*manager).id.to_string()],
            Outcome::Ring { managers, .. } => managers
                .iter()
                .map(|m| dir.manager(*m).id.to_string())
                .collect(),
            Outcome::Wait { .. } | Outcome::Callback => Vec::new(),
        };
        Ok((decision, ids))
    }

    /// The consumer routing reads: interactions and owners on the local log.
    pub fn source(feed: &FeedLog) -> Result<LogConsumer, switchboard_storage::FeedError> {
        feed.consumer(ROUTING_GROUP, &[Topic::Interactions, Topic::Owners])
    }
}

/// When the work arrived, in ms (for `waited_ms`).
fn origin_time(origin: &Interaction, now: Millis) -> Millis {
    Millis::try_from(origin.occurred_at.unix_timestamp_nanos() / 1_000_000).unwrap_or(now)
}
