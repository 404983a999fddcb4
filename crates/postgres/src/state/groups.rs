//! [`PgGroupStorage`]: persistent-subscription groups' records in `factstore_group_records`,
//! written under the leader's fence.

use std::sync::Arc;

use deadpool_postgres::Pool;
use factstore_subscriptions::{GroupLog, Storage, SubscriptionError};
use tokio::runtime::Handle;

use super::{LogKey, RecordLog, StateError, Table, hold_lease, insert_rows};

static RECORDS: Table = Table {
    records: "factstore_group_records",
    key_columns: &["group_name"],
};

fn unavailable(error: StateError) -> SubscriptionError {
    match error {
        StateError::Conflict(message) => SubscriptionError::Internal(message),
        other => SubscriptionError::Unavailable(other.to_string()),
    }
}

/// Group logs in PostgreSQL, written under the leader epoch `epoch` (see the module
/// [`crate::state`]). Blocking: call it from `spawn_blocking`, never from async code.
#[derive(Debug, Clone)]
pub struct PgGroupStorage {
    pool: Pool,
    runtime: Handle,
    epoch: i64,
}

impl PgGroupStorage {
    /// Group logs over `pool` (a migrated schema), whose writes are refused once
    /// `factstore_leader.epoch` is no longer `epoch`; `runtime` runs the queries.
    pub fn new(pool: Pool, epoch: i64, runtime: Handle) -> PgGroupStorage {
        PgGroupStorage { pool, runtime, epoch }
    }

    fn log(&self, group: &str, records: &[impl AsRef<[u8]>]) -> Arc<PgGroupLog> {
        Arc::new(PgGroupLog(RecordLog::new(
            self.pool.clone(),
            self.runtime.clone(),
            self.epoch,
            &RECORDS,
            LogKey::Group {
                name: group.to_owned(),
            },
            records,
        )))
    }

    async fn read_all(&self) -> Result<Vec<(String, Vec<Vec<u8>>)>, StateError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT group_name, record FROM factstore_group_records ORDER BY group_name, seq",
                &[],
            )
            .await?;
        let mut out: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
        for row in rows {
            let group: String = row.get(0);
            let record: Vec<u8> = row.get(1);
            match out.last_mut() {
                Some((last, records)) if *last == group => records.push(record),
                _ => out.push((group, vec![record])),
            }
        }
        Ok(out)
    }

    async fn create_rows(&self, group: &str, records: &[&[u8]]) -> Result<(), StateError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        hold_lease(&tx, self.epoch).await?;
        let exists = tx
            .query_opt(
                "SELECT 1 FROM factstore_group_records WHERE group_name = $1 LIMIT 1",
                &[&group],
            )
            .await?
            .is_some();
        if exists {
            return Err(StateError::Conflict(format!(
                "group '{group}' already has records in factstore_group_records"
            )));
        }
        let key = LogKey::Group {
            name: group.to_owned(),
        };
        insert_rows(&tx, &RECORDS, &key, records).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn delete_rows(&self, group: &str) -> Result<(), StateError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        hold_lease(&tx, self.epoch).await?;
        tx.execute(
            "DELETE FROM factstore_group_records WHERE group_name = $1",
            &[&group],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

#[derive(Debug)]
struct PgGroupLog(RecordLog);

impl GroupLog for PgGroupLog {
    fn append(&self, records: &[&[u8]]) -> Result<(), SubscriptionError> {
        self.0.append(records).map_err(unavailable)
    }

    fn rewrite(&self, records: &[&[u8]]) -> Result<(), SubscriptionError> {
        self.0.rewrite(records).map_err(unavailable)
    }

    fn len(&self) -> u64 {
        self.0.len()
    }
}

impl Storage for PgGroupStorage {
    fn load(&self) -> Result<Vec<(String, Arc<dyn GroupLog>, Vec<Vec<u8>>)>, SubscriptionError> {
        // A group is created with its records in one transaction: there is no half-created
        // group to clean up.
        let all = self.runtime.block_on(self.read_all()).map_err(unavailable)?;
        Ok(all
            .into_iter()
            .map(|(group, records)| {
                let log = self.log(&group, &records) as Arc<dyn GroupLog>;
                (group, log, records)
            })
            .collect())
    }

    fn create(&self, group: &str, records: &[&[u8]]) -> Result<Arc<dyn GroupLog>, SubscriptionError> {
        self.runtime
            .block_on(self.create_rows(group, records))
            .map_err(unavailable)?;
        Ok(self.log(group, records))
    }

    fn delete(&self, group: &str) -> Result<(), SubscriptionError> {
        self.runtime
            .block_on(self.delete_rows(group))
            .map_err(unavailable)
    }
}
