//! [`Repository`]: load an aggregate (snapshot + later events), decide, save at the expected
//! version; retry the whole cycle on a conflict when asked; snapshot every N events; and
//! [`Batch`]: several aggregates' new events in one atomic commit.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::pin;
use std::time::Duration;

use futures::TryStreamExt;
use rand::Rng;
use serde_json::Value;

use super::aggregate::{Aggregate, CodecError, from_stored, to_new_event};
use super::upcast::Upcasters;
use crate::append::{AggregateAppend, AppendRequest, AppendedEvent, CommitOutcome, CommitRequest};
use crate::client::Client;
use crate::error::Error;
use crate::event::{Event, ExpectedVersion, NewEvent};
use crate::json::RawJson;
use crate::query::{AggregateQuery, EventFilter};
use crate::snapshot::{PutSnapshotRequest, Snapshot};

/// What a repository operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum RepositoryError<E> {
    /// The aggregate refused the command (a business rule). Nothing was written.
    #[error(transparent)]
    Domain(E),
    /// The store refused or could not be reached. A conflict that outlived the retries is
    /// [`Error::WrongExpectedVersion`] (or [`Error::ConditionFailed`] for a batch).
    #[error(transparent)]
    Client(#[from] Error),
    /// An event or a state could not be written or read.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

impl<E> RepositoryError<E> {
    /// A conflict with a concurrent writer: deciding again on fresh state may succeed.
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            RepositoryError::Client(Error::WrongExpectedVersion { .. } | Error::ConditionFailed { .. })
        )
    }
}

/// An aggregate as loaded: its state at `version` (0 and the default state when it has no
/// events yet).
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded<S> {
    pub aggregate_id: String,
    pub version: u64,
    pub state: S,
    /// The version of the snapshot the state started from, if one was used.
    pub snapshot_version: Option<u64>,
    /// How many events were applied on top of the snapshot (or of the default state).
    pub events_applied: usize,
}

/// Who and why, written with every event of a command (`created_by`, `metadata`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CommandContext {
    pub created_by: Option<String>,
    /// A JSON object (`correlation_id`, `causation_id`, …).
    pub metadata: Option<Value>,
}

impl CommandContext {
    pub fn new() -> CommandContext {
        CommandContext::default()
    }

    pub fn created_by(mut self, created_by: impl Into<String>) -> CommandContext {
        self.created_by = Some(created_by.into());
        self
    }

    pub fn metadata(mut self, metadata: Value) -> CommandContext {
        self.metadata = Some(metadata);
        self
    }

    /// Sets `metadata.correlation_id` (keeping the rest of the metadata).
    pub fn correlation_id(mut self, correlation_id: impl Into<String>) -> CommandContext {
        let mut metadata = match self.metadata.take() {
            Some(Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        metadata.insert("correlation_id".to_owned(), Value::String(correlation_id.into()));
        self.metadata = Some(Value::Object(metadata));
        self
    }

    fn stamp(&self, mut event: NewEvent) -> NewEvent {
        if let Some(created_by) = &self.created_by {
            event = event.with_created_by(created_by.clone());
        }
        if let Some(metadata) = &self.metadata {
            event = event.with_metadata(RawJson::from_value(metadata));
        }
        event
    }
}

/// The outcome of a command that was decided and saved.
#[derive(Debug, Clone, PartialEq)]
pub struct Executed<S, E> {
    pub aggregate_id: String,
    /// The aggregate's version after the command (unchanged when it caused no event).
    pub version: u64,
    /// The global position of the last new event; `None` when the command caused none.
    pub position: Option<u64>,
    /// The state after the command.
    pub state: S,
    /// The new events, as the domain sees them.
    pub events: Vec<E>,
    /// Where each new event landed (ids, versions, positions).
    pub appended: Vec<AppendedEvent>,
    /// Load-decide-save cycles it took (more than 1 after conflicts).
    pub attempts: u32,
    /// The version a snapshot was stored at, when this save took one.
    pub snapshot: Option<u64>,
}

/// Loads, decides and saves aggregates of type `A` through a [`Client`].
///
/// ```no_run
/// # use factstore_client::sdk::{Aggregate, Repository};
/// # async fn example<A: Aggregate>(client: factstore_client::Client, command: A::Command) -> Result<(), Box<dyn std::error::Error>>
/// # where A::Command: Clone {
/// let accounts = Repository::<A>::new(client)
///     .snapshot_every(100)      // a snapshot each time the version crosses a multiple of 100
///     .conflict_attempts(5);    // load-decide-save up to 5 times when another writer wins
/// let done = accounts.execute("account:ACC-001", command).await?;
/// println!("now at version {} (position {:?})", done.version, done.position);
/// # Ok(())
/// # }
/// ```
pub struct Repository<A: Aggregate> {
    client: Client,
    upcasters: Upcasters,
    snapshot_every: Option<u64>,
    conflict_attempts: u32,
    aggregate: PhantomData<fn() -> A>,
}

impl<A: Aggregate> Clone for Repository<A> {
    fn clone(&self) -> Self {
        Repository {
            client: self.client.clone(),
            upcasters: self.upcasters.clone(),
            snapshot_every: self.snapshot_every,
            conflict_attempts: self.conflict_attempts,
            aggregate: PhantomData,
        }
    }
}

impl<A: Aggregate> std::fmt::Debug for Repository<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("aggregate_type", &A::AGGREGATE_TYPE)
            .field("upcasters", &self.upcasters)
            .field("snapshot_every", &self.snapshot_every)
            .field("conflict_attempts", &self.conflict_attempts)
            .finish()
    }
}

impl<A: Aggregate> Repository<A> {
    /// A repository without snapshots, upcasters or conflict retries.
    pub fn new(client: Client) -> Repository<A> {
        Repository {
            client,
            upcasters: Upcasters::new(),
            snapshot_every: None,
            conflict_attempts: 1,
            aggregate: PhantomData,
        }
    }

    /// Stores a snapshot of the state each time a save takes the version across a multiple
    /// of `every` (0: never).
    pub fn snapshot_every(mut self, every: u64) -> Repository<A> {
        self.snapshot_every = (every > 0).then_some(every);
        self
    }

    /// Load-decide-save cycles [`Repository::execute`] runs in all when the save meets a
    /// version conflict (default 1: no retry). At least 1.
    pub fn conflict_attempts(mut self, attempts: u32) -> Repository<A> {
        self.conflict_attempts = attempts.max(1);
        self
    }

    /// The upcasting functions applied to every event read, before `apply`.
    pub fn upcasters(mut self, upcasters: Upcasters) -> Repository<A> {
        self.upcasters = upcasters;
        self
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The aggregate's current state: its latest usable snapshot and the events after it, in
    /// one round trip (`GET /v1/aggregates/{id}/load`). An aggregate without events is at
    /// version 0 with the default state. A snapshot of another type or `SNAPSHOT_VERSION`,
    /// or one that does not read as `State`, is ignored and the state folded from version 1.
    pub async fn load(&self, aggregate_id: &str) -> Result<Loaded<A::State>, RepositoryError<A::Error>> {
        let loaded = match self.client.load(aggregate_id).await {
            Ok(loaded) => loaded,
            Err(Error::AggregateNotFound { .. }) => {
                return Ok(Loaded {
                    aggregate_id: aggregate_id.to_owned(),
                    version: 0,
                    state: A::State::default(),
                    snapshot_version: None,
                    events_applied: 0,
                });
            }
            Err(error) => return Err(error.into()),
        };
        let from_snapshot = loaded.snapshot.as_ref().and_then(|s| self.snapshot_state(s));
        match from_snapshot {
            Some((version, state)) => self.fold_onto(aggregate_id, state, version, true, &loaded.events),
            None if loaded.snapshot.is_none() => {
                self.fold_onto(aggregate_id, A::State::default(), 0, false, &loaded.events)
            }
            None => {
                // The snapshot is unusable and `load` sent only the events after it.
                let events = pin!(self.client.aggregate_stream(aggregate_id, AggregateQuery::new()));
                let events: Vec<Event> = events.try_collect().await?;
                self.fold_onto(aggregate_id, A::State::default(), 0, false, &events)
            }
        }
    }

    fn snapshot_state(&self, snapshot: &Snapshot) -> Option<(u64, A::State)> {
        if snapshot.snapshot_type != A::AGGREGATE_TYPE || snapshot.snapshot_version != A::SNAPSHOT_VERSION {
            return None;
        }
        match snapshot.state::<A::State>() {
            Ok(state) => Some((snapshot.version, state)),
            Err(error) => {
                tracing::warn!(
                    aggregate_id = snapshot.aggregate_id,
                    version = snapshot.version,
                    %error,
                    "ignoring a snapshot that does not read as the state"
                );
                None
            }
        }
    }

    fn fold_onto(
        &self,
        aggregate_id: &str,
        mut state: A::State,
        mut version: u64,
        from_snapshot: bool,
        events: &[Event],
    ) -> Result<Loaded<A::State>, RepositoryError<A::Error>> {
        let snapshot_version = from_snapshot.then_some(version);
        for event in events {
            if event.aggregate_type != A::AGGREGATE_TYPE {
                return Err(CodecError::new(format!(
                    "{aggregate_id} is an aggregate of type {}, not {}",
                    event.aggregate_type,
                    A::AGGREGATE_TYPE
                ))
                .into());
            }
            if event.version != version + 1 {
                return Err(CodecError::new(format!(
                    "{aggregate_id}: expected version {} next, read version {}",
                    version + 1,
                    event.version
                ))
                .into());
            }
            let domain: A::Event = from_stored(&self.upcasters, event)?;
            A::apply(&mut state, &domain);
            version = event.version;
        }
        Ok(Loaded {
            aggregate_id: aggregate_id.to_owned(),
            version,
            state,
            snapshot_version,
            events_applied: events.len(),
        })
    }

    /// Loads the aggregate, decides `command`, and saves the new events expecting the version
    /// it loaded. When another writer saved first, the whole cycle runs again on the fresh
    /// state, up to [`Repository::conflict_attempts`] times in all.
    pub async fn execute(
        &self,
        aggregate_id: &str,
        command: A::Command,
    ) -> Result<Executed<A::State, A::Event>, RepositoryError<A::Error>>
    where
        A::Command: Clone,
    {
        self.execute_with(aggregate_id, command, &CommandContext::default())
            .await
    }

    /// [`Repository::execute`], writing `context`'s `created_by` and `metadata` with every
    /// new event.
    pub async fn execute_with(
        &self,
        aggregate_id: &str,
        command: A::Command,
        context: &CommandContext,
    ) -> Result<Executed<A::State, A::Event>, RepositoryError<A::Error>>
    where
        A::Command: Clone,
    {
        retry_on_conflict(self.conflict_attempts, |attempt| {
            let command = command.clone();
            async move {
                let loaded = self.load(aggregate_id).await?;
                let events = A::handle(&loaded.state, command).map_err(RepositoryError::Domain)?;
                let mut executed = self.save(&loaded, events, context).await?;
                executed.attempts = attempt;
                Ok(executed)
            }
        })
        .await
    }

    /// Saves `events` after `loaded`, expecting the aggregate still at `loaded.version`
    /// ([`Error::WrongExpectedVersion`] otherwise, nothing written). Takes a snapshot when
    /// due. No events: nothing is sent.
    pub async fn save(
        &self,
        loaded: &Loaded<A::State>,
        events: Vec<A::Event>,
        context: &CommandContext,
    ) -> Result<Executed<A::State, A::Event>, RepositoryError<A::Error>> {
        let staged = self.stage(loaded, &events, context)?;
        let Staged { append, snapshot, .. } = staged;
        let mut state = loaded.state.clone();
        for event in &events {
            A::apply(&mut state, event);
        }
        if append.events.is_empty() {
            return Ok(Executed {
                aggregate_id: loaded.aggregate_id.clone(),
                version: loaded.version,
                position: None,
                state,
                events,
                appended: Vec::new(),
                attempts: 1,
                snapshot: None,
            });
        }
        let request = AppendRequest::new(append.events).expect(append.expected_version);
        let outcome = self.client.append(&loaded.aggregate_id, request).await?;
        let snapshot = match snapshot {
            Some(snapshot) => put_snapshot(&self.client, &loaded.aggregate_id, snapshot).await,
            None => None,
        };
        Ok(Executed {
            aggregate_id: loaded.aggregate_id.clone(),
            version: outcome.version,
            position: Some(outcome.position),
            state,
            events,
            appended: outcome.events,
            attempts: 1,
            snapshot,
        })
    }

    /// Prepares `events` after `loaded` for a [`Batch`]: encoded, expecting `loaded.version`,
    /// with the snapshot to take after the commit when one is due.
    pub fn stage(
        &self,
        loaded: &Loaded<A::State>,
        events: &[A::Event],
        context: &CommandContext,
    ) -> Result<Staged, RepositoryError<A::Error>> {
        let mut new_events = Vec::with_capacity(events.len());
        for event in events {
            new_events.push(context.stamp(to_new_event(A::AGGREGATE_TYPE, event)?));
        }
        let new_version = loaded.version + events.len() as u64;
        let snapshot = match self.snapshot_every {
            Some(every) if !events.is_empty() && loaded.version / every < new_version / every => {
                let mut state = loaded.state.clone();
                for event in events {
                    A::apply(&mut state, event);
                }
                let state = RawJson::from_serialize(&state).map_err(|e| {
                    CodecError::new(format!(
                        "the state of {} does not serialise: {e}",
                        loaded.aggregate_id
                    ))
                })?;
                Some(
                    PutSnapshotRequest::new(new_version, A::AGGREGATE_TYPE, state)
                        .snapshot_version(A::SNAPSHOT_VERSION),
                )
            }
            _ => None,
        };
        Ok(Staged {
            append: AggregateAppend::new(
                loaded.aggregate_id.clone(),
                ExpectedVersion::Exact(loaded.version),
                new_events,
            ),
            snapshot,
        })
    }
}

/// Stores a snapshot; a failure is logged, not returned: a snapshot is a cache and the
/// events it summarises are already committed.
async fn put_snapshot(client: &Client, aggregate_id: &str, snapshot: PutSnapshotRequest) -> Option<u64> {
    let version = snapshot.version;
    match client.put_snapshot(aggregate_id, snapshot).await {
        Ok(put) => Some(put.version),
        Err(error) => {
            tracing::warn!(aggregate_id, version, %error, "could not store a snapshot");
            None
        }
    }
}

/// One aggregate's new events, ready for a [`Batch`] (see [`Repository::stage`]).
#[derive(Debug, Clone)]
pub struct Staged {
    pub append: AggregateAppend,
    /// The snapshot to store once the commit succeeded.
    pub snapshot: Option<PutSnapshotRequest>,
}

/// New events of several aggregates (of any types), committed all or nothing in one
/// `POST /v1/events`, optionally under a condition.
///
/// ```no_run
/// # use factstore_client::sdk::{Aggregate, Batch, CommandContext, Repository, RepositoryError, retry_on_conflict};
/// # async fn transfer<A: Aggregate>(accounts: Repository<A>, withdraw: impl Fn() -> A::Command, deposit: impl Fn() -> A::Command)
/// #     -> Result<(), RepositoryError<A::Error>> {
/// // A transfer: both accounts change, or neither. Another writer on either account makes the
/// // commit fail with a conflict; decide again on fresh state, up to 3 times.
/// retry_on_conflict(3, |_| async {
///     let from = accounts.load("account:ACC-001").await?;
///     let to = accounts.load("account:ACC-002").await?;
///     let out = A::handle(&from.state, withdraw()).map_err(RepositoryError::Domain)?;
///     let into = A::handle(&to.state, deposit()).map_err(RepositoryError::Domain)?;
///     let context = CommandContext::new().correlation_id("transfer-42");
///     Batch::new()
///         .with(accounts.stage(&from, &out, &context)?)
///         .with(accounts.stage(&to, &into, &context)?)
///         .commit(accounts.client())
///         .await?;
///     Ok(())
/// })
/// .await
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Batch {
    staged: Vec<Staged>,
    condition: Option<(EventFilter, u64)>,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Adds one aggregate's events (an aggregate may appear once).
    pub fn with(mut self, staged: Staged) -> Batch {
        self.staged.push(staged);
        self
    }

    /// Fails the commit ([`Error::ConditionFailed`]) if an event matching `filter` exists
    /// after `after_position`.
    pub fn condition(mut self, filter: EventFilter, after_position: u64) -> Batch {
        self.condition = Some((filter, after_position));
        self
    }

    /// Commits every staged aggregate's events atomically, then stores the snapshots that are
    /// due. Aggregates without new events are left out; a batch with none sends nothing and
    /// answers `None`.
    pub async fn commit(self, client: &Client) -> Result<Option<CommitOutcome>, Error> {
        let mut snapshots = Vec::new();
        let mut request = CommitRequest::new([]);
        for staged in self.staged {
            if staged.append.events.is_empty() {
                continue;
            }
            if let Some(snapshot) = staged.snapshot {
                snapshots.push((staged.append.aggregate_id.clone(), snapshot));
            }
            request = request.append(staged.append);
        }
        if request.appends.is_empty() {
            return Ok(None);
        }
        if let Some((filter, after_position)) = self.condition {
            request = request.condition(filter, after_position);
        }
        let outcome = client.commit(request).await?;
        for (aggregate_id, snapshot) in snapshots {
            put_snapshot(client, &aggregate_id, snapshot).await;
        }
        Ok(Some(outcome))
    }
}

/// Runs `attempt` (given its number, from 1) until it succeeds, fails with something other
/// than a conflict ([`RepositoryError::is_conflict`]), or has run `attempts` times. Waits a
/// few random milliseconds between attempts so that two writers that collided do not collide
/// again in lockstep.
pub async fn retry_on_conflict<T, E, F, Fut>(attempts: u32, mut attempt: F) -> Result<T, RepositoryError<E>>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, RepositoryError<E>>>,
{
    let attempts = attempts.max(1);
    let mut n = 1;
    loop {
        match attempt(n).await {
            Err(error) if error.is_conflict() && n < attempts => {
                let jitter_ms = rand::rng().random_range(0..=(5 * u64::from(n)).min(50));
                tracing::debug!(attempt = n, %jitter_ms, "conflict; deciding again");
                tokio::time::sleep(Duration::from_millis(jitter_ms)).await;
                n += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::atomic::{AtomicU32, Ordering};

    use serde::{Deserialize, Serialize};
    use serde_json::json;

    use super::*;
    use crate::sdk::DomainEvent;

    struct Counter;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "event_type", content = "event_data")]
    enum Ev {
        Added { n: i64 },
    }
    impl DomainEvent for Ev {}

    #[derive(Debug, thiserror::Error)]
    #[error("never")]
    struct Never;

    impl Aggregate for Counter {
        const AGGREGATE_TYPE: &'static str = "Counter";
        const SNAPSHOT_VERSION: u32 = 3;
        type State = i64;
        type Command = i64;
        type Event = Ev;
        type Error = Never;
        fn apply(state: &mut i64, Ev::Added { n }: &Ev) {
            *state += n;
        }
        fn handle(_: &i64, n: i64) -> Result<Vec<Ev>, Never> {
            Ok(vec![Ev::Added { n }])
        }
    }

    fn loaded(version: u64, state: i64) -> Loaded<i64> {
        Loaded {
            aggregate_id: "counter:1".into(),
            version,
            state,
            snapshot_version: None,
            events_applied: 0,
        }
    }

    #[test]
    fn staging_expects_the_loaded_version_and_snapshots_when_a_multiple_is_crossed() {
        // No request is made by `stage`: the URL is never contacted.
        let repository =
            Repository::<Counter>::new(Client::new("http://127.0.0.1:9").unwrap()).snapshot_every(10);
        let context = CommandContext::new()
            .created_by("user:1")
            .metadata(json!({"source": "test"}))
            .correlation_id("c-1");
        let two = [Ev::Added { n: 1 }, Ev::Added { n: 2 }];

        let staged = repository.stage(&loaded(7, 100), &two, &context).unwrap();
        assert_eq!(staged.append.expected_version, ExpectedVersion::Exact(7));
        assert!(staged.snapshot.is_none(), "7 → 9 crosses no multiple of 10");
        let event = &staged.append.events[0];
        assert_eq!(
            (
                event.aggregate_type.as_str(),
                event.event_type.as_str(),
                event.event_version
            ),
            ("Counter", "Added", None)
        );
        assert_eq!(event.created_by.as_deref(), Some("user:1"));
        assert_eq!(
            event.metadata.as_ref().unwrap().to_value(),
            json!({"source": "test", "correlation_id": "c-1"})
        );

        let staged = repository.stage(&loaded(9, 100), &two, &context).unwrap();
        let snapshot = staged.snapshot.unwrap();
        assert_eq!((snapshot.version, snapshot.snapshot_version), (11, Some(3)));
        assert_eq!(
            snapshot.state.to_value(),
            json!(103),
            "the state after the new events"
        );
        assert!(
            repository
                .stage(&loaded(10, 0), &[], &context)
                .unwrap()
                .snapshot
                .is_none()
        );

        let never = Repository::<Counter>::new(Client::new("http://127.0.0.1:9").unwrap());
        assert!(
            never
                .stage(&loaded(9, 0), &two, &context)
                .unwrap()
                .snapshot
                .is_none()
        );
    }

    fn conflict() -> RepositoryError<Never> {
        RepositoryError::Client(Error::WrongExpectedVersion {
            aggregate_id: "counter:1".into(),
            expected_version: ExpectedVersion::Exact(1),
            current_version: 2,
        })
    }

    #[tokio::test]
    async fn conflicts_are_retried_a_bounded_number_of_times_and_nothing_else_is() {
        let calls = AtomicU32::new(0);
        let result = retry_on_conflict(3, |n| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move { if n < 3 { Err(conflict()) } else { Ok(n) } }
        })
        .await;
        assert_eq!((result.unwrap(), calls.load(Ordering::SeqCst)), (3, 3));

        let calls = AtomicU32::new(0);
        let result: Result<(), _> = retry_on_conflict(3, |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(conflict()) }
        })
        .await;
        assert!(result.unwrap_err().is_conflict());
        assert_eq!(calls.load(Ordering::SeqCst), 3, "bounded");

        let calls = AtomicU32::new(0);
        let result: Result<(), _> = retry_on_conflict(5, |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(RepositoryError::Domain(Never)) }
        })
        .await;
        assert!(matches!(result, Err(RepositoryError::Domain(Never))));
        assert_eq!(calls.load(Ordering::SeqCst), 1, "a refusal is final");
    }
}
