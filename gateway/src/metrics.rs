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
