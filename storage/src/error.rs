/// A feed operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FeedError {
    /// The embedded log's database failed (disk full, corruption, locked for
    /// longer than the busy timeout). Retrying may succeed once the cause is gone.
    #[error("feed log {op} failed: {source}")]
    Sqlite {
        op: &'static str,
        /// Shared: one failed group commit fails every append in the group.
        #[source]
        source: std::sync::Arc<rusqlite::Error>,
    },
    /// The log's file or directory could not be created.
    #[error("feed log at {path} cannot be opened: {source}")]
    Open {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The log's writer has stopped (the process is shutting down).
    #[error("feed log writer has stopped")]
    Closed,
    /// An envelope could not be serialized (a bug in the producer).
    #[error("envelope cannot be serialized: {0}")]
    Encode(#[from] serde_json::Error),
    /// A remote backend (Kafka) failed; `retryable` says whether trying again
    /// later can succeed.
    #[error("feed backend {backend} failed: {source}")]
    Backend {
        backend: &'static str,
        retryable: bool,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl FeedError {
    pub(crate) fn sqlite(op: &'static str) -> impl FnOnce(rusqlite::Error) -> Self {
        move |source| Self::Sqlite {
            op,
            source: std::sync::Arc::new(source),
        }
    }

    /// Whether trying the same operation again later can succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            FeedError::Sqlite { .. } => true,
            FeedError::Backend { retryable, .. } => *retryable,
            FeedError::Open { .. } | FeedError::Closed | FeedError::Encode(_) => false,
        }
    }
}
