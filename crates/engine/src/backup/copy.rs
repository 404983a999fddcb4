//! Putting files into a backup (or a restored folder): linked when they never change, copied
//! up to a length otherwise, every copy synced, and at the end every folder of the copy synced.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::DurableFile;
use crate::error::{EngineError, Result};
use crate::io::{FileSystem, OpenMode};

/// Bytes read and written at a time.
const CHUNK_BYTES: u64 = 1 << 20;

/// Files put under `to`, each at the place it had under `from`.
pub(crate) struct Copier<'a> {
    fs: &'a dyn FileSystem,
    from: PathBuf,
    to: PathBuf,
    /// Every folder of the copy (the root included), synced by [`Copier::sync_folders`].
    folders: BTreeSet<PathBuf>,
    pub files: u64,
    pub bytes: u64,
    pub linked_files: u64,
}

impl<'a> Copier<'a> {
    /// `to` exists (and its own entry in its parent is durable).
    pub fn new(fs: &'a dyn FileSystem, from: &Path, to: &Path) -> Copier<'a> {
        Copier {
            fs,
            from: from.to_owned(),
            to: to.to_owned(),
            folders: BTreeSet::from([to.to_owned()]),
            files: 0,
            bytes: 0,
            linked_files: 0,
        }
    }

    /// Where `source` goes in the copy, its folder created.
    fn place(&mut self, source: &Path) -> Result<PathBuf> {
        let relative = source.strip_prefix(&self.from).map_err(|_| {
            EngineError::Options(format!(
                "{} is not inside {}, the folder being copied",
                source.display(),
                self.from.display()
            ))
        })?;
        let dest = self.to.join(relative);
        if let Some(parent) = dest.parent()
            && !self.folders.contains(parent)
        {
            self.fs.create_dir_all(parent).map_err(EngineError::io(parent))?;
            let mut folder = Some(parent);
            while let Some(f) = folder.filter(|f| f.starts_with(&self.to)) {
                self.folders.insert(f.to_owned());
                folder = f.parent();
            }
        }
        Ok(dest)
    }

    /// Creates the folder of the copy that stands for `source`, a folder under `from`.
    pub fn folder(&mut self, source: &Path) -> Result<()> {
        self.place(&source.join("-")).map(drop)
    }

    /// Copies the first `source.len` bytes of `source.file`, then syncs the copy.
    pub fn copy(&mut self, source: &DurableFile) -> Result<()> {
        let dest = self.place(&source.path)?;
        let out = self
            .fs
            .open(&dest, OpenMode::CreateNew)
            .map_err(EngineError::io(&dest))?;
        let mut buf = vec![0u8; CHUNK_BYTES.min(source.len) as usize];
        let mut at = 0;
        while at < source.len {
            let n = CHUNK_BYTES.min(source.len - at) as usize;
            source
                .file
                .read_exact_at(&mut buf[..n], at)
                .map_err(EngineError::io(&source.path))?;
            out.write_all_at(&buf[..n], at).map_err(EngineError::io(&dest))?;
            at += n as u64;
        }
        out.sync_data().map_err(EngineError::io(&dest))?;
        self.files += 1;
        self.bytes += source.len;
        Ok(())
    }

    /// Links `source` into the copy when the file system can; `false` when it cannot (another
    /// file system, `EXDEV`; no links at all), and then the caller copies. Only for files that
    /// are never written again and whose whole length is `source.len`: the link shares them.
    /// Their data was synced when they were written; the link itself is made durable by
    /// [`Copier::sync_folders`].
    pub fn link(&mut self, source: &DurableFile) -> Result<bool> {
        let dest = self.place(&source.path)?;
        match self.fs.hard_link(&source.path, &dest) {
            Ok(()) => {
                self.files += 1;
                self.linked_files += 1;
                self.bytes += source.len;
                Ok(true)
            }
            Err(error) => {
                tracing::debug!(%error, file = %source.path.display(), "cannot link; copying instead");
                Ok(false)
            }
        }
    }

    /// Links `source`, or copies it when it cannot be linked.
    pub fn link_or_copy(&mut self, source: &DurableFile) -> Result<()> {
        if self.link(source)? {
            return Ok(());
        }
        self.copy(source)
    }

    /// Syncs every folder of the copy, the deepest first, so that every file and folder put
    /// in it survives a crash.
    pub fn sync_folders(&self) -> Result<()> {
        for folder in self.folders.iter().rev() {
            self.fs.sync_dir(folder).map_err(EngineError::io(folder))?;
        }
        Ok(())
    }
}

/// The whole of a file that is not being written, opened for reading.
pub(crate) fn whole_file(fs: &dyn FileSystem, path: &Path) -> Result<DurableFile> {
    let file = fs.open(path, OpenMode::Read).map_err(EngineError::io(path))?;
    let len = file.len().map_err(EngineError::io(path))?;
    Ok(DurableFile {
        path: path.to_owned(),
        file,
        len,
    })
}
