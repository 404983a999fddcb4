//! Persistent subscriptions: consumer groups that receive a store's events with leases,
//! acknowledgements and redelivery, their progress kept durably by the server.
//!
//! # Layout
//! - [`definition`]: what a group is ([`GroupDefinition`]: filter, start, ack timeout, most
//!   deliveries, ordering) and the checks of names and fields.
//! - [`state`]: [`GroupState`], one group's delivery state machine, pure (no I/O, no clock).
//! - [`record`]: the durable [`Image`] of a group and the journal [`Record`]s that change it.
//! - [`storage`]: where the journals live, behind [`Storage`]: files through the engine's
//!   [`Journal`](factstore_engine::journal::Journal), or memory (tests, `app(store)`).
//! - [`registry`]: [`Subscriptions`], every group of a server: the reader task of each group,
//!   long polls, and group commit of acks to the journal.
//! - [`error`]: the [`SubscriptionError`] every operation reports.
//!
//! # Architecture invariants
//! - An ack, a nack and a replay are recorded in the group's journal and synced before they
//!   are answered; a failed write or sync poisons the group (every later change and poll
//!   fails) until the server restarts from what is durable.
//! - The checkpoint only moves over positions that are acked, parked or passed over by the
//!   filter, and the journal records it only after the acks and parks that allow it.
//! - Leases live in memory only: after a restart every unacked event is delivered again.

pub mod definition;
pub mod error;
#[cfg(feature = "openapi")]
pub mod openapi;
pub mod record;
pub mod registry;
pub mod state;
pub mod storage;

pub use definition::{GroupDefinition, Ordering, Start, validate_group_name};
pub use error::SubscriptionError;
pub use record::{Image, Record};
pub use registry::{GroupStatus, Options, ParkedEvent, Subscriptions};
pub use state::{Delivery, GroupState};
pub use storage::{FileStorage, GroupLog, MemoryStorage, Storage};

#[cfg(test)]
mod state_tests;
