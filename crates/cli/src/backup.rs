//! Backups of the embedded engine for `POST /v1/admin/backup`: the engine copies its own
//! files and, in their places in the order, the journals of the services that `serve` runs over
//! it (projections, subscription groups, the schema registry). See
//! `factstore_engine::backup` and `docs/durability.md` ("Backup").

use std::path::Path;
use std::sync::Arc;

use factstore_engine::Engine;
use factstore_engine::backup::{self as engine_backup, BackupSources, DurableFile};
use factstore_projections::Projections;
use factstore_schemas::SchemaRegistry;
use factstore_server::backup::{Backup, BackupError, BackupOutcome};
use factstore_subscriptions::Subscriptions;

/// The embedded server's backups.
#[derive(Debug)]
pub struct EmbeddedBackup {
    pub engine: Arc<Engine>,
    pub projections: Projections,
    pub subscriptions: Arc<Subscriptions>,
    pub schemas: Arc<SchemaRegistry>,
}

impl BackupSources for EmbeddedBackup {
    fn position_state(&self) -> Vec<DurableFile> {
        let mut files = self.projections.durable_logs();
        files.extend(self.subscriptions.durable_logs());
        files
    }

    fn catalogs(&self) -> Vec<DurableFile> {
        self.schemas.durable_log().into_iter().collect()
    }
}

impl Backup for EmbeddedBackup {
    fn backup(&self, to: &Path) -> Result<BackupOutcome, BackupError> {
        let shown = to.display().to_string();
        match self.engine.backup(to, self) {
            Ok(report) => Ok(BackupOutcome {
                to: shown,
                head_position: report.info.head_position,
                files: report.info.files,
                bytes: report.info.bytes,
                linked_files: report.linked_files,
                archived_segments: report.info.archived_segments,
                duration_ms: u64::try_from(report.duration.as_millis()).unwrap_or(u64::MAX),
            }),
            Err(engine_backup::BackupError::InvalidTarget(message)) => {
                Err(BackupError::InvalidTarget(message))
            }
            Err(engine_backup::BackupError::TargetNotEmpty(_)) => {
                Err(BackupError::TargetNotEmpty { to: shown })
            }
            Err(engine_backup::BackupError::Failed(error)) => {
                // The details (with the server's paths) are logged; the client reads the cause.
                tracing::error!(%error, to = %shown, "the backup failed");
                Err(BackupError::Failed {
                    to: shown,
                    reason: error.public_reason(),
                })
            }
            Err(error @ engine_backup::BackupError::NotABackup { .. }) => Err(BackupError::Failed {
                to: shown,
                reason: error.to_string(),
            }),
        }
    }
}
