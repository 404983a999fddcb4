//! [`PgProjectionStorage`]: projection generations in `factstore_projection_generations` and
//! their records in `factstore_projection_records`, written under the leader's fence.

use std::collections::BTreeMap;

use deadpool_postgres::Pool;
use factstore_projections::ProjectionError;
use factstore_projections::storage::{GenerationLog, ProjectionStorage, StoredGeneration};
use tokio::runtime::Handle;

use super::{LogKey, RecordLog, StateError, Table, hold_lease};

static RECORDS: Table = Table {
    records: "factstore_projection_records",
    key_columns: &["name", "generation"],
};

fn unavailable(error: StateError) -> ProjectionError {
    match error {
        StateError::Conflict(message) => ProjectionError::Internal(message),
        other => ProjectionError::Unavailable(other.to_string()),
    }
}

/// A generation number as a column value.
fn generation_column(generation: u64) -> Result<i64, ProjectionError> {
    i64::try_from(generation)
        .map_err(|_| ProjectionError::Internal(format!("generation {generation} is too large to store")))
}

/// Projection logs in PostgreSQL, written under the leader epoch `epoch` (see the module
/// [`crate::state`]). Blocking: call it from `spawn_blocking`, never from async code.
#[derive(Debug, Clone)]
pub struct PgProjectionStorage {
    pool: Pool,
    runtime: Handle,
    epoch: i64,
}

impl PgProjectionStorage {
    /// Projection logs over `pool` (a migrated schema), whose writes are refused once
    /// `factstore_leader.epoch` is no longer `epoch`; `runtime` runs the queries.
    pub fn new(pool: Pool, epoch: i64, runtime: Handle) -> PgProjectionStorage {
        PgProjectionStorage { pool, runtime, epoch }
    }

    fn log(&self, name: &str, generation: i64, records: &[Vec<u8>]) -> RecordLog {
        RecordLog::new(
            self.pool.clone(),
            self.runtime.clone(),
            self.epoch,
            &RECORDS,
            LogKey::Projection {
                name: name.to_owned(),
                generation,
            },
            records,
        )
    }

    async fn read_all(&self) -> Result<Vec<(String, i64, Vec<Vec<u8>>)>, StateError> {
        let mut client = self.pool.get().await?;
        // One snapshot for both reads: a generation and its records agree.
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let mut generations: BTreeMap<(String, i64), Vec<Vec<u8>>> = BTreeMap::new();
        for row in tx
            .query(
                "SELECT name, generation FROM factstore_projection_generations",
                &[],
            )
            .await?
        {
            generations.insert((row.get(0), row.get(1)), Vec::new());
        }
        for row in tx
            .query(
                "SELECT name, generation, record FROM factstore_projection_records \
                 ORDER BY name, generation, seq",
                &[],
            )
            .await?
        {
            let key: (String, i64) = (row.get(0), row.get(1));
            if let Some(records) = generations.get_mut(&key) {
                records.push(row.get(2));
            }
        }
        tx.commit().await?;
        Ok(generations
            .into_iter()
            .map(|((name, generation), records)| (name, generation, records))
            .collect())
    }

    async fn create_row(&self, name: &str, generation: i64) -> Result<(), StateError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        hold_lease(&tx, self.epoch).await?;
        // A leftover of a generation that was being removed is garbage: the caller picks
        // numbers above every live one.
        tx.execute(
            "DELETE FROM factstore_projection_generations WHERE name = $1 AND generation = $2",
            &[&name, &generation],
        )
        .await?;
        tx.execute(
            "INSERT INTO factstore_projection_generations (name, generation) VALUES ($1, $2)",
            &[&name, &generation],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn remove_row(&self, name: &str, generation: i64) -> Result<(), StateError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        hold_lease(&tx, self.epoch).await?;
        // Its records go with it (ON DELETE CASCADE).
        tx.execute(
            "DELETE FROM factstore_projection_generations WHERE name = $1 AND generation = $2",
            &[&name, &generation],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

#[derive(Debug)]
struct PgGenerationLog(RecordLog);

impl GenerationLog for PgGenerationLog {
    fn append(&self, records: &[&[u8]]) -> Result<(), ProjectionError> {
        self.0.append(records).map_err(unavailable)
    }

    fn rewrite(&self, records: &[&[u8]]) -> Result<(), ProjectionError> {
        self.0.rewrite(records).map_err(unavailable)
    }

    fn len(&self) -> u64 {
        self.0.len()
    }
}

impl ProjectionStorage for PgProjectionStorage {
    fn open_all(&self) -> Result<Vec<StoredGeneration>, ProjectionError> {
        let all = self.runtime.block_on(self.read_all()).map_err(unavailable)?;
        all.into_iter()
            .map(|(name, generation, records)| {
                let number = u64::try_from(generation).map_err(|_| {
                    ProjectionError::Internal(format!("projection '{name}' has generation {generation}"))
                })?;
                Ok(StoredGeneration {
                    log: Box::new(PgGenerationLog(self.log(&name, generation, &records))),
                    name,
                    generation: number,
                    records,
                })
            })
            .collect()
    }

    fn create(&self, name: &str, generation: u64) -> Result<Box<dyn GenerationLog>, ProjectionError> {
        let generation = generation_column(generation)?;
        self.runtime
            .block_on(self.create_row(name, generation))
            .map_err(unavailable)?;
        Ok(Box::new(PgGenerationLog(self.log(name, generation, &[]))))
    }

    fn remove(&self, name: &str, generation: u64) -> Result<(), ProjectionError> {
        let generation = generation_column(generation)?;
        self.runtime
            .block_on(self.remove_row(name, generation))
            .map_err(unavailable)
    }
}
