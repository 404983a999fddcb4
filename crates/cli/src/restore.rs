//! `factstore restore --from BACKUP --data-dir DIR`: a backup (from `factstore backup`) copied
//! into a new or empty data folder, offline, then checked as `factstore verify` checks.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use factstore_engine::backup::{self, BackupError};
use factstore_engine::io::StdFileSystem;

pub fn run(from: &Path, data_dir: &Path, archive_url: Option<&str>) -> anyhow::Result<ExitCode> {
    let report = match backup::restore(&StdFileSystem, from, data_dir) {
        Ok(report) => report,
        Err(error @ (BackupError::NotABackup { .. } | BackupError::TargetNotEmpty(_))) => bail!("{error}"),
        Err(BackupError::InvalidTarget(message)) => bail!("{message}"),
        Err(BackupError::Failed(error)) => {
            return Err(error).with_context(|| {
                format!(
                    "cannot restore {} into {} ({} holds an incomplete copy: remove it before trying again)",
                    from.display(),
                    data_dir.display(),
                    data_dir.display()
                )
            });
        }
    };
    println!(
        "restored {} files ({} bytes) from {} into {}: positions 1 to {}, backed up at {}",
        report.files,
        report.bytes,
        from.display(),
        data_dir.display(),
        report.info.head_position,
        report.info.completed_at
    );
    if report.info.archived_segments > 0 {
        println!(
            "{} segments are in cold storage only: serve the restored store with the same --archive-url",
            report.info.archived_segments
        );
    }
    crate::verify::run(data_dir, archive_url)
}
