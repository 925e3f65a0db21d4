//! Gateway metrics, on the process-wide registry.

use std::sync::LazyLock;

use prometheus::{IntCounterVec, Opts};

/// Leads received over HTTP, by channel and outcome (`accepted`,
/// `invalid`, `failed`).
pub static LEADS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    #[allow(clippy::expect_used)]
    prometheus::register_int_counter_vec!(
        Opts::new(
            "switchboard_gateway_leads_total",
            "Leads received over HTTP, by channel and outcome (accepted, invalid, failed)."
        ),
        &["channel", "outcome"]
    )
    .expect("metric registers once")
});

/// Routing decisions, by workload and reason.
pub static DECISIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    #[allow(clippy::expect_used)]
    prometheus::register_int_counter_vec!(
        Opts::new(
            "switchboard_routing_decisions_total",
            "Routing decisions, by workload and reason."
        ),
        &["workload", "reason"]
    )
    .expect("metric registers once")
});

/// Response deadlines missed, by workload and phase.
pub static SLA_BREACHES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    #[allow(clippy::expect_used)]
    prometheus::register_int_counter_vec!(
        Opts::new(
            "switchboard_routing_sla_breaches_total",
            "Response deadlines missed, by workload and phase (first_response, next_response)."
        ),
        &["workload", "phase"]
    )
    .expect("metric registers once")
});
