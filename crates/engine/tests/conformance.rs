//! The conformance suite of `factstore-testkit` against the embedded engine, three ways:
//! - `faultfs_default`: on an in-memory `FaultFs` (no faults), default options: every case
//!   stays in one memtable and one segment.
//! - `faultfs_small`: on a `FaultFs` with a 64-event memtable and 16 KiB segments, so that the
//!   cases flush memtables to run files, compact runs and rotate segments while they run, and
//!   read across all of those.
//! - `real_fs_small`: on the real file system in a temporary folder, with the same small
//!   options, so that the `StdFileSystem` paths (rename, folder sync, removal) are run too.

use std::sync::Arc;

use async_trait::async_trait;
use factstore_core::{
    AggregatePage, AggregateQuery, CommitOutcome, Event, EventPage, EventQuery, EventStore, Head, Limits,
    PreparedCommit, PutSnapshot, Snapshot, SnapshotInfo, SnapshotStored, StoreError,
};
use factstore_engine::store::EmbeddedStore;
use factstore_engine::{Engine, EngineOptions};
use factstore_testkit::faultfs::FaultFs;
use tokio::sync::watch;
use uuid::Uuid;

/// Options under which the cases of the suite flush, compact and rotate, and reads by
/// aggregate prefix give way to the other plans after two index entries (so that both the
/// prefix plan, in the default setup, and its fallback answer every case).
fn small(fs: Arc<dyn factstore_engine::io::FileSystem>) -> EngineOptions {
    EngineOptions {
        fs,
        memtable_events_max: 64,
        segment_bytes_max: 16 << 10,
        merge_fan_in: 2,
        prefix_entries_max: 2,
        ..EngineOptions::default()
    }
}

/// A fresh engine on its own in-memory disk.
fn on_faultfs(
    options: impl FnOnce(Arc<dyn factstore_engine::io::FileSystem>) -> EngineOptions,
) -> Arc<dyn EventStore> {
    let fs = FaultFs::new();
    let engine =
        Engine::open(std::path::Path::new("/store"), options(Arc::new(fs))).expect("open the engine");
    Arc::new(EmbeddedStore::new(Arc::new(engine)))
}

/// An engine in a temporary folder that lives as long as the store: the engine is dropped
/// (and its threads joined) before the folder is removed, because fields drop in order.
#[derive(Debug)]
struct TempDirStore {
    store: EmbeddedStore,
    _dir: tempfile::TempDir,
}

impl TempDirStore {
    fn open() -> Arc<dyn EventStore> {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let options = small(Arc::new(factstore_engine::io::StdFileSystem));
        let engine = Engine::open(dir.path(), options).expect("open the engine");
        Arc::new(TempDirStore {
            store: EmbeddedStore::new(Arc::new(engine)),
            _dir: dir,
        })
    }
}

#[async_trait]
impl EventStore for TempDirStore {
    fn limits(&self) -> &Limits {
        self.store.limits()
    }

    async fn commit_prepared(&self, commit: PreparedCommit) -> Result<CommitOutcome, StoreError> {
        self.store.commit_prepared(commit).await
    }

    async fn read_aggregate(&self, query: AggregateQuery) -> Result<AggregatePage, StoreError> {
        self.store.read_aggregate(query).await
    }

    async fn read_events(&self, query: EventQuery) -> Result<EventPage, StoreError> {
        self.store.read_events(query).await
    }

    async fn get_event(&self, event_id: Uuid) -> Result<Event, StoreError> {
        self.store.get_event(event_id).await
    }

    async fn head(&self) -> Result<Head, StoreError> {
        self.store.head().await
    }

    async fn put_snapshot(&self, put: PutSnapshot) -> Result<SnapshotStored, StoreError> {
        self.store.put_snapshot(put).await
    }

    async fn latest_snapshot(
        &self,
        aggregate_id: &str,
        max_version: Option<u64>,
    ) -> Result<Snapshot, StoreError> {
        self.store.latest_snapshot(aggregate_id, max_version).await
    }

    async fn list_snapshots(&self, aggregate_id: &str) -> Result<Vec<SnapshotInfo>, StoreError> {
        self.store.list_snapshots(aggregate_id).await
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.store.watch_head()
    }
}

mod faultfs_default {
    use super::*;

    factstore_testkit::conformance_tests!(async {
        on_faultfs(|fs| EngineOptions {
            fs,
            ..EngineOptions::default()
        })
    });
}

mod faultfs_small {
    use super::*;

    factstore_testkit::conformance_tests!(async { on_faultfs(small) });
}

mod real_fs_small {
    use super::*;

    factstore_testkit::conformance_tests!(async { TempDirStore::open() });
}
