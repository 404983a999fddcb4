//! The `EventStore` trait: what every backend (the embedded engine, PostgreSQL) provides, and
//! what the conformance suite in `factstore-testkit` checks.

use async_trait::async_trait;
use uuid::Uuid;

use crate::append::{Commit, CommitOutcome, PreparedCommit};
use crate::error::StoreError;
use crate::event::Event;
use crate::limits::Limits;
use crate::query::{AggregatePage, AggregateQuery, EventPage, EventQuery, Head};
use crate::snapshot::{PutSnapshot, Snapshot, SnapshotInfo, SnapshotStored};
use crate::time::Timestamp;

/// What archiving has moved to cold storage so far (all runs together, not only the last).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ArchiveOutcome {
    /// Events whose only copy is now in cold storage.
    pub archived_events: u64,
    /// Bytes of the log moved to cold storage, as they were on local disk (before compression).
    pub archived_bytes: u64,
    /// Events recorded before this run's cut that stay on local disk after it; 0 when every
    /// one moved.
    pub hot_before_cut: u64,
    /// Why `hot_before_cut` events stay, when there are any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hot_reason: Option<StaysHot>,
}

/// Why events recorded before an archiving cut stay on local disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum StaysHot {
    /// They share a log segment with events recorded at or after the cut, and a segment
    /// moves to cold storage whole (embedded engine).
    SharesSegmentWithLaterEvents,
}

impl StaysHot {
    /// The reason in words, for people.
    pub fn describe(self) -> &'static str {
        match self {
            StaysHot::SharesSegmentWithLaterEvents => {
                "they share a log segment with events recorded at or after the cut, and a segment moves whole"
            }
        }
    }
}

/// Where the store's bytes are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StorageStats {
    /// Bytes of the store's files on local disk (log segments and index files; not the cache
    /// of archived segments). 0 for a store that does not measure its bytes.
    pub hot_bytes: u64,
    /// Bytes of the objects in cold storage (compressed).
    pub cold_bytes: u64,
    /// Events in the store: the head position.
    pub events: u64,
    /// Events whose only copy is in cold storage.
    pub archived_events: u64,
}

/// Whether a store accepts writes: what `/health` and the metrics report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreHealth {
    /// Reads and writes are served.
    Writable,
    /// Reads are served, writes are refused until the server is restarted: an earlier write or
    /// sync failed (a full disk, a failing device), so the store no longer knows what is on
    /// disk and will not guess (see `docs/durability.md`).
    WritesRefused {
        /// Why, in words any client may read: what failed and the system's reason, never a
        /// file path or stored data (those go to the server's log).
        reason: String,
    },
}

/// An event store.
///
/// # Guarantees every implementation keeps
/// - A commit is atomic: all of its events are written at consecutive positions, or none are.
/// - Positions are 1, 2, 3, … in commit order with no gap; versions are 1, 2, 3, … per aggregate.
/// - A commit returns only once its events are durable; no read ever returns an event that is
///   not durable, and a reader that sees position P sees every position below P.
/// - A full retry of a commit with client-chosen event ids returns the original outcome with
///   `created == false` and writes nothing.
///
/// # The rules, precisely (every backend and the reference model follow them)
/// **Commit.** Checks run in this order, and the first that fails decides the error; nothing is
/// written unless all pass.
/// 1. Idempotency. Let `ids` be the client-chosen event ids of the commit. If none of them is
///    stored, go on. If every event of the commit has a client id, every one is stored, each in
///    the aggregate of its append, the events of each append at consecutive versions in the
///    order given, and each with the same content (`PreparedEvent::same_content_as`), the commit
///    succeeds with `created == false` and the stored positions, versions and `recorded_at`
///    (`version` of an append is that of its last event; `position` of the outcome is that of
///    the commit's last event). Any other overlap is `DuplicateEventId` naming the first stored
///    id met in commit order.
/// 2. For each append in order: `expected_version` against the aggregate's current version
///    (`WrongExpectedVersion` with the current version), then `aggregate_type`: every event
///    must carry the type of the aggregate's first event, or for a new aggregate the type of
///    the first event of the append (`AggregateTypeMismatch`).
/// 3. The condition: no stored event with a position above `after_position` passes its filter
///    (`ConditionFailed` with the first such position).
///
/// All events of one commit share one `recorded_at`, never earlier than the previous commit's.
/// `created_at` defaults to `recorded_at`.
///
/// **Aggregate reads.** `current` is the aggregate's version (with `as_of`: the number of its
/// events recorded at or before `as_of`); 0 is `AggregateNotFound`. Forward reads versions
/// `from_version` (default 1) up to `to_version` (default `current`); backward reads from
/// `from_version` (default `current`) down to `to_version` (default 1). Events outside the
/// `from`/`to` (`created_at`) bounds are passed over. At most `limit` events are returned;
/// `next_from_version` is the version after (forward) or before (backward) the last one
/// returned when the page is full and versions remain in the range, else `None`.
///
/// **Event reads.** Events with `after_position < position ≤ min(head, to_position)` passing
/// the filter and time bounds, in position order, at most `limit`. `next_after_position` is the
/// last returned position when the page is full; otherwise the end of the range,
/// `min(head, to_position)`, never below `after_position`. `head_position` is the head when
/// the read began (not limited by `as_of`).
///
/// **Snapshots.** A snapshot is a cache of an aggregate's folded state, not a fact: it takes
/// no position, never appears in event reads, and does not move the head.
/// - `put_snapshot` validates the request first (`PutSnapshot::prepare`: `InvalidRequest`,
///   `PayloadTooLarge`), then requires the aggregate to have `version` (1 ≤ version ≤ current
///   version), else `InvalidSnapshot` with the current version (0 for no events). A put at a
///   version that has a snapshot replaces it (`replaced == true`); `created_at` is the time of
///   the put. It returns once the snapshot is durable; a backend that cannot write safely
///   answers `Unavailable`.
/// - `latest_snapshot` returns the snapshot with the highest version at or below
///   `max_version` (any version when `None`), else `SnapshotNotFound`. `max_version == Some(0)`
///   and a bad aggregate id are `InvalidRequest`.
/// - `list_snapshots` returns every snapshot of the aggregate in increasing version order,
///   without states; empty when there are none (also for an aggregate without events).
///
/// **Archiving.** `archive(before)` moves whole stretches of the oldest events recorded before
/// `before` to cold storage and frees their local copy only once the cold copy is verified;
/// every read returns archived events as before, at the same positions. A store without cold
/// storage answers `ArchiveNotConfigured` (the default). `storage` reports where the bytes are.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// The limits this store validates against.
    fn limits(&self) -> &Limits;

    /// Appends a commit atomically: validates it against [`EventStore::limits`], then
    /// [`EventStore::commit_prepared`].
    async fn commit(&self, commit: Commit) -> Result<CommitOutcome, StoreError> {
        let prepared = commit.prepare(self.limits())?;
        self.commit_prepared(prepared).await
    }

    /// Appends a commit already validated against [`EventStore::limits`] (a layer in front of
    /// the store, such as the schema registry, validates once and passes the result on).
    async fn commit_prepared(&self, prepared: PreparedCommit) -> Result<CommitOutcome, StoreError>;

    /// Reads one aggregate's events by version.
    async fn read_aggregate(&self, query: AggregateQuery) -> Result<AggregatePage, StoreError>;

    /// Reads all events in position order, filtered.
    async fn read_events(&self, query: EventQuery) -> Result<EventPage, StoreError>;

    /// One event by id.
    async fn get_event(&self, event_id: Uuid) -> Result<Event, StoreError>;

    /// The last committed position.
    async fn head(&self) -> Result<Head, StoreError>;

    /// Stores a snapshot, replacing one at the same version.
    async fn put_snapshot(&self, put: PutSnapshot) -> Result<SnapshotStored, StoreError>;

    /// The newest snapshot at or below `max_version`.
    async fn latest_snapshot(
        &self,
        aggregate_id: &str,
        max_version: Option<u64>,
    ) -> Result<Snapshot, StoreError>;

    /// Every snapshot of an aggregate, by increasing version.
    async fn list_snapshots(&self, aggregate_id: &str) -> Result<Vec<SnapshotInfo>, StoreError>;

    /// The durable head position, updated after every commit: live readers wait on it.
    fn watch_head(&self) -> tokio::sync::watch::Receiver<u64>;

    /// Archives the events recorded before `before` (see "Archiving" above); returns the totals
    /// archived so far. Blocks (asynchronously) until done.
    async fn archive(&self, before: Timestamp) -> Result<ArchiveOutcome, StoreError> {
        let _ = before;
        Err(StoreError::ArchiveNotConfigured)
    }

    /// Whether the store accepts writes. Cheap (no I/O): `/health` and the metrics ask it on
    /// every call. The default: always writable, for a store that never refuses writes for good.
    fn health(&self) -> StoreHealth {
        StoreHealth::Writable
    }

    /// Where the store's bytes are. The default measures nothing: every event is counted as
    /// hot, with 0 bytes.
    async fn storage(&self) -> Result<StorageStats, StoreError> {
        Ok(StorageStats {
            events: self.head().await?.position,
            ..StorageStats::default()
        })
    }
}
