//! [`ProjectionError`]: what the projection operations report. The server maps it to HTTP in
//! its one error table (`ApiError`); this crate knows nothing of statuses.

use factstore_core::StoreError;

/// What went wrong with a projection operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectionError {
    /// The request itself is malformed (a bad projection name, a bad parameter): 400.
    #[error("{0}")]
    InvalidRequest(String),
    /// The definition is well-formed JSON of the right shape but cannot work; the message
    /// names the field (`on.MoneyDeposited[0].from: ...`).
    #[error("invalid projection: {0}")]
    Invalid(String),
    #[error("no projection is named '{name}'")]
    NotFound { name: String },
    #[error("projection '{name}' has no state under key '{key}'")]
    KeyNotFound { name: String, key: String },
    /// A read-your-writes read waited `waited_ms` and the projection had not yet passed
    /// `min_position`.
    #[error(
        "projection '{name}' is at position {position} and has not yet materialized position {min_position}{}",
        reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
    )]
    NotYetMaterialized {
        name: String,
        position: u64,
        min_position: u64,
        /// Why waiting longer will not help (a failed projection), when that is the case.
        reason: Option<String>,
    },
    /// What the event store reports while the projection reads from it.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The projection storage cannot write safely (a failed write or fsync): nothing more is
    /// written until a restart.
    #[error("the projection storage cannot accept writes: {0}")]
    Unavailable(String),
    /// A fault of the projection storage or a bug (corrupt files).
    #[error("projection storage error: {0}")]
    Internal(String),
    /// The registry is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
}

impl ProjectionError {
    pub fn invalid(message: impl Into<String>) -> ProjectionError {
        ProjectionError::Invalid(message.into())
    }
}

impl From<factstore_engine::EngineError> for ProjectionError {
    fn from(error: factstore_engine::EngineError) -> ProjectionError {
        match StoreError::from(error) {
            StoreError::Unavailable(message) => ProjectionError::Unavailable(message),
            other => ProjectionError::Internal(other.to_string()),
        }
    }
}
