//! The errors every store reports, whatever its backend.
//!
//! These are business outcomes and user errors, plus two kinds of failure (`Unavailable`,
//! `Internal`). A backend keeps its own richer error enum and maps it into this one at its
//! boundary; the server maps this one to HTTP in exactly one place.

use uuid::Uuid;

use crate::append::ExpectedVersion;

/// What went wrong with a store operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The request is malformed: a bad field, a bad parameter. The message names it.
    #[error("{0}")]
    InvalidRequest(String),
    /// A size limit was exceeded. The message names the limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error(
        "aggregate '{aggregate_id}' is at version {current_version}, but the append expected {expected_version}"
    )]
    WrongExpectedVersion {
        aggregate_id: String,
        expected_version: ExpectedVersion,
        current_version: u64,
    },
    #[error(
        "the condition failed: event at position {conflicting_position} matches the filter and comes after position {after_position}"
    )]
    ConditionFailed {
        after_position: u64,
        conflicting_position: u64,
    },
    #[error("event id {event_id} is already stored: {reason}")]
    DuplicateEventId { event_id: Uuid, reason: String },
    #[error(
        "aggregate '{aggregate_id}' has type '{existing}'; an event of type '{given}' cannot be appended to it"
    )]
    AggregateTypeMismatch {
        aggregate_id: String,
        existing: String,
        given: String,
    },
    #[error("aggregate '{aggregate_id}' has no events")]
    AggregateNotFound { aggregate_id: String },
    #[error("no event has id {event_id}")]
    EventNotFound { event_id: Uuid },
    /// A snapshot names a version its aggregate does not have (yet).
    #[error(
        "aggregate '{aggregate_id}' has no version {version} to snapshot: it is at version {current_version}"
    )]
    InvalidSnapshot {
        aggregate_id: String,
        version: u64,
        current_version: u64,
    },
    /// No snapshot of the aggregate at or below `max_version` (any version when `None`).
    #[error("aggregate '{aggregate_id}' has no snapshot{}", max_version.map(|v| format!(" at or below version {v}")).unwrap_or_default())]
    SnapshotNotFound {
        aggregate_id: String,
        max_version: Option<u64>,
    },
    /// Events of a commit do not match the JSON Schemas registered for their type and
    /// version. Lists every failing field of every such event; nothing was written.
    #[error("{}", describe_violations(violations))]
    SchemaViolation { violations: Vec<SchemaViolation> },
    /// Archiving was asked of a store that has no cold storage configured (`--archive-url`).
    #[error("archiving is not configured: start the server with --archive-url")]
    ArchiveNotConfigured,
    /// The store cannot write safely (a failed fsync or write, a full disk). Reads go on.
    #[error("the store cannot accept writes: {0}")]
    Unavailable(String),
    /// A fault in the store itself (corrupt data, a bug). Not the client's doing.
    #[error("internal error: {0}")]
    Internal(String),
}

/// One field of one event that does not match its schema.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SchemaViolation {
    /// The event's index in the request, counting every event of the commit in order from 0.
    pub event_index: usize,
    pub aggregate_id: String,
    pub event_type: String,
    pub event_version: u32,
    /// A JSON Pointer into `event_data` ("" for the whole of it).
    pub path: String,
    /// What is wrong there.
    pub message: String,
}

fn describe_violations(violations: &[SchemaViolation]) -> String {
    let mut text = String::from("events do not match their schemas: ");
    for (i, v) in violations.iter().enumerate() {
        if i > 0 {
            text.push_str("; ");
        }
        let path = if v.path.is_empty() { "/" } else { &v.path };
        text.push_str(&format!(
            "event {} ({} v{}) at {path}: {}",
            v.event_index, v.event_type, v.event_version, v.message
        ));
    }
    text
}

impl StoreError {
    pub fn invalid(message: impl Into<String>) -> StoreError {
        StoreError::InvalidRequest(message.into())
    }

    pub fn too_large(message: impl Into<String>) -> StoreError {
        StoreError::PayloadTooLarge(message.into())
    }
}
