//! Archiving: moving sealed segments of the log to cold storage, and reading them back.
//!
//! # The unit and the rule
//! The unit is a sealed segment: immutable once the writer moved to the next one. Archiving
//! takes a prefix of the log, segment by segment in order, and stops at the first segment that
//! is the last (active) one, that is not wholly below the index checkpoint (so recovery never
//! replays an archived segment), or whose last event was recorded at or after `before`
//! (`recorded_at` never decreases along positions, so the last event decides for all).
//!
//! # The steps for one segment (see `docs/durability.md`, "Archiving")
//! 1. Read the segment and check every frame (checksums, positions): data is checked right
//!    before it is copied.
//! 2. Compress it (zstd) and put it at `<prefix>/segments/NNNNNNNNNN.seg.zst`.
//! 3. Get the object back, decompress it, compare length, xxh3-64 and bytes with the local copy.
//! 4. Append the segment's record to the archive manifest (synced): from here on the segment
//!    is archived.
//! 5. Swap the log's entry for the segment to one read through cold storage ([`cache`]).
//! 6. Remove the local file and sync the `log/` folder.
//!
//! A crash before step 4 leaves the local file the only truth (a stray object is overwritten
//! next time); a crash after it leaves a local file that recovery removes. The log holds one
//! entry per segment number, so no event is ever readable twice.

pub mod cache;
pub mod cold;
pub mod manifest;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use bytes::Bytes;
use factstore_core::{ArchiveOutcome, StorageStats, Timestamp};
use parking_lot::Mutex;

use crate::error::{EngineError, Result};
use crate::index::manifest::Manifest;
use crate::io::FileSystem;
use crate::journal::Journal;
use crate::log::format::{Loc, SEGMENT_HEADER_LEN};
use crate::log::reader::Segment;
use crate::log::recovery::parse_frame;

pub use cache::{ArchivedFile, SegmentCache};
pub use cold::{ColdStore, ObjectColdStore};
pub use manifest::ArchivedSegment;

/// zstd level: fast to compress, still most of the gain on JSON-heavy segments.
const ZSTD_LEVEL: i32 = 3;

/// How the engine archives.
#[derive(Debug, Clone)]
pub struct ArchiveOptions {
    /// Where archived segments go.
    pub store: Arc<dyn ColdStore>,
    /// Bytes of archived segments kept in the local cache (`archive-cache/`); the segment
    /// being read is kept whatever its size.
    pub cache_bytes_max: u64,
}

impl ArchiveOptions {
    pub fn new(store: Arc<dyn ColdStore>) -> ArchiveOptions {
        ArchiveOptions {
            store,
            cache_bytes_max: 4 << 30,
        }
    }
}

/// The archive of an open engine: its manifest, its cold store and its cache.
#[derive(Debug)]
pub struct Archive {
    fs: Arc<dyn FileSystem>,
    journal: Journal,
    records: Mutex<Vec<ArchivedSegment>>,
    cache: Arc<SegmentCache>,
    /// One archiving run at a time.
    running: Mutex<()>,
}

/// What opening the archive manifest found.
#[derive(Debug)]
pub struct OpenedArchive {
    pub archive: Option<Archive>,
    /// The archived segments, as log entries read through the cache.
    pub segments: Vec<Arc<Segment>>,
}

/// Opens the archive manifest of the store in `dir` (after the folder's lock is taken).
/// Without `options`, a store that has archived segments does not open: its oldest events
/// would be unreadable.
pub fn open(fs: &Arc<dyn FileSystem>, dir: &Path, options: Option<&ArchiveOptions>) -> Result<OpenedArchive> {
    let path = dir.join(manifest::FILE_NAME);
    let Some(options) = options else {
        if fs.exists(&path).map_err(EngineError::io(&path))? {
            let (_, records) = Journal::open(fs.clone(), &path, manifest::MAGIC)?;
            if let Some(last) = records.last() {
                let last = ArchivedSegment::decode(last).map_err(|r| EngineError::corruption(&path, 0, r))?;
                return Err(EngineError::Options(format!(
                    "segments 1 to {} (positions 1 to {}) of this store are in cold storage: open it with the \
                     archive URL they were archived to (--archive-url)",
                    last.segment_no, last.last_position
                )));
            }
        }
        return Ok(OpenedArchive {
            archive: None,
            segments: Vec::new(),
        });
    };
    let archive_dir = dir.join("archive");
    if !fs.exists(&archive_dir).map_err(EngineError::io(&archive_dir))? {
        fs.create_dir_all(&archive_dir)
            .map_err(EngineError::io(&archive_dir))?;
        fs.sync_dir(dir).map_err(EngineError::io(dir))?;
    }
    let (journal, bodies) = Journal::open(fs.clone(), &path, manifest::MAGIC)?;
    let mut records = Vec::with_capacity(bodies.len());
    for body in &bodies {
        records.push(ArchivedSegment::decode(body).map_err(|r| EngineError::corruption(&path, 0, r))?);
    }
    manifest::check_sequence(&records).map_err(|r| EngineError::corruption(&path, 0, r))?;
    let cache = Arc::new(SegmentCache::open(
        fs.clone(),
        dir.join(cache::CACHE_DIR),
        options.store.clone(),
        options.cache_bytes_max,
    )?);
    let segments = records
        .iter()
        .map(|record| archived_segment(&cache, record))
        .collect();
    Ok(OpenedArchive {
        archive: Some(Archive {
            fs: fs.clone(),
            journal,
            records: Mutex::new(records),
            cache,
            running: Mutex::new(()),
        }),
        segments,
    })
}

fn archived_segment(cache: &Arc<SegmentCache>, record: &ArchivedSegment) -> Arc<Segment> {
    Arc::new(Segment {
        no: record.segment_no,
        first_position: record.first_position,
        path: PathBuf::from(format!("{}/{}", cache.store().describe(), record.key())),
        file: Arc::new(ArchivedFile::new(*record, cache.clone())),
        durable_len: AtomicU64::new(record.len),
    })
}

impl Archive {
    /// The archived segments, in order.
    pub fn records(&self) -> Vec<ArchivedSegment> {
        self.records.lock().clone()
    }

    /// Blocks archiving runs while the guard lives (a backup holds it, so that no segment
    /// leaves `log/` and the manifest does not change while they are copied); waits for a run
    /// under way to finish.
    pub fn hold(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.running.lock()
    }

    /// The archive manifest's synced content, for a backup.
    pub fn manifest_durable(&self) -> crate::backup::DurableFile {
        self.journal.durable()
    }

    /// The cache of archived segments.
    pub fn cache(&self) -> &Arc<SegmentCache> {
        &self.cache
    }

    /// Totals over every archived segment.
    pub fn outcome(&self) -> ArchiveOutcome {
        let records = self.records.lock();
        ArchiveOutcome {
            archived_events: records.iter().map(ArchivedSegment::events).sum(),
            archived_bytes: records.iter().map(|r| r.len).sum(),
            ..ArchiveOutcome::default()
        }
    }

    /// Archives the sealed segments recorded wholly before `before` (see the module docs),
    /// calling `progress` after each one with the segment's record. Returns the totals so far.
    pub fn archive(
        &self,
        shared: &crate::engine::Shared,
        before: Timestamp,
        mut progress: impl FnMut(&ArchivedSegment),
    ) -> Result<ArchiveOutcome> {
        let _running = self.running.lock();
        let fs = &*self.fs;
        let index_dir = shared.index_dir();
        let checkpoint = Manifest::load(fs, &index_dir)?.unwrap_or_default();
        if checkpoint.resume == 0 {
            return Ok(self.outcome());
        }
        // Segments below this one are wholly indexed: recovery never replays them.
        let resume_segment = Loc(checkpoint.resume).segment_no();
        let segments = shared.log.segments();
        let archived_through = self.records.lock().last().map_or(0, |r| r.segment_no);
        for pair in segments.windows(2) {
            let [segment, next] = pair else { break };
            if segment.no <= archived_through {
                continue;
            }
            if segment.no >= resume_segment {
                break;
            }
            let data = read_segment(segment)?;
            let (last_position, last_recorded_at) = check_sealed(segment, &data, next.first_position)?;
            if last_recorded_at >= before.as_micros() {
                break;
            }
            let record = self.upload_verified(segment, &data, last_position, last_recorded_at)?;
            // The commit point: once the record is durable the segment is archived.
            self.journal.append(&[&record.encode()])?;
            self.records.lock().push(record);
            shared.log.replace(archived_segment(&self.cache, &record));
            let log_dir = shared.log_dir();
            fs.remove_file(&segment.path)
                .map_err(EngineError::io(&segment.path))?;
            fs.sync_dir(&log_dir).map_err(EngineError::io(&log_dir))?;
            tracing::info!(
                segment = record.segment_no,
                events = record.events(),
                bytes = record.len,
                compressed_bytes = record.compressed_len,
                "archived a segment"
            );
            progress(&record);
        }
        Ok(self.outcome())
    }

    /// Steps 2 and 3: compress, put, get back and compare. The hot copy is untouched.
    fn upload_verified(
        &self,
        segment: &Segment,
        data: &[u8],
        last_position: u64,
        last_recorded_at: i64,
    ) -> Result<ArchivedSegment> {
        let compressed = zstd::bulk::compress(data, ZSTD_LEVEL)
            .map_err(|e| EngineError::Options(format!("cannot compress segment {}: {e}", segment.no)))?;
        let record = ArchivedSegment {
            segment_no: segment.no,
            first_position: segment.first_position,
            last_position,
            len: data.len() as u64,
            compressed_len: compressed.len() as u64,
            checksum: xxhash_rust::xxh3::xxh3_64(data),
            last_recorded_at,
        };
        let store = self.cache.store();
        let place = PathBuf::from(format!("{}/{}", store.describe(), record.key()));
        store
            .put(&record.key(), Bytes::from(compressed))
            .map_err(EngineError::cold(&place))?;
        let back = cache::fetch_verified(&**store, &record)?;
        if back != data {
            return Err(EngineError::corruption(
                &place,
                0,
                "the archived copy differs from the local segment",
            ));
        }
        Ok(record)
    }

    /// Bytes and events, hot and cold.
    pub fn storage(&self, shared: &crate::engine::Shared) -> Result<StorageStats> {
        let mut stats = hot_storage(shared)?;
        let records = self.records.lock();
        stats.cold_bytes = records.iter().map(|r| r.compressed_len).sum();
        stats.archived_events = records.iter().map(ArchivedSegment::events).sum();
        Ok(stats)
    }
}

/// Bytes of the local log and index files, and the event count; nothing cold.
pub fn hot_storage(shared: &crate::engine::Shared) -> Result<StorageStats> {
    let fs = &*shared.fs;
    let mut hot_bytes = 0u64;
    for dir in [shared.log_dir(), shared.index_dir()] {
        for name in fs.list_dir(&dir).map_err(EngineError::io(&dir))? {
            if name == "LOCK" {
                continue;
            }
            let path = dir.join(&name);
            match fs.open(&path, crate::io::OpenMode::Read) {
                Ok(file) => hot_bytes += file.len().map_err(EngineError::io(&path))?,
                // Removed between the listing and the open (a merge, an archive): not counted.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(EngineError::Io { path, source: e }),
            }
        }
    }
    Ok(StorageStats {
        hot_bytes,
        cold_bytes: 0,
        events: shared.head(),
        archived_events: 0,
    })
}

fn read_segment(segment: &Segment) -> Result<Vec<u8>> {
    let len = segment.durable_len();
    let mut data = vec![
        0u8;
        usize::try_from(len).map_err(|_| EngineError::corruption(
            &segment.path,
            0,
            "segment too large"
        ))?
    ];
    segment
        .file
        .read_exact_at(&mut data, 0)
        .map_err(EngineError::io(&segment.path))?;
    Ok(data)
}

/// Checks every frame of a sealed segment and that it ends right before `next_first`; returns
/// its last position and that event's `recorded_at`.
fn check_sealed(segment: &Segment, data: &[u8], next_first: u64) -> Result<(u64, i64)> {
    let mut at = SEGMENT_HEADER_LEN;
    let mut next_position = segment.first_position;
    let mut last_recorded_at = None;
    while at < data.len() {
        let (events, used) = parse_frame(data, at, next_position)
            .map_err(|r| EngineError::corruption(&segment.path, at as u64, r))?;
        if let Some((event, _)) = events.last() {
            last_recorded_at = Some(event.recorded_at().as_micros());
        }
        next_position += events.len() as u64;
        at += used;
    }
    if next_position != next_first {
        return Err(EngineError::corruption(
            &segment.path,
            data.len() as u64,
            format!(
                "the segment ends before position {next_position} but the next one starts at {next_first}"
            ),
        ));
    }
    let last_recorded_at = last_recorded_at
        .ok_or_else(|| EngineError::corruption(&segment.path, 0, "a sealed segment holds no events"))?;
    Ok((next_position - 1, last_recorded_at))
}
