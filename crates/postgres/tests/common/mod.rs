//! PostgreSQL for tests: each store gets a schema of its own in the test database, dropped
//! when the store is dropped.
//!
//! The database is `FACTSTORE_TEST_PG` (default `postgres://postgres@127.0.0.1:5432/test`).
//! When it cannot be reached the tests return at once and say so on stderr, unless
//! `FACTSTORE_REQUIRE_PG=1` (CI sets it), which makes them fail.

#![allow(dead_code, reason = "each test binary uses a part")]

pub mod cluster;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use factstore_core::{
    AggregatePage, AggregateQuery, CommitOutcome, Event, EventPage, EventQuery, EventStore, Head, Limits,
    PreparedCommit, PutSnapshot, Snapshot, SnapshotInfo, SnapshotStored, StoreError,
};
use factstore_postgres::{PgOptions, PgStore};
use tokio::sync::watch;
use uuid::Uuid;

pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

pub fn url() -> String {
    std::env::var("FACTSTORE_TEST_PG").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

static SAID_SKIPPED: AtomicBool = AtomicBool::new(false);

/// A schema of its own in the test database; dropped (with everything in it) on drop.
#[derive(Debug)]
pub struct TestSchema {
    pub url: String,
    pub name: String,
}

impl TestSchema {
    /// A fresh schema, or `None` (having said so) when PostgreSQL is not reachable.
    pub async fn create() -> Option<TestSchema> {
        let url = url();
        let connected = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_postgres::connect(&url, tokio_postgres::NoTls),
        )
        .await
        .map_err(|_| "timed out".to_owned())
        .and_then(|r| r.map_err(|e| factstore_postgres::chain_text(&e)));
        let (client, connection) = match connected {
            Ok(pair) => pair,
            Err(error) => {
                if std::env::var("FACTSTORE_REQUIRE_PG").is_ok_and(|v| v == "1") {
                    panic!(
                        "PostgreSQL is required (FACTSTORE_REQUIRE_PG=1) but not reachable at {url}: {error}"
                    );
                }
                if !SAID_SKIPPED.swap(true, Ordering::Relaxed) {
                    // Straight to stderr: the test harness captures eprintln! of passing tests.
                    let _ = writeln!(
                        std::io::stderr(),
                        "skipped: PostgreSQL not reachable at {url} ({error}); the PostgreSQL tests of \
                         this binary return without running (set FACTSTORE_TEST_PG, or \
                         FACTSTORE_REQUIRE_PG=1 to fail instead)"
                    );
                }
                return None;
            }
        };
        tokio::spawn(connection);
        let name = format!("fs_test_{}_{:016x}", std::process::id(), rand::random::<u64>());
        client
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await
            .expect("create a test schema");
        Some(TestSchema { url, name })
    }

    pub fn options(&self) -> PgOptions {
        let mut options = PgOptions::new(&self.url);
        options.schema = self.name.clone();
        options.pool_size = 4;
        options
    }

    /// How the store connects to this schema.
    pub fn connector(&self) -> factstore_postgres::Connector {
        factstore_postgres::Connector::new(&self.options()).expect("a connector")
    }

    pub async fn open(&self) -> PgStore {
        PgStore::open(self.options()).await.expect("open the store")
    }

    /// A plain connection with this schema as `search_path`.
    pub async fn connect(&self) -> tokio_postgres::Client {
        self.connector().connect().await.expect("connect")
    }
}

/// A database of its own, for what the shared test database cannot hold once per test: its
/// `public` schema, its default schema. Dropped (connections and all) on drop.
#[derive(Debug)]
pub struct TestDatabase {
    /// The URL of this database.
    pub url: String,
    pub name: String,
    admin: String,
}

impl TestDatabase {
    /// A fresh database, or `None` (having said so) when PostgreSQL is not reachable.
    pub async fn create() -> Option<TestDatabase> {
        // The schema made here only proves PostgreSQL reachable (or says why not).
        let probe = TestSchema::create().await?;
        let admin = probe.url.clone();
        drop(probe);
        let name = format!("fs_test_db_{}_{:016x}", std::process::id(), rand::random::<u64>());
        let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create a test database");
        Some(TestDatabase {
            url: with_database(&admin, &name),
            name,
            admin,
        })
    }

    /// A plain connection (`search_path` as the database has it: `public`).
    pub async fn connect(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        client
    }
}

/// Waits until a backend of this database waits for a lock (`wait_event_type = 'Lock'`) that
/// the session with process id `holder` holds, and returns that backend's query; fails naming
/// `what` after 10 s. `observer` must be a connection of its own, outside any transaction:
/// within one, `pg_stat_activity` is read once and then shown unchanged.
pub async fn blocked_by(observer: &tokio_postgres::Client, holder: i32, what: &str) -> String {
    factstore_testkit::wait::until_ok(what, Duration::from_secs(10), || async {
        observer
            .query_opt(
                "SELECT coalesce(query, '') FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock' \
                 AND $1 = ANY (pg_blocking_pids(pid)) LIMIT 1",
                &[&holder],
            )
            .await
            .expect("read pg_stat_activity")
            .map(|row| row.get::<_, String>(0))
            .ok_or("no backend waits on its lock")
    })
    .await
}

/// The process id of the backend of `client`'s session, as `pg_stat_activity` names it.
pub async fn backend_pid(client: &tokio_postgres::Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pg_backend_pid")
        .get(0)
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls).await?;
                tokio::spawn(connection);
                client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            let _ = writeln!(std::io::stderr(), "could not drop test database {}", self.name);
        }
    }
}

/// `url` with its database replaced by `name` (its query kept).
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base[after_scheme..]
        .find('/')
        .map_or(base.len(), |i| after_scheme + i);
    format!("{}/{name}{query}", &base[..authority_end])
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        let url = self.url.clone();
        let name = self.name.clone();
        // Drop runs inside a test's runtime, which cannot be blocked on: a thread of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
                tokio::spawn(connection);
                client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                    .await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            let _ = writeln!(std::io::stderr(), "could not drop test schema {}", self.name);
        }
    }
}

/// A store in a fresh schema; the schema goes when the store goes (fields drop in order).
#[derive(Debug)]
pub struct SchemaStore {
    pub store: PgStore,
    pub schema: TestSchema,
}

impl SchemaStore {
    pub async fn open() -> Option<SchemaStore> {
        let schema = TestSchema::create().await?;
        let store = schema.open().await;
        Some(SchemaStore { store, schema })
    }

    pub async fn open_dyn() -> Option<Arc<dyn EventStore>> {
        Some(Arc::new(SchemaStore::open().await?))
    }

    /// A store that never looks ids up before it plans a group: every retried commit is
    /// found by the primary key, or by planning again after a refusal.
    pub async fn open_dyn_without_id_lookups() -> Option<Arc<dyn EventStore>> {
        let schema = TestSchema::create().await?;
        let mut options = schema.options();
        options.look_up_ids_below = 0;
        let store = PgStore::open(options).await.expect("open the store");
        Some(Arc::new(SchemaStore { store, schema }))
    }
}

#[async_trait]
impl EventStore for SchemaStore {
    fn limits(&self) -> &Limits {
        self.store.limits()
    }

    async fn commit_prepared(&self, commit: PreparedCommit) -> Result<CommitOutcome, StoreError> {
        self.store.commit_prepared(commit).await
    }

    async fn read_aggregate(&self, query: AggregateQuery) -> Result<AggregatePage, StoreError> {
        self.store.read_aggregate(query).await
    }

    async fn read_events(&self, query: EventQuery) -> Result<EventPage, StoreError> {
        self.store.read_events(query).await
    }

    async fn get_event(&self, event_id: Uuid) -> Result<Event, StoreError> {
        self.store.get_event(event_id).await
    }

    async fn head(&self) -> Result<Head, StoreError> {
        self.store.head().await
    }

    async fn put_snapshot(&self, put: PutSnapshot) -> Result<SnapshotStored, StoreError> {
        self.store.put_snapshot(put).await
    }

    async fn latest_snapshot(
        &self,
        aggregate_id: &str,
        max_version: Option<u64>,
    ) -> Result<Snapshot, StoreError> {
        self.store.latest_snapshot(aggregate_id, max_version).await
    }

    async fn list_snapshots(&self, aggregate_id: &str) -> Result<Vec<SnapshotInfo>, StoreError> {
        self.store.list_snapshots(aggregate_id).await
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.store.watch_head()
    }
}
