//! The engine keeps every committed event across restarts, whether the tail was in the
//! memtable or already in run files, and start-up replays only the tail.

use std::sync::Arc;

use factstore_core::{AggregateQuery, Commit, EventQuery, ExpectedVersion, NewEvent};
use factstore_engine::{Engine, EngineOptions};
use serde_json::json;

fn options(memtable_events_max: usize) -> EngineOptions {
    EngineOptions {
        memtable_events_max,
        segment_bytes_max: 8 << 10,
        ..EngineOptions::default()
    }
}

fn append(engine: &Engine, aggregate: &str, n: usize) {
    let events = (0..n)
        .map(|i| NewEvent::new("Account", "Deposited", json!({"amount": i})))
        .collect();
    let prepared = Commit::single(aggregate, ExpectedVersion::Any, events)
        .prepare(engine.limits())
        .expect("valid");
    engine.commit_blocking(prepared).expect("commit");
}

#[test]
fn events_survive_restarts_across_flushes_and_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut expected = Vec::new();
    for round in 0..4 {
        let engine = Engine::open(dir.path(), options(100)).expect("open");
        for i in 0..30 {
            append(&engine, &format!("account:{}", i % 7), 1 + (i % 5));
        }
        let all = engine.read_events(&EventQuery::all(0, 100_000)).expect("read");
        assert_eq!(
            all.events.len(),
            expected.len() + (0..30).map(|i| 1 + (i % 5)).sum::<usize>()
        );
        for (i, event) in all.events.iter().enumerate() {
            assert_eq!(event.position(), i as u64 + 1, "round {round}");
        }
        for (old, new) in expected.iter().zip(&all.events) {
            assert_eq!(old, new, "an event changed across a restart");
        }
        expected = all.events;
        engine.close();
    }
    let engine = Engine::open(dir.path(), options(100)).expect("open");
    for i in 0..7 {
        let id = format!("account:{i}");
        let page = engine
            .read_aggregate(&AggregateQuery::forward(&id, 10_000))
            .expect("aggregate");
        let mine: Vec<_> = expected
            .iter()
            .filter(|e| e.aggregate_id() == id)
            .cloned()
            .collect();
        assert_eq!(page.events, mine);
        assert_eq!(page.version, mine.len() as u64);
        for (v, event) in page.events.iter().enumerate() {
            assert_eq!(event.version(), v as u64 + 1);
        }
    }
    let by_id = engine.get_event(expected[123].event_id()).expect("get");
    assert_eq!(by_id, expected[123]);
    let runs = std::fs::read_dir(dir.path().join("index"))
        .expect("index dir")
        .count();
    assert!(runs > 1, "flushes wrote run files");
    let segments = std::fs::read_dir(dir.path().join("log"))
        .expect("log dir")
        .count();
    assert!(segments > 1, "segments rotated");
    let _ = Arc::new(engine);
}
