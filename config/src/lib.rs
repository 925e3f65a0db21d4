//! Switchboard's typed configuration.
//!
//! One TOML file (optional: every key has an embedded, single-machine default),
//! overridden key by key from `SWITCHBOARD_<SECTION>__<KEY>` environment
//! variables, and validated before anything binds a port. Every error names
//! the key, the value it got and what would be valid.

mod channels;
mod email;
mod env;
mod error;
mod media;
mod model;
mod routing;
mod sip;
mod validate;

use std::path::Path;

pub use channels::*;
pub use email::*;
pub use error::ConfigError;
pub use media::*;
pub use model::*;
pub use routing::*;
pub use sip::*;

/// Environment variables that start with this prefix and contain `__` are
/// configuration overrides.
pub const ENV_PREFIX: &str = "SWITCHBOARD_";

impl Config {
    /// Loads the configuration the way the binary does: the file (if any),
    /// then the process environment, then validation.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// Like [`Config::load`] with an explicit environment, for tests.
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let (table, source) = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?;
                let table: toml::Table =
                    toml::from_str(&text).map_err(|e| ConfigError::Syntax {
                        path: path.to_path_buf(),
                        reason: e.to_string(),
                    })?;
                (table, path.display().to_string())
            }
            None => (toml::Table::new(), "defaults".to_owned()),
        };
        Self::from_table(table, &source, env)
    }

    /// Parses a TOML document (used by tests and `check-config`).
    pub fn from_toml_str(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: "<string>".into(),
            reason: e.to_string(),
        })?;
        Self::from_table(table, "<string>", env)
    }

    fn from_table(
        mut table: toml::Table,
        source: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let origins = env::apply_overrides(&mut table, env)?;
        let value = toml::Value::Table(table.clone());
        let mut config: Config = serde_path_to_error::deserialize(value).map_err(|e| {
            let key = e.path().to_string();
            let origin = origins
                .get(&key)
                .cloned()
                .unwrap_or_else(|| source.to_owned());
            ConfigError::Invalid {
                value: env::lookup(&table, &key).map(|v| v.to_string()),
                key,
                expected: e.into_inner().message().to_owned(),
                origin,
            }
        })?;
        validate::validate(&mut config).map_err(|err| match err {
            ConfigError::Invalid {
                key,
                value,
                expected,
                ..
            } => {
                let origin = origins
                    .get(&key)
                    .cloned()
                    .unwrap_or_else(|| source.to_owned());
                ConfigError::Invalid {
                    key,
                    value,
                    expected,
                    origin,
                }
            }
            other => other,
        })?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests;
