//! `ModelStore`: a trivially correct, in-memory [`EventStore`], the reference every real
//! backend is compared against.
//!
//! Clarity beats speed here. The state is a `Vec<Event>` (index = position − 1) and two maps,
//! all under one mutex, and every rule of the `EventStore` doc comment ("The rules, precisely")
//! is written out in the order the doc states it, with linear scans where an index would only
//! add room for mistakes. If the model and a backend disagree, the doc decides which is wrong.
//!
//! The model writes its own idempotency check rather than calling
//! `PreparedCommit::replayed_outcome`, which the backends share: a reference that borrowed the
//! code under test could not catch a bug in it.
//!
//! Where the doc is silent the model chooses the plainest reading, and says so:
//! - a read with `limit == 0` is `InvalidRequest` (a page that can hold nothing cannot page);
//! - an aggregate read with `from_version == Some(0)` is `InvalidRequest` (versions start at 1);
//! - the version range of an aggregate read is clamped to `1..=current`, so "versions remain in
//!   the range" means versions that exist (as of `as_of`).
//!
//! Snapshots are a `BTreeMap` per aggregate (version → snapshot), beside the events and never
//! mixed with them.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use factstore_core::append::validate_aggregate_id;
use factstore_core::snapshot::validate_latest_query;
use factstore_core::{
    AggregatePage, AggregateQuery, AppendedAggregate, AppendedEvent, CommitOutcome, Direction, Event,
    EventPage, EventQuery, EventStore, Head, Limits, PreparedCommit, PutSnapshot, Snapshot, SnapshotInfo,
    SnapshotStored, StoreError, Timestamp,
};
use parking_lot::Mutex;
use tokio::sync::watch;
use uuid::Uuid;

/// The reference implementation of [`EventStore`], in memory.
#[derive(Debug)]
pub struct ModelStore {
    limits: Limits,
    state: Mutex<State>,
    /// The head position, published after every commit for `watch_head`.
    head_tx: watch::Sender<u64>,
}

/// Everything the store holds. Invariant: `events[i].position() == i + 1`, and the two maps
/// index exactly the events in `events`.
#[derive(Debug, Default)]
struct State {
    events: Vec<Event>,
    /// Event id → position.
    by_id: HashMap<Uuid, u64>,
    /// Aggregate id → the positions of its events, in version order (index = version − 1).
    aggregates: HashMap<String, Vec<u64>>,
    /// Aggregate id → version → its snapshot.
    snapshots: HashMap<String, BTreeMap<u64, Snapshot>>,
}

impl State {
    fn head(&self) -> u64 {
        self.events.len() as u64
    }

    fn event_at(&self, position: u64) -> Option<&Event> {
        let index = usize::try_from(position.checked_sub(1)?).ok()?;
        self.events.get(index)
    }

    fn current_version(&self, aggregate_id: &str) -> u64 {
        self.aggregates
            .get(aggregate_id)
            .map_or(0, |positions| positions.len() as u64)
    }

    /// The aggregate's first event, which fixes its type.
    fn first_event(&self, aggregate_id: &str) -> Option<&Event> {
        let first = *self.aggregates.get(aggregate_id)?.first()?;
        self.event_at(first)
    }

    fn stored(&self, event_id: Uuid) -> Option<&Event> {
        self.event_at(*self.by_id.get(&event_id)?)
    }

    fn last_recorded_at(&self) -> Option<Timestamp> {
        self.events.last().map(Event::recorded_at)
    }
}

impl Default for ModelStore {
    fn default() -> ModelStore {
        ModelStore::new()
    }
}

impl ModelStore {
    /// An empty store with the default limits.
    pub fn new() -> ModelStore {
        ModelStore::with_limits(Limits::default())
    }

    /// An empty store validating against `limits`.
    pub fn with_limits(limits: Limits) -> ModelStore {
        let (head_tx, _) = watch::channel(0);
        ModelStore {
            limits,
            state: Mutex::new(State::default()),
            head_tx,
        }
    }

    /// Every stored event, in position order.
    pub fn events(&self) -> Vec<Event> {
        self.state.lock().events.clone()
    }
}

/// Rule 1, idempotency. `Ok(None)`: no client id of the commit is stored, go on.
/// `Ok(Some(outcome))`: a full retry, answer the original outcome.
fn check_idempotency(state: &State, prepared: &PreparedCommit) -> Result<Option<CommitOutcome>, StoreError> {
    // The first stored client id met in commit order, if any.
    let first_stored = prepared
        .appends
        .iter()
        .flat_map(|append| append.events.iter())
        .filter(|event| event.client_event_id)
        .find_map(|event| state.stored(event.event_id).map(|_| event.event_id));
    let Some(first_stored) = first_stored else {
        return Ok(None);
    };
    let duplicate = |reason: &str| StoreError::DuplicateEventId {
        event_id: first_stored,
        reason: reason.to_owned(),
    };

    let mut appends = Vec::with_capacity(prepared.appends.len());
    let mut last_position = 0;
    for append in &prepared.appends {
        let mut events = Vec::with_capacity(append.events.len());
        let mut previous_version: Option<u64> = None;
        for event in &append.events {
            if !event.client_event_id {
                return Err(duplicate("the request mixes stored events with new ones"));
            }
            let Some(stored) = state.stored(event.event_id) else {
                return Err(duplicate("the request mixes stored events with new ones"));
            };
            if stored.aggregate_id() != append.aggregate_id {
                return Err(duplicate(&format!(
                    "event {} is stored in aggregate '{}', not '{}'",
                    event.event_id,
                    stored.aggregate_id(),
                    append.aggregate_id
                )));
            }
            if previous_version.is_some_and(|previous| stored.version() != previous + 1) {
                return Err(duplicate(
                    "the stored events are not at consecutive versions in the order of the request",
                ));
            }
            if !event.same_content_as(stored) {
                return Err(duplicate(&format!(
                    "event {} is stored with different content",
                    event.event_id
                )));
            }
            previous_version = Some(stored.version());
            last_position = stored.position();
            events.push(AppendedEvent {
                event_id: stored.event_id(),
                version: stored.version(),
                position: stored.position(),
                recorded_at: stored.recorded_at(),
            });
        }
        appends.push(AppendedAggregate {
            aggregate_id: append.aggregate_id.clone(),
            version: previous_version.unwrap_or(0),
            events,
        });
    }
    Ok(Some(CommitOutcome {
        created: false,
        position: last_position,
        appends,
    }))
}

/// Rule 2, per append in order: the expected version, then the aggregate type.
fn check_appends(state: &State, prepared: &PreparedCommit) -> Result<(), StoreError> {
    for append in &prepared.appends {
        let current = state.current_version(&append.aggregate_id);
        if !append.expected_version.admits(current) {
            return Err(StoreError::WrongExpectedVersion {
                aggregate_id: append.aggregate_id.clone(),
                expected_version: append.expected_version,
                current_version: current,
            });
        }
        let existing = match state.first_event(&append.aggregate_id) {
            Some(first) => first.aggregate_type().to_owned(),
            // Commit::prepare refuses an empty append, so a new aggregate has a first event.
            None => match append.events.first() {
                Some(first) => first.aggregate_type.clone(),
                None => continue,
            },
        };
        if let Some(other) = append.events.iter().find(|e| e.aggregate_type != existing) {
            return Err(StoreError::AggregateTypeMismatch {
                aggregate_id: append.aggregate_id.clone(),
                existing,
                given: other.aggregate_type.clone(),
            });
        }
    }
    Ok(())
}

/// Rule 3: no stored event after `after_position` passes the condition's filter.
fn check_condition(state: &State, prepared: &PreparedCommit) -> Result<(), StoreError> {
    let Some(condition) = &prepared.condition else {
        return Ok(());
    };
    let conflict = state
        .events
        .iter()
        .find(|event| event.position() > condition.after_position && condition.filter.matches(event));
    match conflict {
        Some(event) => Err(StoreError::ConditionFailed {
            after_position: condition.after_position,
            conflicting_position: event.position(),
        }),
        None => Ok(()),
    }
}

/// Writes a commit that passed every check. One `recorded_at` for the whole commit, never
/// earlier than the previous commit's.
fn write(state: &mut State, prepared: &PreparedCommit) -> CommitOutcome {
    let now = Timestamp::now();
    let recorded_at = state.last_recorded_at().map_or(now, |previous| previous.max(now));
    let mut appends = Vec::with_capacity(prepared.appends.len());
    let mut position = state.head();
    for append in &prepared.appends {
        let mut version = state.current_version(&append.aggregate_id);
        let mut events = Vec::with_capacity(append.events.len());
        for prepared_event in &append.events {
            position += 1;
            version += 1;
            let event = Event::from_fields(&prepared_event.fields(
                &append.aggregate_id,
                position,
                version,
                recorded_at,
            ));
            events.push(AppendedEvent {
                event_id: event.event_id(),
                version,
                position,
                recorded_at,
            });
            state.by_id.insert(event.event_id(), position);
            state
                .aggregates
                .entry(append.aggregate_id.clone())
                .or_default()
                .push(position);
            state.events.push(event);
        }
        appends.push(AppendedAggregate {
            aggregate_id: append.aggregate_id.clone(),
            version,
            events,
        });
    }
    CommitOutcome {
        created: true,
        position,
        appends,
    }
}

#[async_trait]
impl EventStore for ModelStore {
    fn limits(&self) -> &Limits {
        &self.limits
    }

    async fn commit_prepared(&self, prepared: PreparedCommit) -> Result<CommitOutcome, StoreError> {
        let mut state = self.state.lock();
        if let Some(retry) = check_idempotency(&state, &prepared)? {
            return Ok(retry);
        }
        check_appends(&state, &prepared)?;
        check_condition(&state, &prepared)?;
        let outcome = write(&mut state, &prepared);
        // Published under the lock so that watchers see heads in order.
        self.head_tx.send_replace(state.head());
        Ok(outcome)
    }

    async fn read_aggregate(&self, query: AggregateQuery) -> Result<AggregatePage, StoreError> {
        validate_aggregate_id(&query.aggregate_id, &self.limits)?;
        if query.limit == 0 {
            return Err(StoreError::invalid("limit must be at least 1"));
        }
        if query.from_version == Some(0) {
            return Err(StoreError::invalid("from_version must be at least 1"));
        }
        let state = self.state.lock();
        let not_found = || StoreError::AggregateNotFound {
            aggregate_id: query.aggregate_id.clone(),
        };
        let positions = state.aggregates.get(&query.aggregate_id).ok_or_else(not_found)?;
        let all: Vec<&Event> = positions.iter().filter_map(|&p| state.event_at(p)).collect();
        // With as_of, the aggregate as the store knew it then: its events recorded by then.
        let current = match query.as_of {
            None => all.len() as u64,
            Some(as_of) => all.iter().filter(|e| e.recorded_at() <= as_of).count() as u64,
        };
        let Some(first) = all.first().filter(|_| current > 0) else {
            return Err(not_found());
        };
        let aggregate_type = first.aggregate_type().to_owned();
        let event_of = |version: u64| -> Option<&Event> {
            let index = usize::try_from(version.checked_sub(1)?).ok()?;
            all.get(index).copied()
        };

        // The versions to visit, in the direction of travel, clamped to those that exist.
        let versions: Vec<u64> = match query.direction {
            Direction::Forward => {
                let from = query.from_version.unwrap_or(1);
                let to = query.to_version.unwrap_or(current).min(current);
                (from..=to).collect()
            }
            Direction::Backward => {
                let from = query.from_version.unwrap_or(current).min(current);
                let to = query.to_version.unwrap_or(1).max(1);
                (to..=from).rev().collect()
            }
        };

        let mut events = Vec::new();
        for &version in &versions {
            if events.len() == query.limit {
                break;
            }
            let Some(event) = event_of(version) else {
                continue;
            };
            if query.matches(event) {
                events.push(event.clone());
            }
        }
        let full = events.len() == query.limit;
        let next_from_version = match (full, events.last()) {
            (true, Some(last)) => {
                let next = match query.direction {
                    Direction::Forward => last.version().checked_add(1),
                    Direction::Backward => last.version().checked_sub(1),
                };
                next.filter(|next| versions.contains(next))
            }
            _ => None,
        };
        Ok(AggregatePage {
            aggregate_id: query.aggregate_id,
            aggregate_type,
            version: current,
            events,
            next_from_version,
        })
    }

    async fn read_events(&self, query: EventQuery) -> Result<EventPage, StoreError> {
        query.filter.validate(&self.limits)?;
        if query.limit == 0 {
            return Err(StoreError::invalid("limit must be at least 1"));
        }
        let state = self.state.lock();
        let head = state.head();
        let end = query.to_position.map_or(head, |to| to.min(head));
        let mut events = Vec::new();
        for event in &state.events {
            if events.len() == query.limit {
                break;
            }
            let position = event.position();
            if position <= query.after_position || position > end {
                continue;
            }
            if query.matches(event) {
                events.push(event.clone());
            }
        }
        let next_after_position = match events.last() {
            Some(last) if events.len() == query.limit => last.position(),
            _ => end.max(query.after_position),
        };
        Ok(EventPage {
            events,
            next_after_position,
            head_position: head,
        })
    }

    async fn get_event(&self, event_id: Uuid) -> Result<Event, StoreError> {
        let state = self.state.lock();
        state
            .stored(event_id)
            .cloned()
            .ok_or(StoreError::EventNotFound { event_id })
    }

    async fn head(&self) -> Result<Head, StoreError> {
        let state = self.state.lock();
        Ok(Head {
            position: state.head(),
            recorded_at: state.last_recorded_at(),
        })
    }

    async fn put_snapshot(&self, put: PutSnapshot) -> Result<SnapshotStored, StoreError> {
        let snapshot = put.prepare(&self.limits, Timestamp::now())?;
        let mut state = self.state.lock();
        let current = state.current_version(&snapshot.aggregate_id);
        if snapshot.version > current {
            return Err(StoreError::InvalidSnapshot {
                aggregate_id: snapshot.aggregate_id,
                version: snapshot.version,
                current_version: current,
            });
        }
        let info = snapshot.info();
        let replaced = state
            .snapshots
            .entry(snapshot.aggregate_id.clone())
            .or_default()
            .insert(snapshot.version, snapshot)
            .is_some();
        Ok(SnapshotStored { info, replaced })
    }

    async fn latest_snapshot(
        &self,
        aggregate_id: &str,
        max_version: Option<u64>,
    ) -> Result<Snapshot, StoreError> {
        validate_latest_query(aggregate_id, max_version, &self.limits)?;
        let state = self.state.lock();
        state
            .snapshots
            .get(aggregate_id)
            .and_then(|by_version| by_version.range(..=max_version.unwrap_or(u64::MAX)).next_back())
            .map(|(_, snapshot)| snapshot.clone())
            .ok_or_else(|| StoreError::SnapshotNotFound {
                aggregate_id: aggregate_id.to_owned(),
                max_version,
            })
    }

    async fn list_snapshots(&self, aggregate_id: &str) -> Result<Vec<SnapshotInfo>, StoreError> {
        validate_aggregate_id(aggregate_id, &self.limits)?;
        let state = self.state.lock();
        Ok(state
            .snapshots
            .get(aggregate_id)
            .map(|by_version| by_version.values().map(Snapshot::info).collect())
            .unwrap_or_default())
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.head_tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use factstore_core::{AggregateAppend, Commit, Condition, EventFilter, ExpectedVersion, NewEvent};
    use serde_json::json;

    fn event(event_type: &str) -> NewEvent {
        NewEvent::new("Account", event_type, json!({"n": 1}))
    }

    async fn append(
        store: &ModelStore,
        aggregate_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<CommitOutcome, StoreError> {
        store.commit(Commit::single(aggregate_id, expected, events)).await
    }

    #[tokio::test]
    async fn positions_and_versions_are_consecutive_and_one_recorded_at_per_commit() {
        let store = ModelStore::new();
        let out = append(
            &store,
            "a",
            ExpectedVersion::Exact(0),
            vec![event("E"), event("E")],
        )
        .await
        .expect("append");
        assert!(out.created);
        assert_eq!((out.position, out.appends[0].version), (2, 2));
        append(&store, "b", ExpectedVersion::Any, vec![event("E")])
            .await
            .expect("append");
        let events = store.events();
        let shape: Vec<(u64, &str, u64)> = events
            .iter()
            .map(|e| (e.position(), e.aggregate_id(), e.version()))
            .collect();
        assert_eq!(shape, vec![(1, "a", 1), (2, "a", 2), (3, "b", 1)]);
        assert_eq!(events[0].recorded_at(), events[1].recorded_at());
        assert!(events[1].recorded_at() <= events[2].recorded_at());
        assert_eq!(events[0].created_at(), events[0].recorded_at());
        assert_eq!(*store.watch_head().borrow(), 3);
    }

    #[tokio::test]
    async fn a_full_retry_returns_the_original_outcome_even_after_the_version_moved() {
        let store = ModelStore::new();
        let batch = vec![
            event("E").with_id(Uuid::now_v7()),
            event("F").with_id(Uuid::now_v7()),
        ];
        let first = append(&store, "a", ExpectedVersion::Exact(0), batch.clone())
            .await
            .expect("append");
        append(&store, "a", ExpectedVersion::Any, vec![event("G")])
            .await
            .expect("append");
        let retry = append(&store, "a", ExpectedVersion::Exact(0), batch)
            .await
            .expect("retry");
        assert!(!retry.created);
        assert_eq!(retry.position, first.position);
        assert_eq!(retry.appends, first.appends);
        assert_eq!(store.events().len(), 3);
    }

    #[tokio::test]
    async fn any_partial_overlap_is_a_duplicate_naming_the_first_stored_id() {
        let store = ModelStore::new();
        let (x, y) = (Uuid::now_v7(), Uuid::now_v7());
        append(
            &store,
            "a",
            ExpectedVersion::Any,
            vec![event("E").with_id(x), event("E").with_id(y)],
        )
        .await
        .expect("append");
        let is_dup_of = |r: Result<CommitOutcome, StoreError>, id: Uuid| matches!(r, Err(StoreError::DuplicateEventId { event_id, .. }) if event_id == id);
        // Some new, some old.
        let r = append(
            &store,
            "a",
            ExpectedVersion::Any,
            vec![event("E"), event("E").with_id(y)],
        )
        .await;
        assert!(is_dup_of(r, y));
        // Different content.
        let r = append(&store, "a", ExpectedVersion::Any, vec![event("Other").with_id(x)]).await;
        assert!(is_dup_of(r, x));
        // Another aggregate.
        let r = append(&store, "b", ExpectedVersion::Any, vec![event("E").with_id(x)]).await;
        assert!(is_dup_of(r, x));
        // Out of order: not consecutive versions in the order given.
        let r = append(
            &store,
            "a",
            ExpectedVersion::Any,
            vec![event("E").with_id(y), event("E").with_id(x)],
        )
        .await;
        assert!(is_dup_of(r, y));
        // A prefix of the original batch is a full retry of those events.
        let r = append(&store, "a", ExpectedVersion::Any, vec![event("E").with_id(x)])
            .await
            .expect("retry");
        assert_eq!((r.created, r.position, r.appends[0].version), (false, 1, 1));
        assert_eq!(store.events().len(), 2);
    }

    #[tokio::test]
    async fn idempotency_is_checked_before_expected_version_which_is_checked_before_type() {
        let store = ModelStore::new();
        append(&store, "a", ExpectedVersion::Any, vec![event("E")])
            .await
            .expect("append");
        let mismatched = NewEvent::new("Order", "E", json!({}));
        let r = append(&store, "a", ExpectedVersion::Exact(5), vec![mismatched.clone()]).await;
        assert!(matches!(
            r,
            Err(StoreError::WrongExpectedVersion {
                current_version: 1,
                ..
            })
        ));
        let r = append(&store, "a", ExpectedVersion::Exists, vec![mismatched]).await;
        assert!(
            matches!(r, Err(StoreError::AggregateTypeMismatch { ref existing, ref given, .. })
            if existing == "Account" && given == "Order")
        );
        // A new aggregate takes the type of the append's first event.
        let r = append(
            &store,
            "n",
            ExpectedVersion::Any,
            vec![event("E"), NewEvent::new("Order", "E", json!({}))],
        )
        .await;
        assert!(matches!(r, Err(StoreError::AggregateTypeMismatch { .. })));
        let r = append(&store, "n", ExpectedVersion::Exists, vec![event("E")]).await;
        assert!(matches!(
            r,
            Err(StoreError::WrongExpectedVersion {
                current_version: 0,
                ..
            })
        ));
        assert_eq!(store.events().len(), 1);
    }

    #[tokio::test]
    async fn a_failed_check_in_a_later_append_writes_nothing() {
        let store = ModelStore::new();
        let commit = Commit {
            appends: vec![
                AggregateAppend {
                    aggregate_id: "a".into(),
                    expected_version: ExpectedVersion::Exact(0),
                    events: vec![event("E")],
                },
                AggregateAppend {
                    aggregate_id: "b".into(),
                    expected_version: ExpectedVersion::Exact(3),
                    events: vec![event("E")],
                },
            ],
            condition: None,
        };
        let r = store.commit(commit).await;
        assert!(
            matches!(r, Err(StoreError::WrongExpectedVersion { ref aggregate_id, .. }) if aggregate_id == "b")
        );
        assert!(store.events().is_empty());
    }

    #[tokio::test]
    async fn the_condition_names_the_first_conflicting_position() {
        let store = ModelStore::new();
        append(
            &store,
            "seat:1",
            ExpectedVersion::Any,
            vec![event("SeatReserved")],
        )
        .await
        .expect("append");
        append(
            &store,
            "seat:2",
            ExpectedVersion::Any,
            vec![event("Other"), event("SeatReserved")],
        )
        .await
        .expect("append");
        let conditional = |after_position| Commit {
            appends: vec![AggregateAppend {
                aggregate_id: "seat:3".into(),
                expected_version: ExpectedVersion::Any,
                events: vec![event("SeatReserved")],
            }],
            condition: Some(Condition {
                filter: EventFilter {
                    event_types: vec!["SeatReserved".into()],
                    aggregate_id_prefix: Some("seat:".into()),
                    ..EventFilter::default()
                },
                after_position,
            }),
        };
        let r = store.commit(conditional(1)).await;
        assert!(matches!(
            r,
            Err(StoreError::ConditionFailed {
                conflicting_position: 3,
                after_position: 1
            })
        ));
        let ok = store.commit(conditional(3)).await.expect("nothing after 3");
        assert_eq!(ok.position, 4);
    }

    #[tokio::test]
    async fn event_reads_page_past_filtered_out_events() {
        let store = ModelStore::new();
        for i in 0..5 {
            let kind = if i % 2 == 0 { "Even" } else { "Odd" };
            append(&store, &format!("a{i}"), ExpectedVersion::Any, vec![event(kind)])
                .await
                .expect("append");
        }
        let mut query = EventQuery::all(0, 2);
        query.filter.event_types = vec!["Even".into()];
        // Positions 1, 3, 5 are "Even".
        let page = store.read_events(query.clone()).await.expect("read");
        let positions: Vec<u64> = page.events.iter().map(Event::position).collect();
        assert_eq!(
            (positions, page.next_after_position, page.head_position),
            (vec![1, 3], 3, 5)
        );
        query.after_position = 3;
        let page = store.read_events(query.clone()).await.expect("read");
        assert_eq!((page.events.len(), page.next_after_position), (1, 5));
        // Nothing matches in range: the next page starts at the end of the range.
        query.after_position = 0;
        query.to_position = Some(2);
        query.filter.event_types = vec!["None".into()];
        let page = store.read_events(query.clone()).await.expect("read");
        assert_eq!((page.events.len(), page.next_after_position), (0, 2));
        // Never below after_position.
        query.after_position = 4;
        let page = store.read_events(query).await.expect("read");
        assert_eq!(page.next_after_position, 4);
        // The page is full exactly at the end: next is the last returned position.
        let page = store.read_events(EventQuery::all(3, 2)).await.expect("read");
        assert_eq!(page.next_after_position, 5);
    }

    #[tokio::test]
    async fn aggregate_reads_page_both_ways() {
        let store = ModelStore::new();
        let events: Vec<NewEvent> = (0..5).map(|_| event("E")).collect();
        append(&store, "a", ExpectedVersion::Any, events)
            .await
            .expect("append");
        let versions = |page: &AggregatePage| page.events.iter().map(Event::version).collect::<Vec<_>>();

        let mut query = AggregateQuery::forward("a", 2);
        let page = store.read_aggregate(query.clone()).await.expect("read");
        assert_eq!(
            (versions(&page), page.next_from_version, page.version),
            (vec![1, 2], Some(3), 5)
        );
        query.from_version = Some(4);
        let page = store.read_aggregate(query.clone()).await.expect("read");
        assert_eq!((versions(&page), page.next_from_version), (vec![4, 5], None));
        query.from_version = Some(2);
        query.to_version = Some(3);
        let page = store.read_aggregate(query.clone()).await.expect("read");
        assert_eq!((versions(&page), page.next_from_version), (vec![2, 3], None));

        let mut query = AggregateQuery::forward("a", 2);
        query.direction = Direction::Backward;
        let page = store.read_aggregate(query.clone()).await.expect("read");
        assert_eq!((versions(&page), page.next_from_version), (vec![5, 4], Some(3)));
        query.from_version = Some(2);
        let page = store.read_aggregate(query.clone()).await.expect("read");
        assert_eq!((versions(&page), page.next_from_version), (vec![2, 1], None));

        let missing = store.read_aggregate(AggregateQuery::forward("nope", 2)).await;
        assert!(matches!(missing, Err(StoreError::AggregateNotFound { .. })));
    }

    #[tokio::test]
    async fn as_of_sees_the_aggregate_as_it_was() {
        let store = ModelStore::new();
        append(&store, "a", ExpectedVersion::Any, vec![event("E")])
            .await
            .expect("append");
        let then = store.events()[0].recorded_at();
        append(&store, "a", ExpectedVersion::Any, vec![event("E")])
            .await
            .expect("append");
        let later = store.events()[1].recorded_at();
        let mut query = AggregateQuery::forward("a", 10);
        query.as_of = Some(then);
        let page = store.read_aggregate(query.clone()).await.expect("read");
        // Both commits may share a microsecond; then the store "knew" both at that time.
        let expected = if later == then { 2 } else { 1 };
        assert_eq!((page.version, page.events.len()), (expected, expected as usize));
        query.as_of = Some(Timestamp::from_micros(then.as_micros() - 1));
        let r = store.read_aggregate(query).await;
        assert!(matches!(r, Err(StoreError::AggregateNotFound { .. })));
    }

    #[tokio::test]
    async fn head_and_get_event() {
        let store = ModelStore::new();
        assert_eq!(
            store.head().await.expect("head"),
            Head {
                position: 0,
                recorded_at: None
            }
        );
        let id = Uuid::now_v7();
        append(&store, "a", ExpectedVersion::Any, vec![event("E").with_id(id)])
            .await
            .expect("append");
        let stored = store.get_event(id).await.expect("found");
        assert_eq!(stored.position(), 1);
        let head = store.head().await.expect("head");
        assert_eq!((head.position, head.recorded_at), (1, Some(stored.recorded_at())));
        let other = Uuid::now_v7();
        assert_eq!(
            store.get_event(other).await,
            Err(StoreError::EventNotFound { event_id: other })
        );
    }
}
