//! [`PgStore`]: the [`EventStore`] on PostgreSQL.

use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::Pool;
use factstore_core::snapshot::validate_latest_query;
use factstore_core::{
    AggregatePage, AggregateQuery, ArchiveOutcome, CommitOutcome, Direction, Event, EventPage, EventQuery,
    EventStore, Head, Limits, PreparedCommit, PutSnapshot, Snapshot, SnapshotInfo, SnapshotStored,
    StorageStats, StoreError, StoreHealth, Timestamp,
};
use futures::{StreamExt, TryStreamExt};
use postgres_types::Type;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;
use tokio_postgres::{AsyncMessage, Row};
use uuid::Uuid;

use crate::PgError;
use crate::archive::{Archive, ArchiveOptions, Payloads};
use crate::chain::Sequencer;
use crate::connect::Connector;
use crate::read_ahead::{ReadAhead, continuation, small};
use crate::sql::{EVENT_COLUMNS, Query, big, event_from_row, event_from_row_at};
use crate::types::{JsonText, Ts};
use crate::writer::{GroupLimits, WriteRequest, Writer};

/// How to open a [`PgStore`].
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// `postgres://user[:password]@host[:port]/database[?options]` (or a key=value string),
    /// with libpq's `sslmode` and `sslrootcert` (see [`crate::tls`]). It may not set
    /// `search_path`: that is `schema`.
    pub url: String,
    /// The schema every table is in (created by the migrations if missing), set as the
    /// connections' `search_path`. [`DEFAULT_SCHEMA`] unless told otherwise.
    pub schema: String,
    /// Run the missing migrations at open (the default). When false, a schema that is not at
    /// the newest migration is refused.
    pub migrate: bool,
    /// Connections for reads and snapshots (the writer has one of its own, the head listener
    /// another).
    pub pool_size: usize,
    /// How often the head is read in case a notification was lost (LISTEN/NOTIFY carries the
    /// news of other servers' commits; this bounds how late a lost one can make them).
    pub head_poll: Duration,
    /// The most events one group commit takes.
    pub group_events_max: usize,
    /// Writer tasks, each with its own connection (see the `writer` module): one group
    /// inserts while the group before it inserts or commits. More than 2 measured no better
    /// on 2 cores (the inserts are PostgreSQL's CPU).
    pub writers: usize,
    /// Groups of fewer events look their events' ids up before they are planned; larger ones
    /// count on the primary key to refuse a stored id (a retried commit), which sends the
    /// group the locking way. Only tests change it, to take either way with any commit.
    pub look_up_ids_below: usize,
    pub limits: Limits,
    /// Archiving: the cold store (none: not configured), the read cache, the chunk sizes.
    pub archive: ArchiveOptions,
}

/// The schema factstore's tables are in unless told otherwise: a schema of their own, so
/// that their names (`events`, the migrations table) meet no other application's.
pub const DEFAULT_SCHEMA: &str = "factstore";

impl PgOptions {
    pub fn new(url: &str) -> PgOptions {
        PgOptions {
            url: url.to_owned(),
            schema: DEFAULT_SCHEMA.to_owned(),
            migrate: true,
            pool_size: 16,
            head_poll: Duration::from_millis(500),
            group_events_max: 20_000,
            writers: 2,
            look_up_ids_below: crate::writer::LOOK_UP_IDS_BELOW,
            limits: Limits::default(),
            archive: ArchiveOptions::default(),
        }
    }
}

/// Reads pages from `query` on, each continuing the one before, and sends them to `pages`
/// until one is not full or below the head or is too large, a read fails, or the reader or the
/// store is gone.
/// The channel holds one page, and the page read after it waits for room: two ahead at most.
/// The store is held only while a page is read, so that waiting for room never keeps it open.
async fn read_ahead(store: Weak<Inner>, mut query: EventQuery, pages: mpsc::Sender<EventPage>) {
    loop {
        let Some(inner) = store.upgrade() else {
            return;
        };
        // A page that fails to be read ahead is read again when asked for, and fails then
        // with its reader's request.
        let Ok(page) = (PgStore { inner }).read_page(&query).await else {
            return;
        };
        let next = continuation(&query, &page).filter(|_| small(&page));
        if pages.send(page).await.is_err() {
            return;
        }
        match next {
            Some(next) => query = next,
            None => return,
        }
    }
}

/// Runs the missing migrations and returns the versions applied (`factstore migrate`).
pub async fn migrate(options: &PgOptions) -> Result<Vec<i32>, PgError> {
    let connector = Connector::new(options)?;
    let mut client = connector.connect().await?;
    crate::migrate::migrate(&mut client, connector.schema()).await
}

/// The event store on PostgreSQL. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: Pool,
    connector: Connector,
    limits: Limits,
    requests: mpsc::Sender<WriteRequest>,
    head: Arc<watch::Sender<u64>>,
    channel: String,
    tasks: Vec<AbortHandle>,
    archive: Arc<Archive>,
    read_ahead: ReadAhead,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl std::fmt::Debug for WriteRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteRequest").finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects, migrates (unless told not to), and starts the writer, the head listener and
    /// the head poll. Must run inside a Tokio runtime, which runs those tasks.
    pub async fn open(options: PgOptions) -> Result<PgStore, PgError> {
        options.limits.check().map_err(PgError::Config)?;
        let connector = Connector::new(&options)?;
        let mut client = connector.connect().await?;
        if options.migrate {
            crate::migrate::migrate(&mut client, connector.schema()).await?;
        }
        let schema = connector.schema().to_owned();
        check_schema_version(&client, &schema).await?;
        let archive = Arc::new(Archive::new(options.archive.clone()));
        archive.check_configured(&client).await?;
        let head_row = client
            .query_one("SELECT position FROM factstore_head WHERE id = 1", &[])
            .await?;
        let head_position: i64 = head_row.get(0);
        drop(client);

        let channel = channel_name(&schema);
        let pool = connector.pool(options.pool_size)?;
        let (head, _) = watch::channel(head_position as u64);
        let head = Arc::new(head);
        let (requests, receiver) = mpsc::channel(4096);
        let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
        let mut tasks = Vec::new();
        let sequencer = Arc::new(Sequencer::default());
        for _ in 0..options.writers.max(1) {
            let writer = Writer::new(
                connector.clone(),
                channel.clone(),
                head.clone(),
                GroupLimits {
                    events_max: options.group_events_max.max(1),
                    bytes_max: 64 << 20,
                    look_up_ids_below: options.look_up_ids_below,
                },
                archive.clone(),
                sequencer.clone(),
            );
            tasks.push(tokio::spawn(writer.run(receiver.clone())).abort_handle());
        }
        tasks.push(tokio::spawn(listen(connector.clone(), channel.clone(), head.clone())).abort_handle());
        tasks.push(tokio::spawn(poll_head(pool.clone(), head.clone(), options.head_poll)).abort_handle());
        tasks.push(tokio::spawn(maintain_events(pool.clone(), head.subscribe())).abort_handle());
        Ok(PgStore {
            inner: Arc::new(Inner {
                pool,
                connector,
                limits: options.limits,
                requests,
                head,
                channel,
                tasks,
                archive,
                read_ahead: ReadAhead::default(),
            }),
        })
    }

    /// The store's connection pool, for the state kept beside the events (projections,
    /// groups, schemas).
    pub fn pool(&self) -> Pool {
        self.inner.pool.clone()
    }

    /// How the store connects: for other sessions on its database and schema (the
    /// leadership's, the schema registry's listener).
    pub fn connector(&self) -> &Connector {
        &self.inner.connector
    }

    /// The NOTIFY channel commits to this schema are announced on.
    pub fn channel(&self) -> &str {
        &self.inner.channel
    }

    /// One page of `GET /v1/events`, read now.
    async fn read_page(&self, query: &EventQuery) -> Result<EventPage, StoreError> {
        // The head and the page in one statement, so one snapshot: the events it sees are
        // exactly those at or below the head it sees (a commit moves the head in the same
        // transaction as its inserts, under the head lock), a prefix of the positions. One
        // round trip per page.
        //
        // The page is bounded below only (`position > after`), and `to_position` is applied to
        // the page afterwards: among the first `limit` events after `after`, those at or below
        // `to` are the first `limit` of (after, to]. A range with two bounds is estimated at
        // 0.5% of the table when statistics are missing or stale (a table that just grew), and
        // the planner then sorts the whole range instead of walking the position index.
        let after = query.after_position;
        let limit = query.limit.max(1);
        let mut read = Query::new("");
        let after_p = read.param(big(after), Type::INT8);
        let upper = match query.to_position {
            Some(to) => format!("e.position <= {}", read.param(big(to), Type::INT8)),
            None => "true".to_owned(),
        };
        read.text = format!(
            "WITH h AS (SELECT position AS head FROM factstore_head WHERE id = 1) \
             SELECT h.head, e.* FROM h LEFT JOIN LATERAL (SELECT {EVENT_COLUMNS} FROM events \
             WHERE position > {after_p}"
        );
        read.filter(&query.filter);
        read.time_bounds(query.from, query.to, query.as_of);
        let limit_p = read.param(big(limit as u64), Type::INT8);
        read.text
            .push_str(&format!(" ORDER BY position LIMIT {limit_p}) e ON {upper}"));
        // Rows are decoded as they arrive, while PostgreSQL is still sending the rest of the
        // page, rather than after the last one. Archived rows wait for their chunks.
        let client = self.client().await?;
        let stream = client
            .query_typed_raw(&read.text, read.params())
            .await
            .map_err(PgError::from)?;
        futures::pin_mut!(stream);
        let mut head: Option<i64> = None;
        let mut events: Vec<Option<Event>> = Vec::new();
        let mut archived: Vec<Row> = Vec::new();
        let none = Payloads::default();
        while let Some(row) = stream.try_next().await.map_err(PgError::from)? {
            if head.is_none() {
                head = Some(row.try_get(0).map_err(PgError::from)?);
            }
            // A page with no event is one row of the head and NULLs.
            if row.try_get::<_, Option<i64>>(1).map_err(PgError::from)?.is_none() {
                continue;
            }
            if Archive::is_archived(&row, 1)? {
                events.push(None);
                archived.push(row);
            } else {
                events.push(Some(event_from_row_at(&row, 1, &none)?));
            }
        }
        if !archived.is_empty() {
            let payloads = self.inner.archive.payloads(&client, &archived, 1).await?;
            let mut filled = archived.iter().map(|row| event_from_row_at(row, 1, &payloads));
            for slot in events.iter_mut().filter(|slot| slot.is_none()) {
                if let Some(event) = filled.next() {
                    *slot = Some(event?);
                }
            }
        }
        drop(client);
        let events: Vec<Event> = events.into_iter().flatten().collect();
        let head = match head {
            Some(head) => head as u64,
            None => return Err(PgError::Corrupt("the head row is missing".into()).into()),
        };
        let range_end = head.min(query.to_position.unwrap_or(u64::MAX));
        Ok(EventPage::ending(events, after, limit, range_end, head))
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        Ok(self.inner.pool.get().await.map_err(PgError::from)?)
    }

    async fn events(&self, query: &Query) -> Result<Vec<Event>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query_typed(&query.text, &query.params())
            .await
            .map_err(PgError::from)?;
        let payloads = self.inner.archive.payloads(&client, &rows, 0).await?;
        Ok(rows
            .iter()
            .map(|row| event_from_row(row, &payloads))
            .collect::<Result<Vec<_>, _>>()?)
    }
}

async fn check_schema_version(client: &tokio_postgres::Client, schema: &str) -> Result<(), PgError> {
    let newest = crate::migrate::MIGRATIONS.last().map_or(0, |m| m.version);
    let exists: bool = client
        .query_one("SELECT to_regclass('factstore_migrations') IS NOT NULL", &[])
        .await?
        .get(0);
    let at: Option<i32> = if exists {
        client
            .query_one("SELECT max(version) FROM factstore_migrations", &[])
            .await?
            .get(0)
    } else {
        None
    };
    if at != Some(newest) {
        return Err(PgError::Config(format!(
            "schema '{schema}' is at migration {} but this factstore needs {newest}: run `factstore migrate`",
            at.unwrap_or(0)
        )));
    }
    Ok(())
}

/// One channel per schema, so that stores in different schemas of one database do not hear
/// each other. Channel names are identifiers: at most 63 bytes.
fn channel_name(schema: &str) -> String {
    let mut name = format!("factstore_head.{schema}");
    name.truncate(63);
    name
}

fn advance(head: &watch::Sender<u64>, position: u64) {
    head.send_if_modified(|h| {
        let moved = *h < position;
        if moved {
            *h = position;
        }
        moved
    });
}

/// Listens for other writers' commits (and this one's) on the channel; reconnects when the
/// connection drops. Each notification carries the head position its commit reached.
async fn listen(connector: Connector, channel: String, head: Arc<watch::Sender<u64>>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match connector.connect_raw().await {
            Ok((client, mut connection)) => {
                let (tx, mut rx) = mpsc::unbounded_channel();
                let messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
                let pump = tokio::spawn(messages.for_each(move |message| {
                    let _ = tx.send(message);
                    futures::future::ready(())
                }));
                let listen = format!("LISTEN \"{}\"", channel.replace('"', "\"\""));
                match client.batch_execute(&listen).await {
                    Ok(()) => {
                        backoff = Duration::from_millis(100);
                        while let Some(message) = rx.recv().await {
                            match message {
                                Ok(AsyncMessage::Notification(n)) => {
                                    if let Ok(position) = n.payload().parse::<u64>() {
                                        advance(&head, position);
                                    }
                                }
                                Ok(_) => {}
                                Err(error) => {
                                    tracing::warn!(error = %crate::describe(&error), "head listener lost its connection");
                                    break;
                                }
                            }
                        }
                    }
                    Err(error) => tracing::warn!(error = %crate::describe(&error), "LISTEN failed"),
                }
                pump.abort();
            }
            Err(error) => tracing::warn!(error = %crate::describe(&error), "head listener cannot connect"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Reads the head now and then, so that a lost notification (or one sent while the listener
/// was reconnecting) delays a subscriber by at most `every`.
async fn poll_head(pool: Pool, head: Arc<watch::Sender<u64>>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Ok(client) = pool.get().await else { continue };
        if let Ok(row) = client
            .query_one("SELECT position FROM factstore_head WHERE id = 1", &[])
            .await
        {
            let position: i64 = row.get(0);
            advance(&head, position as u64);
        }
    }
}

/// Every 5 s, once the table has 10,000 events: summarizes the filled block ranges of the
/// `created_at` and `recorded_at` BRIN indexes, and analyzes `events` whenever it has grown to
/// more than twice what the planner's statistics say (or has none).
///
/// A BRIN index covers a range of blocks only once it is summarized, which PostgreSQL does
/// only when asked (a vacuum, for an index with `autosummarize`); until then every read by time
/// scans the whole unsummarized part (0.65 s for a 0.1 s window of 1.3 million events, 3 ms
/// once summarized). Only filled ranges are summarized, as `autosummarize` does: a summarized
/// range still being filled would have its summary rewritten by commit after commit. Ranges
/// already summarized cost a look each, so a server starts from the first and then goes on
/// from where it got to. Concurrent summarizing (another server, a vacuum) waits for the lock
/// at most a second here, and is tried again at the next tick.
///
/// Statistics: autovacuum analyzes too, but only after its own delay: a table filled fast (an
/// import, a load test, a new database) is meanwhile planned as if it were small, and a page
/// whose filter the planner misjudges is then read by sorting every matching row rather than
/// walking an index in position order (a second per page at a million events). The decision
/// reads the database, so any number of servers agree on it.
async fn maintain_events(pool: Pool, mut head: watch::Receiver<u64>) {
    const ROWS_MIN: f32 = 10_000.0;
    let mut ticks = tokio::time::interval(Duration::from_secs(5));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut summarized_below: i64 = 0;
    loop {
        ticks.tick().await;
        let rows = *head.borrow_and_update() as f32;
        if rows < ROWS_MIN {
            continue;
        }
        let Ok(client) = pool.get().await else { continue };
        match summarize_filled_ranges(&client, summarized_below).await {
            Ok(filled) => summarized_below = filled,
            Err(error) => {
                let _ = client.batch_execute("ROLLBACK").await;
                tracing::debug!(error = %crate::describe(&error), "summarizing the time indexes waits for the next tick");
            }
        }
        let Ok(row) = client
            .query_one(
                "SELECT reltuples FROM pg_class WHERE oid = 'events'::regclass",
                &[],
            )
            .await
        else {
            continue;
        };
        let planned: f32 = row.get(0);
        if planned >= 0.0 && rows <= 2.0 * planned {
            continue;
        }
        let started = std::time::Instant::now();
        match client.batch_execute("ANALYZE events").await {
            Ok(()) => tracing::info!(
                rows,
                planned,
                millis = started.elapsed().as_millis() as u64,
                "analyzed the events table, which had outgrown its statistics"
            ),
            Err(error) => tracing::warn!(error = %crate::describe(&error), "ANALYZE events failed"),
        }
    }
}

/// Summarizes the ranges of the time indexes from block `from` to the last filled range;
/// returns the block where the unfilled part begins.
async fn summarize_filled_ranges(
    client: &tokio_postgres::Client,
    from: i64,
) -> Result<i64, tokio_postgres::Error> {
    // The indexes' pages_per_range (the default, 128).
    const RANGE: i64 = 128;
    let blocks: i64 = client
        .query_one(
            "SELECT pg_relation_size('events') / current_setting('block_size')::bigint",
            &[],
        )
        .await?
        .get(0);
    let filled = blocks / RANGE * RANGE;
    if filled <= from {
        return Ok(filled.max(from));
    }
    client
        .batch_execute(&format!(
            "BEGIN; SET LOCAL lock_timeout = '1s'; \
             SELECT brin_summarize_range('events_created_at_idx', b), \
             brin_summarize_range('events_recorded_at_idx', b) \
             FROM generate_series({from}::bigint, {last}::bigint, {RANGE}) AS b; COMMIT",
            last = filled - RANGE
        ))
        .await?;
    Ok(filled)
}

#[async_trait]
impl EventStore for PgStore {
    fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// A failed exchange with the database refuses only the commits of that group: the next
    /// group reconnects, so nothing here refuses writes for good unless every writer task has
    /// stopped (a bug), which only a restart mends.
    fn health(&self) -> StoreHealth {
        if self.inner.requests.is_closed() {
            StoreHealth::WritesRefused {
                reason: "the writer tasks have stopped; writes are refused until the server is restarted"
                    .to_owned(),
            }
        } else {
            StoreHealth::Writable
        }
    }

    async fn commit_prepared(&self, commit: PreparedCommit) -> Result<CommitOutcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .requests
            .send(WriteRequest { commit, reply })
            .await
            .map_err(|_| StoreError::Unavailable("the writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the writer has stopped".into()))?
    }

    async fn read_aggregate(&self, query: AggregateQuery) -> Result<AggregatePage, StoreError> {
        let not_found = || StoreError::AggregateNotFound {
            aggregate_id: query.aggregate_id.clone(),
        };
        let mut last = Query::new("SELECT aggregate_version, aggregate_type FROM events WHERE true");
        last.and("aggregate_id", "=", query.aggregate_id.clone(), Type::TEXT);
        if let Some(as_of) = query.as_of {
            // recorded_at never decreases along versions: the events recorded by then are a prefix.
            last.and("recorded_at", "<=", Ts(as_of), Type::TIMESTAMPTZ);
        }
        last.text.push_str(" ORDER BY aggregate_version DESC LIMIT 1");
        let row = {
            let client = self.client().await?;
            client
                .query_typed(&last.text, &last.params())
                .await
                .map_err(PgError::from)?
                .into_iter()
                .next()
        };
        let Some(row) = row else {
            return Err(not_found());
        };
        let current: i64 = row.get(0);
        let aggregate_type: String = row.get(1);
        let current = current as u64;
        let limit = query.limit.max(1);
        let mut read = Query::new(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE true"));
        read.and("aggregate_id", "=", query.aggregate_id.clone(), Type::TEXT);
        let (low, high, stop) = match query.direction {
            Direction::Forward => {
                let stop = query.to_version.unwrap_or(current).min(current);
                (query.from_version.unwrap_or(1).max(1), stop, stop)
            }
            Direction::Backward => {
                let stop = query.to_version.unwrap_or(1).max(1);
                (stop, query.from_version.unwrap_or(current).min(current), stop)
            }
        };
        let mut events = Vec::new();
        if low <= high {
            read.and("aggregate_version", ">=", big(low), Type::INT8);
            read.and("aggregate_version", "<=", big(high), Type::INT8);
            read.time_bounds(query.from, query.to, query.as_of);
            let order = match query.direction {
                Direction::Forward => "ASC",
                Direction::Backward => "DESC",
            };
            let p = read.param(big(limit as u64), Type::INT8);
            read.text
                .push_str(&format!(" ORDER BY aggregate_version {order} LIMIT {p}"));
            events = self.events(&read).await?;
        }
        let next_from_version = match (events.len() >= limit, events.last()) {
            (true, Some(last)) => {
                let v = last.version();
                match query.direction {
                    Direction::Forward => (v < stop).then_some(v + 1),
                    Direction::Backward => (v > stop).then_some(v - 1),
                }
            }
            _ => None,
        };
        Ok(AggregatePage {
            aggregate_id: query.aggregate_id,
            aggregate_type,
            version: current,
            events,
            next_from_version,
        })
    }

    async fn read_events(&self, query: EventQuery) -> Result<EventPage, StoreError> {
        let mut scan = self.inner.read_ahead.take(&query);
        let mut page = None;
        if let Some(ahead) = scan.as_mut()
            && let Some(mut ahead) = ahead.page().await
            && continuation(&query, &ahead).is_some()
        {
            ahead.head_position = ahead.head_position.max(*self.inner.head.borrow());
            page = Some(ahead);
        }
        let page = match page {
            Some(page) => page,
            None => {
                // The reader is given fresh pages from here on.
                scan = None;
                self.read_page(&query).await?
            }
        };
        if let Some((next, pages)) = self.inner.read_ahead.served(&query, &page, scan) {
            tokio::spawn(read_ahead(Arc::downgrade(&self.inner), next, pages));
        }
        Ok(page)
    }

    async fn get_event(&self, event_id: Uuid) -> Result<Event, StoreError> {
        let mut read = Query::new(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE true"));
        read.and("event_id", "=", event_id, Type::UUID);
        self.events(&read)
            .await?
            .into_iter()
            .next()
            .ok_or(StoreError::EventNotFound { event_id })
    }

    async fn head(&self) -> Result<Head, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached("SELECT position, recorded_at FROM factstore_head WHERE id = 1")
            .await
            .map_err(PgError::from)?;
        let row = client.query_one(&statement, &[]).await.map_err(PgError::from)?;
        let position: i64 = row.get(0);
        let recorded_at: Option<Ts> = row.get(1);
        Ok(Head {
            position: position as u64,
            recorded_at: recorded_at.filter(|_| position > 0).map(|t| t.0),
        })
    }

    async fn put_snapshot(&self, put: PutSnapshot) -> Result<SnapshotStored, StoreError> {
        let snapshot = put.prepare(&self.inner.limits, Timestamp::now())?;
        let client = self.client().await?;
        let current = client
            .query_typed(
                "SELECT aggregate_version FROM events WHERE aggregate_id = $1 \
                 ORDER BY aggregate_version DESC LIMIT 1",
                &[(&snapshot.aggregate_id, Type::TEXT)],
            )
            .await
            .map_err(PgError::from)?
            .first()
            .map_or(0, |row| row.get::<_, i64>(0) as u64);
        if snapshot.version > current {
            return Err(StoreError::InvalidSnapshot {
                aggregate_id: snapshot.aggregate_id,
                version: snapshot.version,
                current_version: current,
            });
        }
        let statement = client
            .prepare_cached(
                "INSERT INTO snapshots (aggregate_id, version, snapshot_type, snapshot_version, state, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (aggregate_id, version) DO UPDATE SET snapshot_type = EXCLUDED.snapshot_type, \
                 snapshot_version = EXCLUDED.snapshot_version, state = EXCLUDED.state, \
                 created_at = EXCLUDED.created_at \
                 RETURNING xmax::text <> '0'",
            )
            .await
            .map_err(PgError::from)?;
        let row = client
            .query_one(
                &statement,
                &[
                    &snapshot.aggregate_id,
                    &big(snapshot.version),
                    &snapshot.snapshot_type,
                    &(snapshot.snapshot_version as i32),
                    &JsonText(&snapshot.state),
                    &Ts(snapshot.created_at),
                ],
            )
            .await
            .map_err(PgError::from)?;
        // xmax is set on the row version an upsert's UPDATE wrote, zero on a fresh insert.
        let replaced: bool = row.get(0);
        Ok(SnapshotStored {
            info: snapshot.info(),
            replaced,
        })
    }

    async fn latest_snapshot(
        &self,
        aggregate_id: &str,
        max_version: Option<u64>,
    ) -> Result<Snapshot, StoreError> {
        validate_latest_query(aggregate_id, max_version, &self.inner.limits)?;
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT version, snapshot_type, snapshot_version, state, created_at FROM snapshots \
                 WHERE aggregate_id = $1 AND version <= $2 ORDER BY version DESC LIMIT 1",
            )
            .await
            .map_err(PgError::from)?;
        let max = big(max_version.unwrap_or(u64::MAX));
        let rows = client
            .query(&statement, &[&aggregate_id, &max])
            .await
            .map_err(PgError::from)?;
        let Some(row) = rows.first() else {
            return Err(StoreError::SnapshotNotFound {
                aggregate_id: aggregate_id.to_owned(),
                max_version,
            });
        };
        let version: i64 = row.get(0);
        let snapshot_version: i32 = row.get(2);
        let state: JsonText<'_> = row.get(3);
        let created_at: Ts = row.get(4);
        Ok(Snapshot {
            aggregate_id: aggregate_id.to_owned(),
            version: version as u64,
            snapshot_type: row.get(1),
            snapshot_version: snapshot_version as u32,
            state: state.0.to_owned(),
            created_at: created_at.0,
        })
    }

    async fn list_snapshots(&self, aggregate_id: &str) -> Result<Vec<SnapshotInfo>, StoreError> {
        factstore_core::append::validate_aggregate_id(aggregate_id, &self.inner.limits)?;
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT version, snapshot_type, snapshot_version, created_at FROM snapshots \
                 WHERE aggregate_id = $1 ORDER BY version",
            )
            .await
            .map_err(PgError::from)?;
        let rows = client
            .query(&statement, &[&aggregate_id])
            .await
            .map_err(PgError::from)?;
        Ok(rows
            .iter()
            .map(|row| {
                let version: i64 = row.get(0);
                let snapshot_version: i32 = row.get(2);
                let created_at: Ts = row.get(3);
                SnapshotInfo {
                    version: version as u64,
                    snapshot_type: row.get(1),
                    snapshot_version: snapshot_version as u32,
                    created_at: created_at.0,
                }
            })
            .collect())
    }

    async fn archive(&self, before: Timestamp) -> Result<ArchiveOutcome, StoreError> {
        self.inner.archive.archive(&self.inner.pool, before).await
    }

    async fn storage(&self) -> Result<StorageStats, StoreError> {
        let client = self.client().await?;
        Ok(self.inner.archive.storage(&client).await?)
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.inner.head.subscribe()
    }
}
