//! The in-memory index of the log's tail: every event after the last flushed run.
//!
//! Positions in a memtable are dense (`first_position .. first_position + len`), so a position's
//! location, `created_at` and `recorded_at` are vector lookups, and every other map stores
//! positions only. A memtable is filled by the writer (after each durable group) or by recovery,
//! frozen when it reaches its size, and then written to a run by the indexer thread.

use std::collections::{BTreeSet, HashMap};

use factstore_core::EventFields;
use foldhash::fast::RandomState;
use uuid::Uuid;

use crate::error::Result;
use crate::index::keys::{self, TermKind};
use crate::index::run::RunWriter;
use crate::index::table::PositionTable;
use crate::log::format::Loc;

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
    /// The ids of `aggregates`, sorted: for runs (written in id order) and for prefix reads.
    /// Kept beside the hash map, which serves the per-event lookups, and touched only when a
    /// new aggregate appears.
    aggregate_ids: BTreeSet<Box<str>>,
    event_ids: EventIds,
    /// One map per [`TermKind`], by `TermKind::index`.
    terms: [HashMap<Box<str>, Vec<u64>, RandomState>; 3],
    /// Where the log continues after the last frame indexed here.
    end: Loc,
}

/// The memtable's event ids, by position.
///
/// Ids the server generates are UUIDv7, which grow with time, so most ids arrive in ascending
/// order: those are appended to a sorted vector (a push, in cache) and found by binary search.
/// Only an id below the last one (a client's own, or a clock step back) pays for a hash-map
/// insert. A hash map alone cost a cache miss per event on a table of a quarter million.
#[derive(Debug, Default)]
struct EventIds {
    ascending: Vec<(u128, u64)>,
    others: HashMap<u128, u64, RandomState>,
}

impl EventIds {
    fn with_capacity(events: usize) -> EventIds {
        EventIds {
            ascending: Vec::with_capacity(events),
            others: HashMap::default(),
        }
    }

    fn insert(&mut self, event_id: Uuid, position: u64) {
        let id = event_id.as_u128();
        match self.ascending.last() {
            Some(&(last, _)) if id <= last => {
                self.others.insert(id, position);
            }
            _ => self.ascending.push((id, position)),
        }
    }

    fn get(&self, event_id: &Uuid) -> Option<u64> {
        let id = event_id.as_u128();
        match self.ascending.binary_search_by_key(&id, |&(id, _)| id) {
            Ok(at) => self.ascending.get(at).map(|&(_, position)| position),
            Err(_) => self.others.get(&id).copied(),
        }
    }

    fn len(&self) -> usize {
        self.ascending.len() + self.others.len()
    }

    /// Every (id, position), ascending by id.
    fn sorted(&self) -> Vec<(u128, u64)> {
        // Sorting owned pairs keeps the sort in cache; only the out-of-order ids need it.
        let mut others: Vec<(u128, u64)> = self
            .others
            .iter()
            .map(|(&id, &position)| (id, position))
            .collect();
        others.sort_unstable();
        let mut ids = Vec::with_capacity(self.len());
        let (mut a, mut b) = (self.ascending.iter().peekable(), others.into_iter().peekable());
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(&&x), Some(&y)) if x < y => a.next().copied(),
                (Some(_), Some(_)) | (None, Some(_)) => b.next(),
                (Some(_), None) => a.next().copied(),
                (None, None) => break,
            };
            ids.extend(next);
        }
        ids
    }
}

impl MemTable {
    /// An empty memtable whose first event will be at `first_position`, located at or after `end`.
    pub fn new(first_position: u64, end: Loc) -> MemTable {
        Self::with_capacity(first_position, end, 0)
    }

    /// An empty memtable with room for `events` events, so that filling it never rehashes.
    pub fn with_capacity(first_position: u64, end: Loc, events: usize) -> MemTable {
        MemTable {
            first_position,
            locs: Vec::with_capacity(events),
            created: Vec::with_capacity(events),
            recorded: Vec::with_capacity(events),
            aggregates: HashMap::default(),
            aggregate_ids: BTreeSet::new(),
            event_ids: EventIds::with_capacity(events),
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
                self.aggregate_ids.insert(event.aggregate_id.into());
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

    /// The aggregates whose id starts with `prefix`, in id order.
    pub fn aggregates_with_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a AggregateTail)> + 'a {
        self.aggregate_ids
            .range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
            .take_while(move |id| id.starts_with(prefix))
            .filter_map(|id| self.aggregates.get(id).map(|tail| (&**id, tail)))
    }

    pub fn event_id(&self, event_id: &Uuid) -> Option<u64> {
        self.event_ids.get(event_id)
    }

    /// Positions of a term, ascending.
    pub fn term(&self, kind: TermKind, term: &str) -> &[u64] {
        self.terms[kind.index()].get(term).map_or(&[], Vec::as_slice)
    }

    /// How many distinct keys the run's bloom filter will hold.
    pub fn bloom_keys(&self) -> usize {
        self.aggregates.len() + self.event_ids.len() + self.terms.iter().map(HashMap::len).sum::<usize>()
    }

    /// Writes every entry, in key order, to a run, and returns the position table.
    ///
    /// No global sort: key order is kind, then aggregate id (bytewise) or term (by length, then
    /// bytes, as the key encodes them), then suffix; within an aggregate or a term the suffixes (versions, positions) are
    /// already ascending. Only the distinct terms and the event ids are sorted.
    pub fn write_run(&self, writer: &mut RunWriter) -> Result<PositionTable> {
        let mut key = Vec::with_capacity(512);
        let by_term = |a: &&str, b: &&str| (a.len(), a.as_bytes()).cmp(&(b.len(), b.as_bytes()));
        // 'A': aggregates, in id order (the ids end with 0x00 in the key, so bytewise).
        for aggregate_id in &self.aggregate_ids {
            let aggregate_id: &str = aggregate_id;
            let tail = &self.aggregates[aggregate_id];
            for (i, &position) in tail.positions.iter().enumerate() {
                keys::write_aggregate_key(&mut key, aggregate_id, tail.first_version + i as u64);
                writer.add(
                    &key,
                    &keys::position_loc_value(position, self.loc_unchecked(position)),
                )?;
            }
        }
        let write_terms = |kind: TermKind, key: &mut Vec<u8>, writer: &mut RunWriter| -> Result<()> {
            let map = &self.terms[kind.index()];
            let mut terms: Vec<&str> = map.keys().map(|k| &**k).collect();
            terms.sort_unstable_by(by_term);
            for term in terms {
                for &position in &map[term] {
                    keys::write_term_key(key, kind.byte(), term, position);
                    writer.add(key, &self.loc_unchecked(position).0.to_le_bytes())?;
                }
            }
            Ok(())
        };
        // 'C': correlation ids.
        write_terms(TermKind::Correlation, &mut key, writer)?;
        // 'E': event ids.
        // Sorting owned (u128, u64) pairs, not references into the map, keeps the sort in cache.
        for (event_id, position) in self.event_ids.sorted() {
            let key = keys::event_id_key(Uuid::from_u128(event_id));
            writer.add(
                &key,
                &keys::position_loc_value(position, self.loc_unchecked(position)),
            )?;
        }
        // 'K': causation ids, then 'T': event types.
        write_terms(TermKind::Causation, &mut key, writer)?;
        write_terms(TermKind::EventType, &mut key, writer)?;
        Ok(PositionTable::build(
            self.first_position,
            &self.locs,
            &self.created,
            &self.recorded,
        ))
    }

    fn loc_unchecked(&self, position: u64) -> Loc {
        // Every position a map holds was inserted with its location.
        self.locs[(position - self.first_position) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_in_and_out_of_order_are_all_found_and_sorted() {
        let mut ids = EventIds::with_capacity(0);
        let mut reference = Vec::new();
        // Mostly ascending (UUIDv7 from one clock), with ids from elsewhere mixed in.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        for position in 1..=5000u64 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let id = if position % 3 == 0 {
                u128::from(state) << 64 | u128::from(position)
            } else {
                u128::from(position) << 80
            };
            ids.insert(Uuid::from_u128(id), position);
            reference.push((id, position));
        }
        assert!(!ids.others.is_empty() && !ids.ascending.is_empty());
        for &(id, position) in &reference {
            assert_eq!(ids.get(&Uuid::from_u128(id)), Some(position));
        }
        assert_eq!(ids.get(&Uuid::from_u128(7)), None);
        reference.sort_unstable();
        assert_eq!(ids.sorted(), reference);
        assert_eq!(ids.len(), 5000);
    }
}
