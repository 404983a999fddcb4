//! Offline verification of a data folder: every record, every frame, every index entry.
//!
//! `factstore verify` runs this on a folder no server is using: it holds the folder's lock
//! (the `LOCK` file a server holds while it runs, created empty if missing) for the whole
//! check, so it refuses a folder a server is writing, and no server opens the folder while it
//! reads. Apart from that lock it reads, never writes, and reports every problem it finds rather than stopping at the first: a checksum that does not
//! match, a position or version out of sequence, an event id stored twice, an index entry that
//! is missing, wrong, or extra, a run file that is damaged. Memory grows with the number of
//! aggregates and of events (a set of event ids), which is acceptable for an offline tool.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use factstore_core::Event;

use crate::error::Result;
use crate::index::keys::{self, TermKind};
use crate::index::manifest::{self, Manifest};
use crate::index::run::Run;
use crate::index::table::PositionTable;
use crate::io::{FileSystem, OpenMode};
use crate::log::format::{
    FRAME_HEADER_LEN, FrameHeader, Loc, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN, SegmentHeader,
    parse_segment_file_name, segment_file_name, split_records,
};

/// What verification found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub segments: u64,
    pub frames: u64,
    pub events: u64,
    pub aggregates: u64,
    pub runs: u64,
    pub index_entries: u64,
    pub snapshots: u64,
    /// Segments in cold storage (by the archive manifest).
    pub archived_segments: u64,
    /// Archived segments downloaded and checked.
    pub archived_checked: u64,
    pub problems: Vec<String>,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

struct IndexedRun {
    run: Run,
    table: PositionTable,
    path: std::path::PathBuf,
}

/// Checks the store in `dir`. Archived segments are checked by their manifest only (see
/// [`verify_with_archive`]).
pub fn verify(fs: &dyn FileSystem, dir: &Path) -> Result<Report> {
    verify_with_archive(fs, dir, None)
}

/// Where a segment's bytes come from.
enum Source {
    Local(u32),
    Archived(crate::archive::ArchivedSegment),
}

/// Checks the store in `dir`. With `cold`, archived segments are downloaded and checked like
/// local ones (checksum against the archive manifest, then every frame and record); without,
/// only the archive manifest is checked, and the checks that need the archived events (an
/// aggregate's first versions, the index entries of archived positions) are relaxed.
pub fn verify_with_archive(
    fs: &dyn FileSystem,
    dir: &Path,
    cold: Option<&dyn crate::archive::ColdStore>,
) -> Result<Report> {
    // A running server changes the folder under the check: what it reports would be neither
    // the folder's state before nor after.
    let _lock = fs.lock_dir(dir).map_err(crate::EngineError::io(dir))?;
    let mut report = Report::default();
    let archive_path = dir.join(crate::archive::manifest::FILE_NAME);
    let mut archived = Vec::new();
    if fs
        .exists(&archive_path)
        .map_err(crate::EngineError::io(&archive_path))?
    {
        match read_archive_manifest(fs, &archive_path) {
            Ok(records) => archived = records,
            Err(problem) => report.problems.push(problem),
        }
    }
    report.archived_segments = archived.len() as u64;
    // Without the cold store, archived events are not read: checks that need them are relaxed.
    let mut partial = cold.is_none() && !archived.is_empty();
    let log_dir = dir.join("log");
    let index_dir = dir.join("index");

    let manifest = match Manifest::load(fs, &index_dir) {
        Ok(m) => m.unwrap_or_default(),
        Err(e) => {
            report.problems.push(e.to_string());
            Manifest::default()
        }
    };
    let mut runs: Vec<IndexedRun> = Vec::new();
    for listed in &manifest.runs {
        let path = index_dir.join(manifest::run_file_name(listed.id));
        match Run::open(fs, &path) {
            Ok(run) => {
                if let Err(e) = run.verify() {
                    report.problems.push(e.to_string());
                }
                match PositionTable::decode(run.extra()) {
                    Ok(table) => runs.push(IndexedRun { run, table, path }),
                    Err(reason) => report
                        .problems
                        .push(format!("{}: position table: {reason}", path.display())),
                }
            }
            Err(e) => report.problems.push(e.to_string()),
        }
    }
    runs.sort_by_key(|r| r.table.first_position().unwrap_or(0));
    report.runs = runs.len() as u64;
    let mut expected_entries = vec![0u64; runs.len()];

    let mut numbers: Vec<u32> = fs
        .list_dir(&log_dir)
        .map_err(crate::EngineError::io(&log_dir))?
        .iter()
        .filter_map(|n| parse_segment_file_name(n))
        .collect();
    numbers.sort_unstable();
    let archived_through = archived.last().map_or(0, |r| r.segment_no);
    let mut sources: Vec<Source> = archived.iter().copied().map(Source::Archived).collect();
    for &no in &numbers {
        if no <= archived_through {
            report.problems.push(format!(
                "segment {no} is archived but its local file is still there (the next start removes it)"
            ));
        } else {
            sources.push(Source::Local(no));
        }
    }
    let mut next_position = 1u64;
    let mut versions: HashMap<String, (u64, String)> = HashMap::new();
    let mut ids = HashSet::new();
    let mut previous_no = 0u32;
    for source in &sources {
        report.segments += 1;
        let (no, path, data) = match source {
            Source::Local(no) => {
                let path = log_dir.join(segment_file_name(*no));
                let file = fs
                    .open(&path, OpenMode::Read)
                    .map_err(crate::EngineError::io(&path))?;
                let len = file.len().map_err(crate::EngineError::io(&path))?;
                let mut data = vec![0u8; usize::try_from(len).unwrap_or(0)];
                file.read_exact_at(&mut data, 0)
                    .map_err(crate::EngineError::io(&path))?;
                (*no, path, data)
            }
            Source::Archived(record) => {
                let Some(cold) = cold else {
                    next_position = record.last_position + 1;
                    previous_no = record.segment_no;
                    continue;
                };
                let path = std::path::PathBuf::from(format!("{}/{}", cold.describe(), record.key()));
                match crate::archive::cache::fetch_verified(cold, record) {
                    Ok(data) => {
                        report.archived_checked += 1;
                        (record.segment_no, path, data)
                    }
                    Err(e) => {
                        report.problems.push(e.to_string());
                        // Its events are unknown: relax what depends on them, as without `cold`.
                        partial = true;
                        next_position = record.last_position + 1;
                        previous_no = record.segment_no;
                        continue;
                    }
                }
            }
        };
        if previous_no + 1 != no {
            report
                .problems
                .push(format!("segment {} is missing", previous_no + 1));
        }
        previous_no = no;
        match SegmentHeader::decode(&data) {
            Ok(h) if h.segment_no == no => {
                if h.first_position != next_position {
                    report.problems.push(format!(
                        "{}: starts at position {} but the log continues at {next_position}",
                        path.display(),
                        h.first_position
                    ));
                }
            }
            Ok(_) => report.problems.push(format!(
                "{}: segment number does not match its name",
                path.display()
            )),
            Err(reason) => {
                report
                    .problems
                    .push(format!("{} at offset 0: {reason}", path.display()));
                continue;
            }
        }
        let mut at = SEGMENT_HEADER_LEN;
        while at < data.len() {
            let problem = |reason: &str| format!("{} at offset {at}: {reason}", path.display());
            let header = match FrameHeader::decode(&data[at..]) {
                Ok(h) => h,
                Err(reason) => {
                    report.problems.push(problem(reason));
                    break;
                }
            };
            let end = at + FRAME_HEADER_LEN + header.body_len as usize;
            let Some(body) = data.get(at + FRAME_HEADER_LEN..end) else {
                report
                    .problems
                    .push(problem("frame runs past the end of the file"));
                break;
            };
            if !header.check_body(&data[at..], body) {
                report.problems.push(problem("frame checksum mismatch"));
                break;
            }
            if header.first_position != next_position {
                report.problems.push(problem(&format!(
                    "frame starts at position {} but the log continues at {next_position}",
                    header.first_position
                )));
            }
            report.frames += 1;
            let ranges = match split_records(body, header.event_count) {
                Ok(r) => r,
                Err(reason) => {
                    report.problems.push(problem(reason));
                    at = end;
                    continue;
                }
            };
            for range in ranges {
                let record_offset = at + FRAME_HEADER_LEN + range.start - RECORD_HEADER_LEN;
                let loc = Loc::new(no, record_offset as u32);
                let event = match Event::from_bytes(bytes::Bytes::copy_from_slice(&body[range])) {
                    Ok(e) => e,
                    Err(e) => {
                        report
                            .problems
                            .push(format!("{} at offset {record_offset}: {e}", path.display()));
                        continue;
                    }
                };
                report.events += 1;
                if event.position() != next_position {
                    report.problems.push(format!(
                        "{} at offset {record_offset}: position {} where {next_position} was expected",
                        path.display(),
                        event.position()
                    ));
                }
                next_position = event.position() + 1;
                let entry = versions
                    .entry(event.aggregate_id().to_owned())
                    .or_insert((0, event.aggregate_type().to_owned()));
                // Without the archived events, an aggregate may first be met past version 1.
                let unseen_archived = partial && entry.0 == 0;
                if event.version() != entry.0 + 1 && !unseen_archived {
                    report.problems.push(format!(
                        "position {}: aggregate '{}' at version {} after version {}",
                        event.position(),
                        event.aggregate_id(),
                        event.version(),
                        entry.0
                    ));
                }
                if event.aggregate_type() != entry.1 {
                    report
                        .problems
                        .push(format!("position {}: aggregate type changed", event.position()));
                }
                entry.0 = event.version();
                if !ids.insert(event.event_id()) {
                    report.problems.push(format!(
                        "position {}: event id {} stored twice",
                        event.position(),
                        event.event_id()
                    ));
                }
                if event.position() <= manifest.indexed_through {
                    check_index_entries(&runs, &mut expected_entries, &event, loc, &mut report);
                }
            }
            at = end;
        }
    }
    report.aggregates = versions.len() as u64;
    let (snapshots, problems) =
        crate::snapshots::Snapshots::verify(fs, &dir.join("snapshots"), |aggregate_id| {
            versions.get(aggregate_id).map_or(0, |(version, _)| *version)
        })?;
    report.snapshots = snapshots;
    report.problems.extend(problems);
    if manifest.indexed_through > next_position - 1 {
        report.problems.push(format!(
            "the index covers positions up to {} but the log ends at {}",
            manifest.indexed_through,
            next_position - 1
        ));
    }
    if let Some(last) = archived.last()
        && last.last_position > manifest.indexed_through
    {
        report.problems.push(format!(
            "archived positions reach {} but the index checkpoint is at {}",
            last.last_position, manifest.indexed_through
        ));
    }
    for (run, expected) in runs.iter().zip(&expected_entries) {
        report.index_entries += run.run.entries();
        // The entries of archived positions that were not read are not counted.
        if run.run.entries() != *expected && !partial {
            report.problems.push(format!(
                "{}: holds {} entries, the log calls for {expected}",
                run.path.display(),
                run.run.entries()
            ));
        }
    }
    Ok(report)
}

/// The records of the archive manifest, checked for sequence; a problem when unreadable.
fn read_archive_manifest(
    fs: &dyn FileSystem,
    path: &Path,
) -> std::result::Result<Vec<crate::archive::ArchivedSegment>, String> {
    // Read without the journal's open, which may repair a torn tail: verify never writes.
    let file = fs
        .open(path, OpenMode::Read)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let len = file.len().map_err(|e| format!("{}: {e}", path.display()))?;
    let mut data = vec![0u8; usize::try_from(len).unwrap_or(0)];
    file.read_exact_at(&mut data, 0)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let bodies = crate::journal::decode_all(&data, crate::archive::manifest::MAGIC, path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut records = Vec::with_capacity(bodies.len());
    for body in bodies {
        records.push(
            crate::archive::ArchivedSegment::decode(&body).map_err(|e| format!("{}: {e}", path.display()))?,
        );
    }
    crate::archive::manifest::check_sequence(&records).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(records)
}

fn check_index_entries(
    runs: &[IndexedRun],
    expected: &mut [u64],
    event: &Event,
    loc: Loc,
    report: &mut Report,
) {
    let position = event.position();
    let Some(index) = runs.iter().position(|r| r.table.block_of(position).is_some()) else {
        report.problems.push(format!(
            "position {position} is below the index checkpoint but in no run"
        ));
        return;
    };
    let run = &runs[index];
    let mut check = |key: Vec<u8>, value: Vec<u8>, what: &str| {
        expected[index] += 1;
        match run.run.get(&key) {
            Ok(Some(found)) if found == value => {}
            Ok(Some(_)) => report.problems.push(format!(
                "{}: wrong {what} entry for position {position}",
                run.path.display()
            )),
            Ok(None) => report.problems.push(format!(
                "{}: missing {what} entry for position {position}",
                run.path.display()
            )),
            Err(e) => report.problems.push(e.to_string()),
        }
    };
    let with_loc = keys::position_loc_value(position, loc).to_vec();
    check(
        keys::with_suffix(&keys::aggregate_prefix(event.aggregate_id()), event.version()),
        with_loc.clone(),
        "aggregate",
    );
    check(keys::event_id_key(event.event_id()), with_loc, "event id");
    let terms = [
        (TermKind::EventType, Some(event.event_type())),
        (TermKind::Correlation, event.correlation_id()),
        (TermKind::Causation, event.causation_id()),
    ];
    for (kind, term) in terms {
        if let Some(term) = term {
            check(
                keys::with_suffix(&keys::term_prefix(kind.byte(), term), position),
                loc.0.to_le_bytes().to_vec(),
                "term",
            );
        }
    }
    if let Some(block) = run.table.block_of(position) {
        let sample = run.table.samples[block];
        let created = event.created_at().as_micros();
        if created < sample.min_created || created > sample.max_created {
            report.problems.push(format!(
                "{}: the time range of position {position}'s block is wrong",
                run.path.display()
            ));
        }
        if sample.position == position && sample.loc != loc {
            report.problems.push(format!(
                "{}: the location of position {position} is wrong",
                run.path.display()
            ));
        }
    }
}
