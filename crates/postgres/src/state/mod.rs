//! The state servers keep beside the events, in PostgreSQL, so that every server on one
//! database shares it: the schema registry ([`PgSchemaStorage`]), projections
//! ([`PgProjectionStorage`]) and persistent-subscription groups ([`PgGroupStorage`]). Tables in
//! migration 0002; the layout and the fencing in `docs/postgres.md` ("Shared state").
//!
//! # Promises
//! The same as the journals these replace: an append writes all its records or none and is
//! durable when it returns `Ok` (one statement, or one transaction, committed); a rewrite
//! replaces a whole log in one transaction; a failed write poisons its log (later writes are
//! refused: the outcome of the failed one may be unknown, e.g. a connection lost during the
//! commit); creating and removing are committed when they return.
//!
//! # Fencing
//! Projections and groups are run by one server at a time, the leader. Their storages are made
//! with the leader epoch they run under, and every write takes the row of `factstore_leader`
//! `FOR SHARE` where `epoch` is still that epoch, in the same statement or transaction as the
//! write. A new leader's `UPDATE factstore_leader SET epoch = epoch + 1` therefore waits for
//! the old leader's writes in flight, and every later write of the old leader finds no row and
//! writes nothing: it fails saying the lease was lost, and poisons its log.
//!
//! # Blocking
//! The traits are synchronous and called from `spawn_blocking` threads. Each storage keeps a
//! [`Handle`] of the runtime it was made in and blocks on it: its methods must NOT be called
//! from async code (blocking a runtime thread panics, or stalls a current-thread runtime).

mod groups;
mod projections;
mod schemas;

use std::fmt;

use deadpool_postgres::Pool;
use parking_lot::Mutex;
use postgres_types::ToSql;
use tokio::runtime::Handle;

use crate::PgError;
use crate::connect::Connector;
use crate::store::PgOptions;

pub use groups::PgGroupStorage;
pub use projections::PgProjectionStorage;
pub use schemas::{PgSchemaStorage, schema_channel, spawn_schema_refresh};

/// A connection pool for the state storages, on the database and schema of `options`, with at
/// most `size` connections. The schema must be migrated ([`crate::store::migrate`], or open a
/// [`crate::PgStore`] first).
pub fn state_pool(options: &PgOptions, size: usize) -> Result<Pool, PgError> {
    Connector::new(options)?.pool(size)
}

/// Why a state write failed.
#[derive(Debug)]
pub(crate) enum StateError {
    /// `factstore_leader.epoch` is no longer the epoch this storage writes under.
    LeaseLost {
        epoch: i64,
    },
    Db(PgError),
    /// The rows contradict the request (a group created twice, a row count that is off).
    Conflict(String),
    /// The log refused the write: an earlier one failed.
    Poisoned(String),
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateError::LeaseLost { epoch } => write!(
                f,
                "the leader lease was lost: epoch {epoch} is no longer the leader's, so this server no \
                 longer writes projections and subscription groups"
            ),
            StateError::Db(error) => write!(f, "{error}"),
            StateError::Conflict(message) => write!(f, "{message}"),
            StateError::Poisoned(reason) => {
                write!(f, "an earlier write failed, so this log takes no more: {reason}")
            }
        }
    }
}

impl From<PgError> for StateError {
    fn from(error: PgError) -> StateError {
        StateError::Db(error)
    }
}

impl From<tokio_postgres::Error> for StateError {
    fn from(error: tokio_postgres::Error) -> StateError {
        StateError::Db(PgError::Db(error))
    }
}

impl From<deadpool_postgres::PoolError> for StateError {
    fn from(error: deadpool_postgres::PoolError) -> StateError {
        StateError::Db(PgError::Pool(error))
    }
}

/// The leader row, locked `FOR SHARE` while it still holds `epoch`: the first statement of a
/// fenced transaction. The lock lasts until the transaction ends.
const LEASE_SQL: &str = "SELECT 1 FROM factstore_leader WHERE id = 1 AND epoch = $1 FOR SHARE";

/// Locks the leader row in `tx` if the lease is still `epoch`'s.
pub(crate) async fn hold_lease(
    tx: &deadpool_postgres::Transaction<'_>,
    epoch: i64,
) -> Result<(), StateError> {
    let statement = tx.prepare_cached(LEASE_SQL).await?;
    match tx.query_opt(&statement, &[&epoch]).await? {
        Some(_) => Ok(()),
        None => Err(StateError::LeaseLost { epoch }),
    }
}

/// Where a kind of log keeps its rows: the table and the columns naming one log.
#[derive(Debug)]
pub(crate) struct Table {
    pub records: &'static str,
    pub key_columns: &'static [&'static str],
}

impl Table {
    /// `$first, $first+1, ...`: the key's parameters.
    fn key_params(&self, first: usize) -> String {
        (0..self.key_columns.len())
            .map(|i| format!("${}", first + i))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// An INSERT of records at their sequence numbers, the key from parameter `first` on,
    /// then the sequence numbers and the records; `join` is put before the `unnest` in FROM.
    fn rows(&self, first: usize, join: &str) -> String {
        let k = self.key_columns.len();
        format!(
            "INSERT INTO {table} ({columns}, seq, record) SELECT {key}, r.seq, r.record \
             FROM {join}unnest(${s}::bigint[], ${r}::bytea[]) AS r(seq, record)",
            table = self.records,
            columns = self.key_columns.join(", "),
            key = self.key_params(first),
            s = first + k,
            r = first + k + 1,
        )
    }

    /// One statement: the fence (`$1`, the epoch), then the records at their sequence numbers
    /// (key from `$2`). It inserts nothing when the lease is lost.
    fn append_sql(&self) -> String {
        format!("WITH lease AS ({LEASE_SQL}) {}", self.rows(2, "lease, "))
    }

    /// Within a fenced transaction: the records, key from `$1`.
    fn insert_sql(&self) -> String {
        self.rows(1, "")
    }

    /// Within a fenced transaction: every row of a log, key from `$1`.
    fn delete_sql(&self) -> String {
        let filter: Vec<String> = self
            .key_columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c} = ${}", i + 1))
            .collect();
        format!("DELETE FROM {} WHERE {}", self.records, filter.join(" AND "))
    }
}

/// The key of one log, as SQL parameters.
#[derive(Debug, Clone)]
pub(crate) enum LogKey {
    Projection { name: String, generation: i64 },
    Group { name: String },
}

impl LogKey {
    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        match self {
            LogKey::Projection { name, generation } => vec![name, generation],
            LogKey::Group { name } => vec![name],
        }
    }
}

/// Bytes a record counts for in [`RecordLog::len`]: its own, and about what a row adds.
fn record_cost(record: &[u8]) -> u64 {
    record.len() as u64 + 8
}

#[derive(Debug)]
struct LogState {
    /// The sequence number of the next record.
    next: i64,
    bytes: u64,
    poison: Option<String>,
}

/// One log of records in a table (a projection generation's, a group's), written under the
/// lease of `epoch`. Writes are serialized by the state's mutex, held while blocking.
#[derive(Debug)]
pub(crate) struct RecordLog {
    pool: Pool,
    runtime: Handle,
    epoch: i64,
    table: &'static Table,
    key: LogKey,
    state: Mutex<LogState>,
}

impl RecordLog {
    /// A log holding `records` (its rows `0..records.len()`).
    pub(crate) fn new(
        pool: Pool,
        runtime: Handle,
        epoch: i64,
        table: &'static Table,
        key: LogKey,
        records: &[impl AsRef<[u8]>],
    ) -> RecordLog {
        RecordLog {
            pool,
            runtime,
            epoch,
            table,
            key,
            state: Mutex::new(LogState {
                next: records.len() as i64,
                bytes: records.iter().map(|r| record_cost(r.as_ref())).sum(),
                poison: None,
            }),
        }
    }

    pub(crate) fn append(&self, records: &[&[u8]]) -> Result<(), StateError> {
        let mut state = self.state.lock();
        if let Some(reason) = &state.poison {
            return Err(StateError::Poisoned(reason.clone()));
        }
        let seqs: Vec<i64> = (state.next..).take(records.len()).collect();
        let written = self.runtime.block_on(self.append_rows(&seqs, records));
        match written {
            Ok(()) => {
                state.next += records.len() as i64;
                state.bytes += records.iter().map(|r| record_cost(r)).sum::<u64>();
                Ok(())
            }
            Err(error) => {
                state.poison = Some(error.to_string());
                Err(error)
            }
        }
    }

    async fn append_rows(&self, seqs: &[i64], records: &[&[u8]]) -> Result<(), StateError> {
        let client = self.pool.get().await?;
        if records.is_empty() {
            // Nothing to write, but a fenced writer must still hear that it lost the lease.
            let statement = client.prepare_cached(LEASE_SQL).await?;
            return match client.query_opt(&statement, &[&self.epoch]).await? {
                Some(_) => Ok(()),
                None => Err(StateError::LeaseLost { epoch: self.epoch }),
            };
        }
        let statement = client.prepare_cached(&self.table.append_sql()).await?;
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&self.epoch];
        params.extend(self.key.params());
        params.push(&seqs);
        params.push(&records);
        let inserted = client.execute(&statement, &params).await?;
        if inserted == 0 {
            return Err(StateError::LeaseLost { epoch: self.epoch });
        }
        if inserted != records.len() as u64 {
            return Err(StateError::Conflict(format!(
                "an append of {} records inserted {inserted} rows",
                records.len()
            )));
        }
        Ok(())
    }

    pub(crate) fn rewrite(&self, records: &[&[u8]]) -> Result<(), StateError> {
        let mut state = self.state.lock();
        if let Some(reason) = &state.poison {
            return Err(StateError::Poisoned(reason.clone()));
        }
        let written = self.runtime.block_on(replace_rows(
            &self.pool, self.epoch, self.table, &self.key, records,
        ));
        match written {
            Ok(()) => {
                state.next = records.len() as i64;
                state.bytes = records.iter().map(|r| record_cost(r)).sum();
                Ok(())
            }
            Err(error) => {
                state.poison = Some(error.to_string());
                Err(error)
            }
        }
    }

    pub(crate) fn len(&self) -> u64 {
        self.state.lock().bytes
    }
}

/// Replaces every row of a log with `records`, in one fenced transaction.
async fn replace_rows(
    pool: &Pool,
    epoch: i64,
    table: &Table,
    key: &LogKey,
    records: &[&[u8]],
) -> Result<(), StateError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    hold_lease(&tx, epoch).await?;
    tx.execute(&table.delete_sql(), &key.params()).await?;
    insert_rows(&tx, table, key, records).await?;
    tx.commit().await?;
    Ok(())
}

/// Inserts `records` as rows `0..` of a log, within a fenced transaction.
pub(crate) async fn insert_rows(
    tx: &deadpool_postgres::Transaction<'_>,
    table: &Table,
    key: &LogKey,
    records: &[&[u8]],
) -> Result<(), StateError> {
    if records.is_empty() {
        return Ok(());
    }
    let seqs: Vec<i64> = (0..records.len() as i64).collect();
    let mut params = key.params();
    params.push(&seqs);
    params.push(&records);
    tx.execute(&table.insert_sql(), &params).await?;
    Ok(())
}
