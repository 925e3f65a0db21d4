//! Relay and Kafka consumer metrics, on the process-wide registry.

use std::sync::LazyLock;

use prometheus::{IntCounter, IntGauge, Opts, register_int_counter, register_int_gauge};

fn counter(name: &str, help: &str) -> IntCounter {
    #[allow(clippy::expect_used)]
    register_int_counter!(Opts::new(name, help)).expect("metric registers once")
}

fn gauge(name: &str, help: &str) -> IntGauge {
    #[allow(clippy::expect_used)]
    register_int_gauge!(Opts::new(name, help)).expect("metric registers once")
}

/// Records Kafka acknowledged.
pub static SHIPPED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "switchboard_relay_shipped_records_total",
        "Outbox records acknowledged by Kafka.",
    )
});

/// Failed deliveries; each one makes the relay resend from the outbox.
pub static DELIVERY_ERRORS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "switchboard_relay_delivery_errors_total",
        "Kafka deliveries that failed and were retried from the outbox.",
    )
});

/// Records sent and not yet acknowledged.
pub static IN_FLIGHT: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "switchboard_relay_in_flight_records",
        "Outbox records sent to Kafka and not yet acknowledged.",
    )
});

/// Records read from Kafka by this process's consumer.
pub static CONSUMED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "switchboard_kafka_consumed_records_total",
        "Records read from Kafka by the consumer group member.",
    )
});
