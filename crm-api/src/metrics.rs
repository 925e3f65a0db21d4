//! CRM metrics, on the process-wide registry.

use std::sync::LazyLock;

use prometheus::{IntCounterVec, Opts};

/// Feed records applied by the CRM consumer, by outcome: `new`,
/// `duplicate` (already applied; dropped by the id dedupe), `rejected`
/// (kept in `feed_rejects`).
pub static APPLIED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    #[allow(clippy::expect_used)]
    prometheus::register_int_counter_vec!(
        Opts::new(
            "switchboard_crm_feed_records_total",
            "Feed records processed by the CRM consumer, by outcome (new, duplicate, rejected)."
        ),
        &["outcome"]
    )
    .expect("metric registers once")
});

/// Failures of the consumer loop, by stage (`poll`, `apply`, `commit`).
pub static CONSUMER_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    #[allow(clippy::expect_used)]
    prometheus::register_int_counter_vec!(
        Opts::new(
            "switchboard_crm_consumer_errors_total",
            "Failures of the CRM feed consumer, by stage (poll, apply, commit); each is retried."
        ),
        &["stage"]
    )
    .expect("metric registers once")
});
