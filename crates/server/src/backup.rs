//! `POST /v1/admin/backup`: a consistent copy of the whole store in a folder of the server's
//! machine, taken while the server goes on serving appends and reads.
//!
//! This crate holds no storage: the copy is made by the [`Backup`] that the binary installs
//! with [`crate::AppState::with_backup`] (the embedded engine's, which knows its data folder,
//! its projections, groups and schema registry). A server without one (on PostgreSQL, whose
//! backups are `pg_dump`'s, or over a store in memory) answers 409 `backup_not_supported`.
//!
//! Admin role, and never a token limited to aggregate prefixes (`auth::whole_store_reason`
//! refuses every `/v1/admin/` route): a backup holds every aggregate.

use std::fmt::Debug;
use std::path::{Path, PathBuf};

use axum::extract::{FromRequest, RawQuery, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use factstore_core::StoreError;
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::auth::Admin;
use crate::error::ApiError;
use crate::extract::{JsonBody, Params};
use crate::render;

/// The body of `POST /v1/admin/backup`. `to`: an absolute path on the server's machine, of a
/// folder that does not exist (it is created) or is empty.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BackupBody {
    #[schema(example = "/backups/factstore-2024-05-01")]
    to: String,
}

/// The answer of `POST /v1/admin/backup`: what the backup holds, once every file and folder
/// of it is synced and its `BACKUP_COMPLETE` marker written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackupOutcome {
    /// The folder, as given.
    pub to: String,
    /// The last position in the backup: every event up to it is in it, none after it.
    pub head_position: u64,
    /// Files of the backup, and their bytes.
    pub files: u64,
    pub bytes: u64,
    /// Files hard-linked to the store's own (immutable ones on the same file system); the
    /// others were copied.
    pub linked_files: u64,
    /// Segments whose events are in cold storage only: a store restored from this backup needs
    /// the same `--archive-url`.
    pub archived_segments: u64,
    /// How long the copy took.
    pub duration_ms: u64,
}

/// Why a backup was not made, or not completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupError {
    /// The server has no backup: it runs on PostgreSQL, or over a store in memory.
    NotSupported,
    /// The folder cannot be used (not absolute, a file, inside the data folder); says why.
    InvalidTarget(String),
    /// The folder exists and holds something.
    TargetNotEmpty { to: String },
    /// Reading the store or writing the copy failed: the folder holds an incomplete copy
    /// (without `BACKUP_COMPLETE`). The reason names no file of the server.
    Failed { to: String, reason: String },
}

/// Makes backups of a store. Installed by the binary ([`crate::AppState::with_backup`]).
pub trait Backup: Send + Sync + Debug {
    /// Copies the store into `to` (absolute); returns once the copy is durable. Blocking: it
    /// is called on the blocking pool.
    fn backup(&self, to: &Path) -> Result<BackupOutcome, BackupError>;
}

/// `POST /v1/admin/backup`: copies, and answers once the backup is complete and durable.
pub async fn backup(
    State(state): State<AppState>,
    Admin(_): Admin,
    RawQuery(query): RawQuery,
    request: Request,
) -> Result<Response, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    let JsonBody(body) = JsonBody::<BackupBody>::from_request(request, &state).await?;
    let to = PathBuf::from(&body.to);
    if !to.is_absolute() {
        return Err(ApiError::invalid(format!(
            "to: '{}' is not an absolute path; give the absolute path of a folder on the server's \
             machine that does not exist or is empty",
            body.to
        )));
    }
    let backup = state
        .backup
        .clone()
        .ok_or(ApiError::Backup(BackupError::NotSupported))?;
    let outcome = tokio::task::spawn_blocking(move || backup.backup(&to))
        .await
        .map_err(|e| ApiError::Store(StoreError::Internal(format!("the backup task failed: {e}"))))?
        .map_err(ApiError::Backup)?;
    render::json(StatusCode::OK, &outcome)
}
