//! The Rust client of the factstore HTTP API.
//!
//! ```no_run
//! use factstore_client::{AggregateQuery, AppendRequest, Client, ExpectedVersion, NewEvent};
//! use serde_json::json;
//!
//! # async fn example() -> Result<(), factstore_client::Error> {
//! let client = Client::builder("http://127.0.0.1:6180").token("a-long-random-secret").build()?;
//!
//! // Append, expecting the aggregate not to exist yet.
//! let opened = NewEvent::new("Account", "AccountOpened", json!({"owner": "Ada"}));
//! client
//!     .append("account:ACC-001", AppendRequest::new([opened]).expect(ExpectedVersion::Exact(0)))
//!     .await?;
//!
//! // Read it back.
//! let page = client.read_aggregate("account:ACC-001", &AggregateQuery::new()).await?;
//! assert_eq!(page.version, 1);
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//! - [`Client`] (built by [`Client::new`] or [`Client::builder`]): one method per endpoint —
//!   [`append`](Client::append), [`commit`](Client::commit),
//!   [`read_aggregate`](Client::read_aggregate), [`read_events`](Client::read_events),
//!   [`get_event`](Client::get_event), [`head`](Client::head), [`health`](Client::health),
//!   [`subscribe`](Client::subscribe), [`put_snapshot`](Client::put_snapshot),
//!   [`latest_snapshot`](Client::latest_snapshot), [`list_snapshots`](Client::list_snapshots),
//!   [`load`](Client::load), the projections ([`put_projection`](Client::put_projection),
//!   [`projection_state`](Client::projection_state), [`event_status`](Client::event_status), …)
//!   and persistent subscriptions ([`put_subscription`](Client::put_subscription),
//!   [`poll`](Client::poll), [`ack`](Client::ack), [`nack`](Client::nack), …) — and the paging
//!   helpers [`events_stream`](Client::events_stream),
//!   [`aggregate_stream`](Client::aggregate_stream),
//!   [`projection_states_stream`](Client::projection_states_stream) and
//!   [`parked_stream`](Client::parked_stream), which hold one page at a time.
//! - [`sdk`]: event sourcing on top: [`sdk::Aggregate`], [`sdk::Repository`] (snapshots,
//!   conflict retries, multi-aggregate [`sdk::Batch`]es), [`sdk::Upcasters`], the
//!   [`sdk::AggregateTest`] harness and the [`sdk::Projector`].
//! - The wire types, this crate's own (it does not depend on the server's crates): [`Event`],
//!   [`NewEvent`], [`ExpectedVersion`], the requests and outcomes of appends, the queries and
//!   pages of reads. `event_data` and `metadata` stay JSON text ([`RawJson`]), so an event
//!   read and written back is exactly the event that was stored.
//! - [`Error`]: conflicts, not-found and refused tokens as variants of their own; any other
//!   answer as [`Error::Api`]; no answer at all as [`Error::Transport`].
//! - [`RetryPolicy`] and [`ReconnectPolicy`]: bounded, jittered exponential backoff.
//! - [`Subscription`]: the live stream, resuming by itself after a lost connection.
//!
//! # Retries are safe
//! Every event sent without an `event_id` gets a UUIDv7 before the first attempt. If an
//! append gets no answer (the connection dropped, a timeout) or a 502/503/504, the client
//! sends the same request again; if the first attempt had in fact been committed, the server
//! recognises the event ids and answers with the original outcome
//! ([`AppendOutcome::replayed`]) instead of writing the events twice. A 4xx is never retried.
//!
//! # TLS
//! `https://` URLs work out of the box (rustls, with the system's certificate authorities);
//! [`ClientBuilder::add_root_certificate_pem`] adds one for a self-signed server.

mod admin;
mod append;
mod backup;
mod client;
mod error;
mod event;
mod json;
mod persistent;
mod projection;
mod query;
mod retry;
mod schemas;
pub mod sdk;
mod snapshot;
mod subscribe;
pub mod time;

pub use admin::{ArchiveOutcome, StorageStats};
pub use append::{
    AggregateAppend, AppendOutcome, AppendRequest, AppendedAggregate, AppendedEvent, CommitOutcome,
    CommitRequest, Condition,
};
pub use backup::BackupOutcome;
pub use client::{Client, ClientBuilder, DEFAULT_URL};
pub use error::{BoxError, Error, Result};
pub use event::{Event, ExpectedVersion, ExpectedVersionParseError, NewEvent};
pub use json::RawJson;
pub use persistent::{
    Delivery, DeliveryOrdering, ParkedPage, PollRequest, ReplayOutcome, SubscriptionGroup,
    SubscriptionGroupStatus, SubscriptionStart,
};
pub use projection::{
    EventStatus, KeyedState, OpKind, Operation, ProjectionDefinition, ProjectionKey, ProjectionPut,
    ProjectionRunStatus, ProjectionState, ProjectionStatus, StateQuery, StateSource, StatesPage,
};
pub use query::{AggregatePage, AggregateQuery, Direction, EventFilter, EventPage, EventQuery, Head, Health};
pub use retry::{ReconnectPolicy, RetryPolicy};
pub use schemas::{
    EventTypeSchemas, EventTypeSummary, SchemaPut, SchemaVersion, Upcaster, UpcasterDefinition,
};
pub use snapshot::{LoadedAggregate, PutSnapshotRequest, Snapshot, SnapshotInfo, SnapshotPut};
pub use subscribe::{SubscribeOptions, Subscription, SubscriptionMessage};
pub use time::TimeBound;

/// The HTTP status type of [`Error::status`].
pub use reqwest::StatusCode;
