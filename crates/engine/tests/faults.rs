//! Faults injected through the I/O trait, and what a user relies on through each of them.
//!
//! - **A failed write or sync, a torn write, a full disk**, at every write or sync a workload
//!   makes (creating the first segment, writing a frame, rotating a segment, writing a run,
//!   storing the manifest, compacting): the commit that hit it and every later commit answer
//!   `store_unavailable`; reads go on and return exactly the acknowledged events; after a crash
//!   (or a plain restart, for write faults) and a reopen every acknowledged event is there byte
//!   for byte, nothing else is, and the store takes commits again.
//! - **Crashes under concurrent commits**, dropping every unsynced byte or tearing unsynced
//!   sectors at random (`PartialPersistence`, many seeds), twice in a row: after the reopen,
//!   acknowledged events are all there byte for byte, positions and versions are dense, and a
//!   commit is there whole or not at all. Also a crash at each step of a recovery.
//! - **Corruption**: a bad frame followed by a good one stops `Engine::open` with an error
//!   naming the file and the frame's offset; a bad last frame is a torn tail, cut off; a
//!   damaged run file stops the open or is reported by `verify`, and never makes a read answer
//!   wrongly.
//!
//! The faults are deterministic (fixed counts and seeds), and the sequential sweeps wait for
//! the indexer after each commit so that the Nth operation is the same one on every run. Only
//! the interleaving of the concurrent writers varies; every assertion holds for any.
//!
//! Like Linux, `FaultFs` marks the pages of a failed `sync_data` clean without writing them;
//! `restart_after_a_failed_sync_then_power_loss_keeps_later_acknowledged_commits` checks that a
//! plain restart after a failed sync does not build on such pages.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use factstore_core::{
    AggregateAppend, AggregateQuery, Commit, CommitOutcome, Event, EventQuery, EventStore, ExpectedVersion,
    Limits, NewEvent, StoreError, Timestamp,
};
use factstore_engine::io::{File, FileSystem, OpenMode};
use factstore_engine::log::format::{FRAME_HEADER_LEN, FrameHeader, SEGMENT_HEADER_LEN, segment_file_name};
use factstore_engine::store::EmbeddedStore;
use factstore_engine::{Engine, EngineError, EngineOptions};
use factstore_testkit::faultfs::{CrashMode, CrashReport, FaultFs, Repeat};
use factstore_testkit::wait;
use parking_lot::{Mutex, RwLock};
use serde_json::json;
use uuid::Uuid;

const DIR: &str = "/db";

fn log_dir() -> PathBuf {
    Path::new(DIR).join("log")
}

fn index_dir() -> PathBuf {
    Path::new(DIR).join("index")
}

fn segment_path(no: u32) -> PathBuf {
    log_dir().join(segment_file_name(no))
}

// ---------------------------------------------------------------------------------------------
// A process on the shared disk
// ---------------------------------------------------------------------------------------------

/// The file system as one process sees it. A crash kills the process first: from then on
/// every call of its, by path or by handle, fails, so the threads of a dead engine can never
/// touch the disk the next engine recovers from (`FaultFs` alone stops only the handles
/// opened before the crash, not path operations such as `open`, `rename` or `remove_file`).
///
/// A process can also be set to crash right after its Nth operation that changes the disk
/// ([`Process::crash_after`]): between a write and its sync, inside a flush, anywhere.
#[derive(Debug, Clone)]
struct Process {
    inner: Arc<ProcessInner>,
}

#[derive(Debug)]
struct ProcessInner {
    disk: FaultFs,
    alive: RwLock<bool>,
    /// Operations left before the crash, whether only writes count, and how to crash.
    trigger: Mutex<Option<Trigger>>,
    report: Mutex<Option<CrashReport>>,
}

#[derive(Debug, Clone, Copy)]
struct Trigger {
    left: u64,
    writes_only: bool,
    mode: CrashMode,
}

/// What an operation does to the disk, for the crash trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Nothing,
    Write,
    /// A sync, a length change, a creation, a rename, a removal.
    Other,
}

fn dead() -> io::Error {
    io::Error::other("the process crashed")
}

impl ProcessInner {
    fn crash(&self, mode: CrashMode) -> CrashReport {
        let mut alive = self.alive.write();
        if !*alive {
            return self.report.lock().unwrap_or_default();
        }
        *alive = false;
        let report = self.disk.crash_with(mode);
        *self.report.lock() = Some(report);
        report
    }

    /// Runs an operation while the process is alive; one that changes the disk counts down
    /// the trigger.
    fn run<T>(&self, change: Change, op: impl FnOnce(&FaultFs) -> io::Result<T>) -> io::Result<T> {
        let result = {
            let alive = self.alive.read();
            if !*alive {
                return Err(dead());
            }
            op(&self.disk)
        };
        if change != Change::Nothing {
            let fire = {
                let mut slot = self.trigger.lock();
                match &mut *slot {
                    Some(trigger) if trigger.writes_only && change != Change::Write => None,
                    Some(trigger) if trigger.left == 0 => {
                        let mode = trigger.mode;
                        *slot = None;
                        Some(mode)
                    }
                    Some(trigger) => {
                        trigger.left -= 1;
                        None
                    }
                    None => None,
                }
            };
            if let Some(mode) = fire {
                self.crash(mode);
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
                trigger: Mutex::new(None),
                report: Mutex::new(None),
            }),
        }
    }

    /// Kills the process and crashes the disk, atomically with respect to its calls. A second
    /// call does nothing.
    fn crash(&self, mode: CrashMode) -> CrashReport {
        self.inner.crash(mode)
    }

    /// Crashes right after `n` more operations that change the disk (writes, syncs, length
    /// changes, creations, renames, removals), or with `writes_only` after `n` more writes
    /// (so that what was just written is not synced), whichever thread makes them.
    fn crash_after(&self, n: u64, writes_only: bool, mode: CrashMode) {
        *self.inner.trigger.lock() = Some(Trigger {
            left: n,
            writes_only,
            mode,
        });
    }

    /// What the crash kept, once it happened.
    fn crash_report(&self) -> Option<CrashReport> {
        *self.inner.report.lock()
    }
}

#[derive(Debug)]
struct ProcessFile {
    file: Arc<dyn File>,
    process: Arc<ProcessInner>,
}

impl File for ProcessFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.process
            .run(Change::Nothing, |_| self.file.read_exact_at(buf, offset))
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.process
            .run(Change::Write, |_| self.file.write_all_at(buf, offset))
    }
    fn len(&self) -> io::Result<u64> {
        self.process.run(Change::Nothing, |_| self.file.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.process.run(Change::Other, |_| self.file.set_len(len))
    }
    fn sync_data(&self) -> io::Result<()> {
        self.process.run(Change::Other, |_| self.file.sync_data())
    }
}

impl FileSystem for Process {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn File>> {
        let file = self.inner.run(
            if mode == OpenMode::CreateNew {
                Change::Other
            } else {
                Change::Nothing
            },
            |disk| disk.open(path, mode),
        )?;
        Ok(Arc::new(ProcessFile {
            file,
            process: self.inner.clone(),
        }))
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.run(Change::Other, |disk| disk.create_dir_all(path))
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.inner.run(Change::Nothing, |disk| disk.list_dir(path))
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.inner.run(Change::Nothing, |disk| disk.exists(path))
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.run(Change::Other, |disk| disk.remove_file(path))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.run(Change::Other, |disk| disk.rename(from, to))
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.inner.run(Change::Other, |disk| disk.sync_dir(path))
    }
    fn lock_dir(&self, path: &Path) -> io::Result<Box<dyn std::fmt::Debug + Send + Sync>> {
        self.inner.run(Change::Nothing, |disk| disk.lock_dir(path))
    }
}

/// Options under which a few dozen commits rotate segments, flush memtables and merge runs.
fn small(process: &Process) -> EngineOptions {
    EngineOptions {
        fs: Arc::new(process.clone()),
        memtable_events_max: 8,
        segment_bytes_max: 4096,
        merge_fan_in: 4,
        ..EngineOptions::default()
    }
}

/// Options under which nothing is flushed, so that recovery reads the whole log.
fn log_only(process: &Process, segment_bytes_max: u64) -> EngineOptions {
    EngineOptions {
        fs: Arc::new(process.clone()),
        memtable_events_max: 1 << 20,
        segment_bytes_max,
        ..EngineOptions::default()
    }
}

fn open(options: EngineOptions) -> Engine {
    Engine::open(Path::new(DIR), options).unwrap_or_else(|e| panic!("open: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Workload and expectations
// ---------------------------------------------------------------------------------------------

/// A deterministic commit: `1 + i % 3` events with client ids, to one of four aggregates, and
/// every fifth commit to two aggregates at once. `salt` keeps the ids of rounds apart.
fn workload_commit(salt: u32, i: usize) -> Commit {
    let event = |aggregate_type: &str, j: usize| {
        let id = Uuid::from_u128((u128::from(salt) << 64) | ((i as u128) << 8) | j as u128 | 1 << 127);
        NewEvent::new(
            aggregate_type,
            "Deposited",
            json!({"i": i, "j": j, "pad": "p".repeat(200 + i % 7 * 40)}),
        )
        .with_id(id)
        .with_created_at(Timestamp::from_micros(1_704_067_200_000_000 + i as i64))
    };
    let mut appends = vec![AggregateAppend {
        aggregate_id: format!("acct-{}", i % 4),
        expected_version: ExpectedVersion::Any,
        events: (0..1 + i % 3).map(|j| event("Account", j)).collect(),
    }];
    if i % 5 == 4 {
        appends.push(AggregateAppend {
            aggregate_id: format!("order-{}", i % 2),
            expected_version: ExpectedVersion::Any,
            events: vec![event("Order", 9)],
        });
    }
    Commit {
        appends,
        condition: None,
    }
}

/// The exact bytes the events of an acknowledged commit must have: what the client sent, at
/// the positions, versions and `recorded_at` of the outcome.
fn expected_bytes(commit: &Commit, outcome: &CommitOutcome) -> Vec<Vec<u8>> {
    let prepared = commit
        .clone()
        .prepare(&Limits::default())
        .expect("a valid commit");
    let mut out = Vec::new();
    for (append, appended) in prepared.appends.iter().zip(&outcome.appends) {
        assert_eq!(
            append.events.len(),
            appended.events.len(),
            "the outcome lists every event"
        );
        for (event, at) in append.events.iter().zip(&appended.events) {
            let fields = event.fields(&append.aggregate_id, at.position, at.version, at.recorded_at);
            out.push(Event::from_fields(&fields).as_bytes().to_vec());
        }
    }
    out
}

/// The events of a commit that may or may not have been written, rebuilt from a stored event
/// for each (its position, version and `recorded_at`): equal bytes mean equal content.
fn rebuilt_bytes(commit: &Commit, stored: &[&Event]) -> Vec<Vec<u8>> {
    let prepared = commit
        .clone()
        .prepare(&Limits::default())
        .expect("a valid commit");
    let mut out = Vec::new();
    let mut stored = stored.iter();
    for append in &prepared.appends {
        for event in &append.events {
            let Some(s) = stored.next() else {
                return out;
            };
            let fields = event.fields(&append.aggregate_id, s.position(), s.version(), s.recorded_at());
            out.push(Event::from_fields(&fields).as_bytes().to_vec());
        }
    }
    out
}

fn client_ids(commit: &Commit) -> Vec<Uuid> {
    commit
        .appends
        .iter()
        .flat_map(|a| a.events.iter())
        .map(|e| e.event_id.expect("the workload gives every event an id"))
        .collect()
}

fn all_events(engine: &Engine) -> Vec<Event> {
    engine
        .read_events(&EventQuery::all(0, 1_000_000))
        .expect("reading every event")
        .events
}

fn bytes_of(events: &[Event]) -> Vec<Vec<u8>> {
    events.iter().map(|e| e.as_bytes().to_vec()).collect()
}

/// Positions 1..n, versions 1..v per aggregate, one aggregate type each, ids unique.
fn assert_dense(events: &[Event], context: &str) {
    let mut versions: HashMap<&str, (u64, &str)> = HashMap::new();
    let mut ids = HashSet::new();
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event.position(), i as u64 + 1, "{context}: positions are dense");
        let entry = versions
            .entry(event.aggregate_id())
            .or_insert((0, event.aggregate_type()));
        assert_eq!(
            event.version(),
            entry.0 + 1,
            "{context}: versions of {} are dense",
            event.aggregate_id()
        );
        assert_eq!(
            event.aggregate_type(),
            entry.1,
            "{context}: one type per aggregate"
        );
        entry.0 += 1;
        assert!(
            ids.insert(event.event_id()),
            "{context}: event id {} stored twice",
            event.event_id()
        );
    }
}

/// Every read path agrees that the store holds exactly `expected` (bytes, in position order).
fn assert_holds_exactly(engine: &Engine, expected: &[Vec<u8>], context: &str) {
    let events = all_events(engine);
    assert_dense(&events, context);
    assert!(
        bytes_of(&events) == expected,
        "{context}: the store holds {} events, {} were expected (or their bytes differ)",
        events.len(),
        expected.len()
    );
    assert_eq!(engine.head().position, expected.len() as u64, "{context}: head");
    let mut by_aggregate: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for event in &events {
        by_aggregate
            .entry(event.aggregate_id().to_owned())
            .or_default()
            .push(event.as_bytes().to_vec());
        let found = engine
            .get_event(event.event_id())
            .unwrap_or_else(|e| panic!("{context}: get_event {}: {e}", event.event_id()));
        assert_eq!(found.as_bytes(), event.as_bytes(), "{context}: get_event");
    }
    for (aggregate, expected) in &by_aggregate {
        let page = engine
            .read_aggregate(&AggregateQuery::forward(aggregate, 100_000))
            .unwrap_or_else(|e| panic!("{context}: read_aggregate {aggregate}: {e}"));
        assert!(
            bytes_of(&page.events) == *expected,
            "{context}: read_aggregate {aggregate}"
        );
        assert_eq!(
            page.version,
            expected.len() as u64,
            "{context}: version of {aggregate}"
        );
    }
}

fn verify_clean(disk: &FaultFs, context: &str) {
    let report = factstore_engine::verify::verify(disk, Path::new(DIR)).expect("verify runs");
    assert!(
        report.is_ok(),
        "{context}: verify found problems: {:?}",
        report.problems
    );
}

// ---------------------------------------------------------------------------------------------
// Failed writes and syncs, torn writes, a full disk
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// The write after `n` more fails, writing nothing.
    Write(u64, Repeat),
    /// The sync (of data or of a folder) after `n` more fails.
    Sync(u64, Repeat),
    /// The write after `n` more writes `prefix` bytes and fails.
    Torn(u64, usize),
    /// No more than this many bytes can be written.
    DiskFull(u64),
}

impl Fault {
    fn inject(self, disk: &FaultFs) {
        match self {
            Fault::Write(n, repeat) => disk.fail_write_after(n, repeat),
            Fault::Sync(n, repeat) => disk.fail_sync_after(n, repeat),
            Fault::Torn(n, prefix) => disk.torn_write_after(n, prefix),
            Fault::DiskFull(bytes) => disk.disk_full_after_bytes(bytes),
        }
    }

    /// Whether the fault has fired, judging by the operations counted since it was injected
    /// before any (a full disk fires on a write that does not fit: told by the engine's error).
    fn fired(self, disk: &FaultFs) -> Option<bool> {
        let stats = disk.stats();
        match self {
            Fault::Write(n, _) | Fault::Torn(n, _) => Some(stats.writes > n),
            Fault::Sync(n, _) => Some(stats.syncs() > n),
            Fault::DiskFull(_) => None,
        }
    }
}

/// How the store is brought back after the fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recovery {
    /// Lose every unsynced byte, then reopen.
    Crash,
    /// Close and reopen: the process restarts, the machine does not.
    Restart,
}

const WORKLOAD_COMMITS: usize = 20;

/// Waits until the indexer has caught up with the writer (or stopped for good), so that a
/// sequential workload makes the same writes and syncs in the same order on every run, and
/// a fault counted in operations always lands on the same one.
fn settle(engine: &Engine, memtable_events_max: usize) {
    wait::until_blocking(
        "the indexer to catch up with the writer, or a failure to poison the store",
        std::time::Duration::from_secs(10),
        || {
            let caught_up = engine.shared().index.state.read().active.len() < memtable_events_max
                && engine.shared().index_quiet();
            caught_up || engine.poisoned().is_some()
        },
    );
}

/// What a fault-free run of the workload does: the operations a sweep walks through.
#[derive(Debug, PartialEq, Eq)]
struct Baseline {
    writes: u64,
    syncs: u64,
    bytes: u64,
}

fn baseline() -> Baseline {
    let first = baseline_run();
    assert_eq!(
        first,
        baseline_run(),
        "the workload makes the same operations every run"
    );
    first
}

fn baseline_run() -> Baseline {
    let disk = FaultFs::new();
    let process = Process::start(&disk);
    let engine = open(small(&process));
    for i in 0..WORKLOAD_COMMITS {
        let prepared = workload_commit(0, i).prepare(engine.limits()).expect("valid");
        engine.commit_blocking(prepared).expect("a fault-free commit");
        settle(&engine, 8);
    }
    engine.close();
    // The workload reaches every kind of write the sweeps must cover.
    let segments = disk.file_names(log_dir()).len();
    let index = disk.file_names(index_dir());
    assert!(segments >= 4, "the workload rotates segments: {segments}");
    assert!(
        index.iter().any(|n| n == "MANIFEST"),
        "the workload checkpoints the index: {index:?}"
    );
    let manifest = String::from_utf8_lossy(&disk.read_file(index_dir().join("MANIFEST")).expect("manifest"))
        .into_owned();
    assert!(
        manifest.contains("\"level\":1"),
        "the workload merges runs: {manifest}"
    );
    let stats = disk.stats();
    Baseline {
        writes: stats.writes,
        syncs: stats.syncs(),
        bytes: stats.bytes_written,
    }
}

/// Runs the workload with `fault` injected before the engine opens, then checks everything a
/// user relies on (see the module docs). Returns whether the fault hit the open itself.
fn fault_scenario(fault: Fault, recovery: Recovery) -> bool {
    let context = format!("{fault:?}, {recovery:?}");
    let disk = FaultFs::new();
    fault.inject(&disk);
    let process = Process::start(&disk);
    let mut acked: Vec<Vec<u8>> = Vec::new();
    // The commit that hit the fault: its outcome is unknown.
    let mut unknown: Option<Commit> = None;
    let mut failed_at_open = false;
    match Engine::open(Path::new(DIR), small(&process)) {
        Err(error) => {
            assert!(
                matches!(error, EngineError::Io { .. }),
                "{context}: a fault during open is an I/O error, got {error:?}"
            );
            failed_at_open = true;
        }
        Ok(engine) => {
            for i in 0..WORKLOAD_COMMITS {
                let commit = workload_commit(0, i);
                let prepared = commit.clone().prepare(engine.limits()).expect("valid");
                match engine.commit_blocking(prepared) {
                    Ok(outcome) => {
                        assert!(
                            unknown.is_none(),
                            "{context}: commit {i} succeeded after a failed one"
                        );
                        acked.extend(expected_bytes(&commit, &outcome));
                        settle(&engine, 8);
                    }
                    Err(error) => {
                        let error = StoreError::from(error);
                        assert!(
                            matches!(error, StoreError::Unavailable(_)),
                            "{context}: commit {i} failed with {error:?}, not store_unavailable"
                        );
                        if unknown.is_none() {
                            // Reads go on, and show exactly what was acknowledged.
                            assert_holds_exactly(
                                &engine,
                                &acked,
                                &format!("{context}, right after the failure"),
                            );
                            for id in client_ids(&commit) {
                                assert!(
                                    matches!(
                                        engine.get_event(id),
                                        Err(EngineError::Store(StoreError::EventNotFound { .. }))
                                    ),
                                    "{context}: an event of the failed commit is readable"
                                );
                            }
                            unknown = Some(commit);
                        }
                    }
                }
            }
            engine.close();
            if fault.fired(&disk) == Some(true) || unknown.is_some() {
                assert!(
                    engine.poisoned().is_some(),
                    "{context}: the fault fired, yet the engine takes writes"
                );
            }
            assert_holds_exactly(&engine, &acked, &format!("{context}, after close"));
            drop(engine);
        }
    }

    // Bring it back: the fault is gone (the disk replaced, space freed).
    match recovery {
        Recovery::Crash => {
            process.crash(CrashMode::DropUnsynced);
        }
        Recovery::Restart => {}
    }
    disk.clear_faults();
    let process = Process::start(&disk);
    let engine = Engine::open(Path::new(DIR), small(&process))
        .unwrap_or_else(|e| panic!("{context}: reopening after the fault: {e}"));
    let events = all_events(&engine);
    assert_dense(&events, &context);
    let present = bytes_of(&events);
    assert!(
        present.len() >= acked.len() && present[..acked.len()] == acked[..],
        "{context}: an acknowledged event is missing or changed after the reopen"
    );
    let extra: Vec<&Event> = events[acked.len()..].iter().collect();
    if !extra.is_empty() {
        // Only a restart may keep the commit whose outcome was unknown, and only whole.
        assert_eq!(
            recovery,
            Recovery::Restart,
            "{context}: a crash kept unacknowledged events"
        );
        let commit = unknown
            .as_ref()
            .expect("extra events come from the failed commit");
        assert_eq!(
            extra.len(),
            client_ids(commit).len(),
            "{context}: the failed commit is there in part"
        );
        assert!(
            rebuilt_bytes(commit, &extra) == bytes_of(&events[acked.len()..]),
            "{context}: the failed commit's events differ"
        );
    }
    let mut expected = present;
    // The store takes commits again, and they survive the next crash.
    for i in 0..5 {
        let commit = workload_commit(1, i);
        let prepared = commit.clone().prepare(engine.limits()).expect("valid");
        let outcome = engine
            .commit_blocking(prepared)
            .unwrap_or_else(|e| panic!("{context}: a commit after the reopen: {e}"));
        expected.extend(expected_bytes(&commit, &outcome));
    }
    engine.close();
    drop(engine);
    process.crash(CrashMode::DropUnsynced);
    let process = Process::start(&disk);
    let engine = open(small(&process));
    assert_holds_exactly(&engine, &expected, &format!("{context}, after the second crash"));
    engine.close();
    drop(engine);
    verify_clean(&disk, &context);
    failed_at_open
}

/// Fails each write of the workload in turn, once (the engine must stop writing by itself),
/// and recovers by a crash and by a restart.
#[test]
fn failed_write_at_every_write_of_the_workload() {
    let base = baseline();
    let mut opens = 0;
    for n in 0..=base.writes {
        for recovery in [Recovery::Crash, Recovery::Restart] {
            opens += usize::from(fault_scenario(Fault::Write(n, Repeat::Once), recovery));
        }
    }
    assert!(opens > 0, "the sweep covers the creation of the first segment");
    for n in [0, 3, base.writes / 2] {
        fault_scenario(Fault::Write(n, Repeat::Forever), Recovery::Crash);
    }
}

/// Fails each sync of the workload in turn (data and folder syncs), and recovers by a crash:
/// after a failed fsync the page cache may lie, so only a crash (or a new disk) is a clean
/// start.
#[test]
fn failed_sync_at_every_sync_of_the_workload() {
    let base = baseline();
    let mut opens = 0;
    for n in 0..=base.syncs {
        opens += usize::from(fault_scenario(Fault::Sync(n, Repeat::Once), Recovery::Crash));
    }
    assert!(opens > 0, "the sweep covers the creation of the first segment");
    for n in [1, base.syncs / 2] {
        fault_scenario(Fault::Sync(n, Repeat::Forever), Recovery::Crash);
    }
}

/// Tears each write of the workload in turn: a prefix reaches the file, then an error.
#[test]
fn torn_write_at_every_write_of_the_workload() {
    let base = baseline();
    for n in 0..=base.writes {
        let prefix = [1, 7, 40, 300][n as usize % 4];
        for recovery in [Recovery::Crash, Recovery::Restart] {
            fault_scenario(Fault::Torn(n, prefix), recovery);
        }
    }
}

/// Runs out of space at many points of the workload; once space is back the store reopens
/// with every acknowledged event and takes commits again.
#[test]
fn disk_full_at_many_points_of_the_workload() {
    let base = baseline();
    let steps = 30;
    for step in 0..=steps {
        let budget = base.bytes * step / steps + step % 7;
        for recovery in [Recovery::Restart, Recovery::Crash] {
            fault_scenario(Fault::DiskFull(budget), recovery);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Crashes under concurrent commits
// ---------------------------------------------------------------------------------------------

/// Every commit sent in a round, and the outcomes of those acknowledged.
#[derive(Debug, Default)]
struct Ledger {
    sent: Vec<Commit>,
    acked: Vec<(Commit, CommitOutcome)>,
}

const WRITERS: usize = 4;
const COMMITS_PER_WRITER: usize = 25;

/// A commit of writer `w`: its own aggregates, a shared one, sometimes both at once.
fn concurrent_commit(round: u32, w: usize, i: usize) -> Commit {
    let event = |aggregate_type: &str, j: usize| {
        let id = Uuid::from_u128(
            (1u128 << 126) | (u128::from(round) << 48) | ((w as u128) << 32) | ((i as u128) << 8) | j as u128,
        );
        NewEvent::new(
            aggregate_type,
            "Happened",
            json!({"w": w, "i": i, "j": j, "pad": "q".repeat((w * 31 + i * 17) % 300)}),
        )
        .with_id(id)
        .with_created_at(Timestamp::from_micros(1_704_067_200_000_000 + i as i64))
    };
    let own = AggregateAppend {
        aggregate_id: format!("w{w}-{}", i % 2),
        expected_version: ExpectedVersion::Any,
        events: (0..1 + (i + w) % 3).map(|j| event("Writer", j)).collect(),
    };
    let shared = AggregateAppend {
        aggregate_id: "shared".to_owned(),
        expected_version: ExpectedVersion::Any,
        events: vec![event("Shared", 7)],
    };
    let appends = match i % 4 {
        0 => vec![shared],
        1 => vec![own, shared],
        _ => vec![own],
    };
    Commit {
        appends,
        condition: None,
    }
}

/// Where a round crashes.
#[derive(Debug, Clone, Copy)]
enum CrashAfter {
    /// Right after the Nth acknowledgement (counting across writers).
    Acks(usize),
    /// Right after the Nth operation that changes the disk, whatever is in flight.
    Ops(u64),
    /// Right after the Nth write, before its sync.
    Writes(u64),
}

/// Runs `WRITERS` concurrent writers on `store` until each has sent its commits or failed,
/// crashing at `point` (or at the end, if the writers finish first).
fn crash_round(
    rt: &tokio::runtime::Runtime,
    store: &EmbeddedStore,
    process: &Process,
    round: u32,
    point: CrashAfter,
    mode: CrashMode,
) -> (Ledger, CrashReport) {
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let count = Arc::new(AtomicUsize::new(0));
    let crash_at = match point {
        CrashAfter::Acks(n) => n,
        CrashAfter::Ops(n) => {
            process.crash_after(n, false, mode);
            usize::MAX
        }
        CrashAfter::Writes(n) => {
            process.crash_after(n, true, mode);
            usize::MAX
        }
    };
    rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..WRITERS {
            let (store, process, ledger, count) =
                (store.clone(), process.clone(), ledger.clone(), count.clone());
            tasks.spawn(async move {
                for i in 0..COMMITS_PER_WRITER {
                    let commit = concurrent_commit(round, w, i);
                    ledger.lock().sent.push(commit.clone());
                    match store.commit(commit.clone()).await {
                        Ok(outcome) => {
                            ledger.lock().acked.push((commit, outcome));
                            if count.fetch_add(1, Ordering::SeqCst) + 1 == crash_at {
                                process.crash(mode);
                            }
                        }
                        Err(error) => {
                            // Only a dead process fails a commit here; what it answers then
                            // (unavailable, or an internal error for a read of the index that
                            // failed) no client of a crashed server would ever receive.
                            assert!(
                                process.crash_report().is_some(),
                                "a commit failed before the crash: {error:?}"
                            );
                            return;
                        }
                    }
                }
            });
        }
        wait::join_all("the writers", std::time::Duration::from_secs(60), &mut tasks).await;
    });
    // The writers finished before the crash point: crash now (a no-op after a crash).
    let report = process.crash(mode);
    let ledger = std::mem::take(&mut *ledger.lock());
    (ledger, process.crash_report().unwrap_or(report))
}

/// What a reopened store must hold: every acknowledged event byte for byte, dense positions
/// and versions, and every commit whole or absent.
fn check_after_crash(events: &[Event], ledgers: &[&Ledger], context: &str) {
    assert_dense(events, context);
    let by_position: HashMap<u64, &Event> = events.iter().map(|e| (e.position(), e)).collect();
    for ledger in ledgers {
        for (commit, outcome) in &ledger.acked {
            let expected = expected_bytes(commit, outcome);
            let positions = outcome
                .appends
                .iter()
                .flat_map(|a| a.events.iter().map(|e| e.position));
            for (position, bytes) in positions.zip(&expected) {
                let found = by_position
                    .get(&position)
                    .unwrap_or_else(|| panic!("{context}: acknowledged position {position} is lost"));
                assert!(
                    found.as_bytes()[..] == bytes[..],
                    "{context}: acknowledged position {position} changed"
                );
            }
        }
    }
    let mut owner: HashMap<Uuid, (&Commit, usize)> = HashMap::new();
    for ledger in ledgers {
        for commit in &ledger.sent {
            for (k, id) in client_ids(commit).into_iter().enumerate() {
                owner.insert(id, (commit, k));
            }
        }
    }
    let mut at = 0;
    while at < events.len() {
        let first = &events[at];
        let (commit, k) = owner.get(&first.event_id()).unwrap_or_else(|| {
            panic!(
                "{context}: position {} holds an event nobody sent",
                first.position()
            )
        });
        assert_eq!(
            *k,
            0,
            "{context}: position {} starts a commit in its middle",
            first.position()
        );
        let n = client_ids(commit).len();
        let run: Vec<&Event> = events[at..].iter().take(n).collect();
        assert_eq!(run.len(), n, "{context}: the last commit is there in part");
        let ids: Vec<Uuid> = run.iter().map(|e| e.event_id()).collect();
        assert_eq!(
            ids,
            client_ids(commit),
            "{context}: a commit's events are not together, in order"
        );
        assert!(
            rebuilt_bytes(commit, &run) == bytes_of(&events[at..at + n]),
            "{context}: a commit's content changed"
        );
        at += n;
    }
}

fn crash_under_concurrent_commits(mode: CrashMode, point: CrashAfter) -> Vec<CrashReport> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let disk = FaultFs::new();
    let mut ledgers: Vec<Ledger> = Vec::new();
    let mut reports = Vec::new();
    for round in 0..2u32 {
        let context = format!("{mode:?}, crash {point:?}, round {round}");
        let process = Process::start(&disk);
        let engine = Engine::open(Path::new(DIR), small(&process))
            .unwrap_or_else(|e| panic!("{context}: open before the round: {e}"));
        let store = EmbeddedStore::new(Arc::new(engine));
        // The second round crashes at another point, with another seed.
        let (round_mode, round_point) = match (mode, point) {
            (CrashMode::PartialPersistence { seed }, _) if round > 0 => (
                CrashMode::PartialPersistence {
                    seed: seed.wrapping_mul(31).wrapping_add(1),
                },
                point,
            ),
            (_, CrashAfter::Acks(n)) if round > 0 => (mode, CrashAfter::Acks(n + 7)),
            (_, CrashAfter::Ops(n)) if round > 0 => (mode, CrashAfter::Ops(n * 2 + 3)),
            (_, CrashAfter::Writes(n)) if round > 0 => (mode, CrashAfter::Writes(n + 5)),
            _ => (mode, point),
        };
        let (ledger, report) = crash_round(&rt, &store, &process, round, round_point, round_mode);
        reports.push(report);
        drop(store);
        ledgers.push(ledger);
        let process = Process::start(&disk);
        let engine = Engine::open(Path::new(DIR), small(&process))
            .unwrap_or_else(|e| panic!("{context}: reopening after the crash: {e}"));
        let events = all_events(&engine);
        let refs: Vec<&Ledger> = ledgers.iter().collect();
        check_after_crash(&events, &refs, &context);
        // Every other read path agrees with the scan.
        assert_holds_exactly(&engine, &bytes_of(&events), &context);
        engine.close();
    }
    verify_clean(&disk, &format!("{mode:?}, crash {point:?}"));
    reports
}

#[test]
fn crash_dropping_unsynced_bytes_under_concurrent_commits() {
    for n in [1, 9, 23, 47, 80, 1000] {
        crash_under_concurrent_commits(CrashMode::DropUnsynced, CrashAfter::Acks(n));
    }
    for n in [0, 1, 2, 5, 17, 40, 77, 150, 301] {
        crash_under_concurrent_commits(CrashMode::DropUnsynced, CrashAfter::Ops(n));
    }
    for n in [0, 3, 11, 30, 64] {
        crash_under_concurrent_commits(CrashMode::DropUnsynced, CrashAfter::Writes(n));
    }
}

#[test]
fn power_loss_tearing_unsynced_sectors_under_concurrent_commits() {
    let mut kept = 0;
    let mut dropped = 0;
    let mut entries = [0; 2];
    for seed in 0..32u64 {
        let point = if seed % 2 == 0 {
            CrashAfter::Writes(seed * 7 % 100)
        } else {
            CrashAfter::Ops(seed * 37 % 250)
        };
        for report in crash_under_concurrent_commits(CrashMode::PartialPersistence { seed }, point) {
            kept += report.sectors_kept;
            dropped += report.sectors_dropped;
            entries[usize::from(report.entries_kept)] += 1;
        }
    }
    assert!(
        kept > 0 && dropped > 0 && entries[0] > 0 && entries[1] > 0,
        "the seeds tear something: kept {kept}, dropped {dropped} sectors; folder entries {entries:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Corruption
// ---------------------------------------------------------------------------------------------

/// The offset and length of every frame of a segment file.
fn frames(segment: &[u8]) -> Vec<(u64, usize)> {
    let mut out = Vec::new();
    let mut at = SEGMENT_HEADER_LEN;
    while at + FRAME_HEADER_LEN <= segment.len() {
        let header = FrameHeader::decode(&segment[at..]).expect("a frame header");
        let len = FRAME_HEADER_LEN + header.body_len as usize;
        out.push((at as u64, len));
        at += len;
    }
    assert_eq!(at, segment.len(), "frames tile the segment");
    out
}

/// A store of `commits` workload commits, closed; returns the bytes of every event.
fn filled(disk: &FaultFs, options: impl Fn(&Process) -> EngineOptions, commits: usize) -> Vec<Vec<u8>> {
    let process = Process::start(disk);
    let options = options(&process);
    let memtable_events_max = options.memtable_events_max;
    let engine = open(options);
    let mut expected = Vec::new();
    for i in 0..commits {
        let commit = workload_commit(0, i);
        let prepared = commit.clone().prepare(engine.limits()).expect("valid");
        let outcome = engine.commit_blocking(prepared).expect("commit");
        expected.extend(expected_bytes(&commit, &outcome));
        settle(&engine, memtable_events_max);
    }
    engine.close();
    expected
}

#[track_caller]
fn expect_corruption(result: Result<Engine, EngineError>) -> (PathBuf, u64, String) {
    match result {
        Err(EngineError::Corruption { path, offset, reason }) => (path, offset, reason),
        Err(other) => panic!("expected a corruption error, got {other:?}"),
        Ok(_) => panic!("expected a corruption error, the store opened"),
    }
}

#[test]
fn a_bad_frame_followed_by_good_ones_stops_the_open_naming_file_and_offset() {
    let disk = FaultFs::new();
    filled(&disk, |p| log_only(p, 1 << 20), 8);
    let path = segment_path(1);
    let segment = disk.read_file(&path).expect("segment 1");
    let all = frames(&segment);
    assert_eq!(all.len(), 8, "one frame per commit");
    let (offset, len) = all[3];
    disk.corrupt(&path, offset + len as u64 / 2, 0x20)
        .expect("corrupt");

    let process = Process::start(&disk);
    let (bad_path, bad_offset, reason) =
        expect_corruption(Engine::open(Path::new(DIR), log_only(&process, 1 << 20)));
    assert_eq!(bad_path, path, "the error names the segment");
    assert_eq!(
        bad_offset, offset,
        "the error names the frame's offset ({reason})"
    );
    let message = EngineError::Corruption {
        path: bad_path,
        offset: bad_offset,
        reason,
    }
    .to_string();
    assert!(
        message.contains("0000000001.seg") && message.contains(&offset.to_string()),
        "{message}"
    );
    assert_eq!(
        disk.read_file(&path),
        Some(segment_with_flip(&segment, offset + len as u64 / 2, 0x20)),
        "the open changed nothing"
    );

    let report = factstore_engine::verify::verify(&disk, Path::new(DIR)).expect("verify runs");
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("0000000001.seg") && p.contains(&format!("offset {offset}"))),
        "verify reports the bad frame: {:?}",
        report.problems
    );
}

fn segment_with_flip(segment: &[u8], offset: u64, xor: u8) -> Vec<u8> {
    let mut out = segment.to_vec();
    out[offset as usize] ^= xor;
    out
}

#[test]
fn a_bad_last_frame_of_an_earlier_segment_stops_the_open() {
    let disk = FaultFs::new();
    filled(&disk, |p| log_only(p, 4096), 20);
    let names = disk.file_names(log_dir());
    assert!(names.len() >= 3, "segments rotated: {names:?}");
    let path = segment_path(2);
    let segment = disk.read_file(&path).expect("segment 2");
    let &(offset, len) = frames(&segment).last().expect("a frame");
    disk.corrupt(&path, offset + len as u64 - 1, 0x01)
        .expect("corrupt");
    let process = Process::start(&disk);
    let (bad_path, bad_offset, _) = expect_corruption(Engine::open(Path::new(DIR), log_only(&process, 4096)));
    assert_eq!(
        (bad_path, bad_offset),
        (path, offset),
        "not a torn tail: later segments follow"
    );
}

#[test]
fn a_bad_last_frame_is_a_torn_tail_cut_off() {
    let disk = FaultFs::new();
    let expected = filled(&disk, |p| log_only(p, 1 << 20), 8);
    let path = segment_path(1);
    let segment = disk.read_file(&path).expect("segment 1");
    let &(offset, len) = frames(&segment).last().expect("a frame");
    disk.corrupt(&path, offset + len as u64 - 3, 0x80)
        .expect("corrupt");
    // The last commit (i = 7) holds 1 + 7 % 3 = 2 events.
    let kept = &expected[..expected.len() - 2];

    let process = Process::start(&disk);
    let engine = open(log_only(&process, 1 << 20));
    assert_holds_exactly(&engine, kept, "after cutting the torn tail");
    assert_eq!(
        disk.read_file(&path).map(|s| s.len() as u64),
        Some(offset),
        "the segment ends where the tail began"
    );
    assert_eq!(
        disk.durable_file(&path).map(|s| s.len() as u64),
        Some(offset),
        "the cut is synced"
    );
    // The store goes on from there.
    let commit = workload_commit(1, 0);
    let outcome = engine
        .commit_blocking(commit.clone().prepare(engine.limits()).expect("valid"))
        .expect("a commit after the cut");
    assert_eq!(outcome.position, kept.len() as u64 + 1);
    let mut now = kept.to_vec();
    now.extend(expected_bytes(&commit, &outcome));
    engine.close();
    drop(engine);
    process.crash(CrashMode::DropUnsynced);
    let process = Process::start(&disk);
    let engine = open(log_only(&process, 1 << 20));
    assert_holds_exactly(&engine, &now, "after a crash");
    engine.close();
    drop(engine); // verify takes the folder's lock
    verify_clean(&disk, "after the cut");
}

/// Flips one byte at a time, across every segment of a log that recovery reads whole: the
/// open either refuses with a corruption error naming that segment, or (for a byte of the
/// last frame) cuts the tail and keeps every event before it.
#[test]
fn any_flipped_byte_of_the_log_is_refused_or_cut_never_misread() {
    let disk = FaultFs::new();
    let expected = filled(&disk, |p| log_only(p, 4096), 12);
    let names = disk.file_names(log_dir());
    let last_no = names.len() as u32;
    let mut refused = 0;
    let mut cut = 0;
    for no in 1..=last_no {
        let path = segment_path(no);
        let original = disk.read_file(&path).expect("segment");
        let last_frame = frames(&original).last().map_or(u64::MAX, |f| f.0);
        for offset in (0..original.len() as u64).step_by(37) {
            let copy = FaultFs::new();
            copy_store(&disk, &copy);
            copy.corrupt(&path, offset, 0x04).expect("corrupt");
            let process = Process::start(&copy);
            match Engine::open(Path::new(DIR), log_only(&process, 4096)) {
                Err(EngineError::Corruption { path: bad, .. }) => {
                    assert_eq!(
                        bad, path,
                        "byte {offset} of segment {no}: the error names the segment"
                    );
                    refused += 1;
                }
                Err(other) => panic!("byte {offset} of segment {no}: {other:?}"),
                Ok(engine) => {
                    assert!(
                        no == last_no && offset >= last_frame,
                        "byte {offset} of segment {no} went unnoticed"
                    );
                    let events = all_events(&engine);
                    let present = bytes_of(&events);
                    assert!(
                        present.len() < expected.len() && present[..] == expected[..present.len()],
                        "byte {offset}: the events before the tail are intact"
                    );
                    cut += 1;
                    engine.close();
                }
            }
        }
    }
    assert!(
        refused > 0 && cut > 0,
        "both outcomes were seen: refused {refused}, cut {cut}"
    );
}

/// Copies the durable image of the store folder of `from` into `to` (a fresh disk).
fn copy_store(from: &FaultFs, to: &FaultFs) {
    for sub in ["log", "index"] {
        let dir = Path::new(DIR).join(sub);
        for name in from.durable_file_names(&dir) {
            let bytes = from.durable_file(dir.join(&name)).expect("a durable file");
            to.install_file(dir.join(&name), &bytes).expect("install");
        }
    }
}

#[test]
fn a_bad_record_below_the_checkpoint_is_an_error_on_read_and_in_verify() {
    let disk = FaultFs::new();
    let expected = filled(&disk, small, 12);
    let manifest = String::from_utf8_lossy(&disk.read_file(index_dir().join("MANIFEST")).expect("manifest"))
        .into_owned();
    assert!(
        !manifest.contains("\"indexed_through\":0"),
        "the index has a checkpoint: {manifest}"
    );
    // A byte in the middle of the first record of segment 1, which is indexed.
    let path = segment_path(1);
    let offset = (SEGMENT_HEADER_LEN + FRAME_HEADER_LEN + 8 + 30) as u64;
    disk.corrupt(&path, offset, 0x10).expect("corrupt");

    let process = Process::start(&disk);
    let engine = open(small(&process));
    let read = engine.read_events(&EventQuery::all(0, 1000));
    assert!(
        matches!(&read, Err(EngineError::Corruption { path: p, .. }) if *p == path),
        "a read of the damaged record fails, naming the segment: {:?}",
        read.as_ref().map(|page| page.events.len())
    );
    assert!(
        matches!(
            StoreError::from(read.expect_err("an error")),
            StoreError::Internal(_)
        ),
        "clients see an internal error"
    );
    // Reads that do not touch it are right: by id, and by aggregate for the other aggregates.
    let events: Vec<Event> = expected
        .iter()
        .map(|b| Event::from_bytes(bytes::Bytes::copy_from_slice(b)).expect("an event"))
        .collect();
    for event in &events[1..] {
        let found = engine.get_event(event.event_id()).expect("an undamaged event");
        assert_eq!(found.as_bytes(), event.as_bytes());
    }
    let damaged_aggregate = events[0].aggregate_id();
    for aggregate in ["acct-1", "acct-2", "acct-3", "order-0", "order-1"] {
        assert_ne!(aggregate, damaged_aggregate);
        let page = engine
            .read_aggregate(&AggregateQuery::forward(aggregate, 1000))
            .expect("an undamaged aggregate");
        let want: Vec<&Event> = events.iter().filter(|e| e.aggregate_id() == aggregate).collect();
        assert!(
            page.events
                .iter()
                .map(|e| e.as_bytes())
                .eq(want.iter().map(|e| e.as_bytes()))
        );
    }
    assert!(
        engine
            .read_aggregate(&AggregateQuery::forward(damaged_aggregate, 1000))
            .is_err()
    );
    engine.close();
    drop(engine); // verify takes the folder's lock
    let report = factstore_engine::verify::verify(&disk, Path::new(DIR)).expect("verify runs");
    assert!(
        report.problems.iter().any(|p| p.contains("0000000001.seg")),
        "verify reports the damaged record: {:?}",
        report.problems
    );
}

/// Flips bytes across a run file: the open refuses with a corruption error naming the run, or
/// it opens, `verify` reports the damage, and every read answers right or with an error.
#[test]
fn a_damaged_run_file_is_refused_reported_and_never_misread() {
    let disk = FaultFs::new();
    let expected = filled(&disk, small, 8);
    let runs: Vec<String> = disk
        .durable_file_names(index_dir())
        .into_iter()
        .filter(|n| n.ends_with(".run"))
        .collect();
    assert!(!runs.is_empty(), "the workload wrote a run");
    let path = index_dir().join(&runs[0]);
    let original = disk.read_file(&path).expect("run");
    let mut refused = 0;
    let mut opened = 0;
    for offset in (0..original.len() as u64)
        .step_by(13)
        .chain([original.len() as u64 - 1])
    {
        let copy = FaultFs::new();
        copy_store(&disk, &copy);
        copy.corrupt(&path, offset, 0x40).expect("corrupt");
        let process = Process::start(&copy);
        match Engine::open(Path::new(DIR), small(&process)) {
            Err(EngineError::Corruption { path: bad, .. }) => {
                assert_eq!(bad, path, "byte {offset}: the error names the run");
                refused += 1;
            }
            Err(other) => panic!("byte {offset}: {other:?}"),
            Ok(engine) => {
                opened += 1;
                assert_reads_right_or_fail(&engine, &expected, &format!("run byte {offset}"));
                engine.close();
                drop(engine);
                let report = factstore_engine::verify::verify(&copy, Path::new(DIR)).expect("verify runs");
                assert!(
                    report.problems.iter().any(|p| p.contains(&runs[0])),
                    "byte {offset}: verify reports the damaged run: {:?}",
                    report.problems
                );
            }
        }
    }
    assert!(refused > 0, "damage to the run's metadata stops the open");
    assert!(opened > 0, "damage to a block is found when the block is read");
}

/// Every read answers exactly as the undamaged store would, or fails with an error.
fn assert_reads_right_or_fail(engine: &Engine, expected: &[Vec<u8>], context: &str) {
    let events: Vec<Event> = expected
        .iter()
        .map(|b| Event::from_bytes(bytes::Bytes::copy_from_slice(b)).expect("an event"))
        .collect();
    for event in &events {
        if let Ok(found) = engine.get_event(event.event_id()) {
            assert_eq!(
                found.as_bytes(),
                event.as_bytes(),
                "{context}: get_event answered wrongly"
            );
        }
    }
    let mut aggregates: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for event in &events {
        aggregates.entry(event.aggregate_id()).or_default().push(event);
    }
    for (aggregate, mine) in &aggregates {
        if let Ok(page) = engine.read_aggregate(&AggregateQuery::forward(aggregate, 1000)) {
            let want: Vec<&[u8]> = mine.iter().map(|e| &e.as_bytes()[..]).collect();
            let got: Vec<&[u8]> = page.events.iter().map(|e| &e.as_bytes()[..]).collect();
            assert!(
                got == want,
                "{context}: read_aggregate {aggregate} answered wrongly"
            );
        }
        let query = EventQuery {
            filter: factstore_core::EventFilter {
                aggregate_id: Some((*aggregate).to_owned()),
                ..Default::default()
            },
            ..EventQuery::all(0, 1000)
        };
        if let Ok(page) = engine.read_events(&query) {
            assert!(
                page.events
                    .iter()
                    .map(|e| &e.as_bytes()[..])
                    .eq(mine.iter().map(|e| &e.as_bytes()[..])),
                "{context}: read_events by aggregate answered wrongly"
            );
        }
    }
    let by_type = EventQuery {
        filter: factstore_core::EventFilter {
            event_types: vec!["Deposited".to_owned()],
            ..Default::default()
        },
        ..EventQuery::all(0, 1000)
    };
    if let Ok(page) = engine.read_events(&by_type) {
        assert!(
            bytes_of(&page.events) == expected,
            "{context}: read_events by type answered wrongly"
        );
    }
    if let Ok(page) = engine.read_events(&EventQuery::all(0, 1000)) {
        assert!(
            bytes_of(&page.events) == expected,
            "{context}: read_events answered wrongly"
        );
    }
}

/// Recovery writes too (it removes an interrupted segment and unlisted index files, cuts a
/// torn tail): a crash at any of its steps, losing unsynced bytes or tearing them, leaves a
/// store the next open recovers with every acknowledged event.
#[test]
fn a_crash_during_recovery_is_recovered_from() {
    let disk = FaultFs::new();
    let expected = filled(&disk, small, 12);
    let segments = disk.file_names(log_dir());
    let last = segments.len() as u32;
    // A torn frame at the end of the last segment: the first half of a copy of its last frame.
    let path = segment_path(last);
    let segment = disk.read_file(&path).expect("the last segment");
    let &(offset, len) = frames(&segment).last().expect("a frame");
    let torn = &segment[offset as usize..offset as usize + len / 2];
    let file = disk.open(&path, OpenMode::ReadWrite).expect("open the segment");
    file.write_all_at(torn, segment.len() as u64).expect("append");
    file.sync_data().expect("sync");
    drop(file);
    // A segment whose creation was cut short, and index files no manifest lists.
    disk.install_file(segment_path(last + 1), &[0u8; 10])
        .expect("install");
    disk.install_file(index_dir().join("000000009999.run"), b"half a run")
        .expect("install");
    disk.install_file(index_dir().join("MANIFEST.tmp"), b"half a manifest")
        .expect("install");

    let mut fired = 0;
    for k in 0..10u64 {
        for mode in [CrashMode::DropUnsynced, CrashMode::PartialPersistence { seed: k }] {
            let context = format!("crash after {k} operations of the recovery, {mode:?}");
            let copy = FaultFs::new();
            copy_store(&disk, &copy);
            let process = Process::start(&copy);
            process.crash_after(k, false, mode);
            if let Ok(engine) = Engine::open(Path::new(DIR), small(&process)) {
                drop(engine);
            }
            fired += usize::from(process.crash_report().is_some());
            process.crash(mode);

            let process = Process::start(&copy);
            let engine = Engine::open(Path::new(DIR), small(&process))
                .unwrap_or_else(|e| panic!("{context}: reopening: {e}"));
            assert_holds_exactly(&engine, &expected, &context);
            let commit = workload_commit(2, 0);
            let outcome = engine
                .commit_blocking(commit.clone().prepare(engine.limits()).expect("valid"))
                .unwrap_or_else(|e| panic!("{context}: a commit after recovery: {e}"));
            let mut now = expected.clone();
            now.extend(expected_bytes(&commit, &outcome));
            assert_holds_exactly(&engine, &now, &context);
            engine.close();
            drop(engine);
            verify_clean(&copy, &context);
        }
    }
    // The recovery above makes six changes to the disk: k = 0..5 crash inside it, in both modes.
    assert!(fired >= 8, "the crash points fall inside the recovery: {fired}");
}

/// Regression: after a failed sync, Linux (and `FaultFs`) may mark the frame's pages clean
/// without writing them. A plain restart used to read the failed group back from the page
/// cache, build on it, and a later power loss then left a bad frame before acknowledged ones,
/// so the store refused to open. The writer now cuts a failed frame off the file, so the
/// restart does not see it and later commits are written (and synced) in its place.
#[test]
fn restart_after_a_failed_sync_then_power_loss_keeps_later_acknowledged_commits() {
    let disk = FaultFs::new();
    let acked_before = filled(&disk, |p| log_only(p, 1 << 20), 4);
    let process = Process::start(&disk);
    let engine = open(log_only(&process, 1 << 20));
    disk.fail_sync_after(0, Repeat::Once);
    let failed = workload_commit(3, 0);
    let error = engine
        .commit_blocking(failed.clone().prepare(engine.limits()).expect("valid"))
        .expect_err("the sync fails");
    assert!(matches!(StoreError::from(error), StoreError::Unavailable(_)));
    engine.close();
    drop(engine);

    // A restart, not a crash: the failed frame was cut, so nothing of it comes back.
    let process = Process::start(&disk);
    let engine = open(log_only(&process, 1 << 20));
    let events = all_events(&engine);
    assert_eq!(
        bytes_of(&events),
        acked_before,
        "the failed group is not read back from the page cache"
    );
    let mut after_restart = Vec::new();
    for i in 0..3 {
        let commit = workload_commit(4, i);
        let outcome = engine
            .commit_blocking(commit.clone().prepare(engine.limits()).expect("valid"))
            .expect("a commit after the restart");
        after_restart.extend(expected_bytes(&commit, &outcome));
    }
    engine.close();
    drop(engine);
    process.crash(CrashMode::DropUnsynced);

    let process = Process::start(&disk);
    let engine = Engine::open(Path::new(DIR), log_only(&process, 1 << 20))
        .unwrap_or_else(|e| panic!("the commits acknowledged after the restart are lost: {e}"));
    let events = all_events(&engine);
    let present = bytes_of(&events);
    assert!(
        present.starts_with(&acked_before) && present.ends_with(&after_restart),
        "the commits acknowledged after the restart survive"
    );
}

/// The same promise when the failed sync may belong to a segment rotation (the new segment's
/// header, or the folder that lists it): with 4 KiB segments most commits start a segment, and
/// the failure is moved across every sync of the next few commits. A failed new segment is
/// removed, so the restart starts it again instead of building on a header that may never have
/// reached the disk.
#[test]
fn restart_after_a_failed_sync_during_rotation_keeps_later_acknowledged_commits() {
    let mut failed = 0;
    for k in 0..8 {
        let disk = FaultFs::new();
        let acked_before = filled(&disk, |p| log_only(p, 4096), 3);
        let process = Process::start(&disk);
        let engine = open(log_only(&process, 4096));
        disk.fail_sync_after(k, Repeat::Once);
        let mut acked_during = Vec::new();
        for i in 0..4 {
            let commit = workload_commit(5, i);
            match engine.commit_blocking(commit.clone().prepare(engine.limits()).expect("valid")) {
                Ok(outcome) => acked_during.extend(expected_bytes(&commit, &outcome)),
                Err(error) => {
                    assert!(
                        matches!(StoreError::from(error), StoreError::Unavailable(_)),
                        "k={k}"
                    );
                    failed += 1;
                    break;
                }
            }
        }
        engine.close();
        drop(engine);
        disk.clear_faults();

        let process = Process::start(&disk);
        let engine = open(log_only(&process, 4096));
        let mut acked = acked_before.clone();
        acked.extend(acked_during);
        assert_eq!(
            bytes_of(&all_events(&engine)),
            acked,
            "k={k}: the restart reads exactly what was acknowledged"
        );
        let mut after_restart = Vec::new();
        for i in 0..3 {
            let commit = workload_commit(6, i);
            let outcome = engine
                .commit_blocking(commit.clone().prepare(engine.limits()).expect("valid"))
                .expect("a commit after the restart");
            after_restart.extend(expected_bytes(&commit, &outcome));
        }
        engine.close();
        drop(engine);
        process.crash(CrashMode::DropUnsynced);

        let process = Process::start(&disk);
        let engine = Engine::open(Path::new(DIR), log_only(&process, 4096))
            .unwrap_or_else(|e| panic!("k={k}: the commits acknowledged after the restart are lost: {e}"));
        acked.extend(after_restart);
        assert_eq!(
            bytes_of(&all_events(&engine)),
            acked,
            "k={k}: every acknowledged event survives"
        );
    }
    assert!(
        failed >= 6,
        "the injected failures land inside the commits: {failed}"
    );
}
