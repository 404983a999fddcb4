//! Criterion benchmarks of the embedded engine, in-process, durable (every commit fsynced
//! before it returns), with ~200-byte `event_data`.
//!
//! `cargo bench -p factstore-engine --bench engine` runs them all; the figures and the machine
//! they were taken on are in `docs/benchmarks.md`. Never run them while a build is running: an
//! fsync costs about ten times more then.
//!
//! - `append/batch_1000`: one writer appending 1000-event commits.
//! - `append/batch_1000_x4_writers`: four writers of 1000-event commits at once.
//! - `append/concurrent/N`: N tasks appending one event per commit, back to back (group commit).
//! - `read/all`: reading every event in position order, 10,000 per page.
//! - `read/aggregate_10000`: one aggregate of 10,000 events, interleaved with others.
//! - `open/N`: start-up of a store of N events (`FACTSTORE_BENCH_OPEN_EVENTS`, default 1,000,000).

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use factstore_core::{AggregateQuery, Commit, EventQuery, ExpectedVersion, NewEvent};
use factstore_engine::store::EmbeddedStore;
use factstore_engine::{Engine, EngineOptions};
use serde_json::json;

// As in the `factstore` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn payload(i: usize) -> serde_json::Value {
    // About 200 bytes of JSON.
    json!({"amount": i, "currency": "USD", "account": format!("ACC-{:06}", i % 1000),
           "description": "x".repeat(140)})
}

fn batch(n: usize, start: usize) -> Vec<NewEvent> {
    (0..n)
        .map(|i| NewEvent::new("Account", "MoneyDeposited", payload(start + i)))
        .collect()
}

fn fill(engine: &Engine, events: usize, aggregates: usize, per_commit: usize) {
    let mut written = 0;
    while written < events {
        let n = per_commit.min(events - written);
        let aggregate = format!("account:{}", written / per_commit % aggregates);
        let commit = Commit::single(&aggregate, ExpectedVersion::Any, batch(n, written))
            .prepare(engine.limits())
            .expect("valid");
        engine.commit_blocking(commit).expect("commit");
        written += n;
    }
}

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("append");
    group.measurement_time(Duration::from_secs(10)).sample_size(20);

    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(dir.path(), EngineOptions::default()).expect("open");
    group.throughput(Throughput::Elements(1000));
    group.bench_function("batch_1000", |b| {
        let events = batch(1000, 0);
        // Validation (`prepare`) is timed too: it is part of every append.
        b.iter_batched(
            || events.clone(),
            |events| {
                let commit = Commit::single("account:batch", ExpectedVersion::Any, events)
                    .prepare(engine.limits())
                    .expect("valid");
                engine.commit_blocking(commit).expect("commit")
            },
            criterion::BatchSize::SmallInput,
        );
    });
    drop(engine);

    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    let store = Arc::new(EmbeddedStore::new(Arc::new(
        Engine::open(dir.path(), EngineOptions::default()).expect("open"),
    )));
    // Several writers of 1000-event commits: their commits share groups, and fsyncs.
    group.throughput(Throughput::Elements(4 * 5 * 1000));
    group.bench_function("batch_1000_x4_writers", |b| {
        b.to_async(&runtime).iter(|| {
            let store = store.clone();
            async move {
                let tasks: Vec<_> = (0..4)
                    .map(|w| {
                        let store = store.clone();
                        tokio::spawn(async move {
                            use factstore_core::EventStore;
                            let events = batch(1000, w);
                            let aggregate = format!("account:b{w}");
                            for _ in 0..5 {
                                let commit = Commit::single(&aggregate, ExpectedVersion::Any, events.clone());
                                store.commit(commit).await.expect("commit");
                            }
                        })
                    })
                    .collect();
                for task in tasks {
                    task.await.expect("task");
                }
            }
        });
    });
    for writers in [16usize, 64] {
        group.throughput(Throughput::Elements(writers as u64 * 100));
        group.bench_with_input(
            BenchmarkId::new("concurrent", writers),
            &writers,
            |b, &writers| {
                b.to_async(&runtime).iter(|| {
                    let store = store.clone();
                    async move {
                        let tasks: Vec<_> = (0..writers)
                            .map(|w| {
                                let store = store.clone();
                                tokio::spawn(async move {
                                    use factstore_core::EventStore;
                                    // Built once: the benchmark measures the store, not serde_json.
                                    let events = batch(1, w);
                                    let aggregate = format!("account:{w}");
                                    for _ in 0..100 {
                                        let commit =
                                            Commit::single(&aggregate, ExpectedVersion::Any, events.clone());
                                        store.commit(commit).await.expect("commit");
                                    }
                                })
                            })
                            .collect();
                        for task in tasks {
                            task.await.expect("task");
                        }
                    }
                });
            },
        );
    }
    group.finish();
}

fn read(c: &mut Criterion) {
    let mut group = c.benchmark_group("read");
    group.measurement_time(Duration::from_secs(10)).sample_size(20);
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(dir.path(), EngineOptions::default()).expect("open");
    const TOTAL: usize = 1_000_000;
    fill(&engine, TOTAL, 100, 1000);
    // One aggregate of 10,000 events interleaved with 10 others, 100 events per commit.
    let mut written = 0;
    while written < 110_000 {
        let aggregate = if (written / 100) % 11 == 0 {
            "account:big".to_owned()
        } else {
            format!("account:o{}", written % 10)
        };
        let commit = Commit::single(&aggregate, ExpectedVersion::Any, batch(100, written))
            .prepare(engine.limits())
            .expect("valid");
        engine.commit_blocking(commit).expect("commit");
        written += 100;
    }
    let head = engine.head().position;
    group.throughput(Throughput::Elements(head));
    group.bench_function("all", |b| {
        b.iter(|| {
            let mut after = 0;
            let mut count = 0;
            loop {
                let page = engine.read_events(&EventQuery::all(after, 10_000)).expect("read");
                count += page.events.len();
                if page.events.is_empty() {
                    break;
                }
                after = page.next_after_position;
            }
            assert_eq!(count as u64, head);
        });
    });
    group.throughput(Throughput::Elements(10_000));
    group.bench_function("aggregate_10000", |b| {
        b.iter(|| {
            let page = engine
                .read_aggregate(&AggregateQuery::forward("account:big", 10_000))
                .expect("read");
            assert_eq!(black_box(page.events.len()), 10_000);
        });
    });
    group.finish();
}

fn open(c: &mut Criterion) {
    let events: usize = std::env::var("FACTSTORE_BENCH_OPEN_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let mut group = c.benchmark_group("open");
    group.sample_size(10).measurement_time(Duration::from_secs(20));
    let dir = tempfile::tempdir().expect("tempdir");
    build_store(dir.path(), events);
    group.bench_function(BenchmarkId::from_parameter(events), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let started = Instant::now();
                let engine = Engine::open(dir.path(), EngineOptions::default()).expect("open");
                total += started.elapsed();
                assert_eq!(engine.head().position, events as u64);
                drop(engine);
            }
            total
        });
    });
    group.finish();
}

fn build_store(dir: &Path, events: usize) {
    let engine = Engine::open(dir, EngineOptions::default()).expect("open");
    fill(&engine, events, 10_000, 1000);
}

criterion_group!(benches, append, read, open);
criterion_main!(benches);
