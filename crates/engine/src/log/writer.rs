//! The writer: one thread that turns commits into durable frames, with group commit.
//!
//! # The write path (see `docs/durability.md`)
//! 1. Take the first waiting commit, then every other waiting commit up to the group limits.
//! 2. Check each commit in order against the store *plus the commits before it in the group*
//!    (idempotency, expected versions, aggregate types, the condition); encode those that pass
//!    into one frame. A commit that fails writes nothing.
//! 3. Write the frame at the end of the active segment (starting a new segment first when it
//!    would overflow: create, write the header, `sync_data`, `sync_dir`).
//! 4. `sync_data` the segment. Only now is the group durable.
//! 5. Insert the group's events into the memtable, raise the segment's durable length, publish
//!    the new head. Readers can see the events from here on.
//! 6. Answer every commit of the group.
//!
//! A failed write or sync poisons the writer: the group is answered `store_unavailable`, and so
//! is every later commit, because after a failed fsync the kernel may have dropped the dirty
//! pages and the file's contents are unknown.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use factstore_core::{
    AppendedAggregate, AppendedEvent, CommitOutcome, Event, EventFilter, EventQuery, PreparedCommit,
    StoreError, Timestamp,
};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::engine::Shared;
use crate::error::{EngineError, Result};
use crate::indexer::IndexerJob;
use crate::io::OpenMode;
use crate::log::format::{
    FRAME_HEADER_LEN, FrameHeader, Loc, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN, SegmentHeader,
    segment_file_name,
};
use crate::log::reader::Segment;

/// A commit waiting for the writer, and where to send its answer.
#[derive(Debug)]
pub struct WriteRequest {
    pub commit: PreparedCommit,
    pub reply: oneshot::Sender<Result<CommitOutcome>>,
}

/// What the writer thread is asked to do, in the order asked.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "commits are nearly every message: boxing them would allocate once per commit"
)]
pub enum WriterJob {
    Commit(WriteRequest),
    /// Checkpoint the index through every event written so far, sealing the active segment
    /// first when `seal` (and it holds events), so that archiving can move every segment below
    /// it (see [`Writer::checkpoint`]). Answered once the checkpoint is durable.
    Checkpoint {
        seal: bool,
        reply: oneshot::Sender<Result<()>>,
    },
}

/// Frozen memtables waiting for the indexer before the writer waits too.
const FROZEN_MAX: usize = 4;

/// Group limits: a group is cut when either is reached.
const GROUP_EVENTS_MAX: usize = 64 * 1024;
const GROUP_BYTES_MAX: usize = 64 << 20;

/// What the writer knows of one aggregate: its version and type.
#[derive(Debug, Clone)]
struct AggregateState {
    version: u64,
    aggregate_type: Box<str>,
}

/// Commits of the current group, not yet durable: later commits of the group see them.
#[derive(Default)]
struct Pending {
    aggregates: HashMap<String, AggregateState, foldhash::fast::RandomState>,
    /// Client-chosen event id → its record's range in the frame body. Ids the store generated
    /// cannot be named by another commit of the same group: no client has seen them yet.
    event_ids: HashMap<Uuid, Range<usize>, foldhash::fast::RandomState>,
    /// Every record of the group: range in the frame body.
    records: Vec<Range<usize>>,
}

pub struct Writer {
    shared: Arc<Shared>,
    segment: Arc<Segment>,
    /// End of the last durable frame in `segment`.
    write_offset: u64,
    next_position: u64,
    last_recorded_at: Timestamp,
    cache: HashMap<Box<str>, AggregateState, foldhash::fast::RandomState>,
    cache_entries_max: usize,
    segment_bytes_max: u64,
    memtable_events_max: usize,
    flush: std::sync::mpsc::Sender<IndexerJob>,
    /// Reused between groups: the frame being built (header space first).
    frame: Vec<u8>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("next_position", &self.next_position)
            .finish_non_exhaustive()
    }
}

/// The writer's starting point, from recovery.
#[derive(Debug)]
pub struct WriterStart {
    pub segment: Arc<Segment>,
    pub write_offset: u64,
    pub next_position: u64,
    pub last_recorded_at: Timestamp,
}

impl Writer {
    pub fn new(
        shared: Arc<Shared>,
        start: WriterStart,
        options: &crate::EngineOptions,
        flush: std::sync::mpsc::Sender<IndexerJob>,
    ) -> Writer {
        Writer {
            shared,
            segment: start.segment,
            write_offset: start.write_offset,
            next_position: start.next_position,
            last_recorded_at: start.last_recorded_at,
            cache: HashMap::default(),
            cache_entries_max: options.aggregate_cache_entries,
            segment_bytes_max: options.segment_bytes_max,
            memtable_events_max: options.memtable_events_max,
            flush,
            frame: Vec::new(),
        }
    }

    /// Runs until every sender of `requests` is gone. A checkpoint asked for while commits
    /// wait ends their group: it covers every commit asked for before it.
    pub fn run(mut self, mut requests: mpsc::Receiver<WriterJob>) {
        while let Some(first) = requests.blocking_recv() {
            let first = match first {
                WriterJob::Commit(request) => request,
                WriterJob::Checkpoint { seal, reply } => {
                    self.checkpoint(seal, reply);
                    continue;
                }
            };
            let mut events = first.commit.event_count;
            let mut bytes = commit_bytes(&first.commit);
            let mut group = vec![first];
            let mut then = None;
            while events < GROUP_EVENTS_MAX && bytes < GROUP_BYTES_MAX {
                match requests.try_recv() {
                    Ok(WriterJob::Commit(request)) => {
                        events += request.commit.event_count;
                        bytes += commit_bytes(&request.commit);
                        group.push(request);
                    }
                    Ok(WriterJob::Checkpoint { seal, reply }) => {
                        then = Some((seal, reply));
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.process(group);
            if let Some((seal, reply)) = then {
                self.checkpoint(seal, reply);
            }
        }
    }

    /// Makes the index checkpoint cover every event written so far: seals the active segment
    /// when asked (and it holds events), freezes the memtable however small, and has the
    /// indexer answer `reply` once everything frozen before is flushed and the manifest
    /// stored. Sealing moves the memtable's end to the new segment's first frame, so the
    /// checkpoint resumes there and the sealed segment lies wholly below it.
    fn checkpoint(&mut self, seal: bool, reply: oneshot::Sender<Result<()>>) {
        if let Some(reason) = self.shared.poisoned() {
            let _ = reply.send(Err(EngineError::Poisoned(reason)));
            return;
        }
        if seal && self.write_offset > SEGMENT_HEADER_LEN as u64 {
            // Nothing was written if this fails (a half-made segment file is removed), so the
            // store goes on in the segment it has.
            if let Err(error) = self.rotate(self.next_position) {
                let _ = reply.send(Err(error));
                return;
            }
            // Every frame before the new segment is in the memtable.
            let start = Loc::new(self.segment.no, SEGMENT_HEADER_LEN as u32);
            self.shared.index.state.write().active.set_end(start);
        }
        let resume = match self.shared.index.freeze() {
            Some(frozen) => {
                let _ = self.flush.send(IndexerJob::Flush(frozen));
                None
            }
            // Nothing to flush, but the checkpoint may still move past a segment header.
            None => Some(self.shared.index.state.read().active.end()),
        };
        // When the indexer is gone the reply is dropped, and the caller sees the store closed.
        let _ = self.flush.send(IndexerJob::Barrier { resume, reply });
    }

    fn process(&mut self, group: Vec<WriteRequest>) {
        if let Some(reason) = self.shared.poisoned() {
            for request in group {
                let _ = request.reply.send(Err(EngineError::Poisoned(reason.clone())));
            }
            return;
        }
        let recorded_at = Timestamp::now().max(self.last_recorded_at);
        let first_position = self.next_position;
        self.frame.clear();
        self.frame.resize(FRAME_HEADER_LEN, 0);
        // Sized for the whole group up front: growing the id map rehashes it several times.
        let group_events: usize = group.iter().map(|r| r.commit.event_count).sum();
        let mut pending = Pending {
            event_ids: HashMap::with_capacity_and_hasher(group_events, Default::default()),
            records: Vec::with_capacity(group_events),
            ..Pending::default()
        };
        let answers: Vec<Result<CommitOutcome>> = group
            .iter()
            .map(|request| self.check_and_encode(&request.commit, &mut pending, recorded_at))
            .collect();
        if !pending.records.is_empty() {
            if let Err(error) = self.write_group(first_position, &pending, recorded_at, &group, &answers) {
                tracing::error!(%error, "write failed; the store is poisoned and accepts no more writes");
                let reason = format!("writing the event log failed: {}", error.public_reason());
                self.shared.poison(reason.clone());
                for request in group {
                    let _ = request.reply.send(Err(EngineError::Poisoned(reason.clone())));
                }
                return;
            }
            for (aggregate_id, state) in pending.aggregates {
                if self.cache.len() >= self.cache_entries_max {
                    // A crude bound: the cache only saves index lookups, so emptying it is safe.
                    self.cache.clear();
                }
                self.cache.insert(aggregate_id.into_boxed_str(), state);
            }
        }
        for (request, answer) in group.into_iter().zip(answers) {
            let _ = request.reply.send(answer);
        }
    }

    /// Writes and syncs the frame, then makes its events visible.
    fn write_group(
        &mut self,
        first_position: u64,
        pending: &Pending,
        recorded_at: Timestamp,
        group: &[WriteRequest],
        answers: &[Result<CommitOutcome>],
    ) -> Result<()> {
        let written: Vec<(&WriteRequest, &CommitOutcome)> = group
            .iter()
            .zip(answers)
            .filter_map(|(request, answer)| answer.as_ref().ok().filter(|o| o.created).map(|o| (request, o)))
            .collect();
        let event_count = u32::try_from(pending.records.len()).expect("groups are bounded");
        let commits = u32::try_from(written.len()).expect("groups are bounded");
        let header = FrameHeader::encode(
            first_position,
            event_count,
            commits,
            &self.frame[FRAME_HEADER_LEN..],
        );
        self.frame[..FRAME_HEADER_LEN].copy_from_slice(&header);
        if self.write_offset > SEGMENT_HEADER_LEN as u64
            && self.write_offset + self.frame.len() as u64 > self.segment_bytes_max
        {
            self.rotate(first_position)?;
        }
        let frame_offset = self.write_offset;
        let end = frame_offset + self.frame.len() as u64;
        if end > u64::from(u32::MAX) {
            return Err(EngineError::Options("a segment may not grow past 4 GiB".into()));
        }
        let path = &self.segment.path;
        let file = &self.segment.file;
        let segment_no = self.segment.no;
        let synced = file.write_all_at(&self.frame, frame_offset).and_then(|()| {
            let started = std::time::Instant::now();
            let synced = file.sync_data();
            // The facade is a no-op until a recorder is installed (the server installs one).
            metrics::histogram!("factstore_fsync_duration_seconds").record(started.elapsed());
            synced
        });
        if let Err(error) = synced {
            // After a failed write or sync the kernel may keep the frame's pages marked clean
            // though they never reached the disk. A restart would then read the frame back as
            // valid and append after it, and a later power loss would leave a hole before
            // acknowledged frames. Cutting the file back drops those pages; if the cut does
            // not reach the disk either, recovery sees at worst a torn tail.
            if let Err(cut) = file.set_len(frame_offset) {
                tracing::error!(%cut, file = %path.display(), "could not cut back a failed frame");
            }
            return Err(EngineError::Io {
                path: path.clone(),
                source: error,
            });
        }
        // Durable: index, then publish. The fields come from the requests, in the order their
        // records were encoded, so nothing is decoded again.
        {
            let mut state = self.shared.index.state.write();
            let mut records = pending.records.iter();
            for (request, outcome) in &written {
                for (append, appended) in request.commit.appends.iter().zip(&outcome.appends) {
                    for (event, at) in append.events.iter().zip(&appended.events) {
                        let range = records.next().expect("one record per written event");
                        let offset = frame_offset as usize + range.start - RECORD_HEADER_LEN;
                        let fields = event.fields(&append.aggregate_id, at.position, at.version, recorded_at);
                        state.active.insert(&fields, Loc::new(segment_no, offset as u32));
                    }
                }
            }
            state.active.set_end(Loc::new(segment_no, end as u32));
        }
        self.write_offset = end;
        self.segment.durable_len.store(end, Ordering::Release);
        self.last_recorded_at = recorded_at;
        self.shared.publish_head(self.next_position - 1, recorded_at);
        self.freeze_when_full();
        Ok(())
    }

    /// Hands a full memtable to the indexer. Freezing here, between groups, makes a memtable
    /// end at a frame boundary, which is where the manifest's checkpoint resumes the log. When
    /// the indexer falls behind by [`FROZEN_MAX`] memtables, the writer waits for it, so memory
    /// stays bounded.
    fn freeze_when_full(&mut self) {
        if self.shared.index.state.read().active.len() < self.memtable_events_max {
            return;
        }
        while self.shared.index.state.read().frozen.len() >= FROZEN_MAX && self.shared.poisoned().is_none() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        if let Some(frozen) = self.shared.index.freeze() {
            let _ = self.flush.send(IndexerJob::Flush(frozen));
        }
    }

    /// Starts a new segment whose first event will be `first_position`.
    fn rotate(&mut self, first_position: u64) -> Result<()> {
        let no = self.segment.no + 1;
        let dir = self.shared.log_dir();
        let path = dir.join(segment_file_name(no));
        let fs = &self.shared.fs;
        let header = SegmentHeader {
            segment_no: no,
            first_position,
        }
        .encode();
        let created = fs
            .open(&path, OpenMode::CreateNew)
            .map_err(EngineError::io(&path));
        let file = created.and_then(|file| {
            file.write_all_at(&header, 0).map_err(EngineError::io(&path))?;
            file.sync_data().map_err(EngineError::io(&path))?;
            fs.sync_dir(&dir).map_err(EngineError::io(&dir))?;
            Ok(file)
        });
        let file = match file {
            Ok(file) => file,
            Err(error) => {
                // A header whose sync failed may sit in the page cache marked clean: a restart
                // would see a valid segment that a later power loss empties under frames
                // written after it. Remove the file, so a restart starts the segment again.
                if fs.remove_file(&path).is_ok() {
                    let _ = fs.sync_dir(&dir);
                }
                return Err(error);
            }
        };
        let segment = Arc::new(Segment {
            no,
            first_position,
            path,
            file,
            durable_len: std::sync::atomic::AtomicU64::new(SEGMENT_HEADER_LEN as u64),
        });
        self.shared.log.push(segment.clone());
        {
            let mut state = self.shared.index.state.write();
            if state.active.is_empty() {
                state.active.set_end(Loc::new(no, SEGMENT_HEADER_LEN as u32));
            }
        }
        self.segment = segment;
        self.write_offset = SEGMENT_HEADER_LEN as u64;
        Ok(())
    }

    /// Checks a commit against the store and the group so far; when it passes, encodes its
    /// events into the frame and records them as pending.
    fn check_and_encode(
        &mut self,
        commit: &PreparedCommit,
        pending: &mut Pending,
        recorded_at: Timestamp,
    ) -> Result<CommitOutcome> {
        if let Some(outcome) = self.check_idempotency(commit, pending)? {
            return Ok(outcome);
        }
        let mut states = Vec::with_capacity(commit.appends.len());
        for append in &commit.appends {
            let current = self.aggregate_state(&append.aggregate_id, pending)?;
            let version = current.as_ref().map_or(0, |s| s.version);
            if !append.expected_version.admits(version) {
                return Err(StoreError::WrongExpectedVersion {
                    aggregate_id: append.aggregate_id.clone(),
                    expected_version: append.expected_version,
                    current_version: version,
                }
                .into());
            }
            let aggregate_type: &str = match &current {
                Some(state) => &state.aggregate_type,
                None => append.events.first().map_or("", |e| e.aggregate_type.as_str()),
            };
            if let Some(other) = append.events.iter().find(|e| e.aggregate_type != aggregate_type) {
                return Err(StoreError::AggregateTypeMismatch {
                    aggregate_id: append.aggregate_id.clone(),
                    existing: aggregate_type.to_owned(),
                    given: other.aggregate_type.clone(),
                }
                .into());
            }
            states.push(AggregateState {
                version,
                aggregate_type: aggregate_type.into(),
            });
        }
        if let Some(condition) = &commit.condition
            && let Some(conflict) = self.first_match(&condition.filter, condition.after_position, pending)?
        {
            return Err(StoreError::ConditionFailed {
                after_position: condition.after_position,
                conflicting_position: conflict,
            }
            .into());
        }

        // Every check passed: encode.
        let mut appended = Vec::with_capacity(commit.appends.len());
        for (append, mut state) in commit.appends.iter().zip(states) {
            let mut events = Vec::with_capacity(append.events.len());
            for event in &append.events {
                state.version += 1;
                let position = self.next_position;
                self.next_position += 1;
                let start = self.frame.len() + RECORD_HEADER_LEN;
                self.frame.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
                event
                    .fields(&append.aggregate_id, position, state.version, recorded_at)
                    .encode_into(&mut self.frame);
                let end = self.frame.len();
                let len = u32::try_from(end - start).expect("events are bounded");
                let crc = crc32c::crc32c(&self.frame[start..end]);
                self.frame[start - 8..start - 4].copy_from_slice(&len.to_le_bytes());
                self.frame[start - 4..start].copy_from_slice(&crc.to_le_bytes());
                pending.records.push(start..end);
                if event.client_event_id {
                    pending.event_ids.insert(event.event_id, start..end);
                }
                events.push(AppendedEvent {
                    event_id: event.event_id,
                    version: state.version,
                    position,
                    recorded_at,
                });
            }
            appended.push(AppendedAggregate {
                aggregate_id: append.aggregate_id.clone(),
                version: state.version,
                events,
            });
            pending.aggregates.insert(append.aggregate_id.clone(), state);
        }
        Ok(CommitOutcome {
            created: true,
            position: self.next_position - 1,
            appends: appended,
        })
    }

    /// The stored or pending event with this id.
    fn find_event(&self, event_id: Uuid, pending: &Pending) -> Result<Option<Event>> {
        if let Some(range) = pending.event_ids.get(&event_id) {
            let bytes = Bytes::copy_from_slice(&self.frame[range.clone()]);
            return Ok(Some(Event::from_bytes(bytes).map_err(pending_decode)?));
        }
        match self.shared.index.event_id(event_id, u64::MAX)? {
            Some((_, loc)) => Ok(Some(self.shared.log.read_event(loc)?)),
            None => Ok(None),
        }
    }

    /// The idempotency rule (see [`PreparedCommit::replayed_outcome`]): `Some(outcome)` for a
    /// full retry, an error for any other overlap.
    fn check_idempotency(&self, commit: &PreparedCommit, pending: &Pending) -> Result<Option<CommitOutcome>> {
        let mut any_client_id = false;
        let mut found: Vec<Option<Event>> = Vec::with_capacity(commit.event_count);
        for append in &commit.appends {
            for event in &append.events {
                if event.client_event_id {
                    any_client_id = true;
                    found.push(self.find_event(event.event_id, pending)?);
                } else {
                    found.push(None);
                }
            }
        }
        if !any_client_id {
            return Ok(None);
        }
        Ok(commit.replayed_outcome(found)?)
    }

    fn aggregate_state(&mut self, aggregate_id: &str, pending: &Pending) -> Result<Option<AggregateState>> {
        if let Some(state) = pending.aggregates.get(aggregate_id) {
            return Ok(Some(state.clone()));
        }
        if let Some(state) = self.cache.get(aggregate_id) {
            return Ok(Some(state.clone()));
        }
        let Some(last) = self.shared.index.aggregate_last(aggregate_id, u64::MAX)? else {
            return Ok(None);
        };
        let aggregate_type = match last.aggregate_type {
            Some(t) => t.into_boxed_str(),
            None => self.shared.log.read_event(last.loc)?.aggregate_type().into(),
        };
        Ok(Some(AggregateState {
            version: last.version,
            aggregate_type,
        }))
    }

    /// The first position above `after` whose event passes `filter`, stored or pending.
    fn first_match(&self, filter: &EventFilter, after: u64, pending: &Pending) -> Result<Option<u64>> {
        let head = self.shared.head();
        let mut query = EventQuery::all(after, 1);
        query.filter = filter.clone();
        let page = self.shared.read_events_until(&query, head)?;
        if let Some(event) = page.events.first() {
            return Ok(Some(event.position()));
        }
        for range in &pending.records {
            let event = Event::from_bytes(Bytes::copy_from_slice(&self.frame[range.clone()]))
                .map_err(pending_decode)?;
            if event.position() > after && filter.matches(&event) {
                return Ok(Some(event.position()));
            }
        }
        Ok(None)
    }
}

/// A record this writer encoded a moment ago does not decode: a bug, not a client's error.
fn pending_decode(error: factstore_core::event::DecodeError) -> EngineError {
    StoreError::Internal(format!("a pending record does not decode: {error}")).into()
}

/// An estimate of a commit's encoded size, to bound a group.
fn commit_bytes(commit: &PreparedCommit) -> usize {
    commit
        .appends
        .iter()
        .flat_map(|a| a.events.iter())
        .map(|e| e.payload_bytes() + 256)
        .sum()
}
