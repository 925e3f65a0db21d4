//! Checks that serde cannot express: ranges, formats, cross-key rules.

use std::str::FromStr;
use std::time::Duration;

use crate::{Config, ConfigError};

/// Largest body the gateway may be configured to accept (16 MiB).
const MAX_BODY_LIMIT: usize = 16 * 1024 * 1024;

pub(crate) fn validate(config: &mut Config) -> Result<(), ConfigError> {
    tracing_subscriber::EnvFilter::try_new(&config.log.level).map_err(|e| {
        ConfigError::invalid(
            "log.level",
            &config.log.level,
            format!(
                "a tracing filter such as \"info\" or \"switchboard_gateway=debug,info\" ({e})"
            ),
        )
    })?;

    let ns = &config.feed.namespace;
    if ns.is_empty()
        || ns.len() > 100
        || !ns
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(ConfigError::invalid(
            "feed.namespace",
            ns,
            "1 to 100 characters of A-Z, a-z, 0-9, '.', '_' and '-'",
        ));
    }
    if config.feed.sqlite.poll_interval < Duration::from_millis(1)
        || config.feed.sqlite.poll_interval > Duration::from_secs(10)
    {
        return Err(ConfigError::invalid(
            "feed.sqlite.poll_interval",
            humantime::format_duration(config.feed.sqlite.poll_interval).to_string(),
            "a duration between 1ms and 10s",
        ));
    }
    let kafka = &config.feed.kafka;
    if kafka.brokers.is_empty() {
        return Err(ConfigError::invalid(
            "feed.kafka.brokers",
            "[]",
            "at least one broker as \"host:port\"",
        ));
    }
    for broker in &kafka.brokers {
        let ok = broker.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !ok {
            return Err(ConfigError::invalid(
                "feed.kafka.brokers",
                broker,
                "\"host:port\" with a port between 1 and 65535",
            ));
        }
    }
    if !(1..=10_000).contains(&kafka.partitions) {
        return Err(ConfigError::invalid(
            "feed.kafka.partitions",
            kafka.partitions,
            "an integer between 1 and 10000",
        ));
    }
    if !(1..=32).contains(&kafka.replication_factor) {
        return Err(ConfigError::invalid(
            "feed.kafka.replication_factor",
            kafka.replication_factor,
            "an integer between 1 and 32",
        ));
    }
    if kafka.crm_group.is_empty() {
        return Err(ConfigError::invalid(
            "feed.kafka.crm_group",
            &kafka.crm_group,
            "a non-empty consumer group name",
        ));
    }
    for key in kafka.properties.keys() {
        if RESERVED_KAFKA_PROPERTIES.contains(&key.as_str()) {
            return Err(ConfigError::invalid(
                &format!("feed.kafka.properties.\"{key}\""),
                key,
                format!(
                    "a librdkafka property other than {} (Switchboard sets these to keep delivery exactly-once in effect)",
                    RESERVED_KAFKA_PROPERTIES.join(", ")
                ),
            ));
        }
    }

    let country = &config.gateway.default_country;
    if phonenumber::country::Id::from_str(&country.to_ascii_uppercase()).is_err() {
        return Err(ConfigError::invalid(
            "gateway.default_country",
            country,
            "an ISO 3166-1 alpha-2 region code such as \"RU\", \"KZ\" or \"DE\"",
        ));
    }
    config.gateway.default_country = country.to_ascii_uppercase();
    if !(1024..=MAX_BODY_LIMIT).contains(&config.gateway.max_body_bytes) {
        return Err(ConfigError::invalid(
            "gateway.max_body_bytes",
            config.gateway.max_body_bytes,
            format!("an integer between 1024 and {MAX_BODY_LIMIT}"),
        ));
    }
    for origin in &config.gateway.cors_allowed_origins {
        let ok = origin == "*"
            || ((origin.starts_with("http://") || origin.starts_with("https://"))
                && !origin.ends_with('/')
                && origin.is_ascii());
        if !ok {
            return Err(ConfigError::invalid(
                "gateway.cors_allowed_origins",
                origin,
                "\"*\" or an origin such as \"https://example.com\" (scheme and host, no path)",
            ));
        }
    }

    if let Some(path) = &config.crm.database_url_file {
        if !config.crm.database_url.is_empty() {
            return Err(ConfigError::invalid(
                "crm.database_url_file",
                path.display().to_string(),
                "either crm.database_url or crm.database_url_file, not both",
            ));
        }
        let url = std::fs::read_to_string(path).map_err(|e| ConfigError::SecretFile {
            key: "crm.database_url_file".into(),
            path: path.clone(),
            reason: e.to_string(),
        })?;
        config.crm.database_url = url.trim().to_owned();
    }
    let url = &config.crm.database_url;
    if !url.is_empty()
        && !["sqlite:", "postgres://", "postgresql://"]
            .iter()
            .any(|scheme| url.starts_with(scheme))
    {
        return Err(ConfigError::invalid(
            "crm.database_url",
            crate::redact_url(url),
            "empty (embedded SQLite), \"sqlite://PATH\" or \"postgres://USER@HOST:PORT/DB\"",
        ));
    }
    if !(1..=1000).contains(&config.crm.max_connections) {
        return Err(ConfigError::invalid(
            "crm.max_connections",
            config.crm.max_connections,
            "an integer between 1 and 1000",
        ));
    }
    if config.crm.http_listen == config.gateway.http_listen && config.crm.http_listen.port() != 0 {
        return Err(ConfigError::invalid(
            "crm.http_listen",
            config.crm.http_listen.to_string(),
            "an address different from gateway.http_listen",
        ));
    }

    validate_routing(&config.routing)?;
    crate::sip::validate_sip(&config.sip)?;
    crate::media::validate_media(&config.media)?;
    let managers: Vec<&str> = config
        .routing
        .managers
        .iter()
        .map(|m| m.id.as_str())
        .collect();
    crate::email::validate_email(&config.email, &managers)?;
    crate::channels::validate_channels(&config.channels, &managers)?;
    for (i, u) in config.sip.users.iter().enumerate() {
        // Without routing, manager ids are labels for events.
        if !u.manager.is_empty()
            && !config.routing.managers.is_empty()
            && !config.routing.managers.iter().any(|m| m.id == u.manager)
        {
            return Err(ConfigError::invalid(
                &format!("sip.users[{i}].manager"),
                &u.manager,
                "the id of one of routing.managers",
            ));
        }
    }

    let grace = config.shutdown.grace_period;
    if grace < Duration::from_secs(1) || grace > Duration::from_secs(600) {
        return Err(ConfigError::invalid(
            "shutdown.grace_period",
            humantime::format_duration(grace).to_string(),
            "a duration between 1s and 10m",
        ));
    }
    Ok(())
}

/// librdkafka properties Switchboard owns.
pub(crate) const RESERVED_KAFKA_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "group.id",
    "message.timeout.ms",
];

/// Channel names the feed knows (see `storage/schema/interaction.v1.json`).
pub(crate) const CHANNELS: &[&str] = &[
    "sip", "webrtc", "email", "telegram", "vk", "viber", "widget", "chat", "jivosite", "roistat",
    "comagic", "uis",
];

fn check_timezone(key: &str, tz: &str) -> Result<(), ConfigError> {
    jiff::tz::TimeZone::get(tz).map(|_| ()).map_err(|_| {
        ConfigError::invalid(
            key,
            tz,
            "an IANA time zone such as \"Europe/Moscow\" or \"UTC\"",
        )
    })
}

fn check_hours(key: &str, hours: &[String]) -> Result<(), ConfigError> {
    crate::WeeklyHours::parse(hours).map(|_| ()).map_err(|why| {
        ConfigError::invalid(
            key,
            hours.join(", "),
            format!("ranges such as \"mon-fri 09:00-18:00\" ({why})"),
        )
    })
}

fn check_holidays(key: &str, days: &[String]) -> Result<(), ConfigError> {
    for (i, d) in days.iter().enumerate() {
        if d.parse::<jiff::civil::Date>().is_err() || d.len() != 10 {
            return Err(ConfigError::invalid(
                &format!("{key}[{i}]"),
                d,
                "a date as YYYY-MM-DD",
            ));
        }
    }
    Ok(())
}

pub(crate) fn validate_routing(r: &crate::RoutingConfig) -> Result<(), ConfigError> {
    use std::collections::{BTreeMap, BTreeSet};

    if r.state == crate::RoutingStateBackend::Redis
        && !(r.redis_url.starts_with("redis://") || r.redis_url.starts_with("rediss://"))
    {
        return Err(ConfigError::invalid(
            "routing.redis_url",
            crate::redact_url(&r.redis_url),
            "redis://HOST:PORT or rediss://HOST:PORT",
        ));
    }
    let mut managers = BTreeSet::new();
    for (i, m) in r.managers.iter().enumerate() {
        let key = format!("routing.managers[{i}]");
        let id_ok = !m.id.is_empty()
            && m.id.len() <= 64
            && m.id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'));
        if !id_ok {
            return Err(ConfigError::invalid(
                &format!("{key}.id"),
                &m.id,
                "1 to 64 characters of A-Z, a-z, 0-9, '.', '_', '-', '@'",
            ));
        }
        if !managers.insert(m.id.as_str()) {
            return Err(ConfigError::invalid(
                &format!("{key}.id"),
                &m.id,
                "an id no other manager has",
            ));
        }
        if m.weight == 0 || m.weight > 1000 {
            return Err(ConfigError::invalid(
                &format!("{key}.weight"),
                m.weight,
                "an integer between 1 and 1000",
            ));
        }
        check_timezone(&format!("{key}.timezone"), &m.timezone)?;
        check_hours(&format!("{key}.hours"), &m.hours)?;
        check_holidays(&format!("{key}.holidays"), &m.holidays)?;
    }
    let mut queues = BTreeMap::new();
    for (i, q) in r.queues.iter().enumerate() {
        if q.name.is_empty() || queues.insert(q.name.as_str(), i).is_some() {
            return Err(ConfigError::invalid(
                &format!("routing.queues[{i}].name"),
                &q.name,
                "a non-empty name no other queue has",
            ));
        }
    }
    let queue_exists = |key: &str, name: &str| -> Result<(), ConfigError> {
        if queues.contains_key(name) {
            Ok(())
        } else {
            Err(ConfigError::invalid(
                key,
                name,
                format!(
                    "the name of a queue in [[routing.queues]] ({})",
                    queues.keys().copied().collect::<Vec<_>>().join(", ")
                ),
            ))
        }
    };
    let manager_exists = |key: &str, id: &str| -> Result<(), ConfigError> {
        if managers.contains(id) {
            Ok(())
        } else {
            Err(ConfigError::invalid(
                key,
                id,
                "the id of a manager in [[routing.managers]]",
            ))
        }
    };
    for (i, m) in r.managers.iter().enumerate() {
        for (j, q) in m.queues.iter().enumerate() {
            queue_exists(&format!("routing.managers[{i}].queues[{j}]"), q)?;
        }
    }
    for (i, q) in r.queues.iter().enumerate() {
        let key = format!("routing.queues[{i}]");
        for (j, m) in q.members.iter().enumerate() {
            manager_exists(&format!("{key}.members[{j}]"), m)?;
        }
        if let Some(s) = &q.supervisor {
            manager_exists(&format!("{key}.supervisor"), s)?;
        }
        if let Some(o) = &q.overflow {
            queue_exists(&format!("{key}.overflow.queue"), &o.queue)?;
        }
        if let crate::OutOfHours::Queue { queue } = &q.out_of_hours {
            queue_exists(&format!("{key}.out_of_hours.queue"), queue)?;
        }
        if q.sla.on_breach == crate::OnBreach::Escalate && q.supervisor.is_none() {
            return Err(ConfigError::invalid(
                &format!("{key}.sla.on_breach"),
                "escalate",
                "\"reassign\", or set a supervisor for the queue",
            ));
        }
        check_timezone(&format!("{key}.timezone"), &q.timezone)?;
        check_hours(&format!("{key}.hours"), &q.hours)?;
        check_holidays(&format!("{key}.holidays"), &q.holidays)?;
    }
    // Overflow and out-of-hours hand-offs must not go round in a circle.
    for (start, &i) in &queues {
        let mut seen = BTreeSet::from([*start]);
        let mut at = i;
        while let Some(next) = r.queues[at].overflow.as_ref().map(|o| o.queue.as_str()) {
            if !seen.insert(next) {
                return Err(ConfigError::invalid(
                    &format!("routing.queues[{i}].overflow.queue"),
                    next,
                    "a queue whose overflow chain does not lead back here",
                ));
            }
            at = queues[next];
        }
    }
    if !r.default_queue.is_empty() {
        queue_exists("routing.default_queue", &r.default_queue)?;
    }
    if !r.managers.is_empty() && r.queues.is_empty() {
        return Err(ConfigError::invalid(
            "routing.queues",
            "[]",
            "at least one [[routing.queues]] when managers are configured",
        ));
    }
    for (i, rule) in r.rules.iter().enumerate() {
        queue_exists(&format!("routing.rules[{i}].queue"), &rule.queue)?;
        for (j, c) in rule.channels.iter().enumerate() {
            if !CHANNELS.contains(&c.as_str()) {
                return Err(ConfigError::invalid(
                    &format!("routing.rules[{i}].channels[{j}]"),
                    c,
                    format!("one of {}", CHANNELS.join(", ")),
                ));
            }
        }
    }
    Ok(())
}
