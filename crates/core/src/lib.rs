//! The factstore event model and the contract every store backend keeps.
//!
//! # Layout
//! - [`event`]: [`Event`], an immutable fact in its compact binary form, and its JSON.
//! - [`append`]: what a client sends ([`Commit`], [`NewEvent`], [`ExpectedVersion`]), its
//!   validation into a [`PreparedCommit`], and the [`CommitOutcome`].
//! - [`query`]: [`EventFilter`] and the read queries and pages.
//! - [`snapshot`]: [`PutSnapshot`] and its validation, [`Snapshot`], [`SnapshotInfo`].
//! - [`store`]: the [`EventStore`] trait.
//! - [`limits`], [`time`], [`error`], [`json`].
//! - `openapi` (with the `openapi` feature): the OpenAPI schemas serde's derive cannot infer.
//!
//! # Architecture invariant
//! No I/O and no HTTP here: this crate is pure data and rules, so every backend and the
//! server agree on them.

pub mod append;
pub mod error;
pub mod event;
pub mod json;
pub mod limits;
#[cfg(feature = "openapi")]
mod openapi;
pub mod query;
pub mod snapshot;
pub mod store;
pub mod time;

pub use append::{
    AggregateAppend, AppendedAggregate, AppendedEvent, Commit, CommitOutcome, Condition, ExpectedVersion,
    NewEvent, PreparedAppend, PreparedCommit, PreparedEvent,
};
pub use error::{SchemaViolation, StoreError};
pub use event::{Event, EventFields};
pub use limits::Limits;
pub use query::{
    AggregatePage, AggregateQuery, Direction, EventFilter, EventPage, EventQuery, Head, POSITION_MAX,
    validate_position,
};
pub use snapshot::{PutSnapshot, Snapshot, SnapshotInfo, SnapshotStored};
pub use store::{ArchiveOutcome, EventStore, StaysHot, StorageStats, StoreHealth};
pub use time::Timestamp;
