//! [`SchemaStore`]: the schema registry in front of a store.

use std::sync::Arc;

use async_trait::async_trait;
use factstore_core::{
    AggregatePage, AggregateQuery, ArchiveOutcome, CommitOutcome, Event, EventPage, EventQuery, EventStore,
    Head, Limits, PreparedCommit, PutSnapshot, Snapshot, SnapshotInfo, SnapshotStored, StorageStats,
    StoreError, StoreHealth, Timestamp,
};
use tokio::sync::watch;
use uuid::Uuid;

use crate::registry::SchemaRegistry;

/// A store whose commits are validated against the registered schemas (after the store's own
/// validation, before anything is written) and whose events are read upcast to the newest
/// version. Snapshots, heads and everything else pass through unchanged.
#[derive(Clone)]
pub struct SchemaStore {
    inner: Arc<dyn EventStore>,
    registry: Arc<SchemaRegistry>,
}

impl SchemaStore {
    pub fn new(inner: Arc<dyn EventStore>, registry: Arc<SchemaRegistry>) -> SchemaStore {
        SchemaStore { inner, registry }
    }

    /// The store behind: events exactly as stored (`raw=true`).
    pub fn raw(&self) -> &Arc<dyn EventStore> {
        &self.inner
    }

    pub fn registry(&self) -> &Arc<SchemaRegistry> {
        &self.registry
    }
}

impl std::fmt::Debug for SchemaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaStore")
            .field("limits", self.inner.limits())
            .field("registry", &self.registry)
            .finish()
    }
}

#[async_trait]
impl EventStore for SchemaStore {
    fn limits(&self) -> &Limits {
        self.inner.limits()
    }

    async fn commit_prepared(&self, prepared: PreparedCommit) -> Result<CommitOutcome, StoreError> {
        self.registry.validate(&prepared)?;
        self.inner.commit_prepared(prepared).await
    }

    async fn read_aggregate(&self, query: AggregateQuery) -> Result<AggregatePage, StoreError> {
        let mut page = self.inner.read_aggregate(query).await?;
        self.registry.upcast_all(&mut page.events);
        Ok(page)
    }

    async fn read_events(&self, query: EventQuery) -> Result<EventPage, StoreError> {
        let mut page = self.inner.read_events(query).await?;
        self.registry.upcast_all(&mut page.events);
        Ok(page)
    }

    async fn get_event(&self, event_id: Uuid) -> Result<Event, StoreError> {
        let event = self.inner.get_event(event_id).await?;
        Ok(self.registry.upcast(event))
    }

    async fn head(&self) -> Result<Head, StoreError> {
        self.inner.head().await
    }

    async fn put_snapshot(&self, put: PutSnapshot) -> Result<SnapshotStored, StoreError> {
        self.inner.put_snapshot(put).await
    }

    async fn latest_snapshot(
        &self,
        aggregate_id: &str,
        max_version: Option<u64>,
    ) -> Result<Snapshot, StoreError> {
        self.inner.latest_snapshot(aggregate_id, max_version).await
    }

    async fn list_snapshots(&self, aggregate_id: &str) -> Result<Vec<SnapshotInfo>, StoreError> {
        self.inner.list_snapshots(aggregate_id).await
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.inner.watch_head()
    }

    async fn archive(&self, before: Timestamp) -> Result<ArchiveOutcome, StoreError> {
        self.inner.archive(before).await
    }

    async fn storage(&self) -> Result<StorageStats, StoreError> {
        self.inner.storage().await
    }

    fn health(&self) -> StoreHealth {
        self.inner.health()
    }
}
