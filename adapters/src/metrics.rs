//! Adapter metrics, on the process-wide registry. Labels are bounded: the
//! mailbox label takes configured names only.

use std::sync::LazyLock;

use prometheus::{IntCounterVec, IntGaugeVec, Opts};

macro_rules! metric {
    ($name:ident, $kind:ident, $register:ident, $metric:literal, $help:literal, $labels:expr) => {
        static $name: LazyLock<$kind> = LazyLock::new(|| {
            #[allow(clippy::expect_used)]
            prometheus::$register!(Opts::new($metric, $help), $labels)
                .expect("metric registers once")
        });
    };
}

metric!(
    LETTERS,
    IntCounterVec,
    register_int_counter_vec,
    "switchboard_email_letters_total",
    "Letters read from mailboxes, by mailbox and outcome (received, lead, auto, problem, duplicate).",
    &["mailbox", "outcome"]
);
metric!(
    CONNECTS,
    IntCounterVec,
    register_int_counter_vec,
    "switchboard_email_connections_total",
    "Connections to incoming mail servers, by mailbox and outcome (ok, failed).",
    &["mailbox", "outcome"]
);
metric!(
    SENT,
    IntCounterVec,
    register_int_counter_vec,
    "switchboard_email_sent_total",
    "Letters sent for the CRM, by mailbox and outcome (sent, failed, rejected, not_saved).",
    &["mailbox", "outcome"]
);
metric!(
    UP,
    IntGaugeVec,
    register_int_gauge_vec,
    "switchboard_email_mailbox_up",
    "1 while the mailbox's incoming server is connected (IMAP) or its last poll worked (POP3).",
    &["mailbox"]
);
metric!(
    MESSAGES_METRIC,
    IntCounterVec,
    register_int_counter_vec,
    "switchboard_messenger_messages_total",
    "Messenger and lead-service events, by channel and outcome (received, lead, ignored, rejected, retried, sent, send_failed).",
    &["channel", "outcome"]
);

/// Messenger and lead-service outcomes, by channel (`telegram`) and outcome.
pub static MESSAGES: &LazyLock<IntCounterVec> = &MESSAGES_METRIC;

/// One mailbox's metrics.
#[derive(Debug, Clone, Copy)]
pub struct Email<'a> {
    mailbox: &'a str,
}

impl<'a> Email<'a> {
    pub fn of(mailbox: &'a str) -> Self {
        Self { mailbox }
    }

    pub fn letters(self, outcome: &str) {
        LETTERS.with_label_values(&[self.mailbox, outcome]).inc();
    }

    pub fn connected(self, outcome: &str) {
        CONNECTS.with_label_values(&[self.mailbox, outcome]).inc();
    }

    pub fn sent(self, outcome: &str) {
        SENT.with_label_values(&[self.mailbox, outcome]).inc();
    }

    pub fn up(self, up: bool) {
        UP.with_label_values(&[self.mailbox]).set(i64::from(up));
    }
}
