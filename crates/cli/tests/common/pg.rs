//! A PostgreSQL schema of its own for a test that runs servers on `--storage postgres://`.
//!
//! The database is `FACTSTORE_TEST_PG` (default `postgres://postgres@127.0.0.1:5432/test`);
//! when it cannot be reached the test says so and returns, unless `FACTSTORE_REQUIRE_PG=1`
//! (CI), which makes it fail.

use std::io::Write;

pub struct PgSchema {
    pub url: String,
    pub name: String,
}

impl PgSchema {
    /// A fresh schema, or `None` (having said so on stderr) when PostgreSQL is not reachable.
    pub async fn create(test: &str) -> Option<PgSchema> {
        let url = std::env::var("FACTSTORE_TEST_PG")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let (client, connection) = match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
            Ok(pair) => pair,
            Err(error) => {
                if std::env::var("FACTSTORE_REQUIRE_PG").is_ok_and(|v| v == "1") {
                    panic!(
                        "PostgreSQL is required (FACTSTORE_REQUIRE_PG=1) but not reachable at {url}: {error}"
                    );
                }
                let _ = writeln!(
                    std::io::stderr(),
                    "skipped: PostgreSQL not reachable at {url} ({error}); {test} did not run"
                );
                return None;
            }
        };
        tokio::spawn(connection);
        let name = format!("fs_cli_{}_{:016x}", std::process::id(), rand::random::<u64>());
        client
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await
            .expect("create a schema");
        Some(PgSchema { url, name })
    }

    /// The arguments of `factstore serve` and `migrate` for this schema.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--storage".to_owned(),
            self.url.clone(),
            "--pg-schema".to_owned(),
            self.name.clone(),
        ]
    }

    /// A connection to the schema, for looking at what the servers keep.
    pub async fn connect(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        client
            .batch_execute(&format!("SET search_path = {}", self.name))
            .await
            .expect("set search_path");
        client
    }

    pub async fn drop_schema(self) {
        let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        client
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", self.name))
            .await
            .expect("drop the schema");
    }
}

/// A database of the test's own, for what the shared test database cannot give each test:
/// a database on which factstore has never run. Dropped on drop.
pub struct PgDatabase {
    /// This database's URL.
    pub url: String,
    pub name: String,
    admin: String,
}

impl PgDatabase {
    /// A fresh database, or `None` (having said so on stderr) when PostgreSQL is not reachable.
    pub async fn create(test: &str) -> Option<PgDatabase> {
        let probe = PgSchema::create(test).await?;
        let admin = probe.url.clone();
        probe.drop_schema().await;
        let name = format!("fs_cli_db_{}_{:016x}", std::process::id(), rand::random::<u64>());
        admin_client(&admin)
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create a database");
        let (base, query) = match admin.split_once('?') {
            Some((base, query)) => (base, format!("?{query}")),
            None => (admin.as_str(), String::new()),
        };
        let authority_end = base
            .find("://")
            .and_then(|i| base[i + 3..].find('/').map(|j| i + 3 + j))
            .unwrap_or(base.len());
        Some(PgDatabase {
            url: format!("{}/{name}{query}", &base[..authority_end]),
            name,
            admin,
        })
    }

    /// A connection to the database (`search_path` as it comes).
    pub async fn connect(&self) -> tokio_postgres::Client {
        admin_client(&self.url).await
    }
}

/// Dropped even when the test fails half-way (a database is not dropped with the process).
impl Drop for PgDatabase {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Drop may run inside a test's runtime, which cannot be blocked on: a thread of its own.
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

async fn admin_client(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
}

/// Where a test's servers keep their events: the embedded engine in the data folder, or a
/// PostgreSQL schema of the test's own. The same test runs on both.
pub enum Backend {
    Embedded,
    Postgres(PgSchema),
}

impl Backend {
    /// PostgreSQL, or `None` (having said so) when it is not reachable.
    pub async fn postgres(test: &str) -> Option<Backend> {
        PgSchema::create(test).await.map(Backend::Postgres)
    }

    /// The arguments of `factstore serve` for this backend.
    pub fn args(&self) -> Vec<String> {
        match self {
            Backend::Embedded => Vec::new(),
            Backend::Postgres(schema) => schema.args(),
        }
    }

    /// Waits until a server just started serves projections and groups: on PostgreSQL it
    /// must first win the leadership (at once when alone, as soon as PostgreSQL has ended
    /// the session of a killed predecessor).
    pub async fn ready(&self, url: &str) {
        if let Backend::Embedded = self {
            return;
        }
        let client = reqwest::Client::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !client
            .get(format!("{url}/v1/projections"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{url} did not take the leadership within 30 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// After the test: `factstore verify` of the data folder, or the schema dropped.
    pub async fn finish(self, data_dir: &std::path::Path) {
        match self {
            Backend::Embedded => super::assert_verify_ok(data_dir),
            Backend::Postgres(schema) => schema.drop_schema().await,
        }
    }
}
