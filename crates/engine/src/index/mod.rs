//! The engine's indexes: an active memtable for the log's tail, frozen memtables being written
//! out, and immutable run files, each covering a contiguous range of positions.
//!
//! # Invariants
//! - Sources cover disjoint, contiguous position ranges, ordered: runs (oldest first), then the
//!   frozen memtables, then the active one. Concatenating any term's entries source by source
//!   therefore yields ascending positions, and an aggregate's entries ascending versions.
//! - Only durable events are ever inserted; readers still bound every answer by the head they
//!   read, because the writer inserts before it publishes the new head.
//! - Run files are listed in the manifest only after they are synced; a run not in the manifest
//!   is garbage from an interrupted flush or compaction.

pub mod bloom;
pub mod keys;
pub mod manifest;
pub mod memtable;
pub mod run;
pub mod table;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};

use parking_lot::RwLock;
use uuid::Uuid;

use crate::error::Result;
use crate::log::format::Loc;
use keys::TermKind;
use memtable::MemTable;
use run::Run;
use table::PositionTable;

/// A run file with what the engine keeps in memory for it.
#[derive(Debug)]
pub struct RunSource {
    pub id: u64,
    /// Compaction level: 0 for a flushed memtable, n + 1 for a merge of level-n runs.
    pub level: u32,
    pub run: Run,
    pub table: PositionTable,
    /// The smallest and largest event id in the run, found on first use.
    event_id_bounds: OnceLock<(u128, u128)>,
}

impl RunSource {
    pub fn new(id: u64, level: u32, run: Run, table: PositionTable) -> RunSource {
        RunSource {
            id,
            level,
            run,
            table,
            event_id_bounds: OnceLock::new(),
        }
    }

    /// Whether the run may hold `event_id`, judged by the smallest and largest id it holds.
    ///
    /// A run covers consecutive positions, and ids from UUIDv7 clocks grow with time, so the
    /// id ranges of runs barely overlap: for such ids this rules out nearly every run with two
    /// comparisons, where each bloom filter would cost a hash and cache misses. The bounds are
    /// read once (at most two blocks); if that read fails, the run is simply not ruled out.
    pub fn may_hold_event_id(&self, event_id: Uuid) -> bool {
        let (low, high) = *self.event_id_bounds.get_or_init(|| {
            let (from, to) = ([keys::KIND_EVENT_ID], [keys::KIND_EVENT_ID + 1]);
            let first = self.run.range(&from, &to).next();
            let last = self.run.range_rev(&from, &to).next();
            let id = |entry: Option<Result<(Vec<u8>, Vec<u8>)>>| {
                entry.map(|entry| entry.map(|(key, _)| keys::decode_event_id_key(&key)))
            };
            match (id(first), id(last)) {
                (None, None) => (1, 0), // no event id at all: an empty interval
                (Some(Ok(Some(low))), Some(Ok(Some(high)))) => (low, high),
                _ => (0, u128::MAX),
            }
        });
        (low..=high).contains(&event_id.as_u128())
    }

    pub fn first_position(&self) -> u64 {
        self.table.first_position().unwrap_or(self.table.end_position)
    }

    pub fn last_position(&self) -> u64 {
        self.table.end_position - 1
    }
}

#[derive(Debug)]
pub struct IndexState {
    pub runs: Vec<Arc<RunSource>>,
    pub frozen: Vec<Arc<MemTable>>,
    pub active: MemTable,
}

/// The latest known state of one aggregate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregateLast {
    pub version: u64,
    pub position: u64,
    pub loc: Loc,
    /// Known when the aggregate's tail is in a memtable; otherwise read from the event.
    pub aggregate_type: Option<String>,
}

/// A snapshot of the sources, taken under the lock, searched without it.
#[derive(Debug)]
pub struct Sources {
    pub runs: Vec<Arc<RunSource>>,
    pub frozen: Vec<Arc<MemTable>>,
}

#[derive(Debug)]
pub struct Index {
    pub state: RwLock<IndexState>,
    /// True while the merger thread is at work (from its wake-up until its last file is
    /// removed), so that tests can wait for a quiet index.
    pub merging: AtomicBool,
}

impl Index {
    pub fn new(runs: Vec<Arc<RunSource>>, active: MemTable) -> Index {
        Index {
            state: RwLock::new(IndexState {
                runs,
                frozen: Vec::new(),
                active,
            }),
            merging: AtomicBool::new(false),
        }
    }

    fn sources(&self) -> Sources {
        let state = self.state.read();
        Sources {
            runs: state.runs.clone(),
            frozen: state.frozen.clone(),
        }
    }

    /// The aggregate's last event at or below `head`.
    pub fn aggregate_last(&self, aggregate_id: &str, head: u64) -> Result<Option<AggregateLast>> {
        let sources = {
            let state = self.state.read();
            if let Some(found) = memtable_aggregate_last(&state.active, aggregate_id, head) {
                return Ok(Some(found));
            }
            Sources {
                runs: state.runs.clone(),
                frozen: state.frozen.clone(),
            }
        };
        for frozen in sources.frozen.iter().rev() {
            if let Some(found) = memtable_aggregate_last(frozen, aggregate_id, head) {
                return Ok(Some(found));
            }
        }
        let prefix = keys::aggregate_prefix(aggregate_id);
        for source in sources.runs.iter().rev() {
            if source.first_position() > head || !source.run.may_contain(&prefix) {
                continue;
            }
            let mut end = prefix.clone();
            end.extend_from_slice(&[0xFF; 8]);
            for entry in source.run.range_rev(&prefix, &end) {
                let (key, value) = entry?;
                let version = keys::suffix(&key).unwrap_or(0);
                if let Some((position, loc)) = keys::decode_position_loc(&value)
                    && position <= head
                {
                    return Ok(Some(AggregateLast {
                        version,
                        position,
                        loc,
                        aggregate_type: None,
                    }));
                }
            }
        }
        Ok(None)
    }

    /// The entries `(position, loc)` with `after < position <= end` of every aggregate whose id
    /// starts with `prefix`, ascending by position; `None` when the prefix is empty or its
    /// aggregates hold more than `budget` entries (a scan by another index is then cheaper).
    pub fn prefix_entries(
        &self,
        prefix: &str,
        after: u64,
        end: u64,
        budget: usize,
    ) -> Result<Option<Vec<(u64, Loc)>>> {
        let Some((from, to)) = keys::aggregate_prefix_range(prefix) else {
            return Ok(None);
        };
        let mut out = Vec::new();
        let mut seen = 0usize;
        let sources = {
            let state = self.state.read();
            for memtable in state.frozen.iter().map(|m| &**m).chain([&state.active]) {
                for (_, tail) in memtable.aggregates_with_prefix(prefix) {
                    seen += tail.positions.len();
                    if seen > budget {
                        return Ok(None);
                    }
                    let start = tail.positions.partition_point(|&p| p <= after);
                    for &position in tail.positions.get(start..).unwrap_or_default() {
                        if position > end {
                            break;
                        }
                        if let Some(loc) = memtable.loc(position) {
                            out.push((position, loc));
                        }
                    }
                }
            }
            Sources {
                runs: state.runs.clone(),
                frozen: Vec::new(),
            }
        };
        for source in &sources.runs {
            if source.first_position() > end || source.last_position() <= after {
                continue;
            }
            for entry in source.run.range(&from, &to) {
                let (_, value) = entry?;
                seen += 1;
                if seen > budget {
                    return Ok(None);
                }
                if let Some((position, loc)) = keys::decode_position_loc(&value)
                    && position > after
                    && position <= end
                {
                    out.push((position, loc));
                }
            }
        }
        out.sort_unstable_by_key(|e| e.0);
        Ok(Some(out))
    }

    /// The aggregate's entries with versions in `from..=to`, ascending, at or below `head`.
    pub fn aggregate_entries(
        &self,
        aggregate_id: &str,
        from: u64,
        to: u64,
        head: u64,
    ) -> Result<Vec<(u64, u64, Loc)>> {
        let mut out = Vec::new();
        if from > to {
            return Ok(out);
        }
        let prefix = keys::aggregate_prefix(aggregate_id);
        let (sources, tail) = {
            let state = self.state.read();
            let tail = memtable_aggregate_entries(&state.active, aggregate_id, from, to, head);
            (
                Sources {
                    runs: state.runs.clone(),
                    frozen: state.frozen.clone(),
                },
                tail,
            )
        };
        for source in &sources.runs {
            if source.first_position() > head || !source.run.may_contain(&prefix) {
                continue;
            }
            let start = keys::with_suffix(&prefix, from);
            let end = keys::with_suffix(&prefix, to.saturating_add(1));
            for entry in source.run.range(&start, &end) {
                let (key, value) = entry?;
                if let (Some(version), Some((position, loc))) =
                    (keys::suffix(&key), keys::decode_position_loc(&value))
                    && position <= head
                {
                    out.push((version, position, loc));
                }
            }
        }
        for frozen in &sources.frozen {
            out.extend(memtable_aggregate_entries(frozen, aggregate_id, from, to, head));
        }
        out.extend(tail);
        Ok(out)
    }

    /// Where the event with this id is, if it is stored at or below `head`.
    pub fn event_id(&self, event_id: Uuid, head: u64) -> Result<Option<(u64, Loc)>> {
        let sources = {
            let state = self.state.read();
            if let Some(position) = state.active.event_id(&event_id) {
                return Ok(state
                    .active
                    .loc(position)
                    .filter(|_| position <= head)
                    .map(|loc| (position, loc)));
            }
            Sources {
                runs: state.runs.clone(),
                frozen: state.frozen.clone(),
            }
        };
        for frozen in sources.frozen.iter().rev() {
            if let Some(position) = frozen.event_id(&event_id) {
                return Ok(frozen
                    .loc(position)
                    .filter(|_| position <= head)
                    .map(|loc| (position, loc)));
            }
        }
        let key = keys::event_id_key(event_id);
        for source in sources.runs.iter().rev() {
            if !source.may_hold_event_id(event_id) || !source.run.may_contain(&key) {
                continue;
            }
            if let Some(value) = source.run.get(&key)? {
                return Ok(keys::decode_position_loc(&value).filter(|(position, _)| *position <= head));
            }
        }
        Ok(None)
    }

    /// Entries of a term with `after < position <= head`, ascending, at most `limit`.
    pub fn term_entries(
        &self,
        kind: TermKind,
        term: &str,
        after: u64,
        head: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Loc)>> {
        let mut out = Vec::new();
        let (sources, tail) = {
            let state = self.state.read();
            let tail = memtable_term_entries(&state.active, kind, term, after, head, limit);
            (
                Sources {
                    runs: state.runs.clone(),
                    frozen: state.frozen.clone(),
                },
                tail,
            )
        };
        let prefix = keys::term_prefix(kind.byte(), term);
        for source in &sources.runs {
            if out.len() >= limit {
                return Ok(out);
            }
            if source.last_position() <= after
                || source.first_position() > head
                || !source.run.may_contain(&prefix)
            {
                continue;
            }
            let start = keys::with_suffix(&prefix, after.saturating_add(1));
            let end = keys::with_suffix(&prefix, head.saturating_add(1));
            for entry in source.run.range(&start, &end) {
                let (key, value) = entry?;
                if let (Some(position), Some(loc)) = (keys::suffix(&key), keys::decode_loc(&value)) {
                    out.push((position, loc));
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
        }
        for frozen in &sources.frozen {
            if out.len() >= limit {
                return Ok(out);
            }
            out.extend(memtable_term_entries(
                frozen,
                kind,
                term,
                after,
                head,
                limit - out.len(),
            ));
        }
        let room = limit.saturating_sub(out.len());
        out.extend(tail.into_iter().take(room));
        Ok(out)
    }

    /// A location at or before `position` from which a sequential scan reaches it, with the
    /// position found there. `None` when the position is not indexed (beyond the tail).
    pub fn scan_start(&self, position: u64) -> Option<(u64, Loc)> {
        let state = self.state.read();
        if let Some(loc) = state.active.loc(position) {
            return Some((position, loc));
        }
        for frozen in state.frozen.iter().rev() {
            if let Some(loc) = frozen.loc(position) {
                return Some((position, loc));
            }
        }
        for source in state.runs.iter().rev() {
            if let Some(block) = source.table.block_of(position) {
                let sample = source.table.samples[block];
                return Some((sample.position, sample.loc));
            }
        }
        None
    }

    /// The zone map of the run block holding `position`: the least and greatest `created_at`
    /// in the block and the position where the block ends. `None` for positions not in a run
    /// (the memtables have no zone maps; their events are scanned). Lets time scans skip blocks.
    pub fn created_block(&self, position: u64) -> Option<(i64, i64, u64)> {
        let state = self.state.read();
        for source in state.runs.iter().rev() {
            if let Some(block) = source.table.block_of(position) {
                let sample = source.table.samples[block];
                return Some((
                    sample.min_created,
                    sample.max_created,
                    source.table.block_end(block),
                ));
            }
        }
        None
    }

    /// The last position at or below `head` whose `recorded_at` is at most `micros`, found from
    /// the sampled tables; the answer is exact to within one block of [`table::SAMPLE_EVERY`]
    /// positions, returned as (a position known to qualify or 0, the first position that may
    /// not qualify). The caller refines it by reading.
    pub fn recorded_bound(&self, micros: i64, head: u64) -> (u64, u64) {
        let state = self.state.read();
        let tail = [&state.active]
            .into_iter()
            .chain(state.frozen.iter().map(|f| &**f).rev());
        for memtable in tail {
            if memtable.is_empty() || memtable.first_position() > head {
                continue;
            }
            if let Some(position) = memtable.last_recorded_at_or_before(micros) {
                let exact = position.min(head);
                return (exact, exact + 1);
            }
        }
        for source in state.runs.iter().rev() {
            let samples = &source.table.samples;
            let count = samples.partition_point(|s| s.first_recorded <= micros);
            if count > 0 {
                let block = count - 1;
                let known = samples[block].position;
                return (known, source.table.block_end(block));
            }
        }
        (0, 1)
    }

    /// Freezes the active memtable (when non-empty), returning it for the indexer.
    pub fn freeze(&self) -> Option<Arc<MemTable>> {
        let mut state = self.state.write();
        if state.active.is_empty() {
            return None;
        }
        let capacity = state.active.len();
        let next = MemTable::with_capacity(state.active.last_position() + 1, state.active.end(), capacity);
        let frozen = Arc::new(std::mem::replace(&mut state.active, next));
        state.frozen.push(frozen.clone());
        Some(frozen)
    }

    /// Swaps a flushed memtable for its run.
    pub fn replace_frozen(&self, frozen: &Arc<MemTable>, run: Arc<RunSource>) {
        let mut state = self.state.write();
        state.frozen.retain(|f| !Arc::ptr_eq(f, frozen));
        state.runs.push(run);
        state.runs.sort_by_key(|r| r.first_position());
    }

    /// Swaps merged runs for their merge.
    pub fn replace_runs(&self, inputs: &[Arc<RunSource>], merged: Arc<RunSource>) {
        let mut state = self.state.write();
        state.runs.retain(|r| !inputs.iter().any(|i| Arc::ptr_eq(i, r)));
        state.runs.push(merged);
        state.runs.sort_by_key(|r| r.first_position());
    }

    pub fn snapshot_runs(&self) -> Vec<Arc<RunSource>> {
        self.sources().runs
    }
}

fn memtable_aggregate_last(memtable: &MemTable, aggregate_id: &str, head: u64) -> Option<AggregateLast> {
    let tail = memtable.aggregate(aggregate_id)?;
    let index = tail.positions.partition_point(|&p| p <= head).checked_sub(1)?;
    let position = tail.positions[index];
    Some(AggregateLast {
        version: tail.first_version + index as u64,
        position,
        loc: memtable.loc(position)?,
        aggregate_type: Some(tail.aggregate_type.to_string()),
    })
}

fn memtable_aggregate_entries(
    memtable: &MemTable,
    aggregate_id: &str,
    from: u64,
    to: u64,
    head: u64,
) -> Vec<(u64, u64, Loc)> {
    let Some(tail) = memtable.aggregate(aggregate_id) else {
        return Vec::new();
    };
    let last = tail.last_version();
    if to < tail.first_version || from > last {
        return Vec::new();
    }
    let lo = from.max(tail.first_version);
    let hi = to.min(last);
    (lo..=hi)
        .filter_map(|version| {
            let position = tail.positions[(version - tail.first_version) as usize];
            (position <= head).then(|| memtable.loc(position).map(|loc| (version, position, loc)))?
        })
        .collect()
}

fn memtable_term_entries(
    memtable: &MemTable,
    kind: TermKind,
    term: &str,
    after: u64,
    head: u64,
    limit: usize,
) -> Vec<(u64, Loc)> {
    let positions = memtable.term(kind, term);
    let start = positions.partition_point(|&p| p <= after);
    positions[start..]
        .iter()
        .take_while(|&&p| p <= head)
        .take(limit)
        .filter_map(|&p| memtable.loc(p).map(|loc| (p, loc)))
        .collect()
}
