//! [`PgSchemaStorage`]: the schema registry's records in `factstore_schema_records`, shared by
//! every server on the database, and [`spawn_schema_refresh`], which keeps a server's registry
//! up to date with what the others register.
//!
//! Any server may register. An append holds a transaction advisory lock (one per schema) and
//! writes only if no record was appended since this storage last read: otherwise it returns
//! [`SchemaError::Stale`] without writing, and the registry refreshes and decides again. So the
//! records form one gap-free history, `seq` 1, 2, 3, …, that every server applies in order.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use factstore_schemas::storage::Record;
use factstore_schemas::{SchemaError, SchemaRegistry, SchemaStorage};
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_postgres::AsyncMessage;

use super::StateError;
use crate::PgError;
use crate::connect::Connector;

/// The NOTIFY channel on which appends to the registry of `schema` are announced. Channel
/// names are identifiers: at most 63 bytes.
pub fn schema_channel(schema: &str) -> String {
    let mut name = format!("factstore_schemas.{schema}");
    let mut end = name.len().min(63);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name.truncate(end);
    name
}

fn unavailable(error: impl std::fmt::Display) -> SchemaError {
    SchemaError::Unavailable(error.to_string())
}

/// The registry's records in PostgreSQL. Blocking: call it from `spawn_blocking`, never from
/// async code.
#[derive(Debug)]
pub struct PgSchemaStorage {
    pool: Pool,
    runtime: Handle,
    /// The key of the advisory lock appends take: `factstore.schemas.<schema>`.
    lock_key: String,
    channel: String,
    /// The `seq` of the last record this storage read or appended.
    seen: Mutex<i64>,
}

impl PgSchemaStorage {
    /// The registry's records over `pool` (a migrated schema). Must run in the Tokio runtime
    /// that will run its queries.
    pub async fn open(pool: Pool) -> Result<PgSchemaStorage, PgError> {
        let client = pool.get().await?;
        let schema: Option<String> = client.query_one("SELECT current_schema()", &[]).await?.get(0);
        let schema =
            schema.ok_or_else(|| PgError::Config("the first schema of search_path does not exist".into()))?;
        drop(client);
        Ok(PgSchemaStorage {
            pool,
            runtime: Handle::current(),
            lock_key: format!("factstore.schemas.{schema}"),
            channel: schema_channel(&schema),
            seen: Mutex::new(0),
        })
    }

    /// The NOTIFY channel appends are announced on.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The records after `after`, with their `seq`, in order.
    async fn read_after(&self, after: i64) -> Result<Vec<(i64, Record)>, SchemaError> {
        let client = self.pool.get().await.map_err(unavailable)?;
        let rows = client
            .query(
                "SELECT seq, record::text FROM factstore_schema_records WHERE seq > $1 ORDER BY seq",
                &[&after],
            )
            .await
            .map_err(|e| unavailable(PgError::from(e)))?;
        rows.iter()
            .map(|row| {
                let seq: i64 = row.get(0);
                let text: &str = row.get(1);
                let record = serde_json::from_str(text).map_err(|e| {
                    SchemaError::Unavailable(format!(
                        "record {seq} of factstore_schema_records is not a registry record: {e}"
                    ))
                })?;
                Ok((seq, record))
            })
            .collect()
    }

    /// Appends `record` as `seen + 1`, unless a record follows `seen` already (`Ok(false)`).
    async fn insert(&self, seen: i64, record: &str) -> Result<bool, StateError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            &[&self.lock_key],
        )
        .await?;
        let last: i64 = tx
            .query_one("SELECT coalesce(max(seq), 0) FROM factstore_schema_records", &[])
            .await?
            .get(0);
        if last != seen {
            return Ok(false);
        }
        let seq = seen + 1;
        tx.execute(
            "INSERT INTO factstore_schema_records (seq, record) VALUES ($1, $2::text::json)",
            &[&seq, &record],
        )
        .await?;
        // Delivered at the commit, to every server listening.
        tx.execute("SELECT pg_notify($1, $2)", &[&self.channel, &seq.to_string()])
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    fn read_new(&self) -> Result<Vec<Record>, SchemaError> {
        let mut seen = self.seen.lock();
        let records = self.runtime.block_on(self.read_after(*seen))?;
        if let Some((last, _)) = records.last() {
            *seen = *last;
        }
        Ok(records.into_iter().map(|(_, r)| r).collect())
    }
}

impl SchemaStorage for PgSchemaStorage {
    fn load(&self) -> Result<Vec<Record>, SchemaError> {
        *self.seen.lock() = 0;
        self.read_new()
    }

    fn load_new(&self) -> Result<Vec<Record>, SchemaError> {
        self.read_new()
    }

    fn append(&self, record: &Record) -> Result<(), SchemaError> {
        let text = serde_json::to_string(record).map_err(unavailable)?;
        let mut seen = self.seen.lock();
        if self
            .runtime
            .block_on(self.insert(*seen, &text))
            .map_err(unavailable)?
        {
            *seen += 1;
            Ok(())
        } else {
            Err(SchemaError::Stale)
        }
    }
}

/// Keeps `registry` (over a [`PgSchemaStorage`] of the schema of `connector`) up to date with
/// what other servers register: it listens for their appends (reconnecting when the connection
/// drops) and also refreshes every second, in case a notification was lost. Runs until
/// aborted; must run inside the Tokio runtime.
pub fn spawn_schema_refresh(registry: Arc<SchemaRegistry>, connector: &Connector) -> AbortHandle {
    let connector = connector.clone();
    tokio::spawn(async move {
        let (poke, mut poked) = mpsc::channel::<()>(1);
        let listener = listen(connector, poke);
        let refresher = async move {
            let mut ticks = tokio::time::interval(Duration::from_secs(1));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = poked.recv() => {}
                }
                let registry = registry.clone();
                match tokio::task::spawn_blocking(move || registry.refresh()).await {
                    Ok(Ok(0)) => {}
                    Ok(Ok(count)) => {
                        tracing::debug!(count, "schema registry: applied records of other servers")
                    }
                    Ok(Err(error)) => tracing::warn!(%error, "schema registry: refresh failed"),
                    Err(error) => tracing::warn!(%error, "schema registry: refresh task failed"),
                }
            }
        };
        tokio::join!(listener, refresher);
    })
    .abort_handle()
}

/// LISTENs on the registry's channel and pokes at each notification; reconnects when the
/// connection drops. The connection is driven here, so aborting the task closes it.
async fn listen(connector: Connector, poke: mpsc::Sender<()>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match connector.connect_raw().await {
            // `client` lives to the end of this arm: dropping it would end the LISTEN.
            Ok((client, mut connection)) => {
                let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
                let setup = async {
                    let schema: Option<String> =
                        client.query_one("SELECT current_schema()", &[]).await?.get(0);
                    let channel = schema_channel(&schema.unwrap_or_default());
                    client
                        .batch_execute(&format!("LISTEN \"{}\"", channel.replace('"', "\"\"")))
                        .await
                };
                tokio::pin!(setup);
                // The connection must be polled for the setup's queries to complete.
                let listening = loop {
                    tokio::select! {
                        done = &mut setup => break done.map_err(|e| crate::describe(&e)),
                        message = messages.next() => match message {
                            Some(Ok(_)) => {}
                            Some(Err(error)) => break Err(crate::describe(&error)),
                            None => break Err("the connection closed".to_owned()),
                        },
                    }
                };
                match listening {
                    Ok(()) => {
                        backoff = Duration::from_millis(100);
                        // What was registered while not listening.
                        let _ = poke.try_send(());
                        loop {
                            match messages.next().await {
                                Some(Ok(AsyncMessage::Notification(_))) => {
                                    let _ = poke.try_send(());
                                }
                                Some(Ok(_)) => {}
                                Some(Err(error)) => {
                                    tracing::warn!(error = %crate::describe(&error), "schema registry listener lost its connection");
                                    break;
                                }
                                None => break,
                            }
                        }
                    }
                    Err(error) => tracing::warn!(%error, "schema registry: LISTEN failed"),
                }
            }
            Err(error) => {
                tracing::warn!(error = %crate::describe(&error), "schema registry listener cannot connect")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
