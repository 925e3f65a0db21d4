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

macro_rules! counter_vec {
    ($name:ident, $metric:literal, $help:literal, $labels:expr) => {
        pub static $name: LazyLock<IntCounterVec> = LazyLock::new(|| {
            #[allow(clippy::expect_used)]
            prometheus::register_int_counter_vec!(Opts::new($metric, $help), $labels)
                .expect("metric registers once")
        });
    };
}

counter_vec!(
    COMMANDS,
    "switchboard_commands_total",
    "Commands from the CRM, by channel and outcome (done, rejected, retried, not_ours, unreadable).",
    &["channel", "outcome"]
);

counter_vec!(
    WEBHOOKS,
    "switchboard_webhooks_total",
    "Webhook deliveries, by channel and outcome (stored, duplicate, answered, forbidden, malformed, failed).",
    &["channel", "outcome"]
);

counter_vec!(
    SIP_REQUESTS,
    "switchboard_sip_requests_total",
    "SIP requests received, by method.",
    &["method"]
);
counter_vec!(
    SIP_RESPONSES,
    "switchboard_sip_responses_total",
    "SIP responses sent, by request method and status class.",
    &["method", "class"]
);
counter_vec!(
    SIP_DROPPED,
    "switchboard_sip_dropped_total",
    "SIP messages dropped unanswered, by reason (malformed, stray_response, scanner, banned, rate_limited, too_large).",
    &["reason"]
);
counter_vec!(
    SIP_AUTH_FAILURES,
    "switchboard_sip_auth_failures_total",
    "Failed SIP digest authentications, by reason.",
    &["reason"]
);

/// Sources banned for failed authentications (counter of bans).
pub static SIP_BANS: LazyLock<prometheus::IntCounter> = LazyLock::new(|| {
    #[allow(clippy::expect_used)]
    prometheus::register_int_counter!(
        "switchboard_sip_bans_total",
        "Source addresses banned after failed authentications."
    )
    .expect("metric registers once")
});

macro_rules! gauge {
    ($name:ident, $metric:literal, $help:literal) => {
        pub static $name: LazyLock<prometheus::IntGauge> = LazyLock::new(|| {
            #[allow(clippy::expect_used)]
            prometheus::register_int_gauge!($metric, $help).expect("metric registers once")
        });
    };
}

gauge!(
    SIP_BANNED,
    "switchboard_sip_banned_sources",
    "Source addresses banned right now."
);
gauge!(
    SIP_REGISTRATIONS,
    "switchboard_sip_registrations",
    "SIP bindings (registered contacts) in force."
);
gauge!(
    SIP_TCP_CONNECTIONS,
    "switchboard_sip_tcp_connections",
    "Open SIP TCP connections."
);
gauge!(
    SIP_CALLS,
    "switchboard_sip_active_calls",
    "Calls being set up or in progress through the B2BUA."
);
gauge!(
    SIP_TRANSACTIONS,
    "switchboard_sip_transactions",
    "SIP transactions of calls in progress."
);

gauge!(
    MEDIA_SESSIONS,
    "switchboard_media_sessions",
    "Calls whose audio the relay carries right now."
);
counter_vec!(
    MEDIA_PACKETS,
    "switchboard_media_packets_total",
    "RTP and RTCP packets relayed, by kind (rtp, rtcp).",
    &["kind"]
);
counter_vec!(
    MEDIA_BYTES,
    "switchboard_media_bytes_total",
    "Bytes of RTP and RTCP relayed, by kind (rtp, rtcp).",
    &["kind"]
);
counter_vec!(
    MEDIA_DROPPED,
    "switchboard_media_dropped_total",
    "Media packets not relayed, by reason (strict_source: not from the side's learned address; no_peer: the other side is not known yet; malformed: not RTP; send_failed).",
    &["reason"]
);
counter_vec!(
    RECORDING_ERRORS,
    "switchboard_recording_errors_total",
    "Recordings that could not be written, by stage (create, write, finish).",
    &["stage"]
);
pub static RECORDING_SECONDS: LazyLock<prometheus::IntCounter> = LazyLock::new(|| {
    #[allow(clippy::expect_used)]
    prometheus::register_int_counter!(
        "switchboard_recording_seconds_total",
        "Seconds of audio written to finished recordings."
    )
    .expect("metric registers once")
});

gauge!(
    CHAT_SESSIONS,
    "switchboard_chat_open_sessions",
    "Chat widget WebSockets open now (one per visitor's tab)."
);

counter_vec!(
    CHAT_FRAMES,
    "switchboard_chat_messages_total",
    "Chat widget messages, by direction and outcome (taken, refused, unavailable, pushed).",
    &["direction", "outcome"]
);
