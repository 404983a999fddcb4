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

    /// The URL with the schema as `search_path`, for `--storage`.
    pub fn storage(&self) -> String {
        format!("{}?options=-c%20search_path%3D{}", self.url, self.name)
    }

    /// A connection to the schema, for looking at what the servers keep.
    pub async fn connect(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.storage(), tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
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
            Backend::Postgres(schema) => vec!["--storage".to_owned(), schema.storage()],
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
