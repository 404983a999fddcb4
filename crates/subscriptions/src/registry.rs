//! [`Subscriptions`]: every persistent-subscription group of a server.
//!
//! Each group has:
//! - its [`GroupState`] under a mutex (held only for in-memory work, never across I/O);
//! - a reader task that reads the group's matching events from the store ahead of its
//!   checkpoint (a bounded number: [`Options::live_events_max`]), paging with
//!   `next_after_position` and waking on the store's head;
//! - a timer task that releases expired leases (waking long polls) and writes deliveries and
//!   parks of expired leases to the journal now and then;
//! - its journal ([`GroupLog`]). A request that changes the state (ack, nack, replay) applies
//!   the change in memory, then waits until the journal has synced every change up to its
//!   own. Concurrent requests share one sync: whoever holds the journal writes everything
//!   pending (group commit). A failed write poisons the group: every later request on it
//!   fails with `Unavailable` until the server restarts from what is durable.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::time::Duration;

use factstore_core::{Event, EventQuery, EventStore};
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::definition::{GroupDefinition, Start, validate_group_name};
use crate::error::SubscriptionError;
use crate::record::{Image, Record};
use crate::state::{Delivery, GroupState};
use crate::storage::{GroupLog, MemoryStorage, Storage};

/// Bounds and timers of the groups.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Options {
    /// Most events a group holds read ahead and unacked (their bodies are in memory).
    pub live_events_max: usize,
    /// Most acked positions a group keeps above its checkpoint (behind one slow event)
    /// before it stops reading ahead.
    pub acked_above_checkpoint_max: usize,
    /// Most events read from the store at once.
    pub read_page_max: usize,
    /// A journal longer than this (and than twice its last image) is compacted.
    pub compact_bytes: u64,
    /// How often leases are checked for expiry.
    pub tick: Duration,
    /// How often deliveries and expiry parks are written when no request writes them.
    pub flush_every: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            live_events_max: 50_000,
            acked_above_checkpoint_max: 1 << 20,
            read_page_max: 5_000,
            compact_bytes: 16 << 20,
            tick: Duration::from_millis(50),
            flush_every: Duration::from_secs(1),
        }
    }
}

/// A group as `GET /v1/subscriptions/{group}` answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct GroupStatus {
    pub group: String,
    pub filter: factstore_core::EventFilter,
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::StartSchema))]
    pub start: Start,
    pub ack_timeout_ms: u64,
    pub max_deliveries: u32,
    pub ordering: crate::definition::Ordering,
    /// Every position up to it is acked, parked or passed over by the filter.
    pub checkpoint: u64,
    /// The store's head.
    pub head_position: u64,
    /// `head_position − checkpoint` (0 when the group starts after the head).
    pub lag: u64,
    /// Events leased to consumers now.
    pub in_flight: usize,
    /// Events read ahead and not yet acked, leased or not.
    pub pending: usize,
    /// Parked (dead-lettered) events.
    pub parked: usize,
}

/// A parked event and how many times it was delivered.
#[derive(Debug, Clone)]
pub struct ParkedEvent {
    pub event: Event,
    pub attempts: u32,
}

/// Whether a put created, changed or left a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    Replaced,
    Unchanged,
}

#[derive(Debug)]
struct Inner {
    state: GroupState,
    /// Why the group accepts no more changes.
    poisoned: Option<String>,
}

#[derive(Debug)]
struct Group {
    name: String,
    definition: GroupDefinition,
    inner: Mutex<Inner>,
    log: Arc<dyn GroupLog>,
    /// Long polls waiting for events.
    pollers: Notify,
    /// The reader, waiting for room.
    reader: Notify,
    /// The change count the journal holds; its lock is the right to write the journal.
    durable: tokio::sync::Mutex<u64>,
    /// Length of the last image written, to decide when to compact.
    image_bytes: AtomicU64,
    /// Cancelled when the group is deleted or replaced, or the server stops.
    stop: CancellationToken,
    /// Deleted or replaced: requests look the group up again.
    gone: AtomicBool,
}

/// Why an operation on a group handle did not happen.
enum Failure {
    /// The handle is stale (the group was replaced or deleted): look it up again.
    Gone,
    Error(SubscriptionError),
}

impl From<SubscriptionError> for Failure {
    fn from(error: SubscriptionError) -> Failure {
        Failure::Error(error)
    }
}

impl Group {
    /// Runs `f` on the state unless the group is gone or poisoned.
    fn with_state<T>(
        &self,
        f: impl FnOnce(&mut GroupState) -> Result<T, SubscriptionError>,
    ) -> Result<T, Failure> {
        let mut inner = self.inner.lock();
        if self.gone.load(AtomicOrdering::Acquire) {
            return Err(Failure::Gone);
        }
        if let Some(reason) = &inner.poisoned {
            return Err(Failure::Error(SubscriptionError::Unavailable(reason.clone())));
        }
        Ok(f(&mut inner.state)?)
    }
}

/// Every group of a server.
pub struct Subscriptions {
    store: Arc<dyn EventStore>,
    storage: Arc<dyn Storage>,
    options: Options,
    groups: RwLock<BTreeMap<String, Arc<Group>>>,
    /// Serialises creations, replacements and deletions.
    admin: tokio::sync::Mutex<()>,
    head: watch::Receiver<u64>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    epoch: tokio::time::Instant,
}

impl std::fmt::Debug for Subscriptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriptions")
            .field("storage", &self.storage)
            .field("groups", &self.groups.read().keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Subscriptions {
    /// Groups kept in memory only, none yet (for `app(store)` and tests). Needs no runtime.
    pub fn in_memory(store: Arc<dyn EventStore>) -> Arc<Subscriptions> {
        Subscriptions::empty(store, Arc::new(MemoryStorage::new()), Options::default())
    }

    fn empty(store: Arc<dyn EventStore>, storage: Arc<dyn Storage>, options: Options) -> Arc<Subscriptions> {
        let head = store.watch_head();
        Arc::new(Subscriptions {
            store,
            storage,
            options,
            groups: RwLock::new(BTreeMap::new()),
            admin: tokio::sync::Mutex::new(()),
            head,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            epoch: tokio::time::Instant::now(),
        })
    }

    /// Loads every group of `storage` and starts delivering. Within the async runtime.
    pub async fn open(
        store: Arc<dyn EventStore>,
        storage: Arc<dyn Storage>,
        options: Options,
    ) -> Result<Arc<Subscriptions>, SubscriptionError> {
        let subscriptions = Subscriptions::empty(store, storage.clone(), options);
        let loaded = blocking(move || storage.load()).await?;
        for (name, log, records) in loaded {
            let image = Image::replay(&records)
                .map_err(|e| SubscriptionError::Internal(format!("group '{name}': {e}")))?;
            if image.name != name {
                return Err(SubscriptionError::Internal(format!(
                    "the journal of group '{name}' names group '{}'",
                    image.name
                )));
            }
            let image_bytes = records.first().map_or(0, |r| r.len() as u64);
            let group = subscriptions.start_group(image, log, image_bytes, false).await?;
            subscriptions.groups.write().insert(name, group);
        }
        Ok(subscriptions)
    }

    /// Stops every group: tasks end, deliveries not yet written are written.
    pub async fn close(&self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn head(&self) -> u64 {
        *self.head.borrow()
    }

    fn group(&self, name: &str) -> Result<Arc<Group>, SubscriptionError> {
        self.groups
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| SubscriptionError::NotFound {
                group: name.to_owned(),
            })
    }

    /// Runs `op` on the group, again on its new handle when it was replaced meanwhile.
    async fn on_group<T, F, Fut>(&self, name: &str, op: F) -> Result<T, SubscriptionError>
    where
        F: Fn(Arc<Group>) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        loop {
            let group = self.group(name)?;
            match op(group).await {
                Ok(value) => return Ok(value),
                Err(Failure::Error(error)) => return Err(error),
                Err(Failure::Gone) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    }

    /// Creates a group, or replaces its definition. A new group starts where `start` says;
    /// a replaced one keeps its progress (checkpoint, acks, parked events, attempts) and
    /// reads again from its checkpoint with the new definition: events leased under the old
    /// one are delivered again.
    pub async fn put(
        &self,
        name: &str,
        definition: GroupDefinition,
    ) -> Result<(PutOutcome, GroupStatus), SubscriptionError> {
        validate_group_name(name)?;
        definition.validate(self.store.limits())?;
        let _admin = self.admin.lock().await;
        let existing = self.groups.read().get(name).cloned();
        let outcome = match existing {
            Some(old) if old.definition == definition => PutOutcome::Unchanged,
            Some(old) => {
                // Holding the journal's write lock: no flush of the old handle runs meanwhile.
                let mut durable = old.durable.lock().await;
                let (image, upto) = {
                    let mut inner = old.inner.lock();
                    if let Some(reason) = &inner.poisoned {
                        return Err(SubscriptionError::Unavailable(reason.clone()));
                    }
                    // From here on requests on the old handle wait and retry on the new one;
                    // every change made so far is in the image.
                    old.gone.store(true, AtomicOrdering::Release);
                    inner.state.discard_records();
                    (inner.state.image(name, &definition), inner.state.changes())
                };
                let bytes = Record::Image(Box::new(image.clone())).encode();
                let image_bytes = bytes.len() as u64;
                let log = old.log.clone();
                let written = blocking(move || log.rewrite(&[&bytes])).await;
                let mut image = image;
                image.settle();
                let started = match written {
                    Ok(()) => {
                        // The image holds every change the old handle accepted: their
                        // requests may answer.
                        *durable = upto;
                        self.start_group(image, old.log.clone(), image_bytes, false).await
                    }
                    Err(error) => Err(error),
                };
                let group = match started {
                    Ok(group) => group,
                    Err(error) => {
                        old.inner.lock().poisoned = Some(format!("replacing the definition failed: {error}"));
                        old.gone.store(false, AtomicOrdering::Release);
                        old.pollers.notify_waiters();
                        return Err(SubscriptionError::Unavailable(error.to_string()));
                    }
                };
                self.groups.write().insert(name.to_owned(), group);
                old.stop.cancel();
                old.pollers.notify_waiters();
                PutOutcome::Replaced
            }
            None => {
                let checkpoint = match definition.start {
                    Start::Beginning => 0,
                    Start::End => self.store.head().await?.position,
                    Start::After(p) => p,
                };
                let image = Image::new(name, definition, checkpoint);
                let bytes = Record::Image(Box::new(image.clone())).encode();
                let image_bytes = bytes.len() as u64;
                let storage = self.storage.clone();
                let group_name = name.to_owned();
                let log = blocking(move || storage.create(&group_name, &[&bytes])).await?;
                let group = self.start_group(image, log, image_bytes, true).await?;
                self.groups.write().insert(name.to_owned(), group);
                PutOutcome::Created
            }
        };
        Ok((outcome, self.status(name)?))
    }

    /// Deletes a group and its journal.
    pub async fn delete(&self, name: &str) -> Result<(), SubscriptionError> {
        let _admin = self.admin.lock().await;
        let group = self.group(name)?;
        let _durable = group.durable.lock().await;
        group.gone.store(true, AtomicOrdering::Release);
        let storage = self.storage.clone();
        let group_name = name.to_owned();
        if let Err(error) = blocking(move || storage.delete(&group_name)).await {
            group.gone.store(false, AtomicOrdering::Release);
            return Err(error);
        }
        self.groups.write().remove(name);
        group.stop.cancel();
        group.pollers.notify_waiters();
        Ok(())
    }

    /// Every group's journal as a backup takes it (`factstore_engine::backup`). Journals that
    /// are not files are left out.
    pub fn durable_logs(&self) -> Vec<factstore_engine::backup::DurableFile> {
        let groups: Vec<Arc<Group>> = self.groups.read().values().cloned().collect();
        groups.iter().filter_map(|g| g.log.durable()).collect()
    }

    /// The status of a group.
    pub fn status(&self, name: &str) -> Result<GroupStatus, SubscriptionError> {
        let group = self.group(name)?;
        Ok(self.status_of(&group))
    }

    /// Every group, by name.
    pub fn list(&self) -> Vec<GroupStatus> {
        let groups: Vec<Arc<Group>> = self.groups.read().values().cloned().collect();
        groups.iter().map(|g| self.status_of(g)).collect()
    }

    fn status_of(&self, group: &Group) -> GroupStatus {
        let counts = group.inner.lock().state.counts();
        let head = self.head();
        let definition = &group.definition;
        GroupStatus {
            group: group.name.clone(),
            filter: definition.filter.clone(),
            start: definition.start,
            ack_timeout_ms: definition.ack_timeout_ms,
            max_deliveries: definition.max_deliveries,
            ordering: definition.ordering,
            checkpoint: counts.checkpoint,
            head_position: head,
            lag: head.saturating_sub(counts.checkpoint),
            in_flight: counts.in_flight,
            pending: counts.pending,
            parked: counts.parked,
        }
    }

    /// Leases up to `max` events to `consumer`, waiting up to `wait` for the first.
    pub async fn poll(
        &self,
        name: &str,
        consumer: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, SubscriptionError> {
        let consumer: Arc<str> = Arc::from(consumer);
        let deadline = tokio::time::Instant::now() + wait;
        self.on_group(name, |group| {
            let consumer = consumer.clone();
            async move {
                loop {
                    let notified = group.pollers.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    let now = self.now_ms();
                    let out = group.with_state(|state| Ok(state.deliver(&consumer, max, now)))?;
                    if !out.is_empty() {
                        return Ok(out);
                    }
                    tokio::select! {
                        () = &mut notified => {}
                        () = tokio::time::sleep_until(deadline) => return Ok(out),
                        () = group.stop.cancelled() => {
                            if self.shutdown.is_cancelled() {
                                return Ok(out);
                            }
                            return Err(Failure::Gone);
                        }
                    }
                }
            }
        })
        .await
    }

    /// Acks `positions` durably (see [`GroupState::ack`] for which positions are taken).
    pub async fn ack(&self, name: &str, positions: &[u64]) -> Result<(), SubscriptionError> {
        let head = self.head();
        self.on_group(name, |group| async move {
            let ticket = group.with_state(|state| {
                state.ack(positions, head)?;
                Ok(state.changes())
            })?;
            group.reader.notify_one();
            group.pollers.notify_waiters();
            self.flush(&group, Some(ticket)).await
        })
        .await
    }

    /// Nacks `positions` (see [`GroupState::nack`]); parks are durable when it answers.
    pub async fn nack(&self, name: &str, positions: &[u64], park: bool) -> Result<(), SubscriptionError> {
        let head = self.head();
        self.on_group(name, |group| async move {
            let ticket = group.with_state(|state| {
                state.nack(positions, park, head)?;
                Ok(state.changes())
            })?;
            group.reader.notify_one();
            group.pollers.notify_waiters();
            self.flush(&group, Some(ticket)).await
        })
        .await
    }

    /// Parked events above `after`, at most `limit`, and where the next page starts.
    pub async fn parked(
        &self,
        name: &str,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<ParkedEvent>, Option<u64>), SubscriptionError> {
        let group = self.group(name)?;
        let mut page = group
            .inner
            .lock()
            .state
            .parked_page(after, limit.saturating_add(1));
        let next = if page.len() > limit {
            page.truncate(limit);
            page.last().map(|&(p, _)| p)
        } else {
            None
        };
        let mut out = Vec::with_capacity(page.len());
        for (p, attempts) in page {
            out.push(ParkedEvent {
                event: read_at(&*self.store, p).await?,
                attempts,
            });
        }
        Ok((out, next))
    }

    /// Puts parked events back into delivery, durably: `positions` (each must be parked), or
    /// the lowest `limit` parked events. Returns how many were replayed.
    pub async fn replay(
        &self,
        name: &str,
        positions: Option<&[u64]>,
        limit: usize,
    ) -> Result<usize, SubscriptionError> {
        self.on_group(name, |group| async move {
            let candidates = group.with_state(|state| state.replay_candidates(positions, limit))?;
            let mut events = Vec::with_capacity(candidates.len());
            for p in candidates {
                events.push(read_at(&*self.store, p).await?);
            }
            let (count, ticket) = group.with_state(|state| Ok((state.replay(events), state.changes())))?;
            group.pollers.notify_waiters();
            self.flush(&group, Some(ticket)).await?;
            Ok(count)
        })
        .await
    }

    async fn flush(&self, group: &Arc<Group>, ticket: Option<u64>) -> Result<(), Failure> {
        flush(group, ticket, self.options.compact_bytes).await
    }

    /// Builds a group from a settled image and starts its tasks.
    async fn start_group(
        &self,
        image: Image,
        log: Arc<dyn GroupLog>,
        image_bytes: u64,
        fresh: bool,
    ) -> Result<Arc<Group>, SubscriptionError> {
        let mut replaying = Vec::with_capacity(image.replaying.len());
        for &p in image.replaying.keys() {
            replaying.push(read_at(&*self.store, p).await?);
        }
        // A loaded or replaced group has lost its leases: see `GroupState::from_image`.
        let loaded_head = if fresh { 0 } else { self.head() };
        let state = GroupState::from_image(&image, replaying, loaded_head)?;
        let group = Arc::new(Group {
            name: image.name.clone(),
            definition: image.definition.clone(),
            inner: Mutex::new(Inner {
                state,
                poisoned: None,
            }),
            log,
            pollers: Notify::new(),
            reader: Notify::new(),
            durable: tokio::sync::Mutex::new(0),
            image_bytes: AtomicU64::new(image_bytes),
            stop: self.shutdown.child_token(),
            gone: AtomicBool::new(false),
        });
        self.tasks.spawn(read_ahead(
            self.store.clone(),
            group.clone(),
            self.options.clone(),
        ));
        self.tasks
            .spawn(expire_and_flush(group.clone(), self.epoch, self.options.clone()));
        Ok(group)
    }
}

/// Writes the group's pending records, unless the journal already holds change `ticket`
/// (with `None`: whatever is pending). Concurrent callers share one write. A journal longer
/// than `compact_bytes` (and than twice its last image) is rewritten as one image instead.
async fn flush(group: &Arc<Group>, ticket: Option<u64>, compact_bytes: u64) -> Result<(), Failure> {
    let mut durable = group.durable.lock().await;
    if ticket.is_some_and(|t| *durable >= t) {
        return Ok(());
    }
    let threshold = compact_bytes.max(2 * group.image_bytes.load(AtomicOrdering::Relaxed));
    let (records, compacted, upto) = {
        let mut inner = group.inner.lock();
        if group.gone.load(AtomicOrdering::Acquire) {
            // Replaced or deleted while this waited: the image written then holds every
            // change made before.
            return if ticket.is_some_and(|t| *durable >= t) {
                Ok(())
            } else {
                Err(Failure::Gone)
            };
        }
        if let Some(reason) = &inner.poisoned {
            return Err(Failure::Error(SubscriptionError::Unavailable(reason.clone())));
        }
        let upto = inner.state.changes();
        if group.log.len() > threshold {
            let image = inner.state.image(&group.name, &group.definition);
            inner.state.discard_records();
            (vec![Record::Image(Box::new(image)).encode()], true, upto)
        } else {
            let records: Vec<Vec<u8>> = inner.state.take_records().iter().map(Record::encode).collect();
            (records, false, upto)
        }
    };
    if records.is_empty() {
        *durable = upto;
        return Ok(());
    }
    let log = group.log.clone();
    let image_bytes = records.first().map_or(0, |r| r.len() as u64);
    let written = blocking(move || {
        let refs: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
        if compacted {
            log.rewrite(&refs)
        } else {
            log.append(&refs)
        }
    })
    .await;
    match written {
        Ok(()) => {
            if compacted {
                group.image_bytes.store(image_bytes, AtomicOrdering::Relaxed);
            }
            *durable = upto;
            Ok(())
        }
        Err(error) => {
            tracing::error!(group = %group.name, %error, "subscription journal write failed; the group refuses changes until restart");
            group.inner.lock().poisoned = Some(error.to_string());
            group.pollers.notify_waiters();
            Err(Failure::Error(SubscriptionError::Unavailable(error.to_string())))
        }
    }
}

/// The timer task of a group: releases expired leases and writes deliveries and parks now
/// and then; when the group stops, writes what is pending (unless it was deleted or
/// replaced, whose image holds it).
async fn expire_and_flush(group: Arc<Group>, epoch: tokio::time::Instant, options: Options) {
    let mut interval = tokio::time::interval(options.tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_flush = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = group.stop.cancelled() => break,
        }
        let now = epoch.elapsed().as_millis() as u64;
        let (expired, has_records) = {
            let mut inner = group.inner.lock();
            let expired = inner.state.expire(now);
            (expired, inner.state.has_records())
        };
        if expired > 0 {
            group.pollers.notify_waiters();
            group.reader.notify_one();
        }
        if has_records && last_flush.elapsed() >= options.flush_every {
            last_flush = tokio::time::Instant::now();
            // A failure poisons the group and is answered to the next request.
            let _ = flush(&group, None, options.compact_bytes).await;
        }
    }
    if !group.gone.load(AtomicOrdering::Acquire) {
        let _ = flush(&group, None, options.compact_bytes).await;
    }
}

/// The reader task of a group: keeps up to the room the state allows read ahead.
async fn read_ahead(store: Arc<dyn EventStore>, group: Arc<Group>, options: Options) {
    let mut head = store.watch_head();
    loop {
        if group.stop.is_cancelled() {
            return;
        }
        let (read, room) = {
            let inner = group.inner.lock();
            let room = if inner.poisoned.is_some() {
                0
            } else {
                inner
                    .state
                    .room(options.live_events_max, options.acked_above_checkpoint_max)
            };
            (inner.state.read_position(), room)
        };
        if room == 0 {
            tokio::select! {
                () = group.reader.notified() => {}
                () = group.stop.cancelled() => return,
            }
            continue;
        }
        let head_position = *head.borrow_and_update();
        if head_position <= read {
            tokio::select! {
                changed = head.changed() => if changed.is_err() { return },
                () = group.stop.cancelled() => return,
            }
            continue;
        }
        let query = EventQuery {
            filter: group.definition.filter.clone(),
            to_position: Some(head_position),
            limit: room.min(options.read_page_max).max(1),
            ..EventQuery::all(read, 1)
        };
        match store.read_events(query).await {
            Ok(page) => {
                let ready = {
                    let mut inner = group.inner.lock();
                    if inner.state.read_position() == read {
                        inner.state.add_read(page.events, page.next_after_position);
                    }
                    inner.state.has_ready()
                };
                if ready {
                    group.pollers.notify_waiters();
                }
            }
            Err(error) => {
                tracing::warn!(group = %group.name, %error, "reading events for a subscription group failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = group.stop.cancelled() => return,
                }
            }
        }
    }
}

/// The event at position `p`.
async fn read_at(store: &dyn EventStore, p: u64) -> Result<Event, SubscriptionError> {
    let query = EventQuery {
        to_position: Some(p),
        ..EventQuery::all(p.saturating_sub(1), 1)
    };
    let page = store.read_events(query).await?;
    page.events
        .into_iter()
        .find(|e| e.position() == p)
        .ok_or_else(|| SubscriptionError::Internal(format!("the store has no event at position {p}")))
}

/// Runs blocking I/O off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SubscriptionError> + Send + 'static,
) -> Result<T, SubscriptionError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SubscriptionError::Internal(format!("a journal task failed: {e}")))?
}
