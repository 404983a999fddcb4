//! Migrations: applied once, recorded, a schema this binary does not know refused, and the
//! tables of older versions moved out of `public`.

mod common;

use common::{TestDatabase, TestSchema};
use factstore_core::{Commit, EventQuery, EventStore, ExpectedVersion, NewEvent};
use factstore_postgres::{PgOptions, PgStore};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_once_and_are_recorded() {
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let options = schema.options();
    let first = factstore_postgres::store::migrate(&options)
        .await
        .expect("migrate");
    assert_eq!(first, vec![1, 2, 4]);
    let again = factstore_postgres::store::migrate(&options)
        .await
        .expect("migrate again");
    assert!(again.is_empty(), "a second run applies nothing");
    let client = schema.connect().await;
    let versions: Vec<i32> = client
        .query("SELECT version FROM factstore_migrations ORDER BY version", &[])
        .await
        .expect("query")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, vec![1, 2, 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_starting_together_migrate_once() {
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let opens: Vec<_> = (0..4).map(|_| PgStore::open(schema.options())).collect();
    for opened in futures::future::join_all(opens).await {
        opened.expect("every server opens");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmigrated_or_newer_schema_is_refused() {
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let mut options = schema.options();
    options.migrate = false;
    let error = PgStore::open(options.clone()).await.expect_err("not migrated");
    assert!(error.to_string().contains("factstore migrate"), "{error}");

    factstore_postgres::store::migrate(&options)
        .await
        .expect("migrate");
    PgStore::open(options.clone()).await.expect("opens once migrated");
    let client = schema.connect().await;
    client
        .execute(
            "INSERT INTO factstore_migrations (version, name) VALUES (999, 'future')",
            &[],
        )
        .await
        .expect("insert");
    let error = factstore_postgres::store::migrate(&options)
        .await
        .expect_err("a newer schema");
    assert!(
        error.to_string().contains("newer than this factstore knows"),
        "{error}"
    );
}

/// Turns the layout in `schema` into the one older versions made: the same tables, with the
/// migrations recorded in `schema_migrations` (as they created it) instead of
/// `factstore_migrations`.
async fn make_older_layout(client: &tokio_postgres::Client, schema: &str) {
    client
        .batch_execute(&format!(
            "CREATE TABLE {schema}.schema_migrations (
                version integer PRIMARY KEY,
                name text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            );
            INSERT INTO {schema}.schema_migrations SELECT * FROM {schema}.factstore_migrations;
            DROP TABLE {schema}.factstore_migrations;"
        ))
        .await
        .expect("make the older layout");
}

async fn exists(client: &tokio_postgres::Client, name: &str) -> bool {
    client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
        .await
        .expect("to_regclass")
        .get(0)
}

async fn commit_n(store: &PgStore, n: usize) {
    for i in 0..n {
        store
            .commit(Commit::single(
                &format!("thing:{i}"),
                ExpectedVersion::Any,
                vec![NewEvent::new("Thing", "Made", json!({"i": i}))],
            ))
            .await
            .expect("commit");
    }
}

/// An installation of an older version keeps its tables in `public`; the new version moves
/// them (rows, indexes, the record of migrations) into its own schema at start, under the
/// migrations' lock: of two servers starting at once, one moves and both open on the moved
/// tables, and every event is read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_layout_in_public_is_moved_into_the_schema_with_its_events() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let mut in_public = PgOptions::new(&db.url);
    in_public.schema = "public".into();
    let old = PgStore::open(in_public).await.expect("open in public");
    commit_n(&old, 5).await;
    drop(old);
    let client = db.connect().await;
    make_older_layout(&client, "public").await;
    assert!(exists(&client, "public.events").await);

    let (a, b) = tokio::join!(
        PgStore::open(PgOptions::new(&db.url)),
        PgStore::open(PgOptions::new(&db.url))
    );
    let (a, b) = (a.expect("server a opens"), b.expect("server b opens"));
    for table in [
        "events",
        "factstore_head",
        "snapshots",
        "factstore_leader",
        "schema_migrations",
    ] {
        assert!(
            !exists(&client, &format!("public.{table}")).await,
            "public.{table} is still there"
        );
    }
    assert!(exists(&client, "factstore.events").await);
    let versions: Vec<i32> = client
        .query(
            "SELECT version FROM factstore.factstore_migrations ORDER BY version",
            &[],
        )
        .await
        .expect("the record")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        versions,
        vec![1, 2, 4],
        "the older record is carried over, nothing applied twice"
    );
    let page = b.read_events(EventQuery::all(0, 100)).await.expect("read");
    let read: Vec<(u64, String)> = page
        .events
        .iter()
        .map(|e| (e.position(), e.aggregate_id().to_owned()))
        .collect();
    let expected: Vec<(u64, String)> = (0..5).map(|i| (i as u64 + 1, format!("thing:{i}"))).collect();
    assert_eq!(read, expected);
    commit_n(&a, 1).await;
    assert_eq!(
        b.head().await.expect("head").position,
        6,
        "the moved head goes on"
    );
}

/// A schema of an older version's layout other than `public` (one named by search_path then,
/// by --pg-schema now) keeps its tables, and its record moves to `factstore_migrations`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_layout_in_the_schema_itself_keeps_its_tables_and_renames_its_record() {
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let old = schema.open().await;
    commit_n(&old, 3).await;
    drop(old);
    let client = schema.connect().await;
    make_older_layout(&client, &schema.name).await;

    let store = schema.open().await;
    assert_eq!(store.head().await.expect("head").position, 3);
    assert!(!exists(&client, &format!("{}.schema_migrations", schema.name)).await);
    let count: i64 = client
        .query_one("SELECT count(*) FROM factstore_migrations", &[])
        .await
        .expect("the record")
        .get(0);
    assert_eq!(count, 3);
}

/// Rails, Ecto and golang-migrate keep a `schema_migrations` table in `public`; factstore's
/// tables and record are elsewhere and leave it as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tools_schema_migrations_in_public_is_left_alone() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let client = db.connect().await;
    client
        .batch_execute(
            "CREATE TABLE public.schema_migrations (version varchar PRIMARY KEY);
             INSERT INTO public.schema_migrations VALUES ('20240101000000');",
        )
        .await
        .expect("another tool's table");
    let store = PgStore::open(PgOptions::new(&db.url))
        .await
        .expect("opens beside it");
    commit_n(&store, 1).await;
    let theirs: Vec<String> = client
        .query("SELECT version FROM public.schema_migrations", &[])
        .await
        .expect("theirs")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(theirs, vec!["20240101000000".to_owned()]);
    assert!(!exists(&client, "public.events").await);
    assert!(exists(&client, "factstore.factstore_migrations").await);
}

/// Servers starting together on a database that has never seen factstore: one creates the
/// schema and its tables, the others wait for it and find them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_starting_together_on_a_fresh_database_all_open() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let opens: Vec<_> = (0..4).map(|_| PgStore::open(PgOptions::new(&db.url))).collect();
    let stores: Vec<PgStore> = futures::future::join_all(opens)
        .await
        .into_iter()
        .map(|opened| opened.expect("every server opens"))
        .collect();
    commit_n(&stores[0], 1).await;
    assert_eq!(stores[3].head().await.expect("head").position, 1);
}
