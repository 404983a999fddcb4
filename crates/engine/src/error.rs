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
    /// The engine was closed.
    #[error("the store is closed")]
    Closed,
    /// The engine was opened with options it cannot use.
    #[error("invalid engine options: {0}")]
    Options(String),
}

impl EngineError {
    /// Wraps an `io::Error` with the path it concerns.
    pub fn io(path: &Path) -> impl FnOnce(io::Error) -> EngineError + '_ {
        move |source| EngineError::Io {
            path: path.to_owned(),
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

impl From<EngineError> for StoreError {
    fn from(error: EngineError) -> StoreError {
        match error {
            EngineError::Store(e) => e,
            EngineError::Poisoned(_) | EngineError::Closed => StoreError::Unavailable(error.to_string()),
            EngineError::Io { .. } | EngineError::Corruption { .. } | EngineError::Options(_) => {
                StoreError::Internal(error.to_string())
            }
        }
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
