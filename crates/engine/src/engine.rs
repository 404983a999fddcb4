//! The engine: opening a data folder, the shared state of the writer, the indexer and readers,
//! and the read paths.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::thread::JoinHandle;

use factstore_core::{
    AggregatePage, AggregateQuery, ArchiveOutcome, CommitOutcome, Direction, Event, EventPage, EventQuery,
    Head, Limits, PreparedCommit, Snapshot, SnapshotInfo, StorageStats, StoreError, Timestamp,
};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use crate::error::{EngineError, Result};
use crate::index::Index;
use crate::index::keys::TermKind;
use crate::io::{FileSystem, StdFileSystem};
use crate::log::format::Loc;
use crate::log::reader::Log;
use crate::log::writer::{WriteRequest, Writer, WriterJob};
use crate::snapshots::Snapshots;
use crate::{indexer, log::recovery};

/// How the engine runs. `EngineOptions::default()` is what `factstore serve` uses.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Where all disk I/O goes.
    pub fs: Arc<dyn FileSystem>,
    pub limits: Limits,
    /// A segment is closed and a new one started when a frame would take it past this size.
    pub segment_bytes_max: u64,
    /// The active memtable is written to a run once it holds this many events; start-up
    /// replays at most about twice this many events from the log.
    pub memtable_events_max: usize,
    /// Aggregates whose version and type the writer keeps in memory.
    pub aggregate_cache_entries: usize,
    /// Commits waiting for the writer; more wait in their callers (back-pressure).
    pub queue_depth: usize,
    /// Index runs of one level merged into one at a time (at least 2). Each merge rewrites
    /// the entries it takes in, so an entry is rewritten once per level, and the levels number
    /// log base fan-in of (events / memtable size): 8 rewrites half as often as 4 (merges took
    /// a third of the index thread's time at 1000-event batches), while a lookup still meets
    /// few runs, each behind a bloom filter.
    pub merge_fan_in: usize,
    /// The most aggregate-index entries a read (or a condition) by `aggregate_id_prefix` walks
    /// before it gives way to the event-type or scan plan: a prefix over a few aggregates (a
    /// seat, a customer's orders) is answered from their entries, one over much of the store
    /// by the other plans.
    pub prefix_entries_max: usize,
    /// Cold storage for archiving; `None` refuses to archive (and to open a store that has
    /// archived segments).
    pub archive: Option<crate::archive::ArchiveOptions>,
}

impl Default for EngineOptions {
    fn default() -> EngineOptions {
        EngineOptions {
            fs: Arc::new(StdFileSystem),
            limits: Limits::default(),
            segment_bytes_max: 256 << 20,
            memtable_events_max: 256 * 1024,
            aggregate_cache_entries: 256 * 1024,
            queue_depth: 4096,
            merge_fan_in: 8,
            prefix_entries_max: 65_536,
            archive: None,
        }
    }
}

/// State shared by the writer, the indexer and readers.
#[derive(Debug)]
pub struct Shared {
    pub fs: Arc<dyn FileSystem>,
    pub dir: PathBuf,
    pub log: Log,
    pub index: Index,
    pub limits: Limits,
    /// The last durable, indexed position: readers never look past it.
    head: AtomicU64,
    /// `recorded_at` of the head event, in microseconds; `i64::MIN` for an empty store.
    head_recorded_at: AtomicI64,
    head_tx: watch::Sender<u64>,
    poison: Mutex<Option<String>>,
    /// `EngineOptions::merge_fan_in`.
    merge_fan_in: usize,
    /// `EngineOptions::prefix_entries_max`.
    prefix_entries_max: usize,
}

impl Shared {
    /// Whether the indexer has nothing to do: no frozen memtable waits, no merge runs and
    /// none is due. (The active memtable may still be filling.)
    pub fn index_quiet(&self) -> bool {
        let state = self.index.state.read();
        state.frozen.is_empty()
            && !self.index.merging.load(Ordering::Acquire)
            && indexer::merge_candidate(&state.runs, self.merge_fan_in.max(2)).is_none()
    }

    pub fn log_dir(&self) -> PathBuf {
        self.dir.join("log")
    }

    pub fn index_dir(&self) -> PathBuf {
        self.dir.join("index")
    }

    pub fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    pub fn publish_head(&self, position: u64, recorded_at: Timestamp) {
        self.head_recorded_at
            .store(recorded_at.as_micros(), Ordering::Release);
        self.head.store(position, Ordering::Release);
        self.head_tx.send_replace(position);
    }

    pub fn poisoned(&self) -> Option<String> {
        self.poison.lock().clone()
    }

    pub fn poison(&self, reason: String) {
        self.poison.lock().get_or_insert(reason);
    }

    /// Reads events as `read_events` does, with an explicit head. The plan, in order of
    /// preference: by `aggregate_id`; by correlation or causation id; by the aggregates under
    /// `aggregate_id_prefix` when few; by event types; else a scan.
    pub fn read_events_until(&self, query: &EventQuery, head: u64) -> Result<EventPage> {
        // The range ends at min(head, to_position) whatever `as_of` says: `next_after_position`
        // of a page that is not full is that end. `as_of` only shortens the part worth
        // reading, since `recorded_at` never decreases along positions.
        let range_end = head.min(query.to_position.unwrap_or(u64::MAX));
        let mut end = range_end;
        if let Some(as_of) = query.as_of {
            end = end.min(self.last_recorded_at_or_before(as_of, head)?);
        }
        let after = query.after_position;
        let limit = query.limit.max(1);
        let mut events = Vec::with_capacity(limit.min(1024));
        if after < end {
            let filter = &query.filter;
            let driven = if let Some(aggregate_id) = &filter.aggregate_id {
                self.aggregate_driven(aggregate_id, query, after, end, limit, &mut events)?;
                true
            } else if let Some(term) = filter
                .correlation_id
                .as_deref()
                .map(|t| (TermKind::Correlation, t))
                .or(filter.causation_id.as_deref().map(|t| (TermKind::Causation, t)))
            {
                self.term_driven(&[term], query, after, end, limit, &mut events)?;
                true
            } else if let Some(prefix) = filter.aggregate_id_prefix.as_deref()
                && self.prefix_driven(prefix, query, after, end, limit, &mut events)?
            {
                true
            } else if !filter.event_types.is_empty() {
                let terms: Vec<(TermKind, &str)> = filter
                    .event_types
                    .iter()
                    .map(|t| (TermKind::EventType, t.as_str()))
                    .collect();
                self.term_driven(&terms, query, after, end, limit, &mut events)?;
                true
            } else {
                false
            };
            if !driven {
                self.scan_driven(query, after, end, limit, &mut events)?;
            }
        }
        Ok(EventPage::ending(events, after, limit, range_end, head))
    }

    /// Reads one aggregate's events in position order from its index entries: finds the first
    /// version past `after` by binary search (versions rise with positions), then pages forward,
    /// so a page costs the same at the start and at the end of a long aggregate.
    fn aggregate_driven(
        &self,
        aggregate_id: &str,
        query: &EventQuery,
        after: u64,
        end: u64,
        limit: usize,
        out: &mut Vec<Event>,
    ) -> Result<()> {
        const BATCH: u64 = 1024;
        let Some(last) = self.index.aggregate_last(aggregate_id, end)? else {
            return Ok(());
        };
        let (mut lo, mut hi) = (1u64, last.version + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let position = self
                .index
                .aggregate_entries(aggregate_id, mid, mid, end)?
                .first()
                .map(|e| e.1);
            match position {
                Some(position) if position > after => hi = mid,
                Some(_) => lo = mid + 1,
                None => {
                    return Err(StoreError::Internal(format!(
                        "aggregate '{aggregate_id}' has no version {mid} in the index"
                    ))
                    .into());
                }
            }
        }
        let mut version = lo;
        while version <= last.version && out.len() < limit {
            let batch_end = last.version.min(version + BATCH - 1);
            let list: Vec<(u64, Loc)> = self
                .index
                .aggregate_entries(aggregate_id, version, batch_end, end)?
                .into_iter()
                .map(|(_, position, loc)| (position, loc))
                .collect();
            self.collect_candidates(vec![list], None, query, limit, out)?;
            version = batch_end + 1;
        }
        Ok(())
    }

    /// Pages through term index entries, reads the candidates, keeps those that match.
    fn term_driven(
        &self,
        terms: &[(TermKind, &str)],
        query: &EventQuery,
        after: u64,
        end: u64,
        limit: usize,
        out: &mut Vec<Event>,
    ) -> Result<()> {
        const BATCH: usize = 1024;
        let mut cursor = after;
        loop {
            let mut lists = Vec::with_capacity(terms.len());
            let mut cut = u64::MAX;
            for &(kind, term) in terms {
                let list = self.index.term_entries(kind, term, cursor, end, BATCH)?;
                if list.len() >= BATCH {
                    cut = cut.min(list.last().map_or(u64::MAX, |e| e.0));
                }
                lists.push(list);
            }
            let exhausted = cut == u64::MAX;
            let last = self.collect_candidates(lists, Some(cut), query, limit, out)?;
            if out.len() >= limit || exhausted {
                return Ok(());
            }
            cursor = last.unwrap_or(cut);
        }
    }

    /// Reads the events of the aggregates under `prefix` from the aggregate index, when they
    /// are few enough (at most `prefix_entries_max` index entries); returns false, reading
    /// nothing, when they are not, so that another plan runs.
    fn prefix_driven(
        &self,
        prefix: &str,
        query: &EventQuery,
        after: u64,
        end: u64,
        limit: usize,
        out: &mut Vec<Event>,
    ) -> Result<bool> {
        let Some(entries) = self
            .index
            .prefix_entries(prefix, after, end, self.prefix_entries_max)?
        else {
            return Ok(false);
        };
        self.collect_candidates(vec![entries], None, query, limit, out)?;
        Ok(true)
    }

    /// Merges ascending candidate lists (up to `cut`), reads them, keeps matches. Returns the
    /// last position considered.
    fn collect_candidates(
        &self,
        lists: Vec<Vec<(u64, Loc)>>,
        cut: Option<u64>,
        query: &EventQuery,
        limit: usize,
        out: &mut Vec<Event>,
    ) -> Result<Option<u64>> {
        let mut merged: Vec<(u64, Loc)> = lists.into_iter().flatten().collect();
        merged.sort_unstable_by_key(|e| e.0);
        merged.dedup_by_key(|e| e.0);
        if let Some(cut) = cut {
            merged.retain(|e| e.0 <= cut);
        }
        let mut last = None;
        for chunk in merged.chunks(256) {
            let mut locs: Vec<Loc> = chunk.iter().map(|e| e.1).collect();
            locs.sort_unstable();
            let mut events = self.log.read_events(&locs)?;
            events.sort_unstable_by_key(Event::position);
            for event in events {
                last = Some(event.position());
                if query.matches(&event) {
                    out.push(event);
                    if out.len() >= limit {
                        return Ok(last);
                    }
                }
            }
        }
        Ok(last.or(cut))
    }

    /// Reads the log in order, skipping blocks that the zone maps rule out.
    fn scan_driven(
        &self,
        query: &EventQuery,
        after: u64,
        end: u64,
        limit: usize,
        out: &mut Vec<Event>,
    ) -> Result<()> {
        let mut from = after + 1;
        while from <= end && out.len() < limit {
            // Skip whole blocks whose created_at range misses the bounds.
            let mut to = end;
            if (query.from.is_some() || query.to.is_some())
                && let Some((min, max, block_end)) = self.index.created_block(from)
            {
                let misses = query.from.is_some_and(|f| max < f.as_micros())
                    || query.to.is_some_and(|t| min > t.as_micros());
                if misses {
                    from = block_end;
                    continue;
                }
                to = end.min(block_end - 1);
            }
            let Some((_, start)) = self.index.scan_start(from) else {
                return Err(StoreError::Internal(format!(
                    "position {from} is below the head but not indexed"
                ))
                .into());
            };
            self.log.scan(start, from, to, limit - out.len(), |event| {
                if query.matches(&event) {
                    out.push(event);
                    if out.len() >= limit {
                        return Ok(ControlFlow::Break(()));
                    }
                }
                Ok(ControlFlow::Continue(()))
            })?;
            from = to + 1;
        }
        Ok(())
    }

    /// The last position at or below `head` recorded at or before `as_of`; 0 when none.
    pub fn last_recorded_at_or_before(&self, as_of: Timestamp, head: u64) -> Result<u64> {
        let micros = as_of.as_micros();
        let (known, unsure_end) = self.index.recorded_bound(micros, head);
        let unsure_end = unsure_end.min(head + 1);
        if known == 0 && unsure_end <= 1 {
            return Ok(0);
        }
        if known + 1 >= unsure_end {
            return Ok(known.min(head));
        }
        let mut best = known;
        if let Some((_, start)) = self.index.scan_start(known.max(1)) {
            self.log
                .scan(start, known.max(1), unsure_end - 1, usize::MAX, |event| {
                    if event.recorded_at().as_micros() <= micros {
                        best = event.position();
                        Ok(ControlFlow::Continue(()))
                    } else {
                        Ok(ControlFlow::Break(()))
                    }
                })?;
        }
        Ok(best)
    }

    pub fn read_aggregate(&self, query: &AggregateQuery) -> Result<AggregatePage> {
        let head = self.head();
        let not_found = || -> EngineError {
            StoreError::AggregateNotFound {
                aggregate_id: query.aggregate_id.clone(),
            }
            .into()
        };
        let last = self
            .index
            .aggregate_last(&query.aggregate_id, head)?
            .ok_or_else(not_found)?;
        let aggregate_type = match &last.aggregate_type {
            Some(t) => t.clone(),
            None => self.log.read_event(last.loc)?.aggregate_type().to_owned(),
        };
        let mut current = last.version;
        if let Some(as_of) = query.as_of {
            let bound = self.last_recorded_at_or_before(as_of, head)?;
            if bound < last.position {
                let entries = self
                    .index
                    .aggregate_entries(&query.aggregate_id, 1, current, head)?;
                current = entries.partition_point(|(_, position, _)| *position <= bound) as u64;
            }
        }
        if current == 0 {
            return Err(not_found());
        }
        let limit = query.limit.max(1);
        let mut events = Vec::with_capacity(limit.min(1024));
        let mut next_from_version = None;
        const BATCH: u64 = 1024;
        match query.direction {
            Direction::Forward => {
                let stop = query.to_version.unwrap_or(current).min(current);
                let mut version = query.from_version.unwrap_or(1).max(1);
                'pages: while version <= stop {
                    let batch_end = stop.min(version.saturating_add(BATCH - 1));
                    let entries =
                        self.index
                            .aggregate_entries(&query.aggregate_id, version, batch_end, head)?;
                    let locs: Vec<Loc> = entries.iter().map(|e| e.2).collect();
                    for event in self.log.read_events(&locs)? {
                        if query.matches(&event) {
                            let v = event.version();
                            events.push(event);
                            if events.len() >= limit {
                                next_from_version = (v < stop).then_some(v + 1);
                                break 'pages;
                            }
                        }
                    }
                    version = batch_end + 1;
                }
            }
            Direction::Backward => {
                let stop = query.to_version.unwrap_or(1).max(1);
                let mut version = query.from_version.unwrap_or(current).min(current);
                'pages: while version >= stop && version > 0 {
                    let batch_start = stop.max(version.saturating_sub(BATCH - 1));
                    let entries =
                        self.index
                            .aggregate_entries(&query.aggregate_id, batch_start, version, head)?;
                    let locs: Vec<Loc> = entries.iter().map(|e| e.2).collect();
                    let mut batch = self.log.read_events(&locs)?;
                    batch.reverse();
                    for event in batch {
                        if query.matches(&event) {
                            let v = event.version();
                            events.push(event);
                            if events.len() >= limit {
                                next_from_version = (v > stop).then_some(v - 1);
                                break 'pages;
                            }
                        }
                    }
                    version = batch_start - 1;
                }
            }
        }
        Ok(AggregatePage {
            aggregate_id: query.aggregate_id.clone(),
            aggregate_type,
            version: current,
            events,
            next_from_version,
        })
    }

    pub fn get_event(&self, event_id: Uuid) -> Result<Event> {
        match self.index.event_id(event_id, self.head())? {
            Some((_, loc)) => self.log.read_event(loc),
            None => Err(StoreError::EventNotFound { event_id }.into()),
        }
    }

    pub fn head_info(&self) -> Head {
        let position = self.head();
        let micros = self.head_recorded_at.load(Ordering::Acquire);
        Head {
            position,
            recorded_at: (position > 0).then(|| Timestamp::from_micros(micros)),
        }
    }
}

/// The embedded event store.
#[derive(Debug)]
pub struct Engine {
    shared: Arc<Shared>,
    requests: Mutex<Option<mpsc::Sender<WriterJob>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    head_rx: watch::Receiver<u64>,
    /// The snapshot log, written by callers' threads, never by the writer thread.
    snapshots: Snapshots,
    /// Cold storage, when configured.
    archive: Option<crate::archive::Archive>,
    /// The indexer's manifest lock, which a backup holds while it links the runs.
    index_manifest: Arc<Mutex<crate::index::manifest::Manifest>>,
    _lock: Box<dyn std::fmt::Debug + Send + Sync>,
}

impl Engine {
    /// Opens (creating when missing) the store in `dir` and recovers it.
    pub fn open(dir: &Path, options: EngineOptions) -> Result<Engine> {
        options.limits.check().map_err(EngineError::Options)?;
        if options.segment_bytes_max < 4096 || options.segment_bytes_max > u64::from(u32::MAX) {
            return Err(EngineError::Options(
                "segment_bytes_max must be between 4 KiB and 4 GiB".into(),
            ));
        }
        let fs = options.fs.clone();
        let recovered = recovery::recover(&fs, dir, options.archive.as_ref())?;
        // After `recover`, which holds the folder's lock.
        let snapshots = Snapshots::open(&*fs, &dir.join("snapshots"))?;
        let (head_tx, head_rx) = watch::channel(recovered.head);
        let shared = Arc::new(Shared {
            fs: fs.clone(),
            dir: dir.to_owned(),
            log: Log::new(recovered.segments),
            index: Index::new(recovered.runs, recovered.memtable),
            limits: options.limits.clone(),
            head: AtomicU64::new(recovered.head),
            head_recorded_at: AtomicI64::new(recovered.writer.last_recorded_at.as_micros()),
            head_tx,
            poison: Mutex::new(None),
            merge_fan_in: options.merge_fan_in,
            prefix_entries_max: options.prefix_entries_max,
        });
        let (flush_tx, flush_rx) = std::sync::mpsc::channel();
        let indexer = indexer::Indexer::new(shared.clone(), recovered.manifest, options.merge_fan_in);
        let index_manifest = indexer.manifest_lock();
        let indexer_thread = std::thread::Builder::new()
            .name("factstore-indexer".into())
            .spawn(move || indexer.run(flush_rx))
            .map_err(|e| EngineError::Options(format!("cannot start the indexer thread: {e}")))?;
        let (tx, rx) = mpsc::channel(options.queue_depth.max(1));
        let writer = Writer::new(shared.clone(), recovered.writer, &options, flush_tx);
        let writer_thread = std::thread::Builder::new()
            .name("factstore-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| EngineError::Options(format!("cannot start the writer thread: {e}")))?;
        Ok(Engine {
            shared,
            requests: Mutex::new(Some(tx)),
            threads: Mutex::new(vec![writer_thread, indexer_thread]),
            head_rx,
            snapshots,
            archive: recovered.archive,
            index_manifest,
            _lock: recovered.lock,
        })
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn limits(&self) -> &Limits {
        &self.shared.limits
    }

    /// The writer's queue, unless the store is poisoned or closed.
    fn writer_queue(&self) -> Result<mpsc::Sender<WriterJob>> {
        if let Some(reason) = self.shared.poisoned() {
            return Err(EngineError::Poisoned(reason));
        }
        self.requests.lock().clone().ok_or(EngineError::Closed)
    }

    /// Appends a validated commit; resolves once it is durable.
    pub async fn commit_prepared(&self, commit: PreparedCommit) -> Result<CommitOutcome> {
        let (reply, answer) = oneshot::channel();
        self.writer_queue()?
            .send(WriterJob::Commit(WriteRequest { commit, reply }))
            .await
            .map_err(|_| EngineError::Closed)?;
        answer.await.map_err(|_| EngineError::Closed)?
    }

    /// Blocking form of [`Engine::commit_prepared`], for callers outside an async runtime.
    pub fn commit_blocking(&self, commit: PreparedCommit) -> Result<CommitOutcome> {
        let (reply, answer) = oneshot::channel();
        self.writer_queue()?
            .blocking_send(WriterJob::Commit(WriteRequest { commit, reply }))
            .map_err(|_| EngineError::Closed)?;
        answer.blocking_recv().map_err(|_| EngineError::Closed)?
    }

    pub fn read_events(&self, query: &EventQuery) -> Result<EventPage> {
        self.shared.read_events_until(query, self.shared.head())
    }

    pub fn read_aggregate(&self, query: &AggregateQuery) -> Result<AggregatePage> {
        self.shared.read_aggregate(query)
    }

    pub fn get_event(&self, event_id: Uuid) -> Result<Event> {
        self.shared.get_event(event_id)
    }

    pub fn head(&self) -> Head {
        self.shared.head_info()
    }

    pub fn watch_head(&self) -> watch::Receiver<u64> {
        self.head_rx.clone()
    }

    /// Stores a validated snapshot once the aggregate has its version; returns whether it
    /// replaced one at that version. Refused while event writes or snapshot writes are
    /// poisoned, and after `close`.
    pub fn put_snapshot(&self, snapshot: &Snapshot) -> Result<bool> {
        if let Some(reason) = self.shared.poisoned() {
            return Err(EngineError::Poisoned(reason));
        }
        if self.requests.lock().is_none() {
            return Err(EngineError::Closed);
        }
        let current = self
            .shared
            .index
            .aggregate_last(&snapshot.aggregate_id, self.shared.head())?
            .map_or(0, |last| last.version);
        if snapshot.version > current {
            return Err(StoreError::InvalidSnapshot {
                aggregate_id: snapshot.aggregate_id.clone(),
                version: snapshot.version,
                current_version: current,
            }
            .into());
        }
        self.snapshots.put(snapshot)
    }

    /// The snapshot with the highest version at or below `max_version`.
    pub fn latest_snapshot(&self, aggregate_id: &str, max_version: Option<u64>) -> Result<Option<Snapshot>> {
        self.snapshots.latest(aggregate_id, max_version)
    }

    /// Every snapshot of an aggregate, by increasing version.
    pub fn list_snapshots(&self, aggregate_id: &str) -> Vec<SnapshotInfo> {
        self.snapshots.list(aggregate_id)
    }

    /// Why snapshot writes are refused, when they are (see [`Engine::poisoned`] for events).
    pub fn snapshots_poisoned(&self) -> Option<String> {
        self.snapshots.poisoned()
    }

    /// Moves the events recorded before `before` to cold storage (see [`crate::archive`]):
    /// first seals the active segment when it holds such events and checkpoints the index
    /// through the head, so that every segment they fill lies below the checkpoint; then
    /// archives segment by segment. Returns the totals archived so far, with the events
    /// before the cut that stay hot (those sharing a segment with later events). Blocking:
    /// call it from a blocking thread. `ArchiveNotConfigured` without cold storage.
    pub fn archive(
        &self,
        before: Timestamp,
        progress: impl FnMut(&crate::archive::ArchivedSegment),
    ) -> Result<ArchiveOutcome> {
        let archive = self.archive.as_ref().ok_or(StoreError::ArchiveNotConfigured)?;
        if self.requests.lock().is_none() {
            return Err(EngineError::Closed);
        }
        let head = self.shared.head();
        // The last position recorded before the cut (`before` is exclusive).
        let cut = Timestamp::from_micros(before.as_micros().saturating_sub(1));
        let last_before = self.shared.last_recorded_at_or_before(cut, head)?;
        if last_before > 0 {
            let active_first = self.shared.log.segments().last().map_or(1, |s| s.first_position);
            self.checkpoint(last_before >= active_first)?;
        }
        let mut outcome = archive.archive(&self.shared, before, progress)?;
        let first_hot = archive.outcome().archived_events + 1;
        if last_before >= first_hot {
            outcome.hot_before_cut = last_before - first_hot + 1;
            outcome.hot_reason = Some(factstore_core::StaysHot::SharesSegmentWithLaterEvents);
        }
        Ok(outcome)
    }

    /// Has the writer checkpoint the index through every event written so far, sealing the
    /// active segment first when `seal` (see [`WriterJob::Checkpoint`]). Blocking.
    fn checkpoint(&self, seal: bool) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.writer_queue()?
            .blocking_send(WriterJob::Checkpoint { seal, reply })
            .map_err(|_| EngineError::Closed)?;
        answer.blocking_recv().map_err(|_| EngineError::Closed)?
    }

    /// Copies the store into `to` (an absolute path: a new or empty folder) while it goes on
    /// serving, with the state of the services over it that `sources` names: a backup (see
    /// [`crate::backup`]). Blocking. Archiving waits while it runs.
    pub fn backup(
        &self,
        to: &Path,
        sources: &dyn crate::backup::BackupSources,
    ) -> std::result::Result<crate::backup::BackupReport, crate::backup::BackupError> {
        if self.requests.lock().is_none() {
            return Err(EngineError::Closed.into());
        }
        let store = crate::backup::Store {
            shared: &self.shared,
            snapshots: &self.snapshots,
            archive: self.archive.as_ref(),
            index_manifest: &self.index_manifest,
        };
        crate::backup::run(&store, to, sources)
    }

    /// Where the store's bytes are: local files (log and index) and cold storage.
    pub fn storage(&self) -> Result<StorageStats> {
        match &self.archive {
            Some(archive) => archive.storage(&self.shared),
            None => crate::archive::hot_storage(&self.shared),
        }
    }

    /// The archive, when cold storage is configured.
    pub fn archive_state(&self) -> Option<&crate::archive::Archive> {
        self.archive.as_ref()
    }

    /// Why writes are refused, when they are.
    pub fn poisoned(&self) -> Option<String> {
        self.shared.poisoned()
    }

    /// Stops the writer after the commits already queued, and the indexer after its current
    /// job. Reads keep working; commits fail with `Closed`.
    pub fn close(&self) {
        self.requests.lock().take();
        let threads: Vec<JoinHandle<()>> = self.threads.lock().drain(..).collect();
        for thread in threads {
            let _ = thread.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.close();
    }
}
