//! The conformance suite: the behaviour every [`EventStore`] must show, whatever its backend.
//!
//! Each case is a `pub async fn case(store: Arc<dyn EventStore>)` that is given an **empty**
//! store and panics with a message naming the broken rule. The rules are those of the
//! [`EventStore`] documentation ("The rules, precisely"); a case checks them from the outside,
//! through the trait only, and computes what it expects by hand rather than with the core's own
//! helpers (`EventFilter::matches`, …), so that a shared bug does not hide itself.
//!
//! A backend runs every case, one `#[tokio::test]` each, with
//! [`conformance_tests!`](crate::conformance_tests):
//! ```ignore
//! // tests/conformance.rs of a backend (needs `tokio` with "macros" and "rt-multi-thread")
//! factstore_testkit::conformance_tests!(async { my_backend::open_fresh_store().await });
//! ```
//! The expression yields an `Arc<dyn EventStore>` for an empty store; it is evaluated once per
//! case. [`CASES`] names every case.
//!
//! Cases that need `recorded_at` to differ between commits sleep a few milliseconds between
//! them, and require that the store's clock moved in that time. Every case runs in well under a
//! second on the reference model.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use factstore_core::{
    AggregateAppend, AggregatePage, AggregateQuery, Commit, CommitOutcome, Condition, Direction, Event,
    EventFilter, EventPage, EventQuery, EventStore, ExpectedVersion, NewEvent, PutSnapshot, SnapshotInfo,
    StoreError, Timestamp,
};
use serde_json::json;
use serde_json::value::RawValue;
use tokio::sync::Barrier;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::wait::join_all;

/// Expands to a module `conformance` with one `#[tokio::test]` per case of the suite.
///
/// `$open` is an expression (typically an `async` block) that yields an
/// `Arc<dyn EventStore>` for an empty store; it is evaluated once per case, inside the test's
/// runtime. The calling crate needs `tokio` with the "macros" and "rt-multi-thread" features.
///
/// `conformance_tests!(optional $open)` is for a backend that needs a service which may be
/// missing: `$open` yields an `Option<Arc<dyn EventStore>>`, and a case given `None` returns
/// at once (the backend's test support says plainly that it skipped them).
#[macro_export]
macro_rules! conformance_tests {
    (optional $open:expr) => {
        $crate::__conformance_cases!(@with [optional_tests $open]);
    };
    ($open:expr) => {
        $crate::__conformance_cases!(@with [tests $open]);
    };
}

/// The list of cases, in one place; expands it either into the tests of
/// [`conformance_tests!`] or into [`CASES`].
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    (@with $target:tt) => {
        $crate::__conformance_cases!(@expand $target
            append_to_new_aggregate_numbers_versions_and_positions,
            every_field_reads_back_exactly,
            recorded_at_is_shared_by_a_commit_and_never_decreases,
            expected_version_exact,
            expected_version_zero_means_new,
            expected_version_exists,
            expected_version_any,
            failed_batch_writes_nothing,
            failed_multi_aggregate_commit_writes_nothing,
            aggregate_type_mismatch_against_stored_events,
            aggregate_type_mismatch_inside_new_batch,
            errors_follow_the_documented_check_order,
            full_retry_returns_original_outcome,
            retry_of_multi_aggregate_commit_returns_original_outcome,
            retry_of_a_stored_run_within_a_commit_succeeds,
            partial_overlap_is_duplicate_event_id,
            same_id_with_different_content_is_duplicate_event_id,
            same_id_in_another_aggregate_is_duplicate_event_id,
            retry_out_of_order_or_not_consecutive_is_duplicate_event_id,
            retry_compares_json_by_value_and_only_sent_fields,
            multi_aggregate_commit_takes_consecutive_positions_in_order,
            condition_fails_when_a_matching_event_follows,
            condition_passes_when_matches_are_at_or_below_after_position,
            multi_aggregate_commit_checks_every_expected_version,
            an_aggregate_listed_twice_is_invalid,
            condition_filters_of_every_kind,
            retry_of_a_conditional_commit_replays_after_the_condition_fails,
            condition_ignores_the_commits_own_events,
            concurrent_seat_reservations_let_exactly_one_win,
            aggregate_read_forward_and_backward,
            aggregate_read_version_bounds,
            aggregate_read_pages_walk_every_event_once,
            aggregate_read_filters_on_created_at,
            aggregate_read_as_of_recorded_at,
            aggregate_not_found,
            read_events_filters_by_type_and_aggregate,
            read_events_filters_by_links_and_author,
            read_events_filters_by_time_and_position,
            read_events_filters_and_together,
            read_events_pages_walk_everything_once,
            read_events_next_after_position_moves_past_filtered_events,
            get_event_found_and_not_found,
            head_of_empty_and_filled_store,
            watch_head_sees_commits,
            concurrent_appends_are_dense_and_atomic,
            readers_never_see_gaps_during_commits,
            requests_refused_by_validation,
            snapshot_needs_a_version_the_aggregate_has,
            snapshot_state_and_fields_read_back_exactly,
            snapshot_put_at_the_same_version_replaces_it,
            latest_snapshot_is_the_highest_at_or_below_max_version,
            list_snapshots_is_in_version_order_without_states,
            snapshots_are_not_events,
            snapshot_requests_refused_by_validation,
        );
    };
    (@expand [tests $open:expr] $($case:ident),* $(,)?) => {
        mod conformance {
            #[allow(unused_imports, reason = "lets `$open` name items of the calling module")]
            use super::*;

            $(
                #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let store = $open.await;
                    $crate::conformance::$case(store).await;
                }
            )*
        }
    };
    (@expand [optional_tests $open:expr] $($case:ident),* $(,)?) => {
        mod conformance {
            #[allow(unused_imports, reason = "lets `$open` name items of the calling module")]
            use super::*;

            $(
                #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(store) = $open.await else {
                        return;
                    };
                    $crate::conformance::$case(store).await;
                }
            )*
        }
    };
    (@expand [names] $($case:ident),* $(,)?) => {
        /// The name of every case, in the order the suite runs them.
        pub const CASES: &[&str] = &[$(stringify!($case)),*];
    };
}

crate::__conformance_cases!(@with [names]);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

type Store = Arc<dyn EventStore>;

/// How long concurrent tasks of a case may take, together, before the case fails instead of
/// hanging.
const TASKS_FINISH: Duration = Duration::from_secs(60);

/// Long enough for any clock to tick between two commits.
const CLOCK_STEP: Duration = Duration::from_millis(5);

/// The value of a result the case needs, or a panic naming the step and the error.
#[track_caller]
fn ok<T>(result: Result<T, StoreError>, step: &str) -> T {
    match result {
        Ok(value) => value,
        Err(e) => panic!("{step}: expected success, got {e:?} ({e})"),
    }
}

/// The error of a result that must fail.
#[track_caller]
fn fails<T: std::fmt::Debug>(result: Result<T, StoreError>, step: &str) -> StoreError {
    match result {
        Ok(value) => panic!("{step}: expected an error, got {value:?}"),
        Err(e) => e,
    }
}

#[track_caller]
fn ts(text: &str) -> Timestamp {
    Timestamp::parse_rfc3339(text).expect("a valid RFC 3339 literal")
}

/// Noon of a day of January 2024.
fn january(day: u32) -> Timestamp {
    ts(&format!("2024-01-{day:02}T12:00:00Z"))
}

fn micros_before(t: Timestamp) -> Timestamp {
    Timestamp::from_micros(t.as_micros() - 1)
}

fn event(aggregate_type: &str, event_type: &str) -> NewEvent {
    NewEvent::new(aggregate_type, event_type, json!({"n": 1}))
}

fn account(event_type: &str) -> NewEvent {
    event("Account", event_type)
}

/// `n` account events with client ids.
fn with_ids(n: usize) -> (Vec<Uuid>, Vec<NewEvent>) {
    let ids: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
    let events = ids
        .iter()
        .enumerate()
        .map(|(i, id)| NewEvent::new("Account", "MoneyDeposited", json!({"amount": i})).with_id(*id))
        .collect();
    (ids, events)
}

fn append(aggregate_id: &str, expected_version: ExpectedVersion, events: Vec<NewEvent>) -> AggregateAppend {
    AggregateAppend {
        aggregate_id: aggregate_id.to_owned(),
        expected_version,
        events,
    }
}

async fn commit(
    store: &Store,
    aggregate_id: &str,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
) -> Result<CommitOutcome, StoreError> {
    store.commit(Commit::single(aggregate_id, expected, events)).await
}

/// Appends `n` account events to `aggregate_id`, with `ExpectedVersion::Any`.
async fn fill(store: &Store, aggregate_id: &str, n: usize) -> CommitOutcome {
    let events = (0..n).map(|_| account("MoneyDeposited")).collect();
    ok(
        commit(store, aggregate_id, ExpectedVersion::Any, events).await,
        &format!("appending {n} events to {aggregate_id}"),
    )
}

async fn head(store: &Store) -> u64 {
    ok(store.head().await, "head").position
}

fn all_query(after_position: u64, limit: usize) -> EventQuery {
    EventQuery::all(after_position, limit)
}

/// Every event of the store, in position order.
async fn all_events(store: &Store) -> Vec<Event> {
    walk_events(store, all_query(0, 1000)).await
}

/// Walks every page of `query` from its `after_position`, checking the paging rules on each.
async fn walk_events(store: &Store, query: EventQuery) -> Vec<Event> {
    let limit = query.limit;
    let mut query = query;
    let mut out: Vec<Event> = Vec::new();
    for _ in 0..100_000 {
        let page: EventPage = ok(store.read_events(query.clone()).await, "read_events");
        assert!(
            page.events.len() <= limit,
            "read_events returned {} events for limit {limit}",
            page.events.len()
        );
        let mut last = query.after_position;
        for event in &page.events {
            assert!(
                event.position() > last,
                "read_events after {}: position {} is not above {last}",
                query.after_position,
                event.position()
            );
            last = event.position();
        }
        let end = query
            .to_position
            .map_or(page.head_position, |to| to.min(page.head_position));
        if page.events.len() == limit && limit > 0 {
            assert_eq!(
                page.next_after_position, last,
                "a full page's next_after_position is its last position (query {query:?})"
            );
        } else {
            assert_eq!(
                page.next_after_position,
                end.max(query.after_position),
                "a page that is not full ends at min(head, to_position), never below after_position \
                 (query {query:?})"
            );
        }
        let full = page.events.len() == limit;
        out.extend(page.events);
        if !full {
            return out;
        }
        query.after_position = page.next_after_position;
    }
    panic!("read_events paging did not end after 100000 pages");
}

/// Walks every page of an aggregate read, checking `next_from_version` on each.
async fn walk_aggregate(store: &Store, query: AggregateQuery) -> Vec<Event> {
    let mut query = query;
    let mut out = Vec::new();
    for _ in 0..100_000 {
        let page = ok(store.read_aggregate(query.clone()).await, "read_aggregate");
        assert!(
            page.events.len() <= query.limit,
            "read_aggregate returned more than limit"
        );
        let next = page.next_from_version;
        out.extend(page.events);
        match next {
            Some(from) => query.from_version = Some(from),
            None => return out,
        }
    }
    panic!("read_aggregate paging did not end after 100000 pages");
}

fn versions(events: &[Event]) -> Vec<u64> {
    events.iter().map(Event::version).collect()
}

fn positions(events: &[Event]) -> Vec<u64> {
    events.iter().map(Event::position).collect()
}

fn json_value(text: &str) -> serde_json::Value {
    serde_json::from_str(text).expect("the store returns valid JSON")
}

/// The store holds exactly `head_before` events and none of `ids`: a failed commit left
/// nothing behind.
async fn assert_nothing_written(store: &Store, head_before: u64, ids: &[Uuid], step: &str) {
    let after = ok(store.head().await, "head");
    assert_eq!(
        after.position, head_before,
        "{step}: a failed commit moved the head"
    );
    let events = all_events(store).await;
    assert_eq!(
        events.len() as u64,
        head_before,
        "{step}: a failed commit left events readable"
    );
    for id in ids {
        let found = store.get_event(*id).await;
        assert!(
            matches!(found, Err(StoreError::EventNotFound { event_id }) if event_id == *id),
            "{step}: event {id} of a failed commit: expected EventNotFound, got {found:?}"
        );
    }
}

async fn assert_aggregate_missing(store: &Store, aggregate_id: &str, step: &str) {
    let err = fails(
        store
            .read_aggregate(AggregateQuery::forward(aggregate_id, 100))
            .await,
        step,
    );
    assert_eq!(
        err,
        StoreError::AggregateNotFound {
            aggregate_id: aggregate_id.to_owned()
        },
        "{step}"
    );
}

#[track_caller]
fn assert_duplicate(err: StoreError, id: Uuid, step: &str) {
    match err {
        StoreError::DuplicateEventId { event_id, .. } => {
            assert_eq!(
                event_id, id,
                "{step}: DuplicateEventId must name the first stored id in commit order"
            )
        }
        other => panic!("{step}: expected DuplicateEventId for {id}, got {other:?}"),
    }
}

/// The outcome a retry must return: the original with `created == false`.
fn as_retry(original: &CommitOutcome) -> CommitOutcome {
    CommitOutcome {
        created: false,
        ..original.clone()
    }
}

// ---------------------------------------------------------------------------------------------
// Appends
// ---------------------------------------------------------------------------------------------

/// A new aggregate gets versions 1..n at consecutive positions from head + 1, and the outcome
/// says so.
pub async fn append_to_new_aggregate_numbers_versions_and_positions(store: Store) {
    let first = fill(&store, "account:1", 3).await;
    assert!(first.created, "a new commit has created == true");
    assert_eq!(first.position, 3, "outcome.position is that of the last event");
    assert_eq!(first.appends.len(), 1);
    assert_eq!(first.appends[0].aggregate_id, "account:1");
    assert_eq!(first.appends[0].version, 3);
    let got: Vec<(u64, u64)> = first.appends[0]
        .events
        .iter()
        .map(|e| (e.version, e.position))
        .collect();
    assert_eq!(got, vec![(1, 1), (2, 2), (3, 3)]);

    let head_before = head(&store).await;
    let second = fill(&store, "account:2", 2).await;
    let got: Vec<(u64, u64)> = second.appends[0]
        .events
        .iter()
        .map(|e| (e.version, e.position))
        .collect();
    assert_eq!(
        got,
        vec![(1, head_before + 1), (2, head_before + 2)],
        "positions continue from head + 1"
    );

    let third = fill(&store, "account:1", 2).await;
    let got: Vec<(u64, u64)> = third.appends[0]
        .events
        .iter()
        .map(|e| (e.version, e.position))
        .collect();
    assert_eq!(got, vec![(4, 6), (5, 7)], "versions continue per aggregate");
    assert_eq!((third.position, third.appends[0].version), (7, 5));

    for outcome in [&first, &second, &third] {
        for appended in &outcome.appends[0].events {
            let stored = ok(
                store.get_event(appended.event_id).await,
                "get_event of an appended event",
            );
            assert_eq!(stored.position(), appended.position);
            assert_eq!(stored.version(), appended.version);
            assert_eq!(stored.recorded_at(), appended.recorded_at);
            assert_eq!(stored.aggregate_id(), outcome.appends[0].aggregate_id);
        }
    }
    let page = ok(
        store
            .read_aggregate(AggregateQuery::forward("account:1", 100))
            .await,
        "read",
    );
    assert_eq!(versions(&page.events), vec![1, 2, 3, 4, 5]);
    assert_eq!(positions(&page.events), vec![1, 2, 3, 6, 7]);
    assert_eq!(page.version, 5);
}

/// Every field of every event reads back exactly through all three read paths.
pub async fn every_field_reads_back_exactly(store: Store) {
    let given_id = Uuid::now_v7();
    let created_at = ts("2024-01-15T10:00:00.123456Z");
    let full = NewEvent::new(
        "Account",
        "MoneyDeposited",
        json!({"amount": 500, "currency": "USD", "tags": ["a", "b"]}),
    )
    .with_id(given_id)
    .with_event_version(2)
    .with_created_by("user:123")
    .with_created_at(created_at)
    .with_metadata(json!({"correlation_id": "corr-1", "causation_id": "cause-1", "ip": "10.0.0.7"}));
    let minimal = NewEvent::new("Account", "AccountNoted", json!({}));
    let only_correlation = NewEvent::new("Account", "AccountNoted", json!({"x": null}))
        .with_metadata(json!({"correlation_id": "corr-2"}));
    let outcome = ok(
        commit(
            &store,
            "account:ACC-001",
            ExpectedVersion::Exact(0),
            vec![full, minimal, only_correlation],
        )
        .await,
        "append",
    );
    let appended = &outcome.appends[0].events;
    assert_eq!(appended.len(), 3);
    assert_eq!(appended[0].event_id, given_id, "a client-chosen event_id is kept");
    assert_eq!(
        appended[1].event_id.get_version_num(),
        7,
        "a generated event_id is a UUIDv7"
    );
    assert_eq!(
        appended[2].event_id.get_version_num(),
        7,
        "a generated event_id is a UUIDv7"
    );
    assert_ne!(appended[1].event_id, appended[2].event_id);
    let recorded_at = appended[0].recorded_at;

    let check = |e: &Event, path: &str| {
        assert_eq!(e.aggregate_id(), "account:ACC-001", "{path}");
        assert_eq!(e.aggregate_type(), "Account", "{path}");
        assert_eq!(e.recorded_at(), recorded_at, "{path}: recorded_at");
        let i = usize::try_from(e.version() - 1).expect("small");
        assert_eq!(e.event_id(), appended[i].event_id, "{path}: event_id");
        assert_eq!(e.position(), appended[i].position, "{path}: position");
        match e.version() {
            1 => {
                assert_eq!(e.event_type(), "MoneyDeposited", "{path}");
                assert_eq!(e.event_version(), 2, "{path}: event_version given");
                assert_eq!(
                    json_value(e.event_data()),
                    json!({"amount": 500, "currency": "USD", "tags": ["a", "b"]}),
                    "{path}"
                );
                assert_eq!(e.created_by(), Some("user:123"), "{path}");
                assert_eq!(e.created_at(), created_at, "{path}: created_at given");
                assert_eq!(
                    e.metadata().map(json_value),
                    Some(json!({"correlation_id": "corr-1", "causation_id": "cause-1", "ip": "10.0.0.7"})),
                    "{path}"
                );
                assert_eq!(e.correlation_id(), Some("corr-1"), "{path}");
                assert_eq!(e.causation_id(), Some("cause-1"), "{path}");
            }
            2 => {
                assert_eq!(e.event_type(), "AccountNoted", "{path}");
                assert_eq!(e.event_version(), 1, "{path}: event_version defaults to 1");
                assert_eq!(json_value(e.event_data()), json!({}), "{path}");
                assert_eq!(e.created_by(), None, "{path}");
                assert_eq!(
                    e.created_at(),
                    recorded_at,
                    "{path}: created_at defaults to recorded_at"
                );
                assert_eq!(e.metadata(), None, "{path}");
                assert_eq!(e.correlation_id(), None, "{path}");
                assert_eq!(e.causation_id(), None, "{path}");
            }
            3 => {
                assert_eq!(json_value(e.event_data()), json!({"x": null}), "{path}");
                assert_eq!(
                    e.metadata().map(json_value),
                    Some(json!({"correlation_id": "corr-2"})),
                    "{path}"
                );
                assert_eq!(e.correlation_id(), Some("corr-2"), "{path}");
                assert_eq!(e.causation_id(), None, "{path}");
            }
            v => panic!("{path}: unexpected version {v}"),
        }
    };

    let page = ok(
        store
            .read_aggregate(AggregateQuery::forward("account:ACC-001", 10))
            .await,
        "read_aggregate",
    );
    assert_eq!(page.aggregate_id, "account:ACC-001");
    assert_eq!(page.aggregate_type, "Account");
    assert_eq!(versions(&page.events), vec![1, 2, 3]);
    for e in &page.events {
        check(e, "read_aggregate");
    }
    let events = all_events(&store).await;
    assert_eq!(positions(&events), vec![1, 2, 3]);
    for e in &events {
        check(e, "read_events");
    }
    for a in appended {
        let e = ok(store.get_event(a.event_id).await, "get_event");
        check(&e, "get_event");
        let same = events
            .iter()
            .find(|s| s.event_id() == a.event_id)
            .expect("listed by read_events");
        assert_eq!(e.to_json(), same.to_json(), "get_event and read_events agree");
    }
}

/// All events of one commit share one `recorded_at`, and `recorded_at` never decreases along
/// `position`.
pub async fn recorded_at_is_shared_by_a_commit_and_never_decreases(store: Store) {
    let mut tasks = JoinSet::new();
    for task in 0..4 {
        let store = store.clone();
        tasks.spawn(async move {
            let mut outcomes = Vec::new();
            for _ in 0..10 {
                outcomes.push(fill(&store, &format!("account:{task}"), 3).await);
            }
            outcomes
        });
    }
    let outcomes: Vec<_> = join_all("the writers", TASKS_FINISH, &mut tasks)
        .await
        .into_iter()
        .flatten()
        .collect();
    for outcome in &outcomes {
        let first = outcome.appends[0].events[0].recorded_at;
        assert!(
            outcome.appends[0].events.iter().all(|e| e.recorded_at == first),
            "the events of one commit share one recorded_at: {outcome:?}"
        );
    }
    let events = all_events(&store).await;
    assert_eq!(events.len(), 120);
    for pair in events.windows(2) {
        assert!(
            pair[0].recorded_at() <= pair[1].recorded_at(),
            "recorded_at decreases from position {} ({}) to {} ({})",
            pair[0].position(),
            pair[0].recorded_at(),
            pair[1].position(),
            pair[1].recorded_at()
        );
    }
    let last = events.last().expect("120 events");
    let head = ok(store.head().await, "head");
    assert_eq!(
        head.recorded_at,
        Some(last.recorded_at()),
        "head.recorded_at is the last event's"
    );
}

// ---------------------------------------------------------------------------------------------
// Expected version
// ---------------------------------------------------------------------------------------------

/// `Exact(n)` passes at version n and fails otherwise, naming the aggregate and both versions.
pub async fn expected_version_exact(store: Store) {
    fill(&store, "account:1", 2).await;
    let outcome = ok(
        commit(&store, "account:1", ExpectedVersion::Exact(2), vec![account("A")]).await,
        "Exact(2) at version 2",
    );
    assert_eq!(outcome.appends[0].version, 3);
    for wrong in [0, 2, 4, 99] {
        let before = head(&store).await;
        let err = fails(
            commit(
                &store,
                "account:1",
                ExpectedVersion::Exact(wrong),
                vec![account("A")],
            )
            .await,
            &format!("Exact({wrong}) at version 3"),
        );
        assert_eq!(
            err,
            StoreError::WrongExpectedVersion {
                aggregate_id: "account:1".to_owned(),
                expected_version: ExpectedVersion::Exact(wrong),
                current_version: 3,
            }
        );
        assert_nothing_written(&store, before, &[], "wrong expected version").await;
    }
    let err = fails(
        commit(
            &store,
            "account:new",
            ExpectedVersion::Exact(1),
            vec![account("A")],
        )
        .await,
        "Exact(1) on a new aggregate",
    );
    assert_eq!(
        err,
        StoreError::WrongExpectedVersion {
            aggregate_id: "account:new".to_owned(),
            expected_version: ExpectedVersion::Exact(1),
            current_version: 0,
        }
    );
    assert_aggregate_missing(&store, "account:new", "after a refused Exact(1)").await;
}

/// `Exact(0)` creates a new aggregate and fails on an existing one.
pub async fn expected_version_zero_means_new(store: Store) {
    let outcome = ok(
        commit(
            &store,
            "account:1",
            ExpectedVersion::Exact(0),
            vec![account("A"), account("B")],
        )
        .await,
        "Exact(0) on a new aggregate",
    );
    assert_eq!(outcome.appends[0].version, 2);
    let err = fails(
        commit(&store, "account:1", ExpectedVersion::Exact(0), vec![account("C")]).await,
        "Exact(0) on an existing aggregate",
    );
    assert_eq!(
        err,
        StoreError::WrongExpectedVersion {
            aggregate_id: "account:1".to_owned(),
            expected_version: ExpectedVersion::Exact(0),
            current_version: 2,
        }
    );
    assert_nothing_written(&store, 2, &[], "Exact(0) on an existing aggregate").await;
}

/// `Exists` fails on a new aggregate and passes on an existing one.
pub async fn expected_version_exists(store: Store) {
    let err = fails(
        commit(&store, "account:1", ExpectedVersion::Exists, vec![account("A")]).await,
        "Exists on a new aggregate",
    );
    assert_eq!(
        err,
        StoreError::WrongExpectedVersion {
            aggregate_id: "account:1".to_owned(),
            expected_version: ExpectedVersion::Exists,
            current_version: 0,
        }
    );
    assert_nothing_written(&store, 0, &[], "Exists on a new aggregate").await;
    fill(&store, "account:1", 1).await;
    let outcome = ok(
        commit(&store, "account:1", ExpectedVersion::Exists, vec![account("B")]).await,
        "Exists on an existing aggregate",
    );
    assert_eq!((outcome.appends[0].version, outcome.position), (2, 2));
}

/// `Any` passes on new and existing aggregates.
pub async fn expected_version_any(store: Store) {
    let first = ok(
        commit(&store, "account:1", ExpectedVersion::Any, vec![account("A")]).await,
        "Any on a new aggregate",
    );
    assert_eq!(first.appends[0].version, 1);
    let second = ok(
        commit(
            &store,
            "account:1",
            ExpectedVersion::Any,
            vec![account("B"), account("C")],
        )
        .await,
        "Any on an existing aggregate",
    );
    assert_eq!((second.appends[0].version, second.position), (3, 3));
}

// ---------------------------------------------------------------------------------------------
// Atomicity and aggregate types
// ---------------------------------------------------------------------------------------------

/// A batch whose third event is refused writes none of its events, and burns no position.
pub async fn failed_batch_writes_nothing(store: Store) {
    fill(&store, "account:other", 2).await;
    let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    let events = vec![
        account("A").with_id(ids[0]),
        account("B").with_id(ids[1]),
        event("Order", "C").with_id(ids[2]),
    ];
    let err = fails(
        commit(&store, "account:1", ExpectedVersion::Any, events).await,
        "a batch with a type mismatch on its third event",
    );
    assert!(
        matches!(err, StoreError::AggregateTypeMismatch { .. }),
        "got {err:?}"
    );
    assert_nothing_written(&store, 2, &ids, "a failed batch").await;
    assert_aggregate_missing(&store, "account:1", "after a failed batch").await;
    let next = fill(&store, "account:1", 1).await;
    assert_eq!(next.position, 3, "a failed commit burns no position");
}

/// A multi-aggregate commit whose second append has a wrong expected version writes nothing,
/// and the error names that aggregate.
pub async fn failed_multi_aggregate_commit_writes_nothing(store: Store) {
    fill(&store, "inventory:SKU-1", 3).await;
    let (ids_a, events_a) = with_ids(2);
    let (ids_b, events_b) = with_ids(1);
    let commit_ = Commit {
        appends: vec![
            append("order:1", ExpectedVersion::Exact(0), events_a),
            append("inventory:SKU-1", ExpectedVersion::Exact(7), events_b),
        ],
        condition: None,
    };
    let err = fails(
        store.commit(commit_).await,
        "a commit whose second append is stale",
    );
    assert_eq!(
        err,
        StoreError::WrongExpectedVersion {
            aggregate_id: "inventory:SKU-1".to_owned(),
            expected_version: ExpectedVersion::Exact(7),
            current_version: 3,
        }
    );
    let all_ids: Vec<Uuid> = ids_a.iter().chain(&ids_b).copied().collect();
    assert_nothing_written(&store, 3, &all_ids, "a failed multi-aggregate commit").await;
    assert_aggregate_missing(&store, "order:1", "the first append of a failed commit").await;
    let page = ok(
        store
            .read_aggregate(AggregateQuery::forward("inventory:SKU-1", 10))
            .await,
        "read",
    );
    assert_eq!(page.version, 3);
}

/// An aggregate keeps the type of its first event.
pub async fn aggregate_type_mismatch_against_stored_events(store: Store) {
    fill(&store, "account:1", 2).await;
    for expected in [
        ExpectedVersion::Any,
        ExpectedVersion::Exact(2),
        ExpectedVersion::Exists,
    ] {
        let err = fails(
            commit(&store, "account:1", expected, vec![event("Order", "OrderPlaced")]).await,
            "an Order event on an Account aggregate",
        );
        assert_eq!(
            err,
            StoreError::AggregateTypeMismatch {
                aggregate_id: "account:1".to_owned(),
                existing: "Account".to_owned(),
                given: "Order".to_owned(),
            }
        );
    }
    let err = fails(
        commit(
            &store,
            "account:1",
            ExpectedVersion::Any,
            vec![account("A"), event("Order", "B")],
        )
        .await,
        "a batch whose second event has another type",
    );
    assert!(
        matches!(
            &err,
            StoreError::AggregateTypeMismatch { existing, given, .. }
                if existing == "Account" && given == "Order"
        ),
        "got {err:?}"
    );
    assert_nothing_written(&store, 2, &[], "type mismatches").await;
}

/// A new aggregate takes the type of the first event of its append; the others must match it.
pub async fn aggregate_type_mismatch_inside_new_batch(store: Store) {
    let err = fails(
        commit(
            &store,
            "thing:1",
            ExpectedVersion::Exact(0),
            vec![event("Order", "A"), event("Account", "B")],
        )
        .await,
        "a new aggregate's batch with two types",
    );
    assert_eq!(
        err,
        StoreError::AggregateTypeMismatch {
            aggregate_id: "thing:1".to_owned(),
            existing: "Order".to_owned(),
            given: "Account".to_owned(),
        }
    );
    assert_nothing_written(&store, 0, &[], "a new aggregate's mixed batch").await;
    let outcome = ok(
        commit(
            &store,
            "thing:1",
            ExpectedVersion::Exact(0),
            vec![event("Order", "A"), event("Order", "B")],
        )
        .await,
        "the same aggregate with one type",
    );
    assert_eq!(outcome.appends[0].version, 2);
}

/// Idempotency first, then per append expected version and type, then the condition.
pub async fn errors_follow_the_documented_check_order(store: Store) {
    fill(&store, "account:1", 1).await;
    let always = Condition {
        filter: EventFilter::default(),
        after_position: 0,
    };
    // Wrong version and wrong type: the version is checked first.
    let err = fails(
        commit(
            &store,
            "account:1",
            ExpectedVersion::Exact(5),
            vec![event("Order", "A")],
        )
        .await,
        "wrong version and wrong type",
    );
    assert!(
        matches!(err, StoreError::WrongExpectedVersion { .. }),
        "got {err:?}"
    );
    // Wrong type and a failing condition: the type is checked first.
    let err = fails(
        store
            .commit(Commit {
                appends: vec![append(
                    "account:1",
                    ExpectedVersion::Any,
                    vec![event("Order", "A")],
                )],
                condition: Some(always.clone()),
            })
            .await,
        "wrong type and a failing condition",
    );
    assert!(
        matches!(err, StoreError::AggregateTypeMismatch { .. }),
        "got {err:?}"
    );
    // A type mismatch in the first append comes before a wrong version in the second.
    let err = fails(
        store
            .commit(Commit {
                appends: vec![
                    append("account:1", ExpectedVersion::Any, vec![event("Order", "A")]),
                    append("account:2", ExpectedVersion::Exact(3), vec![account("B")]),
                ],
                condition: Some(always.clone()),
            })
            .await,
        "a mismatch in the first append, a wrong version in the second",
    );
    assert!(
        matches!(&err, StoreError::AggregateTypeMismatch { aggregate_id, .. } if aggregate_id == "account:1"),
        "got {err:?}"
    );
    // A wrong version and a failing condition: the version first.
    let err = fails(
        store
            .commit(Commit {
                appends: vec![append("account:1", ExpectedVersion::Exact(0), vec![account("A")])],
                condition: Some(always.clone()),
            })
            .await,
        "a wrong version and a failing condition",
    );
    assert!(
        matches!(err, StoreError::WrongExpectedVersion { .. }),
        "got {err:?}"
    );
    // A duplicate id comes before everything else.
    let stored = ok(store.get_event(first_id(&store).await).await, "get_event");
    let err = fails(
        store
            .commit(Commit {
                appends: vec![append(
                    "account:9",
                    ExpectedVersion::Exists,
                    vec![event("Order", "A").with_id(stored.event_id())],
                )],
                condition: Some(always),
            })
            .await,
        "a stored id with every other check failing too",
    );
    assert_duplicate(err, stored.event_id(), "check order");
    assert_nothing_written(&store, 1, &[], "check order").await;
}

async fn first_id(store: &Store) -> Uuid {
    all_events(store)
        .await
        .first()
        .map(Event::event_id)
        .expect("the store has an event")
}

// ---------------------------------------------------------------------------------------------
// Idempotency
// ---------------------------------------------------------------------------------------------

/// A full retry succeeds with `created == false` and the original outcome, even after the
/// aggregate moved on (so its expected version no longer holds), and writes nothing.
pub async fn full_retry_returns_original_outcome(store: Store) {
    fill(&store, "account:other", 2).await;
    let (ids, events) = with_ids(3);
    let original_commit = Commit::single("account:1", ExpectedVersion::Exact(0), events);
    let original = ok(store.commit(original_commit.clone()).await, "the original commit");
    assert!(original.created);

    let immediate = ok(store.commit(original_commit.clone()).await, "an immediate retry");
    assert_eq!(
        immediate,
        as_retry(&original),
        "an immediate retry returns the original outcome"
    );

    tokio::time::sleep(CLOCK_STEP).await;
    fill(&store, "account:1", 2).await;
    fill(&store, "account:other", 1).await;
    let head_before = head(&store).await;
    let late = ok(
        store.commit(original_commit).await,
        "a retry after the aggregate moved on",
    );
    assert_eq!(
        late,
        as_retry(&original),
        "a late retry returns the original positions, versions and recorded_at"
    );
    assert_eq!(
        late.appends[0].version, 3,
        "the version of the retried append, not the current one"
    );
    assert_nothing_written(&store, head_before, &[], "a retry").await;
    let page = ok(
        store
            .read_aggregate(AggregateQuery::forward("account:1", 100))
            .await,
        "read",
    );
    assert_eq!(page.version, 5);
    let stored_ids: Vec<Uuid> = page.events.iter().take(3).map(Event::event_id).collect();
    assert_eq!(stored_ids, ids);
}

/// A retry of a multi-aggregate commit returns its original outcome, even when its condition
/// would fail now (idempotency is checked first).
pub async fn retry_of_multi_aggregate_commit_returns_original_outcome(store: Store) {
    fill(&store, "seat:A1", 1).await;
    let (_, order_events) = with_ids(2);
    let (_, seat_events) = with_ids(1);
    let (_, payment_events) = with_ids(1);
    let condition = Condition {
        filter: EventFilter {
            aggregate_id_prefix: Some("seat:".to_owned()),
            ..EventFilter::default()
        },
        after_position: 1,
    };
    let original_commit = Commit {
        appends: vec![
            append("order:1", ExpectedVersion::Exact(0), order_events),
            append("seat:A1", ExpectedVersion::Exact(1), seat_events),
            append("payment:1", ExpectedVersion::Any, payment_events),
        ],
        condition: Some(condition),
    };
    let original = ok(store.commit(original_commit.clone()).await, "the original commit");
    assert_eq!(original.position, 5);
    let retry = ok(store.commit(original_commit.clone()).await, "a retry");
    assert_eq!(retry, as_retry(&original));
    fill(&store, "seat:A1", 1).await;
    fill(&store, "order:1", 1).await;
    let late = ok(
        store.commit(original_commit).await,
        "a retry when the condition and the expected versions fail now",
    );
    assert_eq!(late, as_retry(&original));
    assert_eq!(head(&store).await, 7, "retries write nothing");
}

/// Every id stored in its aggregate at consecutive versions in the order given, with the same
/// content, is a retry: also a run inside a larger stored commit.
pub async fn retry_of_a_stored_run_within_a_commit_succeeds(store: Store) {
    let (ids, events) = with_ids(4);
    let original = ok(
        commit(&store, "account:1", ExpectedVersion::Exact(0), events.clone()).await,
        "the original commit",
    );
    let run = ok(
        commit(
            &store,
            "account:1",
            ExpectedVersion::Exact(0),
            events[1..3].to_vec(),
        )
        .await,
        "a retry of versions 2 and 3 only",
    );
    assert!(!run.created);
    assert_eq!(run.position, original.appends[0].events[2].position);
    assert_eq!(run.appends[0].version, 3);
    assert_eq!(run.appends[0].events, original.appends[0].events[1..3].to_vec());
    assert_eq!(run.appends[0].events[0].event_id, ids[1]);
    assert_eq!(head(&store).await, 4);
}

/// Some ids new, some stored: `DuplicateEventId` naming the first stored one, nothing written.
pub async fn partial_overlap_is_duplicate_event_id(store: Store) {
    let (ids, events) = with_ids(2);
    ok(
        commit(&store, "account:1", ExpectedVersion::Any, events.clone()).await,
        "the original",
    );
    let fresh = Uuid::now_v7();
    let new_event = NewEvent::new("Account", "MoneyDeposited", json!({"amount": 9})).with_id(fresh);

    let err = fails(
        commit(
            &store,
            "account:1",
            ExpectedVersion::Any,
            vec![events[0].clone(), events[1].clone(), new_event.clone()],
        )
        .await,
        "two stored ids and a new one",
    );
    assert_duplicate(err, ids[0], "stored then new");
    let err = fails(
        commit(
            &store,
            "account:1",
            ExpectedVersion::Any,
            vec![new_event.clone(), events[1].clone()],
        )
        .await,
        "a new id then a stored one",
    );
    assert_duplicate(err, ids[1], "new then stored");
    let err = fails(
        commit(
            &store,
            "account:1",
            ExpectedVersion::Any,
            vec![events[0].clone(), account("no id")],
        )
        .await,
        "a stored id and an event without id",
    );
    assert_duplicate(err, ids[0], "stored then without id");
    let err = fails(
        store
            .commit(Commit {
                appends: vec![
                    append("account:2", ExpectedVersion::Any, vec![new_event]),
                    append("account:1", ExpectedVersion::Any, events),
                ],
                condition: None,
            })
            .await,
        "a full retry of one append next to a new append",
    );
    assert_duplicate(err, ids[0], "retry next to new");
    assert_nothing_written(&store, 2, &[fresh], "partial overlaps").await;
}

/// A stored id with any other content is `DuplicateEventId`.
pub async fn same_id_with_different_content_is_duplicate_event_id(store: Store) {
    let id = Uuid::now_v7();
    let original = NewEvent::new("Account", "MoneyDeposited", json!({"amount": 1}))
        .with_id(id)
        .with_created_by("user:1")
        .with_created_at(january(1))
        .with_metadata(json!({"correlation_id": "c-1"}));
    ok(
        commit(&store, "account:1", ExpectedVersion::Any, vec![original.clone()]).await,
        "the original",
    );
    let mut variants: Vec<(&str, NewEvent)> = Vec::new();
    let mut changed = original.clone();
    changed.event_data = RawValue::from_string(r#"{"amount":2}"#.to_owned()).expect("json");
    variants.push(("event_data", changed));
    let mut changed = original.clone();
    changed.event_type = "MoneyWithdrawn".to_owned();
    variants.push(("event_type", changed));
    variants.push(("event_version", original.clone().with_event_version(2)));
    variants.push(("created_by", original.clone().with_created_by("user:2")));
    let mut changed = original.clone();
    changed.created_by = None;
    variants.push(("created_by absent", changed));
    variants.push(("created_at", original.clone().with_created_at(january(2))));
    variants.push((
        "metadata",
        original.clone().with_metadata(json!({"correlation_id": "c-2"})),
    ));
    let mut changed = original.clone();
    changed.metadata = None;
    variants.push(("metadata absent", changed));
    for (what, variant) in variants {
        let err = fails(
            commit(&store, "account:1", ExpectedVersion::Any, vec![variant]).await,
            &format!("a retry with a different {what}"),
        );
        assert_duplicate(err, id, what);
    }
    // Another aggregate type is a different content too; it must not be reported as a
    // type mismatch, since idempotency is checked first.
    let mut changed = original;
    changed.aggregate_type = "Order".to_owned();
    let err = fails(
        commit(&store, "account:1", ExpectedVersion::Any, vec![changed]).await,
        "a retry with a different aggregate_type",
    );
    assert_duplicate(err, id, "aggregate_type");
    assert_nothing_written(&store, 1, &[], "changed retries").await;
}

/// A stored id sent for another aggregate is `DuplicateEventId`.
pub async fn same_id_in_another_aggregate_is_duplicate_event_id(store: Store) {
    let (ids, events) = with_ids(1);
    ok(
        commit(&store, "account:1", ExpectedVersion::Any, events.clone()).await,
        "the original",
    );
    let err = fails(
        commit(&store, "account:2", ExpectedVersion::Any, events.clone()).await,
        "the same event for another aggregate",
    );
    assert_duplicate(err, ids[0], "another aggregate");
    let err = fails(
        store
            .commit(Commit {
                appends: vec![append("account:2", ExpectedVersion::Any, events)],
                condition: None,
            })
            .await,
        "the same event for another aggregate, as a multi-aggregate commit",
    );
    assert_duplicate(err, ids[0], "another aggregate");
    assert_aggregate_missing(&store, "account:2", "after refused duplicates").await;
    assert_nothing_written(&store, 1, &[], "another aggregate").await;
}

/// Stored ids in another order, or at versions that are not consecutive, are not a retry.
pub async fn retry_out_of_order_or_not_consecutive_is_duplicate_event_id(store: Store) {
    let (ids, events) = with_ids(2);
    ok(
        commit(&store, "account:1", ExpectedVersion::Any, events.clone()).await,
        "v1, v2",
    );
    let err = fails(
        commit(
            &store,
            "account:1",
            ExpectedVersion::Any,
            vec![events[1].clone(), events[0].clone()],
        )
        .await,
        "the stored events in reverse order",
    );
    assert_duplicate(err, ids[1], "reverse order");

    fill(&store, "account:1", 1).await;
    let (_, later) = with_ids(1);
    ok(
        commit(&store, "account:1", ExpectedVersion::Any, later.clone()).await,
        "v4",
    );
    let err = fails(
        commit(
            &store,
            "account:1",
            ExpectedVersion::Any,
            vec![events[1].clone(), later[0].clone()],
        )
        .await,
        "stored events at versions 2 and 4",
    );
    assert_duplicate(err, ids[1], "not consecutive");
    assert_nothing_written(&store, 4, &[], "bad retries").await;
}

/// "Same content" compares JSON by value, and only fields the client sent (`created_at`).
pub async fn retry_compares_json_by_value_and_only_sent_fields(store: Store) {
    let id = Uuid::now_v7();
    let raw = |text: &str| RawValue::from_string(text.to_owned()).expect("valid JSON");
    let original = NewEvent {
        event_id: Some(id),
        aggregate_type: "Account".to_owned(),
        event_type: "MoneyDeposited".to_owned(),
        event_version: None,
        event_data: raw(r#"{"amount":500,"currency":"USD","tags":[1,2]}"#),
        created_by: Some("user:1".to_owned()),
        created_at: Some(january(3)),
        metadata: Some(raw(r#"{"correlation_id":"c-1","ip":"10.0.0.7"}"#)),
    };
    let first = ok(
        commit(
            &store,
            "account:1",
            ExpectedVersion::Exact(0),
            vec![original.clone()],
        )
        .await,
        "original",
    );
    let reformatted = NewEvent {
        event_data: raw("{ \"tags\" : [ 1, 2 ],\n  \"currency\": \"USD\", \"amount\" : 500 }"),
        metadata: Some(raw(r#"{"ip": "10.0.0.7", "correlation_id": "c-1"}"#)),
        event_version: Some(1),
        ..original.clone()
    };
    let retry = ok(
        commit(&store, "account:1", ExpectedVersion::Exact(0), vec![reformatted]).await,
        "a retry with equal JSON written differently (and event_version 1 spelt out)",
    );
    assert_eq!(retry, as_retry(&first));
    let without_created_at = NewEvent {
        created_at: None,
        ..original
    };
    let retry = ok(
        commit(
            &store,
            "account:1",
            ExpectedVersion::Exact(0),
            vec![without_created_at],
        )
        .await,
        "a retry that does not send created_at",
    );
    assert_eq!(retry, as_retry(&first));
    assert_eq!(head(&store).await, 1);
}

// ---------------------------------------------------------------------------------------------
// Multi-aggregate commits and conditions
// ---------------------------------------------------------------------------------------------

/// The events of a multi-aggregate commit take consecutive positions in the order given, each
/// append its own versions.
pub async fn multi_aggregate_commit_takes_consecutive_positions_in_order(store: Store) {
    fill(&store, "inventory:SKU-1", 2).await;
    let outcome = ok(
        store
            .commit(Commit {
                appends: vec![
                    append(
                        "order:1",
                        ExpectedVersion::Exact(0),
                        vec![event("Order", "Placed"), event("Order", "Priced")],
                    ),
                    append(
                        "inventory:SKU-1",
                        ExpectedVersion::Exact(2),
                        vec![event("Account", "Reserved")],
                    ),
                    append(
                        "payment:1",
                        ExpectedVersion::Any,
                        vec![event("Payment", "Authorized")],
                    ),
                ],
                condition: None,
            })
            .await,
        "a commit to three aggregates",
    );
    assert!(outcome.created);
    assert_eq!(outcome.position, 6);
    // (aggregate_id, version, [(version, position)]) of each append.
    type Summary = (String, u64, Vec<(u64, u64)>);
    let summary: Vec<Summary> = outcome
        .appends
        .iter()
        .map(|a| {
            (
                a.aggregate_id.clone(),
                a.version,
                a.events.iter().map(|e| (e.version, e.position)).collect(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("order:1".to_owned(), 2, vec![(1, 3), (2, 4)]),
            ("inventory:SKU-1".to_owned(), 3, vec![(3, 5)]),
            ("payment:1".to_owned(), 1, vec![(1, 6)]),
        ]
    );
    let recorded = outcome.appends[0].events[0].recorded_at;
    assert!(
        outcome
            .appends
            .iter()
            .flat_map(|a| &a.events)
            .all(|e| e.recorded_at == recorded),
        "one commit, one recorded_at"
    );
    let events = all_events(&store).await;
    let got: Vec<(u64, &str, u64)> = events
        .iter()
        .map(|e| (e.position(), e.aggregate_id(), e.version()))
        .collect();
    assert_eq!(
        got,
        vec![
            (1, "inventory:SKU-1", 1),
            (2, "inventory:SKU-1", 2),
            (3, "order:1", 1),
            (4, "order:1", 2),
            (5, "inventory:SKU-1", 3),
            (6, "payment:1", 1),
        ]
    );
}

/// Seats reserved at positions 1, 3, 4 (an unrelated event at 2).
async fn seat_history(store: &Store) {
    for (aggregate_id, aggregate_type, event_type) in [
        ("seat:A1", "Seat", "SeatReserved"),
        ("order:1", "Order", "OrderPlaced"),
        ("seat:B2", "Seat", "SeatReserved"),
        ("seat:C3", "Seat", "SeatReserved"),
    ] {
        ok(
            commit(
                store,
                aggregate_id,
                ExpectedVersion::Any,
                vec![event(aggregate_type, event_type)],
            )
            .await,
            "seat history",
        );
    }
}

fn seat_filter() -> EventFilter {
    EventFilter {
        event_types: vec!["SeatReserved".to_owned()],
        aggregate_id_prefix: Some("seat:".to_owned()),
        ..EventFilter::default()
    }
}

/// A condition fails when an event matching its filter lies above `after_position`, naming the
/// first such position, and the commit writes nothing.
pub async fn condition_fails_when_a_matching_event_follows(store: Store) {
    seat_history(&store).await;
    let (ids, events) = with_ids(1);
    for (after_position, conflicting_position) in [(0, 1), (1, 3), (2, 3), (3, 4)] {
        let err = fails(
            store
                .commit(Commit {
                    appends: vec![append("account:1", ExpectedVersion::Any, events.clone())],
                    condition: Some(Condition {
                        filter: seat_filter(),
                        after_position,
                    }),
                })
                .await,
            &format!("a condition after position {after_position}"),
        );
        assert_eq!(
            err,
            StoreError::ConditionFailed {
                after_position,
                conflicting_position
            }
        );
    }
    assert_nothing_written(&store, 4, &ids, "failed conditions").await;
}

/// A condition passes when matching events lie only at or below `after_position`, or when none
/// match at all.
pub async fn condition_passes_when_matches_are_at_or_below_after_position(store: Store) {
    seat_history(&store).await;
    let outcome = ok(
        store
            .commit(Commit {
                appends: vec![append(
                    "seat:D4",
                    ExpectedVersion::Exact(0),
                    vec![event("Seat", "SeatReserved")],
                )],
                condition: Some(Condition {
                    filter: seat_filter(),
                    after_position: 4,
                }),
            })
            .await,
        "a condition whose last match is exactly at after_position",
    );
    assert_eq!(outcome.position, 5);
    let nothing = EventFilter {
        event_types: vec!["SeatReleased".to_owned()],
        ..EventFilter::default()
    };
    let outcome = ok(
        store
            .commit(Commit {
                appends: vec![append(
                    "seat:D4",
                    ExpectedVersion::Any,
                    vec![event("Seat", "SeatReleased")],
                )],
                condition: Some(Condition {
                    filter: nothing,
                    after_position: 0,
                }),
            })
            .await,
        "a condition that matches nothing",
    );
    assert_eq!(outcome.position, 6);
    // The commit's own events are not "stored events" for its condition.
    let outcome = ok(
        store
            .commit(Commit {
                appends: vec![append(
                    "seat:E5",
                    ExpectedVersion::Any,
                    vec![event("Seat", "SeatReserved")],
                )],
                condition: Some(Condition {
                    filter: seat_filter(),
                    after_position: 6,
                }),
            })
            .await,
        "a condition the commit itself would match",
    );
    assert_eq!(outcome.position, 7);
}

/// In a multi-aggregate commit every append's `expected_version` is checked, whichever its
/// place and kind; the error names the first failing aggregate in commit order with its current
/// version, and nothing is written.
pub async fn multi_aggregate_commit_checks_every_expected_version(store: Store) {
    fill(&store, "account:a", 2).await;
    fill(&store, "account:b", 1).await;
    // account:c does not exist. These hold: a at 2, b exists, c new.
    let holding = [
        ExpectedVersion::Exact(2),
        ExpectedVersion::Exists,
        ExpectedVersion::Exact(0),
    ];
    let aggregates = ["account:a", "account:b", "account:c"];
    let current = [2, 1, 0];
    // For each append in turn, expectations that do not hold there.
    let wrong: [&[ExpectedVersion]; 3] = [
        &[
            ExpectedVersion::Exact(0),
            ExpectedVersion::Exact(1),
            ExpectedVersion::Exact(3),
        ],
        &[ExpectedVersion::Exact(0), ExpectedVersion::Exact(2)],
        &[
            ExpectedVersion::Exists,
            ExpectedVersion::Exact(1),
            ExpectedVersion::Exact(5),
        ],
    ];
    let build = |expected: [ExpectedVersion; 3], ids: &mut Vec<Uuid>| Commit {
        appends: aggregates
            .iter()
            .zip(expected)
            .map(|(id, e)| {
                let (new_ids, events) = with_ids(1);
                ids.extend(new_ids);
                append(id, e, events)
            })
            .collect(),
        condition: None,
    };
    for (failing, wrongs) in wrong.iter().enumerate() {
        for &bad in *wrongs {
            let mut expected = holding;
            expected[failing] = bad;
            let mut ids = Vec::new();
            let err = fails(
                store.commit(build(expected, &mut ids)).await,
                &format!("append {failing} expecting {bad}"),
            );
            assert_eq!(
                err,
                StoreError::WrongExpectedVersion {
                    aggregate_id: aggregates[failing].to_owned(),
                    expected_version: bad,
                    current_version: current[failing],
                },
                "append {failing} expecting {bad}: the error names that aggregate"
            );
            assert_nothing_written(&store, 3, &ids, "a commit with one stale append").await;
        }
    }
    // Two stale appends: the first in commit order is named.
    for (first, second) in [(0, 1), (0, 2), (1, 2)] {
        let mut expected = holding;
        expected[first] = wrong[first][0];
        expected[second] = wrong[second][0];
        let mut ids = Vec::new();
        let err = fails(
            store.commit(build(expected, &mut ids)).await,
            &format!("appends {first} and {second} stale"),
        );
        assert!(
            matches!(&err, StoreError::WrongExpectedVersion { aggregate_id, .. } if aggregate_id == aggregates[first]),
            "appends {first} and {second} stale: expected the error to name {}, got {err:?}",
            aggregates[first]
        );
        assert_nothing_written(&store, 3, &ids, "a commit with two stale appends").await;
    }
    assert_aggregate_missing(&store, "account:c", "after refused commits").await;
    let mut ids = Vec::new();
    let outcome = ok(
        store.commit(build(holding, &mut ids)).await,
        "every expectation holds",
    );
    let versions: Vec<u64> = outcome.appends.iter().map(|a| a.version).collect();
    assert_eq!(versions, [3, 2, 1]);
    assert_eq!(outcome.position, 6);
}

/// An aggregate listed twice in one commit is an invalid request, wherever the second entry
/// is and whatever it expects, and nothing is written.
pub async fn an_aggregate_listed_twice_is_invalid(store: Store) {
    fill(&store, "account:1", 1).await;
    let variants = [
        (
            "adjacent, both Any",
            [
                ("account:1", ExpectedVersion::Any),
                ("account:1", ExpectedVersion::Any),
                ("account:2", ExpectedVersion::Any),
            ],
        ),
        (
            "apart, each expecting a version that holds",
            [
                ("account:1", ExpectedVersion::Exact(1)),
                ("account:2", ExpectedVersion::Exact(0)),
                ("account:1", ExpectedVersion::Exact(1)),
            ],
        ),
        (
            "a new aggregate twice",
            [
                ("account:3", ExpectedVersion::Exact(0)),
                ("account:2", ExpectedVersion::Any),
                ("account:3", ExpectedVersion::Exact(0)),
            ],
        ),
    ];
    for (what, appends) in variants {
        let mut ids = Vec::new();
        let appends: Vec<AggregateAppend> = appends
            .iter()
            .map(|(id, expected)| {
                let (new_ids, events) = with_ids(1);
                ids.extend(new_ids);
                append(id, *expected, events)
            })
            .collect();
        for condition in [
            None,
            Some(Condition {
                filter: EventFilter::default(),
                after_position: 1,
            }),
        ] {
            let err = fails(
                store
                    .commit(Commit {
                        appends: Vec::clone(&appends),
                        condition: condition.clone(),
                    })
                    .await,
                what,
            );
            assert!(
                matches!(err, StoreError::InvalidRequest(_)),
                "{what} (condition {condition:?}): expected InvalidRequest, got {err:?}"
            );
            assert_nothing_written(&store, 1, &ids, what).await;
        }
    }
    assert_aggregate_missing(&store, "account:2", "after refused commits").await;
    assert_aggregate_missing(&store, "account:3", "after refused commits").await;
}

/// Every kind of filter in a condition, checked at every `after_position` of a known history:
/// the commit fails exactly when a matching event lies above `after_position`, naming the
/// first one, and otherwise succeeds. The matching positions are written out by hand.
pub async fn condition_filters_of_every_kind(store: Store) {
    /// (aggregate_id, aggregate_type, event_type, created_by, (correlation, causation))
    type Row = (
        &'static str,
        &'static str,
        &'static str,
        Option<&'static str>,
        Option<(&'static str, &'static str)>,
    );
    #[rustfmt::skip]
    let history: [Row; 8] = [
        ("seat:A1",   "Seat",    "SeatReserved", Some("user:1"), Some(("corr-1", "cmd-1"))), // 1
        ("order:1",   "Order",   "OrderPlaced",  Some("user:2"), Some(("corr-1", "cmd-2"))), // 2
        ("seat:A2",   "Seat",    "SeatReserved", Some("user:2"), Some(("corr-2", "cmd-3"))), // 3
        ("seat:A1",   "Seat",    "SeatReleased", Some("user:1"), None),                      // 4
        ("seatmap:1", "SeatMap", "SeatReserved", None,           Some(("corr-2", "cmd-1"))), // 5
        ("order:1",   "Order",   "OrderPaid",    Some("user:1"), Some(("corr-3", "cmd-4"))), // 6
        ("seat:A10",  "Seat",    "SeatReserved", None,           None),                      // 7
        ("order:2",   "Order",   "OrderPlaced",  Some("user:3"), Some(("corr-1", "cmd-5"))), // 8
    ];
    for (aggregate_id, aggregate_type, event_type, created_by, links) in history {
        let mut e = event(aggregate_type, event_type);
        if let Some(by) = created_by {
            e = e.with_created_by(by);
        }
        if let Some((correlation, causation)) = links {
            e = e.with_metadata(json!({"correlation_id": correlation, "causation_id": causation}));
        }
        ok(
            commit(&store, aggregate_id, ExpectedVersion::Any, vec![e]).await,
            "condition history",
        );
    }
    let filter = |f: fn(&mut EventFilter)| {
        let mut filter = EventFilter::default();
        f(&mut filter);
        filter
    };
    let cases: Vec<(&str, EventFilter, &[u64])> = vec![
        ("no filter", EventFilter::default(), &[1, 2, 3, 4, 5, 6, 7, 8]),
        (
            "one event type",
            filter(|f| f.event_types = vec!["SeatReserved".into()]),
            &[1, 3, 5, 7],
        ),
        (
            "two event types",
            filter(|f| f.event_types = vec!["SeatReleased".into(), "OrderPaid".into()]),
            &[4, 6],
        ),
        (
            "an unknown event type",
            filter(|f| f.event_types = vec!["Nope".into()]),
            &[],
        ),
        (
            "aggregate_type",
            filter(|f| f.aggregate_type = Some("Order".into())),
            &[2, 6, 8],
        ),
        (
            "aggregate_id",
            filter(|f| f.aggregate_id = Some("seat:A1".into())),
            &[1, 4],
        ),
        (
            "aggregate_id of another with that prefix",
            filter(|f| f.aggregate_id = Some("seat:A".into())),
            &[],
        ),
        (
            "aggregate_id_prefix",
            filter(|f| f.aggregate_id_prefix = Some("seat:".into())),
            &[1, 3, 4, 7],
        ),
        (
            "a shorter aggregate_id_prefix",
            filter(|f| f.aggregate_id_prefix = Some("seat".into())),
            &[1, 3, 4, 5, 7],
        ),
        (
            "a whole id as prefix",
            filter(|f| f.aggregate_id_prefix = Some("seat:A1".into())),
            &[1, 4, 7],
        ),
        (
            "correlation_id",
            filter(|f| f.correlation_id = Some("corr-1".into())),
            &[1, 2, 8],
        ),
        (
            "causation_id",
            filter(|f| f.causation_id = Some("cmd-1".into())),
            &[1, 5],
        ),
        (
            "created_by",
            filter(|f| f.created_by = Some("user:1".into())),
            &[1, 4, 6],
        ),
        (
            "event type and prefix",
            filter(|f| {
                f.event_types = vec!["SeatReserved".into()];
                f.aggregate_id_prefix = Some("seat:".into());
            }),
            &[1, 3, 7],
        ),
        (
            "prefix, type and created_by",
            filter(|f| {
                f.event_types = vec!["SeatReserved".into(), "SeatReleased".into()];
                f.aggregate_id_prefix = Some("seat:".into());
                f.created_by = Some("user:1".into());
            }),
            &[1, 4],
        ),
        (
            "correlation_id and aggregate_type",
            filter(|f| {
                f.correlation_id = Some("corr-1".into());
                f.aggregate_type = Some("Order".into());
            }),
            &[2, 8],
        ),
    ];
    let history_end = history.len() as u64;
    for (what, filter, matching) in cases {
        for after_position in 0..=history_end + 1 {
            let before = head(&store).await;
            // The probe matches none of the filters above, so passing probes change no answer.
            let (ids, _) = with_ids(1);
            let probe = NewEvent::new("Probe", "Probed", json!({"what": what})).with_id(ids[0]);
            let result = store
                .commit(Commit {
                    appends: vec![append("probe:1", ExpectedVersion::Any, vec![probe])],
                    condition: Some(Condition {
                        filter: filter.clone(),
                        after_position,
                    }),
                })
                .await;
            let step = format!("condition on {what} after position {after_position}");
            match matching.iter().find(|&&p| p > after_position) {
                Some(&conflicting_position) => {
                    let err = fails(result, &step);
                    assert_eq!(
                        err,
                        StoreError::ConditionFailed {
                            after_position,
                            conflicting_position
                        },
                        "{step}"
                    );
                    assert_nothing_written(&store, before, &ids, &step).await;
                }
                None => {
                    let outcome = ok(result, &step);
                    assert_eq!(outcome.position, before + 1, "{step}");
                }
            }
        }
    }
}

/// A retry of a conditional commit replays its outcome even once later events make the
/// condition fail for any new commit (idempotency is checked first); a retry that adds a new
/// event is not a retry and is `DuplicateEventId`, not `ConditionFailed`.
pub async fn retry_of_a_conditional_commit_replays_after_the_condition_fails(store: Store) {
    fill(&store, "account:other", 2).await;
    let claim = |ids: &[Uuid]| Commit {
        appends: vec![
            append(
                "account:1",
                ExpectedVersion::Exact(0),
                vec![account("AccountOpened").with_id(ids[0])],
            ),
            append(
                "username:alice",
                ExpectedVersion::Any,
                vec![event("Username", "UsernameClaimed").with_id(ids[1])],
            ),
        ],
        condition: Some(Condition {
            filter: EventFilter {
                aggregate_id: Some("username:alice".to_owned()),
                event_types: vec!["UsernameClaimed".to_owned()],
                ..EventFilter::default()
            },
            after_position: 2,
        }),
    };
    let ids: Vec<Uuid> = (0..2).map(|_| Uuid::now_v7()).collect();
    let original = ok(store.commit(claim(&ids)).await, "the original claim");
    assert!(original.created);
    assert_eq!(original.position, 4);
    // Another claim of the same name now fails its condition...
    tokio::time::sleep(CLOCK_STEP).await;
    ok(
        commit(
            &store,
            "username:alice",
            ExpectedVersion::Any,
            vec![event("Username", "UsernameClaimed")],
        )
        .await,
        "a later claim without a condition",
    );
    let other_ids: Vec<Uuid> = (0..2).map(|_| Uuid::now_v7()).collect();
    let mut other = claim(&other_ids);
    other.appends[0].aggregate_id = "account:2".to_owned();
    let err = fails(store.commit(other).await, "a new claim after position 2");
    assert_eq!(
        err,
        StoreError::ConditionFailed {
            after_position: 2,
            conflicting_position: 4
        }
    );
    // ...but the original, sent again, is a retry.
    let retry = ok(store.commit(claim(&ids)).await, "a retry of the original claim");
    assert_eq!(
        retry,
        as_retry(&original),
        "the retry returns the original outcome"
    );
    assert_eq!(head(&store).await, 5, "the retry wrote nothing");
    // A retry with one event more is a partial overlap, and that is reported first.
    let mut extended = claim(&ids);
    let extra = Uuid::now_v7();
    extended.appends[1]
        .events
        .push(event("Username", "UsernameClaimed").with_id(extra));
    let err = fails(store.commit(extended).await, "a retry with one new event");
    assert_duplicate(err, ids[0], "a retry with one new event");
    assert_nothing_written(&store, 5, &[extra], "a retry with one new event").await;
}

/// A condition looks at the events stored before the commit, never at the commit's own: the
/// first claim of a name passes a condition that its own events match, the second fails on
/// the first's events, at the position where they were written.
pub async fn condition_ignores_the_commits_own_events(store: Store) {
    fill(&store, "account:other", 1).await;
    let claim = |account_id: &str| Commit {
        appends: vec![
            append(
                account_id,
                ExpectedVersion::Exact(0),
                vec![account("AccountOpened")],
            ),
            append(
                "username:bob",
                ExpectedVersion::Any,
                vec![event("Username", "UsernameClaimed")],
            ),
        ],
        condition: Some(Condition {
            filter: EventFilter {
                aggregate_id: Some("username:bob".to_owned()),
                ..EventFilter::default()
            },
            after_position: 0,
        }),
    };
    let first = ok(
        store.commit(claim("account:1")).await,
        "the first claim, which its own second event matches",
    );
    assert_eq!(first.position, 3);
    let err = fails(store.commit(claim("account:2")).await, "a second claim");
    assert_eq!(
        err,
        StoreError::ConditionFailed {
            after_position: 0,
            conflicting_position: 3
        }
    );
    assert_nothing_written(&store, 3, &[], "a second claim").await;
    assert_aggregate_missing(&store, "account:2", "a second claim").await;
    // A filter that passes every event, after the head: every event of the commit matches it.
    let everything = Condition {
        filter: EventFilter::default(),
        after_position: 3,
    };
    let outcome = ok(
        store
            .commit(Commit {
                appends: vec![
                    append(
                        "account:3",
                        ExpectedVersion::Any,
                        vec![account("A"), account("B")],
                    ),
                    append("account:4", ExpectedVersion::Any, vec![account("C")]),
                ],
                condition: Some(everything.clone()),
            })
            .await,
        "a commit every event of which its condition matches",
    );
    assert_eq!(outcome.position, 6);
    let err = fails(
        store
            .commit(Commit {
                appends: vec![append("account:5", ExpectedVersion::Any, vec![account("A")])],
                condition: Some(everything),
            })
            .await,
        "the same condition once those events are stored",
    );
    assert_eq!(
        err,
        StoreError::ConditionFailed {
            after_position: 3,
            conflicting_position: 4
        }
    );
}

/// Sixteen tasks read the head, then race to reserve one seat under a condition: exactly one
/// wins and the losers write nothing.
pub async fn concurrent_seat_reservations_let_exactly_one_win(store: Store) {
    const TASKS: usize = 16;
    fill(&store, "account:unrelated", 3).await;
    let barrier = Arc::new(Barrier::new(TASKS));
    let mut tasks = JoinSet::new();
    for task in 0..TASKS {
        let store = store.clone();
        let barrier = barrier.clone();
        tasks.spawn(async move {
            let seen = ok(store.head().await, "head").position;
            barrier.wait().await;
            let result = store
                .commit(Commit {
                    appends: vec![
                        append(
                            "seat:A1",
                            ExpectedVersion::Any,
                            vec![NewEvent::new("Seat", "SeatReserved", json!({"by": task}))],
                        ),
                        append(
                            &format!("booking:{task}"),
                            ExpectedVersion::Exact(0),
                            vec![event("Booking", "BookingConfirmed")],
                        ),
                    ],
                    condition: Some(Condition {
                        filter: EventFilter {
                            aggregate_id_prefix: Some("seat:A1".to_owned()),
                            event_types: vec!["SeatReserved".to_owned()],
                            ..EventFilter::default()
                        },
                        after_position: seen,
                    }),
                })
                .await;
            (task, result)
        });
    }
    let mut winners = Vec::new();
    for (task, result) in join_all("the reservations", TASKS_FINISH, &mut tasks).await {
        match result {
            Ok(_) => winners.push(task),
            Err(StoreError::ConditionFailed { .. } | StoreError::WrongExpectedVersion { .. }) => {}
            Err(other) => panic!("task {task}: a lost race must be ConditionFailed, got {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one reservation wins, got {winners:?}");
    let seat = ok(
        store
            .read_aggregate(AggregateQuery::forward("seat:A1", 100))
            .await,
        "read seat",
    );
    assert_eq!(seat.version, 1, "the seat was reserved once");
    for task in 0..TASKS {
        if task != winners[0] {
            assert_aggregate_missing(&store, &format!("booking:{task}"), "a losing task's booking").await;
        }
    }
    assert_eq!(head(&store).await, 5);
}

// ---------------------------------------------------------------------------------------------
// Reading one aggregate
// ---------------------------------------------------------------------------------------------

fn aggregate_query(aggregate_id: &str, direction: Direction, limit: usize) -> AggregateQuery {
    AggregateQuery {
        direction,
        ..AggregateQuery::forward(aggregate_id, limit)
    }
}

/// Forward reads versions 1..current, backward current..1; the page names the aggregate.
pub async fn aggregate_read_forward_and_backward(store: Store) {
    fill(&store, "account:1", 6).await;
    fill(&store, "account:2", 2).await;
    fill(&store, "account:1", 4).await;
    let forward = ok(
        store
            .read_aggregate(aggregate_query("account:1", Direction::Forward, 100))
            .await,
        "forward",
    );
    assert_eq!(forward.aggregate_id, "account:1");
    assert_eq!(forward.aggregate_type, "Account");
    assert_eq!(forward.version, 10);
    assert_eq!(versions(&forward.events), (1..=10).collect::<Vec<_>>());
    assert_eq!(positions(&forward.events), vec![1, 2, 3, 4, 5, 6, 9, 10, 11, 12]);
    assert_eq!(forward.next_from_version, None);
    assert!(forward.events.iter().all(|e| e.aggregate_id() == "account:1"));
    let backward = ok(
        store
            .read_aggregate(aggregate_query("account:1", Direction::Backward, 100))
            .await,
        "backward",
    );
    assert_eq!(backward.version, 10);
    assert_eq!(versions(&backward.events), (1..=10).rev().collect::<Vec<_>>());
    assert_eq!(backward.next_from_version, None);
}

/// `from_version` and `to_version` bound the read, inclusive, in the direction of travel.
pub async fn aggregate_read_version_bounds(store: Store) {
    fill(&store, "account:1", 10).await;
    let read = |direction, from_version, to_version| {
        let store = store.clone();
        async move {
            let query = AggregateQuery {
                from_version,
                to_version,
                ..aggregate_query("account:1", direction, 100)
            };
            let page: AggregatePage = ok(store.read_aggregate(query).await, "bounded read");
            assert_eq!(page.version, 10, "the page's version is the current one");
            assert_eq!(page.next_from_version, None);
            versions(&page.events)
        }
    };
    use Direction::{Backward, Forward};
    assert_eq!(read(Forward, Some(3), Some(6)).await, vec![3, 4, 5, 6]);
    assert_eq!(read(Forward, Some(8), None).await, vec![8, 9, 10]);
    assert_eq!(read(Forward, None, Some(2)).await, vec![1, 2]);
    assert_eq!(read(Forward, Some(8), Some(20)).await, vec![8, 9, 10]);
    assert_eq!(read(Forward, Some(11), None).await, Vec::<u64>::new());
    assert_eq!(read(Forward, Some(6), Some(3)).await, Vec::<u64>::new());
    assert_eq!(read(Backward, Some(6), Some(3)).await, vec![6, 5, 4, 3]);
    assert_eq!(read(Backward, None, Some(8)).await, vec![10, 9, 8]);
    assert_eq!(read(Backward, Some(2), None).await, vec![2, 1]);
    assert_eq!(read(Backward, Some(3), Some(6)).await, Vec::<u64>::new());
    assert_eq!(read(Forward, Some(5), Some(5)).await, vec![5]);
    assert_eq!(read(Backward, Some(5), Some(5)).await, vec![5]);
}

/// `limit` and `next_from_version` walk every event exactly once, in both directions; a full
/// page that ends the range has no next page.
pub async fn aggregate_read_pages_walk_every_event_once(store: Store) {
    fill(&store, "account:1", 25).await;
    let page = |direction, from_version, limit| {
        let store = store.clone();
        async move {
            let query = AggregateQuery {
                from_version,
                ..aggregate_query("account:1", direction, limit)
            };
            let page = ok(store.read_aggregate(query).await, "paged read");
            (versions(&page.events), page.next_from_version)
        }
    };
    use Direction::{Backward, Forward};
    assert_eq!(page(Forward, None, 7).await, ((1..=7).collect(), Some(8)));
    assert_eq!(page(Forward, Some(22), 7).await, ((22..=25).collect(), None));
    assert_eq!(
        page(Forward, Some(21), 5).await,
        ((21..=25).collect(), None),
        "full and at the end"
    );
    assert_eq!(
        page(Backward, None, 7).await,
        ((19..=25).rev().collect(), Some(18))
    );
    assert_eq!(page(Backward, Some(4), 7).await, ((1..=4).rev().collect(), None));
    assert_eq!(
        page(Backward, Some(5), 5).await,
        ((1..=5).rev().collect(), None),
        "full and at the end"
    );

    for limit in [1, 5, 7, 25, 26] {
        let forward = walk_aggregate(&store, aggregate_query("account:1", Forward, limit)).await;
        assert_eq!(
            versions(&forward),
            (1..=25).collect::<Vec<_>>(),
            "forward walk, limit {limit}"
        );
        let backward = walk_aggregate(&store, aggregate_query("account:1", Backward, limit)).await;
        assert_eq!(
            versions(&backward),
            (1..=25).rev().collect::<Vec<_>>(),
            "backward walk, limit {limit}"
        );
    }
    let bounded = AggregateQuery {
        to_version: Some(10),
        ..aggregate_query("account:1", Forward, 5)
    };
    assert_eq!(
        ok(store.read_aggregate(bounded.clone()).await, "bounded page").next_from_version,
        Some(6)
    );
    let walked = walk_aggregate(&store, bounded).await;
    assert_eq!(
        versions(&walked),
        (1..=10).collect::<Vec<_>>(),
        "a walk stops at to_version"
    );
}

/// `from`/`to` pass over events whose `created_at` lies outside; paging goes on past them.
pub async fn aggregate_read_filters_on_created_at(store: Store) {
    // Versions 1..=10 created on these January days: not in version order (a backfill).
    let days = [5, 2, 9, 1, 7, 3, 10, 4, 8, 6];
    let events = days
        .iter()
        .map(|day| account("Imported").with_created_at(january(*day)))
        .collect();
    ok(
        commit(&store, "account:1", ExpectedVersion::Exact(0), events).await,
        "backfill",
    );
    let expected = |lo: u32, hi: u32| -> Vec<u64> {
        (1..=10u64)
            .filter(|v| (lo..=hi).contains(&days[(*v - 1) as usize]))
            .collect()
    };
    let query = |direction, lo: u32, hi: u32, limit| AggregateQuery {
        from: Some(january(lo)),
        to: Some(january(hi)),
        ..aggregate_query("account:1", direction, limit)
    };
    let page = ok(
        store.read_aggregate(query(Direction::Forward, 3, 7, 100)).await,
        "from/to",
    );
    assert_eq!(versions(&page.events), expected(3, 7));
    assert_eq!(page.version, 10, "time bounds do not change the version");
    let backward = ok(
        store.read_aggregate(query(Direction::Backward, 3, 7, 100)).await,
        "from/to backward",
    );
    let mut reversed = expected(3, 7);
    reversed.reverse();
    assert_eq!(versions(&backward.events), reversed);
    let exact = ok(
        store.read_aggregate(query(Direction::Forward, 9, 9, 100)).await,
        "from == to",
    );
    assert_eq!(versions(&exact.events), vec![3], "both bounds are inclusive");
    let only_from = AggregateQuery {
        from: Some(january(8)),
        ..aggregate_query("account:1", Direction::Forward, 100)
    };
    let page = ok(store.read_aggregate(only_from).await, "from only");
    assert_eq!(versions(&page.events), expected(8, 31));
    let only_to = AggregateQuery {
        to: Some(january(2)),
        ..aggregate_query("account:1", Direction::Forward, 100)
    };
    let page = ok(store.read_aggregate(only_to).await, "to only");
    assert_eq!(versions(&page.events), expected(1, 2));

    // Days 3..=7 are at versions 1, 5, 6, 8, 10. Pages of 2 forward: [1, 5] next 6,
    // [6, 8] next 9, [10] end.
    let first = ok(
        store.read_aggregate(query(Direction::Forward, 3, 7, 2)).await,
        "page 1",
    );
    assert_eq!(
        (versions(&first.events), first.next_from_version),
        (vec![1, 5], Some(6))
    );
    let walked = walk_aggregate(&store, query(Direction::Forward, 3, 7, 2)).await;
    assert_eq!(versions(&walked), expected(3, 7));
    let walked = walk_aggregate(&store, query(Direction::Backward, 3, 7, 2)).await;
    assert_eq!(versions(&walked), reversed);
    // A full page whose last match is followed only by filtered-out versions still has a next
    // page: versions remain in the range.
    let days_1_to_2 = ok(
        store.read_aggregate(query(Direction::Forward, 1, 2, 2)).await,
        "full page",
    );
    assert_eq!(
        (versions(&days_1_to_2.events), days_1_to_2.next_from_version),
        (vec![2, 4], Some(5))
    );
    let rest = AggregateQuery {
        from_version: Some(5),
        ..query(Direction::Forward, 1, 2, 2)
    };
    let rest = ok(store.read_aggregate(rest).await, "the next page");
    assert_eq!((versions(&rest.events), rest.next_from_version), (vec![], None));
}

/// `as_of` reads the aggregate as the store knew it at a `recorded_at`; before its first event
/// it does not exist.
pub async fn aggregate_read_as_of_recorded_at(store: Store) {
    let first = fill(&store, "account:1", 2).await;
    tokio::time::sleep(CLOCK_STEP).await;
    fill(&store, "account:2", 1).await;
    tokio::time::sleep(CLOCK_STEP).await;
    let second = fill(&store, "account:1", 2).await;
    tokio::time::sleep(CLOCK_STEP).await;
    let third = fill(&store, "account:1", 1).await;
    let at = |o: &CommitOutcome| o.appends[0].events[0].recorded_at;
    assert!(
        at(&first) < at(&second) && at(&second) < at(&third),
        "commits {CLOCK_STEP:?} apart must have distinct recorded_at: {:?}, {:?}, {:?}",
        at(&first),
        at(&second),
        at(&third)
    );
    let as_of = |direction, t| AggregateQuery {
        as_of: Some(t),
        ..aggregate_query("account:1", direction, 100)
    };
    let cases = [
        (at(&first), 2),
        (micros_before(at(&second)), 2),
        (at(&second), 4),
        (at(&third), 5),
        (Timestamp::MAX, 5),
    ];
    for (t, version) in cases {
        let page = ok(store.read_aggregate(as_of(Direction::Forward, t)).await, "as_of");
        assert_eq!(page.version, version, "the version as of {t}");
        assert_eq!(
            versions(&page.events),
            (1..=version).collect::<Vec<_>>(),
            "forward as of {t}"
        );
        let page = ok(
            store.read_aggregate(as_of(Direction::Backward, t)).await,
            "as_of backward",
        );
        assert_eq!(page.version, version);
        assert_eq!(
            versions(&page.events),
            (1..=version).rev().collect::<Vec<_>>(),
            "backward as of {t} starts at the version as of then"
        );
    }
    let paged = walk_aggregate(
        &store,
        AggregateQuery {
            as_of: Some(at(&second)),
            ..aggregate_query("account:1", Direction::Forward, 3)
        },
    )
    .await;
    assert_eq!(versions(&paged), vec![1, 2, 3, 4]);
    let err = fails(
        store
            .read_aggregate(as_of(Direction::Forward, micros_before(at(&first))))
            .await,
        "as_of before the first event",
    );
    assert_eq!(
        err,
        StoreError::AggregateNotFound {
            aggregate_id: "account:1".to_owned()
        }
    );
}

/// An aggregate without events is `AggregateNotFound`, for any query.
pub async fn aggregate_not_found(store: Store) {
    assert_aggregate_missing(&store, "account:nobody", "an empty store").await;
    fill(&store, "account:1", 1).await;
    assert_aggregate_missing(&store, "account:nobody", "an unknown aggregate").await;
    assert_aggregate_missing(&store, "account:", "a prefix of a stored id").await;
    let backward = fails(
        store
            .read_aggregate(aggregate_query("account:10", Direction::Backward, 10))
            .await,
        "backward read of an unknown aggregate",
    );
    assert!(
        matches!(backward, StoreError::AggregateNotFound { .. }),
        "got {backward:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Reading all events
// ---------------------------------------------------------------------------------------------

/// One row of the data set of the `read_events` cases.
#[derive(Debug, Clone, Copy)]
struct Row {
    aggregate_id: &'static str,
    aggregate_type: &'static str,
    event_type: &'static str,
    correlation_id: Option<&'static str>,
    causation_id: Option<&'static str>,
    created_by: Option<&'static str>,
    /// `created_at`: noon of this day of January 2024 (not in position order).
    day: u32,
}

const fn row(
    aggregate_id: &'static str,
    aggregate_type: &'static str,
    event_type: &'static str,
    correlation_id: Option<&'static str>,
    causation_id: Option<&'static str>,
    created_by: Option<&'static str>,
    day: u32,
) -> Row {
    Row {
        aggregate_id,
        aggregate_type,
        event_type,
        correlation_id,
        causation_id,
        created_by,
        day,
    }
}

/// Row `i` is at position `i + 1`.
const ROWS: [Row; 12] = [
    row(
        "account:1",
        "Account",
        "AccountOpened",
        Some("c1"),
        None,
        Some("alice"),
        5,
    ),
    row(
        "account:1",
        "Account",
        "MoneyDeposited",
        Some("c1"),
        Some("k1"),
        Some("alice"),
        2,
    ),
    row(
        "account:2",
        "Account",
        "AccountOpened",
        Some("c2"),
        None,
        Some("bob"),
        9,
    ),
    row(
        "order:1",
        "Order",
        "OrderPlaced",
        Some("c1"),
        Some("k2"),
        Some("alice"),
        1,
    ),
    row("account:10", "Account", "MoneyWithdrawn", None, None, None, 7),
    row(
        "order:2",
        "Order",
        "OrderPlaced",
        Some("c3"),
        Some("k1"),
        Some("bob"),
        3,
    ),
    // Everything after this row is recorded at least CLOCK_STEP later.
    row(
        "account:2",
        "Account",
        "MoneyDeposited",
        Some("c2"),
        Some("k3"),
        Some("bob"),
        10,
    ),
    row(
        "account:1",
        "Account",
        "MoneyWithdrawn",
        Some("c3"),
        None,
        Some("alice"),
        4,
    ),
    row("order:1", "Order", "OrderShipped", None, Some("k2"), None, 8),
    row(
        "accounting:1",
        "Ledger",
        "AccountOpened",
        Some("c1"),
        None,
        Some("carol"),
        6,
    ),
    row(
        "account:1",
        "Account",
        "MoneyDeposited",
        Some("c4"),
        Some("k1"),
        Some("alice"),
        11,
    ),
    row(
        "account:2",
        "Account",
        "MoneyWithdrawn",
        Some("c2"),
        None,
        Some("bob"),
        12,
    ),
];

/// How many rows are recorded before the pause.
const ROWS_BEFORE_PAUSE: usize = 6;

/// Writes [`ROWS`], one commit each, pausing after the first [`ROWS_BEFORE_PAUSE`]; returns the
/// `recorded_at` of the last row before the pause.
async fn write_rows(store: &Store) -> Timestamp {
    let mut before_pause = None;
    for (i, r) in ROWS.iter().enumerate() {
        let mut metadata = serde_json::Map::new();
        if let Some(c) = r.correlation_id {
            metadata.insert("correlation_id".to_owned(), json!(c));
        }
        if let Some(c) = r.causation_id {
            metadata.insert("causation_id".to_owned(), json!(c));
        }
        let mut e = NewEvent::new(r.aggregate_type, r.event_type, json!({"row": i}))
            .with_created_at(january(r.day))
            .with_metadata(serde_json::Value::Object(metadata));
        e.created_by = r.created_by.map(str::to_owned);
        let outcome = ok(
            commit(store, r.aggregate_id, ExpectedVersion::Any, vec![e]).await,
            "a row",
        );
        assert_eq!(outcome.position, i as u64 + 1, "rows take positions 1, 2, 3, …");
        if i + 1 == ROWS_BEFORE_PAUSE {
            before_pause = Some(outcome.appends[0].events[0].recorded_at);
            tokio::time::sleep(CLOCK_STEP).await;
        }
    }
    before_pause.expect("ROWS is longer than ROWS_BEFORE_PAUSE")
}

fn filtered(filter: EventFilter) -> EventQuery {
    EventQuery {
        filter,
        ..all_query(0, 3)
    }
}

/// Checks that `query` (walked in pages of its limit) returns exactly the rows that `keep`
/// selects, in position order.
async fn expect_rows(store: &Store, what: &str, query: EventQuery, keep: impl Fn(usize, &Row) -> bool) {
    let expected: Vec<u64> = ROWS
        .iter()
        .enumerate()
        .filter(|(i, r)| keep(*i, r))
        .map(|(i, _)| i as u64 + 1)
        .collect();
    let got = walk_events(store, query.clone()).await;
    assert_eq!(
        positions(&got),
        expected,
        "{what}: positions returned for {query:?}"
    );
    let one_page = EventQuery { limit: 1000, ..query };
    let page = ok(store.read_events(one_page).await, what);
    assert_eq!(positions(&page.events), expected, "{what}: in one page");
    assert_eq!(page.head_position, ROWS.len() as u64, "{what}: head_position");
}

/// `event_types` (OR inside), `aggregate_type`, `aggregate_id` and `aggregate_id_prefix`.
pub async fn read_events_filters_by_type_and_aggregate(store: Store) {
    write_rows(&store).await;
    let types = |list: &[&str]| EventFilter {
        event_types: list.iter().map(|t| (*t).to_owned()).collect(),
        ..EventFilter::default()
    };
    expect_rows(
        &store,
        "one event type",
        filtered(types(&["OrderPlaced"])),
        |_, r| r.event_type == "OrderPlaced",
    )
    .await;
    expect_rows(
        &store,
        "event types OR",
        filtered(types(&["AccountOpened", "MoneyWithdrawn"])),
        |_, r| r.event_type == "AccountOpened" || r.event_type == "MoneyWithdrawn",
    )
    .await;
    expect_rows(
        &store,
        "an unknown event type",
        filtered(types(&["Nope"])),
        |_, _| false,
    )
    .await;
    let by = |f: fn(&mut EventFilter)| {
        let mut filter = EventFilter::default();
        f(&mut filter);
        filtered(filter)
    };
    expect_rows(
        &store,
        "aggregate_type",
        by(|f| f.aggregate_type = Some("Order".to_owned())),
        |_, r| r.aggregate_type == "Order",
    )
    .await;
    expect_rows(
        &store,
        "aggregate_id (exact, not a prefix)",
        by(|f| f.aggregate_id = Some("account:1".to_owned())),
        |_, r| r.aggregate_id == "account:1",
    )
    .await;
    expect_rows(
        &store,
        "aggregate_id_prefix",
        by(|f| f.aggregate_id_prefix = Some("account:1".to_owned())),
        |_, r| r.aggregate_id.starts_with("account:1"),
    )
    .await;
    expect_rows(
        &store,
        "aggregate_id_prefix",
        by(|f| f.aggregate_id_prefix = Some("account".to_owned())),
        |_, r| r.aggregate_id.starts_with("account"),
    )
    .await;
    expect_rows(&store, "no filter", filtered(EventFilter::default()), |_, _| true).await;
}

/// `correlation_id`, `causation_id` and `created_by`.
pub async fn read_events_filters_by_links_and_author(store: Store) {
    write_rows(&store).await;
    let by = |f: fn(&mut EventFilter)| {
        let mut filter = EventFilter::default();
        f(&mut filter);
        filtered(filter)
    };
    expect_rows(
        &store,
        "correlation_id",
        by(|f| f.correlation_id = Some("c1".to_owned())),
        |_, r| r.correlation_id == Some("c1"),
    )
    .await;
    expect_rows(
        &store,
        "causation_id",
        by(|f| f.causation_id = Some("k1".to_owned())),
        |_, r| r.causation_id == Some("k1"),
    )
    .await;
    expect_rows(
        &store,
        "created_by",
        by(|f| f.created_by = Some("bob".to_owned())),
        |_, r| r.created_by == Some("bob"),
    )
    .await;
    expect_rows(
        &store,
        "a correlation_id no event has",
        by(|f| f.correlation_id = Some("c".to_owned())),
        |_, _| false,
    )
    .await;
}

/// `from`/`to` on `created_at`, `as_of` on `recorded_at`, `after_position` and `to_position`.
pub async fn read_events_filters_by_time_and_position(store: Store) {
    let before_pause = write_rows(&store).await;
    let query = |f: &dyn Fn(&mut EventQuery)| {
        let mut query = filtered(EventFilter::default());
        f(&mut query);
        query
    };
    expect_rows(
        &store,
        "from/to",
        query(&|q| {
            q.from = Some(january(3));
            q.to = Some(january(8));
        }),
        |_, r| (3..=8).contains(&r.day),
    )
    .await;
    expect_rows(&store, "from", query(&|q| q.from = Some(january(10))), |_, r| {
        r.day >= 10
    })
    .await;
    expect_rows(&store, "to", query(&|q| q.to = Some(january(2))), |_, r| {
        r.day <= 2
    })
    .await;
    expect_rows(
        &store,
        "as_of",
        query(&|q| q.as_of = Some(before_pause)),
        |i, _| i < ROWS_BEFORE_PAUSE,
    )
    .await;
    expect_rows(
        &store,
        "to_position",
        query(&|q| q.to_position = Some(5)),
        |i, _| i < 5,
    )
    .await;
    expect_rows(
        &store,
        "after_position and to_position",
        query(&|q| {
            q.after_position = 3;
            q.to_position = Some(9);
        }),
        |i, _| (3..9).contains(&i),
    )
    .await;
    expect_rows(
        &store,
        "to_position beyond the head",
        query(&|q| q.to_position = Some(1000)),
        |_, _| true,
    )
    .await;
    expect_rows(
        &store,
        "after the head",
        query(&|q| q.after_position = 50),
        |_, _| false,
    )
    .await;
}

/// Every filter ANDs with the others.
pub async fn read_events_filters_and_together(store: Store) {
    let before_pause = write_rows(&store).await;
    let query = EventQuery {
        filter: EventFilter {
            event_types: vec!["AccountOpened".to_owned(), "MoneyDeposited".to_owned()],
            aggregate_type: Some("Account".to_owned()),
            ..EventFilter::default()
        },
        ..all_query(0, 2)
    };
    expect_rows(&store, "types and aggregate_type", query.clone(), |_, r| {
        (r.event_type == "AccountOpened" || r.event_type == "MoneyDeposited") && r.aggregate_type == "Account"
    })
    .await;
    let narrower = EventQuery {
        filter: EventFilter {
            aggregate_id_prefix: Some("account:".to_owned()),
            created_by: Some("alice".to_owned()),
            causation_id: Some("k1".to_owned()),
            ..query.filter.clone()
        },
        ..query.clone()
    };
    expect_rows(&store, "five filters", narrower, |_, r| {
        (r.event_type == "AccountOpened" || r.event_type == "MoneyDeposited")
            && r.aggregate_type == "Account"
            && r.aggregate_id.starts_with("account:")
            && r.created_by == Some("alice")
            && r.causation_id == Some("k1")
    })
    .await;
    let timed = EventQuery {
        filter: EventFilter {
            correlation_id: Some("c2".to_owned()),
            aggregate_id: Some("account:2".to_owned()),
            ..EventFilter::default()
        },
        from: Some(january(9)),
        as_of: Some(before_pause),
        ..all_query(0, 1)
    };
    expect_rows(&store, "links, time and as_of", timed, |i, r| {
        r.correlation_id == Some("c2") && r.aggregate_id == "account:2" && r.day >= 9 && i < ROWS_BEFORE_PAUSE
    })
    .await;
    let contradictory = EventQuery {
        filter: EventFilter {
            aggregate_type: Some("Order".to_owned()),
            aggregate_id: Some("account:1".to_owned()),
            ..EventFilter::default()
        },
        ..all_query(0, 5)
    };
    expect_rows(
        &store,
        "filters no event passes together",
        contradictory,
        |_, _| false,
    )
    .await;
}

/// Paging with `next_after_position` walks every event exactly once, whatever the limit.
pub async fn read_events_pages_walk_everything_once(store: Store) {
    for i in 0..37 {
        let aggregate_id = format!("account:{}", i % 5);
        let event_type = if i % 3 == 0 { "Tick" } else { "Tock" };
        ok(
            commit(
                &store,
                &aggregate_id,
                ExpectedVersion::Any,
                vec![account(event_type)],
            )
            .await,
            "filling",
        );
    }
    for limit in [1, 4, 5, 36, 37, 38, 1000] {
        let events = walk_events(&store, all_query(0, limit)).await;
        assert_eq!(
            positions(&events),
            (1..=37).collect::<Vec<_>>(),
            "a walk with limit {limit}"
        );
        let ticks = walk_events(
            &store,
            EventQuery {
                filter: EventFilter {
                    event_types: vec!["Tick".to_owned()],
                    ..EventFilter::default()
                },
                ..all_query(0, limit)
            },
        )
        .await;
        assert_eq!(
            positions(&ticks),
            (0..37)
                .filter(|i| i % 3 == 0)
                .map(|i| i + 1)
                .collect::<Vec<u64>>(),
            "a filtered walk with limit {limit}"
        );
    }
    let page = ok(store.read_events(all_query(10, 5)).await, "a middle page");
    assert_eq!(positions(&page.events), vec![11, 12, 13, 14, 15]);
    assert_eq!((page.next_after_position, page.head_position), (15, 37));
    let last = ok(store.read_events(all_query(35, 5)).await, "the last page");
    assert_eq!(positions(&last.events), vec![36, 37]);
    assert_eq!(last.next_after_position, 37);
}

/// `next_after_position` moves past events the filter passes over, up to the end of the range.
pub async fn read_events_next_after_position_moves_past_filtered_events(store: Store) {
    write_rows(&store).await;
    let nothing = EventQuery {
        filter: EventFilter {
            event_types: vec!["Nope".to_owned()],
            ..EventFilter::default()
        },
        ..all_query(0, 5)
    };
    let page = ok(
        store.read_events(nothing.clone()).await,
        "a filter matching nothing",
    );
    assert!(page.events.is_empty());
    assert_eq!((page.next_after_position, page.head_position), (12, 12));
    let bounded = EventQuery {
        to_position: Some(7),
        ..nothing.clone()
    };
    let page = ok(
        store.read_events(bounded).await,
        "a filter matching nothing up to 7",
    );
    assert_eq!(
        page.next_after_position, 7,
        "the end of the range is min(head, to_position)"
    );
    let past = EventQuery {
        after_position: 40,
        ..nothing
    };
    let page = ok(store.read_events(past).await, "after the head");
    assert_eq!(page.next_after_position, 40, "never below after_position");
    // Orders are at 4, 6 and 9: a page of 2 ends at 6; the next one, not full, at the head.
    let orders = EventQuery {
        filter: EventFilter {
            aggregate_type: Some("Order".to_owned()),
            ..EventFilter::default()
        },
        ..all_query(0, 2)
    };
    let first = ok(store.read_events(orders.clone()).await, "orders, page 1");
    assert_eq!(
        (positions(&first.events), first.next_after_position),
        (vec![4, 6], 6)
    );
    let second = ok(
        store
            .read_events(EventQuery {
                after_position: 6,
                ..orders.clone()
            })
            .await,
        "orders, page 2",
    );
    assert_eq!(
        (positions(&second.events), second.next_after_position),
        (vec![9], 12)
    );
    let as_of_early = EventQuery {
        as_of: Some(Timestamp::from_micros(0)),
        ..orders
    };
    let page = ok(store.read_events(as_of_early).await, "as_of before everything");
    assert!(page.events.is_empty());
    assert_eq!(
        (page.next_after_position, page.head_position),
        (12, 12),
        "as_of limits events, not the range or head_position"
    );
}

// ---------------------------------------------------------------------------------------------
// get_event, head, watch_head
// ---------------------------------------------------------------------------------------------

/// `get_event` finds an event by id with all its fields; an unknown id is `EventNotFound`.
pub async fn get_event_found_and_not_found(store: Store) {
    let unknown = Uuid::now_v7();
    let err = fails(store.get_event(unknown).await, "get_event on an empty store");
    assert_eq!(err, StoreError::EventNotFound { event_id: unknown });
    fill(&store, "account:1", 3).await;
    let outcome = fill(&store, "account:2", 2).await;
    let wanted = &outcome.appends[0].events[1];
    let found = ok(store.get_event(wanted.event_id).await, "get_event");
    let listed = all_events(&store).await;
    let same = listed
        .iter()
        .find(|e| e.position() == wanted.position)
        .expect("listed");
    assert_eq!(
        found.to_json(),
        same.to_json(),
        "get_event returns the event read_events lists"
    );
    assert_eq!(
        (
            found.event_id(),
            found.position(),
            found.version(),
            found.aggregate_id()
        ),
        (wanted.event_id, 5, 2, "account:2")
    );
    let err = fails(store.get_event(unknown).await, "get_event of an unknown id");
    assert_eq!(err, StoreError::EventNotFound { event_id: unknown });
}

/// The head of an empty store is 0 with no `recorded_at`; then the last position and its time.
pub async fn head_of_empty_and_filled_store(store: Store) {
    let empty = ok(store.head().await, "head of an empty store");
    assert_eq!((empty.position, empty.recorded_at), (0, None));
    let page = ok(
        store.read_events(all_query(0, 10)).await,
        "read_events on an empty store",
    );
    assert!(page.events.is_empty());
    assert_eq!((page.next_after_position, page.head_position), (0, 0));
    assert_eq!(*store.watch_head().borrow(), 0);
    fill(&store, "account:1", 2).await;
    let outcome = fill(&store, "account:2", 3).await;
    let filled = ok(store.head().await, "head");
    assert_eq!(filled.position, 5);
    assert_eq!(filled.recorded_at, Some(outcome.appends[0].events[0].recorded_at));
    assert_eq!(
        *store.watch_head().borrow(),
        5,
        "watch_head holds the head once a commit returned"
    );
}

/// A `watch_head` receiver sees the head move after each commit.
pub async fn watch_head_sees_commits(store: Store) {
    let mut watch = store.watch_head();
    assert_eq!(*watch.borrow_and_update(), 0);
    for round in 1..=3u64 {
        let outcome = fill(&store, "account:1", 2).await;
        assert_eq!(outcome.position, round * 2);
        let seen = tokio::time::timeout(Duration::from_secs(5), watch.wait_for(|p| *p >= outcome.position))
            .await
            .unwrap_or_else(|_| panic!("watch_head did not reach {} within 5 s", outcome.position))
            .map(|p| *p);
        assert_eq!(
            seen.ok(),
            Some(outcome.position),
            "the watched head is the committed position"
        );
    }
    // A receiver taken before a commit made by another task is woken by it.
    let mut late = store.watch_head();
    late.mark_unchanged();
    let writer = {
        let store = store.clone();
        tokio::spawn(async move { fill(&store, "account:2", 1).await })
    };
    tokio::time::timeout(Duration::from_secs(5), late.changed())
        .await
        .expect("watch_head woke the receiver within 5 s")
        .expect("the store keeps the sender alive");
    writer.await.expect("writer task");
    assert_eq!(*late.borrow(), 7);
}

// ---------------------------------------------------------------------------------------------
// Concurrency and limits
// ---------------------------------------------------------------------------------------------

/// 16 tasks append 50 events each to 8 aggregates: positions 1..=800 each once, versions dense
/// per aggregate in position order, each commit's events consecutive.
pub async fn concurrent_appends_are_dense_and_atomic(store: Store) {
    const TASKS: usize = 16;
    const EVENTS_PER_TASK: usize = 50;
    const AGGREGATES: usize = 8;
    let mut tasks = JoinSet::new();
    for task in 0..TASKS {
        let store = store.clone();
        tasks.spawn(async move {
            let mut outcomes = Vec::new();
            let mut written = 0;
            let mut k = 0;
            while written < EVENTS_PER_TASK {
                let size = (2 + k % 2).min(EVENTS_PER_TASK - written);
                let aggregate_id = format!("counter:{}", (task + k) % AGGREGATES);
                let events = (0..size)
                    .map(|i| {
                        NewEvent::new(
                            "Counter",
                            "Incremented",
                            json!({"task": task, "commit": k, "i": i}),
                        )
                    })
                    .collect();
                let outcome = ok(
                    commit(&store, &aggregate_id, ExpectedVersion::Any, events).await,
                    "a concurrent append",
                );
                outcomes.push(outcome);
                written += size;
                k += 1;
            }
            outcomes
        });
    }
    let outcomes: Vec<_> = join_all("the writers", TASKS_FINISH, &mut tasks)
        .await
        .into_iter()
        .flatten()
        .collect();
    let total = (TASKS * EVENTS_PER_TASK) as u64;
    let events = all_events(&store).await;
    assert_eq!(
        positions(&events),
        (1..=total).collect::<Vec<_>>(),
        "positions 1..={total}, each once"
    );
    assert_eq!(head(&store).await, total);
    let mut next_version: HashMap<&str, u64> = HashMap::new();
    for e in &events {
        let expected = next_version.entry(e.aggregate_id()).or_insert(1);
        assert_eq!(
            e.version(),
            *expected,
            "{} at position {}: versions are dense in position order",
            e.aggregate_id(),
            e.position()
        );
        *expected += 1;
    }
    assert_eq!(next_version.len(), AGGREGATES);
    let mut claimed = BTreeSet::new();
    for outcome in &outcomes {
        let appended = &outcome.appends[0];
        for (i, a) in appended.events.iter().enumerate() {
            let first = &appended.events[0];
            assert_eq!(
                a.position,
                first.position + i as u64,
                "a commit's positions are consecutive"
            );
            assert_eq!(
                a.version,
                first.version + i as u64,
                "a commit's versions are consecutive"
            );
            let stored = &events[usize::try_from(a.position - 1).expect("small")];
            assert_eq!(
                stored.event_id(),
                a.event_id,
                "the outcome names the stored event"
            );
            assert_eq!(stored.aggregate_id(), appended.aggregate_id);
            assert!(
                claimed.insert(a.position),
                "position {} given to two events",
                a.position
            );
        }
        assert_eq!(
            outcome.position,
            appended.events[appended.events.len() - 1].position
        );
    }
    assert_eq!(claimed.len() as u64, total);
}

/// While commits of two events land, every read sees positions 1..=n with no gap, n even, and
/// equal to the head the read reports.
pub async fn readers_never_see_gaps_during_commits(store: Store) {
    let mut writers = Vec::new();
    for task in 0..4 {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            for _ in 0..30 {
                fill(&store, &format!("account:{task}"), 2).await;
            }
        }));
    }
    let mut reads = 0;
    loop {
        let done = writers.iter().all(|w| w.is_finished());
        let page = ok(store.read_events(all_query(0, 1000)).await, "a concurrent read");
        let n = page.events.len() as u64;
        assert_eq!(
            positions(&page.events),
            (1..=n).collect::<Vec<_>>(),
            "a read saw a gap"
        );
        assert_eq!(n % 2, 0, "a read saw half a commit");
        assert_eq!(
            n, page.head_position,
            "a read returned fewer events than its head"
        );
        let mut per_aggregate: BTreeMap<&str, u64> = BTreeMap::new();
        for e in &page.events {
            let v = per_aggregate.entry(e.aggregate_id()).or_insert(0);
            *v += 1;
            assert_eq!(
                e.version(),
                *v,
                "a read saw a version gap in {}",
                e.aggregate_id()
            );
        }
        reads += 1;
        if done {
            break;
        }
        tokio::task::yield_now().await;
    }
    for writer in writers {
        writer.await.expect("a writer task panicked");
    }
    assert_eq!(head(&store).await, 240);
    assert!(reads > 0);
}

/// Requests that `Commit::prepare` refuses are refused by the store, before anything is written.
pub async fn requests_refused_by_validation(store: Store) {
    let limits = store.limits().clone();
    let too_many = (0..=limits.events_per_request_max)
        .map(|_| account("A"))
        .collect();
    let err = fails(
        commit(&store, "account:1", ExpectedVersion::Any, too_many).await,
        "one event more than events_per_request_max",
    );
    assert!(matches!(err, StoreError::PayloadTooLarge(_)), "got {err:?}");
    let err = fails(
        commit(&store, "account:1", ExpectedVersion::Any, vec![]).await,
        "no events",
    );
    assert!(matches!(err, StoreError::InvalidRequest(_)), "got {err:?}");
    let err = fails(
        store
            .commit(Commit {
                appends: vec![],
                condition: None,
            })
            .await,
        "no appends",
    );
    assert!(matches!(err, StoreError::InvalidRequest(_)), "got {err:?}");
    let id = Uuid::now_v7();
    let err = fails(
        commit(
            &store,
            "account:1",
            ExpectedVersion::Any,
            vec![account("A").with_id(id), account("B").with_id(id)],
        )
        .await,
        "one id twice in a request",
    );
    assert!(matches!(err, StoreError::InvalidRequest(_)), "got {err:?}");
    let err = fails(
        store
            .commit(Commit {
                appends: vec![
                    append("account:1", ExpectedVersion::Any, vec![account("A")]),
                    append("account:1", ExpectedVersion::Any, vec![account("B")]),
                ],
                condition: None,
            })
            .await,
        "one aggregate twice in appends",
    );
    assert!(matches!(err, StoreError::InvalidRequest(_)), "got {err:?}");
    let err = fails(
        commit(&store, "", ExpectedVersion::Any, vec![account("A")]).await,
        "an empty aggregate_id",
    );
    assert!(matches!(err, StoreError::InvalidRequest(_)), "got {err:?}");
    let long_type = "T".repeat(limits.aggregate_type_bytes_max + 1);
    let err = fails(
        commit(
            &store,
            "account:1",
            ExpectedVersion::Any,
            vec![event(&long_type, "A")],
        )
        .await,
        "an aggregate_type over the limit",
    );
    assert!(matches!(err, StoreError::InvalidRequest(_)), "got {err:?}");
    let big = "x".repeat(limits.event_payload_bytes_max);
    let err = fails(
        commit(
            &store,
            "account:1",
            ExpectedVersion::Any,
            vec![NewEvent::new("Account", "Big", json!({ "blob": big }))],
        )
        .await,
        "an event over the payload limit",
    );
    assert!(matches!(err, StoreError::PayloadTooLarge(_)), "got {err:?}");
    let mut not_object = account("A");
    not_object.event_data = RawValue::from_string("[1,2]".to_owned()).expect("json");
    let err = fails(
        commit(&store, "account:1", ExpectedVersion::Any, vec![not_object]).await,
        "event_data that is not an object",
    );
    assert!(matches!(err, StoreError::InvalidRequest(_)), "got {err:?}");
    assert_nothing_written(&store, 0, &[id], "refused requests").await;
    let at_limit = (0..limits.events_per_request_max.min(1000))
        .map(|_| account("A"))
        .collect();
    let outcome = ok(
        commit(&store, "account:1", ExpectedVersion::Any, at_limit).await,
        "a request of events_per_request_max events (or 1000)",
    );
    assert_eq!(outcome.position, limits.events_per_request_max.min(1000) as u64);
}

// ---------------------------------------------------------------------------------------------
// Snapshots
// ---------------------------------------------------------------------------------------------

fn snapshot_of(aggregate_id: &str, version: u64, state: serde_json::Value) -> PutSnapshot {
    PutSnapshot::new(aggregate_id, version, "Account", state)
}

fn snapshot_versions(list: &[SnapshotInfo]) -> Vec<u64> {
    list.iter().map(|s| s.version).collect()
}

/// A put names a version from 1 to the aggregate's current version; any other is
/// `InvalidSnapshot` with the current version (0 for an aggregate with no events), and stores
/// nothing.
pub async fn snapshot_needs_a_version_the_aggregate_has(store: Store) {
    let err = fails(
        store
            .put_snapshot(snapshot_of("account:none", 1, json!({})))
            .await,
        "a snapshot of an aggregate without events",
    );
    assert_eq!(
        err,
        StoreError::InvalidSnapshot {
            aggregate_id: "account:none".into(),
            version: 1,
            current_version: 0
        }
    );
    fill(&store, "account:1", 3).await;
    let err = fails(
        store.put_snapshot(snapshot_of("account:1", 4, json!({}))).await,
        "a snapshot past the current version",
    );
    assert_eq!(
        err,
        StoreError::InvalidSnapshot {
            aggregate_id: "account:1".into(),
            version: 4,
            current_version: 3
        }
    );
    let listed = ok(store.list_snapshots("account:1").await, "list");
    assert!(listed.is_empty(), "a refused put stored a snapshot: {listed:?}");
    for version in [1, 3] {
        let stored = ok(
            store
                .put_snapshot(snapshot_of("account:1", version, json!({"v": version})))
                .await,
            &format!("a snapshot at version {version} of 3"),
        );
        assert_eq!(stored.info.version, version);
        assert!(
            !stored.replaced,
            "the first snapshot at a version replaces nothing"
        );
    }
}

/// The state comes back as the same JSON value (compacted), with the type, the schema
/// version (1 by default) and a `created_at` taken at the put.
pub async fn snapshot_state_and_fields_read_back_exactly(store: Store) {
    fill(&store, "account:1", 2).await;
    let state =
        json!({"balance": 1250, "owner": "Zoë ✓", "nested": {"list": [1, 2.5, null, true], "q": "\"\\"}});
    let before = Timestamp::now();
    let stored = ok(
        store
            .put_snapshot(
                PutSnapshot::new("account:1", 2, "AccountState", state.clone()).with_snapshot_version(7),
            )
            .await,
        "put",
    );
    let after = Timestamp::now();
    let snapshot = ok(store.latest_snapshot("account:1", None).await, "latest");
    assert_eq!(snapshot.aggregate_id, "account:1");
    assert_eq!(snapshot.version, 2);
    assert_eq!(snapshot.snapshot_type, "AccountState");
    assert_eq!(snapshot.snapshot_version, 7);
    assert_eq!(
        json_value(&snapshot.state),
        state,
        "the state reads back as the same value"
    );
    assert!(
        !snapshot.state.contains(": "),
        "the state is stored compact: {}",
        snapshot.state
    );
    assert!(
        before <= snapshot.created_at && snapshot.created_at <= after,
        "created_at is the time of the put"
    );
    assert_eq!(stored.info, snapshot.info(), "the put answers what is stored");
    let default = ok(
        store.put_snapshot(snapshot_of("account:1", 1, json!({}))).await,
        "put without a schema version",
    );
    assert_eq!(default.info.snapshot_version, 1, "snapshot_version defaults to 1");
}

/// A put at a version that has a snapshot replaces it: one snapshot per version, the newest.
pub async fn snapshot_put_at_the_same_version_replaces_it(store: Store) {
    fill(&store, "account:1", 5).await;
    ok(
        store
            .put_snapshot(snapshot_of("account:1", 5, json!({"balance": 1})))
            .await,
        "first put",
    );
    let second = ok(
        store
            .put_snapshot(
                PutSnapshot::new("account:1", 5, "AccountV2", json!({"balance": 2})).with_snapshot_version(2),
            )
            .await,
        "second put at the same version",
    );
    assert!(second.replaced, "a put at a version with a snapshot replaces it");
    let latest = ok(store.latest_snapshot("account:1", None).await, "latest");
    assert_eq!(json_value(&latest.state), json!({"balance": 2}));
    assert_eq!(
        (latest.snapshot_type.as_str(), latest.snapshot_version),
        ("AccountV2", 2)
    );
    let listed = ok(store.list_snapshots("account:1").await, "list");
    assert_eq!(listed, vec![latest.info()], "one snapshot per version");
}

/// `latest_snapshot` picks the highest version at or below `max_version`; none is
/// `SnapshotNotFound` naming the aggregate and the bound.
pub async fn latest_snapshot_is_the_highest_at_or_below_max_version(store: Store) {
    fill(&store, "account:1", 10).await;
    fill(&store, "account:2", 10).await;
    for version in [5, 2, 9] {
        ok(
            store
                .put_snapshot(snapshot_of("account:1", version, json!({"at": version})))
                .await,
            "put",
        );
    }
    ok(
        store
            .put_snapshot(snapshot_of("account:2", 10, json!({"at": 10})))
            .await,
        "put",
    );
    for (max, expected) in [
        (None, 9),
        (Some(10), 9),
        (Some(9), 9),
        (Some(8), 5),
        (Some(5), 5),
        (Some(4), 2),
        (Some(2), 2),
    ] {
        let snapshot = ok(
            store.latest_snapshot("account:1", max).await,
            &format!("latest at or below {max:?}"),
        );
        assert_eq!(snapshot.version, expected, "latest at or below {max:?}");
        assert_eq!(json_value(&snapshot.state), json!({"at": expected}));
    }
    let err = fails(
        store.latest_snapshot("account:1", Some(1)).await,
        "below every snapshot",
    );
    assert_eq!(
        err,
        StoreError::SnapshotNotFound {
            aggregate_id: "account:1".into(),
            max_version: Some(1)
        }
    );
    for aggregate_id in ["account:3", "account:"] {
        let err = fails(store.latest_snapshot(aggregate_id, None).await, "no snapshot");
        assert_eq!(
            err,
            StoreError::SnapshotNotFound {
                aggregate_id: aggregate_id.into(),
                max_version: None
            }
        );
    }
    let err = fails(store.latest_snapshot("account:1", Some(0)).await, "max_version 0");
    assert!(
        matches!(err, StoreError::InvalidRequest(_)),
        "max_version 0: {err:?}"
    );
}

/// `list_snapshots` gives every snapshot of one aggregate by increasing version, and an empty
/// list for an aggregate without any.
pub async fn list_snapshots_is_in_version_order_without_states(store: Store) {
    fill(&store, "account:1", 9).await;
    fill(&store, "account:10", 9).await;
    for version in [7, 1, 4, 9] {
        ok(
            store
                .put_snapshot(
                    PutSnapshot::new("account:1", version, &format!("T{version}"), json!({}))
                        .with_snapshot_version(version as i64),
                )
                .await,
            "put",
        );
    }
    ok(
        store.put_snapshot(snapshot_of("account:10", 3, json!({}))).await,
        "put",
    );
    let listed = ok(store.list_snapshots("account:1").await, "list");
    assert_eq!(snapshot_versions(&listed), vec![1, 4, 7, 9]);
    for info in &listed {
        assert_eq!(info.snapshot_type, format!("T{}", info.version));
        assert_eq!(u64::from(info.snapshot_version), info.version);
    }
    assert_eq!(
        snapshot_versions(&ok(store.list_snapshots("account:10").await, "list")),
        vec![3],
        "an aggregate whose id extends another's has its own snapshots"
    );
    assert!(ok(store.list_snapshots("account:nobody").await, "list").is_empty());
    assert!(matches!(
        store.list_snapshots("").await,
        Err(StoreError::InvalidRequest(_))
    ));
}

/// Snapshots take no position, never show in event reads and leave versions alone.
pub async fn snapshots_are_not_events(store: Store) {
    fill(&store, "account:1", 3).await;
    let events_before = all_events(&store).await;
    let head_before = ok(store.head().await, "head");
    let mut watch = store.watch_head();
    watch.borrow_and_update();
    for version in 1..=3 {
        ok(
            store
                .put_snapshot(snapshot_of("account:1", version, json!({"v": version})))
                .await,
            "put",
        );
    }
    assert_eq!(
        ok(store.head().await, "head"),
        head_before,
        "a snapshot moved the head"
    );
    assert!(
        !watch.has_changed().unwrap_or(true),
        "a snapshot was published as a head"
    );
    assert_eq!(
        all_events(&store).await,
        events_before,
        "a snapshot showed in the event reads"
    );
    let page = ok(
        store
            .read_aggregate(AggregateQuery::forward("account:1", 100))
            .await,
        "read",
    );
    assert_eq!(page.version, 3);
    assert_eq!(versions(&page.events), vec![1, 2, 3]);
    // The next event still takes the next version and position.
    let outcome = fill(&store, "account:1", 1).await;
    assert_eq!(outcome.position, head_before.position + 1);
    assert_eq!(outcome.appends[0].version, 4);
}

/// Every bad request is refused before anything is looked up, and stores nothing.
pub async fn snapshot_requests_refused_by_validation(store: Store) {
    fill(&store, "account:1", 2).await;
    let limits = store.limits().clone();
    let mut cases: Vec<(PutSnapshot, &str)> = vec![
        (
            snapshot_of("account:1", 1, json!([1, 2])),
            "a state that is not an object",
        ),
        (snapshot_of("account:1", 1, json!(null)), "a null state"),
        (snapshot_of("account:1", 0, json!({})), "version 0"),
        (
            snapshot_of("account:1", 1, json!({})).with_snapshot_version(0),
            "snapshot_version 0",
        ),
        (
            snapshot_of("account:1", 1, json!({})).with_snapshot_version(i64::from(i32::MAX) + 1),
            "snapshot_version 2^31",
        ),
        (
            PutSnapshot::new(
                "account:1",
                1,
                &"T".repeat(limits.aggregate_type_bytes_max + 1),
                json!({}),
            ),
            "a long snapshot_type",
        ),
        (
            PutSnapshot::new("account:1", 1, "", json!({})),
            "an empty snapshot_type",
        ),
        (snapshot_of("", 1, json!({})), "an empty aggregate id"),
        (
            snapshot_of("a\nb", 1, json!({})),
            "a control character in the aggregate id",
        ),
    ];
    // A bad request is 400 even for an aggregate that does not exist.
    cases.push((
        snapshot_of("account:none", 1, json!([])),
        "a bad state for a missing aggregate",
    ));
    for (put, what) in cases {
        let err = fails(store.put_snapshot(put).await, what);
        assert!(matches!(err, StoreError::InvalidRequest(_)), "{what}: {err:?}");
    }
    let big = json!({"s": "x".repeat(limits.event_payload_bytes_max)});
    let err = fails(
        store.put_snapshot(snapshot_of("account:1", 1, big)).await,
        "an oversized state",
    );
    assert!(matches!(err, StoreError::PayloadTooLarge(_)), "{err:?}");
    assert!(ok(store.list_snapshots("account:1").await, "list").is_empty());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_are_unique_and_named() {
        let unique: BTreeSet<&str> = CASES.iter().copied().collect();
        assert_eq!(unique.len(), CASES.len(), "a case is listed twice");
        assert!(CASES.len() >= 40);
    }
}
