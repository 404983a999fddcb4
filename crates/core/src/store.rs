//! The `EventStore` trait: what every backend (the embedded engine, PostgreSQL) provides, and
//! what the conformance suite in `factstore-testkit` checks.

use async_trait::async_trait;
use uuid::Uuid;

use crate::append::{Commit, CommitOutcome};
use crate::error::StoreError;
use crate::event::Event;
use crate::limits::Limits;
use crate::query::{AggregatePage, AggregateQuery, EventPage, EventQuery, Head};

/// An event store.
///
/// # Guarantees every implementation keeps
/// - A commit is atomic: all of its events are written at consecutive positions, or none are.
/// - Positions are 1, 2, 3, … in commit order with no gap; versions are 1, 2, 3, … per aggregate.
/// - A commit returns only once its events are durable; no read ever returns an event that is
///   not durable, and a reader that sees position P sees every position below P.
/// - A full retry of a commit with client-chosen event ids returns the original outcome with
///   `created == false` and writes nothing.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// The limits this store validates against.
    fn limits(&self) -> &Limits;

    /// Appends a commit atomically.
    async fn commit(&self, commit: Commit) -> Result<CommitOutcome, StoreError>;

    /// Reads one aggregate's events by version.
    async fn read_aggregate(&self, query: AggregateQuery) -> Result<AggregatePage, StoreError>;

    /// Reads all events in position order, filtered.
    async fn read_events(&self, query: EventQuery) -> Result<EventPage, StoreError>;

    /// One event by id.
    async fn get_event(&self, event_id: Uuid) -> Result<Event, StoreError>;

    /// The last committed position.
    async fn head(&self) -> Result<Head, StoreError>;

    /// The durable head position, updated after every commit: live readers wait on it.
    fn watch_head(&self) -> tokio::sync::watch::Receiver<u64>;
}
