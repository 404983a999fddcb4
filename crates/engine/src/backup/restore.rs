//! Restoring a backup: its files copied into a new or empty data folder, and synced.
//!
//! Everything is copied, nothing linked: the restored store appends to its files, and the
//! backup must stay as it was. The marker stays behind (the result is a data folder, not a
//! backup). Checking the result is the caller's: `factstore restore` runs `factstore verify`.

use std::path::{Path, PathBuf};

use super::copy::{Copier, whole_file};
use super::{BackupError, BackupInfo, MARKER, MARKER_FORMAT, prepare_target};
use crate::error::EngineError;
use crate::io::FileSystem;

/// What a restore copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreReport {
    /// What the backup's marker says it holds.
    pub info: BackupInfo,
    pub files: u64,
    pub bytes: u64,
}

/// What the backup in `from` holds, by its marker; [`BackupError::NotABackup`] without one (a
/// backup that did not complete, or not a backup at all).
pub fn read_marker(fs: &dyn FileSystem, from: &Path) -> Result<BackupInfo, BackupError> {
    let path = from.join(MARKER);
    let not_a_backup = |why: String| BackupError::NotABackup {
        folder: from.to_owned(),
        why,
    };
    if !fs.exists(&path).map_err(EngineError::io(&path))? {
        return Err(not_a_backup(format!(
            "no {MARKER} in it (a backup that failed or is still running has none)"
        )));
    }
    let marker = whole_file(fs, &path)?;
    let mut bytes = vec![0u8; usize::try_from(marker.len).unwrap_or(0).min(1 << 20)];
    marker
        .file
        .read_exact_at(&mut bytes, 0)
        .map_err(EngineError::io(&path))?;
    let info: BackupInfo =
        serde_json::from_slice(&bytes).map_err(|e| not_a_backup(format!("{MARKER} cannot be read: {e}")))?;
    if info.format != MARKER_FORMAT {
        return Err(not_a_backup(format!(
            "{MARKER} has format {}, which this version does not know",
            info.format
        )));
    }
    Ok(info)
}

/// Copies the backup in `from` into `to` (missing or empty), syncing every file and folder.
pub fn restore(fs: &dyn FileSystem, from: &Path, to: &Path) -> Result<RestoreReport, BackupError> {
    let info = read_marker(fs, from)?;
    prepare_target(fs, from, to)?;
    let mut copier = Copier::new(fs, from, to);
    let copied = copy_tree(fs, from, from, &mut copier).and_then(|()| copier.sync_folders());
    if let Err(error) = copied {
        tracing::error!(%error, to = %to.display(), "the restore failed; the folder holds an incomplete copy");
        return Err(error.into());
    }
    Ok(RestoreReport {
        info,
        files: copier.files,
        bytes: copier.bytes,
    })
}

/// Copies every file under `dir`, and creates every folder, but the marker (and a lock file,
/// which `factstore verify` of the backup leaves, or a cache of archived segments, which a
/// backup never holds).
fn copy_tree(
    fs: &dyn FileSystem,
    root: &Path,
    dir: &Path,
    copier: &mut Copier<'_>,
) -> Result<(), EngineError> {
    let mut names = fs.list_dir(dir).map_err(EngineError::io(dir))?;
    names.sort();
    for name in names {
        if dir == root && (matches!(name.as_str(), "LOCK" | "archive-cache") || name.starts_with(MARKER)) {
            continue;
        }
        let path: PathBuf = dir.join(&name);
        match fs.list_dir(&path) {
            Ok(_) => {
                copier.folder(&path)?;
                copy_tree(fs, root, &path, copier)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
                copier.copy(&whole_file(fs, &path)?)?;
            }
            Err(e) => return Err(EngineError::io(&path)(e)),
        }
    }
    Ok(())
}
