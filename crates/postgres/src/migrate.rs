//! Versioned schema migrations, embedded in the binary.
//!
//! Each migration is a SQL file in `migrations/`, applied once, in version order, inside one
//! transaction that also records it in `schema_migrations`. Several servers starting at once
//! on one database take a transaction-scoped advisory lock first (keyed by the schema), so
//! exactly one of them applies what is missing and the others then find it applied.

use tokio_postgres::Client;

use crate::PgError;

/// A migration: its version, name and SQL.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in version order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "events",
        sql: include_str!("../migrations/0001_events.sql"),
    },
    Migration {
        version: 2,
        name: "state",
        sql: include_str!("../migrations/0002_state.sql"),
    },
    Migration {
        version: 4,
        name: "archive",
        sql: include_str!("../migrations/0004_archive.sql"),
    },
];

/// Applies the missing migrations to the current schema (the first of `search_path`); returns
/// the versions it applied. A database whose schema is newer than this binary knows is refused:
/// an older server must not write to a layout it does not understand.
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>, PgError> {
    let tx = client.transaction().await?;
    let schema: Option<String> = tx.query_one("SELECT current_schema()", &[]).await?.get(0);
    let Some(schema) = schema else {
        return Err(PgError::Config(
            "no schema to migrate: the first schema of search_path does not exist".into(),
        ));
    };
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('factstore.migrate.' || $1, 0))",
        &[&schema],
    )
    .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version integer PRIMARY KEY,
            name text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )
    .await?;
    let applied: Vec<i32> = tx
        .query("SELECT version FROM schema_migrations ORDER BY version", &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let known = MIGRATIONS.last().map_or(0, |m| m.version);
    if let Some(&newest) = applied.last()
        && newest > known
    {
        return Err(PgError::Config(format!(
            "schema '{schema}' is at migration {newest}, newer than this factstore knows ({known}): \
             upgrade factstore"
        )));
    }
    let mut done = Vec::new();
    for migration in MIGRATIONS {
        if applied.contains(&migration.version) {
            continue;
        }
        tx.batch_execute(migration.sql).await.map_err(|e| {
            PgError::Config(format!(
                "migration {} ({}) failed: {}",
                migration.version,
                migration.name,
                crate::describe(&e)
            ))
        })?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[&migration.version, &migration.name],
        )
        .await?;
        done.push(migration.version);
    }
    tx.commit().await?;
    Ok(done)
}
