//! The state storages on PostgreSQL: what was acknowledged survives reopening, appends are all
//! or none, writes under a lost leader epoch are refused and write nothing, and the real users
//! (projections, subscription groups, the schema registry) work over them, across servers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{TestSchema, backend_pid, blocked_by};
use deadpool_postgres::Pool;
use factstore_core::{Commit, EventStore, ExpectedVersion, Limits, NewEvent};
use factstore_postgres::PgStore;
use factstore_postgres::state::{PgGroupStorage, PgProjectionStorage, PgSchemaStorage, state_pool};
use factstore_projections::storage::ProjectionStorage;
use factstore_projections::{ProjectionError, Projections, ProjectionsOptions};
use factstore_schemas::{SchemaError, SchemaRegistry};
use factstore_subscriptions::{GroupDefinition, Options, Storage, SubscriptionError, Subscriptions};
use factstore_testkit::wait::{until, within};
use serde_json::json;
use tokio::runtime::Handle;

/// A migrated schema, a store on it, a state pool, and the leader row at epoch 1.
struct Fixture {
    pool: Pool,
    store: PgStore,
    schema: TestSchema,
}

impl Fixture {
    async fn new() -> Option<Fixture> {
        let schema = TestSchema::create().await?;
        let store = schema.open().await;
        let pool = state_pool(&schema.options(), 4).expect("a pool");
        let fixture = Fixture { pool, store, schema };
        fixture.set_epoch(1).await;
        Some(fixture)
    }

    async fn set_epoch(&self, epoch: i64) {
        let client = self.schema.connect().await;
        client
            .execute("UPDATE factstore_leader SET epoch = $1 WHERE id = 1", &[&epoch])
            .await
            .unwrap();
    }

    fn projections(&self, epoch: i64) -> PgProjectionStorage {
        PgProjectionStorage::new(self.pool.clone(), epoch, Handle::current())
    }

    fn groups(&self, epoch: i64) -> PgGroupStorage {
        PgGroupStorage::new(self.pool.clone(), epoch, Handle::current())
    }

    async fn count(&self, table: &str) -> i64 {
        let client = self.schema.connect().await;
        client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap()
            .get(0)
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// Every stored generation as (name, generation, records).
fn projection_contents(storage: &PgProjectionStorage) -> Vec<(String, u64, Vec<Vec<u8>>)> {
    storage
        .open_all()
        .unwrap()
        .into_iter()
        .map(|g| (g.name, g.generation, g.records))
        .collect()
}

fn group_contents(storage: &PgGroupStorage) -> Vec<(String, Vec<Vec<u8>>)> {
    storage
        .load()
        .unwrap()
        .into_iter()
        .map(|(name, _, records)| (name, records))
        .collect()
}

fn bytes(items: &[&str]) -> Vec<Vec<u8>> {
    items.iter().map(|s| s.as_bytes().to_vec()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projection_logs_round_trip_through_reopening() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let storage = fx.projections(1);
    let reopened = fx.projections(1);
    let seen = blocking(move || {
        let a1 = storage.create("a", 1).unwrap();
        a1.append(&[b"def", b"live"]).unwrap();
        a1.append(&[b"batch1"]).unwrap();
        assert_eq!(a1.len(), 3 + 4 + 6 + 3 * 8);
        let a2 = storage.create("a", 2).unwrap();
        a2.append(&[b"def2"]).unwrap();
        let b = storage.create("b.c/é", 7).unwrap();
        b.append(&[b"x", b"y", b"z"]).unwrap();
        // Compaction: the image replaces the log; appends go on after it.
        b.rewrite(&[b"image"]).unwrap();
        b.append(&[b"after"]).unwrap();
        assert_eq!(b.len(), 5 + 5 + 2 * 8);
        storage.create("empty", 3).unwrap();
        storage.create("gone", 1).unwrap().append(&[b"r"]).unwrap();
        storage.remove("gone", 1).unwrap();
        storage.remove("never", 9).unwrap();
        projection_contents(&reopened)
    })
    .await;
    assert_eq!(
        seen,
        vec![
            ("a".to_owned(), 1, bytes(&["def", "live", "batch1"])),
            ("a".to_owned(), 2, bytes(&["def2"])),
            ("b.c/é".to_owned(), 7, bytes(&["image", "after"])),
            ("empty".to_owned(), 3, Vec::new()),
        ]
    );
    // A reopened log appends after what it found.
    let storage = fx.projections(1);
    let seen = blocking(move || {
        let opened = storage.open_all().unwrap();
        let a1 = opened
            .into_iter()
            .find(|g| g.name == "a" && g.generation == 1)
            .unwrap();
        assert_eq!(a1.log.len(), 3 + 4 + 6 + 3 * 8);
        a1.log.append(&[b"batch2"]).unwrap();
        // Creating a generation that exists starts it afresh (a leftover of a removal).
        storage.create("a", 2).unwrap();
        projection_contents(&storage)
    })
    .await;
    assert_eq!(seen[0].2, bytes(&["def", "live", "batch1", "batch2"]));
    assert_eq!(seen[1], ("a".to_owned(), 2, Vec::new()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_projection_append_writes_nothing_and_poisons_the_log() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let storage = fx.projections(1);
    let log = blocking(move || {
        let log = storage.create("p", 1).unwrap();
        log.append(&[b"0"]).unwrap();
        log
    })
    .await;
    // A row in the way of the append's second record: the statement fails as a whole.
    let client = fx.schema.connect().await;
    client
        .execute(
            "INSERT INTO factstore_projection_records (name, generation, seq, record) VALUES ('p', 1, 2, 'x')",
            &[],
        )
        .await
        .unwrap();
    let (failed, again) = blocking(move || {
        let failed = log.append(&[b"1", b"2", b"3"]);
        let again = log.append(&[b"4"]);
        (failed, again)
    })
    .await;
    assert!(
        matches!(failed, Err(ProjectionError::Unavailable(_))),
        "{failed:?}"
    );
    assert!(
        matches!(&again, Err(ProjectionError::Unavailable(m)) if m.contains("earlier write failed")),
        "{again:?}"
    );
    let storage = fx.projections(1);
    let seen = blocking(move || projection_contents(&storage)).await;
    assert_eq!(seen, vec![("p".to_owned(), 1, bytes(&["0", "x"]))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projection_writes_under_a_lost_epoch_are_refused_and_write_nothing() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let storage = fx.projections(1);
    let (log, other) = blocking(move || {
        let log = storage.create("p", 1).unwrap();
        log.append(&[b"a", b"b"]).unwrap();
        let other = storage.create("q", 1).unwrap();
        (log, other)
    })
    .await;
    fx.set_epoch(2).await;
    let old = fx.projections(1);
    let (append, again, rewrite, create, remove, empty) = blocking(move || {
        (
            log.append(&[b"c"]),
            log.append(&[b"d"]),
            other.rewrite(&[b"image"]),
            old.create("r", 1).map(|_| ()),
            old.remove("p", 1),
            old.create("q", 2).map(|_| ()),
        )
    })
    .await;
    for (what, result) in [
        ("append", append),
        ("rewrite", rewrite),
        ("create", create),
        ("remove", remove),
        ("create", empty),
    ] {
        assert!(
            matches!(&result, Err(ProjectionError::Unavailable(m)) if m.contains("lease was lost")),
            "{what}: {result:?}"
        );
    }
    assert!(matches!(again, Err(ProjectionError::Unavailable(_))), "{again:?}");
    let new = fx.projections(2);
    let seen = blocking(move || projection_contents(&new)).await;
    assert_eq!(
        seen,
        vec![
            ("p".to_owned(), 1, bytes(&["a", "b"])),
            ("q".to_owned(), 1, Vec::new())
        ]
    );
    // The new leader writes.
    let new = fx.projections(2);
    blocking(move || new.create("r", 1).unwrap().append(&[b"ok"]).unwrap()).await;
    assert_eq!(fx.count("factstore_projection_records").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_epoch_bump_waits_for_a_write_in_flight_and_fences_the_next() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let storage = fx.projections(1);
    let log = blocking(move || storage.create("p", 1).unwrap()).await;
    // A new leader's bump, not yet committed: the old leader's append waits on the row, then
    // finds the epoch changed and writes nothing.
    let mut client = fx.schema.connect().await;
    let observer = fx.schema.connect().await;
    let bumper = backend_pid(&client).await;
    let tx = client.transaction().await.unwrap();
    tx.execute("UPDATE factstore_leader SET epoch = epoch + 1 WHERE id = 1", &[])
        .await
        .unwrap();
    let append = tokio::task::spawn_blocking(move || log.append(&[b"late"]));
    // PostgreSQL shows the append waiting on the bump's lock of the leader row: the write was
    // in flight while the bump was, and what follows is what the lock made of it.
    let blocked = blocked_by(&observer, bumper, "the append to wait on the bump's lock").await;
    assert!(
        !append.is_finished(),
        "the append waits for the bump to commit or roll back (it waits in {blocked:?})"
    );
    tx.commit().await.unwrap();
    let result = within(
        "the append, once the bump committed",
        Duration::from_secs(10),
        append,
    )
    .await
    .unwrap();
    assert!(
        matches!(&result, Err(ProjectionError::Unavailable(m)) if m.contains("lease was lost")),
        "{result:?}"
    );
    assert_eq!(fx.count("factstore_projection_records").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_logs_round_trip_and_are_fenced() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let storage = fx.groups(1);
    let reopened = fx.groups(1);
    let (log, seen) = blocking(move || {
        let g = storage.create("g", &[b"image"]).unwrap();
        g.append(&[b"a1", b"a2"]).unwrap();
        assert_eq!(g.len(), 5 + 2 + 2 + 3 * 8);
        let h = storage.create("h", &[b"x"]).unwrap();
        h.rewrite(&[b"image2", b"y"]).unwrap();
        h.append(&[b"z"]).unwrap();
        storage.create("gone", &[b"x"]).unwrap();
        storage.delete("gone").unwrap();
        storage.delete("never").unwrap();
        let twice = storage.create("g", &[b"again"]);
        assert!(matches!(twice, Err(SubscriptionError::Internal(_))), "{twice:?}");
        (g, group_contents(&reopened))
    })
    .await;
    assert_eq!(
        seen,
        vec![
            ("g".to_owned(), bytes(&["image", "a1", "a2"])),
            ("h".to_owned(), bytes(&["image2", "y", "z"])),
        ]
    );

    // All or none: a row in the way of the second record fails the whole append.
    let client = fx.schema.connect().await;
    client
        .execute(
            "INSERT INTO factstore_group_records (group_name, seq, record) VALUES ('g', 4, 'x')",
            &[],
        )
        .await
        .unwrap();
    let failed = blocking(move || (log.append(&[b"a3", b"a4"]), log.append(&[b"a5"]))).await;
    assert!(
        matches!(failed.0, Err(SubscriptionError::Unavailable(_))),
        "{failed:?}"
    );
    assert!(
        matches!(failed.1, Err(SubscriptionError::Unavailable(_))),
        "{failed:?}"
    );

    // Fencing.
    let storage = fx.groups(1);
    let log = blocking(move || storage.load().unwrap().remove(1).1).await;
    fx.set_epoch(2).await;
    let old = fx.groups(1);
    let results = blocking(move || {
        vec![
            log.append(&[b"late"]),
            log.rewrite(&[b"late"]),
            old.create("new", &[b"late"]).map(|_| ()),
            old.delete("h"),
        ]
    })
    .await;
    for result in results {
        assert!(
            matches!(&result, Err(SubscriptionError::Unavailable(m)) if m.contains("lease was lost") || m.contains("earlier write failed")),
            "{result:?}"
        );
    }
    let new = fx.groups(2);
    let seen = blocking(move || group_contents(&new)).await;
    assert_eq!(
        seen,
        vec![
            ("g".to_owned(), bytes(&["image", "a1", "a2", "x"])),
            ("h".to_owned(), bytes(&["image2", "y", "z"])),
        ]
    );
}

async fn deposit(store: &PgStore, aggregate: &str, amounts: &[i64]) {
    let events = amounts
        .iter()
        .map(|a| NewEvent::new("Account", "Deposited", json!({"amount": a})))
        .collect();
    store
        .commit(Commit::single(aggregate, ExpectedVersion::Any, events))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projections_fold_into_postgres_and_reopen_with_their_states() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let store: Arc<dyn EventStore> = Arc::new(fx.store.clone());
    deposit(&fx.store, "acc:1", &[1, 2, 3]).await;
    deposit(&fx.store, "acc:2", &[10]).await;
    let options = || ProjectionsOptions {
        snapshot_every: 2,
        batch_events: 2,
        compact_bytes_min: 1 << 20,
    };
    let definition = serde_json::from_value(json!({
        "key": "aggregate_id",
        "initial": {"n": 0, "sum": 0},
        "on": {"Deposited": [
            {"op": "inc", "path": "/n"},
            {"op": "add", "path": "/sum", "from": "/event_data/amount"}
        ]}
    }))
    .unwrap();
    let projections = Projections::open(store.clone(), Arc::new(fx.projections(1)), options())
        .await
        .unwrap();
    projections.put("balances", definition).await.unwrap();
    deposit(&fx.store, "acc:2", &[5]).await;
    let head = fx.store.head().await.unwrap().position;
    projections
        .wait_for("balances", head, Duration::from_secs(10))
        .await
        .unwrap();
    let before = projections.states("balances", None, 100).unwrap();
    projections.shutdown().await;
    drop(projections);

    let reopened = Projections::open(store, Arc::new(fx.projections(1)), options())
        .await
        .unwrap();
    assert_eq!(reopened.status("balances").unwrap().position, head);
    let after = reopened.states("balances", None, 100).unwrap();
    assert_eq!(after.states, before.states);
    let states: Vec<_> = after.states.into_iter().collect();
    assert_eq!(
        states,
        vec![
            ("acc:1".to_owned(), json!({"n": 3, "sum": 6})),
            ("acc:2".to_owned(), json!({"n": 2, "sum": 15})),
        ]
    );
    reopened.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_groups_keep_their_acks_in_postgres() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let store: Arc<dyn EventStore> = Arc::new(fx.store.clone());
    deposit(&fx.store, "acc:1", &[1, 2, 3, 4, 5]).await;
    let subscriptions = Subscriptions::open(store.clone(), Arc::new(fx.groups(1)), Options::default())
        .await
        .unwrap();
    subscriptions.put("g", GroupDefinition::default()).await.unwrap();
    let got = subscriptions
        .poll("g", "w", 3, Duration::from_secs(5))
        .await
        .unwrap();
    let positions: Vec<u64> = got.iter().map(|d| d.event.position()).collect();
    assert_eq!(positions, vec![1, 2, 3]);
    subscriptions.ack("g", &positions).await.unwrap();
    assert_eq!(subscriptions.status("g").unwrap().checkpoint, 3);
    subscriptions.close().await;
    drop(subscriptions);

    let reopened = Subscriptions::open(store, Arc::new(fx.groups(1)), Options::default())
        .await
        .unwrap();
    assert_eq!(reopened.status("g").unwrap().checkpoint, 3);
    let got = reopened.poll("g", "w", 10, Duration::from_secs(5)).await.unwrap();
    let positions: Vec<u64> = got.iter().map(|d| d.event.position()).collect();
    assert_eq!(positions, vec![4, 5], "acked events are not delivered again");
    reopened.close().await;
}

async fn registry(pool: &Pool) -> Arc<SchemaRegistry> {
    let storage = PgSchemaStorage::open(pool.clone()).await.unwrap();
    blocking(move || Arc::new(SchemaRegistry::open(Box::new(storage)).unwrap())).await
}

fn schema_with(properties: serde_json::Value) -> serde_json::Value {
    json!({"type": "object", "properties": properties})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registries_on_one_database_share_their_schemas() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let a = registry(&fx.pool).await;
    let b = registry(&fx.pool).await;
    let v1 = schema_with(json!({"amount": {"type": "integer"}}));
    let put = {
        let (a, v1) = (a.clone(), v1.clone());
        blocking(move || a.put_schema("Deposited", 1, v1, &Limits::default())).await
    };
    assert_eq!(put, Ok(true));
    assert!(b.get("Deposited").is_err(), "not before a refresh");
    let refreshed = {
        let b = b.clone();
        blocking(move || b.refresh()).await
    };
    assert_eq!(refreshed, Ok(1));
    assert_eq!(b.get("Deposited").unwrap().versions[0].schema, v1);

    // B registers v2; A, which has not seen it, registers the same v2 (nothing new: 200),
    // then a different v2 (refused: a registered schema never changes).
    let v2 = schema_with(json!({"amount": {"type": "integer"}, "note": {"type": "string"}}));
    let other = schema_with(json!({"amount": {"type": "integer"}, "memo": {"type": "string"}}));
    let (b2, a2, a3) = {
        let (a, b, v2, other) = (a.clone(), b.clone(), v2.clone(), other.clone());
        blocking(move || {
            (
                b.put_schema("Deposited", 2, v2.clone(), &Limits::default()),
                a.put_schema("Deposited", 2, v2, &Limits::default()),
                a.put_schema("Deposited", 2, other, &Limits::default()),
            )
        })
        .await
    };
    assert_eq!(b2, Ok(true));
    assert_eq!(
        a2,
        Ok(false),
        "the same schema, registered elsewhere: nothing new"
    );
    assert!(
        matches!(a3, Err(SchemaError::SchemaExists { version: 2, .. })),
        "{a3:?}"
    );

    // A third server opening now reads everything.
    let c = registry(&fx.pool).await;
    assert_eq!(c.get("Deposited").unwrap().latest_version, 2);
    assert_eq!(fx.count("factstore_schema_records").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_conflicting_puts_register_one_version() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let v1 = schema_with(json!({"amount": {"type": "integer"}}));
    let first = registry(&fx.pool).await;
    blocking(move || first.put_schema("Deposited", 1, v1, &Limits::default()).unwrap()).await;
    for round in 0..5 {
        let servers: Vec<Arc<SchemaRegistry>> =
            futures::future::join_all((0..4).map(|_| registry(&fx.pool))).await;
        let event_type = "Deposited";
        let version = round + 2;
        let puts = servers.iter().enumerate().map(|(i, server)| {
            let server = server.clone();
            let mut properties = serde_json::Map::new();
            properties.insert("amount".to_owned(), json!({"type": "integer"}));
            for earlier in 2..version {
                properties.insert(format!("v{earlier}"), json!({"type": "string"}));
            }
            properties.insert(
                format!("v{version}"),
                json!({"type": "string", "title": format!("server {i}")}),
            );
            let schema = schema_with(serde_json::Value::Object(properties));
            tokio::task::spawn_blocking(move || {
                server.put_schema(event_type, version, schema, &Limits::default())
            })
        });
        let results: Vec<_> = futures::future::join_all(puts)
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        let won = results.iter().filter(|r| **r == Ok(true)).count();
        let lost = results
            .iter()
            .filter(|r| matches!(r, Err(SchemaError::SchemaExists { .. })))
            .count();
        assert_eq!((won, lost), (1, 3), "round {round}: {results:?}");
        // Every server ends with the same schema for the version.
        let mut schemas = Vec::new();
        for server in &servers {
            let refreshing = server.clone();
            blocking(move || refreshing.refresh().unwrap()).await;
            let got = server.get(event_type).unwrap();
            assert_eq!(got.latest_version, version);
            schemas.push(got.versions.last().unwrap().schema.clone());
        }
        assert!(schemas.windows(2).all(|w| w[0] == w[1]), "{schemas:?}");
    }
    assert_eq!(fx.count("factstore_schema_records").await, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refresh_task_brings_in_other_servers_schemas() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let a = registry(&fx.pool).await;
    let b = registry(&fx.pool).await;
    let task = factstore_postgres::state::spawn_schema_refresh(b.clone(), &fx.schema.connector());
    // The listener is listening before the schema is put, so that the notification (not only
    // the poll) can bring it.
    let observer = fx.schema.connect().await;
    let listen = format!(
        "LISTEN \"{}\"",
        factstore_postgres::state::schema_channel(&fx.schema.name)
    );
    until(
        "the registry's listener to listen",
        Duration::from_secs(10),
        || async {
            observer
                .query_opt(
                    "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND query = $1",
                    &[&listen],
                )
                .await
                .unwrap()
                .is_some()
        },
    )
    .await;
    blocking(move || {
        a.put_schema(
            "Deposited",
            1,
            schema_with(json!({"amount": {"type": "integer"}})),
            &Limits::default(),
        )
        .unwrap()
    })
    .await;
    until(
        "the refresh to bring the schema",
        Duration::from_secs(5),
        || async { b.get("Deposited").is_ok() },
    )
    .await;
    task.abort();
}
