//! The factstore schema registry: JSON Schemas (draft 2020-12) per event type and version,
//! the evolution rules between versions, validation of commits, and upcasting of events on
//! their way out.
//!
//! # Layout
//! - [`registry`]: [`SchemaRegistry`]: the catalog, its changes, `validate` and `upcast_all`.
//! - [`compat`]: the evolution rules (only optional properties may be added).
//! - [`upcast`]: the declarative upcaster operations (`default`, `set`, `rename`, `unset`).
//! - [`storage`]: where changes are kept ([`JournalStorage`] for the embedded server).
//! - [`store`]: [`SchemaStore`], an `EventStore` in front of any other that validates every
//!   commit and upcasts every event read, so that every read path (reads, queries,
//!   subscriptions, projections, persistent subscriptions) sees the same upcast events.
//!
//! # Boundary
//! Stored bytes never change: the store behind [`SchemaStore`] keeps events as they were
//! written, and `raw=true` reads go to it directly.

pub mod compat;
pub mod error;
#[cfg(feature = "openapi")]
pub mod openapi;
pub mod registry;
pub mod storage;
pub mod store;
pub mod upcast;

pub use error::SchemaError;
pub use registry::{EventTypeSchemas, EventTypeSummary, SchemaRegistry, UpcasterView};
pub use storage::{JournalStorage, MemoryStorage, SchemaStorage};
pub use store::SchemaStore;
pub use upcast::{UpcastOp, UpcasterDef};
