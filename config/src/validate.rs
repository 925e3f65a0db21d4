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
