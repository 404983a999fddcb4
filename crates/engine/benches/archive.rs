//! Criterion benchmarks of reading archived events next to hot ones.
//!
//! `cargo bench -p factstore-engine --bench archive` (set `FACTSTORE_BENCH_ARCHIVE_EVENTS`,
//! default 200,000 events of ~200 bytes). Two stores with the same events, in 4 MiB segments:
//! one hot, one with every sealed segment archived to a `file://` cold store in a temporary
//! folder (so the figures measure decompression, checking and caching, not a network).
//!
//! - `read_archive/all/hot`: every event in position order, 10,000 per page, from local segments.
//! - `read_archive/all/archived_cached`: the same from archived segments already in the cache.
//! - `read_archive/all/archived_first_read`: the same with the cache emptied before each read, so
//!   each segment is downloaded, decompressed, checked and written to the cache on the way.
//! - `read_archive/aggregate/{hot,archived_cached}`: one aggregate's events by version.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use factstore_core::{AggregateQuery, Commit, EventQuery, ExpectedVersion, NewEvent, Timestamp};
use factstore_engine::archive::{ArchiveOptions, ObjectColdStore};
use factstore_engine::{Engine, EngineOptions};
use serde_json::json;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SEGMENT_BYTES: u64 = 4 << 20;

fn events_to_write() -> usize {
    std::env::var("FACTSTORE_BENCH_ARCHIVE_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000)
}

fn fill(engine: &Engine, events: usize) {
    let mut written = 0;
    while written < events {
        let n = 1000.min(events - written);
        let batch = (0..n)
            .map(|i| {
                NewEvent::new(
                    "Account",
                    "MoneyDeposited",
                    json!({"amount": written + i, "currency": "USD", "description": "x".repeat(140)}),
                )
            })
            .collect();
        let commit = Commit::single(
            &format!("account:{}", written / 1000 % 50),
            ExpectedVersion::Any,
            batch,
        )
        .prepare(engine.limits())
        .expect("valid");
        engine.commit_blocking(commit).expect("commit");
        written += n;
    }
}

fn open(dir: &Path, cold: Option<&Path>) -> Engine {
    let archive = cold.map(|cold| {
        let store = ObjectColdStore::from_url(&format!("file://{}", cold.display())).expect("cold store");
        ArchiveOptions::new(Arc::new(store))
    });
    let options = EngineOptions {
        segment_bytes_max: SEGMENT_BYTES,
        memtable_events_max: 16 * 1024,
        archive,
        ..EngineOptions::default()
    };
    Engine::open(dir, options).expect("open")
}

fn settle(engine: &Engine) {
    while !engine.shared().index_quiet() {
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn read_all(engine: &Engine) -> usize {
    let mut after = 0;
    let mut count = 0;
    loop {
        let page = engine.read_events(&EventQuery::all(after, 10_000)).expect("read");
        if page.events.is_empty() {
            return count;
        }
        count += page.events.len();
        after = page.next_after_position;
        black_box(page);
    }
}

fn read_archive(c: &mut Criterion) {
    let events = events_to_write();
    let hot_dir = tempfile::tempdir().expect("tempdir");
    let archived_dir = tempfile::tempdir().expect("tempdir");
    let cold_dir = tempfile::tempdir().expect("tempdir");
    let hot = open(hot_dir.path(), None);
    let archived = open(archived_dir.path(), Some(cold_dir.path()));
    fill(&hot, events);
    fill(&archived, events);
    settle(&hot);
    settle(&archived);
    std::thread::sleep(Duration::from_millis(2));
    let outcome = archived.archive(Timestamp::now(), |_| {}).expect("archive");
    eprintln!(
        "archived {} of {events} events ({} bytes) in {} segments",
        outcome.archived_events,
        outcome.archived_bytes,
        archived.archive_state().map_or(0, |a| a.records().len())
    );
    assert!(
        outcome.archived_events * 2 > events as u64,
        "most events must be archived for the comparison to mean anything; raise \
         FACTSTORE_BENCH_ARCHIVE_EVENTS"
    );
    let cache = archived.archive_state().expect("configured").cache().clone();

    let mut group = c.benchmark_group("read_archive");
    group
        .measurement_time(Duration::from_secs(10))
        .sample_size(10)
        .throughput(Throughput::Elements(events as u64));
    group.bench_function("all/hot", |b| b.iter(|| assert_eq!(read_all(&hot), events)));
    read_all(&archived);
    group.bench_function("all/archived_cached", |b| {
        b.iter(|| assert_eq!(read_all(&archived), events))
    });
    group.bench_function("all/archived_first_read", |b| {
        b.iter_batched(
            || cache.clear(),
            |()| assert_eq!(read_all(&archived), events),
            BatchSize::PerIteration,
        )
    });
    let aggregate = AggregateQuery::forward("account:7", 10_000);
    let per_aggregate = hot.read_aggregate(&aggregate).expect("aggregate").events.len();
    group.throughput(Throughput::Elements(per_aggregate as u64));
    group.bench_function("aggregate/hot", |b| {
        b.iter(|| black_box(hot.read_aggregate(&aggregate).expect("aggregate")))
    });
    archived.read_aggregate(&aggregate).expect("warm the cache");
    group.bench_function("aggregate/archived_cached", |b| {
        b.iter(|| black_box(archived.read_aggregate(&aggregate).expect("aggregate")))
    });
    group.finish();
}

criterion_group!(benches, read_archive);
criterion_main!(benches);
