#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use factstore_core::{AggregateQuery, Commit, EventQuery, ExpectedVersion, NewEvent};
use factstore_engine::{Engine, EngineOptions};
use serde_json::json;
use std::time::Instant;
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(&args[2]);
    let t = Instant::now();
    let engine = Engine::open(&dir, EngineOptions::default()).unwrap();
    println!("open {:?} head {}", t.elapsed(), engine.head().position);
    if args[1] == "write" {
        let n: usize = args[3].parse().unwrap();
        let events: Vec<NewEvent> = (0..1000).map(|i| NewEvent::new("Account", "MoneyDeposited", json!({"amount": i, "currency": "USD", "account": format!("ACC-{:06}", i % 1000), "description": "x".repeat(140)}))).collect();
        let t0 = Instant::now();
        for b in 0..n / 1000 {
            let agg = if b % 11 == 0 {
                "account:big".to_string()
            } else {
                format!("account:{}", b % 97)
            };
            let commit = Commit::single(&agg, ExpectedVersion::Any, events.clone())
                .prepare(engine.limits())
                .unwrap();
            engine.commit_blocking(commit).unwrap();
        }
        let total = t0.elapsed().as_secs_f64();
        println!("wrote {} in {:.3}s => {:.0} ev/s", n, total, n as f64 / total);
    } else if args[1] == "conc" {
        let writers: usize = args[3].parse().unwrap();
        let engine = std::sync::Arc::new(engine);
        let t0 = Instant::now();
        let threads: Vec<_> = (0..writers)
            .map(|w| {
                let engine = engine.clone();
                std::thread::spawn(move || {
                    let ev = vec![NewEvent::new(
                        "Account",
                        "MoneyDeposited",
                        json!({"amount": w, "currency": "USD", "description": "x".repeat(150)}),
                    )];
                    for _ in 0..(20000 / writers) {
                        let commit =
                            Commit::single(&format!("account:{w}"), ExpectedVersion::Any, ev.clone())
                                .prepare(engine.limits())
                                .unwrap();
                        engine.commit_blocking(commit).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let total = t0.elapsed().as_secs_f64();
        println!("{} writers: {:.0} ev/s", writers, 20000.0 / total);
    } else if args[1] == "tokio" {
        let writers: usize = args[3].parse().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let store = std::sync::Arc::new(factstore_engine::store::EmbeddedStore::new(std::sync::Arc::new(
            engine,
        )));
        let t0 = Instant::now();
        rt.block_on(async {
            let tasks: Vec<_> = (0..writers)
                .map(|w| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        use factstore_core::EventStore;
                        let ev = vec![NewEvent::new(
                            "Account",
                            "MoneyDeposited",
                            json!({"amount": w, "currency": "USD", "description": "x".repeat(150)}),
                        )];
                        let agg = format!("account:{w}");
                        for _ in 0..(40000 / writers) {
                            store
                                .commit(Commit::single(&agg, ExpectedVersion::Any, ev.clone()))
                                .await
                                .unwrap();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        });
        let total = t0.elapsed().as_secs_f64();
        println!("{} tokio writers: {:.0} ev/s", writers, 40000.0 / total);
    } else if args[1] == "batches" {
        let writers: usize = args[3].parse().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let store = std::sync::Arc::new(factstore_engine::store::EmbeddedStore::new(std::sync::Arc::new(
            engine,
        )));
        let events: Vec<NewEvent> = (0..1000).map(|i| NewEvent::new("Account", "MoneyDeposited", json!({"amount": i, "currency": "USD", "account": format!("ACC-{:06}", i % 1000), "description": "x".repeat(140)}))).collect();
        let t0 = Instant::now();
        rt.block_on(async {
            let tasks: Vec<_> = (0..writers)
                .map(|w| {
                    let store = store.clone();
                    let events = events.clone();
                    tokio::spawn(async move {
                        use factstore_core::EventStore;
                        let agg = format!("account:{w}");
                        for _ in 0..(800 / writers) {
                            store
                                .commit(Commit::single(&agg, ExpectedVersion::Any, events.clone()))
                                .await
                                .unwrap();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        });
        let total = t0.elapsed().as_secs_f64();
        println!("{} batch writers: {:.0} ev/s", writers, 800000.0 / total);
    } else if args[1] == "mem" {
        use factstore_engine::index::memtable::MemTable;
        use factstore_engine::log::format::Loc;
        let ids: Vec<uuid::Uuid> = (0..262144).map(|_| uuid::Uuid::now_v7()).collect();
        for cap in [0usize, 262144] {
            let mut m = MemTable::with_capacity(1, Loc(0), cap);
            let t = Instant::now();
            for (i, id) in ids.iter().enumerate() {
                let f = factstore_core::EventFields {
                    position: i as u64 + 1,
                    version: i as u64 + 1,
                    event_id: *id,
                    created_at: factstore_core::Timestamp::from_micros(i as i64),
                    recorded_at: factstore_core::Timestamp::from_micros(i as i64),
                    event_version: 1,
                    aggregate_id: "account:big",
                    aggregate_type: "Account",
                    event_type: "MoneyDeposited",
                    created_by: None,
                    correlation_id: None,
                    causation_id: None,
                    event_data: "{}",
                    metadata: None,
                };
                m.insert(&f, Loc(i as u64));
            }
            println!("cap {} insert {:?} per event", cap, t.elapsed() / 262144);
        }
    } else if args[1] == "agg" {
        let t = Instant::now();
        for _ in 0..200 {
            let page = engine
                .read_aggregate(&AggregateQuery::forward("account:big", 10000))
                .unwrap();
            assert_eq!(page.events.len(), 10000);
        }
        println!("aggregate avg {:?}", t.elapsed() / 200);
    } else {
        for _ in 0..3 {
            let t = Instant::now();
            let mut after = 0;
            let mut n = 0;
            loop {
                let page = engine.read_events(&EventQuery::all(after, 10000)).unwrap();
                if page.events.is_empty() {
                    break;
                };
                n += page.events.len();
                after = page.next_after_position;
            }
            let el = t.elapsed().as_secs_f64();
            println!("read all {} events in {:.3}s => {:.0} ev/s", n, el, n as f64 / el);
            let t = Instant::now();
            let page = engine
                .read_aggregate(&AggregateQuery::forward("account:big", 10000))
                .unwrap();
            println!("aggregate page of {} in {:?}", page.events.len(), t.elapsed());
            let t = Instant::now();
            let mut out = Vec::new();
            for e in &page.events {
                e.write_json(&mut out);
            }
            println!(
                "render json of {} in {:?} ({} bytes)",
                page.events.len(),
                t.elapsed(),
                out.len()
            );
        }
    }
}
