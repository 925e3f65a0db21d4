//! Feed metrics, registered on the process-wide Prometheus registry.

use std::sync::LazyLock;

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, register_histogram,
    register_int_counter, register_int_counter_vec,
};

fn counter(name: &str, help: &str) -> IntCounter {
    #[allow(clippy::expect_used)]
    register_int_counter!(Opts::new(name, help)).expect("metric registers once")
}

/// Records appended to the embedded log, by topic.
pub static APPENDED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    #[allow(clippy::expect_used)]
    register_int_counter_vec!(
        Opts::new(
            "switchboard_feed_appended_records_total",
            "Records appended to the embedded feed log, by topic."
        ),
        &["topic"]
    )
    .expect("metric registers once")
});

/// Append transactions that failed.
pub static APPEND_ERRORS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "switchboard_feed_append_errors_total",
        "Append transactions on the embedded feed log that failed.",
    )
});

/// Time to commit one group of appends (one disk sync with `synchronous = full`).
pub static COMMIT_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    #[allow(clippy::expect_used)]
    register_histogram!(
        HistogramOpts::new(
            "switchboard_feed_commit_duration_seconds",
            "Time to write and commit one group of appends to the embedded feed log."
        )
        .buckets(vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0
        ])
    )
    .expect("metric registers once")
});

/// Records handed to consumers of the embedded log, by consumer group.
pub static CONSUMED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    #[allow(clippy::expect_used)]
    register_int_counter_vec!(
        Opts::new(
            "switchboard_feed_consumed_records_total",
            "Records read from the embedded feed log, by consumer group."
        ),
        &["group"]
    )
    .expect("metric registers once")
});
