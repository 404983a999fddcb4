//! Group commit in front of PostgreSQL.
//!
//! # The write path (see `docs/postgres.md`)
//! A writer task owns one connection. It takes the first waiting commit and every other
//! waiting commit (up to the group limits), then, in one pipelined exchange:
//! 1. `BEGIN`; lock the head row (`SELECT … FOR UPDATE`): from here until `COMMIT` no other
//!    writer, on this server or another, can take a position;
//! 2. look up, in the same exchange, everything the checks need: the stored events with the
//!    group's client-chosen ids, the current version and type of every aggregate the group
//!    touches, and for each conditional commit the first stored event that passes its filter.
//!
//! Then it decides each commit of the group on its own, in order, against what is stored plus
//! the commits before it in the group (a failing commit writes nothing and does not fail the
//! others), and, in a second pipelined exchange, inserts the events that passed (one
//! multi-row `INSERT … SELECT FROM unnest(…)`), moves the head, sends `NOTIFY` and commits.
//! Only when `COMMIT` returns (the WAL is flushed, with `synchronous_commit` on) are the
//! commits answered and the local head published.
//!
//! A store runs two writers by default: while one waits for its `COMMIT`, the other has
//! already queued its group behind the head lock. Their groups still commit one at a time, in
//! position order, because each takes its positions under the lock; and each sees what the
//! other committed, because its lookups run (read committed) after it got the lock.
//!
//! A failed exchange answers the whole group `store_unavailable` and drops the connection (the
//! next group reconnects). When `COMMIT` itself fails the outcome is unknown; a client that
//! retries with its event ids gets the original outcome if it was written.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use factstore_core::{
    AppendedAggregate, AppendedEvent, CommitOutcome, Event, EventFilter, PreparedCommit, StoreError,
    Timestamp,
};
use postgres_types::{ToSql, Type};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::{Client, Statement};
use uuid::Uuid;

use crate::PgError;
use crate::archive::Archive;
use crate::sql::{EVENT_COLUMNS, Query, big, event_from_row};
use crate::types::Ts;

/// A commit waiting for the writer.
pub struct WriteRequest {
    pub commit: PreparedCommit,
    pub reply: oneshot::Sender<Result<CommitOutcome, StoreError>>,
}

/// How much one group may hold.
#[derive(Debug, Clone, Copy)]
pub struct GroupLimits {
    pub events_max: usize,
    pub bytes_max: usize,
}

/// The writer's connection and its prepared statements.
struct Conn {
    client: Client,
    lock_head: Statement,
    find_ids: Statement,
    aggregates: Statement,
    insert: Statement,
    update_head: Statement,
    notify: Statement,
}

pub struct Writer {
    pub config: tokio_postgres::Config,
    pub channel: String,
    pub head: Arc<watch::Sender<u64>>,
    pub limits: GroupLimits,
    /// Fills in archived payloads of the stored events an idempotent replay is compared with.
    archive: Arc<Archive>,
    conn: Option<Conn>,
}

/// The outcome of one try at a group.
enum Written {
    /// Each commit's answer, in order.
    Answers(Vec<Result<CommitOutcome, StoreError>>),
    /// Idempotent replays of archived events need these chunks (with the ids of the rows in
    /// each), which are not cached: the transaction was rolled back, to fetch them without
    /// holding the head lock.
    NeedChunks(Vec<(i64, Vec<Uuid>)>),
}

/// What the group decided so far: the events that passed, and the state they leave behind.
#[derive(Default)]
struct Pending {
    events: Vec<Event>,
    by_id: HashMap<Uuid, usize>,
    aggregates: HashMap<String, (u64, String)>,
}

const INSERT: &str = "INSERT INTO events (position, event_id, aggregate_id, aggregate_version, \
    aggregate_type, event_type, event_version, event_data, created_at, recorded_at, created_by, \
    metadata, correlation_id, causation_id) \
    SELECT t.position, t.event_id, t.aggregate_id, t.aggregate_version, t.aggregate_type, t.event_type, \
    t.event_version, t.event_data::json, t.created_at, $14, t.created_by, t.metadata::json, \
    t.correlation_id, t.causation_id \
    FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::bigint[], $5::text[], $6::text[], \
    $7::int4[], $8::text[], $9::timestamptz[], $10::text[], $11::text[], $12::text[], $13::text[]) \
    AS t(position, event_id, aggregate_id, aggregate_version, aggregate_type, event_type, \
    event_version, event_data, created_at, created_by, metadata, correlation_id, causation_id)";

/// The last event of each aggregate: its version and type (an aggregate keeps one type).
const AGGREGATES: &str = "SELECT a.id, e.aggregate_version, e.aggregate_type FROM unnest($1::text[]) AS a(id) \
    CROSS JOIN LATERAL (SELECT aggregate_version, aggregate_type FROM events \
    WHERE aggregate_id = a.id ORDER BY aggregate_version DESC LIMIT 1) e";

impl Writer {
    pub fn new(
        config: tokio_postgres::Config,
        channel: String,
        head: Arc<watch::Sender<u64>>,
        limits: GroupLimits,
        archive: Arc<Archive>,
    ) -> Writer {
        Writer {
            config,
            channel,
            head,
            limits,
            archive,
            conn: None,
        }
    }

    /// Serves commits until every sender is gone. Several writers may share one receiver:
    /// each takes a group in turn, and while one waits for its `COMMIT` the next already has
    /// its group's statements queued behind the head lock, so the lock never idles for a
    /// round trip.
    pub async fn run(mut self, requests: Arc<tokio::sync::Mutex<mpsc::Receiver<WriteRequest>>>) {
        loop {
            let group = {
                let mut requests = requests.lock().await;
                let Some(first) = requests.recv().await else {
                    return;
                };
                let mut events = first.commit.event_count;
                let mut bytes = commit_bytes(&first.commit);
                let mut group = vec![first];
                while events < self.limits.events_max && bytes < self.limits.bytes_max {
                    match requests.try_recv() {
                        Ok(request) => {
                            events += request.commit.event_count;
                            bytes += commit_bytes(&request.commit);
                            group.push(request);
                        }
                        Err(_) => break,
                    }
                }
                group
            };
            self.process(group).await;
        }
    }

    async fn process(&mut self, mut group: Vec<WriteRequest>) {
        // A replay of archived events is compared with the stored ones, whose payloads may
        // have to come from cold storage: fetched between tries, outside the head lock, so
        // that a slow or unreachable cold store holds up only the commits that need it. The
        // last try fetches under the lock (the cache may have evicted a chunk meanwhile).
        const TRIES: usize = 3;
        for attempt in 1..=TRIES {
            let commits: Vec<&PreparedCommit> = group.iter().map(|r| &r.commit).collect();
            let started = std::time::Instant::now();
            match self.write_group(&commits, attempt == TRIES).await {
                Ok(Written::Answers(answers)) => {
                    tracing::debug!(
                        commits = commits.len(),
                        events = commits.iter().map(|c| c.event_count).sum::<usize>(),
                        micros = started.elapsed().as_micros() as u64,
                        "group committed"
                    );
                    for (request, answer) in group.into_iter().zip(answers) {
                        let _ = request.reply.send(answer);
                    }
                    return;
                }
                Ok(Written::NeedChunks(needs)) => {
                    let archive = self.archive.clone();
                    let mut unavailable: HashMap<Uuid, String> = HashMap::new();
                    for (chunk_id, ids) in needs {
                        let fetched = match self.connection().await {
                            Ok(conn) => archive.warm(&conn.client, chunk_id).await,
                            Err(error) => Err(error),
                        };
                        if let Err(error) = fetched {
                            let reason = error.to_string();
                            unavailable.extend(ids.into_iter().map(|id| (id, reason.clone())));
                        }
                    }
                    if !unavailable.is_empty() {
                        let (failed, rest): (Vec<_>, Vec<_>) = group.into_iter().partition(|request| {
                            request
                                .commit
                                .appends
                                .iter()
                                .flat_map(|a| &a.events)
                                .any(|e| e.client_event_id && unavailable.contains_key(&e.event_id))
                        });
                        for request in failed {
                            let reason = request
                                .commit
                                .appends
                                .iter()
                                .flat_map(|a| &a.events)
                                .find_map(|e| unavailable.get(&e.event_id))
                                .cloned()
                                .unwrap_or_default();
                            let _ = request.reply.send(Err(StoreError::Unavailable(format!(
                                "this commit repeats archived events, which cannot be compared with it now: \
                                 {reason}; nothing was written, retry it later"
                            ))));
                        }
                        group = rest;
                    }
                    if group.is_empty() {
                        return;
                    }
                }
                Err(error) => {
                    // The connection may be mid-transaction or gone: start afresh next time.
                    self.conn = None;
                    let reason = error.to_string();
                    tracing::error!(%reason, commits = group.len(), "group commit failed");
                    for request in group {
                        let _ = request.reply.send(Err(StoreError::Unavailable(format!(
                            "{reason} (the commit may or may not have been written; retry it with the same event ids)"
                        ))));
                    }
                    return;
                }
            }
        }
    }

    async fn connection(&mut self) -> Result<&Conn, PgError> {
        if self.conn.is_none() {
            self.conn = Some(connect(&self.config).await?);
        }
        self.conn
            .as_ref()
            .ok_or_else(|| PgError::Config("no writer connection".into()))
    }

    async fn write_group(
        &mut self,
        commits: &[&PreparedCommit],
        fetch_under_lock: bool,
    ) -> Result<Written, PgError> {
        let mut ids: Vec<Uuid> = Vec::new();
        let mut aggregate_ids: Vec<&str> = Vec::new();
        let mut seen: HashSet<&str> = HashSet::new();
        let mut conditions: Vec<(usize, Query)> = Vec::new();
        for (index, commit) in commits.iter().enumerate() {
            for append in &commit.appends {
                if seen.insert(&append.aggregate_id) {
                    aggregate_ids.push(&append.aggregate_id);
                }
                ids.extend(
                    append
                        .events
                        .iter()
                        .filter(|e| e.client_event_id)
                        .map(|e| e.event_id),
                );
            }
            if let Some(condition) = &commit.condition {
                conditions.push((
                    index,
                    condition_query(&condition.filter, condition.after_position),
                ));
            }
        }
        let channel = self.channel.clone();
        let head = self.head.clone();
        let archive = self.archive.clone();
        let conn = self.connection().await?;
        let client = &conn.client;

        // Exchange 1: begin, lock, look up. Futures polled together are pipelined on one
        // connection: every statement goes out before the first answer comes back.
        let condition_params: Vec<_> = conditions.iter().map(|(_, q)| q.params()).collect();
        let condition_futures = conditions
            .iter()
            .zip(&condition_params)
            .map(|((_, q), params)| client.query_typed(&q.text, params));
        let id_params: [&(dyn ToSql + Sync); 1] = [&ids];
        let aggregate_params: [&(dyn ToSql + Sync); 1] = [&aggregate_ids];
        let (_, head_row, stored_rows, aggregate_rows, condition_rows) = futures::try_join!(
            client.batch_execute("BEGIN"),
            client.query_one(&conn.lock_head, &[]),
            client.query(&conn.find_ids, &id_params),
            client.query(&conn.aggregates, &aggregate_params),
            futures::future::try_join_all(condition_futures),
        )?;
        let head_position: i64 = head_row.try_get(0)?;
        let head_recorded: Option<Ts> = head_row.try_get(1)?;
        let recorded_at = head_recorded.map_or(Timestamp::now(), |last| Timestamp::now().max(last.0));
        let mut stored: HashMap<Uuid, Event> = HashMap::with_capacity(stored_rows.len());
        if !fetch_under_lock {
            let needs = archive.uncached(&stored_rows, 0)?;
            if !needs.is_empty() {
                client.batch_execute("ROLLBACK").await?;
                return Ok(Written::NeedChunks(needs));
            }
        }
        let payloads = archive.payloads(client, &stored_rows, 0).await?;
        for row in &stored_rows {
            let event = event_from_row(row, &payloads)?;
            stored.insert(event.event_id(), event);
        }
        let mut states: HashMap<String, (u64, String)> = HashMap::with_capacity(aggregate_rows.len());
        for row in &aggregate_rows {
            let id: String = row.try_get(0)?;
            let version: i64 = row.try_get(1)?;
            let aggregate_type: String = row.try_get(2)?;
            states.insert(id, (version as u64, aggregate_type));
        }
        let mut condition_hits: HashMap<usize, u64> = HashMap::new();
        for ((index, _), rows) in conditions.iter().zip(&condition_rows) {
            if let Some(row) = rows.first() {
                let position: i64 = row.try_get(0)?;
                condition_hits.insert(*index, position as u64);
            }
        }

        // Decide each commit in order against the store and the group so far.
        let mut pending = Pending::default();
        let mut next_position = head_position as u64 + 1;
        let answers: Vec<Result<CommitOutcome, StoreError>> = commits
            .iter()
            .enumerate()
            .map(|(index, commit)| {
                decide(
                    commit,
                    &stored,
                    &states,
                    condition_hits.get(&index).copied(),
                    &mut pending,
                    &mut next_position,
                    recorded_at,
                )
            })
            .collect();

        if pending.events.is_empty() {
            client.batch_execute("ROLLBACK").await?;
            return Ok(Written::Answers(answers));
        }

        // Exchange 2: insert, move the head, notify, commit.
        let events = &pending.events;
        let positions: Vec<i64> = events.iter().map(|e| e.position() as i64).collect();
        let event_ids: Vec<Uuid> = events.iter().map(Event::event_id).collect();
        let aggregates: Vec<&str> = events.iter().map(Event::aggregate_id).collect();
        let versions: Vec<i64> = events.iter().map(|e| e.version() as i64).collect();
        let aggregate_types: Vec<&str> = events.iter().map(Event::aggregate_type).collect();
        let event_types: Vec<&str> = events.iter().map(Event::event_type).collect();
        let event_versions: Vec<i32> = events.iter().map(|e| e.event_version() as i32).collect();
        let data: Vec<&str> = events.iter().map(Event::event_data).collect();
        let created_at: Vec<Ts> = events.iter().map(|e| Ts(e.created_at())).collect();
        let created_by: Vec<Option<&str>> = events.iter().map(Event::created_by).collect();
        let metadata: Vec<Option<&str>> = events.iter().map(Event::metadata).collect();
        let correlation: Vec<Option<&str>> = events.iter().map(Event::correlation_id).collect();
        let causation: Vec<Option<&str>> = events.iter().map(Event::causation_id).collect();
        let last_position = next_position as i64 - 1;
        let recorded = Ts(recorded_at);
        let payload = last_position.to_string();
        let insert_params: [&(dyn ToSql + Sync); 14] = [
            &positions,
            &event_ids,
            &aggregates,
            &versions,
            &aggregate_types,
            &event_types,
            &event_versions,
            &data,
            &created_at,
            &created_by,
            &metadata,
            &correlation,
            &causation,
            &recorded,
        ];
        let head_params: [&(dyn ToSql + Sync); 2] = [&last_position, &recorded];
        let notify_params: [&(dyn ToSql + Sync); 2] = [&channel, &payload];
        let (inserted, _, _, _) = futures::try_join!(
            client.execute(&conn.insert, &insert_params),
            client.execute(&conn.update_head, &head_params),
            client.execute(&conn.notify, &notify_params),
            client.batch_execute("COMMIT"),
        )?;
        if inserted != events.len() as u64 {
            return Err(PgError::Corrupt(format!(
                "inserted {inserted} events of {}",
                events.len()
            )));
        }
        head.send_if_modified(|head| {
            let moved = *head < last_position as u64;
            if moved {
                *head = last_position as u64;
            }
            moved
        });
        Ok(Written::Answers(answers))
    }
}

/// Opens the writer's connection: `synchronous_commit` on (a commit is answered only once
/// durable) and the statements prepared once.
async fn connect(config: &tokio_postgres::Config) -> Result<Conn, PgError> {
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(error = %crate::describe(&error), "writer connection closed");
        }
    });
    // Every execution is planned with the table as it is now. A prepared statement otherwise
    // settles, after five executions, on a generic plan made for the table of that moment: on a
    // fresh database that is a hash join over a sequential scan of a nearly empty table, kept
    // while the table grows to millions of rows (until an ANALYZE happens to invalidate it).
    // Planning these few statements costs a fraction of a millisecond per group.
    client
        .batch_execute("SET plan_cache_mode = force_custom_plan")
        .await?;
    let level: String = client.query_one("SHOW synchronous_commit", &[]).await?.get(0);
    if level == "off" || level == "local" {
        // `local` is durable on this server but not on its standbys; `off` is not durable.
        client.batch_execute("SET synchronous_commit = on").await?;
    }
    // A join with the unnested ids, not `event_id = ANY($1)`: the prepared statement's generic
    // plan may turn ANY into a sequential scan testing every row against every id, which grows
    // with the table; one primary-key probe per id does not.
    let columns: Vec<String> = EVENT_COLUMNS.split(", ").map(|c| format!("e.{c}")).collect();
    let find_ids_sql = format!(
        "SELECT {} FROM unnest($1::uuid[]) AS i(id) JOIN events e ON e.event_id = i.id",
        columns.join(", ")
    );
    let (lock_head, find_ids, aggregates, insert, update_head, notify) = futures::try_join!(
        client.prepare("SELECT position, recorded_at FROM factstore_head WHERE id = 1 FOR UPDATE"),
        client.prepare_typed(&find_ids_sql, &[Type::UUID_ARRAY]),
        client.prepare(AGGREGATES),
        client.prepare(INSERT),
        client.prepare("UPDATE factstore_head SET position = $1, recorded_at = $2 WHERE id = 1"),
        client.prepare_typed("SELECT pg_notify($1, $2)", &[Type::TEXT, Type::TEXT]),
    )?;
    Ok(Conn {
        client,
        lock_head,
        find_ids,
        aggregates,
        insert,
        update_head,
        notify,
    })
}

fn condition_query(filter: &EventFilter, after_position: u64) -> Query {
    let mut query = Query::new("SELECT position FROM events WHERE true");
    query.and("position", ">", big(after_position), Type::INT8);
    query.filter(filter);
    query.text.push_str(" ORDER BY position LIMIT 1");
    query
}

/// Decides one commit: the rules of `EventStore`, in their order, against the store and the
/// commits of the group before it. When it passes, its events join `pending`.
fn decide(
    commit: &PreparedCommit,
    stored: &HashMap<Uuid, Event>,
    states: &HashMap<String, (u64, String)>,
    stored_condition_hit: Option<u64>,
    pending: &mut Pending,
    next_position: &mut u64,
    recorded_at: Timestamp,
) -> Result<CommitOutcome, StoreError> {
    // 1. Idempotency.
    if commit
        .appends
        .iter()
        .flat_map(|a| &a.events)
        .any(|e| e.client_event_id)
    {
        let found: Vec<Option<Event>> = commit
            .appends
            .iter()
            .flat_map(|a| &a.events)
            .map(|e| {
                if !e.client_event_id {
                    return None;
                }
                pending
                    .by_id
                    .get(&e.event_id)
                    .map(|&i| pending.events[i].clone())
                    .or_else(|| stored.get(&e.event_id).cloned())
            })
            .collect();
        if let Some(outcome) = commit.replayed_outcome(found)? {
            return Ok(outcome);
        }
    }
    // 2. Expected versions and aggregate types, append by append.
    let mut versions = Vec::with_capacity(commit.appends.len());
    for append in &commit.appends {
        let current = pending
            .aggregates
            .get(&append.aggregate_id)
            .or_else(|| states.get(&append.aggregate_id));
        let version = current.map_or(0, |s| s.0);
        if !append.expected_version.admits(version) {
            return Err(StoreError::WrongExpectedVersion {
                aggregate_id: append.aggregate_id.clone(),
                expected_version: append.expected_version,
                current_version: version,
            });
        }
        let aggregate_type = match current {
            Some(state) => state.1.as_str(),
            None => append.events.first().map_or("", |e| e.aggregate_type.as_str()),
        };
        if let Some(other) = append.events.iter().find(|e| e.aggregate_type != aggregate_type) {
            return Err(StoreError::AggregateTypeMismatch {
                aggregate_id: append.aggregate_id.clone(),
                existing: aggregate_type.to_owned(),
                given: other.aggregate_type.clone(),
            });
        }
        versions.push((version, aggregate_type.to_owned()));
    }
    // 3. The condition: a stored match comes before any match of the group.
    if let Some(condition) = &commit.condition {
        let conflict = stored_condition_hit.or_else(|| {
            pending
                .events
                .iter()
                .find(|e| e.position() > condition.after_position && condition.filter.matches(e))
                .map(Event::position)
        });
        if let Some(conflicting_position) = conflict {
            return Err(StoreError::ConditionFailed {
                after_position: condition.after_position,
                conflicting_position,
            });
        }
    }
    // Every check passed: take positions.
    let mut appended = Vec::with_capacity(commit.appends.len());
    for (append, (mut version, aggregate_type)) in commit.appends.iter().zip(versions) {
        let mut events = Vec::with_capacity(append.events.len());
        for event in &append.events {
            version += 1;
            let position = *next_position;
            *next_position += 1;
            let stored =
                Event::from_fields(&event.fields(&append.aggregate_id, position, version, recorded_at));
            if event.client_event_id {
                pending.by_id.insert(event.event_id, pending.events.len());
            }
            pending.events.push(stored);
            events.push(AppendedEvent {
                event_id: event.event_id,
                version,
                position,
                recorded_at,
            });
        }
        appended.push(AppendedAggregate {
            aggregate_id: append.aggregate_id.clone(),
            version,
            events,
        });
        pending
            .aggregates
            .insert(append.aggregate_id.clone(), (version, aggregate_type));
    }
    Ok(CommitOutcome {
        created: true,
        position: *next_position - 1,
        appends: appended,
    })
}

/// An estimate of a commit's size, to bound a group.
fn commit_bytes(commit: &PreparedCommit) -> usize {
    commit
        .appends
        .iter()
        .flat_map(|a| a.events.iter())
        .map(|e| e.payload_bytes() + 256)
        .sum()
}
