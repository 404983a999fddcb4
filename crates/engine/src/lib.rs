//! The embedded factstore storage engine.
//!
//! # Layout
//! - [`io`]: the one narrow trait all disk I/O goes through ([`io::FileSystem`], [`io::File`]).
//! - [`log`]: the segment log: its byte format ([`log::format`]), the group-commit
//!   [`log::writer`], [`log::reader`] and [`log::recovery`].
//! - [`index`]: the memtable of the log's tail, immutable run files, the manifest checkpoint.
//! - [`indexer`]: the thread that flushes memtables to runs and merges runs.
//! - [`snapshots`]: the snapshot log, beside the event log and outside the writer thread.
//! - [`journal`]: checksummed append-only files for state beside the event log.
//! - [`engine`]: [`Engine`], opening, reading; [`store`]: the `EventStore` implementation.
//! - [`archive`]: sealed segments moved to cold storage (zstd, verified before the local copy
//!   is freed), read back through a local cache.
//! - [`verify`]: the offline checker behind `factstore verify`.
//! - [`backup`]: a consistent copy of a running store, and restoring one.
//!
//! # Architecture invariants
//! - An event is visible to readers only after the frame holding it is synced.
//! - Positions and versions are assigned by the single writer thread, so they are dense and in
//!   commit order by construction.
//! - Nothing outside [`io`] touches the disk.

pub mod archive;
pub mod backup;
pub mod engine;
pub mod error;
pub mod index;
pub mod indexer;
pub mod io;
pub mod journal;
pub mod log;
pub mod snapshots;
pub mod store;
pub mod verify;

pub use engine::{Engine, EngineOptions};
pub use error::{EngineError, Result};
