//! [`GroupState`]: one group's delivery state machine. No I/O and no clock: the caller passes
//! the time (in milliseconds on any monotonic clock) and the events read from the store, and
//! takes the journal records each change produces.
//!
//! # The positions of a group
//! - `checkpoint`: every position at or below it is acked, parked, or passed over by the
//!   filter, except replayed events (live entries at or below it).
//! - `read`: every event at or below it has been read from the store; each matching one
//!   above the checkpoint is live, acked or parked.
//! - `live`: events to deliver or delivered and not yet acked: waiting (in `ready`, or held
//!   back behind their aggregate) or leased to a consumer until a deadline.
//!
//! # Invariants (checked by `check` in tests)
//! - A position is in at most one of `live`, `acked`, `parked`; `acked` is above the
//!   checkpoint.
//! - A live event is leased exactly when it is in `leases`.
//! - With `none` ordering, `ready` is every live event without a lease. With `per_aggregate`,
//!   `ready` holds, for each aggregate without a leased event, its lowest live position, and
//!   nothing else; so an aggregate never has two events in flight, and an event is handed
//!   out only when no lower position of its aggregate is live.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use factstore_core::Event;

use crate::definition::{GroupDefinition, Ordering};
use crate::error::SubscriptionError;
use crate::record::{Image, Record};

/// An event handed to a consumer, and which delivery of it this is (1 for the first).
#[derive(Debug, Clone)]
pub struct Delivery {
    pub event: Event,
    pub attempt: u32,
}

/// Counts for the group's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub checkpoint: u64,
    /// Events leased to consumers now.
    pub in_flight: usize,
    /// Events read and not yet acked, leased or not.
    pub pending: usize,
    pub parked: usize,
}

#[derive(Debug)]
struct Lease {
    consumer: Arc<str>,
    deadline_ms: u64,
}

#[derive(Debug)]
struct Live {
    event: Event,
    /// Deliveries so far.
    attempts: u32,
    /// Delivered before it was replayed: a late ack of that delivery is taken.
    replayed: bool,
    lease: Option<Lease>,
}

#[derive(Debug, Default)]
struct AggregateQueue {
    /// The aggregate's live positions.
    queued: BTreeSet<u64>,
    /// Its leased position, if any.
    in_flight: Option<u64>,
}

/// How a position named by an ack or nack stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// Live and delivered at least once.
    Delivered,
    /// Live, never delivered.
    Undelivered,
    /// Live, not delivered since the group was loaded, at or below the head then: it may
    /// have been delivered before (a restart or a change of definition drops leases).
    Earlier,
    Parked,
    /// Acked, or at or below the checkpoint.
    Done,
    /// Above what the group has read, at or below the head: it may have been delivered
    /// before a restart.
    Unread,
    /// Read, not live, not acked, not parked: the filter passed over it.
    Filtered,
    /// Above the head, or 0.
    Missing,
}

/// One group's delivery state.
#[derive(Debug)]
pub struct GroupState {
    ordering: Ordering,
    ack_timeout_ms: u64,
    max_deliveries: u32,
    checkpoint: u64,
    read: u64,
    live: BTreeMap<u64, Live>,
    acked: BTreeSet<u64>,
    parked: BTreeMap<u64, u32>,
    /// Deliveries, known from the journal, of unacked positions not read yet since a load.
    unread_attempts: BTreeMap<u64, u32>,
    ready: BTreeSet<u64>,
    /// (deadline, position) of every leased event.
    leases: BTreeSet<(u64, u64)>,
    aggregates: HashMap<Box<str>, AggregateQueue>,
    /// Records not yet handed to the journal, in the order of the changes.
    pending: Vec<Record>,
    /// Positions delivered since the last [`take_records`](GroupState::take_records).
    delivered: Vec<u64>,
    /// The checkpoint last handed to the journal.
    checkpoint_recorded: u64,
    /// Counts the changes that must reach the journal; see [`changes`](GroupState::changes).
    changes: u64,
    /// The head when the group was loaded: positions up to it may have been delivered before
    /// (their leases are gone), so an ack of one of them is taken even when it has not been
    /// delivered again yet, and a nack of one leaves it to be delivered again.
    loaded_head: u64,
}

impl GroupState {
    /// The state of a group starting from `image` (settled), with the events of its
    /// `replaying` positions already read from the store.
    /// `head` is the store's head now (see `loaded_head`); 0 for a new group.
    pub fn from_image(
        image: &Image,
        replaying: Vec<Event>,
        head: u64,
    ) -> Result<GroupState, SubscriptionError> {
        let mut state = GroupState {
            ordering: image.definition.ordering,
            ack_timeout_ms: image.definition.ack_timeout_ms,
            max_deliveries: image.definition.max_deliveries,
            checkpoint: image.checkpoint,
            read: image.checkpoint,
            live: BTreeMap::new(),
            acked: image.acked.clone(),
            parked: image.parked.clone(),
            unread_attempts: image.attempts.clone(),
            ready: BTreeSet::new(),
            leases: BTreeSet::new(),
            aggregates: HashMap::new(),
            pending: Vec::new(),
            delivered: Vec::new(),
            checkpoint_recorded: image.checkpoint,
            changes: 0,
            loaded_head: head,
        };
        for event in replaying {
            let p = event.position();
            let Some(&attempts) = image.replaying.get(&p) else {
                return Err(SubscriptionError::Internal(format!(
                    "event at position {p} is not one the group replays"
                )));
            };
            state.insert_live(event, attempts, true);
        }
        if state.live.len() != image.replaying.len() {
            return Err(SubscriptionError::Internal(
                "some replayed events were not found in the store".to_owned(),
            ));
        }
        Ok(state)
    }

    /// The durable image of this state, for compaction or a change of definition.
    pub fn image(&self, name: &str, definition: &GroupDefinition) -> Image {
        let mut image = Image::new(name, definition.clone(), self.checkpoint);
        image.acked = self.acked.clone();
        image.parked = self.parked.clone();
        for (&p, live) in &self.live {
            if p <= self.checkpoint {
                image.replaying.insert(p, live.attempts);
            } else if live.attempts > 0 {
                image.attempts.insert(p, live.attempts);
            }
        }
        image
            .attempts
            .extend(self.unread_attempts.iter().map(|(&p, &n)| (p, n)));
        image
    }

    pub fn checkpoint(&self) -> u64 {
        self.checkpoint
    }

    /// The last position read from the store.
    pub fn read_position(&self) -> u64 {
        self.read
    }

    pub fn counts(&self) -> Counts {
        Counts {
            checkpoint: self.checkpoint,
            in_flight: self.leases.len(),
            pending: self.live.len(),
            parked: self.parked.len(),
        }
    }

    /// Whether an event is waiting to be handed out.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// How many more events may be read ahead: live events cost memory (their bodies), and
    /// acked positions above the checkpoint (behind one slow event) cost a little each.
    pub fn room(&self, live_max: usize, acked_max: usize) -> usize {
        if self.acked.len() >= acked_max {
            0
        } else {
            live_max.saturating_sub(self.live.len())
        }
    }

    /// The earliest lease deadline.
    pub fn next_deadline(&self) -> Option<u64> {
        self.leases.first().map(|&(deadline, _)| deadline)
    }

    /// A count that grows with every change that must reach the journal before it is
    /// answered: a request waits until the journal has recorded the changes up to the count
    /// it saw.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// Whether records wait for the journal.
    pub fn has_records(&self) -> bool {
        !self.pending.is_empty() || !self.delivered.is_empty() || self.checkpoint != self.checkpoint_recorded
    }

    /// Takes the records for the journal: the changes in order, the deliveries of events
    /// still live, and the checkpoint they allow.
    pub fn take_records(&mut self) -> Vec<Record> {
        let mut records = std::mem::take(&mut self.pending);
        let delivered: Vec<u64> = std::mem::take(&mut self.delivered)
            .into_iter()
            .filter(|p| self.live.contains_key(p))
            .collect();
        if !delivered.is_empty() {
            records.push(Record::Delivered(delivered));
        }
        if self.checkpoint != self.checkpoint_recorded {
            records.push(Record::Checkpoint(self.checkpoint));
            self.checkpoint_recorded = self.checkpoint;
        }
        records
    }

    /// Forgets the records waiting (an image that holds them is being written instead).
    pub fn discard_records(&mut self) {
        self.pending.clear();
        self.delivered.clear();
        self.checkpoint_recorded = self.checkpoint;
    }

    /// Adds events read from the store after [`read_position`](GroupState::read_position),
    /// in position order, and moves the read position to `read_to` (the page's
    /// `next_after_position`).
    pub fn add_read(&mut self, events: Vec<Event>, read_to: u64) {
        for event in events {
            let p = event.position();
            if p <= self.read || self.acked.contains(&p) || self.parked.contains_key(&p) {
                continue;
            }
            if self.live.contains_key(&p) {
                continue;
            }
            let attempts = self.unread_attempts.remove(&p).unwrap_or(0);
            self.insert_live(event, attempts, false);
        }
        self.read = self.read.max(read_to);
        self.advance();
    }

    /// Hands up to `max` ready events to `consumer`, leased until `now_ms` + the ack
    /// timeout, lowest positions first. Expired leases are released first.
    pub fn deliver(&mut self, consumer: &Arc<str>, max: usize, now_ms: u64) -> Vec<Delivery> {
        self.expire(now_ms);
        let mut out = Vec::with_capacity(max.min(self.ready.len()));
        let deadline_ms = now_ms.saturating_add(self.ack_timeout_ms);
        while out.len() < max {
            let Some(p) = self.ready.pop_first() else {
                break;
            };
            let Some(live) = self.live.get_mut(&p) else {
                debug_assert!(false, "ready position {p} is not live");
                continue;
            };
            debug_assert!(live.lease.is_none(), "ready position {p} is leased");
            live.attempts = live.attempts.saturating_add(1);
            live.lease = Some(Lease {
                consumer: consumer.clone(),
                deadline_ms,
            });
            self.leases.insert((deadline_ms, p));
            if self.ordering == Ordering::PerAggregate
                && let Some(queue) = self.aggregates.get_mut(live.event.aggregate_id())
            {
                debug_assert!(queue.in_flight.is_none());
                queue.in_flight = Some(p);
            }
            self.delivered.push(p);
            out.push(Delivery {
                event: live.event.clone(),
                attempt: live.attempts,
            });
        }
        out
    }

    /// Releases the leases whose deadline has passed: each event is delivered again, or
    /// parked when it has had `max_deliveries`. Returns how many were released.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        let mut released = 0;
        let mut parked = Vec::new();
        while let Some(&(deadline_ms, p)) = self.leases.first() {
            if deadline_ms > now_ms {
                break;
            }
            released += 1;
            let attempts = self.release(p);
            if attempts >= self.max_deliveries {
                parked.push(p);
            } else {
                self.requeue(p);
            }
        }
        if !parked.is_empty() {
            self.park(&parked);
            self.advance();
        }
        released
    }

    /// Acks `positions` (all or none: the first that cannot be acked is the error). An
    /// acked position, or one at or below the checkpoint, is acked again without change; a
    /// parked one is taken out of the parked list as done. Positions the group has not
    /// delivered (passed over by the filter, or read and never handed out) are refused;
    /// positions above what the group has read (after a restart) are taken up to `head`.
    pub fn ack(&mut self, positions: &[u64], head: u64) -> Result<(), SubscriptionError> {
        for &p in positions {
            match self.standing(p, head) {
                Standing::Delivered
                | Standing::Earlier
                | Standing::Parked
                | Standing::Done
                | Standing::Unread => {}
                Standing::Undelivered => return Err(not_delivered(p)),
                Standing::Filtered => {
                    return Err(SubscriptionError::invalid(format!(
                        "position {p} is not one of the group's events (its filter passes over it)"
                    )));
                }
                Standing::Missing => return Err(missing(p, head)),
            }
        }
        let mut changed = Vec::new();
        for &p in positions {
            match self.standing(p, head) {
                Standing::Delivered | Standing::Earlier => {
                    self.remove_live(p);
                }
                Standing::Parked => {
                    self.parked.remove(&p);
                }
                Standing::Unread => {
                    self.unread_attempts.remove(&p);
                }
                _ => continue,
            }
            if p > self.checkpoint {
                self.acked.insert(p);
            }
            changed.push(p);
        }
        if !changed.is_empty() {
            self.pending.push(Record::Ack(changed));
            self.changes += 1;
            self.advance();
        }
        Ok(())
    }

    /// Gives `positions` back (all or none). Each is delivered again, or parked when `park`
    /// is set or it has had `max_deliveries`. A parked position is left as it is, and so is
    /// one above what the group has read (it will be read and delivered again). Acked
    /// positions and positions never delivered are refused.
    pub fn nack(&mut self, positions: &[u64], park: bool, head: u64) -> Result<(), SubscriptionError> {
        for &p in positions {
            match self.standing(p, head) {
                Standing::Delivered | Standing::Earlier | Standing::Parked | Standing::Unread => {}
                Standing::Done => {
                    return Err(SubscriptionError::invalid(format!(
                        "position {p} is already acked; it cannot be nacked"
                    )));
                }
                Standing::Undelivered | Standing::Filtered => return Err(not_delivered(p)),
                Standing::Missing => return Err(missing(p, head)),
            }
        }
        let mut to_park = Vec::new();
        for &p in positions {
            if self.standing(p, head) != Standing::Delivered {
                continue;
            }
            let attempts = self.release(p);
            if park || attempts >= self.max_deliveries {
                to_park.push(p);
            } else {
                self.requeue(p);
            }
        }
        if !to_park.is_empty() {
            self.park(&to_park);
            self.advance();
        }
        Ok(())
    }

    /// The parked positions to replay: `positions` (each must be parked), or the lowest
    /// `limit` parked positions.
    pub fn replay_candidates(
        &self,
        positions: Option<&[u64]>,
        limit: usize,
    ) -> Result<Vec<u64>, SubscriptionError> {
        match positions {
            Some(positions) => {
                let mut out: Vec<u64> = positions.to_vec();
                out.sort_unstable();
                out.dedup();
                if let Some(p) = out.iter().find(|p| !self.parked.contains_key(p)) {
                    return Err(SubscriptionError::invalid(format!("position {p} is not parked")));
                }
                Ok(out)
            }
            None => Ok(self.parked.keys().take(limit).copied().collect()),
        }
    }

    /// Puts parked events (read from the store) back into delivery with fresh attempts.
    /// Events no longer parked (acked or replayed meanwhile) are left out. Returns how many
    /// were replayed.
    pub fn replay(&mut self, events: Vec<Event>) -> usize {
        let mut replayed = Vec::new();
        for event in events {
            let p = event.position();
            if self.live.contains_key(&p) || self.parked.remove(&p).is_none() {
                continue;
            }
            self.insert_live(event, 0, true);
            replayed.push(p);
        }
        let count = replayed.len();
        if count > 0 {
            self.pending.push(Record::Replay(replayed));
            self.changes += 1;
        }
        count
    }

    /// Parked positions above `after`, at most `limit`, with their deliveries.
    pub fn parked_page(&self, after: u64, limit: usize) -> Vec<(u64, u32)> {
        self.parked
            .range(after.saturating_add(1)..)
            .take(limit)
            .map(|(&p, &n)| (p, n))
            .collect()
    }

    /// Who holds the lease of `position`, if anyone (for tests and diagnostics).
    pub fn lease_holder(&self, position: u64) -> Option<&str> {
        self.live
            .get(&position)
            .and_then(|live| live.lease.as_ref())
            .map(|lease| &*lease.consumer)
    }

    fn standing(&self, p: u64, head: u64) -> Standing {
        if p == 0 {
            return Standing::Missing;
        }
        if let Some(live) = self.live.get(&p) {
            return if live.attempts > 0 {
                Standing::Delivered
            } else if live.replayed || p <= self.loaded_head {
                Standing::Earlier
            } else {
                Standing::Undelivered
            };
        }
        if self.parked.contains_key(&p) {
            Standing::Parked
        } else if p <= self.checkpoint || self.acked.contains(&p) {
            Standing::Done
        } else if p <= self.read && p <= self.loaded_head {
            // Perhaps delivered under an earlier definition whose filter took it.
            Standing::Done
        } else if p <= self.read {
            Standing::Filtered
        } else if p <= head {
            Standing::Unread
        } else {
            Standing::Missing
        }
    }

    fn insert_live(&mut self, event: Event, attempts: u32, replayed: bool) {
        let p = event.position();
        if self.ordering == Ordering::PerAggregate {
            let queue = self.aggregates.entry(event.aggregate_id().into()).or_default();
            let old_first = queue.queued.first().copied();
            queue.queued.insert(p);
            if queue.in_flight.is_none() {
                if let Some(old) = old_first {
                    self.ready.remove(&old);
                }
                if let Some(&first) = queue.queued.first() {
                    self.ready.insert(first);
                }
            }
        } else {
            self.ready.insert(p);
        }
        self.live.insert(
            p,
            Live {
                event,
                attempts,
                replayed,
                lease: None,
            },
        );
    }

    /// Ends the lease of a live event, if any; returns its deliveries so far.
    fn release(&mut self, p: u64) -> u32 {
        let Some(live) = self.live.get_mut(&p) else {
            return 0;
        };
        if let Some(lease) = live.lease.take() {
            self.leases.remove(&(lease.deadline_ms, p));
            if self.ordering == Ordering::PerAggregate
                && let Some(queue) = self.aggregates.get_mut(live.event.aggregate_id())
                && queue.in_flight == Some(p)
            {
                queue.in_flight = None;
            }
        }
        live.attempts
    }

    /// Makes a live event without a lease deliverable again.
    fn requeue(&mut self, p: u64) {
        if self.ordering == Ordering::PerAggregate {
            let Some(live) = self.live.get(&p) else {
                return;
            };
            if let Some(queue) = self.aggregates.get(live.event.aggregate_id())
                && queue.in_flight.is_none()
                && let Some(&first) = queue.queued.first()
            {
                self.ready.insert(first);
            }
        } else {
            self.ready.insert(p);
        }
    }

    fn remove_live(&mut self, p: u64) -> Option<Live> {
        self.release(p);
        self.ready.remove(&p);
        let live = self.live.remove(&p)?;
        if self.ordering == Ordering::PerAggregate {
            let aggregate = live.event.aggregate_id();
            if let Some(queue) = self.aggregates.get_mut(aggregate) {
                queue.queued.remove(&p);
                if queue.queued.is_empty() {
                    self.aggregates.remove(aggregate);
                } else if queue.in_flight.is_none()
                    && let Some(&first) = queue.queued.first()
                {
                    self.ready.insert(first);
                }
            }
        }
        Some(live)
    }

    fn park(&mut self, positions: &[u64]) {
        let mut record = Vec::with_capacity(positions.len());
        for &p in positions {
            if let Some(live) = self.remove_live(p) {
                self.parked.insert(p, live.attempts);
                record.push((p, live.attempts));
            }
        }
        if !record.is_empty() {
            self.pending.push(Record::Park(record));
            self.changes += 1;
        }
    }

    /// Moves the checkpoint over everything done: up to the lowest live position above it,
    /// never past what has been read.
    fn advance(&mut self) {
        let next_live = self
            .live
            .range(self.checkpoint.saturating_add(1)..)
            .next()
            .map(|(&p, _)| p - 1);
        let to = next_live.map_or(self.read, |p| p.min(self.read));
        if to > self.checkpoint {
            self.checkpoint = to;
            self.acked = self.acked.split_off(&(to + 1));
            self.unread_attempts = self.unread_attempts.split_off(&(to + 1));
        }
    }

    /// Asserts the invariants of the module doc (tests).
    #[cfg(test)]
    pub(crate) fn check(&self) {
        for &p in self.live.keys() {
            assert!(
                !self.acked.contains(&p) && !self.parked.contains_key(&p),
                "{p} twice"
            );
        }
        for &p in self.acked.iter() {
            assert!(p > self.checkpoint && !self.parked.contains_key(&p));
        }
        let leased: BTreeSet<u64> = self.leases.iter().map(|&(_, p)| p).collect();
        for (&p, live) in &self.live {
            assert_eq!(live.lease.is_some(), leased.contains(&p), "lease of {p}");
        }
        match self.ordering {
            Ordering::None => {
                let unleased: BTreeSet<u64> = self
                    .live
                    .iter()
                    .filter(|(_, l)| l.lease.is_none())
                    .map(|(&p, _)| p)
                    .collect();
                assert_eq!(self.ready, unleased);
            }
            Ordering::PerAggregate => {
                let mut expected = BTreeSet::new();
                let mut by_aggregate: HashMap<&str, Vec<u64>> = HashMap::new();
                for (&p, live) in &self.live {
                    by_aggregate.entry(live.event.aggregate_id()).or_default().push(p);
                }
                for (aggregate, positions) in &by_aggregate {
                    let leased: Vec<u64> = positions.iter().copied().filter(|p| leased.contains(p)).collect();
                    assert!(leased.len() <= 1, "{aggregate} has {leased:?} in flight");
                    let queue = self.aggregates.get(*aggregate).expect("queue");
                    assert_eq!(queue.queued.iter().copied().collect::<Vec<_>>(), *positions);
                    assert_eq!(queue.in_flight, leased.first().copied());
                    if leased.is_empty() {
                        expected.insert(positions[0]);
                    }
                }
                assert_eq!(self.aggregates.len(), by_aggregate.len());
                assert_eq!(self.ready, expected);
            }
        }
    }
}

fn not_delivered(p: u64) -> SubscriptionError {
    SubscriptionError::invalid(format!("position {p} has not been delivered to this group"))
}

fn missing(p: u64, head: u64) -> SubscriptionError {
    SubscriptionError::invalid(format!(
        "position {p} is not an event of the store (positions run from 1 to {head})"
    ))
}
