use std::path::PathBuf;

/// Why a configuration could not be used. Every variant names what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read config file {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    /// The file is not valid TOML.
    #[error("config file {path} is not valid TOML: {reason}")]
    Syntax { path: PathBuf, reason: String },
    /// A key is unknown or its value is not valid.
    #[error("config key `{key}`{}: {expected} (from {origin})", value.as_ref().map(|v| format!(" = {v}")).unwrap_or_default())]
    Invalid {
        /// Dotted path of the key, e.g. `feed.backend`.
        key: String,
        /// The value as written, when there is one.
        value: Option<String>,
        /// What would be valid.
        expected: String,
        /// The file or environment variable the value came from.
        origin: String,
    },
    /// A secret file named by the configuration could not be read.
    #[error("config key `{key}`: cannot read {path}: {reason}")]
    SecretFile {
        key: String,
        path: PathBuf,
        reason: String,
    },
}

impl ConfigError {
    pub fn invalid(key: &str, value: impl std::fmt::Debug, expected: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.to_owned(),
            value: Some(format!("{value:?}")),
            expected: expected.into(),
            origin: String::new(),
        }
    }

    /// Reads a secret from `path` (one trailing line break dropped);
    /// an unreadable file is a [`ConfigError::SecretFile`] naming `key`.
    pub(crate) fn read_secret_file(key: &str, path: &std::path::Path) -> Result<String, Self> {
        std::fs::read_to_string(path)
            .map(|p| p.trim_end_matches(['\r', '\n']).to_owned())
            .map_err(|e| Self::SecretFile {
                key: key.to_owned(),
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
    }

    /// The dotted key this error is about, when it is about one key.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Invalid { key, .. } | Self::SecretFile { key, .. } => Some(key),
            _ => None,
        }
    }
}
