//! The groups a store's writers have planned but not yet seen committed: what lets a writer
//! insert its group while the group before it is still inserting.
//!
//! A writer plans a group on a snapshot of the database (the head it read, and the lookups
//! made at that head) plus the groups of this store planned after that head, which are not
//! committed yet or were committed after the snapshot. It takes the positions after the last
//! planned group, inserts without holding the head lock, and commits only after the group
//! before it committed as planned. So groups insert in parallel but commit one at a time in
//! position order, and a reader never sees a position before the ones below it.
//!
//! # Invariants
//! - The chain's groups have consecutive positions: each starts one after the one before.
//! - Committed groups are a prefix of the chain: a group commits only after the one before it.
//! - A group that fails takes every later group out of the chain, and each of those, seeing
//!   the failure of the one before it, rolls back and is planned again: no group commits on a
//!   plan that counted on a group that did not commit.
//! - A plan counts a planned group only if the snapshot it is made on is exactly the state
//!   before that group (the snapshot head is a group boundary of the chain); any other head
//!   means another server committed, and the group is written the locking way instead.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use factstore_core::{CommitOutcome, Event, StoreError, Timestamp};
use tokio::sync::watch;
use uuid::Uuid;

/// Committed groups kept at the chain's front, so that a plan made on a snapshot taken a few
/// commits ago can still count the groups after it.
const KEEP_COMMITTED: usize = 8;

/// How long a store's writers take the head lock first after another server interfered: two
/// servers writing at once would otherwise keep spoiling each other's plans.
const CONTENDED_FOR: Duration = Duration::from_secs(1);

/// What a group decided so far: the events that passed, and the state they leave behind.
/// Seeded with the planned groups the snapshot does not include, so each commit is decided
/// against the store as it will be when the group commits.
#[derive(Default)]
pub(crate) struct Pending {
    pub events: Vec<Event>,
    pub by_id: HashMap<Uuid, usize>,
    pub aggregates: HashMap<String, (u64, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Pending,
    Committed,
    Failed,
}

/// A planned group: its positions and what it leaves behind.
pub(crate) struct Planned {
    pub first: u64,
    pub last: u64,
    pub recorded_at: Timestamp,
    pub events: Vec<Event>,
    aggregates: HashMap<String, (u64, String)>,
    outcome: watch::Sender<Outcome>,
}

impl Planned {
    /// Waits until the group is committed (true) or has failed (false).
    pub async fn settled(&self) -> bool {
        let mut outcome = self.outcome.subscribe();
        match outcome.wait_for(|o| *o != Outcome::Pending).await {
            Ok(o) => *o == Outcome::Committed,
            // The sender lives in `self`, so it cannot be gone while we borrow it.
            Err(_) => false,
        }
    }
}

#[derive(Default)]
struct Chain {
    groups: VecDeque<Arc<Planned>>,
    contended_until: Option<Instant>,
    /// Groups of this store being written the locking way. While there are any, no group is
    /// planned: a planned group and a locked one would wait for each other in PostgreSQL
    /// (the locked one for the planned one's keys, the planned one for the head lock).
    locked: usize,
}

/// Shared by the writers of one store.
#[derive(Default)]
pub(crate) struct Sequencer {
    chain: Mutex<Chain>,
}

/// The result of planning a group.
pub(crate) enum Plan {
    /// The snapshot is older than the chain remembers: look up again.
    Stale,
    /// The snapshot's head is not a boundary of the chain while groups are in flight:
    /// another server committed. Write this group the locking way.
    Contended,
    /// A group of this store is being written the locking way: write this one so too.
    Locked,
    Planned {
        answers: Vec<Result<CommitOutcome, StoreError>>,
        /// The group's place in the chain, when it has events to write.
        ticket: Option<Ticket>,
        /// The group before it, still in flight: the answers hold only if it commits.
        after: Option<Arc<Planned>>,
    },
}

impl Sequencer {
    /// Whether plans may be made now: no other server interfered lately, and no group is
    /// being written the locking way.
    pub fn optimistic(&self) -> bool {
        let chain = self.chain.lock().expect("chain lock");
        chain.locked == 0 && chain.contended_until.is_none_or(|until| Instant::now() >= until)
    }

    /// A group is to be written the locking way: no group is planned until it is done, and it
    /// must first wait for the returned group (the last in flight) to settle.
    pub fn lock(self: &Arc<Self>) -> (Locked, Option<Arc<Planned>>) {
        let mut chain = self.chain.lock().expect("chain lock");
        chain.locked += 1;
        let last = chain
            .groups
            .back()
            .filter(|g| *g.outcome.borrow() == Outcome::Pending)
            .cloned();
        (
            Locked {
                sequencer: self.clone(),
            },
            last,
        )
    }

    /// Another server interfered: take the head lock first for a while.
    pub fn contended(&self) {
        let mut chain = self.chain.lock().expect("chain lock");
        chain.contended_until = Some(Instant::now() + CONTENDED_FOR);
    }

    /// Plans a group on a snapshot whose head is `head` (recorded at `head_recorded`).
    /// `decide` is given the pending state the snapshot lacks, the first free position and the
    /// group's `recorded_at`, decides each commit and returns their answers; the events it
    /// adds to the pending state are the group's.
    pub fn plan(
        self: &Arc<Self>,
        head: u64,
        head_recorded: Option<Timestamp>,
        decide: impl FnOnce(&mut Pending, &mut u64, Timestamp) -> Vec<Result<CommitOutcome, StoreError>>,
    ) -> Plan {
        let mut chain = self.chain.lock().expect("chain lock");
        if chain.locked > 0 {
            return Plan::Locked;
        }
        let groups = &mut chain.groups;
        let unresolved = groups.iter().any(|g| *g.outcome.borrow() != Outcome::Committed);
        let from = match groups.back() {
            None => 0,
            Some(back) if head == back.last => groups.len(),
            Some(back) if head > back.last => {
                if unresolved {
                    return Plan::Contended;
                }
                // Another server committed after every group here: start afresh.
                groups.clear();
                0
            }
            Some(_) => match groups.iter().position(|g| g.first == head + 1) {
                Some(index) => index,
                None if head + 1 < groups[0].first => return Plan::Stale,
                None => return Plan::Contended,
            },
        };
        let mut pending = Pending::default();
        for group in groups.range(from..) {
            for event in &group.events {
                pending.by_id.insert(event.event_id(), pending.events.len());
                pending.events.push(event.clone());
            }
            pending
                .aggregates
                .extend(group.aggregates.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let base = pending.events.len();
        let mut next_position = groups.back().map_or(head, |g| g.last) + 1;
        let first = next_position;
        let floor = groups.back().map(|g| g.recorded_at).max(head_recorded);
        let recorded_at = floor.map_or(Timestamp::now(), |floor| Timestamp::now().max(floor));
        let answers = decide(&mut pending, &mut next_position, recorded_at);
        let after = groups
            .back()
            .filter(|g| *g.outcome.borrow() == Outcome::Pending)
            .cloned();
        let events = pending.events.split_off(base);
        if events.is_empty() {
            return Plan::Planned {
                answers,
                ticket: None,
                after,
            };
        }
        let mut aggregates = HashMap::new();
        for event in &events {
            aggregates.insert(
                event.aggregate_id().to_owned(),
                (event.version(), event.aggregate_type().to_owned()),
            );
        }
        let planned = Arc::new(Planned {
            first,
            last: next_position - 1,
            recorded_at,
            events,
            aggregates,
            outcome: watch::channel(Outcome::Pending).0,
        });
        groups.push_back(planned.clone());
        while groups.len() > KEEP_COMMITTED
            && groups
                .front()
                .is_some_and(|g| *g.outcome.borrow() == Outcome::Committed)
        {
            groups.pop_front();
        }
        Plan::Planned {
            answers,
            ticket: Some(Ticket {
                sequencer: self.clone(),
                planned,
                committed: false,
            }),
            after,
        }
    }

    fn settle(&self, planned: &Arc<Planned>, committed: bool) {
        let mut chain = self.chain.lock().expect("chain lock");
        if committed {
            planned.outcome.send_replace(Outcome::Committed);
            return;
        }
        if let Some(index) = chain.groups.iter().position(|g| Arc::ptr_eq(g, planned)) {
            chain.groups.truncate(index);
        }
        planned.outcome.send_replace(Outcome::Failed);
    }
}

/// A group being written the locking way; planning resumes when the last is dropped.
pub(crate) struct Locked {
    sequencer: Arc<Sequencer>,
}

impl Drop for Locked {
    fn drop(&mut self) {
        let mut chain = self.sequencer.chain.lock().expect("chain lock");
        chain.locked -= 1;
    }
}

/// A group's place in the chain. Dropped without [`Ticket::committed`], the group has failed:
/// it leaves the chain with every group after it.
pub(crate) struct Ticket {
    sequencer: Arc<Sequencer>,
    planned: Arc<Planned>,
    committed: bool,
}

impl Ticket {
    pub fn planned(&self) -> &Planned {
        &self.planned
    }

    pub fn committed(mut self) {
        self.committed = true;
        self.sequencer.settle(&self.planned, true);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.committed {
            self.sequencer.settle(&self.planned, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use factstore_core::EventFields;

    fn event(aggregate: &str, version: u64, position: u64) -> Event {
        Event::from_fields(&EventFields {
            position,
            version,
            event_id: Uuid::now_v7(),
            created_at: Timestamp::from_micros(1),
            recorded_at: Timestamp::from_micros(1),
            event_version: 1,
            aggregate_id: aggregate,
            aggregate_type: "Account",
            event_type: "Opened",
            event_data: "{}",
            created_by: None,
            metadata: None,
            correlation_id: None,
            causation_id: None,
        })
    }

    /// Plans `n` events on `aggregate`, continuing the version the pending state knows.
    fn plan(seq: &Arc<Sequencer>, head: u64, aggregate: &str, n: u64) -> (Plan, usize, Option<u64>) {
        let mut seen = (0, None);
        let plan = seq.plan(head, None, |pending, next, _| {
            seen = (
                pending.events.len(),
                pending.aggregates.get(aggregate).map(|a| a.0),
            );
            let mut version = seen.1.unwrap_or(0);
            for _ in 0..n {
                version += 1;
                pending.events.push(event(aggregate, version, *next));
                *next += 1;
            }
            Vec::new()
        });
        (plan, seen.0, seen.1)
    }

    fn ticket(plan: Plan) -> (Ticket, Option<Arc<Planned>>) {
        match plan {
            Plan::Planned {
                ticket: Some(t),
                after,
                ..
            } => (t, after),
            _ => panic!("expected a planned group with events"),
        }
    }

    #[test]
    fn a_group_planned_behind_one_in_flight_counts_its_events_and_takes_the_next_positions() {
        let seq = Arc::new(Sequencer::default());
        let (a, after) = ticket(plan(&seq, 10, "x", 3).0);
        assert!(after.is_none());
        assert_eq!((a.planned().first, a.planned().last), (11, 13));
        let (plan_b, overlay, version) = plan(&seq, 10, "x", 2);
        assert_eq!((overlay, version), (3, Some(3)), "b sees a's events and version");
        let (b, after) = ticket(plan_b);
        assert_eq!((b.planned().first, b.planned().last), (14, 15));
        assert!(Arc::ptr_eq(&after.expect("a is in flight"), &a.planned));
        // A snapshot taken after a committed counts only b.
        a.committed();
        let (plan_c, overlay, version) = plan(&seq, 13, "x", 1);
        assert_eq!((overlay, version), (2, Some(5)));
        let (c, _) = ticket(plan_c);
        assert_eq!(c.planned().first, 16);
        drop((b, c));
    }

    #[test]
    fn a_failed_group_takes_the_later_ones_out_and_they_learn_it() {
        let seq = Arc::new(Sequencer::default());
        let (a, _) = ticket(plan(&seq, 0, "x", 1).0);
        let (b, after_b) = ticket(plan(&seq, 0, "y", 1).0);
        drop(a);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        assert!(
            !runtime.block_on(after_b.expect("a is in flight").settled()),
            "b waits on a, which failed"
        );
        // The next plan starts after the last group still standing: none, so at the head.
        let (plan_c, overlay, _) = plan(&seq, 0, "z", 1);
        assert_eq!(overlay, 0, "neither a nor b is counted");
        let (c, after_c) = ticket(plan_c);
        assert_eq!(c.planned().first, 1);
        assert!(after_c.is_none());
        drop(b);
        assert_eq!(c.planned().first, 1, "b failing later changes nothing for c");
        c.committed();
    }

    #[test]
    fn a_head_that_is_no_boundary_of_the_chain_is_contention_and_an_old_one_is_stale() {
        let seq = Arc::new(Sequencer::default());
        let (a, _) = ticket(plan(&seq, 100, "x", 10).0);
        assert!(matches!(plan(&seq, 105, "y", 1).0, Plan::Contended));
        assert!(
            matches!(plan(&seq, 120, "y", 1).0, Plan::Contended),
            "a is in flight"
        );
        a.committed();
        for _ in 0..KEEP_COMMITTED {
            let head = seq
                .chain
                .lock()
                .expect("chain")
                .groups
                .back()
                .expect("a group")
                .last;
            ticket(plan(&seq, head, "x", 1).0).0.committed();
        }
        assert!(matches!(plan(&seq, 100, "y", 1).0, Plan::Stale), "a was pruned");
        // No plan while a group is written the locking way.
        let (locked, last) = seq.lock();
        assert!(last.is_none(), "every group settled");
        assert!(!seq.optimistic());
        assert!(matches!(plan(&seq, 500, "y", 1).0, Plan::Locked));
        drop(locked);
        assert!(seq.optimistic());
        // Every group committed and another server went further: start again at its head.
        let (d, after) = ticket(plan(&seq, 500, "y", 1).0);
        assert_eq!(d.planned().first, 501);
        assert!(after.is_none());
        d.committed();
    }

    #[test]
    fn recorded_at_never_goes_below_the_group_before_or_the_head() {
        let seq = Arc::new(Sequencer::default());
        let future = Timestamp::from_micros(Timestamp::now().as_micros() + 60_000_000);
        let a = match seq.plan(0, Some(future), |pending, next, _| {
            pending.events.push(event("x", 1, *next));
            *next += 1;
            Vec::new()
        }) {
            Plan::Planned { ticket: Some(t), .. } => t,
            _ => panic!(),
        };
        assert_eq!(a.planned().recorded_at, future);
        let mut seen = None;
        let _ = seq.plan(0, None, |_, _, recorded_at| {
            seen = Some(recorded_at);
            Vec::new()
        });
        assert_eq!(seen, Some(future));
        drop(a);
    }
}
