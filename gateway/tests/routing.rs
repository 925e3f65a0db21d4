//! Routing in the gateway, in process, with explicit time: what the feed
//! shows after leads arrive, presence changes and deadlines pass; and two
//! dispatchers on one Redis racing for the same managers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use switchboard_config::{
    Capacity, ManagerConfig, OnBreach, Policy, QueueConfig, RoutingConfig, RoutingStateBackend,
    SlaConfig,
};
use switchboard_gateway::dispatch::Dispatcher;
use switchboard_storage::state::Presence;
use switchboard_storage::{
    Channel, Contact, ContactKey, FeedLog, FeedSource, Interaction, Kind, LogOptions, OwnerChange,
    Topic,
};

const T0: i64 = 1_800_000_000_000;

fn manager(id: &str, lead_capacity: u32) -> ManagerConfig {
    ManagerConfig {
        id: id.into(),
        name: id.to_uppercase(),
        capacity: Capacity {
            lead: lead_capacity,
            ..Capacity::default()
        },
        ..ManagerConfig::default()
    }
}

fn config(members: &[&str], supervisor: Option<&str>, on_breach: OnBreach) -> RoutingConfig {
    let mut sla = SlaConfig::default();
    sla.first_response.lead = Some(Duration::from_secs(60));
    sla.on_breach = on_breach;
    let mut managers: Vec<ManagerConfig> = members.iter().map(|m| manager(m, 10)).collect();
    if let Some(s) = supervisor {
        managers.push(manager(s, 10));
    }
    RoutingConfig {
        managers,
        queues: vec![QueueConfig {
            name: "sales".into(),
            policy: Policy::RoundRobin,
            members: members.iter().map(|m| (*m).to_owned()).collect(),
            supervisor: supervisor.map(str::to_owned),
            sla,
            ..QueueConfig::default()
        }],
        ..RoutingConfig::default()
    }
}

fn lead(phone: &str) -> Arc<Interaction> {
    Arc::new(Interaction::new(
        Kind::LeadReceived,
        Channel::Widget,
        Contact {
            key: ContactKey::phone(phone).into_string(),
            phone: Some(phone.into()),
            email: None,
            user_id: None,
            name: None,
        },
        time::OffsetDateTime::now_utc(),
        serde_json::json!({"form": "widget"}),
    ))
}

struct Fixture {
    _dir: tempfile::TempDir,
    feed: FeedLog,
    dispatcher: Dispatcher,
    seen: usize,
}

impl Fixture {
    async fn new(cfg: RoutingConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let feed = FeedLog::open(&dir.path().join("feed.sqlite"), LogOptions::default()).unwrap();
        let dispatcher = Dispatcher::new(&cfg, feed.clone()).await.unwrap();
        Self {
            _dir: dir,
            feed,
            dispatcher,
            seen: 0,
        }
    }

    /// Routing events written since the last call.
    async fn events(&mut self) -> Vec<Interaction> {
        let mut c = self.feed.consumer("test", &[Topic::Interactions]).unwrap();
        let all: Vec<Interaction> = c
            .poll(10_000, Duration::ZERO)
            .await
            .unwrap()
            .iter()
            .map(|r| serde_json::from_slice(&r.value).unwrap())
            .collect();
        let new = all[self.seen..].to_vec();
        self.seen = all.len();
        new
    }
}

#[tokio::test]
async fn a_lead_goes_to_an_online_manager_in_turn() {
    let mut f = Fixture::new(config(&["anna", "boris"], None, OnBreach::Reassign)).await;
    for m in ["anna", "boris"] {
        assert!(
            f.dispatcher
                .set_presence(m, Presence::Online)
                .await
                .unwrap()
        );
    }
    assert!(
        !f.dispatcher
            .set_presence("nobody", Presence::Online)
            .await
            .unwrap()
    );
    let mut got = Vec::new();
    for i in 0..4 {
        f.dispatcher
            .handle(lead(&format!("+7916000000{i}")), T0)
            .await;
        let ev = f.events().await;
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!(ev[0].kind, Kind::RoutingAssigned);
        assert_eq!(ev[0].payload["queue"], "sales");
        assert_eq!(ev[0].payload["workload"], "lead");
        assert!(
            ev[0].payload["deadline"].is_string(),
            "SLA deadline reported"
        );
        got.push(ev[0].manager.clone().unwrap());
    }
    assert_eq!(got, ["anna", "boris", "anna", "boris"], "round robin");
}

#[tokio::test]
async fn with_nobody_online_the_lead_waits_and_goes_out_when_someone_comes() {
    let mut f = Fixture::new(config(&["anna"], None, OnBreach::Reassign)).await;
    f.dispatcher.handle(lead("+79160000001"), T0).await;
    let ev = f.events().await;
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].kind, Kind::RoutingQueued);
    assert_eq!(ev[0].payload["reason"], "none_available");
    assert!(ev[0].manager.is_none());

    f.dispatcher.tick(T0 + 1_000).await;
    assert!(f.events().await.is_empty(), "still nobody");
    f.dispatcher
        .set_presence("anna", Presence::Online)
        .await
        .unwrap();
    // A change of presence makes waiting work due at once, not at its retry.
    f.dispatcher.tick(T0 + 1_001).await;
    let ev = f.events().await;
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].kind, Kind::RoutingAssigned);
    assert_eq!(ev[0].manager.as_deref(), Some("anna"));
}

#[tokio::test]
async fn the_responsible_manager_gets_the_contact_back() {
    let mut f = Fixture::new(config(&["anna", "boris", "vera"], None, OnBreach::Reassign)).await;
    for m in ["anna", "boris", "vera"] {
        f.dispatcher
            .set_presence(m, Presence::Online)
            .await
            .unwrap();
    }
    let phone = "+79160000009";
    f.dispatcher
        .apply_owner(&OwnerChange {
            v: 1,
            contact_key: ContactKey::phone(phone).into_string(),
            manager: Some("vera".into()),
            changed_at: time::OffsetDateTime::now_utc(),
        })
        .await;
    f.dispatcher.handle(lead(phone), T0).await;
    let ev = f.events().await;
    assert_eq!(ev[0].manager.as_deref(), Some("vera"));
    assert_eq!(ev[0].payload["reason"], "responsible_manager");
}

#[tokio::test]
async fn a_missed_deadline_is_escalated_to_the_supervisor() {
    let mut f = Fixture::new(config(&["anna"], Some("sergey"), OnBreach::Escalate)).await;
    f.dispatcher
        .set_presence("anna", Presence::Online)
        .await
        .unwrap();
    f.dispatcher.handle(lead("+79160000002"), T0).await;
    assert_eq!(f.events().await[0].manager.as_deref(), Some("anna"));
    f.dispatcher.tick(T0 + 59_000).await;
    assert!(f.events().await.is_empty(), "escalated before the deadline");
    f.dispatcher.tick(T0 + 60_000).await;
    let ev = f.events().await;
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].kind, Kind::RoutingEscalated);
    assert_eq!(ev[0].manager.as_deref(), Some("sergey"));
    assert_eq!(ev[0].payload["from"], "anna");
    assert_eq!(ev[0].payload["reason"], "sla_first_response_breached");
    f.dispatcher.tick(T0 + 600_000).await;
    assert!(f.events().await.is_empty(), "escalated twice");
}

#[tokio::test]
async fn a_missed_deadline_is_reassigned_to_someone_else_and_an_answer_stops_the_clock() {
    let mut f = Fixture::new(config(&["anna", "boris"], None, OnBreach::Reassign)).await;
    for m in ["anna", "boris"] {
        f.dispatcher
            .set_presence(m, Presence::Online)
            .await
            .unwrap();
    }
    let slow = lead("+79160000003");
    let answered = lead("+79160000004");
    f.dispatcher.handle(Arc::clone(&slow), T0).await;
    f.dispatcher.handle(Arc::clone(&answered), T0).await;
    let first: HashMap<String, String> = f
        .events()
        .await
        .into_iter()
        .map(|e| (e.contact.key.clone(), e.manager.unwrap()))
        .collect();
    // The manager of the second lead answers it.
    let mut reply = Interaction::new(
        Kind::MessageSent,
        Channel::Widget,
        answered.contact.clone(),
        time::OffsetDateTime::now_utc(),
        serde_json::json!({}),
    );
    reply.manager = Some(first[&answered.contact.key].clone());
    f.dispatcher.handle(Arc::new(reply), T0 + 10_000).await;
    f.events().await;

    f.dispatcher.tick(T0 + 61_000).await;
    let ev = f.events().await;
    assert_eq!(ev.len(), 1, "only the unanswered lead moves: {ev:?}");
    assert_eq!(ev[0].kind, Kind::RoutingReassigned);
    assert_eq!(ev[0].contact.key, slow.contact.key);
    let from = first[&slow.contact.key].clone();
    assert_eq!(ev[0].payload["from"], from.as_str());
    assert_ne!(ev[0].manager.as_deref(), Some(from.as_str()));
}

#[tokio::test]
async fn a_call_ring_plan_lists_who_to_ring() {
    let mut cfg = config(&["anna", "boris"], None, OnBreach::Reassign);
    cfg.queues[0].policy = Policy::RingAll;
    let f = Fixture::new(cfg).await;
    for m in ["anna", "boris"] {
        f.dispatcher
            .set_presence(m, Presence::Online)
            .await
            .unwrap();
    }
    let key = switchboard_routing::RouteKey {
        channel: Some(Channel::Sip),
        ..Default::default()
    };
    let (_, nobody) = f
        .dispatcher
        .plan_call("tel:+79160000005", &key, T0, &[], T0)
        .await
        .unwrap();
    assert!(nobody.is_empty(), "no phone registered, nobody to ring");
    f.dispatcher.set_registered("anna", true).await.unwrap();
    f.dispatcher.set_registered("boris", true).await.unwrap();
    let (_, ring) = f
        .dispatcher
        .plan_call("tel:+79160000005", &key, T0, &[], T0)
        .await
        .unwrap();
    assert_eq!(ring, ["anna", "boris"]);
}

fn redis_url() -> String {
    std::env::var("SWITCHBOARD_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Two gateway nodes on one Redis route overlapping contacts at once.
#[tokio::test]
async fn two_nodes_on_redis_never_double_assign_or_exceed_capacity() {
    let members = ["m1", "m2", "m3"];
    let mut cfg = config(&members, None, OnBreach::Reassign);
    for m in &mut cfg.managers {
        m.capacity.lead = 30;
    }
    cfg.state = RoutingStateBackend::Redis;
    cfg.redis_url = redis_url();
    cfg.redis_prefix = format!("sbtest:{}:", uuid::Uuid::new_v4().simple());
    let mut a = Fixture::new(cfg.clone()).await;
    let mut b = Fixture::new(cfg).await;
    for m in members {
        a.dispatcher
            .set_presence(m, Presence::Online)
            .await
            .unwrap();
    }
    let leads: Vec<Arc<Interaction>> = (0..150).map(|i| lead(&format!("+7916{i:07}"))).collect();
    // Node A sees leads 0..100, node B 50..150: 50 contacts reach both.
    let (da, db) = (a.dispatcher.clone(), b.dispatcher.clone());
    let (la, lb) = (leads[..100].to_vec(), leads[50..].to_vec());
    let ta = tokio::spawn(async move {
        for l in la {
            da.handle(l, T0).await;
        }
    });
    let tb = tokio::spawn(async move {
        for l in lb {
            db.handle(l, T0).await;
        }
    });
    ta.await.unwrap();
    tb.await.unwrap();
    let all: Vec<Interaction> = [a.events().await, b.events().await].concat();
    let mut per_contact: HashMap<&str, usize> = HashMap::new();
    let mut per_manager: HashMap<&str, usize> = HashMap::new();
    for e in all.iter().filter(|e| e.kind == Kind::RoutingAssigned) {
        *per_contact.entry(&e.contact.key).or_default() += 1;
        *per_manager
            .entry(e.manager.as_deref().unwrap())
            .or_default() += 1;
    }
    assert!(
        per_contact.values().all(|&n| n == 1),
        "a contact was assigned twice"
    );
    assert_eq!(per_contact.len(), 90, "3 managers x 30 should all be used");
    assert!(per_manager.values().all(|&n| n <= 30), "{per_manager:?}");
    let queued = all.iter().filter(|e| e.kind == Kind::RoutingQueued).count();
    assert!(queued >= 60, "the rest wait: {queued}");
}
