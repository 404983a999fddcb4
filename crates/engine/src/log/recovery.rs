//! Opening a data folder: the lock, the index manifest and its runs, the segments, and the
//! replay of the log's tail after the index checkpoint.
//!
//! # What recovery decides
//! - A frame that fails its checksum, with no valid frame after it in the last segment, is a
//!   torn tail from a crash: nothing in it was acknowledged (acknowledgement follows the sync),
//!   so the segment is truncated before it and the truncation synced.
//! - A bad frame followed by a valid one, or a bad frame in a segment that is not the last, is
//!   corruption: recovery stops with an error naming the file and the offset. It never drops
//!   data that may have been acknowledged.
//! - A last segment holding no more than a (torn) header was being created at the crash; it is
//!   removed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use bytes::Bytes;
use factstore_core::{Event, Timestamp};

use crate::error::{EngineError, Result};
use crate::index::RunSource;
use crate::index::manifest::{self, Manifest};
use crate::index::memtable::MemTable;
use crate::index::run::Run;
use crate::index::table::PositionTable;
use crate::io::{File, FileSystem, OpenMode};
use crate::log::format::{
    FRAME_HEADER_LEN, FRAME_MAGIC, FrameHeader, Loc, SEGMENT_HEADER_LEN, SegmentHeader,
    parse_segment_file_name, segment_file_name, split_records,
};
use crate::log::reader::Segment;
use crate::log::writer::WriterStart;

/// Everything the engine needs to start.
#[derive(Debug)]
pub struct Recovered {
    pub lock: Box<dyn std::fmt::Debug + Send + Sync>,
    /// The archive, when the engine has cold storage.
    pub archive: Option<crate::archive::Archive>,
    pub manifest: Manifest,
    pub runs: Vec<Arc<RunSource>>,
    pub segments: Vec<Arc<Segment>>,
    pub memtable: MemTable,
    pub head: u64,
    pub writer: WriterStart,
}

fn ensure_dir(fs: &dyn FileSystem, dir: &Path) -> Result<()> {
    if !fs.exists(dir).map_err(EngineError::io(dir))? {
        fs.create_dir_all(dir).map_err(EngineError::io(dir))?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs.sync_dir(parent).map_err(EngineError::io(parent))?;
        }
    }
    Ok(())
}

pub fn recover(
    fs_arc: &Arc<dyn FileSystem>,
    dir: &Path,
    archive: Option<&crate::archive::ArchiveOptions>,
) -> Result<Recovered> {
    let fs = &**fs_arc;
    ensure_dir(fs, dir)?;
    let lock = fs.lock_dir(dir).map_err(EngineError::io(dir))?;
    let log_dir = dir.join("log");
    let index_dir = dir.join("index");
    ensure_dir(fs, &log_dir)?;
    ensure_dir(fs, &index_dir)?;

    let manifest = Manifest::load(fs, &index_dir)?.unwrap_or(Manifest {
        format: 1,
        ..Manifest::default()
    });
    let runs = open_runs(fs, &index_dir, &manifest)?;
    let opened = crate::archive::open(fs_arc, dir, archive)?;
    let segments = open_segments(fs, &log_dir, opened.segments)?;

    let (start_segment, start_offset) = if manifest.resume == 0 {
        (segments[0].no, SEGMENT_HEADER_LEN as u64)
    } else {
        let loc = Loc(manifest.resume);
        (loc.segment_no(), u64::from(loc.offset()))
    };
    let mut memtable = MemTable::new(
        manifest.indexed_through + 1,
        Loc::new(start_segment, start_offset as u32),
    );
    let mut next_position = manifest.indexed_through + 1;
    let mut last_recorded_at = Timestamp::from_micros(manifest.last_recorded_at);
    let first_index = segments
        .iter()
        .position(|s| s.no == start_segment)
        .ok_or_else(|| {
            EngineError::corruption(
                &index_dir.join(manifest::FILE_NAME),
                0,
                "the manifest resumes in a missing segment",
            )
        })?;
    let last_index = segments.len() - 1;
    let mut write_offset = SEGMENT_HEADER_LEN as u64;
    for (i, segment) in segments.iter().enumerate().skip(first_index) {
        let mut offset = if i == first_index {
            start_offset
        } else {
            SEGMENT_HEADER_LEN as u64
        };
        if i != first_index && segment.first_position != next_position {
            return Err(EngineError::corruption(
                &segment.path,
                16,
                format!(
                    "segment starts at position {} but the log continues at {next_position}",
                    segment.first_position
                ),
            ));
        }
        let len = segment.file.len().map_err(EngineError::io(&segment.path))?;
        if offset > len {
            // The manifest is stored only after the frames it covers are synced, so no crash
            // leaves a segment shorter than the checkpoint: indexed events are gone.
            return Err(EngineError::corruption(
                &segment.path,
                len,
                format!("the segment ends before the index checkpoint at offset {offset}"),
            ));
        }
        let data = read_range(&*segment.file, &segment.path, offset, len)?;
        let mut at = 0usize;
        while at < data.len() {
            match parse_frame(&data, at, next_position) {
                Ok((events, used)) => {
                    for (event, rel) in events {
                        let loc = Loc::new(segment.no, (offset + (at + rel) as u64) as u32);
                        last_recorded_at = event.recorded_at();
                        memtable.insert(&event.fields(), loc);
                        next_position += 1;
                    }
                    at += used;
                    memtable.set_end(Loc::new(segment.no, (offset + at as u64) as u32));
                }
                Err(reason) => {
                    let bad = offset + at as u64;
                    if i != last_index {
                        return Err(EngineError::corruption(&segment.path, bad, reason));
                    }
                    if let Some(valid) = find_valid_frame(&data, at + 1) {
                        return Err(EngineError::corruption(
                            &segment.path,
                            bad,
                            format!(
                                "{reason}, yet a valid frame follows at offset {}",
                                offset + valid as u64
                            ),
                        ));
                    }
                    tracing::warn!(
                        file = %segment.path.display(),
                        offset = bad,
                        dropped_bytes = len - bad,
                        "truncating a torn tail left by a crash (it was never acknowledged)"
                    );
                    segment
                        .file
                        .set_len(bad)
                        .map_err(EngineError::io(&segment.path))?;
                    segment.file.sync_data().map_err(EngineError::io(&segment.path))?;
                    break;
                }
            }
        }
        let end = offset + at as u64;
        segment
            .durable_len
            .store(end, std::sync::atomic::Ordering::Release);
        offset = end;
        write_offset = offset;
    }
    let head = next_position - 1;
    if let Some(last_run) = runs.last()
        && last_run.last_position() != manifest.indexed_through
    {
        return Err(EngineError::corruption(
            last_run.run.path(),
            0,
            "the runs do not end where the manifest says the index ends",
        ));
    }
    let segment = segments.last().cloned().ok_or(EngineError::Closed)?;
    Ok(Recovered {
        lock,
        archive: opened.archive,
        manifest,
        runs,
        memtable,
        head,
        writer: WriterStart {
            segment,
            write_offset,
            next_position,
            last_recorded_at,
        },
        segments,
    })
}

fn read_range(file: &dyn File, path: &Path, from: u64, to: u64) -> Result<Vec<u8>> {
    if to <= from {
        return Ok(Vec::new());
    }
    let mut data = vec![
        0u8;
        usize::try_from(to - from).map_err(|_| EngineError::corruption(
            path,
            from,
            "segment too large"
        ))?
    ];
    file.read_exact_at(&mut data, from)
        .map_err(EngineError::io(path))?;
    Ok(data)
}

/// Decodes the frame at `at`: its events with their record offsets (relative to `data`'s
/// start minus `at`... relative to `at`), and the bytes it takes.
pub(crate) fn parse_frame(
    data: &[u8],
    at: usize,
    expected_position: u64,
) -> std::result::Result<(Vec<(Event, usize)>, usize), String> {
    let rest = &data[at..];
    let header = FrameHeader::decode(rest).map_err(str::to_owned)?;
    let body_end = FRAME_HEADER_LEN
        .checked_add(header.body_len as usize)
        .filter(|&end| end <= rest.len())
        .ok_or("frame runs past the end of the file")?;
    let body = &rest[FRAME_HEADER_LEN..body_end];
    if !header.check_body(rest, body) {
        return Err("frame checksum mismatch".into());
    }
    if header.first_position != expected_position {
        return Err(format!(
            "frame starts at position {} but the log continues at {expected_position}",
            header.first_position
        ));
    }
    let ranges = split_records(body, header.event_count).map_err(str::to_owned)?;
    let body = Bytes::copy_from_slice(body);
    let mut events = Vec::with_capacity(ranges.len());
    for (i, range) in ranges.into_iter().enumerate() {
        let record_at = FRAME_HEADER_LEN + range.start - crate::log::format::RECORD_HEADER_LEN;
        let event = Event::from_bytes(body.slice(range)).map_err(|e| e.to_string())?;
        if event.position() != expected_position + i as u64 {
            return Err(format!(
                "record holds position {}, expected {}",
                event.position(),
                expected_position + i as u64
            ));
        }
        events.push((event, record_at));
    }
    Ok((events, body_end))
}

/// The offset of the first valid frame at or after `from`, if any.
fn find_valid_frame(data: &[u8], from: usize) -> Option<usize> {
    let magic = FRAME_MAGIC.to_le_bytes();
    let mut at = from;
    while at + FRAME_HEADER_LEN <= data.len() {
        if data[at..at + 4] == magic
            && let Ok(header) = FrameHeader::decode(&data[at..])
        {
            let end = at + FRAME_HEADER_LEN + header.body_len as usize;
            if end <= data.len() && header.check_body(&data[at..], &data[at + FRAME_HEADER_LEN..end]) {
                return Some(at);
            }
        }
        at += 1;
    }
    None
}

fn open_runs(fs: &dyn FileSystem, index_dir: &Path, manifest: &Manifest) -> Result<Vec<Arc<RunSource>>> {
    let mut runs = Vec::with_capacity(manifest.runs.len());
    for listed in &manifest.runs {
        let path = index_dir.join(manifest::run_file_name(listed.id));
        let run = Run::open(fs, &path)?;
        let table =
            PositionTable::decode(run.extra()).map_err(|reason| EngineError::corruption(&path, 0, reason))?;
        runs.push(Arc::new(RunSource::new(listed.id, listed.level, run, table)));
    }
    runs.sort_by_key(|r| r.first_position());
    let mut expected = 1u64;
    for run in &runs {
        if run.first_position() != expected {
            return Err(EngineError::corruption(
                run.run.path(),
                0,
                format!(
                    "index run starts at position {} where {expected} was expected",
                    run.first_position()
                ),
            ));
        }
        expected = run.table.end_position;
    }
    // Files not in the manifest are left from an interrupted flush or compaction.
    let names = fs.list_dir(index_dir).map_err(EngineError::io(index_dir))?;
    for name in names {
        let listed =
            manifest::parse_run_file_name(&name).is_some_and(|id| manifest.runs.iter().any(|r| r.id == id));
        if !listed && name != manifest::FILE_NAME && name != "LOCK" {
            let path = index_dir.join(&name);
            tracing::info!(file = %path.display(), "removing an index file the manifest does not list");
            fs.remove_file(&path).map_err(EngineError::io(&path))?;
        }
    }
    Ok(runs)
}

/// The log's segments: the archived ones (`archived`, from the archive manifest), then the
/// local files, contiguous by number. A local file of an archived segment is left by a crash
/// between the archive record and the file's removal: it is removed now.
fn open_segments(
    fs: &dyn FileSystem,
    log_dir: &Path,
    archived: Vec<Arc<Segment>>,
) -> Result<Vec<Arc<Segment>>> {
    let archived_through = archived.last().map_or(0, |s| s.no);
    let mut numbers: Vec<u32> = fs
        .list_dir(log_dir)
        .map_err(EngineError::io(log_dir))?
        .iter()
        .filter_map(|name| parse_segment_file_name(name))
        .collect();
    numbers.sort_unstable();
    let (stale, local): (Vec<u32>, Vec<u32>) = numbers.into_iter().partition(|&no| no <= archived_through);
    if !stale.is_empty() {
        for &no in &stale {
            let path = log_dir.join(segment_file_name(no));
            tracing::info!(file = %path.display(), "removing the local copy of an archived segment");
            fs.remove_file(&path).map_err(EngineError::io(&path))?;
        }
        fs.sync_dir(log_dir).map_err(EngineError::io(log_dir))?;
    }
    if archived_through > 0 && local.first() != Some(&(archived_through + 1)) {
        return Err(EngineError::corruption(
            &log_dir.join(segment_file_name(archived_through + 1)),
            0,
            format!(
                "segments up to {archived_through} are archived but segment {} is missing",
                archived_through + 1
            ),
        ));
    }
    let numbers = local;
    let mut segments: Vec<Arc<Segment>> = archived;
    segments.reserve(numbers.len());
    for (i, &no) in numbers.iter().enumerate() {
        let path = log_dir.join(segment_file_name(no));
        if let Some(previous) = segments.last()
            && previous.no + 1 != no
        {
            return Err(EngineError::corruption(
                &path,
                0,
                format!("segment {} is missing", previous.no + 1),
            ));
        }
        let file = fs
            .open(&path, OpenMode::ReadWrite)
            .map_err(EngineError::io(&path))?;
        let len = file.len().map_err(EngineError::io(&path))?;
        let mut head = vec![0u8; SEGMENT_HEADER_LEN.min(len as usize)];
        file.read_exact_at(&mut head, 0).map_err(EngineError::io(&path))?;
        let header = match SegmentHeader::decode(&head) {
            Ok(header) => header,
            Err(reason) => {
                if i + 1 == numbers.len() && len <= SEGMENT_HEADER_LEN as u64 && !segments.is_empty() {
                    tracing::warn!(file = %path.display(), "removing a segment whose creation a crash interrupted");
                    drop(file);
                    fs.remove_file(&path).map_err(EngineError::io(&path))?;
                    fs.sync_dir(log_dir).map_err(EngineError::io(log_dir))?;
                    break;
                }
                if i + 1 == numbers.len() && len <= SEGMENT_HEADER_LEN as u64 && segments.is_empty() {
                    // The very first segment's creation was interrupted: start it again.
                    drop(file);
                    fs.remove_file(&path).map_err(EngineError::io(&path))?;
                    return create_first_segment(fs, log_dir).map(|s| vec![s]);
                }
                return Err(EngineError::corruption(&path, 0, reason));
            }
        };
        if header.segment_no != no {
            return Err(EngineError::corruption(
                &path,
                12,
                "segment number does not match the file name",
            ));
        }
        segments.push(Arc::new(Segment {
            no,
            first_position: header.first_position,
            path,
            file,
            durable_len: AtomicU64::new(len),
        }));
    }
    if segments.is_empty() {
        segments.push(create_first_segment(fs, log_dir)?);
    }
    Ok(segments)
}

fn create_first_segment(fs: &dyn FileSystem, log_dir: &Path) -> Result<Arc<Segment>> {
    let path: PathBuf = log_dir.join(segment_file_name(1));
    let file = fs
        .open(&path, OpenMode::CreateNew)
        .map_err(EngineError::io(&path))?;
    file.write_all_at(
        &SegmentHeader {
            segment_no: 1,
            first_position: 1,
        }
        .encode(),
        0,
    )
    .map_err(EngineError::io(&path))?;
    file.sync_data().map_err(EngineError::io(&path))?;
    fs.sync_dir(log_dir).map_err(EngineError::io(log_dir))?;
    Ok(Arc::new(Segment {
        no: 1,
        first_position: 1,
        path,
        file,
        durable_len: AtomicU64::new(SEGMENT_HEADER_LEN as u64),
    }))
}
