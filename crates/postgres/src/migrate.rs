//! Versioned schema migrations, embedded in the binary.
//!
//! Each migration is a SQL file in `migrations/`, applied once, in version order, inside one
//! transaction that also records it in `factstore_migrations`. Several servers starting at once
//! on one database take a transaction-scoped advisory lock first (keyed by the schema), so
//! exactly one of them applies what is missing (creating the schema if needed) and the others
//! then find it applied.
//!
//! # The older layout
//! Versions before the schema of their own kept their tables in the first schema of
//! `search_path`, usually `public`, and recorded the migrations in `schema_migrations`, a name
//! Rails, Ecto and golang-migrate use for their own. The same transaction, under the same lock,
//! moves such tables from `public` into the schema (`ALTER TABLE … SET SCHEMA`: the rows stay
//! where they are) when the schema has none of its own yet, and carries their record over to
//! `factstore_migrations`. An older server starting meanwhile takes the lock keyed by `public`
//! (theirs): a server that may move tables from there takes that lock too, and first.

use tokio_postgres::{Client, Transaction};

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

/// The tables of migrations 1 to 4, which older versions created in `public`. Later
/// migrations create theirs in the schema.
const OLDER_TABLES: &[&str] = &[
    "factstore_head",
    "events",
    "snapshots",
    "factstore_leader",
    "factstore_schema_records",
    "factstore_projection_generations",
    "factstore_projection_records",
    "factstore_group_records",
    "factstore_archive_chunks",
];

/// Applies the missing migrations to `schema` (creating it when missing, moving an older
/// version's tables into it from `public`); returns the versions it applied. A schema newer
/// than this binary knows is refused: an older server must not write to a layout it does not
/// understand. The connection's `search_path` must be `schema` ([`crate::Connector`] sets it).
pub async fn migrate(client: &mut Client, schema: &str) -> Result<Vec<i32>, PgError> {
    let tx = client.transaction().await?;
    // Seen before the locks: nobody creates an older layout's tables in `public` but an older
    // server, and a server moving them away holds the lock taken below.
    let from_public = schema != "public" && exists(&tx, "public", "factstore_head").await?;
    if from_public {
        lock(&tx, "public").await?;
    }
    lock(&tx, schema).await?;
    let schema_exists: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
            &[&schema],
        )
        .await?
        .get(0);
    // Looked up rather than `IF NOT EXISTS`: creating a schema needs the CREATE privilege on
    // the database, which a schema made beforehand by an administrator makes unnecessary.
    if !schema_exists {
        tx.batch_execute(&format!("CREATE SCHEMA \"{schema}\"")).await?;
    }
    tx.batch_execute(&format!("SET LOCAL search_path = \"{schema}\""))
        .await?;
    let moved = from_public
        && !exists(&tx, schema, "factstore_head").await?
        && exists(&tx, "public", "factstore_head").await?;
    if moved {
        move_from_public(&tx, schema).await?;
    }
    if !exists(&tx, schema, "factstore_migrations").await? {
        tx.batch_execute(
            "CREATE TABLE factstore_migrations (
                version integer PRIMARY KEY,
                name text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await?;
        // The record of an older layout: beside the tables it describes, before they moved.
        let was_in = if moved { "public" } else { schema };
        if exists(&tx, schema, "factstore_head").await? && exists(&tx, was_in, "schema_migrations").await? {
            take_older_record(&tx, was_in).await?;
        }
    }
    let applied: Vec<i32> = tx
        .query("SELECT version FROM factstore_migrations ORDER BY version", &[])
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
            "INSERT INTO factstore_migrations (version, name) VALUES ($1, $2)",
            &[&migration.version, &migration.name],
        )
        .await?;
        done.push(migration.version);
    }
    tx.commit().await?;
    if moved {
        tracing::info!(
            schema,
            "moved the tables of an older factstore from schema public into schema {schema}"
        );
    }
    Ok(done)
}

/// The advisory lock of the migrations of `schema`, until the transaction ends.
async fn lock(tx: &Transaction<'_>, schema: &str) -> Result<(), PgError> {
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('factstore.migrate.' || $1, 0))",
        &[&schema],
    )
    .await?;
    Ok(())
}

/// Whether `schema.table` exists (as anything with that name).
async fn exists(tx: &Transaction<'_>, schema: &str, table: &str) -> Result<bool, PgError> {
    let name = format!("\"{schema}\".{table}");
    Ok(tx
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
        .await?
        .get(0))
}

/// Moves the older layout's tables from `public` into `schema`, with their indexes and
/// constraints.
async fn move_from_public(tx: &Transaction<'_>, schema: &str) -> Result<(), PgError> {
    for table in OLDER_TABLES {
        if exists(tx, "public", table).await? {
            tx.batch_execute(&format!("ALTER TABLE public.{table} SET SCHEMA \"{schema}\""))
                .await
                .map_err(|e| {
                    PgError::Config(format!(
                        "cannot move table {table} of an older factstore from schema public into \
                         schema {schema}: {}",
                        crate::describe(&e)
                    ))
                })?;
        }
    }
    Ok(())
}

/// Copies the rows of factstore's migrations from `<was_in>.schema_migrations` into
/// `factstore_migrations`, and takes them out of there; the table goes when that leaves it
/// empty (another tool's rows, if it shares it, stay).
async fn take_older_record(tx: &Transaction<'_>, was_in: &str) -> Result<(), PgError> {
    let versions: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
    let names: Vec<&str> = MIGRATIONS.iter().map(|m| m.name).collect();
    let ours = "(version, name) IN (SELECT * FROM unnest($1::int[], $2::text[]))";
    let taken = async {
        tx.execute(
            &format!(
                "INSERT INTO factstore_migrations (version, name, applied_at) \
                 SELECT version, name, applied_at FROM \"{was_in}\".schema_migrations WHERE {ours}"
            ),
            &[&versions, &names],
        )
        .await?;
        tx.execute(
            &format!("DELETE FROM \"{was_in}\".schema_migrations WHERE {ours}"),
            &[&versions, &names],
        )
        .await?;
        let left: i64 = tx
            .query_one(
                &format!("SELECT count(*) FROM \"{was_in}\".schema_migrations"),
                &[],
            )
            .await?
            .get(0);
        if left == 0 {
            tx.batch_execute(&format!("DROP TABLE \"{was_in}\".schema_migrations"))
                .await?;
        }
        Ok::<(), tokio_postgres::Error>(())
    };
    taken.await.map_err(|e| {
        PgError::Config(format!(
            "cannot carry the migration record of an older factstore over from \
             {was_in}.schema_migrations: {}",
            crate::describe(&e)
        ))
    })
}
