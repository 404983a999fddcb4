//! [`SubscriptionError`]: what a subscription operation reports. The server maps it to HTTP in
//! its one error table.

use factstore_core::StoreError;

/// What went wrong with a subscription operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubscriptionError {
    /// No group has this name.
    #[error("no subscription group is named '{group}'")]
    NotFound { group: String },
    /// The request is malformed or names positions the group cannot take (never delivered,
    /// already acked for a nack, not parked for a replay). The message names the problem.
    #[error("{0}")]
    Invalid(String),
    /// The group cannot record its state safely: an earlier write or sync of its journal failed
    /// (it refuses every later change until the server restarts), or the store failed.
    #[error("the subscription group cannot record its state: {0}")]
    Unavailable(String),
    /// A fault on the server's side (a corrupt journal, an event missing from the store).
    #[error("internal error: {0}")]
    Internal(String),
}

impl SubscriptionError {
    pub fn invalid(message: impl Into<String>) -> SubscriptionError {
        SubscriptionError::Invalid(message.into())
    }
}

impl From<StoreError> for SubscriptionError {
    fn from(error: StoreError) -> SubscriptionError {
        match error {
            StoreError::InvalidRequest(message) | StoreError::PayloadTooLarge(message) => {
                SubscriptionError::Invalid(message)
            }
            StoreError::Unavailable(message) => SubscriptionError::Unavailable(message),
            other => SubscriptionError::Internal(other.to_string()),
        }
    }
}

impl From<factstore_engine::EngineError> for SubscriptionError {
    fn from(error: factstore_engine::EngineError) -> SubscriptionError {
        use factstore_engine::EngineError;
        match error {
            EngineError::Poisoned(_) | EngineError::Io { .. } | EngineError::Closed => {
                SubscriptionError::Unavailable(error.to_string())
            }
            other => SubscriptionError::Internal(other.to_string()),
        }
    }
}
