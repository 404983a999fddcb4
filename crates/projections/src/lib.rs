//! Declarative projections (read models): JSON states folded from the events, kept up to
//! date by the server, persisted with their checkpoint, rebuilt without downtime.
//!
//! # Layout
//! - [`definition`]: the body of `PUT /v1/projections/{name}` and its validation into a
//!   [`Compiled`] projection.
//! - [`fold`]: an event's key and its operations applied to a state.
//! - [`error`]: [`ProjectionError`].

pub mod definition;
pub mod error;
pub mod fold;

pub use definition::{Compiled, ProjectionDefinition};
pub use error::ProjectionError;
pub mod runtime;
pub mod storage;

pub use runtime::{
    KeyState, ProjectionStatus, Projections, ProjectionsOptions, PutOutcome, Source, StatePage, StateQuery,
    Status,
};
pub use storage::{JournalStorage, MemoryStorage, ProjectionStorage};
