//! The registry of projections ([`Projections`]) and the task that keeps each one folding.
//!
//! # Generations
//! A projection is served by its **live** generation: a definition, the states folded by it,
//! its checkpoint, its snapshots and its log. A rebuild (`POST .../rebuild`, or a `PUT` with a
//! changed definition) starts a second generation that folds from position 0 into its own log
//! while the live one goes on serving reads (and folding new events). When the new generation
//! has caught up with the head, a `live` record is appended to its log, and then, under one
//! lock, it becomes the live one: readers switch at once and never see a state older than
//! before. The old generation's task is stopped and its log removed.
//!
//! A crash during a rebuild leaves the old generation live (its log has `live`, the new one's
//! not yet): the rebuild resumes at open from its own checkpoint. A crash after the `live`
//! record and before the old log is removed leaves two live generations: the newer wins and
//! the older is removed at open. See `docs/durability.md`.
//!
//! # The fold task
//! One tokio task per generation reads the store from its position with the projection's
//! filter, a page at a time (`next_after_position` moves past filtered-out events, so they
//! count as considered), and folds each page in `spawn_blocking` into copies of the states it
//! touches. The copies, the new checkpoint and the `unkeyed` count go to the log as ONE record,
//! synced; only then are they installed for readers, under the view's write lock. Readers thus
//! only see durable states, always consistent with `position`.
//!
//! A page that changes no state (all its events were filtered out) moves the position in memory
//! only; the durable checkpoint catches up with the next record, at most
//! [`CHECKPOINT_GAP_MAX`] positions later, or at shutdown. Replaying those positions after a
//! crash changes nothing, so state and checkpoint stay consistent.
//!
//! An operation that fails on an event stops the projection with status `failed` at the
//! position before that event (the page is folded again up to it): an event is never skipped.
//! A failed write to the log also stops it (`failed`, the storage error): the log is poisoned.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use factstore_core::{AggregateQuery, Event, EventPage, EventQuery, EventStore, StoreError, Timestamp};
use parking_lot::{Mutex, RwLock};
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::definition::{Compiled, KeySpec, ProjectionDefinition, validate_name};
use crate::error::ProjectionError;
use crate::fold::{EventView, apply, key_of};
use crate::storage::{
    GenerationLog, KeyRecord, ProjectionStorage, Record, SnapshotRecord, encode_batch, replay,
};

/// A projection's `error` after its storage failed. Clients read it (the status, a
/// read-your-writes answer), so it names no file: the log has the details.
const STORAGE_FAILED: &str =
    "storage: recording the projection's state failed; the server log has the details";

/// The durable checkpoint of a projection whose pages change nothing lags its position by at
/// most this much: a bound on what a restart reads again.
pub const CHECKPOINT_GAP_MAX: u64 = 1_000_000;

/// The largest image a log is compacted into (the journal's frame ceiling, less a margin).
pub const IMAGE_BYTES_MAX: usize = factstore_engine::journal::BODY_LEN_MAX - (1 << 20);

/// The default of `--snapshot-every`.
pub const SNAPSHOT_EVERY_DEFAULT: u64 = 1000;

/// How long a read-your-writes read waits at most when the client gives no `wait_ms`.
pub const WAIT_DEFAULT: Duration = Duration::from_millis(5000);

/// Options of the registry.
#[derive(Debug, Clone)]
pub struct ProjectionsOptions {
    /// Snapshot an `aggregate_id`-keyed state every this many of its events; 0 never.
    pub snapshot_every: u64,
    /// Events read and folded per batch (at most the store's page limit).
    pub batch_events: usize,
    /// A log is compacted once it is larger than this and twice its last image.
    pub compact_bytes_min: u64,
}

impl Default for ProjectionsOptions {
    fn default() -> ProjectionsOptions {
        ProjectionsOptions {
            snapshot_every: SNAPSHOT_EVERY_DEFAULT,
            batch_events: 10_000,
            compact_bytes_min: 64 << 20,
        }
    }
}

/// `running`, `rebuilding` or `failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Running,
    Rebuilding,
    Failed,
}

/// What `GET /v1/projections/{name}` shows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProjectionStatus {
    pub name: String,
    pub status: Status,
    /// The last global position the served state has considered.
    pub position: u64,
    pub head_position: u64,
    /// `head_position - position`.
    pub lag: u64,
    /// Keys with a state.
    pub keys: u64,
    /// Matching events passed over because they had no key.
    pub unkeyed: u64,
    /// Why the projection (or its rebuild) stopped, naming the event's position.
    pub error: Option<String>,
}

/// Where a state read comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Source {
    /// The maintained state.
    #[default]
    ReadModel,
    /// Folded from the events up to the head.
    EventStore,
}

/// A read of one key's state.
#[derive(Debug, Clone, Default)]
pub struct StateQuery {
    pub source: Source,
    /// Wait until the projection has passed this position.
    pub min_position: Option<u64>,
    /// How long to wait for `min_position` ([`WAIT_DEFAULT`] when `None`).
    pub wait: Option<Duration>,
    /// Only events with `created_at ≤ until`.
    pub until: Option<Timestamp>,
    /// Only events with `recorded_at ≤ as_of`.
    pub as_of: Option<Timestamp>,
}

/// One key's state.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyState {
    pub key: String,
    pub state: Value,
    /// The position the state is as of.
    pub position: u64,
}

/// A page of states.
#[derive(Debug, Clone, PartialEq)]
pub struct StatePage {
    pub states: Vec<(String, Value)>,
    pub next_after_key: Option<String>,
    pub position: u64,
}

/// What `PUT` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// A new projection.
    Created,
    /// The same definition was there: nothing changed.
    Unchanged,
    /// A changed definition: a rebuild started (the old definition serves until it is done).
    Rebuilding,
}

/// A key's state in memory.
#[derive(Debug, Clone)]
struct KeyEntry {
    state: Value,
    since_snapshot: u64,
    max_created_at: i64,
}

/// What readers of a generation see, changed only under its write lock.
#[derive(Debug, Default)]
struct View {
    position: u64,
    /// The position of the last record in the log.
    durable_position: u64,
    unkeyed: u64,
    keys: BTreeMap<String, KeyEntry>,
    snapshots: HashMap<String, Vec<SnapshotRecord>>,
    failed: Option<String>,
}

#[derive(Debug)]
struct Generation {
    number: u64,
    compiled: Arc<Compiled>,
    log: Box<dyn GenerationLog>,
    view: RwLock<View>,
    /// Whether the log has its `live` record.
    live: AtomicBool,
    /// The log's length after its last compaction.
    image_len: AtomicU64,
    cancel: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug)]
struct Slot {
    live: Arc<Generation>,
    rebuild: Option<Arc<Generation>>,
}

#[derive(Debug)]
struct Entry {
    name: String,
    slot: RwLock<Slot>,
    /// The served (live) position: read-your-writes waits on it.
    served: watch::Sender<u64>,
}

impl Entry {
    fn live(&self) -> Arc<Generation> {
        self.slot.read().live.clone()
    }
}

struct Inner {
    store: Arc<dyn EventStore>,
    storage: Arc<dyn ProjectionStorage>,
    options: ProjectionsOptions,
    entries: RwLock<BTreeMap<String, Arc<Entry>>>,
    /// Serializes the changes (put, delete, rebuild), which await tasks and write logs.
    manage: tokio::sync::Mutex<()>,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Projections")
            .field("storage", &self.storage)
            .field("options", &self.options)
            .field("names", &self.entries.read().keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Every projection of a server: create, replace, delete, read. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Projections {
    inner: Arc<Inner>,
}

fn blocking_error(e: tokio::task::JoinError) -> ProjectionError {
    ProjectionError::Internal(format!("a projection task failed: {e}"))
}

impl Projections {
    /// A registry without projections over `storage`, loading nothing from it: for a server
    /// whose projections live in memory ([`crate::MemoryStorage`]). Use [`Projections::open`]
    /// to restore stored ones.
    pub fn new(
        store: Arc<dyn EventStore>,
        storage: Arc<dyn ProjectionStorage>,
        options: ProjectionsOptions,
    ) -> Projections {
        Projections {
            inner: Arc::new(Inner {
                store,
                storage,
                options,
                entries: RwLock::new(BTreeMap::new()),
                manage: tokio::sync::Mutex::new(()),
                shutdown: CancellationToken::new(),
            }),
        }
    }

    /// Opens the projections kept in `storage` and starts folding each. Must run within a
    /// tokio runtime. Leftovers of interrupted swaps and deletes are removed; an interrupted
    /// rebuild resumes.
    pub async fn open(
        store: Arc<dyn EventStore>,
        storage: Arc<dyn ProjectionStorage>,
        options: ProjectionsOptions,
    ) -> Result<Projections, ProjectionError> {
        let opened = {
            let storage = storage.clone();
            tokio::task::spawn_blocking(move || storage.open_all())
                .await
                .map_err(blocking_error)??
        };
        let projections = Projections::new(store, storage, options);
        let mut by_name: BTreeMap<String, Vec<_>> = BTreeMap::new();
        for stored in opened {
            by_name.entry(stored.name.clone()).or_default().push(stored);
        }
        for (name, mut generations) in by_name {
            generations.sort_by_key(|g| g.generation);
            let mut replayed = Vec::new();
            for stored in generations {
                let what = format!("projection '{name}' generation {}", stored.generation);
                let content = replay(&stored.records, &what)?;
                replayed.push((stored.generation, stored.log, content));
            }
            let live_at = replayed.iter().rposition(|(_, _, c)| c.live);
            let Some(live_at) = live_at else {
                tracing::warn!(projection = %name, "removing the logs of a projection that was being deleted");
                for (number, _, _) in &replayed {
                    projections.remove_log(&name, *number).await?;
                }
                continue;
            };
            let mut live = None;
            let mut rebuild = None;
            let count = replayed.len();
            for (at, (number, log, content)) in replayed.into_iter().enumerate() {
                if at == live_at {
                    live = Some((number, log, content));
                } else if at + 1 == count && at > live_at {
                    rebuild = Some((number, log, content));
                } else {
                    projections.remove_log(&name, number).await?;
                }
            }
            let Some((number, log, content)) = live else {
                continue;
            };
            let live = projections.restore(number, log, content, &name)?;
            let rebuild = match rebuild {
                Some((number, log, content)) => Some(projections.restore(number, log, content, &name)?),
                None => None,
            };
            let entry = Arc::new(Entry {
                name: name.clone(),
                served: watch::channel(live.view.read().position).0,
                slot: RwLock::new(Slot {
                    live: live.clone(),
                    rebuild: rebuild.clone(),
                }),
            });
            projections.inner.entries.write().insert(name, entry.clone());
            projections.start(&entry, &live);
            if let Some(rebuild) = rebuild {
                projections.start(&entry, &rebuild);
            }
        }
        Ok(projections)
    }

    fn restore(
        &self,
        number: u64,
        log: Box<dyn GenerationLog>,
        content: crate::storage::Replayed,
        name: &str,
    ) -> Result<Arc<Generation>, ProjectionError> {
        let compiled = content
            .definition
            .compile(self.inner.store.limits())
            .map_err(|e| {
                ProjectionError::Internal(format!(
                    "projection '{name}': its stored definition no longer compiles ({e})"
                ))
            })?;
        let keys = content
            .keys
            .into_iter()
            .map(|(key, record)| {
                (
                    key,
                    KeyEntry {
                        state: record.state,
                        since_snapshot: record.since_snapshot,
                        max_created_at: record.max_created_at,
                    },
                )
            })
            .collect();
        let image_len = log.len();
        Ok(Arc::new(Generation {
            number,
            compiled: Arc::new(compiled),
            log,
            view: RwLock::new(View {
                position: content.position,
                durable_position: content.position,
                unkeyed: content.unkeyed,
                keys,
                snapshots: content.snapshots,
                failed: None,
            }),
            live: AtomicBool::new(content.live),
            image_len: AtomicU64::new(image_len),
            cancel: self.inner.shutdown.child_token(),
            task: Mutex::new(None),
        }))
    }

    async fn remove_log(&self, name: &str, number: u64) -> Result<(), ProjectionError> {
        let storage = self.inner.storage.clone();
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || storage.remove(&name, number))
            .await
            .map_err(blocking_error)?
    }

    /// Creates a generation's log holding `definition` (and `live`, for a new projection).
    async fn create_generation(
        &self,
        name: &str,
        number: u64,
        compiled: Compiled,
        live: bool,
    ) -> Result<Arc<Generation>, ProjectionError> {
        let storage = self.inner.storage.clone();
        let owned_name = name.to_owned();
        let definition = compiled.definition.clone();
        let log = tokio::task::spawn_blocking(move || -> Result<_, ProjectionError> {
            let log = storage.create(&owned_name, number)?;
            let mut records = vec![Record::Definition { definition }.encode()?];
            if live {
                records.push(Record::Live.encode()?);
            }
            let refs: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
            log.append(&refs)?;
            Ok(log)
        })
        .await
        .map_err(blocking_error)??;
        let image_len = log.len();
        Ok(Arc::new(Generation {
            number,
            compiled: Arc::new(compiled),
            log,
            view: RwLock::new(View::default()),
            live: AtomicBool::new(live),
            image_len: AtomicU64::new(image_len),
            cancel: self.inner.shutdown.child_token(),
            task: Mutex::new(None),
        }))
    }

    fn start(&self, entry: &Arc<Entry>, generation: &Arc<Generation>) {
        let handle = tokio::spawn(fold_task(self.clone(), entry.clone(), generation.clone()));
        *generation.task.lock() = Some(handle);
    }

    /// Stops a generation's task and waits for it.
    async fn stop(generation: &Generation) {
        generation.cancel.cancel();
        let handle = generation.task.lock().take();
        if let Some(handle) = handle {
            let _ = handle.await;
        }
    }

    fn entry(&self, name: &str) -> Result<Arc<Entry>, ProjectionError> {
        self.inner
            .entries
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| ProjectionError::NotFound {
                name: name.to_owned(),
            })
    }

    /// Creates or replaces a projection. The definition is validated before anything else.
    pub async fn put(
        &self,
        name: &str,
        definition: ProjectionDefinition,
    ) -> Result<PutOutcome, ProjectionError> {
        validate_name(name)?;
        let compiled = definition.compile(self.inner.store.limits())?;
        let _guard = self.inner.manage.lock().await;
        if self.inner.shutdown.is_cancelled() {
            return Err(ProjectionError::ShuttingDown);
        }
        let existing = self.inner.entries.read().get(name).cloned();
        let Some(entry) = existing else {
            let live = self.create_generation(name, 1, compiled, true).await?;
            let entry = Arc::new(Entry {
                name: name.to_owned(),
                served: watch::channel(0).0,
                slot: RwLock::new(Slot {
                    live: live.clone(),
                    rebuild: None,
                }),
            });
            self.inner.entries.write().insert(name.to_owned(), entry.clone());
            self.start(&entry, &live);
            return Ok(PutOutcome::Created);
        };
        let rebuild = entry.slot.read().rebuild.clone();
        if let Some(rebuild) = &rebuild {
            if rebuild.compiled.definition == definition {
                return Ok(PutOutcome::Unchanged);
            }
            // The rebuild in progress folds a definition that is no longer wanted.
            self.abandon_rebuild(&entry, rebuild).await?;
        }
        let live = entry.live().clone();
        if live.compiled.definition == definition {
            return Ok(PutOutcome::Unchanged);
        }
        let number = live.number.max(rebuild.as_ref().map_or(0, |r| r.number)) + 1;
        self.begin_rebuild(&entry, number, compiled).await?;
        Ok(PutOutcome::Rebuilding)
    }

    /// Stops a rebuild and removes its log, unless it swapped in before it stopped (its task
    /// may have been promoting it): then it is the live generation and stays.
    async fn abandon_rebuild(&self, entry: &Entry, rebuild: &Arc<Generation>) -> Result<(), ProjectionError> {
        Self::stop(rebuild).await;
        let swapped_in = {
            let mut slot = entry.slot.write();
            if slot.rebuild.as_ref().is_some_and(|r| Arc::ptr_eq(r, rebuild)) {
                slot.rebuild = None;
            }
            Arc::ptr_eq(&slot.live, rebuild)
        };
        if swapped_in {
            return Ok(());
        }
        self.remove_log(&entry.name, rebuild.number).await
    }

    async fn begin_rebuild(
        &self,
        entry: &Arc<Entry>,
        number: u64,
        compiled: Compiled,
    ) -> Result<(), ProjectionError> {
        let generation = self
            .create_generation(&entry.name, number, compiled, false)
            .await?;
        entry.slot.write().rebuild = Some(generation.clone());
        self.start(entry, &generation);
        Ok(())
    }

    /// Rebuilds a projection from the first event, while the current state keeps serving.
    /// A rebuild already under way (and not failed) goes on.
    pub async fn rebuild(&self, name: &str) -> Result<(), ProjectionError> {
        let _guard = self.inner.manage.lock().await;
        let entry = self.entry(name)?;
        let (live, rebuild) = {
            let slot = entry.slot.read();
            (slot.live.clone(), slot.rebuild.clone())
        };
        let compiled = match &rebuild {
            Some(rebuild) if rebuild.view.read().failed.is_none() => return Ok(()),
            Some(rebuild) => {
                self.abandon_rebuild(&entry, rebuild).await?;
                (*rebuild.compiled).clone()
            }
            None => (*live.compiled).clone(),
        };
        let number = live.number.max(rebuild.as_ref().map_or(0, |r| r.number)) + 1;
        self.begin_rebuild(&entry, number, compiled).await
    }

    /// Deletes a projection and its logs.
    pub async fn delete(&self, name: &str) -> Result<(), ProjectionError> {
        let _guard = self.inner.manage.lock().await;
        let entry = self
            .inner
            .entries
            .write()
            .remove(name)
            .ok_or_else(|| ProjectionError::NotFound {
                name: name.to_owned(),
            })?;
        let (live, rebuild) = {
            let slot = entry.slot.read();
            (slot.live.clone(), slot.rebuild.clone())
        };
        Self::stop(&live).await;
        if let Some(rebuild) = &rebuild {
            Self::stop(rebuild).await;
        }
        // The live log first: once it is gone the projection is gone, and a leftover rebuild
        // log without a live one is removed at the next open.
        self.remove_log(name, live.number).await?;
        if let Some(rebuild) = rebuild {
            self.remove_log(name, rebuild.number).await?;
        }
        Ok(())
    }

    fn status_of(&self, entry: &Entry) -> ProjectionStatus {
        let (live, rebuild) = {
            let slot = entry.slot.read();
            (slot.live.clone(), slot.rebuild.clone())
        };
        let head = *self.inner.store.watch_head().borrow();
        let view = live.view.read();
        let rebuild_error = rebuild
            .as_ref()
            .and_then(|r| r.view.read().failed.clone())
            .map(|e| format!("the rebuild failed: {e}"));
        let (status, error) = match (&view.failed, &rebuild, rebuild_error) {
            (Some(error), _, _) => (
                if rebuild.is_some() {
                    Status::Rebuilding
                } else {
                    Status::Failed
                },
                Some(error.clone()),
            ),
            (None, Some(_), Some(error)) => (Status::Failed, Some(error)),
            (None, Some(_), None) => (Status::Rebuilding, None),
            (None, None, _) => (Status::Running, None),
        };
        ProjectionStatus {
            name: entry.name.clone(),
            status,
            position: view.position,
            head_position: head.max(view.position),
            lag: head.saturating_sub(view.position),
            keys: view.keys.len() as u64,
            unkeyed: view.unkeyed,
            error,
        }
    }

    /// The logs of every projection as a backup takes them (`factstore_engine::backup`): the
    /// live generation and the rebuild under way, each read under its projection's slot lock
    /// so that a swap is seen whole (the old live one with the new one, or the new one alone).
    /// Logs that are not files are left out.
    pub fn durable_logs(&self) -> Vec<factstore_engine::backup::DurableFile> {
        let entries: Vec<Arc<Entry>> = self.inner.entries.read().values().cloned().collect();
        let mut out = Vec::new();
        for entry in entries {
            let slot = entry.slot.read();
            for generation in std::iter::once(&slot.live).chain(slot.rebuild.as_ref()) {
                out.extend(generation.log.durable());
            }
        }
        out
    }

    /// One projection's status.
    pub fn status(&self, name: &str) -> Result<ProjectionStatus, ProjectionError> {
        Ok(self.status_of(&*self.entry(name)?))
    }

    /// Every projection's status, by name.
    pub fn list(&self) -> Vec<ProjectionStatus> {
        let entries: Vec<Arc<Entry>> = self.inner.entries.read().values().cloned().collect();
        entries.iter().map(|e| self.status_of(e)).collect()
    }

    /// The definition a projection serves with.
    pub fn definition(&self, name: &str) -> Result<ProjectionDefinition, ProjectionError> {
        Ok(self.entry(name)?.live().compiled.definition.clone())
    }

    /// Waits until the projection has passed `min_position`, at most `wait`.
    pub async fn wait_for(
        &self,
        name: &str,
        min_position: u64,
        wait: Duration,
    ) -> Result<u64, ProjectionError> {
        let entry = self.entry(name)?;
        let mut served = entry.served.subscribe();
        let not_yet = |position: u64, reason: Option<String>| ProjectionError::NotYetMaterialized {
            name: name.to_owned(),
            position,
            min_position,
            reason,
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let position = *served.borrow_and_update();
            if position >= min_position {
                return Ok(position);
            }
            let live = entry.live();
            if let Some(error) = live.view.read().failed.clone()
                && entry.slot.read().rebuild.is_none()
            {
                return Err(not_yet(
                    position,
                    Some(format!("the projection has failed ({error})")),
                ));
            }
            match tokio::time::timeout_at(deadline, served.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(not_yet(position, Some("the projection was deleted".to_owned()))),
                Err(_) => return Err(not_yet(*served.borrow(), None)),
            }
        }
    }

    /// One key's state, as `query` asks.
    pub async fn state(
        &self,
        name: &str,
        key: &str,
        query: &StateQuery,
    ) -> Result<KeyState, ProjectionError> {
        let entry = self.entry(name)?;
        if let Some(min_position) = query.min_position {
            self.wait_for(name, min_position, query.wait.unwrap_or(WAIT_DEFAULT))
                .await?;
        }
        let not_found = || ProjectionError::KeyNotFound {
            name: name.to_owned(),
            key: key.to_owned(),
        };
        let live = entry.live();
        if query.source == Source::ReadModel && query.until.is_none() && query.as_of.is_none() {
            let view = live.view.read();
            let found = view.keys.get(key).ok_or_else(not_found)?;
            return Ok(KeyState {
                key: key.to_owned(),
                state: found.state.clone(),
                position: view.position,
            });
        }
        let (state, position) = match live.compiled.key {
            KeySpec::AggregateId => self.fold_aggregate(&live, key, query).await?,
            _ => self.fold_filtered(&live, key, query).await?,
        }
        .ok_or_else(not_found)?;
        Ok(KeyState {
            key: key.to_owned(),
            state,
            position,
        })
    }

    /// Folds an aggregate's events from its newest usable projection snapshot.
    async fn fold_aggregate(
        &self,
        generation: &Generation,
        key: &str,
        query: &StateQuery,
    ) -> Result<Option<(Value, u64)>, ProjectionError> {
        let store = &self.inner.store;
        if factstore_core::append::validate_aggregate_id(key, store.limits()).is_err() {
            return Ok(None);
        }
        let snapshot = {
            let view = generation.view.read();
            view.snapshots.get(key).and_then(|snapshots| {
                snapshots
                    .iter()
                    .rev()
                    .find(|s| {
                        query.as_of.is_none_or(|t| s.recorded_at <= t.as_micros())
                            && query.until.is_none_or(|t| s.max_created_at <= t.as_micros())
                    })
                    .cloned()
            })
        };
        let head = store.head().await?.position;
        let compiled = &generation.compiled;
        let mut found = snapshot.is_some();
        let (mut state, from_version) = match snapshot {
            Some(s) => (s.state, s.version + 1),
            None => (compiled.initial().clone(), 1),
        };
        let mut aggregate_query = AggregateQuery::forward(key, self.page_events());
        aggregate_query.from_version = Some(from_version);
        aggregate_query.to = query.until;
        aggregate_query.as_of = query.as_of;
        loop {
            let page = match store.read_aggregate(aggregate_query.clone()).await {
                Ok(page) => page,
                Err(StoreError::AggregateNotFound { .. }) => break,
                Err(e) => return Err(e.into()),
            };
            // Later pages stop at the version the first one saw, so appends meanwhile do not
            // tear the read.
            aggregate_query.to_version.get_or_insert(page.version);
            for event in &page.events {
                if event.position() > head {
                    break;
                }
                found |= fold_one(compiled, &mut state, event)?;
            }
            match page.next_from_version {
                Some(next) => aggregate_query.from_version = Some(next),
                None => break,
            }
        }
        Ok(found.then_some((state, head)))
    }

    /// Folds every matching event of one key from the store (cost: every event the filter
    /// matches, up to the head).
    async fn fold_filtered(
        &self,
        generation: &Generation,
        key: &str,
        query: &StateQuery,
    ) -> Result<Option<(Value, u64)>, ProjectionError> {
        let store = &self.inner.store;
        let compiled = &generation.compiled;
        let head = store.head().await?.position;
        let mut event_query = EventQuery::all(0, self.page_events());
        event_query.filter = compiled.filter().clone();
        event_query.to_position = Some(head);
        event_query.to = query.until;
        event_query.as_of = query.as_of;
        let mut state = compiled.initial().clone();
        let mut found = false;
        loop {
            let page = store.read_events(event_query.clone()).await?;
            for event in &page.events {
                let view = EventView::new(event);
                let event_key = key_of(compiled, &view).map_err(|e| fold_failure(event, &e.0))?;
                if event_key.as_deref() == Some(key) {
                    apply(compiled, &mut state, &view).map_err(|e| fold_failure(event, &e.0))?;
                    found = true;
                }
            }
            if page.next_after_position >= head || page.next_after_position == event_query.after_position {
                break;
            }
            event_query.after_position = page.next_after_position;
        }
        Ok(found.then_some((state, head)))
    }

    fn page_events(&self) -> usize {
        self.inner
            .options
            .batch_events
            .clamp(1, self.inner.store.limits().page_events_max.max(1))
    }

    /// A page of states in key order, after `after_key`.
    pub fn states(
        &self,
        name: &str,
        after_key: Option<&str>,
        limit: usize,
    ) -> Result<StatePage, ProjectionError> {
        let live = self.entry(name)?.live();
        let view = live.view.read();
        let lower = match after_key {
            Some(after) => Bound::Excluded(after),
            None => Bound::Unbounded,
        };
        let mut states: Vec<(String, Value)> = view
            .keys
            .range::<str, _>((lower, Bound::Unbounded))
            .take(limit.saturating_add(1))
            .map(|(k, e)| (k.clone(), e.state.clone()))
            .collect();
        let next_after_key = if states.len() > limit {
            states.truncate(limit);
            states.last().map(|(k, _)| k.clone())
        } else {
            None
        };
        Ok(StatePage {
            states,
            next_after_key,
            position: view.position,
        })
    }

    /// For `GET /v1/events/{id}/status`: each projection whose filter matches `event`, and
    /// whether it has processed it.
    pub fn event_status(&self, event: &Event) -> BTreeMap<String, bool> {
        let entries: Vec<Arc<Entry>> = self.inner.entries.read().values().cloned().collect();
        entries
            .iter()
            .filter_map(|entry| {
                let live = entry.live();
                live.compiled
                    .filter()
                    .matches(event)
                    .then(|| (entry.name.clone(), live.view.read().position >= event.position()))
            })
            .collect()
    }

    /// Stops every fold task after its current batch and writes each checkpoint that lags.
    /// Later changes are refused.
    pub async fn shutdown(&self) {
        let _guard = self.inner.manage.lock().await;
        self.inner.shutdown.cancel();
        let entries: Vec<Arc<Entry>> = self.inner.entries.read().values().cloned().collect();
        for entry in entries {
            let (live, rebuild) = {
                let slot = entry.slot.read();
                (slot.live.clone(), slot.rebuild.clone())
            };
            Self::stop(&live).await;
            if let Some(rebuild) = rebuild {
                Self::stop(&rebuild).await;
            }
        }
    }
}

fn fold_failure(event: &Event, problem: &str) -> ProjectionError {
    ProjectionError::Invalid(format!(
        "the event at position {} ({}) cannot be folded: {problem}",
        event.position(),
        event.event_type()
    ))
}

/// Folds one event into `state` if the filter passes it; whether it did.
fn fold_one(compiled: &Compiled, state: &mut Value, event: &Event) -> Result<bool, ProjectionError> {
    if !compiled.filter().matches(event) {
        return Ok(false);
    }
    apply(compiled, state, &EventView::new(event)).map_err(|e| fold_failure(event, &e.0))?;
    Ok(true)
}

/// The states a batch changed, and the snapshots it took.
#[derive(Debug, Default)]
struct Scratch {
    states: Vec<KeyRecord>,
    snapshots: Vec<SnapshotRecord>,
    unkeyed: u64,
}

/// Folds `events` into copies of the states they touch. On a failure: the index of the
/// event and why.
fn fold_events(
    compiled: &Compiled,
    view: &View,
    events: &[Event],
    snapshot_every: u64,
) -> Result<Scratch, (usize, String)> {
    let mut scratch = Scratch::default();
    let mut index: HashMap<String, usize> = HashMap::new();
    let snapshots = snapshot_every > 0 && compiled.key == KeySpec::AggregateId;
    for (i, event) in events.iter().enumerate() {
        let event_view = EventView::new(event);
        let key = match key_of(compiled, &event_view) {
            Ok(Some(key)) => key,
            Ok(None) => {
                scratch.unkeyed += 1;
                continue;
            }
            Err(e) => return Err((i, e.0)),
        };
        let at = match index.get(&key) {
            Some(&at) => at,
            None => {
                let record = match view.keys.get(&key) {
                    Some(entry) => KeyRecord {
                        key: key.clone(),
                        state: entry.state.clone(),
                        since_snapshot: entry.since_snapshot,
                        max_created_at: entry.max_created_at,
                    },
                    None => KeyRecord {
                        key: key.clone(),
                        state: compiled.initial().clone(),
                        since_snapshot: 0,
                        max_created_at: i64::MIN,
                    },
                };
                scratch.states.push(record);
                index.insert(key, scratch.states.len() - 1);
                scratch.states.len() - 1
            }
        };
        let Some(record) = scratch.states.get_mut(at) else {
            return Err((i, "internal: a scratch index is out of range".to_owned()));
        };
        apply(compiled, &mut record.state, &event_view).map_err(|e| (i, e.0))?;
        record.max_created_at = record.max_created_at.max(event.created_at().as_micros());
        if snapshots {
            record.since_snapshot += 1;
            if record.since_snapshot >= snapshot_every {
                record.since_snapshot = 0;
                scratch.snapshots.push(SnapshotRecord {
                    key: record.key.clone(),
                    version: event.version(),
                    position: event.position(),
                    recorded_at: event.recorded_at().as_micros(),
                    max_created_at: record.max_created_at,
                    state: record.state.clone(),
                });
            }
        }
    }
    Ok(scratch)
}

/// What a batch did.
enum BatchOutcome {
    Folded,
    Failed,
}

/// Folds a page, makes it durable, installs it for readers. Runs on a blocking thread.
fn fold_and_commit(
    generation: &Generation,
    events: Vec<Event>,
    next_after_position: u64,
    snapshot_every: u64,
    compact_bytes_min: u64,
) -> Result<BatchOutcome, ProjectionError> {
    let compiled = &generation.compiled;
    let (scratch, failure, position, unkeyed, durable_position) = {
        let view = generation.view.read();
        let (scratch, failure) = match fold_events(compiled, &view, &events, snapshot_every) {
            Ok(scratch) => (scratch, None),
            Err((at, problem)) => {
                let before = events.get(..at).unwrap_or_default();
                // The same fold up to the event before: it succeeded once, it succeeds again.
                let scratch = fold_events(compiled, &view, before, snapshot_every)
                    .map_err(|(_, e)| ProjectionError::Internal(format!("a refold failed: {e}")))?;
                let event = events
                    .get(at)
                    .ok_or_else(|| ProjectionError::Internal("failure index".to_owned()))?;
                let message = format!(
                    "the event at position {} ({}, aggregate '{}') cannot be folded: {problem}",
                    event.position(),
                    event.event_type(),
                    event.aggregate_id()
                );
                (scratch, Some((event.position(), message)))
            }
        };
        let position = match &failure {
            Some((failed_at, _)) => failed_at - 1,
            None => next_after_position,
        };
        let unkeyed = view.unkeyed + scratch.unkeyed;
        (
            scratch,
            failure,
            position.max(view.position),
            unkeyed,
            view.durable_position,
        )
    };
    let persist = !scratch.states.is_empty()
        || !scratch.snapshots.is_empty()
        || position.saturating_sub(durable_position) >= CHECKPOINT_GAP_MAX;
    if persist {
        let mut records = vec![encode_batch(position, unkeyed, &scratch.states)?];
        for snapshot in &scratch.snapshots {
            records.push(Record::Snapshot(snapshot.clone()).encode()?);
        }
        let refs: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
        generation.log.append(&refs)?;
    }
    {
        let mut view = generation.view.write();
        for record in scratch.states {
            view.keys.insert(
                record.key,
                KeyEntry {
                    state: record.state,
                    since_snapshot: record.since_snapshot,
                    max_created_at: record.max_created_at,
                },
            );
        }
        for snapshot in scratch.snapshots {
            view.snapshots
                .entry(snapshot.key.clone())
                .or_default()
                .push(snapshot);
        }
        view.position = position;
        view.unkeyed = unkeyed;
        if persist {
            view.durable_position = position;
        }
        if let Some((_, message)) = &failure {
            view.failed = Some(message.clone());
        }
    }
    if persist {
        maybe_compact(generation, compact_bytes_min)?;
    }
    Ok(if failure.is_some() {
        BatchOutcome::Failed
    } else {
        BatchOutcome::Folded
    })
}

/// The records of a generation's image (everything its log holds, once), and its position.
fn image_records(generation: &Generation) -> Result<(Vec<Vec<u8>>, u64), ProjectionError> {
    let view = generation.view.read();
    let mut records = vec![
        Record::Definition {
            definition: generation.compiled.definition.clone(),
        }
        .encode()?,
    ];
    if generation.live.load(Ordering::SeqCst) {
        records.push(Record::Live.encode()?);
    }
    let states: Vec<KeyRecord> = view
        .keys
        .iter()
        .map(|(key, entry)| KeyRecord {
            key: key.clone(),
            state: entry.state.clone(),
            since_snapshot: entry.since_snapshot,
            max_created_at: entry.max_created_at,
        })
        .collect();
    records.push(encode_batch(view.position, view.unkeyed, &states)?);
    for snapshots in view.snapshots.values() {
        for snapshot in snapshots {
            records.push(Record::Snapshot(snapshot.clone()).encode()?);
        }
    }
    Ok((records, view.position))
}

/// Rewrites the log as an image once it has grown past twice the last one. Runs on the
/// generation's own fold thread, so nothing changes the view meanwhile.
fn maybe_compact(generation: &Generation, compact_bytes_min: u64) -> Result<(), ProjectionError> {
    let len = generation.log.len();
    if len < compact_bytes_min || len < 2 * generation.image_len.load(Ordering::SeqCst) {
        return Ok(());
    }
    let (records, position) = image_records(generation)?;
    let image_bytes: usize = records.iter().map(|r| r.len() + 4).sum();
    if image_bytes > IMAGE_BYTES_MAX {
        // The journal rewrites an image as one frame, which has a ceiling: go on appending,
        // and try again once the log has doubled.
        tracing::warn!(
            image_bytes,
            "a projection's image is too large to compact its log"
        );
        generation.image_len.store(len, Ordering::SeqCst);
        return Ok(());
    }
    let refs: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
    generation.log.rewrite(&refs)?;
    generation.image_len.store(generation.log.len(), Ordering::SeqCst);
    generation.view.write().durable_position = position;
    Ok(())
}

/// Makes `generation` live in place of the current one: `live` durable in its log first,
/// then the swap for readers, then the old generation stopped and its log removed.
async fn promote(
    projections: &Projections,
    entry: &Entry,
    generation: &Arc<Generation>,
) -> Result<(), ProjectionError> {
    if generation.cancel.is_cancelled() {
        return Ok(());
    }
    {
        let generation = generation.clone();
        tokio::task::spawn_blocking(move || generation.log.append(&[&Record::Live.encode()?]))
            .await
            .map_err(blocking_error)??;
    }
    generation.live.store(true, Ordering::SeqCst);
    let old = {
        let mut slot = entry.slot.write();
        let old = std::mem::replace(&mut slot.live, generation.clone());
        slot.rebuild = None;
        old
    };
    let position = generation.view.read().position;
    entry.served.send_if_modified(|served| {
        let moved = position > *served;
        *served = (*served).max(position);
        moved
    });
    tracing::info!(projection = %entry.name, generation = generation.number, position, "a rebuilt projection now serves");
    Projections::stop(&old).await;
    projections.remove_log(&entry.name, old.number).await
}

/// The life of one generation: fold pages until cancelled, failed or poisoned.
async fn fold_task(projections: Projections, entry: Arc<Entry>, generation: Arc<Generation>) {
    let store = projections.inner.store.clone();
    let options = projections.inner.options.clone();
    let page_events = projections.page_events();
    let mut head = store.watch_head();
    let mut retry = Duration::from_millis(100);
    let read = |after: u64| {
        let store = store.clone();
        let mut query = EventQuery::all(after, page_events);
        query.filter = generation.compiled.filter().clone();
        async move { store.read_events(query).await }
    };
    // While a full page folds, the next one is read: reading and folding overlap during a
    // catch-up. It is used only if the fold ended where the page said (no failure).
    let mut prefetched: Option<(u64, JoinHandle<Result<EventPage, StoreError>>)> = None;
    loop {
        if generation.cancel.is_cancelled() || generation.view.read().failed.is_some() {
            break;
        }
        let after = generation.view.read().position;
        head.borrow_and_update();
        let pending = match prefetched.take() {
            Some((from, handle)) if from == after => handle,
            Some((_, handle)) => {
                handle.abort();
                tokio::spawn(read(after))
            }
            None => tokio::spawn(read(after)),
        };
        let abort = pending.abort_handle();
        let page = tokio::select! {
            page = pending => page.unwrap_or_else(|e| Err(StoreError::Internal(format!("a read task failed: {e}")))),
            () = generation.cancel.cancelled() => {
                abort.abort();
                break;
            }
        };
        let page = match page {
            Ok(page) => {
                retry = Duration::from_millis(100);
                page
            }
            Err(error) => {
                tracing::warn!(projection = %entry.name, %error, "reading events failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(retry) => {}
                    () = generation.cancel.cancelled() => break,
                }
                retry = (retry * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let caught_up = page.next_after_position >= page.head_position;
        if !caught_up && page.events.len() >= page_events {
            prefetched = Some((
                page.next_after_position,
                tokio::spawn(read(page.next_after_position)),
            ));
        }
        if !page.events.is_empty() || page.next_after_position > after {
            let work = generation.clone();
            let next = page.next_after_position;
            let outcome = tokio::task::spawn_blocking(move || {
                fold_and_commit(
                    &work,
                    page.events,
                    next,
                    options.snapshot_every,
                    options.compact_bytes_min,
                )
            })
            .await
            .map_err(blocking_error)
            .and_then(|r| r);
            let is_live = Arc::ptr_eq(&entry.slot.read().live, &generation);
            if is_live {
                let position = generation.view.read().position;
                entry.served.send_if_modified(|served| {
                    let moved = position > *served;
                    *served = (*served).max(position);
                    moved
                });
            }
            match outcome {
                Ok(BatchOutcome::Folded) => {}
                Ok(BatchOutcome::Failed) => {
                    tracing::warn!(projection = %entry.name, error = ?generation.view.read().failed, "projection failed");
                    break;
                }
                Err(error) => {
                    tracing::error!(projection = %entry.name, %error, "projection storage failed; the projection stops");
                    generation.view.write().failed = Some(STORAGE_FAILED.to_owned());
                    break;
                }
            }
        }
        if caught_up {
            let is_rebuild = entry
                .slot
                .read()
                .rebuild
                .as_ref()
                .is_some_and(|r| Arc::ptr_eq(r, &generation));
            if is_rebuild {
                if let Err(error) = promote(&projections, &entry, &generation).await {
                    tracing::error!(projection = %entry.name, %error, "swapping in a rebuilt projection failed");
                    generation.view.write().failed = Some(STORAGE_FAILED.to_owned());
                    break;
                }
                continue;
            }
            if *head.borrow() <= page.head_position {
                tokio::select! {
                    changed = head.changed() => if changed.is_err() { break },
                    () = generation.cancel.cancelled() => break,
                }
            }
        }
    }
    if let Some((_, handle)) = prefetched {
        handle.abort();
    }
    // The checkpoint of pages that changed nothing lags in memory: write it, so a restart
    // does not read them again.
    let (position, durable, unkeyed, failed) = {
        let view = generation.view.read();
        (
            view.position,
            view.durable_position,
            view.unkeyed,
            view.failed.is_some(),
        )
    };
    if position > durable && !failed {
        let work = generation.clone();
        let written = tokio::task::spawn_blocking(move || -> Result<(), ProjectionError> {
            work.log.append(&[&encode_batch(position, unkeyed, &[])?])
        })
        .await;
        if let Ok(Ok(())) = written {
            generation.view.write().durable_position = position;
        }
    }
}
