//! [`EventStore`] for the embedded engine.
//!
//! Reads run on the blocking thread pool: they may touch the disk, and a read of many events
//! must not stall the async workers that serve other requests.

use std::sync::Arc;

use async_trait::async_trait;
use factstore_core::snapshot::validate_latest_query;
use factstore_core::{
    AggregatePage, AggregateQuery, ArchiveOutcome, CommitOutcome, Event, EventPage, EventQuery, EventStore,
    Head, Limits, PreparedCommit, PutSnapshot, Snapshot, SnapshotInfo, SnapshotStored, StorageStats,
    StoreError, StoreHealth, Timestamp,
};
use tokio::sync::watch;
use uuid::Uuid;

use crate::engine::Engine;

/// The embedded engine as an [`EventStore`].
#[derive(Debug, Clone)]
pub struct EmbeddedStore {
    engine: Arc<Engine>,
}

impl EmbeddedStore {
    pub fn new(engine: Arc<Engine>) -> EmbeddedStore {
        EmbeddedStore { engine }
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Engine) -> crate::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || f(&engine))
            .await
            .map_err(|e| StoreError::Internal(format!("read task failed: {e}")))?
            .map_err(StoreError::from)
    }
}

#[async_trait]
impl EventStore for EmbeddedStore {
    fn limits(&self) -> &Limits {
        self.engine.limits()
    }

    /// Refused after a failed write or sync of the event log (every write is refused), or of
    /// the snapshot log (snapshot writes are): both hold until the engine is reopened.
    fn health(&self) -> StoreHealth {
        if let Some(reason) = self.engine.poisoned() {
            return StoreHealth::WritesRefused {
                reason: format!("{reason}; writes are refused until the server is restarted"),
            };
        }
        match self.engine.snapshots_poisoned() {
            None => StoreHealth::Writable,
            Some(reason) => StoreHealth::WritesRefused {
                reason: format!("{reason}; snapshot writes are refused until the server is restarted"),
            },
        }
    }

    async fn commit_prepared(&self, prepared: PreparedCommit) -> Result<CommitOutcome, StoreError> {
        Ok(self.engine.commit_prepared(prepared).await?)
    }

    async fn read_aggregate(&self, query: AggregateQuery) -> Result<AggregatePage, StoreError> {
        self.blocking(move |engine| engine.read_aggregate(&query)).await
    }

    async fn read_events(&self, query: EventQuery) -> Result<EventPage, StoreError> {
        self.blocking(move |engine| engine.read_events(&query)).await
    }

    async fn get_event(&self, event_id: Uuid) -> Result<Event, StoreError> {
        self.blocking(move |engine| engine.get_event(event_id)).await
    }

    async fn head(&self) -> Result<Head, StoreError> {
        Ok(self.engine.head())
    }

    async fn put_snapshot(&self, put: PutSnapshot) -> Result<SnapshotStored, StoreError> {
        let snapshot = put.prepare(self.engine.limits(), Timestamp::now())?;
        let info = snapshot.info();
        let replaced = self
            .blocking(move |engine| engine.put_snapshot(&snapshot))
            .await?;
        Ok(SnapshotStored { info, replaced })
    }

    async fn latest_snapshot(
        &self,
        aggregate_id: &str,
        max_version: Option<u64>,
    ) -> Result<Snapshot, StoreError> {
        validate_latest_query(aggregate_id, max_version, self.engine.limits())?;
        let id = aggregate_id.to_owned();
        self.blocking(move |engine| engine.latest_snapshot(&id, max_version))
            .await?
            .ok_or_else(|| StoreError::SnapshotNotFound {
                aggregate_id: aggregate_id.to_owned(),
                max_version,
            })
    }

    async fn list_snapshots(&self, aggregate_id: &str) -> Result<Vec<SnapshotInfo>, StoreError> {
        factstore_core::append::validate_aggregate_id(aggregate_id, self.engine.limits())?;
        Ok(self.engine.list_snapshots(aggregate_id))
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.engine.watch_head()
    }

    async fn archive(&self, before: Timestamp) -> Result<ArchiveOutcome, StoreError> {
        self.blocking(move |engine| engine.archive(before, |_| {})).await
    }

    async fn storage(&self) -> Result<StorageStats, StoreError> {
        self.blocking(|engine| engine.storage()).await
    }
}
