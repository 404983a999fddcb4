//! The registry's errors. The server maps them to HTTP (`factstore-server`'s `ApiError`).

/// What went wrong with a registry operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// A bad event type, version, schema or upcaster. The message names the field.
    #[error("{0}")]
    InvalidRequest(String),
    /// No schema is registered for this event type.
    #[error("no schema is registered for event type '{event_type}'")]
    SchemaNotFound { event_type: String },
    /// The version is registered with another schema; a registered schema never changes.
    #[error("version {version} of event type '{event_type}' is already registered with a different schema")]
    SchemaExists { event_type: String, version: u32 },
    /// Version `version` > 1 arrived before version `version` − 1: a version is checked
    /// against the one before it, so that one must be registered first.
    #[error("version {version} of event type '{event_type}' needs version {} registered first", .version - 1)]
    PreviousVersionMissing { event_type: String, version: u32 },
    /// The schema breaks the evolution rules against the previous version.
    #[error("version {version} of event type '{event_type}' is not backward compatible: {reason}")]
    Incompatible {
        event_type: String,
        version: u32,
        reason: String,
    },
    /// The registry could not persist the change (its journal failed); nothing was changed.
    #[error("the schema registry cannot accept changes: {0}")]
    Unavailable(String),
    /// The storage refused an append because another server appended since this registry
    /// last read it: the registry reads what is new and decides again. Internal to the
    /// registry; it reaches a caller only if the storage keeps refusing.
    #[error("the schema registry changed elsewhere meanwhile; try again")]
    Stale,
}
