//! The configuration tree. `config/examples/switchboard.toml` documents every
//! key; a test keeps the two in step.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The whole configuration. Every section and key has a default.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub node: NodeConfig,
    pub log: LogConfig,
    pub feed: FeedConfig,
    pub gateway: GatewayConfig,
    pub crm: CrmConfig,
    pub routing: crate::routing::RoutingConfig,
    pub sip: crate::sip::SipConfig,
    pub media: crate::media::MediaConfig,
    pub email: crate::email::EmailConfig,
    /// Messengers and lead services (`[[channels]]`, one per line).
    pub channels: Vec<crate::channels::ChannelConfig>,
    pub shutdown: ShutdownConfig,
}

/// Where this node keeps its state.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Data directory: the embedded feed, the embedded CRM store, recordings.
    /// Created on first start.
    pub data_dir: PathBuf,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
        }
    }
}

impl NodeConfig {
    /// The embedded feed's SQLite file (also the outbox when the feed is Kafka).
    pub fn feed_path(&self) -> PathBuf {
        self.data_dir.join("feed.sqlite")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter: `info`, `debug`, `switchboard_gateway=debug,info`.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeedConfig {
    /// `sqlite`: the feed is the embedded log. `kafka`: the embedded log is an
    /// outbox that a relay ships to Kafka; consumers read Kafka.
    pub backend: FeedBackend,
    /// Prefix of Kafka topic and consumer-group names (`<namespace>.interactions`).
    pub namespace: String,
    pub sqlite: SqliteFeedConfig,
    pub kafka: KafkaConfig,
}

impl Default for FeedConfig {
    fn default() -> Self {
        Self {
            backend: FeedBackend::Sqlite,
            namespace: "switchboard".into(),
            sqlite: SqliteFeedConfig::default(),
            kafka: KafkaConfig::default(),
        }
    }
}

impl FeedConfig {
    /// The full Kafka name of a topic or group: `<namespace>.<name>`.
    pub fn qualified(&self, name: &str) -> String {
        format!("{}.{}", self.namespace, name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeedBackend {
    Sqlite,
    Kafka,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqliteFeedConfig {
    /// `full` syncs every commit to disk (survives power loss);
    /// `normal` survives a crash of the process but not of the machine.
    pub synchronous: Synchronous,
    /// How often a reader in another process looks for new records.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
}

impl Default for SqliteFeedConfig {
    fn default() -> Self {
        Self {
            synchronous: Synchronous::Full,
            poll_interval: Duration::from_millis(100),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    Normal,
    Full,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
    /// Partitions of topics Switchboard creates.
    pub partitions: i32,
    /// Replication factor of topics Switchboard creates.
    pub replication_factor: i32,
    /// Consumer group of the CRM API (prefixed by the namespace).
    pub crm_group: String,
    /// Extra librdkafka properties (security, SASL, tuning). The delivery
    /// guarantees (`acks`, idempotence, manual commits) cannot be overridden.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: vec!["127.0.0.1:9092".into()],
            partitions: 3,
            replication_factor: 1,
            crm_group: "crm".into(),
            properties: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Webhooks, the site widget, health and metrics.
    #[serde(with = "socket_addr")]
    pub http_listen: SocketAddr,
    /// ISO 3166 region used for phone numbers written without a country code.
    pub default_country: String,
    /// Largest HTTP request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Origins allowed to post the site's forms from a browser; `*` for any.
    pub cors_allowed_origins: Vec<String>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            http_listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            default_country: "RU".into(),
            max_body_bytes: 64 * 1024,
            cors_allowed_origins: vec!["*".into()],
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CrmConfig {
    /// The REST API.
    #[serde(with = "socket_addr")]
    pub http_listen: SocketAddr,
    /// `sqlite://PATH` or `postgres://USER@HOST/DB`. Empty: SQLite file
    /// `crm.sqlite` in the data directory.
    pub database_url: String,
    /// A file holding the database URL (for URLs with passwords).
    pub database_url_file: Option<PathBuf>,
    /// Connection pool size.
    pub max_connections: u32,
}

impl Default for CrmConfig {
    fn default() -> Self {
        Self {
            http_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: String::new(),
            database_url_file: None,
            max_connections: 8,
        }
    }
}

impl CrmConfig {
    /// The database URL to connect to, resolving the embedded default.
    pub fn resolved_database_url(&self, node: &NodeConfig) -> String {
        if self.database_url.is_empty() {
            format!("sqlite://{}", node.data_dir.join("crm.sqlite").display())
        } else {
            self.database_url.clone()
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// How long SIGTERM may take to drain requests and flush the outbox.
    #[serde(with = "humantime_serde")]
    pub grace_period: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            grace_period: Duration::from_secs(10),
        }
    }
}

/// A database URL safe to log: the password, if any, is replaced.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

pub(crate) mod humantime_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "{e}; expected a duration such as \"500ms\", \"10s\" or \"2m\""
            ))
        })
    }
}

mod socket_addr {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(a: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(a)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(|_| {
            serde::de::Error::custom(
                "expected IP:PORT such as \"127.0.0.1:8080\", \"0.0.0.0:8080\" or \"[::1]:8080\"",
            )
        })
    }
}

pub(crate) mod socket_addrs {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(a: &[SocketAddr], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(a.iter().map(ToString::to_string))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<SocketAddr>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|text| {
                text.parse().map_err(|_| {
                    serde::de::Error::custom(format!(
                        "expected a list of IP:PORT such as [\"0.0.0.0:5060\"], got {text:?}"
                    ))
                })
            })
            .collect()
    }
}
