//! Backups: a consistent copy of a running store in a new or empty folder, and restoring one.
//!
//! # What the copy is
//! The store as it was at one moment, with the events appended while the copy ran added at
//! the end of its log: projections and subscription groups are where they were at that moment,
//! so they fold and deliver those later events after a restore, as after a crash. Every file
//! is taken at a length below which its bytes are synced and never change again
//! ([`DurableFile`]), in an order that makes whatever one part names exist in the parts copied
//! after it (`docs/durability.md`, "Backup"):
//! 1. the state that names positions of the log: projection journals, subscription group
//!    journals ([`BackupSources::position_state`]) and the snapshot log;
//! 2. the index: its manifest and the runs it names, hard-linked (runs never change) under the
//!    indexer's manifest lock, so that no merge deletes a run between the two;
//! 3. the log: sealed segments hard-linked, the active one copied up to its durable length
//!    (a frame boundary), and the archive manifest. Archiving is blocked from the start of the
//!    copy to its end, so no segment leaves `log/` meanwhile;
//! 4. what the events name: the schema registry ([`BackupSources::catalogs`]), after the log,
//!    so that every schema an event of the copy was validated against is in it.
//!
//! Recovery of the copy replays the log after the index checkpoint, as after a crash. The log,
//! copied after everything else that names positions, reaches at least as far as every one
//! of them. `archive-cache/` and `LOCK` are never copied; archived segments are not either:
//! the copy's archive manifest names the same objects, so it needs the same `--archive-url`.
//!
//! # When a copy is a backup
//! Files that cannot be linked (another file system) are copied. Every file copied is synced,
//! then every folder of the copy; only then is [`MARKER`] written (and synced) with what the
//! backup holds. A failure anywhere before leaves a folder without it, which [`restore`]
//! refuses: the copy is a backup only when the marker is there, which is exactly when
//! [`crate::Engine::backup`] answered `Ok`.

mod copy;
mod restore;

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use factstore_core::Timestamp;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

pub use restore::{RestoreReport, read_marker, restore};

use crate::archive::Archive;
use crate::engine::Shared;
use crate::error::{EngineError, describe_io};
use crate::index::manifest::{self, Manifest};
use crate::io::{File, FileSystem, OpenMode};
use crate::log::format::{FRAME_HEADER_LEN, FrameHeader, SEGMENT_HEADER_LEN};
use crate::log::reader::Segment;
use crate::snapshots::Snapshots;
use copy::{Copier, whole_file};

/// The file a complete backup holds at its root, written last.
pub const MARKER: &str = "BACKUP_COMPLETE";
/// The format of [`MARKER`]'s content.
pub const MARKER_FORMAT: u32 = 1;

/// A file as a backup takes it: an open handle and a length below which its bytes are
/// synced and never change again, whatever is appended, cut back or renamed over its path
/// later (the handle keeps the file it opened readable).
#[derive(Debug, Clone)]
pub struct DurableFile {
    /// Where the file is, inside the data folder: its place in the copy is the same.
    pub path: PathBuf,
    pub file: Arc<dyn File>,
    pub len: u64,
}

/// State kept beside the engine by the services over it (projections, subscription groups,
/// the schema registry), which a backup copies with the engine's own files.
pub trait BackupSources {
    /// Files whose records name positions of the log (projection generations, subscription
    /// groups): taken before the index and the log.
    fn position_state(&self) -> Vec<DurableFile>;
    /// Files that events name (the schema registry): taken after the log.
    fn catalogs(&self) -> Vec<DurableFile>;
}

/// No state beside the engine.
#[derive(Debug, Default, Clone, Copy)]
pub struct EngineOnly;

impl BackupSources for EngineOnly {
    fn position_state(&self) -> Vec<DurableFile> {
        Vec::new()
    }

    fn catalogs(&self) -> Vec<DurableFile> {
        Vec::new()
    }
}

/// What [`MARKER`] holds: what the backup is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupInfo {
    pub format: u32,
    /// The last position in the copied log.
    pub head_position: u64,
    /// Files of the backup (the marker aside), and their bytes.
    pub files: u64,
    pub bytes: u64,
    /// Segments the copy's archive manifest names: their events are in cold storage only, so
    /// the restored store needs the same `--archive-url`.
    pub archived_segments: u64,
    pub completed_at: Timestamp,
}

/// What a backup did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupReport {
    pub info: BackupInfo,
    /// Files linked rather than copied (they share the store's disk space).
    pub linked_files: u64,
    pub duration: Duration,
}

/// Why a backup or a restore did not happen, or did not complete.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The target cannot be used (a relative path, a file, a folder inside the store's).
    #[error("{0}")]
    InvalidTarget(String),
    /// The target folder holds something: a backup or a restore goes into a new or empty one.
    #[error("{} is not empty: give a folder that does not exist or is empty", .0.display())]
    TargetNotEmpty(PathBuf),
    /// A restore from a folder that holds no complete backup.
    #[error("{} holds no complete backup: {why}", folder.display())]
    NotABackup { folder: PathBuf, why: String },
    /// Reading the store or writing the copy failed; the target holds an incomplete copy
    /// (without [`MARKER`]).
    #[error(transparent)]
    Failed(#[from] EngineError),
}

/// The parts of an open engine that a backup reads.
pub(crate) struct Store<'a> {
    pub shared: &'a Shared,
    pub snapshots: &'a Snapshots,
    pub archive: Option<&'a Archive>,
    /// The indexer's manifest lock ([`crate::indexer::Indexer::manifest_lock`]).
    pub index_manifest: &'a Mutex<Manifest>,
}

/// Copies the store into `to` (absolute; missing or empty), in the order of the module docs.
pub(crate) fn run(
    store: &Store<'_>,
    to: &Path,
    sources: &dyn BackupSources,
) -> Result<BackupReport, BackupError> {
    let started = Instant::now();
    if !to.is_absolute() {
        return Err(BackupError::InvalidTarget(format!(
            "the backup folder must be an absolute path, not '{}'",
            to.display()
        )));
    }
    let fs = &*store.shared.fs;
    let dir = &store.shared.dir;
    prepare_target(fs, dir, to)?;
    let mut copier = Copier::new(fs, dir, to);
    let copied = copy_store(store, &mut copier, sources);
    let info = match copied.and_then(|info| {
        copier.sync_folders()?;
        write_marker(fs, to, &info)?;
        Ok(info)
    }) {
        Ok(info) => info,
        Err(error) => {
            tracing::error!(%error, to = %to.display(), "the backup failed; the folder holds an incomplete copy");
            return Err(BackupError::Failed(error));
        }
    };
    let report = BackupReport {
        info,
        linked_files: copier.linked_files,
        duration: started.elapsed(),
    };
    tracing::info!(
        to = %to.display(),
        head_position = report.info.head_position,
        files = report.info.files,
        linked_files = report.linked_files,
        bytes = report.info.bytes,
        seconds = report.duration.as_secs_f64(),
        "backup complete"
    );
    Ok(report)
}

fn copy_store(
    store: &Store<'_>,
    copier: &mut Copier<'_>,
    sources: &dyn BackupSources,
) -> Result<BackupInfo, EngineError> {
    let fs = &*store.shared.fs;
    // No archiving run moves a segment out of log/, or changes the archive manifest, until
    // the copy is done; one under way is waited for.
    let _archiving = store.archive.map(Archive::hold);

    // 1. What names positions, each at its synced length.
    let mut first = sources.position_state();
    first.push(store.snapshots.durable());
    for file in &first {
        copier.copy(file)?;
    }

    // 2. The index checkpoint and the runs it names. Under the manifest lock no flush or merge
    // stores a manifest, and a merge deletes its inputs only after storing one, so every run
    // named is there to link. Runs that cannot be linked are opened under the lock and copied
    // after it (the open handle outlives a deletion): a long copy must not hold up flushes.
    let unlinked = {
        let _manifest = store.index_manifest.lock();
        let index_dir = store.shared.index_dir();
        let path = index_dir.join(manifest::FILE_NAME);
        let mut unlinked = Vec::new();
        if fs.exists(&path).map_err(EngineError::io(&path))? {
            copier.copy(&whole_file(fs, &path)?)?;
            let manifest = Manifest::load(fs, &index_dir)?.unwrap_or_default();
            for run in &manifest.runs {
                let run = whole_file(fs, &index_dir.join(manifest::run_file_name(run.id)))?;
                if !copier.link(&run)? {
                    unlinked.push(run);
                }
            }
        }
        unlinked
    };
    for run in &unlinked {
        copier.copy(run)?;
    }

    // 3. The log, last of what names positions: it reaches at least as far as all of it.
    let archived = store.archive.map_or(0, |a| a.records().len() as u64);
    if let Some(archive) = store.archive {
        copier.copy(&archive.manifest_durable())?;
    }
    let local: Vec<Arc<Segment>> = store
        .shared
        .log
        .segments()
        .into_iter()
        .filter(|s| u64::from(s.no) > archived)
        .collect();
    let Some((active, sealed)) = local.split_last() else {
        return Err(EngineError::Options("the log has no local segment".into()));
    };
    for segment in sealed {
        // A sealed segment never changes: its whole file is durable.
        let file = segment_file(segment);
        if file.file.len().map_err(EngineError::io(&segment.path))? == file.len {
            copier.link_or_copy(&file)?;
        } else {
            copier.copy(&file)?;
        }
    }
    // The active one up to its durable length, a frame boundary: the writer appends past it,
    // and cuts a failed frame back to it.
    let active_file = segment_file(active);
    copier.copy(&active_file)?;
    let head_position = last_position(active, active_file.len)?;

    // 4. What the events name.
    for file in &sources.catalogs() {
        copier.copy(file)?;
    }
    Ok(BackupInfo {
        format: MARKER_FORMAT,
        head_position,
        files: copier.files,
        bytes: copier.bytes,
        archived_segments: archived,
        completed_at: Timestamp::now(),
    })
}

fn segment_file(segment: &Segment) -> DurableFile {
    DurableFile {
        path: segment.path.clone(),
        file: segment.file.clone(),
        len: segment.durable_len(),
    }
}

/// The last position in the first `len` bytes of `segment`, from its frame headers (the
/// frames were checked when they were written or recovered).
fn last_position(segment: &Segment, len: u64) -> Result<u64, EngineError> {
    let mut last = segment.first_position - 1;
    let mut at = SEGMENT_HEADER_LEN as u64;
    let mut header = [0u8; FRAME_HEADER_LEN];
    while at + FRAME_HEADER_LEN as u64 <= len {
        segment
            .file
            .read_exact_at(&mut header, at)
            .map_err(EngineError::io(&segment.path))?;
        let frame =
            FrameHeader::decode(&header).map_err(|r| EngineError::corruption(&segment.path, at, r))?;
        last = frame.first_position + u64::from(frame.event_count) - 1;
        at += FRAME_HEADER_LEN as u64 + u64::from(frame.body_len);
    }
    if at != len {
        return Err(EngineError::corruption(
            &segment.path,
            at,
            "the durable length is not at a frame boundary",
        ));
    }
    Ok(last)
}

/// Makes `to` an empty folder for a copy of `from`: it must not exist or be empty, and must
/// not be inside `from`. A folder created here is made durable (its parents synced).
pub(crate) fn prepare_target(fs: &dyn FileSystem, from: &Path, to: &Path) -> Result<(), BackupError> {
    if lexical(to).starts_with(lexical(from)) {
        // Not naming `from`: for a backup it is the server's data folder.
        return Err(BackupError::InvalidTarget(format!(
            "{} is inside the folder being copied",
            to.display()
        )));
    }
    // Nothing is written in the target before these checks pass: a failure is the target's.
    let unusable = |e: std::io::Error| {
        BackupError::InvalidTarget(format!("cannot use {}: {}", to.display(), describe_io(&e)))
    };
    if fs.exists(to).map_err(unusable)? {
        return match fs.list_dir(to) {
            Ok(names) if names.is_empty() => Ok(()),
            Ok(_) => Err(BackupError::TargetNotEmpty(to.to_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => Err(BackupError::InvalidTarget(
                format!("{} is a file, not a folder", to.display()),
            )),
            Err(e) => Err(unusable(e)),
        };
    }
    let mut missing = Vec::new();
    let mut at = Some(to);
    while let Some(folder) = at.filter(|f| !f.as_os_str().is_empty()) {
        if fs.exists(folder).map_err(unusable)? {
            break;
        }
        missing.push(folder);
        at = folder.parent();
    }
    fs.create_dir_all(to).map_err(unusable)?;
    for created in missing.iter().rev() {
        if let Some(parent) = created.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs.sync_dir(parent).map_err(EngineError::io(parent))?;
        }
    }
    Ok(())
}

/// `path` made absolute, with `.` and `..` resolved by name (no links followed): enough to
/// tell whether one folder is inside another as given.
fn lexical(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let mut out = PathBuf::new();
    for component in absolute.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Writes [`MARKER`], the last step of a backup: as a temporary file, synced, then renamed
/// into place and the folder synced, so that the marker is there whole or not at all.
fn write_marker(fs: &dyn FileSystem, to: &Path, info: &BackupInfo) -> Result<(), EngineError> {
    let tmp = to.join(format!("{MARKER}.tmp"));
    let mut body = serde_json::to_vec_pretty(info).map_err(|e| EngineError::Options(e.to_string()))?;
    body.push(b'\n');
    let file = fs
        .open(&tmp, OpenMode::CreateNew)
        .map_err(EngineError::io(&tmp))?;
    file.write_all_at(&body, 0).map_err(EngineError::io(&tmp))?;
    file.sync_data().map_err(EngineError::io(&tmp))?;
    let path = to.join(MARKER);
    fs.rename(&tmp, &path).map_err(EngineError::io(&path))?;
    fs.sync_dir(to).map_err(|e| {
        // The answer will be an error: take the marker back (best effort), so that no
        // restore takes the folder. (Should it survive anyway, everything else was synced.)
        if fs.remove_file(&path).is_ok() {
            let _ = fs.sync_dir(to);
        }
        EngineError::io(to)(e)
    })
}
