//! A real crash test: the `factstore` binary under concurrent appends over HTTP, killed with
//! SIGKILL while appends are in flight and restarted, again and again on the same data folder,
//! on the embedded engine and on PostgreSQL.
//!
//! After every restart: every acknowledged event is present exactly once, at the position it
//! was acknowledged with; positions are 1..=head with no gap; each aggregate's versions are
//! dense; a batch is never half there. On the embedded engine `factstore verify` must find no
//! problem at the end.
//!
//! The test cannot pass empty: every cycle must get acknowledgements of its own before the
//! kill, and the kill must land while appends are in flight (answers that never came). A
//! writer that meets anything but `201 Created` before the kill, or a failed connection before
//! it, fails the test; so does a writer that panics.
//!
//! `FACTSTORE_CRASH_CYCLES` sets the number of cycles (CI runs 20; run thousands locally).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use uuid::Uuid;

mod common;
use common::ServeProcess;
use common::kill::KillWindow;
use common::pg::Backend;

/// Every batch sent (acknowledged or not, to check atomicity) and every acknowledged event with
/// the position the server gave it.
#[derive(Default)]
struct Ledger {
    acked: HashMap<Uuid, u64>,
    batches: Vec<Vec<Uuid>>,
}

/// Appends batches of 1–3 events until the server is killed.
async fn writer(
    client: reqwest::Client,
    url: String,
    worker: usize,
    ledger: Arc<Mutex<Ledger>>,
    window: Arc<KillWindow>,
) -> Result<(), String> {
    let mut rng = StdRng::from_os_rng();
    let started = Instant::now();
    loop {
        window.check_deadline(started)?;
        let aggregate = format!("crash:{worker}:{}", rng.random_range(0..4));
        let size = rng.random_range(1..=3);
        let ids: Vec<Uuid> = (0..size).map(|_| Uuid::now_v7()).collect();
        let events: Vec<Value> = ids
            .iter()
            .map(|id| {
                json!({"event_id": id, "aggregate_type": "Crash", "event_type": "Tick",
                       "event_data": {"worker": worker, "pad": "x".repeat(150)}})
            })
            .collect();
        ledger.lock().expect("lock").batches.push(ids.clone());
        let request = client
            .post(format!("{url}/v1/aggregates/{aggregate}/events"))
            .json(&json!({"events": events}));
        let Some(body) = window
            .send(request, 201, &format!("writer {worker}: an append"))
            .await?
        else {
            return Ok(());
        };
        let body: Value = serde_json::from_slice(&body)
            .map_err(|e| format!("writer {worker}: a 201 whose body is not JSON: {e}"))?;
        let mut ledger = ledger.lock().expect("lock");
        for event in body["events"].as_array().ok_or("a 201 without events")? {
            let id: Uuid = event["event_id"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .ok_or("an acknowledged event without an id")?;
            let position = event["position"]
                .as_u64()
                .ok_or("an acknowledged event without a position")?;
            ledger.acked.insert(id, position);
        }
        window.acked();
    }
}

async fn read_all(client: &reqwest::Client, url: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after = 0u64;
    loop {
        let page: Value = client
            .get(format!("{url}/v1/events?after_position={after}&limit=10000"))
            .send()
            .await
            .expect("read")
            .json()
            .await
            .expect("json");
        let events = page["events"].as_array().expect("events").clone();
        let next = page["next_after_position"].as_u64().expect("next");
        let done = events.is_empty() || next >= page["head_position"].as_u64().expect("head");
        all.extend(events);
        if done {
            return all;
        }
        after = next;
    }
}

fn check(all: &[Value], ledger: &Ledger, cycle: usize) {
    let mut positions_by_id = HashMap::new();
    let mut versions: HashMap<String, u64> = HashMap::new();
    for (i, event) in all.iter().enumerate() {
        let position = event["position"].as_u64().expect("position");
        assert_eq!(position, i as u64 + 1, "cycle {cycle}: positions must be dense");
        let id: Uuid = event["event_id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("id");
        assert!(
            positions_by_id.insert(id, position).is_none(),
            "cycle {cycle}: event {id} stored twice"
        );
        let aggregate = event["aggregate_id"].as_str().expect("aggregate").to_owned();
        let version = versions.entry(aggregate.clone()).or_insert(0);
        *version += 1;
        assert_eq!(
            event["version"].as_u64(),
            Some(*version),
            "cycle {cycle}: versions of {aggregate} must be dense"
        );
    }
    for (id, position) in &ledger.acked {
        assert_eq!(
            positions_by_id.get(id),
            Some(position),
            "cycle {cycle}: acknowledged event {id} lost or moved"
        );
    }
    for batch in &ledger.batches {
        let present = batch
            .iter()
            .filter(|id| positions_by_id.contains_key(*id))
            .count();
        assert!(
            present == 0 || present == batch.len(),
            "cycle {cycle}: a batch is half there: {batch:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_kill_9() {
    survive_kill_9(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_on_postgres_survive_kill_9() {
    if let Some(backend) = Backend::postgres("the crash test on PostgreSQL").await {
        survive_kill_9(backend).await;
    }
}

async fn survive_kill_9(backend: Backend) {
    let cycles: usize = std::env::var("FACTSTORE_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().expect("tempdir");
    let args = backend.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut rng = rand::rng();
    for number in 0..cycles {
        let server = ServeProcess::start(dir.path(), &args);
        let before = read_all(&client, &server.url).await;
        check(&before, &ledger.lock().expect("lock"), number);
        let window = Arc::new(KillWindow::default());
        let writers: Vec<_> = (0..8)
            .map(|worker| {
                tokio::spawn(writer(
                    client.clone(),
                    server.url.clone(),
                    worker,
                    ledger.clone(),
                    window.clone(),
                ))
            })
            .collect();
        // The kill comes at a random moment after this cycle's first acknowledgement.
        window.first_ack(&writers, number).await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
        window.kill();
        server.kill();
        window.join(writers, number).await;
    }
    let server = ServeProcess::start(dir.path(), &args);
    let all = read_all(&client, &server.url).await;
    check(&all, &ledger.lock().expect("lock"), cycles);
    let acked = ledger.lock().expect("lock").acked.len();
    assert!(
        acked >= cycles,
        "{acked} events acknowledged over {cycles} cycles"
    );
    server.kill();
    backend.finish(dir.path()).await;
}
