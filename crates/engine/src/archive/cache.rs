//! The local cache of archived segments, and the read-only [`File`] an archived segment is
//! read through.
//!
//! The first read of an archived segment downloads its object, decompresses it, checks its
//! length and checksum against the manifest record, writes it to `archive-cache/NNN.seg.tmp`
//! through the [`FileSystem`], syncs it and renames it into place; later reads go to that file.
//! The log's readers stay unchanged: they see a [`File`] like any other.
//!
//! The cache holds at most `cache_bytes_max` bytes of segments (at least the one being read):
//! when a new segment would pass the bound, the least recently used others are evicted whole.
//! A reader that still holds an evicted segment's handle finishes its read (the open handle
//! outlives the name). The cache folder is emptied when the engine opens: it is a cache, and
//! starting empty spares checking what a crash left in it.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::archive::cold::ColdStore;
use crate::archive::manifest::ArchivedSegment;
use crate::error::{EngineError, Result};
use crate::io::{File, FileSystem, OpenMode};
use crate::log::format::segment_file_name;

/// The cache folder under the data folder.
pub const CACHE_DIR: &str = "archive-cache";

#[derive(Debug)]
struct Cached {
    file: Arc<dyn File>,
    len: u64,
    last_use: u64,
}

#[derive(Debug, Default)]
struct CacheState {
    files: HashMap<u32, Cached>,
    bytes: u64,
    tick: u64,
}

/// Archived segments materialized on local disk.
#[derive(Debug)]
pub struct SegmentCache {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    store: Arc<dyn ColdStore>,
    bytes_max: u64,
    state: Mutex<CacheState>,
    /// Held while a segment is downloaded, so two readers of one segment download it once.
    /// Reads of cached segments never wait for it.
    download: Mutex<()>,
}

impl SegmentCache {
    /// Opens the cache in `dir`, emptying it.
    pub fn open(
        fs: Arc<dyn FileSystem>,
        dir: PathBuf,
        store: Arc<dyn ColdStore>,
        bytes_max: u64,
    ) -> Result<SegmentCache> {
        if fs.exists(&dir).map_err(EngineError::io(&dir))? {
            for name in fs.list_dir(&dir).map_err(EngineError::io(&dir))? {
                let path = dir.join(name);
                fs.remove_file(&path).map_err(EngineError::io(&path))?;
            }
        } else {
            fs.create_dir_all(&dir).map_err(EngineError::io(&dir))?;
        }
        Ok(SegmentCache {
            fs,
            dir,
            store,
            bytes_max,
            state: Mutex::new(CacheState::default()),
            download: Mutex::new(()),
        })
    }

    /// Bytes of segments in the cache now.
    pub fn bytes(&self) -> u64 {
        self.state.lock().bytes
    }

    /// The cold store segments come from.
    pub fn store(&self) -> &Arc<dyn ColdStore> {
        &self.store
    }

    fn hit(&self, segment_no: u32) -> Option<Arc<dyn File>> {
        let mut state = self.state.lock();
        state.tick += 1;
        let tick = state.tick;
        let cached = state.files.get_mut(&segment_no)?;
        cached.last_use = tick;
        Some(cached.file.clone())
    }

    /// The local file of an archived segment, downloading it on first use.
    pub fn file(&self, record: &ArchivedSegment) -> Result<Arc<dyn File>> {
        if let Some(file) = self.hit(record.segment_no) {
            return Ok(file);
        }
        let _download = self.download.lock();
        if let Some(file) = self.hit(record.segment_no) {
            return Ok(file);
        }
        let bytes = fetch_verified(&*self.store, record)?;
        let name = segment_file_name(record.segment_no);
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let io = EngineError::io;
        if self.fs.exists(&tmp).map_err(io(&tmp))? {
            self.fs.remove_file(&tmp).map_err(io(&tmp))?;
        }
        let file = self.fs.open(&tmp, OpenMode::CreateNew).map_err(io(&tmp))?;
        file.write_all_at(&bytes, 0).map_err(io(&tmp))?;
        file.sync_data().map_err(io(&tmp))?;
        self.fs.rename(&tmp, &path).map_err(io(&path))?;
        self.fs.sync_dir(&self.dir).map_err(io(&self.dir))?;
        drop(file);
        let file = self.fs.open(&path, OpenMode::Read).map_err(io(&path))?;
        self.insert(record.segment_no, file.clone(), record.len);
        Ok(file)
    }

    fn insert(&self, segment_no: u32, file: Arc<dyn File>, len: u64) {
        let mut state = self.state.lock();
        while state.bytes + len > self.bytes_max {
            let Some((&victim, _)) = state.files.iter().min_by_key(|(_, cached)| cached.last_use) else {
                break;
            };
            if let Some(evicted) = state.files.remove(&victim) {
                state.bytes -= evicted.len;
                let path = self.dir.join(segment_file_name(victim));
                // A failed removal leaves a file the next open removes; the bound is then
                // exceeded for a while, which costs disk space, never data.
                if let Err(error) = self.fs.remove_file(&path) {
                    tracing::warn!(%error, file = %path.display(), "could not evict a cached segment");
                }
            }
        }
        state.tick += 1;
        let last_use = state.tick;
        state.bytes += len;
        state.files.insert(segment_no, Cached { file, len, last_use });
    }

    /// Drops every cached segment (tests use it to measure a first read again).
    pub fn clear(&self) {
        let mut state = self.state.lock();
        for (no, _) in state.files.drain() {
            let path = self.dir.join(segment_file_name(no));
            let _ = self.fs.remove_file(&path);
        }
        state.bytes = 0;
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Downloads a segment's object, decompresses it and checks it against its record.
pub fn fetch_verified(store: &dyn ColdStore, record: &ArchivedSegment) -> Result<Vec<u8>> {
    let key = record.key();
    let place = PathBuf::from(format!("{}/{key}", store.describe()));
    let object = store.get(&key).map_err(EngineError::cold(&place))?;
    let bytes = decompress_checked(&object, record.len)
        .map_err(|reason| EngineError::corruption(&place, 0, reason))?;
    let checksum = xxhash_rust::xxh3::xxh3_64(&bytes);
    if checksum != record.checksum {
        return Err(EngineError::corruption(
            &place,
            0,
            format!(
                "archived segment checksum {checksum:016x} where the manifest says {:016x}",
                record.checksum
            ),
        ));
    }
    Ok(bytes)
}

/// Decompresses a zstd object that must hold exactly `len` bytes.
pub fn decompress_checked(object: &[u8], len: u64) -> std::result::Result<Vec<u8>, String> {
    let capacity = usize::try_from(len).map_err(|_| "archived segment too large".to_owned())?;
    // One byte of room more than expected, so that a longer object is told apart.
    let bytes = zstd::bulk::decompress(object, capacity + 1).map_err(|e| {
        format!("cannot decompress it to the {len} bytes the manifest says (damaged, or another object): {e}")
    })?;
    if bytes.len() as u64 != len {
        return Err(format!(
            "archived segment holds {} bytes where the manifest says {len}",
            bytes.len()
        ));
    }
    Ok(bytes)
}

/// An archived segment as a read-only [`File`], read through the cache.
#[derive(Debug)]
pub struct ArchivedFile {
    record: ArchivedSegment,
    cache: Arc<SegmentCache>,
}

impl ArchivedFile {
    pub fn new(record: ArchivedSegment, cache: Arc<SegmentCache>) -> ArchivedFile {
        ArchivedFile { record, cache }
    }
}

fn read_only() -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        "an archived segment is read-only",
    )
}

impl File for ArchivedFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let file = self.cache.file(&self.record).map_err(|e| match e {
            EngineError::ColdStorage { ref source, .. } => {
                io::Error::new(source.kind(), crate::error::ColdStorageUnavailable(e.to_string()))
            }
            EngineError::Io { ref source, .. } => io::Error::new(source.kind(), e.to_string()),
            other => io::Error::other(other.to_string()),
        })?;
        file.read_exact_at(buf, offset)
    }

    fn write_all_at(&self, _buf: &[u8], _offset: u64) -> io::Result<()> {
        Err(read_only())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.record.len)
    }

    fn set_len(&self, _len: u64) -> io::Result<()> {
        Err(read_only())
    }

    fn sync_data(&self) -> io::Result<()> {
        Err(read_only())
    }
}
