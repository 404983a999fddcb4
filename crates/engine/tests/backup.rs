//! Backups of a running engine (`Engine::backup`) and restoring them.
//!
//! - Under concurrent commits, with flushes, merges and segment rotations going on all the
//!   time: every backup opens as a store holding exactly the events of the live store up to
//!   its `head_position`, byte for byte, with positions dense from 1, which is at least the head
//!   when the backup started; `verify` finds nothing. On the real file system immutable files
//!   are hard-linked; on `FaultFs` (no links) everything is copied. On `FaultFs` a crash after
//!   the backups (every unsynced byte and folder entry lost) leaves every backup whole: each
//!   file and folder was synced before the answer.
//! - Beside the engine, a journal that names positions (as a projection's) is never copied
//!   past the log's end, and a catalog that events name (as the schema registry) holds every
//!   aggregate of the log copied: the order of the copy (position state, index, log, catalogs).
//! - A frame written to the active segment but not yet synced is not in a backup taken
//!   meanwhile: its sync fails here, the store never acknowledges it, and the backup holds
//!   exactly the acknowledged events (the active segment is copied up to its durable length).
//! - A failure at any write or sync of a backup answers an error and leaves no
//!   `BACKUP_COMPLETE`, before and after a crash; `restore` refuses such a folder. The first
//!   count that lets the backup through gives a complete one.
//! - Targets: a relative path, a file, a folder inside the store's, a non-empty folder are
//!   refused; `restore` refuses a non-empty target, and a restored folder opens with every
//!   event.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use factstore_core::{Commit, Event, EventQuery, ExpectedVersion, NewEvent, Snapshot, Timestamp};
use factstore_engine::backup::{self, BackupError, BackupSources, DurableFile, EngineOnly, MARKER};
use factstore_engine::io::{File, FileSystem, OpenMode, StdFileSystem};
use factstore_engine::journal::{self, Journal};
use factstore_engine::{Engine, EngineOptions};
use factstore_testkit::faultfs::{FaultFs, Repeat};
use serde_json::json;

fn options(fs: Arc<dyn FileSystem>) -> EngineOptions {
    EngineOptions {
        fs,
        // Small, so that flushes, merges and rotations happen during every backup.
        memtable_events_max: 64,
        segment_bytes_max: 8 << 10,
        merge_fan_in: 2,
        ..EngineOptions::default()
    }
}

fn append(engine: &Engine, aggregate: &str, n: usize) -> Option<u64> {
    let events = (0..n)
        .map(|i| {
            NewEvent::new(
                "Account",
                "Deposited",
                json!({"amount": i, "pad": "x".repeat(40)}),
            )
        })
        .collect();
    let prepared = Commit::single(aggregate, ExpectedVersion::Any, events)
        .prepare(engine.limits())
        .expect("valid");
    let outcome = engine.commit_blocking(prepared).ok()?;
    outcome.appends.last()?.events.last().map(|e| e.position)
}

fn all_events(engine: &Engine) -> Vec<Event> {
    let mut out = Vec::new();
    loop {
        let page = engine
            .read_events(&EventQuery::all(out.len() as u64, 10_000))
            .expect("read");
        if page.events.is_empty() {
            return out;
        }
        out.extend(page.events);
    }
}

fn snapshot(aggregate: &str, version: u64) -> Snapshot {
    Snapshot {
        aggregate_id: aggregate.to_owned(),
        version,
        snapshot_type: "Account".to_owned(),
        snapshot_version: 1,
        state: format!("{{\"version\":{version}}}"),
        created_at: Timestamp::now(),
    }
}

/// Opens the store in `dir` and checks it holds exactly `live[..head]`, dense from 1, the
/// snapshot, and passes `verify`.
fn check_backup(fs: &Arc<dyn FileSystem>, dir: &Path, head: u64, live: &[Event]) {
    let report = factstore_engine::verify::verify(&**fs, dir).expect("verify runs");
    assert!(
        report.is_ok(),
        "verify of {}: {:?}",
        dir.display(),
        report.problems
    );
    let engine = Engine::open(dir, options(fs.clone())).expect("a backup opens");
    let events = all_events(&engine);
    assert_eq!(
        events.len() as u64,
        head,
        "{}: the events up to its head",
        dir.display()
    );
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event.position(), i as u64 + 1, "positions are dense");
        assert_eq!(event, &live[i], "the event at {} is the live store's", i + 1);
    }
    let kept = engine
        .latest_snapshot("seed", None)
        .expect("read")
        .expect("the snapshot");
    assert_eq!(kept.version, 3);
    engine.close();
}

/// State beside the engine, as the services keep it: a journal that a thread keeps
/// appending the head to (as a projection records its checkpoint: it names positions), and a
/// catalog in which writers register each aggregate before its first commit (as schemas are
/// registered before events use them: the events name it).
struct Beside {
    heads: Journal,
    catalog: Journal,
}

const HEADS: &str = "beside/heads.journal";
const CATALOG: &str = "beside/catalog.journal";
const MAGIC: [u8; 8] = *b"FSTESTBK";

impl BackupSources for Beside {
    fn position_state(&self) -> Vec<DurableFile> {
        vec![self.heads.durable()]
    }

    fn catalogs(&self) -> Vec<DurableFile> {
        vec![self.catalog.durable()]
    }
}

fn records(fs: &Arc<dyn FileSystem>, path: &Path) -> Vec<Vec<u8>> {
    let file = fs.open(path, OpenMode::Read).expect("open");
    let mut data = vec![0u8; file.len().expect("len") as usize];
    file.read_exact_at(&mut data, 0).expect("read");
    journal::decode_all(&data, MAGIC, path).expect("a journal")
}

/// The backup's copies of the journals beside the engine agree with its log: the heads
/// journal names no position past the log's end, and every aggregate of the log is in the
/// catalog.
fn check_beside(fs: &Arc<dyn FileSystem>, to: &Path, head: u64, events: &[Event]) {
    let last_head = records(fs, &to.join(HEADS))
        .last()
        .map_or(0, |r| u64::from_le_bytes(r[..8].try_into().expect("8 bytes")));
    assert!(
        last_head <= head,
        "{}: the journal copied names position {last_head}, past the log's end {head}",
        to.display()
    );
    let catalog: std::collections::HashSet<Vec<u8>> = records(fs, &to.join(CATALOG)).into_iter().collect();
    for event in &events[..head as usize] {
        assert!(
            catalog.contains(event.aggregate_id().as_bytes()),
            "{}: aggregate {} is in the log copied but not in the catalog copied",
            to.display(),
            event.aggregate_id()
        );
    }
}

/// Backups taken one after the other while three threads commit and the journals beside
/// change; returns each backup's folder and head, the live events, and the files linked.
fn backups_under_load(
    fs: &Arc<dyn FileSystem>,
    data: &Path,
    root: &Path,
) -> (Vec<(PathBuf, u64)>, Vec<Event>, u64) {
    let engine = Arc::new(Engine::open(data, options(fs.clone())).expect("open"));
    append(&engine, "seed", 3);
    assert!(!engine.put_snapshot(&snapshot("seed", 3)).expect("snapshot"));
    let beside = Arc::new(Beside {
        heads: Journal::open(fs.clone(), &data.join(HEADS), MAGIC)
            .expect("journal")
            .0,
        catalog: Journal::open(fs.clone(), &data.join(CATALOG), MAGIC)
            .expect("journal")
            .0,
    });
    beside.catalog.append(&[b"seed"]).expect("register");
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads: Vec<_> = (0..3)
        .map(|w| {
            let (engine, beside, stop) = (engine.clone(), beside.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let aggregate = format!("acc:{w}:{}", i / 4);
                    if i.is_multiple_of(4) {
                        beside.catalog.append(&[aggregate.as_bytes()]).expect("register");
                    }
                    append(&engine, &aggregate, 1 + i % 3);
                    i += 1;
                }
            })
        })
        .collect();
    threads.push({
        let (engine, beside, stop) = (engine.clone(), beside.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let head = engine.head().position;
                beside
                    .heads
                    .append(&[&head.to_le_bytes()])
                    .expect("record the head");
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    });
    let mut taken = Vec::new();
    let mut linked = 0;
    for b in 0..12 {
        std::thread::sleep(Duration::from_millis(15));
        let before = engine.head().position;
        let to = root.join(format!("backup-{b}"));
        let report = engine.backup(&to, &*beside).expect("backup");
        assert!(
            report.info.head_position >= before,
            "the backup ends at {} before the head {before} acknowledged when it started",
            report.info.head_position
        );
        assert_eq!(backup::read_marker(&**fs, &to).expect("marker"), report.info);
        linked += report.linked_files;
        taken.push((to, report.info.head_position));
    }
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().expect("thread");
    }
    let live = all_events(&engine);
    engine.close();
    for (to, head) in &taken {
        check_beside(fs, to, *head, &live);
    }
    (taken, live, linked)
}

#[test]
fn backups_under_concurrent_commits_hold_every_event_up_to_their_head_on_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs: Arc<dyn FileSystem> = Arc::new(StdFileSystem);
    let data = dir.path().join("data");
    let (taken, live, linked) = backups_under_load(&fs, &data, dir.path());
    assert!(
        linked > 0,
        "sealed segments and runs are linked on one file system"
    );
    for (to, head) in &taken {
        check_backup(&fs, to, *head, &live);
    }
    // A restore is a copy that opens the same.
    let (from, head) = taken.last().expect("a backup");
    let restored = dir.path().join("restored");
    let report = backup::restore(&*fs, from, &restored).expect("restore");
    assert_eq!(report.info.head_position, *head);
    assert!(
        !restored.join(MARKER).exists(),
        "a restored folder is a data folder"
    );
    check_backup(&fs, &restored, *head, &live);
    match backup::restore(&*fs, from, &restored) {
        Err(BackupError::TargetNotEmpty(_)) => {}
        other => panic!("a restore into a non-empty folder: {other:?}"),
    }
}

#[test]
fn backups_on_a_file_system_without_links_survive_a_crash_after_the_answer() {
    let disk = FaultFs::new();
    let fs: Arc<dyn FileSystem> = Arc::new(disk.clone());
    let (taken, live, linked) = backups_under_load(&fs, Path::new("/data"), Path::new("/"));
    assert_eq!(linked, 0, "FaultFs has no links: everything was copied");
    // Every byte and folder entry not synced is lost: what each answer promised must remain.
    disk.crash();
    for (to, head) in &taken {
        check_backup(&fs, to, *head, &live);
    }
}

/// A store with events in several segments, index runs and a snapshot, on `FaultFs`, quiet.
fn quiet_store(disk: &FaultFs) -> Engine {
    let engine = Engine::open(Path::new("/data"), options(Arc::new(disk.clone()))).expect("open");
    append(&engine, "seed", 3);
    engine.put_snapshot(&snapshot("seed", 3)).expect("snapshot");
    for i in 0..120 {
        append(&engine, &format!("acc:{}", i % 7), 1 + i % 4);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !engine.shared().index_quiet() {
        assert!(Instant::now() < deadline, "the indexer did not settle");
        std::thread::sleep(Duration::from_millis(5));
    }
    engine
}

#[test]
fn a_backup_that_fails_at_any_write_or_sync_is_never_marked_complete() {
    for fault in ["write", "sync"] {
        let mut failures = 0;
        for n in 0.. {
            let disk = FaultFs::new();
            let engine = quiet_store(&disk);
            let to = Path::new("/backup");
            match fault {
                "write" => disk.fail_write_after(n, Repeat::Once),
                _ => disk.fail_sync_after(n, Repeat::Once),
            }
            let result = engine.backup(to, &EngineOnly);
            disk.clear_faults();
            match result {
                Ok(report) => {
                    assert!(
                        failures > 10,
                        "a backup makes many {fault}s, only {failures} failed"
                    );
                    let live = all_events(&engine);
                    engine.close();
                    drop(engine);
                    disk.crash();
                    let fs: Arc<dyn FileSystem> = Arc::new(disk.clone());
                    check_backup(&fs, to, report.info.head_position, &live);
                    break;
                }
                Err(BackupError::Failed(_)) => {
                    failures += 1;
                    assert!(
                        !disk.file_names(to).contains(&MARKER.to_owned()),
                        "{fault} {n} failed, yet the backup is marked complete"
                    );
                    assert!(
                        matches!(
                            backup::restore(&disk, to, Path::new("/restored")),
                            Err(BackupError::NotABackup { .. })
                        ),
                        "restore takes a failed backup ({fault} {n})"
                    );
                    engine.close();
                    drop(engine);
                    disk.crash();
                    assert!(
                        disk.durable_file(to.join(MARKER)).is_none(),
                        "{fault} {n} failed, yet a crash leaves the marker"
                    );
                }
                Err(other) => panic!("{fault} {n}: {other}"),
            }
        }
    }
}

#[test]
fn unusable_targets_are_refused_before_anything_is_written() {
    let disk = FaultFs::new();
    let engine = quiet_store(&disk);
    let refused = |to: &str| engine.backup(Path::new(to), &EngineOnly).expect_err(to);
    assert!(matches!(
        refused("relative/folder"),
        BackupError::InvalidTarget(_)
    ));
    assert!(matches!(refused("/data/inside"), BackupError::InvalidTarget(_)));
    assert!(matches!(
        refused("/data/../data/log"),
        BackupError::InvalidTarget(_)
    ));
    disk.install_file("/afile", b"x").expect("file");
    assert!(matches!(refused("/afile"), BackupError::InvalidTarget(_)));
    disk.install_file("/full/something", b"x").expect("file");
    assert!(matches!(refused("/full"), BackupError::TargetNotEmpty(_)));
    assert_eq!(disk.file_names("/full"), ["something"], "nothing was added");
    // An empty folder is taken.
    disk.install_dir("/empty").expect("dir");
    let report = engine.backup(Path::new("/empty"), &EngineOnly).expect("backup");
    assert_eq!(report.info.head_position, engine.head().position);
}

/// `FaultFs` whose next `sync_data` of a segment, once armed, waits and then fails: a frame
/// stays written but not durable for a while, and is never acknowledged.
#[derive(Debug, Clone)]
struct SlowFailingSync {
    disk: FaultFs,
    armed: Arc<AtomicBool>,
}

#[derive(Debug)]
struct SlowFile {
    inner: Arc<dyn File>,
    segment: bool,
    armed: Arc<AtomicBool>,
}

impl File for SlowFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_exact_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_all_at(buf, offset)
    }

    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        if self.segment && self.armed.swap(false, Ordering::AcqRel) {
            std::thread::sleep(Duration::from_millis(300));
            return Err(io::Error::other("injected: the frame never became durable"));
        }
        self.inner.sync_data()
    }
}

impl FileSystem for SlowFailingSync {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn File>> {
        Ok(Arc::new(SlowFile {
            inner: self.disk.open(path, mode)?,
            segment: path.starts_with("/data/log"),
            armed: self.armed.clone(),
        }))
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.disk.create_dir_all(path)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.disk.list_dir(path)
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.disk.exists(path)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.disk.remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.disk.rename(from, to)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.disk.sync_dir(path)
    }

    fn lock_dir(&self, path: &Path) -> io::Result<Box<dyn std::fmt::Debug + Send + Sync>> {
        self.disk.lock_dir(path)
    }
}

#[test]
fn a_frame_written_but_never_synced_is_not_in_a_backup_taken_meanwhile() {
    let slow = SlowFailingSync {
        disk: FaultFs::new(),
        armed: Arc::new(AtomicBool::new(false)),
    };
    let fs: Arc<dyn FileSystem> = Arc::new(slow.clone());
    // One segment: the frame goes into the active one, no rotation syncs a new header.
    let one_segment = EngineOptions {
        segment_bytes_max: 1 << 20,
        ..options(fs.clone())
    };
    let engine = Arc::new(Engine::open(Path::new("/data"), one_segment).expect("open"));
    append(&engine, "seed", 3);
    engine.put_snapshot(&snapshot("seed", 3)).expect("snapshot");
    for i in 0..20 {
        append(&engine, &format!("acc:{}", i % 3), 2);
    }
    let acknowledged = engine.head().position;
    slow.armed.store(true, Ordering::Release);
    let committing = {
        let engine = engine.clone();
        std::thread::spawn(move || append(&engine, "acc:late", 5))
    };
    // The frame is written (its sync waits); wait until the file shows it, then back up.
    let active = engine.shared().log.segments().pop().expect("a segment");
    let deadline = Instant::now() + Duration::from_secs(10);
    while active.file.len().expect("len") == active.durable_len() {
        assert!(Instant::now() < deadline, "the frame was not written");
        std::thread::sleep(Duration::from_millis(1));
    }
    let report = engine.backup(Path::new("/backup"), &EngineOnly).expect("backup");
    assert_eq!(
        committing.join().expect("commit thread"),
        None,
        "the commit failed"
    );
    assert_eq!(
        report.info.head_position, acknowledged,
        "the backup holds the acknowledged events, and nothing that was never durable"
    );
    let live = all_events(&engine);
    assert_eq!(live.len() as u64, acknowledged);
    engine.close();
    drop(engine);
    check_backup(&fs, Path::new("/backup"), acknowledged, &live);
}
