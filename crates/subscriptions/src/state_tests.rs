//! Tests of the delivery state machine: leases and timeouts on a controlled clock, parking,
//! replay, per-aggregate order, acks after a restart, and random operations checked against
//! the invariants and a model of what was acked.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use factstore_core::{Event, EventFields, Timestamp};
use proptest::prelude::*;
use uuid::Uuid;

use crate::definition::{GroupDefinition, Ordering};
use crate::record::{Image, Record};
use crate::state::GroupState;

fn event(position: u64, aggregate: &str, event_type: &str) -> Event {
    Event::from_fields(&EventFields {
        position,
        version: position,
        event_id: Uuid::from_u128(u128::from(position)),
        created_at: Timestamp::from_micros(0),
        recorded_at: Timestamp::from_micros(0),
        event_version: 1,
        aggregate_id: aggregate,
        aggregate_type: "A",
        event_type,
        created_by: None,
        correlation_id: None,
        causation_id: None,
        event_data: "{}",
        metadata: None,
    })
}

fn group(ordering: Ordering, max_deliveries: u32) -> GroupState {
    let definition = GroupDefinition {
        ordering,
        max_deliveries,
        ack_timeout_ms: 1000,
        ..GroupDefinition::default()
    };
    GroupState::from_image(&Image::new("g", definition, 0), Vec::new(), 0).expect("a new group")
}

fn consumer(name: &str) -> Arc<str> {
    Arc::from(name)
}

fn positions(deliveries: &[crate::Delivery]) -> Vec<u64> {
    deliveries.iter().map(|d| d.event.position()).collect()
}

#[test]
fn acks_move_the_checkpoint_over_acked_and_filtered_positions() {
    let mut g = group(Ordering::None, 5);
    // Positions 2 and 4 did not pass the filter.
    g.add_read(
        vec![event(1, "a", "E"), event(3, "b", "E"), event(5, "c", "E")],
        6,
    );
    let got = g.deliver(&consumer("w"), 10, 0);
    assert_eq!(positions(&got), [1, 3, 5]);
    assert!(got.iter().all(|d| d.attempt == 1));
    g.ack(&[3], 6).expect("ack");
    assert_eq!(g.checkpoint(), 0, "1 is still in flight");
    g.ack(&[1], 6).expect("ack");
    assert_eq!(g.checkpoint(), 4);
    g.ack(&[5], 6).expect("ack");
    assert_eq!(g.checkpoint(), 6, "6 was read and passed over");
    // Acking again is the same success.
    g.ack(&[1, 3, 5], 6).expect("idempotent");
    g.check();
}

#[test]
fn an_expired_lease_delivers_again_and_parks_after_max_deliveries() {
    let mut g = group(Ordering::None, 2);
    g.add_read(vec![event(1, "a", "E")], 1);
    assert_eq!(g.deliver(&consumer("w1"), 10, 0)[0].attempt, 1);
    assert!(
        g.deliver(&consumer("w2"), 10, 999).is_empty(),
        "leased until 1000"
    );
    let again = g.deliver(&consumer("w2"), 10, 1000);
    assert_eq!((positions(&again), again[0].attempt), (vec![1], 2));
    assert_eq!(g.lease_holder(1), Some("w2"));
    // The second lease expires: max_deliveries is 2, so the event is parked.
    assert_eq!(g.expire(2000), 1);
    assert_eq!(g.counts().parked, 1);
    assert_eq!(g.checkpoint(), 1, "a parked event counts as done");
    assert_eq!(g.parked_page(0, 10), [(1, 2)]);
    let records = g.take_records();
    assert!(records.contains(&Record::Park(vec![(1, 2)])), "{records:?}");
    g.check();
}

#[test]
fn a_late_ack_after_the_lease_expired_is_taken() {
    let mut g = group(Ordering::None, 5);
    g.add_read(vec![event(1, "a", "E")], 1);
    g.deliver(&consumer("w1"), 1, 0);
    assert_eq!(g.expire(5000), 1);
    g.ack(&[1], 1).expect("the consumer processed it after all");
    assert_eq!(g.checkpoint(), 1);
    assert!(g.deliver(&consumer("w2"), 1, 5000).is_empty());
}

#[test]
fn nack_delivers_again_or_parks() {
    let mut g = group(Ordering::None, 3);
    g.add_read(vec![event(1, "a", "E"), event(2, "b", "E")], 2);
    g.deliver(&consumer("w"), 2, 0);
    g.nack(&[1], false, 2).expect("nack");
    g.nack(&[2], true, 2).expect("nack and park");
    assert_eq!(g.counts().parked, 1);
    let again = g.deliver(&consumer("w"), 2, 1);
    assert_eq!((positions(&again), again[0].attempt), (vec![1], 2));
    // Nacking a parked event again changes nothing; nacking an acked one is refused.
    g.nack(&[2], true, 2).expect("already parked");
    g.ack(&[1], 2).expect("ack");
    let error = g.nack(&[1], false, 2).expect_err("acked");
    assert!(error.to_string().contains("already acked"), "{error}");
    g.check();
}

#[test]
fn acks_and_nacks_are_all_or_nothing_and_strict() {
    let mut g = group(Ordering::None, 5);
    g.add_read(vec![event(1, "a", "E"), event(3, "a", "E")], 4);
    g.deliver(&consumer("w"), 1, 0);
    // 3 was read but never delivered; 2 was passed over by the filter; 9 is past the head.
    for (bad, words) in [
        (3, "not been delivered"),
        (2, "filter"),
        (9, "not an event"),
        (0, "not an event"),
    ] {
        let error = g.ack(&[1, bad], 4).expect_err("refused");
        assert!(error.to_string().contains(words), "{bad}: {error}");
        assert_eq!(g.lease_holder(1), Some("w"), "nothing was applied");
    }
    assert!(g.nack(&[3], false, 4).is_err());
    assert!(g.take_records().iter().all(|r| !matches!(r, Record::Ack(_))));
}

#[test]
fn per_aggregate_holds_an_aggregates_later_events_while_one_is_in_flight() {
    let mut g = group(Ordering::PerAggregate, 5);
    g.add_read(
        vec![
            event(1, "a", "E"),
            event(2, "a", "E"),
            event(3, "b", "E"),
            event(4, "a", "E"),
        ],
        4,
    );
    assert_eq!(positions(&g.deliver(&consumer("w1"), 10, 0)), [1, 3]);
    assert!(
        g.deliver(&consumer("w2"), 10, 0).is_empty(),
        "a and b are in flight"
    );
    g.nack(&[1], false, 4).expect("nack");
    // 1 comes again before 2.
    assert_eq!(positions(&g.deliver(&consumer("w2"), 10, 0)), [1]);
    g.ack(&[1], 4).expect("ack");
    assert_eq!(positions(&g.deliver(&consumer("w2"), 10, 0)), [2]);
    g.check();
    // 2 is parked; 4 goes on; a replay of 2 waits for 4 to be acked... no: 2 comes before 4
    // when 4 is not in flight yet.
    g.nack(&[2], true, 4).expect("park");
    let replayed = g.replay_candidates(None, 10).expect("parked");
    assert_eq!(replayed, [2]);
    g.replay(vec![event(2, "a", "E")]);
    g.check();
    assert_eq!(
        positions(&g.deliver(&consumer("w2"), 10, 0)),
        [2],
        "version order across a replay"
    );
    g.ack(&[2, 3], 4).expect("ack");
    assert_eq!(positions(&g.deliver(&consumer("w2"), 10, 0)), [4]);
    g.check();
}

#[test]
fn replay_brings_back_parked_events_below_the_checkpoint() {
    let mut g = group(Ordering::None, 1);
    g.add_read(vec![event(1, "a", "E"), event(2, "a", "E")], 2);
    g.deliver(&consumer("w"), 10, 0);
    g.nack(&[1], false, 2).expect("nack parks at max_deliveries 1");
    g.ack(&[2], 2).expect("ack");
    assert_eq!((g.checkpoint(), g.counts().parked), (2, 1));
    assert!(g.replay_candidates(Some(&[2]), 10).is_err(), "2 is not parked");
    assert_eq!(g.replay(vec![event(1, "a", "E")]), 1);
    let again = g.deliver(&consumer("w"), 10, 0);
    assert_eq!((positions(&again), again[0].attempt), (vec![1], 1));
    assert_eq!(g.checkpoint(), 2, "the checkpoint never moves back");
    // A restart now must deliver 1 again: it is replayed and not acked.
    let mut journal = vec![Record::Image(Box::new(Image::new(
        "g",
        GroupDefinition::default(),
        0,
    )))];
    journal.extend(g.take_records());
    let image = Image::replay(&journal.iter().map(Record::encode).collect::<Vec<_>>()).expect("replays");
    assert_eq!(image.replaying.keys().copied().collect::<Vec<_>>(), [1]);
    g.ack(&[1], 2).expect("ack");
    assert_eq!(g.counts().pending, 0);
}

#[test]
fn after_a_restart_acks_of_earlier_deliveries_are_taken() {
    let definition = GroupDefinition {
        ack_timeout_ms: 1000,
        ..GroupDefinition::default()
    };
    let mut image = Image::new("g", definition, 0);
    image.attempts.insert(1, 1);
    let mut g = GroupState::from_image(&image, Vec::new(), 3).expect("loads");
    // Before the reader caught up, and after.
    g.ack(&[2], 3).expect("delivered before the restart");
    g.add_read(
        vec![event(1, "a", "E"), event(2, "a", "E"), event(3, "a", "E")],
        3,
    );
    g.ack(&[3], 3).expect("read again, not delivered again yet");
    let got = g.deliver(&consumer("w"), 10, 0);
    assert_eq!(
        (positions(&got), got[0].attempt),
        (vec![1], 2),
        "attempts survive"
    );
    assert!(g.ack(&[4], 3).is_err());
}

#[derive(Debug, Clone)]
enum Op {
    Read(u64),
    Poll {
        consumer: usize,
        max: usize,
    },
    Ack {
        consumer: usize,
        pick: usize,
        count: usize,
    },
    Nack {
        consumer: usize,
        pick: usize,
        park: bool,
    },
    Tick(u64),
    Replay,
    Restart {
        crash: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u64..8).prop_map(Op::Read),
        4 => (0usize..3, 1usize..5).prop_map(|(consumer, max)| Op::Poll { consumer, max }),
        4 => (0usize..3, 0usize..10, 1usize..4).prop_map(|(consumer, pick, count)| Op::Ack { consumer, pick, count }),
        1 => (0usize..3, 0usize..10, proptest::bool::ANY).prop_map(|(consumer, pick, park)| Op::Nack { consumer, pick, park }),
        2 => (1u64..1500).prop_map(Op::Tick),
        1 => Just(Op::Replay),
        1 => proptest::bool::ANY.prop_map(|crash| Op::Restart { crash }),
    ]
}

/// The store of the model: `len` events over 3 aggregates; the group takes type "E" only.
fn store(len: u64) -> Vec<Event> {
    (1..=len)
        .map(|p| {
            let aggregate = ["a", "b", "c"][(p * 7 % 3) as usize];
            let event_type = if p % 4 == 0 { "F" } else { "E" };
            event(p, aggregate, event_type)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn random_operations_keep_the_promises(
        per_aggregate in proptest::bool::ANY,
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let ordering = if per_aggregate { Ordering::PerAggregate } else { Ordering::None };
        let definition = GroupDefinition { ordering, max_deliveries: 3, ack_timeout_ms: 1000, ..GroupDefinition::default() };
        let events = store(40);
        let head = events.len() as u64;
        let matching: BTreeSet<u64> = events.iter().filter(|e| e.event_type() == "E").map(|e| e.position()).collect();
        let mut journal = vec![Record::Image(Box::new(Image::new("g", definition.clone(), 0))).encode()];
        let mut g = GroupState::from_image(&Image::new("g", definition.clone(), 0), Vec::new(), 0).expect("new");
        let mut now = 0u64;
        let mut held: Vec<Vec<u64>> = vec![Vec::new(); 3];
        // Positions whose ack was answered (and recorded in the journal).
        let mut acked: BTreeSet<u64> = BTreeSet::new();
        for op in ops {
            match op {
                Op::Read(n) => {
                    let from = g.read_position();
                    let to = (from + n).min(head);
                    let page = events.iter().filter(|e| e.position() > from && e.position() <= to && matching.contains(&e.position())).cloned().collect();
                    g.add_read(page, to);
                }
                Op::Poll { consumer, max } => {
                    let name = consumer_name(consumer);
                    for delivery in g.deliver(&name, max, now) {
                        let p = delivery.event.position();
                        prop_assert!(matching.contains(&p));
                        prop_assert!(!acked.contains(&p), "acked position {} delivered again", p);
                        if per_aggregate {
                            // Every lower event of its aggregate is acked or parked.
                            let aggregate = delivery.event.aggregate_id();
                            let parked: BTreeSet<u64> = g.parked_page(0, usize::MAX).into_iter().map(|(p, _)| p).collect();
                            for lower in events.iter().filter(|e| e.position() < p && e.aggregate_id() == aggregate && matching.contains(&e.position())) {
                                let q = lower.position();
                                prop_assert!(acked.contains(&q) || parked.contains(&q), "{} delivered before {} of {}", p, q, aggregate);
                            }
                        }
                        held[consumer].push(p);
                    }
                }
                Op::Ack { consumer, pick, count } => {
                    let list = &mut held[consumer];
                    if list.is_empty() { continue; }
                    let start = pick % list.len();
                    let chosen: Vec<u64> = list.drain(start..(start + count).min(list.len())).collect();
                    g.ack(&chosen, head).expect("a delivered event can always be acked");
                    journal.extend(g.take_records().iter().map(Record::encode));
                    acked.extend(chosen);
                }
                Op::Nack { consumer, pick, park } => {
                    let list = &mut held[consumer];
                    if list.is_empty() { continue; }
                    let p = list.remove(pick % list.len());
                    if acked.contains(&p) {
                        prop_assert!(g.nack(&[p], park, head).is_err());
                    } else {
                        g.nack(&[p], park, head).expect("a delivered, unacked event can be nacked");
                        journal.extend(g.take_records().iter().map(Record::encode));
                    }
                }
                Op::Tick(ms) => {
                    now += ms;
                    g.expire(now);
                }
                Op::Replay => {
                    let candidates = g.replay_candidates(None, 5).expect("lists");
                    let page = candidates.iter().map(|&p| events[(p - 1) as usize].clone()).collect();
                    g.replay(page);
                    journal.extend(g.take_records().iter().map(Record::encode));
                }
                Op::Restart { crash } => {
                    if crash {
                        // Deliveries and expiry parks not yet written are lost.
                        g.discard_records();
                    } else {
                        journal.extend(g.take_records().iter().map(Record::encode));
                    }
                    let memory = g.image("g", &definition);
                    let mut image = Image::replay(&journal).expect("the journal replays");
                    if !crash {
                        let mut settled = memory.clone();
                        settled.settle();
                        prop_assert_eq!(&image.acked, &settled.acked);
                        prop_assert_eq!(&image.parked.keys().collect::<Vec<_>>(), &settled.parked.keys().collect::<Vec<_>>());
                        prop_assert_eq!(&image.replaying.keys().collect::<Vec<_>>(), &settled.replaying.keys().collect::<Vec<_>>());
                        prop_assert_eq!(image.checkpoint, settled.checkpoint);
                    }
                    // Compaction writes the image back, as the registry does now and then.
                    journal = vec![Record::Image(Box::new(image.clone())).encode()];
                    image.settle();
                    let replaying = image.replaying.keys().map(|&p| events[(p - 1) as usize].clone()).collect();
                    g = GroupState::from_image(&image, replaying, head).expect("loads");
                }
            }
            g.check();
            // The checkpoint: everything at or below it is acked, parked or not matching,
            // or replayed and live.
            let parked: BTreeSet<u64> = g.parked_page(0, usize::MAX).into_iter().map(|(p, _)| p).collect();
            for p in 1..=g.checkpoint() {
                prop_assert!(!matching.contains(&p) || acked.contains(&p) || parked.contains(&p) || g.counts().pending > 0,
                    "position {} under the checkpoint {}", p, g.checkpoint());
            }
        }
        // Drain: a consumer that acks everything ends with every matching event acked or parked.
        let drainer = consumer_name(9);
        for _ in 0..200 {
            let from = g.read_position();
            let page = events.iter().filter(|e| e.position() > from && matching.contains(&e.position())).cloned().collect();
            g.add_read(page, head);
            now += 2000;
            let got = g.deliver(&drainer, 100, now);
            let ps: Vec<u64> = got.iter().map(|d| d.event.position()).collect();
            for &p in &ps { prop_assert!(!acked.contains(&p)); }
            g.ack(&ps, head).expect("ack");
            acked.extend(ps);
            if g.counts().pending == 0 { break; }
        }
        prop_assert_eq!(g.checkpoint(), head);
        let parked: BTreeSet<u64> = g.parked_page(0, usize::MAX).into_iter().map(|(p, _)| p).collect();
        for p in &matching {
            prop_assert!(acked.contains(p) || parked.contains(p), "{} never finished", p);
        }
        let _ = BTreeMap::<u64, u64>::new();
    }
}

fn consumer_name(i: usize) -> Arc<str> {
    Arc::from(format!("c{i}"))
}
