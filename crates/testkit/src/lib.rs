//! Test support for factstore.
//!
//! # Layout
//! - [`model`]: `ModelStore`, a trivially correct in-memory `EventStore` (a `Vec` and a few
//!   maps) that tests compare real backends against.
//! - [`faultfs`]: `FaultFs`, an in-memory `FileSystem` that keeps a live and a durable image of
//!   every file and folder, fails the Nth write or sync, tears writes, and simulates a crash by
//!   dropping every byte that was not synced.
//! - [`conformance`]: the suite of behaviours every `EventStore` must show.
//! - [`wait`]: waits with a deadline that fail naming what they waited for: a condition that
//!   must come true, a future that must finish, a future that must be waiting.

pub mod conformance;
pub mod faultfs;
pub mod model;
pub mod wait;
