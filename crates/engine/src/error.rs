//! The engine's errors, and how they become the store errors clients see.
//!
//! What a client sees never names a file: a path says where the server keeps its data, which is
//! not a client's business. [`EngineError::public_reason`] gives the words a client may read;
//! the full error (paths included) goes to the log where it happens.

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
    /// refuses every write until it is reopened. The reason is public (no path): it is built
    /// with [`EngineError::public_reason`] when the failure happens, and the failure itself
    /// is logged then.
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

    /// What may be told to any client about this error: what went wrong and the system's
    /// reason, never a path or stored data. The `Display` form has the details, for the log.
    pub fn public_reason(&self) -> String {
        match self {
            EngineError::Io { source, .. } => describe_io(source),
            EngineError::Corruption { .. } => "data on disk is corrupt".to_owned(),
            EngineError::Poisoned(reason) => reason.clone(),
            EngineError::Store(error) => error.to_string(),
            EngineError::ColdStorage { source, .. } => {
                format!("cold storage did not answer ({})", describe_io(source))
            }
            EngineError::Closed => "the store is closed".to_owned(),
            EngineError::Options(_) => "the engine reached one of its limits".to_owned(),
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

/// An I/O error's cause with nothing it may carry beyond its kind: the operating system's
/// message for its code ("No space left on device (os error 28)"), else the kind ("no storage
/// space"). A custom payload (which may hold a path or a URL) is left out.
pub fn describe_io(error: &io::Error) -> String {
    match error.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code).to_string(),
        None => error.kind().to_string(),
    }
}

/// Carried inside the `io::Error` of a read of an archived segment when cold storage failed,
/// through the file API (which speaks `io::Error` only), so that the reader's error is a
/// [`EngineError::ColdStorage`] (the client may retry) rather than an I/O fault of the disk.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ColdStorageUnavailable(pub String);

impl From<EngineError> for StoreError {
    /// `Unavailable` carries a public reason (its message reaches clients); `Internal` carries
    /// the details (the server logs them and answers a fixed sentence).
    fn from(error: EngineError) -> StoreError {
        match error {
            EngineError::Store(e) => e,
            EngineError::Poisoned(reason) => StoreError::Unavailable(format!(
                "{reason}; writes are refused until the server is restarted"
            )),
            EngineError::Closed => StoreError::Unavailable(error.public_reason()),
            // An object the manifest names is gone: data lost in cold storage, not a passing
            // outage.
            EngineError::ColdStorage { ref source, .. } if source.kind() == io::ErrorKind::NotFound => {
                StoreError::Internal(error.to_string())
            }
            EngineError::ColdStorage { .. } => {
                tracing::warn!(%error, "cold storage failed");
                StoreError::Unavailable(error.public_reason())
            }
            EngineError::Io { .. } | EngineError::Corruption { .. } | EngineError::Options(_) => {
                StoreError::Internal(error.to_string())
            }
        }
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
