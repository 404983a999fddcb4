//! Positions on PostgreSQL under the races that break naive designs: a slow transaction that
//! takes a position and commits after a fast one, a transaction that rolls back, two servers
//! (two stores) committing into one schema at once. Every subscriber must receive every event,
//! once, in position order, with no gap.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use common::{TestSchema, backend_pid, blocked_by};
use factstore_core::{Commit, Event, EventQuery, EventStore, ExpectedVersion, NewEvent, StoreError};
use factstore_postgres::PgStore;
use factstore_testkit::wait::{join_all, until_ok, within};
use serde_json::json;
use tokio::task::JoinSet;

/// How long a commit that waited on a lock may take once the lock is released.
const LOCK_RELEASED: Duration = Duration::from_secs(10);

/// A subscriber as the server's are: wait for the head to move, read pages after the last
/// position seen. Returns once it holds `n` events, and fails on a gap or a repeat.
async fn subscribe(store: PgStore, n: usize) -> Vec<Event> {
    let mut head = store.watch_head();
    let mut seen: Vec<Event> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        loop {
            let after = seen.last().map_or(0, Event::position);
            let page = store
                .read_events(EventQuery::all(after, 100))
                .await
                .expect("read events");
            if page.events.is_empty() {
                break;
            }
            for event in page.events {
                let expected = seen.last().map_or(0, Event::position) + 1;
                assert_eq!(
                    event.position(),
                    expected,
                    "a subscriber skipped or repeated a position"
                );
                seen.push(event);
            }
        }
        if seen.len() >= n {
            return seen;
        }
        tokio::time::timeout_at(deadline, head.changed())
            .await
            .unwrap_or_else(|_| panic!("a subscriber stalled at {} of {n} events", seen.len()))
            .expect("the head channel stays open");
    }
}

fn one(aggregate: &str, event_type: &str) -> Commit {
    Commit::single(
        aggregate,
        ExpectedVersion::Any,
        vec![NewEvent::new("Thing", event_type, json!({"at": aggregate}))],
    )
}

/// What a writer does, by hand, in a transaction left open: lock the head, insert the event at
/// the next position, move the head.
async fn take_next_position(client: &tokio_postgres::Client, aggregate: &str) -> i64 {
    client.batch_execute("BEGIN").await.expect("begin");
    let row = client
        .query_one("SELECT position FROM factstore_head WHERE id = 1 FOR UPDATE", &[])
        .await
        .expect("lock the head");
    let position: i64 = row.get::<_, i64>(0) + 1;
    client
        .execute(
            "INSERT INTO events (position, event_id, aggregate_id, aggregate_version, aggregate_type, \
             event_type, event_version, event_data, created_at, recorded_at) \
             VALUES ($1, gen_random_uuid(), $2, 1, 'Thing', 'Slow', 1, '{}', now(), now())",
            &[&position, &aggregate],
        )
        .await
        .expect("insert the slow event");
    client
        .execute(
            "UPDATE factstore_head SET position = $1, recorded_at = now() WHERE id = 1",
            &[&position],
        )
        .await
        .expect("move the head");
    position
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_transaction_and_a_fast_one_reach_every_subscriber_in_position_order() {
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let server_a = schema.open().await;
    let server_b = schema.open().await;
    let on_a = tokio::spawn(subscribe(server_a.clone(), 2));
    let on_b = tokio::spawn(subscribe(server_b.clone(), 2));

    let slow = schema.connect().await;
    let observer = schema.connect().await;
    let slow_pid = backend_pid(&slow).await;
    let slow_position = take_next_position(&slow, "slow:1").await;
    assert_eq!(slow_position, 1);
    // The fast commit arrives while the slow transaction holds position 1.
    let fast = tokio::spawn({
        let store = server_b.clone();
        async move { store.commit(one("fast:1", "Fast")).await }
    });
    // PostgreSQL shows the fast commit waiting on a lock the slow transaction holds (its row
    // at position 1, or the head): the two met, and the order below is the lock's doing.
    let blocked = blocked_by(
        &observer,
        slow_pid,
        "the fast commit to wait on the slow transaction's lock",
    )
    .await;
    assert!(
        !fast.is_finished(),
        "the fast commit must wait for the slow one's position to commit (it waits in {blocked:?})"
    );
    slow.batch_execute("COMMIT").await.expect("commit the slow one");
    let fast = within(
        "the fast commit, once the slow one committed",
        LOCK_RELEASED,
        fast,
    )
    .await
    .expect("join")
    .expect("the fast commit succeeds");
    assert_eq!(
        fast.position, 2,
        "the fast commit takes the position after the slow one"
    );

    for subscriber in [on_a, on_b] {
        let events = subscriber.await.expect("the subscriber finishes");
        let types: Vec<&str> = events.iter().map(Event::event_type).collect();
        assert_eq!(types, ["Slow", "Fast"]);
        assert!(events[0].recorded_at() <= events[1].recorded_at());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_append_leaves_no_gap_and_stalls_no_subscriber() {
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let store = schema.open().await;
    let subscriber = tokio::spawn(subscribe(store.clone(), 2));

    let doomed = schema.connect().await;
    let observer = schema.connect().await;
    let doomed_pid = backend_pid(&doomed).await;
    assert_eq!(take_next_position(&doomed, "doomed:1").await, 1);
    let waiting = tokio::spawn({
        let store = store.clone();
        async move { store.commit(one("kept:1", "Kept")).await }
    });
    // The commit must be waiting on a lock the doomed transaction holds (its row at position
    // 1, or the head) when it rolls back: otherwise the position it takes says nothing about a
    // rollback under it.
    let blocked = blocked_by(
        &observer,
        doomed_pid,
        "the commit to wait on the doomed transaction's lock",
    )
    .await;
    assert!(
        !waiting.is_finished(),
        "the commit waits while the doomed transaction holds position 1 (it waits in {blocked:?})"
    );
    doomed.batch_execute("ROLLBACK").await.expect("roll back");
    let kept = within(
        "the waiting commit, once the doomed one rolled back",
        LOCK_RELEASED,
        waiting,
    )
    .await
    .expect("join")
    .expect("the waiting commit succeeds");
    assert_eq!(
        kept.position, 1,
        "the rolled-back position is taken again, leaving no gap"
    );
    let next = store.commit(one("kept:2", "Kept")).await.expect("commit");
    assert_eq!(next.position, 2);

    let events = subscriber.await.expect("the subscriber finishes");
    assert_eq!(events.len(), 2);
    assert!(events.iter().all(|e| e.event_type() == "Kept"));
    assert_eq!(store.head().await.expect("head").position, 2);
    let gone = store
        .read_aggregate(factstore_core::AggregateQuery::forward("doomed:1", 10))
        .await;
    assert!(matches!(gone, Err(StoreError::AggregateNotFound { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_schema_commit_dense_positions_seen_by_both() {
    const TASKS: usize = 8;
    const COMMITS: usize = 40;
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let a = schema.open().await;
    // B hears of A's commits only by NOTIFY: its poll is too slow to matter here.
    let mut options = schema.options();
    options.head_poll = Duration::from_secs(3600);
    let b = PgStore::open(options).await.expect("open b");

    let mut tasks = JoinSet::new();
    for task in 0..TASKS {
        let on_a = task % 2 == 0;
        let store = if on_a { a.clone() } else { b.clone() };
        tasks.spawn(async move {
            let mut outcomes = Vec::new();
            for i in 0..COMMITS {
                let aggregate = format!("agg:{}", (task * 7 + i) % 5);
                let events = (0..1 + i % 3)
                    .map(|k| NewEvent::new("Thing", "Happened", json!({"task": task, "i": i, "k": k})))
                    .collect();
                let commit = Commit::single(&aggregate, ExpectedVersion::Any, events);
                outcomes.push(store.commit(commit).await.expect("commit"));
            }
            (on_a, outcomes)
        });
    }
    let total: usize = (0..COMMITS).map(|i| 1 + i % 3).sum::<usize>() * TASKS;
    let on_a = tokio::spawn(subscribe(a.clone(), total));
    let on_b = tokio::spawn(subscribe(b.clone(), total));
    let mut by_position: HashMap<u64, uuid::Uuid> = HashMap::new();
    let mut server_of: BTreeMap<u64, bool> = BTreeMap::new();
    for (committed_on_a, outcomes) in join_all("the writers", Duration::from_secs(60), &mut tasks).await {
        for outcome in outcomes {
            for event in outcome.appends.iter().flat_map(|a| &a.events) {
                assert!(
                    by_position.insert(event.position, event.event_id).is_none(),
                    "position {} given twice",
                    event.position
                );
                server_of.insert(event.position, committed_on_a);
            }
        }
    }
    assert_eq!(by_position.len(), total);
    // The servers committed at the same time, not one after the other: in position order, A's
    // events and B's alternate (A, B, A at the least).
    let turns = server_of
        .values()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] != w[1])
        .count();
    assert!(
        turns >= 2,
        "the two servers' commits did not interleave ({turns} turns)"
    );
    for subscriber in [on_a, on_b] {
        let events = subscriber.await.expect("subscriber");
        assert_eq!(events.len(), total);
        let mut versions: BTreeMap<String, u64> = BTreeMap::new();
        for event in &events {
            assert_eq!(by_position.get(&event.position()), Some(&event.event_id()));
            let version = versions.entry(event.aggregate_id().to_owned()).or_default();
            *version += 1;
            assert_eq!(event.version(), *version, "versions are dense in position order");
        }
    }
    // B heard the last of A's commits by NOTIFY.
    let last = a.commit(one("agg:last", "Last")).await.expect("commit").position;
    let mut head_b = b.watch_head();
    tokio::time::timeout(Duration::from_secs(5), head_b.wait_for(|h| *h >= last))
        .await
        .expect("B hears of A's commit within seconds")
        .expect("open channel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_commit_of_a_group_is_decided_on_its_own() {
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let store: Arc<dyn EventStore> = Arc::new(schema.open().await);
    let mut tasks = JoinSet::new();
    for i in 0..32 {
        let store = store.clone();
        tasks.spawn(async move {
            let (aggregate, expected) = if i % 2 == 0 {
                ("contested".to_owned(), ExpectedVersion::Exact(0))
            } else {
                (format!("free:{i}"), ExpectedVersion::Any)
            };
            let events = vec![NewEvent::new("Thing", "Claimed", json!({"i": i}))];
            store.commit(Commit::single(&aggregate, expected, events)).await
        });
    }
    let (mut won, mut lost) = (0, 0);
    for result in join_all("the claims", Duration::from_secs(60), &mut tasks).await {
        match result {
            Ok(_) => won += 1,
            Err(StoreError::WrongExpectedVersion {
                current_version: 1, ..
            }) => lost += 1,
            Err(other) => panic!("unexpected error {other}"),
        }
    }
    assert_eq!(
        (won, lost),
        (17, 15),
        "one contested claim and every free one win"
    );
    let page = store.read_events(EventQuery::all(0, 100)).await.expect("read");
    let positions: Vec<u64> = page.events.iter().map(Event::position).collect();
    assert_eq!(positions, (1..=17).collect::<Vec<u64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_read_through_a_server_that_heard_nothing_carry_the_head_of_now() {
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let a = schema.open().await;
    // B's head hears of nothing: only a read of PostgreSQL shows it A's commits.
    let mut options = schema.options();
    options.head_poll = Duration::from_secs(3600);
    let b = PgStore::open(options).await.expect("open b");
    let events = |n: usize| {
        (0..n)
            .map(|k| NewEvent::new("Thing", "Happened", json!({"k": k})))
            .collect::<Vec<_>>()
    };
    for i in 0..3 {
        let commit = Commit::single(&format!("agg:{i}"), ExpectedVersion::Any, events(1000));
        a.commit(commit).await.expect("commit");
    }
    let first = b.read_events(EventQuery::all(0, 1000)).await.expect("read");
    assert_eq!(first.events.len(), 1000);
    assert_eq!(first.head_position, 3000);
    // A commits after B's first page; B's next page must show the head with it.
    let last = a
        .commit(one("agg:later", "Later"))
        .await
        .expect("commit")
        .position;
    let second = b
        .read_events(EventQuery::all(first.next_after_position, 1000))
        .await
        .expect("read");
    let fresh = a
        .read_events(EventQuery::all(first.next_after_position, 1000))
        .await
        .expect("read");
    assert_eq!(
        second, fresh,
        "a page read through B is the page a read through A returns"
    );
    assert_eq!(second.head_position, last);
    assert_eq!(second.events.first().map(Event::position), Some(1001));
    // Reading on after a page that was not full finds what came since.
    let third = b
        .read_events(EventQuery::all(second.next_after_position, 1000))
        .await
        .expect("read");
    assert_eq!(third.events.len(), 1000);
    let newest = b
        .commit(one("agg:later", "Later"))
        .await
        .expect("commit")
        .position;
    let fourth = b
        .read_events(EventQuery::all(third.next_after_position, 1000))
        .await
        .expect("read");
    let positions: Vec<u64> = fourth.events.iter().map(Event::position).collect();
    assert_eq!(positions, vec![last, newest]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_that_outgrows_its_statistics_is_analyzed_and_its_time_indexes_summarized() {
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let store = schema.open().await;
    let events = |n: usize| {
        (0..n)
            .map(|k| NewEvent::new("Thing", "Happened", json!({"k": k, "pad": "x".repeat(400)})))
            .collect::<Vec<_>>()
    };
    for i in 0..12 {
        let commit = Commit::single(&format!("agg:{i}"), ExpectedVersion::Any, events(1000));
        store.commit(commit).await.expect("commit");
    }
    let db = schema.connect().await;
    until_ok(
        "autovacuum to analyze the table",
        Duration::from_secs(30),
        || async {
            let planned: f32 = db
                .query_one(
                    "SELECT reltuples FROM pg_class WHERE oid = 'events'::regclass",
                    &[],
                )
                .await
                .expect("reltuples")
                .get(0);
            if planned >= 10_000.0 {
                Ok(())
            } else {
                Err(format!(
                    "12,000 events, and the planner thinks there are {planned}"
                ))
            }
        },
    )
    .await;

    // Reads by time use the BRIN indexes only where their ranges are summarized: a window of
    // the first commit must read a few ranges, not every block of the table.
    db.batch_execute("SET enable_seqscan = off; SET enable_indexscan = off")
        .await
        .expect("force the bitmap scan");
    let first: Vec<factstore_core::Timestamp> = store
        .read_events(EventQuery::all(0, 1))
        .await
        .expect("read")
        .events
        .iter()
        .map(|e| e.created_at())
        .collect();
    let at = first[0].to_string();
    let blocks: i64 = db
        .query_one(
            "SELECT relpages::bigint FROM pg_class WHERE oid = 'events'::regclass",
            &[],
        )
        .await
        .expect("relpages")
        .get(0);
    assert!(
        blocks > 4 * 128,
        "the table spans several BRIN ranges ({blocks} blocks)"
    );
    until_ok(
        "autovacuum to summarize the time indexes",
        Duration::from_secs(30),
        || async {
            let messages = db
                .simple_query(&format!(
                    "EXPLAIN (ANALYZE, FORMAT JSON) SELECT position FROM events \
                     WHERE created_at >= '{at}' AND created_at <= '{at}'"
                ))
                .await
                .expect("explain");
            let plan = messages
                .iter()
                .find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
                    _ => None,
                })
                .expect("a plan");
            let lossy: i64 = serde_json::from_str::<serde_json::Value>(&plan).expect("json")[0]["Plan"]
                ["Lossy Heap Blocks"]
                .as_i64()
                .expect("a bitmap heap scan");
            if lossy <= 2 * 128 {
                Ok(())
            } else {
                Err(format!("a window of one commit reads {lossy} of {blocks} blocks"))
            }
        },
    )
    .await;
}

/// Groups are inserted while the group before them is still inserting, planned on what it will
/// have written. When that group fails in PostgreSQL (here a trigger refuses one event type),
/// every group planned behind it must be planned again: acknowledged commits are all stored,
/// refused ones are not, and positions and versions stay dense.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_planned_behind_a_group_that_fails_are_planned_again_without_a_gap() {
    const TASKS: usize = 6;
    const COMMITS: usize = 60;
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let store = schema.open().await;
    schema
        .connect()
        .await
        .batch_execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$; \
             CREATE TRIGGER refuse BEFORE INSERT ON events FOR EACH ROW \
             WHEN (NEW.event_type = 'Refused') EXECUTE FUNCTION refuse();",
        )
        .await
        .expect("create the trigger");

    let mut tasks = JoinSet::new();
    for task in 0..TASKS {
        let store = store.clone();
        tasks.spawn(async move {
            let mut acknowledged = Vec::new();
            let mut refused = 0;
            for i in 0..COMMITS {
                let aggregate = format!("agg:{}", (task + i) % 4);
                let event_type = if task == 0 && i % 6 == 5 {
                    "Refused"
                } else {
                    "Happened"
                };
                let events = (0..1 + (i % 4) * 50)
                    .map(|k| NewEvent::new("Thing", event_type, json!({"task": task, "i": i, "k": k})))
                    .collect();
                match store
                    .commit(Commit::single(&aggregate, ExpectedVersion::Any, events))
                    .await
                {
                    Ok(outcome) => acknowledged.extend(
                        outcome
                            .appends
                            .into_iter()
                            .flat_map(|a| a.events)
                            .map(|e| (e.position, e.event_id)),
                    ),
                    Err(StoreError::Unavailable(reason)) => {
                        assert!(reason.contains("refused by the test"), "{reason}");
                        refused += 1;
                    }
                    Err(other) => panic!("unexpected refusal: {other}"),
                }
            }
            (acknowledged, refused)
        });
    }
    let mut acknowledged: HashMap<u64, uuid::Uuid> = HashMap::new();
    let mut refused = 0;
    for (events, failed) in join_all("the writers", Duration::from_secs(120), &mut tasks).await {
        refused += failed;
        for (position, id) in events {
            assert!(
                acknowledged.insert(position, id).is_none(),
                "position {position} given twice"
            );
        }
    }
    assert!(refused >= COMMITS / 6, "every refused commit failed ({refused})");

    let stored = subscribe(store.clone(), acknowledged.len()).await;
    assert_eq!(
        stored.len(),
        acknowledged.len(),
        "only acknowledged events are stored"
    );
    let mut versions: BTreeMap<String, u64> = BTreeMap::new();
    for event in &stored {
        assert_eq!(acknowledged.get(&event.position()), Some(&event.event_id()));
        assert_ne!(event.event_type(), "Refused");
        let version = versions.entry(event.aggregate_id().to_owned()).or_default();
        *version += 1;
        assert_eq!(event.version(), *version, "versions are dense in position order");
    }
    let head = store.head().await.expect("head").position;
    assert_eq!(
        head,
        stored.len() as u64,
        "no position was taken by a refused group"
    );
}
