//! Archiving on PostgreSQL: archived events read exactly as before through every read path,
//! writes that depend on them (idempotent replays, expected versions, conditions) still see
//! them, and a failure at any step before the commit leaves every event hot and readable.

mod common;

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use bytes::Bytes;
use common::TestSchema;
use factstore_core::{
    AggregateQuery, Commit, CommitOutcome, Condition, Direction, Event, EventFilter, EventQuery, EventStore,
    ExpectedVersion, NewEvent, StoreError, Timestamp,
};
use factstore_engine::archive::{ColdStore, ObjectColdStore};
use factstore_postgres::PgStore;
use factstore_postgres::archive::ArchiveOptions;
use factstore_testkit::wait::join_all;
use parking_lot::Mutex;
use serde_json::json;
use uuid::Uuid;

const AGGREGATES: [&str; 4] = ["acct-1", "acct-2", "order-1", "order-2"];

/// Where a [`Flaky`] store fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fail {
    Never,
    Put,
    /// The object reads back with other bytes than were put.
    ReadBack,
}

/// A `file://` cold store that fails at a chosen step.
#[derive(Debug)]
struct Flaky {
    inner: ObjectColdStore,
    fail: Mutex<Fail>,
}

impl ColdStore for Flaky {
    fn put(&self, key: &str, bytes: Bytes) -> io::Result<()> {
        if *self.fail.lock() == Fail::Put {
            return Err(io::Error::other("injected: the put fails"));
        }
        self.inner.put(key, bytes)
    }

    fn get(&self, key: &str) -> io::Result<Bytes> {
        let bytes = self.inner.get(key)?;
        if *self.fail.lock() == Fail::ReadBack {
            let mut changed = bytes.to_vec();
            if let Some(last) = changed.last_mut() {
                *last ^= 0x55;
            }
            return Ok(Bytes::from(changed));
        }
        Ok(bytes)
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

fn cold_at(dir: &Path) -> ObjectColdStore {
    ObjectColdStore::from_url(&format!("file://{}", dir.display())).expect("cold store")
}

async fn open_with(schema: &TestSchema, cold: Option<Arc<dyn ColdStore>>) -> Result<PgStore, String> {
    let mut options = schema.options();
    options.archive = ArchiveOptions {
        cold,
        chunk_events_max: 7,
        ..ArchiveOptions::default()
    };
    PgStore::open(options).await.map_err(|e| e.to_string())
}

/// Events across four aggregates with varied payloads and metadata: `n` commits of one to
/// three events, every event with a client id.
async fn append(store: &PgStore, round: usize, n: usize) -> Vec<(Commit, CommitOutcome)> {
    let mut commits = Vec::new();
    for i in 0..n {
        let aggregate = AGGREGATES[i % AGGREGATES.len()];
        let aggregate_type = if aggregate.starts_with("acct") {
            "Account"
        } else {
            "Order"
        };
        let events = (0..=(i % 3))
            .map(|j| {
                let event_type = ["Opened", "Deposited", "Withdrawn"][(i + j) % 3];
                let mut event = NewEvent::new(
                    aggregate_type,
                    event_type,
                    json!({"round": round, "i": i, "j": j, "text": "é ✓ \"quoted\"".repeat(i % 5)}),
                )
                .with_id(Uuid::new_v4());
                if (i + j) % 2 == 0 {
                    event = event
                        .with_metadata(json!({"correlation_id": format!("corr-{round}-{}", i % 3), "n": i}));
                }
                if i % 4 == 1 {
                    event = event.with_created_by("alice");
                }
                event
            })
            .collect();
        let commit = Commit::single(aggregate, ExpectedVersion::Any, events);
        let outcome = store.commit(commit.clone()).await.expect("commit");
        commits.push((commit, outcome));
    }
    commits
}

/// Every read path, with answers that do not depend on the time of the read.
async fn reads(store: &PgStore, split: Timestamp) -> Vec<Vec<Event>> {
    let mut out = Vec::new();
    let all = store
        .read_events(EventQuery::all(0, 10_000))
        .await
        .expect("read all");
    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let page = store
            .read_events(EventQuery::all(after, 5))
            .await
            .expect("read a page");
        if page.events.is_empty() {
            break;
        }
        after = page.next_after_position;
        paged.extend(page.events);
    }
    assert_eq!(paged, all.events, "pages add up to the whole");
    out.push(all.events.clone());
    let filters = [
        EventFilter {
            event_types: vec!["Withdrawn".into()],
            ..EventFilter::default()
        },
        EventFilter {
            aggregate_type: Some("Order".into()),
            ..EventFilter::default()
        },
        EventFilter {
            correlation_id: Some("corr-0-1".into()),
            ..EventFilter::default()
        },
        EventFilter {
            created_by: Some("alice".into()),
            ..EventFilter::default()
        },
        EventFilter {
            aggregate_id_prefix: Some("acct".into()),
            ..EventFilter::default()
        },
    ];
    for filter in filters {
        let mut query = EventQuery::all(0, 10_000);
        query.filter = filter;
        out.push(store.read_events(query).await.expect("filtered read").events);
    }
    for (from, to) in [(None, Some(split)), (Some(split), None)] {
        let mut query = EventQuery::all(0, 10_000);
        query.from = from;
        query.to = to;
        out.push(store.read_events(query).await.expect("read by time").events);
    }
    for aggregate in AGGREGATES {
        out.push(
            store
                .read_aggregate(AggregateQuery::forward(aggregate, 10_000))
                .await
                .expect("forward")
                .events,
        );
        let mut backward = AggregateQuery::forward(aggregate, 3);
        backward.direction = Direction::Backward;
        out.push(store.read_aggregate(backward).await.expect("backward").events);
    }
    let mut by_id = Vec::new();
    for event in &all.events {
        by_id.push(store.get_event(event.event_id()).await.expect("event by id"));
    }
    out.push(by_id);
    out
}

async fn archived_rows(schema: &TestSchema) -> (i64, i64) {
    let client = schema.connect().await;
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM events WHERE archived_chunk IS NOT NULL), \
             (SELECT count(*) FROM factstore_archive_chunks)",
            &[],
        )
        .await
        .expect("count");
    (row.get(0), row.get(1))
}

/// A cold store in a temporary folder, and a store on `schema` archiving to it.
async fn on_cold_folder(schema: &TestSchema) -> (tempfile::TempDir, Arc<dyn ColdStore>, PgStore) {
    let cold_dir = tempfile::tempdir().expect("tempdir");
    let cold: Arc<dyn ColdStore> = Arc::new(cold_at(cold_dir.path()));
    let store = open_with(schema, Some(cold.clone())).await.expect("open");
    (cold_dir, cold, store)
}

/// Appends events, then more after a split time; returns the split and the early commits.
async fn two_rounds(store: &PgStore) -> (Timestamp, Vec<(Commit, CommitOutcome)>) {
    let early = append(store, 0, 30).await;
    // Time passes on purpose: the split lies strictly between the two rounds' times.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let split = Timestamp::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    append(store, 1, 10).await;
    (split, early)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archived_events_read_and_count_as_before() {
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let (_cold_dir, cold, store) = on_cold_folder(&schema).await;
    let (split, early) = two_rounds(&store).await;
    let before = reads(&store, split).await;
    let early_events = store
        .read_events(EventQuery::all(0, 10_000))
        .await
        .expect("read")
        .events
        .into_iter()
        .filter(|e| e.recorded_at() < split)
        .count();
    let stats_before = store.storage().await.expect("storage");
    assert_eq!(stats_before.archived_events, 0);
    assert_eq!(stats_before.cold_bytes, 0);
    assert!(stats_before.hot_bytes > 0);

    let outcome = store.archive(split).await.expect("archive");
    assert_eq!(outcome.archived_events, early_events as u64);
    assert!(outcome.archived_bytes > 0);
    let (rows, chunks) = archived_rows(&schema).await;
    assert_eq!(rows, early_events as i64);
    assert_eq!(
        chunks,
        (early_events as u64).div_ceil(7) as i64,
        "chunks of at most 7 events"
    );
    let stats = store.storage().await.expect("storage");
    assert_eq!(stats.archived_events, early_events as u64);
    assert_eq!(stats.events, stats_before.events);
    assert!(stats.cold_bytes > 0);

    assert_eq!(reads(&store, split).await, before, "reads through the cache");
    let fresh = open_with(&schema, Some(cold.clone())).await.expect("open again");
    assert_eq!(reads(&fresh, split).await, before, "reads from cold storage");

    // A second run with the same date has nothing to do.
    assert_eq!(store.archive(split).await.expect("archive again"), outcome);
    assert_eq!(archived_rows(&schema).await, (rows, chunks));

    // Writes that depend on archived events.
    for (commit, original) in early.iter().take(5) {
        let replay = fresh.commit(commit.clone()).await.expect("replay");
        assert!(!replay.created, "an idempotent replay of archived events");
        assert_eq!(
            (replay.position, &replay.appends),
            (original.position, &original.appends)
        );
    }
    let changed = Commit::single(
        &early[0].0.appends[0].aggregate_id,
        ExpectedVersion::Any,
        vec![
            NewEvent::new("Account", "Opened", json!({"other": true}))
                .with_id(early[0].0.appends[0].events[0].event_id.expect("client id")),
        ],
    );
    assert!(
        matches!(
            fresh.commit(changed).await,
            Err(StoreError::DuplicateEventId { .. })
        ),
        "an archived id with other content is a duplicate"
    );
    let version = before[0].iter().filter(|e| e.aggregate_id() == "acct-1").count() as u64;
    let appended = fresh
        .commit(Commit::single(
            "acct-1",
            ExpectedVersion::Exact(version),
            vec![NewEvent::new("Account", "Deposited", json!({"after": "archive"}))],
        ))
        .await
        .expect("an expected version over archived events");
    assert_eq!(appended.appends[0].version, version + 1);
    let mut conditional = Commit::single(
        "acct-9",
        ExpectedVersion::Any,
        vec![NewEvent::new("Account", "Opened", json!({}))],
    );
    conditional.condition = Some(Condition {
        filter: EventFilter {
            correlation_id: Some("corr-0-0".into()),
            aggregate_id: Some("acct-1".into()),
            ..EventFilter::default()
        },
        after_position: 0,
    });
    // Only archived events match (the first round's correlation ids).
    let matching = fresh
        .read_events(EventQuery {
            filter: conditional.condition.clone().expect("condition").filter,
            ..EventQuery::all(0, 1000)
        })
        .await
        .expect("read");
    assert!(!matching.events.is_empty() && matching.events.iter().all(|e| e.recorded_at() < split));
    assert!(
        matches!(
            fresh.commit(conditional).await,
            Err(StoreError::ConditionFailed { .. })
        ),
        "a condition met by archived events only"
    );

    // A database with archived chunks does not open without its cold store.
    let error = open_with(&schema, None).await.expect_err("no cold store");
    assert!(error.contains("--archive-url"), "{error}");
    drop_off_runtime(cold);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_cold_storage_archiving_is_not_configured() {
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let store = open_with(&schema, None).await.expect("open");
    append(&store, 0, 3).await;
    assert!(matches!(
        store.archive(Timestamp::now()).await,
        Err(StoreError::ArchiveNotConfigured)
    ));
    let stats = store.storage().await.expect("storage");
    assert_eq!((stats.events, stats.archived_events, stats.cold_bytes), (6, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_or_missing_chunk_fails_its_reads() {
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let (cold_dir, cold, store) = on_cold_folder(&schema).await;
    let (split, _) = two_rounds(&store).await;
    let all = store
        .read_events(EventQuery::all(0, 10_000))
        .await
        .expect("read")
        .events;
    store.archive(split).await.expect("archive");
    let chunk_dir = cold_dir.path().join("pg-chunks");
    let mut files: Vec<_> = std::fs::read_dir(&chunk_dir)
        .expect("chunk folder")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    std::fs::write(&files[0], b"not a chunk").expect("overwrite");

    let fresh = open_with(&schema, Some(cold.clone())).await.expect("open again");
    let error = fresh
        .read_events(EventQuery::all(0, 10_000))
        .await
        .expect_err("a corrupt chunk");
    assert!(
        matches!(&error, StoreError::Unavailable(m) if m.contains("chunk 1 ")),
        "{error:?}"
    );
    let error = fresh
        .get_event(all[0].event_id())
        .await
        .expect_err("a corrupt chunk");
    assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
    // Events of other chunks, and hot events, still read.
    let last = all.last().expect("events");
    assert_eq!(&fresh.get_event(last.event_id()).await.expect("hot"), last);
    let eighth = &all[7];
    assert_eq!(
        &fresh.get_event(eighth.event_id()).await.expect("chunk 8"),
        eighth
    );

    // A chunk already in the cache reads; one that is not fails.
    std::fs::remove_file(&files[1]).expect("remove");
    std::fs::remove_file(&files[2]).expect("remove");
    assert_eq!(
        &fresh.get_event(all[8].event_id()).await.expect("cached"),
        &all[8]
    );
    let error = fresh
        .get_event(all[14].event_id())
        .await
        .expect_err("a missing chunk");
    assert!(
        matches!(&error, StoreError::Unavailable(m) if m.contains("chunk 15 ")),
        "{error:?}"
    );
    drop_off_runtime(cold);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_step_leaves_every_event_hot() {
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let cold_dir = tempfile::tempdir().expect("tempdir");
    let flaky = Arc::new(Flaky {
        inner: cold_at(cold_dir.path()),
        fail: Mutex::new(Fail::Never),
    });
    let store = open_with(&schema, Some(flaky.clone())).await.expect("open");
    let (split, _) = two_rounds(&store).await;
    let all = store
        .read_events(EventQuery::all(0, 10_000))
        .await
        .expect("read")
        .events;
    let still_hot = |what: &'static str| {
        let (schema, store, all) = (&schema, &store, &all);
        async move {
            assert_eq!(archived_rows(schema).await, (0, 0), "{what}: nothing archived");
            let read = store
                .read_events(EventQuery::all(0, 10_000))
                .await
                .expect("read")
                .events;
            assert_eq!(&read, all, "{what}: every event reads");
            let stats = store.storage().await.expect("storage");
            assert_eq!((stats.archived_events, stats.cold_bytes), (0, 0), "{what}");
        }
    };

    *flaky.fail.lock() = Fail::Put;
    let error = store.archive(split).await.expect_err("the put fails");
    assert!(
        matches!(&error, StoreError::Unavailable(m) if m.contains("cannot put")),
        "{error:?}"
    );
    // A client reads no path of the server's cold storage (the log has it).
    let cold_path = cold_dir.path().to_str().expect("a path");
    assert!(!error.to_string().contains(cold_path), "{error}");
    still_hot("a failed put").await;

    *flaky.fail.lock() = Fail::ReadBack;
    let error = store.archive(split).await.expect_err("the read-back differs");
    assert!(
        matches!(&error, StoreError::Unavailable(m) if m.contains("the copy at")),
        "{error:?}"
    );
    still_hot("a read-back that differs").await;

    *flaky.fail.lock() = Fail::Never;
    let client = schema.connect().await;
    client
        .batch_execute(
            "CREATE FUNCTION fail_commit() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'injected: the commit fails'; END $$; \
             CREATE TRIGGER fail_commit BEFORE INSERT ON factstore_archive_chunks \
             FOR EACH ROW EXECUTE FUNCTION fail_commit()",
        )
        .await
        .expect("trigger");
    let error = store.archive(split).await.expect_err("the commit fails");
    assert!(
        matches!(&error, StoreError::Unavailable(m) if m.contains("injected")),
        "{error:?}"
    );
    still_hot("a failed commit").await;

    // Once the way is clear the same run archives, over the objects left behind.
    client
        .batch_execute("DROP TRIGGER fail_commit ON factstore_archive_chunks")
        .await
        .expect("drop trigger");
    let outcome = store.archive(split).await.expect("archive");
    assert!(outcome.archived_events > 0);
    let fresh = open_with(&schema, Some(flaky.clone())).await.expect("open again");
    assert_eq!(
        fresh
            .read_events(EventQuery::all(0, 10_000))
            .await
            .expect("read")
            .events,
        all
    );
    drop_off_runtime(flaky);
}

/// A cold store owns a runtime, which must not be dropped on a runtime's thread.
fn drop_off_runtime<T: Send + 'static>(value: T) {
    std::thread::spawn(move || drop(value)).join().expect("dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_archiving_while_appends_go_on_archive_each_event_once() {
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let cold_dir = tempfile::tempdir().expect("tempdir");
    let cold: Arc<dyn ColdStore> = Arc::new(cold_at(cold_dir.path()));
    let a = open_with(&schema, Some(cold.clone())).await.expect("open a");
    let b = open_with(&schema, Some(cold.clone())).await.expect("open b");
    let first_round_end = append(&a, 0, 40).await.last().expect("commits").1.position;
    let writer = {
        let b = b.clone();
        tokio::spawn(async move { append(&b, 1, 40).await })
    };
    let before = Timestamp::now();
    let (one, two) = tokio::join!(a.archive(before), b.archive(before));
    let (one, two) = (one.expect("archive on a"), two.expect("archive on b"));
    writer.await.expect("appends");
    assert_eq!(
        one, two,
        "the second run waited for the first, then found nothing to do"
    );
    let client = schema.connect().await;
    let row = client
        .query_one(
            "SELECT count(*), coalesce(sum(event_count), 0)::bigint, coalesce(max(last_position), 0), \
             coalesce(max(event_count), 0) FROM factstore_archive_chunks",
            &[],
        )
        .await
        .expect("chunks");
    let (chunks, events, last, largest): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(events as u64, one.archived_events);
    assert_eq!(last, events, "chunks cover positions 1 to the last archived one");
    // A commit in flight when `before` was taken can make a run end on a partial chunk.
    assert!(chunks >= (events as u64).div_ceil(7) as i64 && largest <= 7);
    assert!(
        events as u64 >= first_round_end,
        "the first round, at least, is archived"
    );
    let all = a
        .read_events(EventQuery::all(0, 10_000))
        .await
        .expect("read")
        .events;
    let positions: Vec<u64> = all.iter().map(Event::position).collect();
    assert_eq!(positions, (1..=all.len() as u64).collect::<Vec<_>>());
    assert!(all.iter().all(|e| e.event_data().contains("\"round\"")));
    assert_eq!(
        b.read_events(EventQuery::all(0, 10_000))
            .await
            .expect("read")
            .events,
        all
    );
    drop_off_runtime(cold);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_of_archived_events_waits_for_cold_storage_alone() {
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let (cold_dir, cold, store) = on_cold_folder(&schema).await;
    let (split, early) = two_rounds(&store).await;
    store.archive(split).await.expect("archive");
    // A fresh store (nothing cached) while the first chunk's object is out of reach.
    let chunk_dir = cold_dir.path().join("pg-chunks");
    let mut files: Vec<_> = std::fs::read_dir(&chunk_dir)
        .expect("chunk folder")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    let aside = cold_dir.path().join("aside");
    std::fs::rename(&files[0], &aside).expect("move the object away");
    let fresh = open_with(&schema, Some(cold.clone())).await.expect("open again");

    let (replayed, other) = tokio::join!(
        fresh.commit(early[0].0.clone()),
        fresh.commit(Commit::single(
            "acct-new",
            ExpectedVersion::Exact(0),
            vec![NewEvent::new("Account", "Opened", json!({"n": 1}))]
        )),
    );
    assert!(
        matches!(&replayed, Err(StoreError::Unavailable(m)) if m.contains("repeats archived events") && m.contains("nothing was written")),
        "{replayed:?}"
    );
    assert!(
        other.is_ok(),
        "a commit that needs no archived payload goes through: {other:?}"
    );

    // Back in reach: the replay gives the first outcome, nothing written twice.
    std::fs::rename(&aside, &files[0]).expect("put the object back");
    let head = fresh.head().await.expect("head").position;
    let again = fresh.commit(early[0].0.clone()).await.expect("replay");
    assert!(!again.created);
    assert_eq!(again.appends, early[0].1.appends);
    assert_eq!(fresh.head().await.expect("head").position, head);
    drop_off_runtime(cold);
}

/// A cold store that counts the objects read from it, and makes each read slow enough for
/// readers to meet.
#[derive(Debug)]
struct Counting {
    inner: Arc<dyn ColdStore>,
    gets: AtomicUsize,
    /// Readers of the store that have started a read and not finished it (the test counts).
    reading: AtomicUsize,
    /// `reading` as the last object read ended: the readers that met that read.
    reading_at_get: AtomicUsize,
}

impl ColdStore for Counting {
    fn put(&self, key: &str, bytes: Bytes) -> io::Result<()> {
        self.inner.put(key, bytes)
    }

    fn get(&self, key: &str) -> io::Result<Bytes> {
        self.gets.fetch_add(1, SeqCst);
        // Slow on purpose, as a cold store over a network is.
        std::thread::sleep(Duration::from_millis(50));
        self.reading_at_get.store(self.reading.load(SeqCst), SeqCst);
        self.inner.get(key)
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_of_one_uncached_chunk_fetch_it_once() {
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let (_cold_dir, cold, store) = on_cold_folder(&schema).await;
    let (split, _) = two_rounds(&store).await;
    store.archive(split).await.expect("archive");
    drop(store);

    // A server started afresh: nothing cached. Eight readers of the first archived events.
    let counting = Arc::new(Counting {
        inner: cold.clone(),
        gets: AtomicUsize::new(0),
        reading: AtomicUsize::new(0),
        reading_at_get: AtomicUsize::new(0),
    });
    let fresh = open_with(&schema, Some(counting.clone())).await.expect("open");
    let mut readers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (fresh, counting) = (fresh.clone(), counting.clone());
        readers.spawn(async move {
            counting.reading.fetch_add(1, SeqCst);
            let page = fresh.read_events(EventQuery::all(0, 5)).await;
            counting.reading.fetch_sub(1, SeqCst);
            page
        });
    }
    let pages: Vec<_> = join_all("the readers", Duration::from_secs(30), &mut readers)
        .await
        .into_iter()
        .map(|page| page.expect("read"))
        .collect();
    assert_eq!(
        counting.reading_at_get.load(SeqCst),
        8,
        "every reader was reading while the chunk was fetched"
    );
    assert!(
        pages
            .iter()
            .all(|page| page.events.len() == 5 && page.events == pages[0].events)
    );
    assert_eq!(
        counting.gets.load(SeqCst),
        1,
        "the first five events are in one chunk, fetched once for eight readers"
    );
    drop(fresh);
    drop_off_runtime(counting);
    drop_off_runtime(cold);
}
