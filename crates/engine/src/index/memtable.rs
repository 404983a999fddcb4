//! The in-memory index of the log's tail: every event after the last flushed run.
//!
//! Positions in a memtable are dense (`first_position .. first_position + len`), so a position's
//! location, `created_at` and `recorded_at` are vector lookups, and every other map stores
//! positions only. A memtable is filled by the writer (after each durable group) or by recovery,
//! frozen when it reaches its size, and then written to a run by the indexer thread.

use std::collections::HashMap;

use factstore_core::EventFields;
use foldhash::fast::RandomState;
use uuid::Uuid;

use crate::index::keys::{self, TermKind};
use crate::index::table::PositionTable;
use crate::log::format::Loc;

/// A key and its value, as written to a run file.
pub type RunEntry = (Vec<u8>, Vec<u8>);

/// One aggregate's events in this memtable.
#[derive(Debug)]
pub struct AggregateTail {
    /// The version of `positions[0]`.
    pub first_version: u64,
    pub positions: Vec<u64>,
    pub aggregate_type: Box<str>,
}

impl AggregateTail {
    pub fn last_version(&self) -> u64 {
        self.first_version + self.positions.len() as u64 - 1
    }
}

#[derive(Debug)]
pub struct MemTable {
    first_position: u64,
    locs: Vec<Loc>,
    created: Vec<i64>,
    recorded: Vec<i64>,
    aggregates: HashMap<Box<str>, AggregateTail, RandomState>,
    event_ids: HashMap<Uuid, u64, RandomState>,
    /// One map per [`TermKind`], by `TermKind::index`.
    terms: [HashMap<Box<str>, Vec<u64>, RandomState>; 3],
    /// Where the log continues after the last frame indexed here.
    end: Loc,
}

impl MemTable {
    /// An empty memtable whose first event will be at `first_position`, located at or after `end`.
    pub fn new(first_position: u64, end: Loc) -> MemTable {
        MemTable {
            first_position,
            locs: Vec::new(),
            created: Vec::new(),
            recorded: Vec::new(),
            aggregates: HashMap::default(),
            event_ids: HashMap::default(),
            terms: Default::default(),
            end,
        }
    }

    pub fn first_position(&self) -> u64 {
        self.first_position
    }

    /// The last position held, or `first_position - 1` when empty.
    pub fn last_position(&self) -> u64 {
        self.first_position + self.locs.len() as u64 - 1
    }

    pub fn len(&self) -> usize {
        self.locs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.locs.is_empty()
    }

    pub fn end(&self) -> Loc {
        self.end
    }

    pub fn set_end(&mut self, end: Loc) {
        self.end = end;
    }

    /// Adds the next event. Positions must arrive in order with no gap, and an aggregate's
    /// versions likewise: anything else is a bug in the writer or recovery.
    pub fn insert(&mut self, event: &EventFields<'_>, loc: Loc) {
        assert_eq!(
            event.position,
            self.first_position + self.locs.len() as u64,
            "positions are dense"
        );
        self.locs.push(loc);
        self.created.push(event.created_at.as_micros());
        self.recorded.push(event.recorded_at.as_micros());
        match self.aggregates.get_mut(event.aggregate_id) {
            Some(tail) => {
                assert_eq!(event.version, tail.last_version() + 1, "versions are dense");
                tail.positions.push(event.position);
            }
            None => {
                self.aggregates.insert(
                    event.aggregate_id.into(),
                    AggregateTail {
                        first_version: event.version,
                        positions: vec![event.position],
                        aggregate_type: event.aggregate_type.into(),
                    },
                );
            }
        }
        self.event_ids.insert(event.event_id, event.position);
        self.add_term(TermKind::EventType, event.event_type, event.position);
        if let Some(c) = event.correlation_id {
            self.add_term(TermKind::Correlation, c, event.position);
        }
        if let Some(c) = event.causation_id {
            self.add_term(TermKind::Causation, c, event.position);
        }
    }

    fn add_term(&mut self, kind: TermKind, term: &str, position: u64) {
        let map = &mut self.terms[kind.index()];
        // Most terms repeat: look up by &str first so that only a new term allocates.
        match map.get_mut(term) {
            Some(list) => list.push(position),
            None => {
                map.insert(term.into(), vec![position]);
            }
        }
    }

    pub fn loc(&self, position: u64) -> Option<Loc> {
        self.locs
            .get(usize::try_from(position.checked_sub(self.first_position)?).ok()?)
            .copied()
    }

    pub fn created_at(&self, position: u64) -> Option<i64> {
        self.created
            .get(usize::try_from(position.checked_sub(self.first_position)?).ok()?)
            .copied()
    }

    /// The last position whose `recorded_at` is at most `micros`, if any is in this memtable.
    pub fn last_recorded_at_or_before(&self, micros: i64) -> Option<u64> {
        let count = self.recorded.partition_point(|&r| r <= micros);
        (count > 0).then(|| self.first_position + count as u64 - 1)
    }

    pub fn recorded_at(&self, position: u64) -> Option<i64> {
        self.recorded
            .get(usize::try_from(position.checked_sub(self.first_position)?).ok()?)
            .copied()
    }

    pub fn aggregate(&self, aggregate_id: &str) -> Option<&AggregateTail> {
        self.aggregates.get(aggregate_id)
    }

    pub fn event_id(&self, event_id: &Uuid) -> Option<u64> {
        self.event_ids.get(event_id).copied()
    }

    /// Positions of a term, ascending.
    pub fn term(&self, kind: TermKind, term: &str) -> &[u64] {
        self.terms[kind.index()].get(term).map_or(&[], Vec::as_slice)
    }

    /// Every entry as a sorted (key, value) list for a run file, and the position table.
    pub fn to_run_entries(&self) -> (Vec<RunEntry>, PositionTable) {
        let mut entries = Vec::with_capacity(self.locs.len() * 3 + self.aggregates.len());
        for (aggregate_id, tail) in &self.aggregates {
            let prefix = keys::term_prefix(keys::KIND_AGGREGATE, aggregate_id);
            for (i, &position) in tail.positions.iter().enumerate() {
                let loc = self.locs[(position - self.first_position) as usize];
                entries.push((
                    keys::with_suffix(&prefix, tail.first_version + i as u64),
                    keys::position_loc_value(position, loc).to_vec(),
                ));
            }
        }
        for (event_id, &position) in &self.event_ids {
            let loc = self.locs[(position - self.first_position) as usize];
            entries.push((
                keys::event_id_key(*event_id),
                keys::position_loc_value(position, loc).to_vec(),
            ));
        }
        for (kind, term, positions) in TermKind::ALL.iter().flat_map(|&kind| {
            self.terms[kind.index()]
                .iter()
                .map(move |(term, list)| (kind, term, list))
        }) {
            let prefix = keys::term_prefix(kind.byte(), term);
            for &position in positions {
                let loc = self.locs[(position - self.first_position) as usize];
                entries.push((keys::with_suffix(&prefix, position), loc.0.to_le_bytes().to_vec()));
            }
        }
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let table = PositionTable::build(self.first_position, &self.locs, &self.created, &self.recorded);
        (entries, table)
    }
}
