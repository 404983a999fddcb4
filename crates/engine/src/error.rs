//! The engine's errors, and how they become the store errors clients see.

use std::io;
use std::path::{Path, PathBuf};

use factstore_core::StoreError;

/// What went wrong inside the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// A read, write or sync failed.
    #[error("I/O error on {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    /// Data on disk is not what the engine wrote: a checksum, a length or an order is wrong.
    /// Never silently repaired; names the file and the byte offset.
    #[error("corrupt data in {} at offset {offset}: {reason}", path.display())]
    Corruption {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// An earlier write or sync failed, so the engine no longer knows what is on disk and
    /// refuses every write until it is reopened.
    #[error("the store accepts no more writes since an earlier failure: {0}")]
    Poisoned(String),
    /// A business outcome or a client error, passed through unchanged.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Cold storage did not answer a request (unreachable, refused, timed out): archived
    /// events cannot be read, nor segments archived, until it does. Nothing local is wrong.
    #[error("cold storage {place}: {source}")]
    ColdStorage { place: String, source: io::Error },
    /// The engine was closed.
    #[error("the store is closed")]
    Closed,
    /// The engine was opened with options it cannot use.
    #[error("invalid engine options: {0}")]
    Options(String),
}

impl EngineError {
    /// Wraps an `io::Error` with the path it concerns. A read of an archived segment that
    /// cold storage could not serve stays a cold-storage error (see [`ColdStorageUnavailable`]).
    pub fn io(path: &Path) -> impl FnOnce(io::Error) -> EngineError + '_ {
        move |source| {
            if source
                .get_ref()
                .is_some_and(|inner| inner.is::<ColdStorageUnavailable>())
            {
                EngineError::ColdStorage {
                    place: path.display().to_string(),
                    source,
                }
            } else {
                EngineError::Io {
                    path: path.to_owned(),
                    source,
                }
            }
        }
    }

    /// Wraps a cold-storage failure with the object it concerns.
    pub fn cold(place: &Path) -> impl FnOnce(io::Error) -> EngineError + '_ {
        move |source| EngineError::ColdStorage {
            place: place.display().to_string(),
            source,
        }
    }

    pub fn corruption(path: &Path, offset: u64, reason: impl Into<String>) -> EngineError {
        EngineError::Corruption {
            path: path.to_owned(),
            offset,
            reason: reason.into(),
        }
    }
}

/// Carried inside the `io::Error` of a read of an archived segment when cold storage failed,
/// through the file API (which speaks `io::Error` only), so that the reader's error is a
/// [`EngineError::ColdStorage`] (the client may retry) rather than an I/O fault of the disk.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ColdStorageUnavailable(pub String);

impl From<EngineError> for StoreError {
    fn from(error: EngineError) -> StoreError {
        match error {
            EngineError::Store(e) => e,
            EngineError::Poisoned(_) | EngineError::Closed => StoreError::Unavailable(error.to_string()),
            // An object the manifest names is gone: data lost in cold storage, not a passing
            // outage.
            EngineError::ColdStorage { ref source, .. } if source.kind() == io::ErrorKind::NotFound => {
                StoreError::Internal(error.to_string())
            }
            EngineError::ColdStorage { .. } => StoreError::Unavailable(error.to_string()),
            EngineError::Io { .. } | EngineError::Corruption { .. } | EngineError::Options(_) => {
                StoreError::Internal(error.to_string())
            }
        }
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
