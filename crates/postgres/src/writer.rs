//! Group commit in front of PostgreSQL.
//!
//! # The write path (see `docs/postgres.md`)
//! A writer task owns one connection. It takes the first waiting commit and every other
//! waiting commit (up to the group limits) as one group, and writes it one of two ways.
//!
//! **Planned** (the usual way): it looks up everything the checks need (the stored events with
//! the group's client-chosen ids, unless the group is large: [`LOOK_UP_IDS_BELOW`]; the current
//! version and type of every aggregate the group touches; the first stored event passing each
//! condition) in one read-only snapshot with the head; plans the group on that snapshot plus the groups this store has in flight
//! ([`crate::chain`]), each commit decided on its own; inserts its events in a transaction of
//! its own without the head lock, while the group before it is still inserting or
//! committing; waits for that group to commit; then moves the head from exactly where the plan
//! left it (any other head fails the row's CHECK and the transaction), notifies and commits.
//!
//! **Locked**: `BEGIN`, lock the head row (`SELECT … FOR UPDATE`), the same lookups, decide,
//! insert, move the head, notify, commit, in two pipelined exchanges; no other writer, on this
//! server or another, can commit meanwhile. Used after another server's commit spoiled a plan
//! (and for the next second), for replays of archived events whose chunks are not cached, and
//! after a few spoiled plans in a row.
//!
//! Either way, only when `COMMIT` returns (the WAL is flushed, with `synchronous_commit` on) are
//! the commits answered and the local head published.
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
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Statement};
use uuid::Uuid;

use crate::PgError;
use crate::archive::{Archive, Payloads};
use crate::chain::{Pending, Plan, Sequencer, Ticket};
use crate::connect::Connector;
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
    /// Groups of fewer events look their ids up before they are planned.
    pub look_up_ids_below: usize,
}

/// The writer's connection and its prepared statements.
struct Conn {
    client: Client,
    /// `BEGIN` with the lock timeout of a planned group's transaction.
    begin_planned: String,
    read_head: Statement,
    lock_head: Statement,
    find_ids: Statement,
    aggregates: Statement,
    insert: Statement,
    update_head: Statement,
    advance_head: Statement,
    notify: Statement,
}

pub struct Writer {
    pub connector: Connector,
    pub channel: String,
    pub head: Arc<watch::Sender<u64>>,
    pub limits: GroupLimits,
    /// Fills in archived payloads of the stored events an idempotent replay is compared with.
    archive: Arc<Archive>,
    /// The groups this store's writers planned and have not seen commit.
    sequencer: Arc<Sequencer>,
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

/// The outcome of one try at a group without the head lock.
enum Planned {
    /// Each commit's answer, in order (the group committed, or had nothing to write).
    Answers(Vec<Result<CommitOutcome, StoreError>>),
    /// The snapshot was older than the groups this store remembers, or the group it was
    /// planned behind failed: plan it again.
    Again,
    /// A commit with client-chosen ids was refused by a plan made without looking its ids up:
    /// plan it again with them.
    LookUpIds,
    /// Another server's commit came between: write it with the head lock held throughout.
    Interfered,
    /// It repeats an event id already stored: write it the locking way, which looks the
    /// stored events up to answer the repeat.
    Repeats,
    /// It needs payloads of archived events that are not cached: write it the locking way,
    /// which fetches them without holding the lock.
    Locking,
}

/// What a group's checks need, looked up in one snapshot.
struct Lookups<'a> {
    ids: Vec<Uuid>,
    aggregate_ids: Vec<&'a str>,
    conditions: Vec<(usize, Query)>,
}

/// The answers to a group's lookups.
struct Fetched {
    head_position: i64,
    head_recorded: Option<Ts>,
    stored: Vec<tokio_postgres::Row>,
    aggregates: Vec<tokio_postgres::Row>,
    conditions: Vec<Vec<tokio_postgres::Row>>,
}

/// The stored state the checks of a group are decided against.
struct Known {
    stored: HashMap<Uuid, Event>,
    states: HashMap<String, (u64, String)>,
    condition_hits: HashMap<usize, u64>,
}

// Each array unnested in the select list, not `FROM unnest(a, b, …)`: the select list walks
// the arrays side by side row by row, where the function in FROM first copies every row into a
// tuple store and then reads it back (5% of the database's time at 1000-event groups).
const INSERT: &str = "INSERT INTO events (position, event_id, aggregate_id, aggregate_version, \
    aggregate_type, event_type, event_version, event_data, created_at, recorded_at, created_by, \
    metadata, correlation_id, causation_id) \
    SELECT unnest($1::bigint[]), unnest($2::uuid[]), unnest($3::text[]), unnest($4::bigint[]), \
    unnest($5::text[]), unnest($6::text[]), unnest($7::int4[]), unnest($8::text[])::json, \
    unnest($9::timestamptz[]), $14, unnest($10::text[]), unnest($11::text[])::json, \
    unnest($12::text[]), unnest($13::text[])";

/// Groups of this many events or more are planned without looking their ids up. A client's
/// ids are almost always new, and the primary-key probes of a 1000-event group cost the
/// database about a tenth of what inserting it costs. An id already stored (a retried commit)
/// then fails the insert on the primary key, and the group is written the locking way, which
/// looks ids up; a commit refused by such a plan is planned again with its ids. Smaller groups
/// look them up: the probes cost little there, and refusals (conflicts) are common.
pub const LOOK_UP_IDS_BELOW: usize = 256;

fn has_client_ids(commit: &PreparedCommit) -> bool {
    commit
        .appends
        .iter()
        .any(|append| append.events.iter().any(|e| e.client_event_id))
}

/// The last event of each aggregate: its version and type (an aggregate keeps one type).
const AGGREGATES: &str = "SELECT a.id, e.aggregate_version, e.aggregate_type FROM unnest($1::text[]) AS a(id) \
    CROSS JOIN LATERAL (SELECT aggregate_version, aggregate_type FROM events \
    WHERE aggregate_id = a.id ORDER BY aggregate_version DESC LIMIT 1) e";

impl Writer {
    pub fn new(
        connector: Connector,
        channel: String,
        head: Arc<watch::Sender<u64>>,
        limits: GroupLimits,
        archive: Arc<Archive>,
        sequencer: Arc<Sequencer>,
    ) -> Writer {
        Writer {
            connector,
            channel,
            head,
            limits,
            archive,
            sequencer,
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
        let started = std::time::Instant::now();
        // Without the head lock first: planned behind the groups in flight, inserted while
        // they insert. A plan spoiled by the failure of the group it was planned behind is
        // made again; a few in a row, or another server's commit, and the group takes the
        // lock first.
        const PLANS: usize = 4;
        let mut ids =
            group.iter().map(|r| r.commit.event_count).sum::<usize>() < self.limits.look_up_ids_below;
        for _ in 0..PLANS {
            if !self.sequencer.optimistic() {
                break;
            }
            let commits: Vec<&PreparedCommit> = group.iter().map(|r| &r.commit).collect();
            match self.write_planned(&commits, ids).await {
                Ok(Planned::Answers(answers)) => {
                    log_group(&commits, started, "planned");
                    for (request, answer) in group.into_iter().zip(answers) {
                        let _ = request.reply.send(answer);
                    }
                    return;
                }
                Ok(Planned::Again) => continue,
                Ok(Planned::LookUpIds) => {
                    ids = true;
                    continue;
                }
                Ok(Planned::Interfered) => {
                    self.sequencer.contended();
                    break;
                }
                Ok(Planned::Locking | Planned::Repeats) => break,
                Err(error) => {
                    self.failed(group, error);
                    return;
                }
            }
        }
        let (_locked, last) = self.sequencer.lock();
        if let Some(last) = last {
            // Its rows may hold the positions this group will take, and it needs the head
            // lock to commit: wait, or each would wait for the other.
            last.settled().await;
        }
        // A replay of archived events is compared with the stored ones, whose payloads may
        // have to come from cold storage: fetched between tries, outside the head lock, so
        // that a slow or unreachable cold store holds up only the commits that need it. The
        // last try fetches under the lock (the cache may have evicted a chunk meanwhile).
        const TRIES: usize = 3;
        for attempt in 1..=TRIES {
            let commits: Vec<&PreparedCommit> = group.iter().map(|r| &r.commit).collect();
            match self.write_locked(&commits, attempt == TRIES).await {
                Ok(Written::Answers(answers)) => {
                    log_group(&commits, started, "locked");
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
                    self.failed(group, error);
                    return;
                }
            }
        }
    }

    /// Answers a group whose exchange failed.
    fn failed(&mut self, group: Vec<WriteRequest>, error: PgError) {
        // The connection may be mid-transaction or gone: start afresh next time.
        self.conn = None;
        let reason = error.to_string();
        tracing::error!(%reason, commits = group.len(), "group commit failed");
        for request in group {
            let _ = request.reply.send(Err(StoreError::Unavailable(format!(
                "{reason} (the commit may or may not have been written; retry it with the same event ids)"
            ))));
        }
    }

    async fn connection(&mut self) -> Result<&Conn, PgError> {
        if self.conn.is_none() {
            self.conn = Some(connect(&self.connector).await?);
        }
        self.conn
            .as_ref()
            .ok_or_else(|| PgError::Config("no writer connection".into()))
    }

    /// Writes a group without holding the head lock until it commits: looks up at a head,
    /// plans behind the groups in flight, inserts, waits for the group before it to commit,
    /// then moves the head (checking that it is where the plan left it) and commits.
    ///
    /// With `ids` false, the events' ids are not looked up (see [`LOOK_UP_IDS_BELOW`]): an id
    /// already stored fails the insert, and a refusal is planned again with them.
    async fn write_planned(&mut self, commits: &[&PreparedCommit], ids: bool) -> Result<Planned, PgError> {
        let lookups = Lookups::of(commits, ids);
        let channel = self.channel.clone();
        let head = self.head.clone();
        let archive = self.archive.clone();
        let sequencer = self.sequencer.clone();
        let conn = self.connection().await?;
        let client = &conn.client;

        // Exchange 1: the head and the lookups in one read-only snapshot, so they see the
        // store at that head exactly.
        let fetched = lookups
            .fetch(
                conn,
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
                &conn.read_head,
                Some("COMMIT"),
            )
            .await?;
        if !archive.uncached(&fetched.stored, 0)?.is_empty() {
            return Ok(Planned::Locking);
        }
        let payloads = archive.payloads(client, &fetched.stored, 0).await?;
        let known = lookups.known(&fetched, &payloads)?;
        let (head_position, head_recorded) = (fetched.head_position, fetched.head_recorded);

        let plan = sequencer.plan(
            head_position as u64,
            head_recorded.map(|t| t.0),
            |pending, next, recorded_at| decide_all(commits, &known, pending, next, recorded_at),
        );
        let (answers, ticket, before) = match plan {
            Plan::Stale => return Ok(Planned::Again),
            Plan::Contended => return Ok(Planned::Interfered),
            Plan::Locked => return Ok(Planned::Locking),
            Plan::Planned {
                answers,
                ticket,
                after,
            } => (answers, ticket, after),
        };
        if !ids
            && commits
                .iter()
                .zip(&answers)
                .any(|(commit, answer)| answer.is_err() && has_client_ids(commit))
        {
            // A retried commit is answered with its first outcome, whatever the store holds now
            // (the idempotency rule comes first): an error is only right once its ids are
            // known not to be stored.
            drop(ticket);
            return Ok(Planned::LookUpIds);
        }
        let Some(ticket) = ticket else {
            // Nothing to write; the answers hold if the group they counted on commits.
            if let Some(before) = before
                && !before.settled().await
            {
                return Ok(Planned::Again);
            }
            return Ok(Planned::Answers(answers));
        };

        // Exchange 2: insert. Any lock wait from here on means another server holds the same
        // keys or the head (this store's groups in flight never share a key, and the group
        // before this one has committed before it moves the head): give up soon, rather than
        // wait for a server that may itself be waiting for this one's groups.
        let planned = ticket.planned();
        let inserted = futures::try_join!(
            client.batch_execute(&conn.begin_planned),
            insert(client, &conn.insert, &planned.events, planned.recorded_at),
        );
        match inserted {
            Ok((_, count)) if count == planned.events.len() as u64 => {}
            Ok((_, count)) => {
                return Err(PgError::Corrupt(format!(
                    "inserted {count} events of {}",
                    planned.events.len()
                )));
            }
            Err(error) => return abandon(client, ticket, error).await,
        }
        if let Some(before) = before
            && !before.settled().await
        {
            client.batch_execute("ROLLBACK").await?;
            return Ok(Planned::Again);
        }

        // Exchange 3: move the head from exactly where the plan found it (a head anywhere
        // else fails the row's CHECK, which aborts the transaction), notify, commit.
        let expected = planned.first as i64 - 1;
        let last_position = planned.last as i64;
        let recorded = Ts(planned.recorded_at);
        let payload = last_position.to_string();
        let head_params: [&(dyn ToSql + Sync); 3] = [&expected, &last_position, &recorded];
        let notify_params: [&(dyn ToSql + Sync); 2] = [&channel, &payload];
        let committed = futures::try_join!(
            client.execute(&conn.advance_head, &head_params),
            client.execute(&conn.notify, &notify_params),
            client.batch_execute("COMMIT"),
        );
        if let Err(error) = committed {
            return abandon(client, ticket, error).await;
        }
        ticket.committed();
        publish(&head, last_position as u64);
        Ok(Planned::Answers(answers))
    }

    /// Writes a group holding the head lock from its lookups to its commit: the way when
    /// other servers write too, and for replays of archived events.
    async fn write_locked(
        &mut self,
        commits: &[&PreparedCommit],
        fetch_under_lock: bool,
    ) -> Result<Written, PgError> {
        let lookups = Lookups::of(commits, true);
        let channel = self.channel.clone();
        let head = self.head.clone();
        let archive = self.archive.clone();
        let conn = self.connection().await?;
        let client = &conn.client;

        // Exchange 1: begin, lock, look up. Read committed whatever the database's default: the
        // lookups after the lock must see what the last holder committed.
        let fetched = lookups
            .fetch(
                conn,
                "BEGIN ISOLATION LEVEL READ COMMITTED",
                &conn.lock_head,
                None,
            )
            .await?;
        let (head_position, head_recorded) = (fetched.head_position, fetched.head_recorded);
        let recorded_at = head_recorded.map_or(Timestamp::now(), |last| Timestamp::now().max(last.0));
        if !fetch_under_lock {
            let needs = archive.uncached(&fetched.stored, 0)?;
            if !needs.is_empty() {
                client.batch_execute("ROLLBACK").await?;
                return Ok(Written::NeedChunks(needs));
            }
        }
        let payloads = archive.payloads(client, &fetched.stored, 0).await?;
        let known = lookups.known(&fetched, &payloads)?;

        // Decide each commit in order against the store and the group so far.
        let mut pending = Pending::default();
        let mut next_position = head_position as u64 + 1;
        let answers = decide_all(commits, &known, &mut pending, &mut next_position, recorded_at);
        if pending.events.is_empty() {
            client.batch_execute("ROLLBACK").await?;
            return Ok(Written::Answers(answers));
        }

        // Exchange 2: insert, move the head, notify, commit.
        let last_position = next_position as i64 - 1;
        let recorded = Ts(recorded_at);
        let payload = last_position.to_string();
        let head_params: [&(dyn ToSql + Sync); 2] = [&last_position, &recorded];
        let notify_params: [&(dyn ToSql + Sync); 2] = [&channel, &payload];
        let (inserted, _, _, _) = futures::try_join!(
            insert(client, &conn.insert, &pending.events, recorded_at),
            client.execute(&conn.update_head, &head_params),
            client.execute(&conn.notify, &notify_params),
            client.batch_execute("COMMIT"),
        )?;
        if inserted != pending.events.len() as u64 {
            return Err(PgError::Corrupt(format!(
                "inserted {inserted} events of {}",
                pending.events.len()
            )));
        }
        publish(&head, last_position as u64);
        Ok(Written::Answers(answers))
    }
}

/// Ends a planned group's transaction after `error`. An event id already stored is a repeat,
/// and a lock wait given up, another key another server took first, or a head that moved is
/// interference: either way the group is written again with the lock. Anything else fails the
/// group.
async fn abandon(client: &Client, ticket: Ticket, error: tokio_postgres::Error) -> Result<Planned, PgError> {
    drop(ticket);
    let repeats = error
        .as_db_error()
        .is_some_and(|e| *e.code() == SqlState::UNIQUE_VIOLATION && e.constraint() == Some("events_pkey"));
    let interference = error.code().is_some_and(|code| {
        *code == SqlState::LOCK_NOT_AVAILABLE
            || *code == SqlState::UNIQUE_VIOLATION
            || *code == SqlState::CHECK_VIOLATION
    });
    if !interference {
        return Err(error.into());
    }
    // The failed statement aborted the transaction (a COMMIT sent after it rolled it back).
    client.batch_execute("ROLLBACK").await?;
    if repeats {
        return Ok(Planned::Repeats);
    }
    tracing::debug!(error = %crate::describe(&error), "another writer came between: the group takes the lock");
    Ok(Planned::Interfered)
}

/// Moves the local head to `position` if it is further.
fn publish(head: &watch::Sender<u64>, position: u64) {
    head.send_if_modified(|head| {
        let moved = *head < position;
        if moved {
            *head = position;
        }
        moved
    });
}

fn log_group(commits: &[&PreparedCommit], started: std::time::Instant, way: &'static str) {
    tracing::debug!(
        commits = commits.len(),
        events = commits.iter().map(|c| c.event_count).sum::<usize>(),
        micros = started.elapsed().as_micros() as u64,
        way,
        "group committed"
    );
}

impl<'a> Lookups<'a> {
    /// The lookups `commits` need. With `ids` false, the events' ids are not looked up: the
    /// primary key refuses an id already stored when the group is inserted.
    fn of(commits: &[&'a PreparedCommit], ids: bool) -> Lookups<'a> {
        let mut lookups = Lookups {
            ids: Vec::new(),
            aggregate_ids: Vec::new(),
            conditions: Vec::new(),
        };
        let mut seen: HashSet<&str> = HashSet::new();
        for (index, commit) in commits.iter().enumerate() {
            for append in &commit.appends {
                if seen.insert(&append.aggregate_id) {
                    lookups.aggregate_ids.push(&append.aggregate_id);
                }
                if ids {
                    lookups.ids.extend(
                        append
                            .events
                            .iter()
                            .filter(|e| e.client_event_id)
                            .map(|e| e.event_id),
                    );
                }
            }
            if let Some(condition) = &commit.condition {
                lookups.conditions.push((
                    index,
                    condition_query(&condition.filter, condition.after_position),
                ));
            }
        }
        lookups
    }

    /// `begin`, the head row (`head`), the lookups and `end`, in one pipelined exchange:
    /// futures polled together on one connection send every statement before the first
    /// answer comes back.
    async fn fetch(
        &self,
        conn: &Conn,
        begin: &str,
        head: &Statement,
        end: Option<&str>,
    ) -> Result<Fetched, tokio_postgres::Error> {
        let client = &conn.client;
        let condition_params: Vec<_> = self.conditions.iter().map(|(_, q)| q.params()).collect();
        let id_params: [&(dyn ToSql + Sync); 1] = [&self.ids];
        let aggregate_params: [&(dyn ToSql + Sync); 1] = [&self.aggregate_ids];
        let conditions = futures::future::try_join_all(
            self.conditions
                .iter()
                .zip(&condition_params)
                .map(|((_, q), params)| client.query_typed(&q.text, params)),
        );
        let end = async {
            match end {
                Some(end) => client.batch_execute(end).await,
                None => Ok(()),
            }
        };
        let stored = async {
            if self.ids.is_empty() {
                Ok(Vec::new())
            } else {
                client.query(&conn.find_ids, &id_params).await
            }
        };
        let (_, head, stored, aggregates, conditions, _) = futures::try_join!(
            client.batch_execute(begin),
            client.query_one(head, &[]),
            stored,
            client.query(&conn.aggregates, &aggregate_params),
            conditions,
            end,
        )?;
        Ok(Fetched {
            head_position: head.try_get(0)?,
            head_recorded: head.try_get(1)?,
            stored,
            aggregates,
            conditions,
        })
    }

    fn known(&self, fetched: &Fetched, payloads: &Payloads) -> Result<Known, PgError> {
        let Fetched {
            stored: stored_rows,
            aggregates: aggregate_rows,
            conditions: condition_rows,
            ..
        } = fetched;
        let mut stored = HashMap::with_capacity(stored_rows.len());
        for row in stored_rows {
            let event = event_from_row(row, payloads)?;
            stored.insert(event.event_id(), event);
        }
        let mut states = HashMap::with_capacity(aggregate_rows.len());
        for row in aggregate_rows {
            let id: String = row.try_get(0)?;
            let version: i64 = row.try_get(1)?;
            let aggregate_type: String = row.try_get(2)?;
            states.insert(id, (version as u64, aggregate_type));
        }
        let mut condition_hits = HashMap::new();
        for ((index, _), rows) in self.conditions.iter().zip(condition_rows) {
            if let Some(row) = rows.first() {
                let position: i64 = row.try_get(0)?;
                condition_hits.insert(*index, position as u64);
            }
        }
        Ok(Known {
            stored,
            states,
            condition_hits,
        })
    }
}

/// Decides each commit in order against what is known and the group so far.
fn decide_all(
    commits: &[&PreparedCommit],
    known: &Known,
    pending: &mut Pending,
    next_position: &mut u64,
    recorded_at: Timestamp,
) -> Vec<Result<CommitOutcome, StoreError>> {
    commits
        .iter()
        .enumerate()
        .map(|(index, commit)| {
            decide(
                commit,
                &known.stored,
                &known.states,
                known.condition_hits.get(&index).copied(),
                pending,
                next_position,
                recorded_at,
            )
        })
        .collect()
}

/// Inserts `events` (at the positions they carry) in one statement.
async fn insert(
    client: &Client,
    statement: &Statement,
    events: &[Event],
    recorded_at: Timestamp,
) -> Result<u64, tokio_postgres::Error> {
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
    let recorded = Ts(recorded_at);
    let params: [&(dyn ToSql + Sync); 14] = [
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
    client.execute(statement, &params).await
}

/// Opens the writer's connection: `synchronous_commit` on (a commit is answered only once
/// durable) and the statements prepared once.
async fn connect(connector: &Connector) -> Result<Conn, PgError> {
    let client = connector.connect().await?;
    // Every execution is planned with the table as it is now. A prepared statement otherwise
    // settles, after five executions, on a generic plan made for the table of that moment: on a
    // fresh database that is a hash join over a sequential scan of a nearly empty table, kept
    // while the table grows to millions of rows (until an ANALYZE happens to invalidate it).
    // Planning these few statements costs a fraction of a millisecond per group.
    client
        .batch_execute("SET plan_cache_mode = force_custom_plan")
        .await?;
    // A planned group waiting for another server's keys or head gives up after this long. It
    // must give up before PostgreSQL's deadlock check (`deadlock_timeout`) runs, or the check
    // may break a wait cycle by aborting the other server's locked group instead.
    let deadlock_ms: i32 = client
        .query_one(
            "SELECT setting::int FROM pg_settings WHERE name = 'deadlock_timeout'",
            &[],
        )
        .await?
        .get(0);
    let give_up_ms = (deadlock_ms / 4).clamp(1, 50);
    let begin_planned =
        format!("BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL lock_timeout = '{give_up_ms}ms'");
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
    let (read_head, lock_head, find_ids, aggregates, insert, update_head, advance_head, notify) = futures::try_join!(
        client.prepare("SELECT position, recorded_at FROM factstore_head WHERE id = 1"),
        client.prepare("SELECT position, recorded_at FROM factstore_head WHERE id = 1 FOR UPDATE"),
        client.prepare_typed(&find_ids_sql, &[Type::UUID_ARRAY]),
        client.prepare(AGGREGATES),
        client.prepare(INSERT),
        client.prepare("UPDATE factstore_head SET position = $1, recorded_at = $2 WHERE id = 1"),
        // -1 breaks the row's CHECK (position >= 0): the statement fails and so does the
        // transaction, where a WHERE clause would only have updated nothing.
        client.prepare_typed(
            "UPDATE factstore_head SET position = CASE WHEN position = $1 THEN $2 ELSE -1 END, \
             recorded_at = $3 WHERE id = 1",
            &[Type::INT8, Type::INT8, Type::TIMESTAMPTZ]
        ),
        client.prepare_typed("SELECT pg_notify($1, $2)", &[Type::TEXT, Type::TEXT]),
    )?;
    Ok(Conn {
        client,
        begin_planned,
        read_head,
        lock_head,
        find_ids,
        aggregates,
        insert,
        update_head,
        advance_head,
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
