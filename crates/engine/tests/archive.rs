//! Archiving to cold storage: sealed segments move to an object store and every read returns
//! them as before; a failed or corrupt upload never frees the hot copy; a crash at any step of
//! archiving loses nothing and leaves no event readable twice.
//!
//! The disk is `FaultFs` seen through a `Process` that can be killed after its Nth change to
//! the disk; the cold store is `object_store`'s in-memory store behind a wrapper that fails or
//! corrupts uploads on command.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use factstore_core::{
    AggregateQuery, Commit, Direction, Event, EventFilter, EventQuery, ExpectedVersion, NewEvent, Timestamp,
};
use factstore_engine::archive::{ArchiveOptions, ColdStore, ObjectColdStore};
use factstore_engine::io::{File, FileSystem, OpenMode};
use factstore_engine::log::format::segment_file_name;
use factstore_engine::verify::verify_with_archive;
use factstore_engine::{Engine, EngineError, EngineOptions};
use factstore_testkit::faultfs::{CrashMode, FaultFs};
use factstore_testkit::wait;
use parking_lot::{Mutex, RwLock};
use serde_json::json;

const DIR: &str = "/data";

// ---------------------------------------------------------------------------------------------
// The cold store, with faults
// ---------------------------------------------------------------------------------------------

/// What the cold store does wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ColdFault {
    None,
    /// Every put fails.
    FailPut,
    /// Puts store the object with one byte flipped.
    CorruptPut,
    /// Puts store only the first half of the object.
    TruncatePut,
    /// Gets fail.
    FailGet,
}

#[derive(Debug)]
struct FaultyCold {
    inner: ObjectColdStore,
    fault: Mutex<ColdFault>,
    gets: AtomicU64,
}

impl FaultyCold {
    fn new() -> Arc<FaultyCold> {
        let memory = Arc::new(object_store::memory::InMemory::new());
        Arc::new(FaultyCold {
            inner: ObjectColdStore::new(memory, "prefix/of/store", "memory://test").expect("runtime"),
            fault: Mutex::new(ColdFault::None),
            gets: AtomicU64::new(0),
        })
    }

    fn set(&self, fault: ColdFault) {
        *self.fault.lock() = fault;
    }
}

impl ColdStore for FaultyCold {
    fn put(&self, key: &str, bytes: Bytes) -> io::Result<()> {
        match *self.fault.lock() {
            ColdFault::FailPut => Err(io::Error::other("injected put failure")),
            ColdFault::CorruptPut => {
                let mut bad = bytes.to_vec();
                let middle = bad.len() / 2;
                bad[middle] ^= 0x5a;
                self.inner.put(key, Bytes::from(bad))
            }
            ColdFault::TruncatePut => self.inner.put(key, bytes.slice(..bytes.len() / 2)),
            ColdFault::None | ColdFault::FailGet => self.inner.put(key, bytes),
        }
    }

    fn get(&self, key: &str) -> io::Result<Bytes> {
        self.gets.fetch_add(1, Ordering::Relaxed);
        if *self.fault.lock() == ColdFault::FailGet {
            return Err(io::Error::other("injected get failure"));
        }
        self.inner.get(key)
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

// ---------------------------------------------------------------------------------------------
// A process on the shared disk, killed after its Nth change to the disk
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Process {
    inner: Arc<ProcessInner>,
}

#[derive(Debug)]
struct ProcessInner {
    disk: FaultFs,
    alive: RwLock<bool>,
    /// Changes to the disk left before the crash.
    left: Mutex<Option<u64>>,
    crashed: AtomicBool,
}

fn dead() -> io::Error {
    io::Error::other("the process crashed")
}

impl ProcessInner {
    fn crash(&self) {
        let mut alive = self.alive.write();
        if *alive {
            *alive = false;
            self.disk.crash_with(CrashMode::DropUnsynced);
            self.crashed.store(true, Ordering::Release);
        }
    }

    fn run<T>(&self, changes: bool, op: impl FnOnce(&FaultFs) -> io::Result<T>) -> io::Result<T> {
        let result = {
            let alive = self.alive.read();
            if !*alive {
                return Err(dead());
            }
            op(&self.disk)
        };
        if changes {
            let fire = {
                let mut left = self.left.lock();
                match &mut *left {
                    Some(0) => {
                        *left = None;
                        true
                    }
                    Some(n) => {
                        *n -= 1;
                        false
                    }
                    None => false,
                }
            };
            if fire {
                self.crash();
            }
        }
        result
    }
}

impl Process {
    fn start(disk: &FaultFs) -> Process {
        Process {
            inner: Arc::new(ProcessInner {
                disk: disk.clone(),
                alive: RwLock::new(true),
                left: Mutex::new(None),
                crashed: AtomicBool::new(false),
            }),
        }
    }

    fn crash_after(&self, n: u64) {
        *self.inner.left.lock() = Some(n);
    }

    fn crashed(&self) -> bool {
        self.inner.crashed.load(Ordering::Acquire)
    }
}

#[derive(Debug)]
struct ProcessFile {
    file: Arc<dyn File>,
    process: Arc<ProcessInner>,
}

impl File for ProcessFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.process.run(false, |_| self.file.read_exact_at(buf, offset))
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.process.run(true, |_| self.file.write_all_at(buf, offset))
    }
    fn len(&self) -> io::Result<u64> {
        self.process.run(false, |_| self.file.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.process.run(true, |_| self.file.set_len(len))
    }
    fn sync_data(&self) -> io::Result<()> {
        self.process.run(true, |_| self.file.sync_data())
    }
}

impl FileSystem for Process {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn File>> {
        let file = self
            .inner
            .run(mode == OpenMode::CreateNew, |disk| disk.open(path, mode))?;
        Ok(Arc::new(ProcessFile {
            file,
            process: self.inner.clone(),
        }))
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.run(true, |disk| disk.create_dir_all(path))
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.inner.run(false, |disk| disk.list_dir(path))
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.inner.run(false, |disk| disk.exists(path))
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.run(true, |disk| disk.remove_file(path))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.run(true, |disk| disk.rename(from, to))
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.inner.run(true, |disk| disk.sync_dir(path))
    }
    fn lock_dir(&self, path: &Path) -> io::Result<Box<dyn std::fmt::Debug + Send + Sync>> {
        self.inner.run(false, |disk| disk.lock_dir(path))
    }
}

// ---------------------------------------------------------------------------------------------
// Workload
// ---------------------------------------------------------------------------------------------

fn options(fs: Arc<dyn FileSystem>, cold: Option<Arc<FaultyCold>>) -> EngineOptions {
    EngineOptions {
        fs,
        memtable_events_max: 16,
        segment_bytes_max: 4096,
        merge_fan_in: 4,
        archive: cold.map(|cold| ArchiveOptions::new(cold)),
        ..EngineOptions::default()
    }
}

fn open(fs: Arc<dyn FileSystem>, cold: &Arc<FaultyCold>) -> Engine {
    Engine::open(Path::new(DIR), options(fs, Some(cold.clone()))).unwrap_or_else(|e| panic!("open: {e}"))
}

/// Commits `n` commits of 1 to 3 events over five aggregates, three event types and four
/// correlation ids.
fn fill(engine: &Engine, salt: usize, n: usize) {
    for i in 0..n {
        let k = salt * 1000 + i;
        let events = (0..1 + k % 3)
            .map(|j| {
                NewEvent::new(
                    "Account",
                    ["Opened", "Deposited", "Withdrawn"][(k + j) % 3],
                    json!({"k": k, "j": j, "pad": "x".repeat(100 + k % 5 * 30)}),
                )
                .with_metadata(json!({"correlation_id": format!("corr-{}", k % 4)}))
            })
            .collect();
        let commit = Commit::single(&format!("acct-{}", k % 5), ExpectedVersion::Any, events)
            .prepare(engine.limits())
            .expect("a valid commit");
        engine.commit_blocking(commit).expect("commit");
    }
}

/// Waits until the indexer has flushed what is due, so that the checkpoint covers the sealed
/// segments.
fn settle(engine: &Engine) {
    wait::until_blocking(
        "the indexer to settle",
        std::time::Duration::from_secs(10),
        || engine.shared().index_quiet(),
    );
}

/// Every read path, as a comparable value.
#[derive(Debug, PartialEq)]
struct Reads {
    all: Vec<Event>,
    aggregates: Vec<Vec<Event>>,
    aggregates_backward: Vec<Vec<Event>>,
    by_type: Vec<Event>,
    by_correlation: Vec<Event>,
    by_prefix: Vec<Event>,
    by_id: Vec<Event>,
    as_of: Vec<Event>,
}

fn reads(engine: &Engine) -> Reads {
    let all = engine
        .read_events(&EventQuery::all(0, 100_000))
        .expect("read all")
        .events;
    // Paged scans, seven events a page.
    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let page = engine.read_events(&EventQuery::all(after, 7)).expect("page");
        if page.events.is_empty() {
            break;
        }
        after = page.next_after_position;
        paged.extend(page.events);
    }
    assert_eq!(paged, all, "paging returns the same events as one read");
    let query = |filter: EventFilter| {
        let mut query = EventQuery::all(0, 100_000);
        query.filter = filter;
        engine.read_events(&query).expect("filtered read").events
    };
    let aggregate = |id: String, direction: Direction| {
        let mut query = AggregateQuery::forward(&id, 100_000);
        query.direction = direction;
        if direction == Direction::Backward {
            query.from_version = None;
        }
        engine.read_aggregate(&query).expect("aggregate").events
    };
    let as_of_time = all
        .get(all.len() / 2)
        .map_or(Timestamp::from_micros(0), |e| e.recorded_at());
    let mut as_of = EventQuery::all(0, 100_000);
    as_of.as_of = Some(as_of_time);
    Reads {
        aggregates: (0..5)
            .map(|i| aggregate(format!("acct-{i}"), Direction::Forward))
            .collect(),
        aggregates_backward: (0..5)
            .map(|i| aggregate(format!("acct-{i}"), Direction::Backward))
            .collect(),
        by_type: query(EventFilter {
            event_types: vec!["Withdrawn".into()],
            ..EventFilter::default()
        }),
        by_correlation: query(EventFilter {
            correlation_id: Some("corr-2".into()),
            ..EventFilter::default()
        }),
        by_prefix: query(EventFilter {
            aggregate_id_prefix: Some("acct-3".into()),
            ..EventFilter::default()
        }),
        by_id: all
            .iter()
            .step_by(5)
            .map(|e| engine.get_event(e.event_id()).expect("by id"))
            .collect(),
        as_of: engine.read_events(&as_of).expect("as_of").events,
        all,
    }
}

fn local_segments(disk: &FaultFs) -> Vec<String> {
    let mut names: Vec<String> = disk
        .file_names(Path::new(DIR).join("log"))
        .into_iter()
        .filter(|n| n.ends_with(".seg"))
        .collect();
    names.sort();
    names
}

fn assert_positions_dense(all: &[Event], context: &str) {
    for (i, event) in all.iter().enumerate() {
        assert_eq!(
            event.position(),
            i as u64 + 1,
            "{context}: positions are 1, 2, 3, … once each"
        );
    }
}

/// A moment after everything committed so far.
fn now_plus() -> Timestamp {
    // Time passes on purpose: the moment is strictly after the last commit's time.
    std::thread::sleep(std::time::Duration::from_millis(2));
    Timestamp::now()
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn archived_events_read_the_same_on_every_path_before_and_after_a_restart() {
    let disk = FaultFs::new();
    let cold = FaultyCold::new();
    let engine = open(Arc::new(disk.clone()), &cold);
    fill(&engine, 0, 120);
    settle(&engine);
    let before_archiving = reads(&engine);
    let segments_before = local_segments(&disk);
    assert!(segments_before.len() > 4, "the workload spans several segments");

    let outcome = engine.archive(now_plus(), |_| {}).expect("archive");
    let records = engine.archive_state().expect("configured").records();
    assert!(!records.is_empty(), "sealed, indexed segments were archived");
    assert_eq!(
        outcome.archived_events,
        records.iter().map(|r| r.events()).sum::<u64>()
    );
    assert!(outcome.archived_bytes > 0);
    let remaining = local_segments(&disk);
    // Every event was recorded before the cut: archiving sealed the active segment (starting
    // the next, empty one) so that it moved too.
    assert_eq!(records.len(), segments_before.len(), "every segment moved");
    assert_eq!(
        remaining,
        vec![segment_file_name(segments_before.len() as u32 + 1)],
        "the hot copies are freed; the new active segment stays"
    );

    let gets = cold.gets.load(Ordering::Relaxed);
    assert_eq!(
        reads(&engine),
        before_archiving,
        "reads of archived events equal reads before"
    );
    let gets_after_first = cold.gets.load(Ordering::Relaxed);
    assert!(
        gets_after_first > gets,
        "the first reads download the archived segments"
    );
    assert_eq!(reads(&engine), before_archiving);
    assert_eq!(
        cold.gets.load(Ordering::Relaxed),
        gets_after_first,
        "later reads come from the local cache"
    );

    let stats = engine.storage().expect("storage");
    assert_eq!(stats.archived_events, outcome.archived_events);
    assert_eq!(stats.events, before_archiving.all.len() as u64);
    assert!(
        stats.cold_bytes > 0 && stats.cold_bytes < outcome.archived_bytes,
        "compressed: {stats:?}"
    );
    assert!(stats.hot_bytes > 0);

    // Archiving again with the same bound archives nothing more and reports the same totals.
    assert_eq!(
        engine.archive(Timestamp::from_micros(0), |_| {}).expect("again"),
        outcome
    );

    // Restart: the archived segments come from the manifest, the cache starts empty.
    engine.close();
    drop(engine);
    let engine = open(Arc::new(disk.clone()), &cold);
    assert_eq!(reads(&engine), before_archiving);
    assert_eq!(
        engine.storage().expect("storage").archived_events,
        outcome.archived_events
    );
    // Writes go on; a second archive run takes more segments.
    fill(&engine, 1, 60);
    settle(&engine);
    let more = engine.archive(now_plus(), |_| {}).expect("archive more");
    assert!(more.archived_events > outcome.archived_events);
    let after = reads(&engine);
    assert_positions_dense(&after.all, "after two runs");
    assert_eq!(
        &after.all[..before_archiving.all.len()],
        &before_archiving.all[..]
    );

    // verify takes the folder's lock, so the store is closed first.
    engine.close();
    drop(engine);
    let report = verify_with_archive(&disk, Path::new(DIR), Some(&*cold)).expect("verify");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.events, after.all.len() as u64);
    assert!(report.archived_checked > 1);
    let report = factstore_engine::verify::verify(&disk, Path::new(DIR)).expect("verify without cold");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[test]
fn only_segments_recorded_wholly_before_the_bound_are_archived() {
    let disk = FaultFs::new();
    let cold = FaultyCold::new();
    let engine = open(Arc::new(disk.clone()), &cold);
    fill(&engine, 0, 60);
    let bound = now_plus();
    fill(&engine, 1, 60);
    settle(&engine);
    let first_after_bound = reads(&engine)
        .all
        .iter()
        .find(|e| e.recorded_at() >= bound)
        .map(Event::position)
        .expect("events after the bound");
    engine.archive(bound, |_| {}).expect("archive");
    let records = engine.archive_state().expect("configured").records();
    assert!(!records.is_empty());
    for record in &records {
        assert!(record.last_recorded_at < bound.as_micros());
        assert!(record.last_position < first_after_bound);
    }
    // Nothing recorded at or after the bound is archived, and nothing is archived when the
    // bound is before every event.
    let disk2 = FaultFs::new();
    let engine2 = open(Arc::new(disk2.clone()), &FaultyCold::new());
    let early = Timestamp::now();
    fill(&engine2, 0, 60);
    settle(&engine2);
    assert_eq!(
        engine2.archive(early, |_| {}).expect("archive").archived_events,
        0
    );
}

#[test]
fn a_failed_or_corrupt_upload_never_frees_the_hot_copy() {
    for fault in [
        ColdFault::FailPut,
        ColdFault::CorruptPut,
        ColdFault::TruncatePut,
        ColdFault::FailGet,
    ] {
        let disk = FaultFs::new();
        let cold = FaultyCold::new();
        let engine = open(Arc::new(disk.clone()), &cold);
        fill(&engine, 0, 80);
        settle(&engine);
        let expected = reads(&engine);
        let segments = local_segments(&disk);
        cold.set(fault);
        let error = engine
            .archive(now_plus(), |_| {})
            .expect_err("a bad upload fails the run");
        assert!(
            matches!(
                (fault, &error),
                (
                    ColdFault::FailPut | ColdFault::FailGet,
                    EngineError::ColdStorage { .. }
                ) | (
                    ColdFault::CorruptPut | ColdFault::TruncatePut,
                    EngineError::Corruption { .. }
                )
            ),
            "{fault:?}: {error}"
        );
        // Archiving may have sealed the active segment and started the next before the
        // upload failed; no segment is gone.
        let after = local_segments(&disk);
        assert!(
            after.starts_with(&segments) && after.len() <= segments.len() + 1,
            "{fault:?}: no hot copy freed: {segments:?} became {after:?}"
        );
        assert!(engine.archive_state().expect("configured").records().is_empty());
        assert_eq!(reads(&engine), expected, "{fault:?}");
        // The cold store heals: the same run archives, overwriting the bad object.
        cold.set(ColdFault::None);
        let outcome = engine.archive(now_plus(), |_| {}).expect("archive");
        assert!(outcome.archived_events > 0);
        assert_eq!(reads(&engine), expected, "{fault:?}, after archiving");
    }
}

#[test]
fn a_crash_at_any_step_of_archiving_loses_nothing_and_reads_nothing_twice() {
    let mut crashed_inside = 0;
    for n in 0.. {
        let disk = FaultFs::new();
        let cold = FaultyCold::new();
        let process = Process::start(&disk);
        let engine = open(Arc::new(process.clone()), &cold);
        fill(&engine, 0, 80);
        // Idle from here: the writer has nothing to write and the indexer nothing to flush, so
        // every change counted below is archiving's.
        settle(&engine);
        let expected = reads(&engine).all;
        process.crash_after(n);
        let result = engine.archive(now_plus(), |_| {});
        let crashed = process.crashed();
        if !crashed {
            result.expect("archiving without a crash succeeds");
        }
        drop(engine);
        disk.crash();

        let engine = open(Arc::new(disk.clone()), &cold);
        let context = format!("crash after {n} changes");
        let again = reads(&engine);
        assert_eq!(again.all, expected, "{context}");
        assert_positions_dense(&again.all, &context);
        let archived = engine.archive_state().expect("configured").records();
        let archived_through = archived.last().map_or(0, |r| r.segment_no);
        for name in local_segments(&disk) {
            let no: u32 = name.trim_end_matches(".seg").parse().expect("a segment name");
            assert!(
                no > archived_through,
                "{context}: segment {no} is both archived and local"
            );
        }
        // The run completes after the restart.
        engine
            .archive(now_plus(), |_| {})
            .expect("archive after recovery");
        assert_eq!(reads(&engine).all, expected, "{context}, archived after recovery");
        engine.close();
        drop(engine); // and its lock on the folder, which verify takes
        let report = verify_with_archive(&disk, Path::new(DIR), Some(&*cold)).expect("verify");
        assert!(report.problems.is_empty(), "{context}: {:?}", report.problems);
        if !crashed {
            break;
        }
        crashed_inside += 1;
    }
    assert!(
        crashed_inside > 5,
        "the crash hit several steps ({crashed_inside})"
    );
}

#[test]
fn a_crash_while_the_cache_fills_leaves_reads_intact() {
    let disk = FaultFs::new();
    let cold = FaultyCold::new();
    let engine = open(Arc::new(disk.clone()), &cold);
    fill(&engine, 0, 80);
    settle(&engine);
    let expected = reads(&engine).all;
    engine.archive(now_plus(), |_| {}).expect("archive");
    engine.close();
    drop(engine);
    for n in 0..6 {
        let process = Process::start(&disk);
        let engine = open(Arc::new(process.clone()), &cold);
        process.crash_after(n);
        let _ = engine.read_events(&EventQuery::all(0, 100_000));
        drop(engine);
        disk.crash();
        let engine = open(Arc::new(disk.clone()), &cold);
        assert_eq!(
            reads(&engine).all,
            expected,
            "crash after {n} changes while caching"
        );
    }
}

/// An engine whose archive cache holds at most `cache_bytes`, with `events` events archived,
/// and what every read path returned before archiving.
fn archived_with_cache(cache_bytes: u64, events: usize) -> (FaultFs, Arc<FaultyCold>, Engine, Reads) {
    let disk = FaultFs::new();
    let cold = FaultyCold::new();
    let mut opts = options(Arc::new(disk.clone()), Some(cold.clone()));
    if let Some(archive) = &mut opts.archive {
        archive.cache_bytes_max = cache_bytes;
    }
    let engine = Engine::open(Path::new(DIR), opts).expect("open");
    fill(&engine, 0, events);
    settle(&engine);
    let expected = reads(&engine);
    engine.archive(now_plus(), |_| {}).expect("archive");
    (disk, cold, engine, expected)
}

#[test]
fn the_cache_is_bounded_and_evicts_whole_segments() {
    let (disk, _cold, engine, expected) = archived_with_cache(5000, 120);
    let archive = engine.archive_state().expect("configured");
    assert!(archive.records().len() > 2);
    assert_eq!(reads(&engine), expected);
    let cache = archive.cache();
    assert!(
        cache.bytes() <= 5000,
        "at most one segment of about 4 KiB stays: {}",
        cache.bytes()
    );
    let cached: Vec<String> = disk.file_names(PathBuf::from(DIR).join("archive-cache"));
    assert_eq!(cached.len(), 1, "{cached:?}");
}

#[test]
fn a_store_with_archived_segments_does_not_open_without_its_cold_store() {
    let disk = FaultFs::new();
    let cold = FaultyCold::new();
    let engine = open(Arc::new(disk.clone()), &cold);
    fill(&engine, 0, 80);
    settle(&engine);
    engine.archive(now_plus(), |_| {}).expect("archive");
    engine.close();
    drop(engine);
    let error = Engine::open(Path::new(DIR), options(Arc::new(disk.clone()), None)).expect_err("refused");
    assert!(error.to_string().contains("--archive-url"), "{error}");
    // Without archiving configured, archive() says so.
    let plain = FaultFs::new();
    let engine = Engine::open(Path::new(DIR), options(Arc::new(plain), None)).expect("open");
    let error = engine
        .archive(Timestamp::now(), |_| {})
        .expect_err("not configured");
    assert!(
        matches!(
            error,
            EngineError::Store(factstore_core::StoreError::ArchiveNotConfigured)
        ),
        "{error}"
    );
}

#[test]
fn a_damaged_archived_object_is_reported_by_verify_and_by_reads() {
    let disk = FaultFs::new();
    let cold = FaultyCold::new();
    let engine = open(Arc::new(disk.clone()), &cold);
    fill(&engine, 0, 80);
    settle(&engine);
    engine.archive(now_plus(), |_| {}).expect("archive");
    engine.close();
    drop(engine);
    let record = {
        let engine = open(Arc::new(disk.clone()), &cold);
        engine.archive_state().expect("configured").records()[0]
    };
    // Replace the first object with another segment's bytes compressed: valid zstd, wrong data.
    let other = cold
        .inner
        .get(&factstore_engine::archive::manifest::object_key(2))
        .expect("object 2");
    cold.inner.put(&record.key(), other).expect("put");
    let report = verify_with_archive(&disk, Path::new(DIR), Some(&*cold)).expect("verify");
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("segments/0000000001.seg.zst")
                && (p.contains("the manifest says") || p.contains("checksum"))),
        "{:?}",
        report.problems
    );
    assert_eq!(
        report.problems.len(),
        1,
        "one damaged object, one problem: {:?}",
        report.problems
    );
    let engine = open(Arc::new(disk.clone()), &cold);
    let error = engine
        .read_events(&EventQuery::all(0, 10))
        .expect_err("the damage is not served");
    assert!(
        error.to_string().contains("segments/0000000001.seg.zst"),
        "{error}"
    );
}

#[test]
fn unreachable_cold_storage_makes_archived_reads_unavailable_not_internal() {
    // Nothing stays cached: every archived read goes to cold storage.
    let (_disk, cold, engine, expected) = archived_with_cache(0, 80);
    cold.set(ColdFault::FailGet);
    let error = engine
        .read_events(&EventQuery::all(0, 10))
        .expect_err("cold storage is down");
    let error = factstore_core::StoreError::from(error);
    assert!(
        matches!(error, factstore_core::StoreError::Unavailable(_)),
        "a cold-storage outage is 503, not 500: {error:?}"
    );
    // What failed, for the client; the cause (with the object's name) goes to the log.
    assert!(
        error.to_string().contains("cold storage did not answer"),
        "{error}"
    );
    assert!(!error.to_string().contains(".seg"), "{error}");
    cold.set(ColdFault::None);
    assert_eq!(reads(&engine), expected, "served again once cold storage answers");
}
