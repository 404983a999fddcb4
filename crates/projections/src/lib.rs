//! Declarative projections (read models): JSON states folded from the events, kept up to
//! date by the server, persisted with their checkpoint, rebuilt without downtime.
//!
//! # Layout
//! - [`definition`]: the body of `PUT /v1/projections/{name}` and its validation into a
//!   [`Compiled`] projection.
//! - [`fold`]: an event's key and its operations applied to a state.
//! - [`error`]: the [`ProjectionError`] of every operation.
//! - [`storage`]: the [`ProjectionStorage`] trait, its records, [`JournalStorage`] and
//!   [`MemoryStorage`].
//! - [`runtime`]: the [`Projections`] registry, the fold task of each generation, rebuilds,
//!   snapshots, read-your-writes and time travel.
//!
//! # Architecture invariants
//! - A projection's states and its checkpoint are written together, as one record per batch:
//!   after any crash the stored states are exactly the fold of the events up to the stored
//!   checkpoint. Readers only see states that are durable.
//! - An event is never skipped: a failing operation stops the projection before it.
//! - All disk I/O goes through the engine's `FileSystem` (via its `Journal`).

pub mod definition;
pub mod error;
pub mod fold;
pub mod runtime;
pub mod storage;

pub use definition::{Compiled, ProjectionDefinition};
pub use error::ProjectionError;

pub use runtime::{
    KeyState, ProjectionStatus, Projections, ProjectionsOptions, PutOutcome, Source, StatePage, StateQuery,
    Status,
};
pub use storage::{JournalStorage, MemoryStorage, ProjectionStorage};
