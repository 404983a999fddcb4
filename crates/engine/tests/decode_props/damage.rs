//! Damaging a data folder and checking what the engine makes of it.
//!
//! Shared by the `decode_props` property tests and the `recovery` fuzz target (`fuzz/`, which
//! includes this file by path), so the same contract is checked on stable in CI and under a
//! fuzzer. It uses only the engine, core and testkit crates, `bytes`, `serde_json` and `uuid`.
//!
//! # How
//! A [`Fixture`] is a data folder written by the engine itself (a few dozen commits, several
//! segments; in the [`Kind::Indexed`] variant also run files and a manifest, so that part of
//! the log lies before the index checkpoint and is not replayed at start-up). Each case copies
//! its files into a fresh [`FaultFs`], applies [`Damage`] (byte flips, truncations, appended
//! garbage), opens the engine on it and checks the result.
//!
//! # The contract ([`Fixture::check`], whatever the damage)
//! - `Engine::open` does not panic. When it refuses, the error is `Corruption` or `Io` and
//!   names a file of the data folder.
//! - When it opens, every read (a full scan, each aggregate, each event by id) either fails
//!   with `Corruption` or `Io` naming a file, or returns committed events byte for byte, and
//!   only those at or below the head: the store is a prefix of what was committed, never a
//!   log with a hole or a changed event.
//! - `verify` agrees with the reads: when a read failed, it reports a problem. When it reports
//!   none, the store takes a new commit at `head + 1`, and a reopen shows the same prefix
//!   followed by that event.
//!
//! # What a single damage must lead to ([`Fixture::expect`])
//! Where recovery is responsible for the bytes (every segment header; the log after the index
//! checkpoint; the manifest), the outcome is exact: a damaged last frame of the last segment
//! or a truncated last segment is a torn tail, cut off, leaving exactly the events of the
//! frames before it; damage anywhere else is refused with `Corruption` naming the file. Damage
//! before the checkpoint, which start-up does not read, is left to the contract above.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use factstore_core::{
    AggregateQuery, Commit, Event, EventQuery, ExpectedVersion, NewEvent, StoreError, Timestamp,
};
use factstore_engine::index::manifest::{self, Manifest};
use factstore_engine::log::format::{
    FRAME_HEADER_LEN, FRAME_MAGIC, FrameHeader, Loc, SEGMENT_HEADER_LEN, parse_segment_file_name,
};
use factstore_engine::{Engine, EngineError, EngineOptions};
use factstore_testkit::faultfs::FaultFs;
use factstore_testkit::wait;
use serde_json::json;
use uuid::Uuid;

/// Where the data folder lives in every `FaultFs`.
pub const DIR: &str = "/data";
/// The smallest segment the engine accepts, so that a few commits fill several segments.
const SEGMENT_BYTES_MAX: u64 = 4096;
/// Memtable size of [`Kind::Indexed`]: small, so that a few commits flush several runs.
const INDEXED_MEMTABLE_EVENTS_MAX: usize = 8;
/// Bounds of the fixture: it must take its shape within this many commits.
const FIXTURE_COMMITS_MAX: u64 = 400;
/// Bounds every loop over pages.
const READ_PAGES_MAX: usize = 10_000;
/// How long building a fixture waits for the indexer after one commit.
const INDEXER_WAIT_MAX: Duration = Duration::from_secs(20);
/// Aggregate ids of the fixture's commits.
const AGGREGATES: u64 = 4;
/// The aggregate the "store still works" commit goes to; never in the fixture.
const FRESH_AGGREGATE: &str = "fresh-after-recovery";

/// Which data folder to damage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Log segments only: no flush happened, start-up replays the whole log.
    LogOnly,
    /// Log segments, run files and a manifest: start-up replays only the tail of the log.
    Indexed,
}

/// A change to one file of the fixture. `file` indexes [`Fixture::files`]; the other numbers
/// are taken modulo what fits, so any value names some damage (see [`Fixture::resolve`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// XOR the byte at `offset` with `mask` (0 counts as 1).
    Flip { file: usize, offset: usize, mask: u8 },
    /// Cut the file to `len` bytes (less than its length).
    Truncate { file: usize, len: usize },
    /// Append bytes at the end.
    Append { file: usize, bytes: Vec<u8> },
}

impl Damage {
    /// Reads a fixture kind and up to four damages from fuzzer bytes. Each damage takes a tag
    /// byte, a file byte and its arguments; whatever is left over is ignored.
    pub fn parse(data: &[u8]) -> (Kind, Vec<Damage>) {
        const DAMAGES_MAX: usize = 4;
        const APPEND_BYTES_MAX: usize = 256;
        let kind = match data.first() {
            Some(b) if b & 1 == 1 => Kind::Indexed,
            _ => Kind::LogOnly,
        };
        let mut rest = data.get(1..).unwrap_or_default();
        let mut take = |n: usize| -> Option<&[u8]> {
            let (head, tail) = rest.split_at_checked(n)?;
            rest = tail;
            Some(head)
        };
        let mut damages = Vec::new();
        while damages.len() < DAMAGES_MAX {
            let Some(&[tag, file]) = take(2) else {
                break;
            };
            let file = usize::from(file);
            let damage = match tag % 3 {
                0 => {
                    let Some(&[a, b, c, d, mask]) = take(5) else {
                        break;
                    };
                    let offset = u32::from_le_bytes([a, b, c, d]) as usize;
                    Damage::Flip { file, offset, mask }
                }
                1 => {
                    let Some(&[a, b, c, d]) = take(4) else {
                        break;
                    };
                    let len = u32::from_le_bytes([a, b, c, d]) as usize;
                    Damage::Truncate { file, len }
                }
                _ => {
                    let Some(&[n]) = take(1) else {
                        break;
                    };
                    let n = usize::from(n).min(APPEND_BYTES_MAX);
                    let Some(bytes) = take(n) else {
                        break;
                    };
                    Damage::Append {
                        file,
                        bytes: bytes.to_vec(),
                    }
                }
            };
            damages.push(damage);
        }
        (kind, damages)
    }

    fn file(&self) -> usize {
        match self {
            Damage::Flip { file, .. } | Damage::Truncate { file, .. } | Damage::Append { file, .. } => *file,
        }
    }
}

/// One frame of a fixture segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameSpan {
    /// Byte range of the whole frame (header and body) in its segment.
    pub start: usize,
    pub end: usize,
    pub first_position: u64,
    pub events: u64,
}

/// A segment of the fixture and its frames.
#[derive(Debug, Clone)]
pub struct SegmentInfo {
    /// Index in [`Fixture::files`].
    pub file: usize,
    pub no: u32,
    pub first_position: u64,
    pub frames: Vec<FrameSpan>,
}

/// A data folder written by the engine, and what was committed to it.
#[derive(Debug)]
pub struct Fixture {
    pub kind: Kind,
    /// Every file, by path relative to [`DIR`]: the segments in order, then the index files.
    pub files: Vec<(String, Vec<u8>)>,
    /// The binary form of every committed event; `committed[i]` is at position `i + 1`.
    pub committed: Vec<Bytes>,
    pub segments: Vec<SegmentInfo>,
    /// Where start-up begins to replay the log: segment number and offset.
    pub resume: (u32, usize),
}

/// What one damage must lead to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Open succeeds, every read is clean, verify finds nothing, with exactly this many events.
    Opens { events: u64 },
    /// Open fails with `Corruption`, naming this file (relative to [`DIR`]) when given.
    Refuses { file: Option<String> },
    /// Only the contract of [`Fixture::check`].
    Contract,
}

/// What the engine made of a damaged folder.
#[derive(Debug)]
pub enum Outcome {
    Refused(EngineError),
    Opened {
        head: u64,
        /// Every read succeeded.
        reads_clean: bool,
        /// `verify` found no problem.
        verified: bool,
    },
}

fn options(fs: &FaultFs, kind: Kind) -> EngineOptions {
    EngineOptions {
        fs: Arc::new(fs.clone()),
        segment_bytes_max: SEGMENT_BYTES_MAX,
        memtable_events_max: match kind {
            Kind::LogOnly => 1 << 20,
            Kind::Indexed => INDEXED_MEMTABLE_EVENTS_MAX,
        },
        ..EngineOptions::default()
    }
}

/// The `i`-th commit of a fixture: deterministic but for `recorded_at`, which the writer sets.
fn fixture_commit(i: u64) -> Commit {
    let aggregate = format!("account-{}", i % AGGREGATES);
    let events = (0..1 + i % 3)
        .map(|j| {
            let mut event = NewEvent::new(
                "Account",
                if j.is_multiple_of(2) {
                    "Deposited"
                } else {
                    "Withdrawn"
                },
                json!({"commit": i, "event": j, "note": "x".repeat((i * 7 % 40) as usize)}),
            )
            .with_id(Uuid::from_u128(
                0x0190_0000_0000_7000_8000_0000_0000_0000 | (u128::from(i) << 8) | u128::from(j),
            ))
            .with_created_at(Timestamp::from_micros(
                1_700_000_000_000_000 + (i * 10 + j) as i64,
            ));
            if i.is_multiple_of(3) {
                event = event
                    .with_metadata(json!({"correlation_id": format!("c-{i}"), "causation_id": "cause"}))
                    .with_created_by("fixture");
            }
            event
        })
        .collect();
    Commit::single(&aggregate, ExpectedVersion::Any, events)
}

/// Every event, page by page, by a full scan.
fn read_all(engine: &Engine) -> Result<Vec<Event>, EngineError> {
    let mut out = Vec::new();
    let mut after = 0;
    for _ in 0..READ_PAGES_MAX {
        let page = engine.read_events(&EventQuery::all(after, 100))?;
        if page.events.is_empty() {
            return Ok(out);
        }
        assert!(page.next_after_position > after, "a page did not advance");
        after = page.next_after_position;
        out.extend(page.events);
    }
    panic!("more than {READ_PAGES_MAX} pages");
}

/// Parses the frames of a segment the engine wrote (so they are all well formed).
fn frames_of(bytes: &[u8]) -> Vec<FrameSpan> {
    let mut frames = Vec::new();
    let mut at = SEGMENT_HEADER_LEN;
    while at < bytes.len() {
        let header = FrameHeader::decode(&bytes[at..]).expect("the fixture's frames are valid");
        let end = at + FRAME_HEADER_LEN + header.body_len as usize;
        assert!(end <= bytes.len(), "a fixture frame runs past its segment");
        frames.push(FrameSpan {
            start: at,
            end,
            first_position: header.first_position,
            events: u64::from(header.event_count),
        });
        at = end;
    }
    frames
}

/// Waits until no flush is pending or running, so that run boundaries do not depend on timing.
fn wait_for_indexer(engine: &Engine) {
    wait::until_blocking("the indexer to flush", INDEXER_WAIT_MAX, || {
        let state = engine.shared().index.state.read();
        state.active.len() < INDEXED_MEMTABLE_EVENTS_MAX && state.frozen.is_empty()
    });
}

/// Asserts that an error is a clean refusal: `Corruption` or `Io`, naming a data file.
fn assert_names_a_file(error: &EngineError, what: &str) {
    match error {
        EngineError::Corruption { path, .. } | EngineError::Io { path, .. } => assert!(
            path.starts_with(DIR),
            "{what}: the error names {}, outside the data folder: {error}",
            path.display()
        ),
        other => panic!("{what}: expected a Corruption or Io error naming a file, got {other:?}"),
    }
}

impl Fixture {
    /// Writes a fixture with the engine: at least three segments, the last holding at least
    /// three frames; for [`Kind::Indexed`] also runs, and at least three frames after the
    /// checkpoint.
    pub fn build(kind: Kind) -> Fixture {
        let fs = FaultFs::new();
        let engine = Engine::open(Path::new(DIR), options(&fs, kind)).expect("open an empty store");
        for i in 0..FIXTURE_COMMITS_MAX {
            let prepared = fixture_commit(i)
                .prepare(engine.limits())
                .expect("a valid commit");
            engine.commit_blocking(prepared).expect("commit to the fixture");
            if kind == Kind::Indexed {
                wait_for_indexer(&engine);
            }
            if i >= 8 && Self::has_shape(&fs, kind) {
                break;
            }
        }
        let committed: Vec<Bytes> = read_all(&engine)
            .expect("read the fixture back")
            .iter()
            .map(|e| e.as_bytes().clone())
            .collect();
        engine.close();
        drop(engine);
        let fixture = Self::from_files(&fs, kind, committed);
        assert!(Self::has_shape(&fs, kind), "the fixture did not take its shape");
        fixture
    }

    fn has_shape(fs: &FaultFs, kind: Kind) -> bool {
        let log = format!("{DIR}/log");
        let names = fs.file_names(&log);
        let Some(last) = names.last() else {
            return false;
        };
        let last_frames = fs
            .read_file(format!("{log}/{last}"))
            .map_or(0, |b| frames_of(&b).len());
        if names.len() < 3 || last_frames < 3 {
            return false;
        }
        match kind {
            Kind::LogOnly => true,
            Kind::Indexed => {
                let Ok(Some(manifest)) = Manifest::load(fs, Path::new(&format!("{DIR}/index"))) else {
                    return false;
                };
                let resume = Loc(manifest.resume);
                let resume_segment = format!("{:010}.seg", resume.segment_no());
                // At least three frames after the checkpoint, all in the last segment, and
                // at least two runs.
                resume_segment == *last
                    && fs
                        .read_file(format!("{log}/{last}"))
                        .map(|b| frames_of(&b))
                        .is_some_and(|f| {
                            f.iter().filter(|f| f.start >= resume.offset() as usize).count() >= 3
                        })
                    && manifest.runs.len() >= 2
            }
        }
    }

    fn from_files(fs: &FaultFs, kind: Kind, committed: Vec<Bytes>) -> Fixture {
        let mut files = Vec::new();
        let mut segments = Vec::new();
        for name in fs.file_names(format!("{DIR}/log")) {
            let bytes = fs.read_file(format!("{DIR}/log/{name}")).expect("a listed file");
            let no = parse_segment_file_name(&name).expect("only segments in log/");
            let frames = frames_of(&bytes);
            let first_position = frames.first().map_or(0, |f| f.first_position);
            segments.push(SegmentInfo {
                file: files.len(),
                no,
                first_position,
                frames,
            });
            files.push((format!("log/{name}"), bytes));
        }
        for name in fs.file_names(format!("{DIR}/index")) {
            let bytes = fs
                .read_file(format!("{DIR}/index/{name}"))
                .expect("a listed file");
            files.push((format!("index/{name}"), bytes));
        }
        let manifest = Manifest::load(fs, Path::new(&format!("{DIR}/index"))).expect("a readable manifest");
        let resume = match manifest {
            Some(m) if m.resume != 0 => (Loc(m.resume).segment_no(), Loc(m.resume).offset() as usize),
            _ => (segments.first().map_or(1, |s| s.no), SEGMENT_HEADER_LEN),
        };
        let fixture = Fixture {
            kind,
            files,
            committed,
            segments,
            resume,
        };
        fixture.assert_consistent();
        fixture
    }

    /// The fixture's own bookkeeping agrees: frames cover every committed position once.
    fn assert_consistent(&self) {
        let mut next = 1;
        for segment in &self.segments {
            for frame in &segment.frames {
                assert_eq!(frame.first_position, next, "fixture frames are dense");
                next += frame.events;
            }
        }
        assert_eq!(
            next - 1,
            self.committed.len() as u64,
            "the frames hold every committed event"
        );
        for (i, bytes) in self.committed.iter().enumerate() {
            let event = Event::from_bytes(bytes.clone()).expect("a committed event decodes");
            assert_eq!(event.position(), i as u64 + 1);
        }
    }

    pub fn last_segment(&self) -> &SegmentInfo {
        self.segments.last().expect("a fixture has segments")
    }

    fn segment_of_file(&self, file: usize) -> Option<(usize, &SegmentInfo)> {
        self.segments.iter().enumerate().find(|(_, s)| s.file == file)
    }

    /// The damage with its numbers brought into range of the fixture (`None` when it changes
    /// nothing).
    pub fn resolve(&self, damage: &Damage) -> Option<Damage> {
        let lens: Vec<usize> = self.files.iter().map(|(_, b)| b.len()).collect();
        resolve(damage, &lens)
    }

    /// A fresh disk holding the fixture with `damage` applied (resolved first).
    pub fn install(&self, damage: &[Damage]) -> FaultFs {
        let mut files: Vec<Vec<u8>> = self.files.iter().map(|(_, b)| b.clone()).collect();
        for damage in damage {
            // Each damage is brought into range of the files as the ones before left them.
            let lens: Vec<usize> = files.iter().map(Vec::len).collect();
            let Some(damage) = resolve(damage, &lens) else {
                continue;
            };
            match damage {
                Damage::Flip { file, offset, mask } => files[file][offset] ^= mask,
                Damage::Truncate { file, len } => files[file].truncate(len),
                Damage::Append { file, bytes } => files[file].extend_from_slice(&bytes),
            }
        }
        let fs = FaultFs::new();
        for dir in ["log", "index"] {
            fs.install_dir(format!("{DIR}/{dir}")).expect("install a folder");
        }
        for ((name, _), bytes) in self.files.iter().zip(&files) {
            fs.install_file(format!("{DIR}/{name}"), bytes)
                .expect("install a file");
        }
        fs
    }

    /// Events in the frames of segments before `segment` and, in it, of frames ending at or
    /// before `len`.
    fn events_kept(&self, segment: usize, len: usize) -> u64 {
        let info = &self.segments[segment];
        let kept: u64 = info
            .frames
            .iter()
            .filter(|f| f.end <= len)
            .map(|f| f.events)
            .sum();
        info.first_position.saturating_sub(1) + kept
    }

    /// Whether start-up replays the bytes at `offset` of segment `no`.
    fn replayed(&self, no: u32, offset: usize) -> bool {
        (no, offset) >= self.resume
    }

    /// What one damage must lead to (see the module docs).
    pub fn expect(&self, damage: &Damage) -> Expect {
        let Some(damage) = self.resolve(damage) else {
            return Expect::Opens {
                events: self.committed.len() as u64,
            };
        };
        let file = damage.file();
        let name = self.files[file].0.clone();
        let len = self.files[file].1.len();
        let refuse = || Expect::Refuses {
            file: Some(name.clone()),
        };
        let all = self.committed.len() as u64;
        let Some((index, segment)) = self.segment_of_file(file) else {
            // An index file.
            let is_manifest = name == format!("index/{}", manifest::FILE_NAME);
            return match damage {
                // Bytes after the manifest's body are not read.
                Damage::Append { .. } if is_manifest => Expect::Opens { events: all },
                Damage::Flip { .. } | Damage::Truncate { .. } if is_manifest => refuse(),
                // A run's footer is at its end; garbage that ends in a run's magic could pass
                // as one.
                Damage::Append { bytes, .. } if !contains(&bytes, b"FACTRUN") => refuse(),
                Damage::Truncate { .. } => refuse(),
                // A flipped block is found when it is read, not at open.
                _ => Expect::Contract,
            };
        };
        let last = index + 1 == self.segments.len();
        let frame_at = |offset: usize| segment.frames.iter().find(|f| (f.start..f.end).contains(&offset));
        match damage {
            // Every segment header is checked at open.
            Damage::Flip { offset, .. } if offset < SEGMENT_HEADER_LEN => refuse(),
            Damage::Flip { offset, .. } => {
                let frame = frame_at(offset).expect("every byte after the header is in a frame");
                if !self.replayed(segment.no, frame.start) {
                    Expect::Contract
                } else if last && frame.end == len {
                    Expect::Opens {
                        events: all - frame.events,
                    }
                } else {
                    refuse()
                }
            }
            Damage::Truncate { len: to, .. } => {
                let resume_here = segment.no == self.resume.0;
                if segment.no < self.resume.0 {
                    Expect::Contract
                } else if resume_here && to < self.resume.1 {
                    // The index checkpoint points past the end: acknowledged data is gone.
                    Expect::Refuses { file: None }
                } else if last {
                    Expect::Opens {
                        events: self.events_kept(index, to),
                    }
                } else {
                    // The refusal may name this segment or the next (which then starts at a
                    // position the log does not reach).
                    Expect::Refuses { file: None }
                }
            }
            Damage::Append { bytes, .. } => {
                // A fuzzer can forge a valid (empty) frame: then anything goes.
                if contains(&bytes, &FRAME_MAGIC.to_le_bytes()) || segment.no < self.resume.0 {
                    Expect::Contract
                } else if last {
                    Expect::Opens { events: all }
                } else {
                    refuse()
                }
            }
        }
    }

    /// Opens the damaged folder and checks the contract of the module docs; returns what
    /// happened for the caller to compare with an [`Expect`].
    pub fn check(&self, damage: &[Damage]) -> Outcome {
        let fs = self.install(damage);
        let engine = match Engine::open(Path::new(DIR), options(&fs, self.kind)) {
            Ok(engine) => engine,
            Err(error) => {
                assert_names_a_file(&error, "open");
                return Outcome::Refused(error);
            }
        };
        let all = self.committed.len() as u64;
        let head = engine.head().position;
        // Appended bytes may forge frames after the committed ones; nothing else can add.
        let forged = head > all;
        assert!(
            !forged || damage.iter().any(|d| matches!(d, Damage::Append { .. })),
            "the head {head} is past the {all} committed events"
        );
        let known = head.min(all);
        let mut reads_clean = true;

        match read_all(&engine) {
            Ok(events) => {
                assert_eq!(
                    events.len() as u64,
                    head,
                    "a scan returns every event up to the head"
                );
                for (i, event) in events.iter().enumerate() {
                    assert_eq!(event.position(), i as u64 + 1, "positions are dense");
                    if let Some(committed) = self.committed.get(i) {
                        assert_eq!(event.as_bytes(), committed, "position {} changed", i + 1);
                    }
                }
            }
            Err(error) => {
                assert_names_a_file(&error, "scan");
                reads_clean = false;
            }
        }

        for a in 0..AGGREGATES {
            let id = format!("account-{a}");
            let expected: Vec<&Bytes> = self.committed[..known as usize]
                .iter()
                .filter(|b| Event::from_bytes((*b).clone()).is_ok_and(|e| e.aggregate_id() == id))
                .collect();
            match engine.read_aggregate(&AggregateQuery::forward(&id, 100_000)) {
                Ok(page) => {
                    assert!(page.events.len() >= expected.len(), "{id}: events are missing");
                    for (i, event) in page.events.iter().enumerate() {
                        assert_eq!(event.aggregate_id(), id);
                        assert_eq!(event.version(), i as u64 + 1, "{id}: versions are dense");
                        match expected.get(i) {
                            Some(bytes) => assert_eq!(event.as_bytes(), *bytes, "{id}: an event changed"),
                            None => assert!(forged && event.position() > all, "{id}: an extra event"),
                        }
                    }
                }
                Err(EngineError::Store(StoreError::AggregateNotFound { .. })) => {
                    assert!(
                        expected.is_empty(),
                        "{id} is lost although its events are below the head"
                    );
                }
                Err(error) => {
                    assert_names_a_file(&error, "aggregate read");
                    reads_clean = false;
                }
            }
        }

        for bytes in &self.committed {
            let event = Event::from_bytes(bytes.clone()).expect("a committed event decodes");
            match engine.get_event(event.event_id()) {
                Ok(found) => assert!(
                    found.as_bytes() == bytes && event.position() <= head || forged && found.position() > all,
                    "get_event({}) returned another event or one past the head",
                    event.event_id()
                ),
                Err(EngineError::Store(StoreError::EventNotFound { .. })) => assert!(
                    event.position() > head,
                    "event at position {} is below the head {head} but not found",
                    event.position()
                ),
                Err(error) => {
                    assert_names_a_file(&error, "get_event");
                    reads_clean = false;
                }
            }
        }

        // verify takes the folder's lock: the store is closed for it, and opened again after.
        engine.close();
        drop(engine);
        let verified = factstore_engine::verify::verify(&fs, Path::new(DIR)).is_ok_and(|r| r.is_ok());
        assert!(reads_clean || !verified, "a read failed but verify found nothing");
        if verified {
            let engine =
                Engine::open(Path::new(DIR), options(&fs, self.kind)).expect("reopen a verified store");
            self.assert_still_works(&fs, engine, head);
        }
        Outcome::Opened {
            head,
            reads_clean,
            verified,
        }
    }

    /// A store that verifies clean takes a commit at `head + 1` and keeps it across a reopen.
    fn assert_still_works(&self, fs: &FaultFs, engine: Engine, head: u64) {
        let commit = Commit::single(
            FRESH_AGGREGATE,
            ExpectedVersion::Exact(0),
            vec![NewEvent::new("Fresh", "Written", json!({"after": head}))],
        )
        .prepare(engine.limits())
        .expect("a valid commit");
        let outcome = engine
            .commit_blocking(commit)
            .expect("a recovered store takes commits");
        assert_eq!(outcome.position, head + 1, "the commit goes right after the head");
        let before = read_all(&engine).expect("read before reopening");
        engine.close();
        drop(engine);
        let engine = Engine::open(Path::new(DIR), options(fs, self.kind)).expect("reopen after a commit");
        let after = read_all(&engine).expect("read after reopening");
        assert_eq!(after, before, "a reopen shows the same events");
        assert_eq!(after.len() as u64, head + 1);
        assert_eq!(after.last().map(Event::aggregate_id), Some(FRESH_AGGREGATE));
        engine.close();
        drop(engine);
        let report = factstore_engine::verify::verify(fs, Path::new(DIR)).expect("verify runs");
        assert!(
            report.is_ok(),
            "verify after the new commit: {:?}",
            report.problems
        );
    }

    /// Checks the contract and, for a single damage, its exact [`Expect`]ation.
    pub fn run(&self, damage: &[Damage]) -> Outcome {
        let outcome = self.check(damage);
        if let [single] = damage {
            assert_expected(&self.expect(single), &outcome, &self.files);
        }
        outcome
    }
}

/// Asserts that `outcome` is what `expect` says.
pub fn assert_expected(expect: &Expect, outcome: &Outcome, files: &[(String, Vec<u8>)]) {
    match (expect, outcome) {
        (Expect::Contract, _) => {}
        (
            Expect::Opens { events },
            Outcome::Opened {
                head,
                reads_clean,
                verified,
            },
        ) => {
            assert_eq!(head, events, "open kept the wrong number of events");
            assert!(
                *reads_clean && *verified,
                "a store that must open cleanly did not read or verify"
            );
        }
        (Expect::Refuses { file }, Outcome::Refused(error)) => {
            let EngineError::Corruption { path, .. } = error else {
                panic!("expected a Corruption error, got {error}");
            };
            if let Some(file) = file {
                assert_eq!(
                    *path,
                    PathBuf::from(DIR).join(file),
                    "the refusal names the wrong file: {error}"
                );
            }
            assert!(
                files
                    .iter()
                    .any(|(name, _)| PathBuf::from(DIR).join(name) == *path),
                "the refusal names no file of the folder: {error}"
            );
        }
        (expect, outcome) => panic!("expected {expect:?}, got {outcome:?}"),
    }
}

/// `damage` with its numbers brought into range of files of these lengths.
fn resolve(damage: &Damage, lens: &[usize]) -> Option<Damage> {
    let file = damage.file() % lens.len();
    let len = lens[file];
    match damage {
        Damage::Flip { offset, mask, .. } if len > 0 => Some(Damage::Flip {
            file,
            offset: offset % len,
            mask: (*mask).max(1),
        }),
        Damage::Truncate { len: to, .. } if len > 0 => Some(Damage::Truncate { file, len: to % len }),
        Damage::Append { bytes, .. } if !bytes.is_empty() => Some(Damage::Append {
            file,
            bytes: bytes.clone(),
        }),
        _ => None,
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
