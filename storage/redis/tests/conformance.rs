//! The Redis state passes the same suite as the in-memory one, against the
//! Redis on 127.0.0.1:6379 (`SWITCHBOARD_TEST_REDIS` to change).

use switchboard_redis::RedisState;
use switchboard_storage::state::conformance;

pub fn redis_url() -> String {
    std::env::var("SWITCHBOARD_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

#[tokio::test]
async fn redis_state_passes_the_conformance_suite() {
    let prefix = format!("sbtest:{}:", uuid::Uuid::new_v4().simple());
    let state = RedisState::connect(&redis_url(), &prefix)
        .await
        .expect("Redis must be running for these tests (scripts/test starts it)");
    conformance::run(&state, "redis").await;
}

/// Two nodes (two connections) claim the same contacts for the same
/// managers at once: no contact is given twice and no manager exceeds its
/// capacity.
#[tokio::test]
async fn racing_claims_never_double_assign_or_exceed_capacity() {
    use std::collections::HashMap;
    use std::time::Duration;

    use switchboard_config::Workload;
    use switchboard_storage::state::{Claim, ClaimOutcome, RoutingState};

    let prefix = format!("sbtest:{}:", uuid::Uuid::new_v4().simple());
    let node_a = RedisState::connect(&redis_url(), &prefix).await.unwrap();
    let node_b = RedisState::connect(&redis_url(), &prefix).await.unwrap();
    let managers = ["m1", "m2", "m3"];
    let capacity = 20;
    let now = 1_800_000_000_000;
    let race = |node: RedisState, seed: usize| {
        tokio::spawn(async move {
            let mut won = Vec::new();
            for i in 0..200usize {
                let contact = format!("c{i}");
                // Each node tries managers in its own order, as two engines with
                // different snapshots would.
                for k in 0..managers.len() {
                    let manager = managers[(i + k + seed) % managers.len()];
                    let claim = Claim {
                        contact: &contact,
                        workload: Workload::Chat,
                        manager,
                        capacity,
                        stride: 1,
                        hold: Duration::from_secs(600),
                        now,
                    };
                    match node.claim(&claim).await.unwrap() {
                        ClaimOutcome::Claimed { .. } => {
                            won.push((contact.clone(), manager));
                            break;
                        }
                        ClaimOutcome::AlreadyAssigned { .. } => break,
                        ClaimOutcome::OverCapacity => continue,
                    }
                }
            }
            won
        })
    };
    let (a, b) = tokio::join!(race(node_a.clone(), 0), race(node_b, 1));
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut per_contact: HashMap<String, usize> = HashMap::new();
    let mut per_manager: HashMap<&str, u32> = HashMap::new();
    for (contact, manager) in a.iter().chain(b.iter()) {
        *per_contact.entry(contact.clone()).or_default() += 1;
        *per_manager.entry(manager).or_default() += 1;
    }
    assert!(
        per_contact.values().all(|&n| n == 1),
        "a contact was given twice"
    );
    assert_eq!(
        per_contact.len(),
        60,
        "3 managers x capacity 20 should all be used"
    );
    for (m, n) in &per_manager {
        assert!(*n <= capacity, "{m} got {n} > {capacity}");
    }
    let statuses = node_a.statuses(&managers, now).await.unwrap();
    assert!(
        statuses
            .iter()
            .all(|s| s.load[Workload::Chat.index()] == capacity)
    );
}
