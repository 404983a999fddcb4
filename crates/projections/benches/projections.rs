//! Criterion benchmarks of projections over the embedded engine, in-process, with ~200-byte
//! `event_data`, and the projection logs in journal files beside the store (every batch
//! fsynced), as `factstore serve` runs them.
//!
//! `cargo bench -p factstore-projections --bench projections` runs them all. Never run them
//! while a build is running.
//!
//! - `catch_up/aggregate_id/N`: a new projection keyed by `aggregate_id` (a balance and a
//!   counter per account; 10,000 accounts) folds the N events of the store, from PUT until its
//!   position is the head. N is `FACTSTORE_BENCH_PROJECTION_EVENTS` (default 200,000).
//! - `catch_up/all/N`: the same with one state for everything (`key: "all"`).
//! - `rebuild/N`: `POST rebuild` of a caught-up aggregate projection, until the new generation
//!   has swapped in. For a rebuild of a million events:
//!   `FACTSTORE_BENCH_PROJECTION_EVENTS=1000000 cargo bench -p factstore-projections --bench projections -- rebuild`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use factstore_core::{AggregateAppend, Commit, EventStore, ExpectedVersion, NewEvent};
use factstore_engine::io::StdFileSystem;
use factstore_engine::store::EmbeddedStore;
use factstore_engine::{Engine, EngineOptions};
use factstore_projections::definition::ProjectionDefinition;
use factstore_projections::{JournalStorage, Projections, ProjectionsOptions, Status};
use serde_json::json;

// As in the `factstore` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ACCOUNTS: usize = 10_000;

fn events_wanted() -> usize {
    std::env::var("FACTSTORE_BENCH_PROJECTION_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000)
}

fn payload(i: usize) -> serde_json::Value {
    // About 200 bytes of JSON.
    json!({"amount": i % 1000, "currency": "USD", "account": format!("ACC-{:06}", i % ACCOUNTS),
           "description": "x".repeat(140)})
}

/// `events` events in commits of 100 accounts × 10 events.
fn fill(engine: &Engine, events: usize) {
    let mut written = 0;
    while written < events {
        let appends = (0..100)
            .map(|a| AggregateAppend {
                aggregate_id: format!("account:{}", (written / 10 + a) % ACCOUNTS),
                expected_version: ExpectedVersion::Any,
                events: (0..10)
                    .map(|i| NewEvent::new("Account", "MoneyDeposited", payload(written + a * 10 + i)))
                    .collect(),
            })
            .collect();
        let commit = Commit {
            appends,
            condition: None,
        }
        .prepare(engine.limits())
        .expect("valid");
        engine.commit_blocking(commit).expect("commit");
        written += 1000;
    }
}

fn definition(key: &str) -> ProjectionDefinition {
    serde_json::from_value(json!({
        "filter": {"event_types": ["MoneyDeposited"]},
        "key": key,
        "initial": {"balance": 0, "deposits": 0},
        "on": {"MoneyDeposited": [
            {"op": "add", "path": "/balance", "from": "/event_data/amount"},
            {"op": "inc", "path": "/deposits"}
        ]}
    }))
    .expect("valid")
}

async fn wait(projections: &Projections, name: &str, head: u64, rebuilt: bool) {
    loop {
        let status = projections.status(name).expect("exists");
        assert_ne!(status.status, Status::Failed, "{status:?}");
        if status.position >= head && (!rebuilt || status.status == Status::Running) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn projections(c: &mut Criterion) {
    let events = events_wanted();
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Arc::new(Engine::open(dir.path(), EngineOptions::default()).expect("open"));
    fill(&engine, events);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let store: Arc<dyn EventStore> = Arc::new(EmbeddedStore::new(engine.clone()));
    let head = *store.watch_head().borrow();
    let storage =
        JournalStorage::open(Arc::new(StdFileSystem), &dir.path().join("projections")).expect("storage");
    let projections = runtime
        .block_on(Projections::open(
            store.clone(),
            Arc::new(storage),
            ProjectionsOptions::default(),
        ))
        .expect("open");
    let counter = AtomicUsize::new(0);

    let mut group = c.benchmark_group("catch_up");
    group.sample_size(10).measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(head));
    for key in ["aggregate_id", "all"] {
        group.bench_function(BenchmarkId::new(key, head), |b| {
            b.iter_custom(|iterations| {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    let name = format!("p{}", counter.fetch_add(1, Ordering::Relaxed));
                    total += runtime.block_on(async {
                        let start = Instant::now();
                        projections.put(&name, definition(key)).await.expect("put");
                        wait(&projections, &name, head, false).await;
                        let took = start.elapsed();
                        projections.delete(&name).await.expect("delete");
                        took
                    });
                }
                total
            });
        });
    }
    group.finish();

    let mut group = c.benchmark_group("rebuild");
    group.sample_size(10).measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(head));
    runtime.block_on(async {
        projections
            .put("rebuilt", definition("aggregate_id"))
            .await
            .expect("put");
        wait(&projections, "rebuilt", head, false).await;
    });
    group.bench_function(BenchmarkId::from_parameter(head), |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                total += runtime.block_on(async {
                    let start = Instant::now();
                    projections.rebuild("rebuilt").await.expect("rebuild");
                    wait(&projections, "rebuilt", head, true).await;
                    start.elapsed()
                });
            }
            total
        });
    });
    group.finish();
    runtime.block_on(projections.shutdown());
}

criterion_group!(benches, projections);
criterion_main!(benches);
