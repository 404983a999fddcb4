//! The snapshot log across restarts, crashes, failed syncs, torn writes and corruption.
//!
//! What a user relies on: an acknowledged snapshot is there after any restart or crash; one
//! that was not acknowledged is either there whole or not at all, so that `latest_snapshot`
//! answers the old snapshot or the new one and never a torn or wrong one; a failed sync stops
//! snapshot writes (503) while reads go on; a damaged record before a good one stops the open.

#![allow(clippy::unwrap_used)]

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use factstore_core::{
    Commit, EventStore, ExpectedVersion, NewEvent, PutSnapshot, Snapshot, SnapshotInfo, StoreError,
};
use factstore_engine::io::{File, FileSystem, OpenMode};
use factstore_engine::snapshots::{LOG_HEADER_LEN, SNAPSHOT_LOG};
use factstore_engine::store::EmbeddedStore;
use factstore_engine::{Engine, EngineError, EngineOptions};
use factstore_testkit::faultfs::{CrashMode, FaultFs, Repeat};
use parking_lot::Mutex;
use serde_json::json;

const DIR: &str = "/db";

fn log_path() -> PathBuf {
    Path::new(DIR).join("snapshots").join(SNAPSHOT_LOG)
}

fn open(fs: Arc<dyn FileSystem>) -> Result<EmbeddedStore, EngineError> {
    let options = EngineOptions {
        fs,
        ..EngineOptions::default()
    };
    Engine::open(Path::new(DIR), options).map(|e| EmbeddedStore::new(Arc::new(e)))
}

async fn fill(store: &EmbeddedStore, aggregate_id: &str, n: usize) {
    let events = (0..n)
        .map(|i| NewEvent::new("Account", "Deposited", json!({"i": i})))
        .collect();
    store
        .commit(Commit::single(aggregate_id, ExpectedVersion::Any, events))
        .await
        .unwrap();
}

fn put(version: u64, state: serde_json::Value) -> PutSnapshot {
    PutSnapshot::new("account:1", version, "Account", state)
}

async fn latest(store: &EmbeddedStore) -> Snapshot {
    store.latest_snapshot("account:1", None).await.unwrap()
}

async fn list(store: &EmbeddedStore) -> Vec<SnapshotInfo> {
    store.list_snapshots("account:1").await.unwrap()
}

fn close(store: EmbeddedStore) {
    store.engine().close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_snapshots_survive_restarts_and_crashes() {
    let fs = FaultFs::new();
    let store = open(Arc::new(fs.clone())).unwrap();
    fill(&store, "account:1", 10).await;
    fill(&store, "account:2", 3).await;
    for version in [3, 7, 10] {
        store
            .put_snapshot(put(version, json!({"at": version})))
            .await
            .unwrap();
    }
    // A replacement at 7, and another aggregate.
    let replaced = store.put_snapshot(put(7, json!({"at": "seven"}))).await.unwrap();
    assert!(replaced.replaced);
    store
        .put_snapshot(PutSnapshot::new("account:2", 3, "Account", json!({"two": true})))
        .await
        .unwrap();
    let before_list = list(&store).await;
    let before_seven = store.latest_snapshot("account:1", Some(9)).await.unwrap();
    let before_other = store.latest_snapshot("account:2", None).await.unwrap();
    close(store);

    // A plain restart, then a crash that loses everything unsynced: both keep every
    // acknowledged snapshot, the replacement included.
    for crash in [false, true] {
        if crash {
            fs.crash();
        }
        let store = open(Arc::new(fs.clone())).unwrap();
        assert_eq!(list(&store).await, before_list, "crash: {crash}");
        assert_eq!(
            store.latest_snapshot("account:1", Some(9)).await.unwrap(),
            before_seven
        );
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&before_seven.state).unwrap(),
            json!({"at": "seven"})
        );
        assert_eq!(
            store.latest_snapshot("account:2", None).await.unwrap(),
            before_other
        );
        assert_eq!(latest(&store).await.version, 10);
        // Still no events from snapshots.
        assert_eq!(store.head().await.unwrap().position, 13);
        close(store);
    }
    // And the log keeps growing correctly after a reopen.
    let store = open(Arc::new(fs.clone())).unwrap();
    store.put_snapshot(put(8, json!({"at": 8}))).await.unwrap();
    close(store);
    fs.crash();
    let store = open(Arc::new(fs.clone())).unwrap();
    let versions: Vec<u64> = list(&store).await.iter().map(|s| s.version).collect();
    assert_eq!(versions, [3, 7, 8, 10]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sync_refuses_snapshot_writes_and_keeps_the_old_snapshot() {
    let fs = FaultFs::new();
    let store = open(Arc::new(fs.clone())).unwrap();
    fill(&store, "account:1", 5).await;
    store.put_snapshot(put(5, json!({"old": true}))).await.unwrap();
    let old = latest(&store).await;

    fs.fail_sync_after(0, Repeat::Once);
    let err = store
        .put_snapshot(put(5, json!({"new": true})))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    // Poisoned: later puts are refused too, though the disk works again.
    let err = store.put_snapshot(put(4, json!({}))).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(store.engine().snapshots_poisoned().is_some());
    // Reads go on and answer the acknowledged snapshot; events are not affected.
    assert_eq!(latest(&store).await, old);
    fill(&store, "account:1", 1).await;
    close(store);

    // A plain restart (no power loss) and a crash both find the old snapshot only.
    for crash in [false, true] {
        if crash {
            fs.crash();
        }
        let store = open(Arc::new(fs.clone())).unwrap();
        assert_eq!(latest(&store).await, old, "crash: {crash}");
        assert_eq!(list(&store).await, vec![old.info()]);
        close(store);
    }
    let store = open(Arc::new(fs.clone())).unwrap();
    store.put_snapshot(put(6, json!({"after": true}))).await.unwrap();
    assert_eq!(
        latest(&store).await.version,
        6,
        "writes work again after a reopen"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_writes_poisoned_refuse_snapshot_writes() {
    let fs = FaultFs::new();
    let store = open(Arc::new(fs.clone())).unwrap();
    fill(&store, "account:1", 2).await;
    fs.fail_sync_after(0, Repeat::Once);
    let events = vec![NewEvent::new("Account", "Deposited", json!({}))];
    assert!(
        store
            .commit(Commit::single("account:1", ExpectedVersion::Any, events))
            .await
            .is_err()
    );
    let err = store.put_snapshot(put(2, json!({}))).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    close(store);
    let err = open(Arc::new(fs.clone())).unwrap();
    err.put_snapshot(put(2, json!({}))).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_write_then_a_crash_leaves_the_old_snapshot_and_a_working_log() {
    let state = json!({"blob": "z".repeat(3000)});
    // Tear the record at many lengths: inside its header, its body, its last byte.
    for prefix in [0, 1, 5, 11, 12, 30, 600, 1100, 3000] {
        let fs = FaultFs::new();
        let store = open(Arc::new(fs.clone())).unwrap();
        fill(&store, "account:1", 3).await;
        store.put_snapshot(put(3, state.clone())).await.unwrap();
        let old = latest(&store).await;
        fs.torn_write_after(0, prefix);
        assert!(
            store.put_snapshot(put(3, json!({"new": 1}))).await.is_err(),
            "prefix {prefix}"
        );
        drop(store);
        fs.crash();
        let store = open(Arc::new(fs.clone())).unwrap();
        assert_eq!(latest(&store).await, old, "torn at {prefix}");
        // The torn tail is cut: the next record lands where a reader finds it after a crash.
        store.put_snapshot(put(2, json!({"next": prefix}))).await.unwrap();
        close(store);
        fs.crash();
        let store = open(Arc::new(fs.clone())).unwrap();
        let versions: Vec<u64> = list(&store).await.iter().map(|s| s.version).collect();
        assert_eq!(versions, [2, 3], "torn at {prefix}");
        assert_eq!(latest(&store).await, old);
    }
}

/// A file system whose next `sync_data` on the snapshot log is a power loss instead: the disk
/// crashes with some unsynced sectors kept and others lost, and the sync fails.
#[derive(Debug, Clone)]
struct PowerLossOnSync {
    disk: FaultFs,
    armed: Arc<Mutex<Option<u64>>>,
}

#[derive(Debug)]
struct WatchedFile {
    inner: Arc<dyn File>,
    snapshot_log: bool,
    fs: PowerLossOnSync,
}

impl File for WatchedFile {
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
        if self.snapshot_log
            && let Some(seed) = self.fs.armed.lock().take()
        {
            self.fs.disk.crash_with(CrashMode::PartialPersistence { seed });
            return Err(io::Error::other("power loss"));
        }
        self.inner.sync_data()
    }
}

impl FileSystem for PowerLossOnSync {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn File>> {
        Ok(Arc::new(WatchedFile {
            inner: self.disk.open(path, mode)?,
            snapshot_log: path.ends_with(SNAPSHOT_LOG),
            fs: self.clone(),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_loss_during_a_put_leaves_the_old_or_the_new_snapshot_whole() {
    let (mut saw_old, mut saw_new) = (false, false);
    for seed in 0..48 {
        let disk = FaultFs::new();
        let fs = PowerLossOnSync {
            disk: disk.clone(),
            armed: Arc::new(Mutex::new(None)),
        };
        let store = open(Arc::new(fs.clone())).unwrap();
        fill(&store, "account:1", 4).await;
        store
            .put_snapshot(put(4, json!({"old": "o".repeat(700)})))
            .await
            .unwrap();
        let old = latest(&store).await;
        *fs.armed.lock() = Some(seed);
        let new_state = json!({"new": "n".repeat(1500)});
        assert!(store.put_snapshot(put(4, new_state.clone())).await.is_err());
        drop(store);

        let store = open(Arc::new(disk.clone())).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let found = latest(&store).await;
        if found == old {
            saw_old = true;
        } else {
            // Not acknowledged, but whole: exactly the new snapshot.
            assert_eq!(found.version, 4, "seed {seed}");
            assert_eq!(
                serde_json::from_str::<serde_json::Value>(&found.state).unwrap(),
                new_state,
                "seed {seed}"
            );
            saw_new = true;
        }
        assert_eq!(list(&store).await.len(), 1, "seed {seed}");
        // The log takes records again, and they survive the next crash.
        store.put_snapshot(put(3, json!({"later": seed}))).await.unwrap();
        close(store);
        disk.crash();
        let store = open(Arc::new(disk.clone())).unwrap();
        let versions: Vec<u64> = list(&store).await.iter().map(|s| s.version).collect();
        assert_eq!(versions, [3, 4], "seed {seed}");
    }
    assert!(
        saw_old,
        "no seed lost the unsynced record: the test tears nothing"
    );
    assert!(
        saw_new,
        "no seed kept the whole unsynced record: the test never reads a new one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_record_before_a_good_one_stops_the_open() {
    let fs = FaultFs::new();
    let store = open(Arc::new(fs.clone())).unwrap();
    fill(&store, "account:1", 3).await;
    for version in [1, 2, 3] {
        store
            .put_snapshot(put(version, json!({"v": version})))
            .await
            .unwrap();
    }
    close(store);
    let before = factstore_engine::verify::verify(&fs, Path::new(DIR)).unwrap();
    assert!(before.is_ok(), "{:?}", before.problems);
    assert_eq!(before.snapshots, 3);
    // A byte in the state of the first record.
    fs.corrupt(log_path(), LOG_HEADER_LEN + 60, 0x01).unwrap();
    // `factstore verify` names it, without changing anything.
    let image = fs.read_file(log_path()).unwrap();
    let after = factstore_engine::verify::verify(&fs, Path::new(DIR)).unwrap();
    assert!(
        after
            .problems
            .iter()
            .any(|p| p.contains("snapshots.log") && p.contains(&format!("offset {LOG_HEADER_LEN}"))),
        "{:?}",
        after.problems
    );
    assert_eq!(fs.read_file(log_path()).unwrap(), image, "verify changes nothing");
    let err = open(Arc::new(fs.clone())).unwrap_err();
    match err {
        EngineError::Corruption { path, offset, .. } => {
            assert_eq!(path, log_path());
            assert_eq!(offset, LOG_HEADER_LEN);
        }
        other => panic!("expected corruption, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_last_record_is_a_torn_tail_and_is_cut() {
    let fs = FaultFs::new();
    let store = open(Arc::new(fs.clone())).unwrap();
    fill(&store, "account:1", 3).await;
    for version in [1, 2] {
        store
            .put_snapshot(put(version, json!({"v": version})))
            .await
            .unwrap();
    }
    close(store);
    let len = fs.read_file(log_path()).unwrap().len() as u64;
    fs.corrupt(log_path(), len - 2, 0x01).unwrap();
    let store = open(Arc::new(fs.clone())).unwrap();
    assert_eq!(latest(&store).await.version, 1);
    assert!(
        (fs.read_file(log_path()).unwrap().len() as u64) < len,
        "the torn tail was cut"
    );
}
