//! Persistent subscriptions against the real binary, killed with SIGKILL while consumers poll
//! and ack and writers append, then restarted on the same data folder, several times.
//!
//! - No event whose ack was acknowledged is delivered again after a restart.
//! - With `per_aggregate` ordering, within each run of the server an aggregate's events are
//!   received in position (so version) order: a later one never comes before an earlier one
//!   is acked.
//! - At the end every event has been acked at least once, the checkpoint is the head and
//!   nothing is parked.
//!
//! Every cycle gets answered appends and acks of its own, and its kill lands while requests
//! are in flight; an unexpected answer or a failure before the kill fails the test.
//!
//! `FACTSTORE_SUBSCRIPTION_CRASH_CYCLES` sets the number of kills (default 3).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

mod common;
use common::ServeProcess;
use common::kill::{CYCLE_DEADLINE, KillWindow};
use common::pg::Backend;

#[derive(Default)]
struct Ledger {
    /// Positions whose ack was answered 204.
    acked: BTreeSet<u64>,
    /// Positions an ack was sent for (maybe unanswered: the server was killed meanwhile; it
    /// may or may not have made it durable).
    ack_sent: BTreeSet<u64>,
    /// Deliveries of the current run, in the order consumers received them:
    /// (aggregate, position).
    received: Vec<(String, u64)>,
    /// Deliveries of an acknowledged-acked position after a restart.
    redelivered_after_ack: Vec<u64>,
}

async fn writer(
    client: reqwest::Client,
    url: String,
    worker: usize,
    window: Arc<KillWindow>,
) -> Result<(), String> {
    let mut rng = StdRng::from_os_rng();
    let started = Instant::now();
    loop {
        window.check_deadline(started)?;
        let aggregate = format!("sub:{worker}:{}", rng.random_range(0..5));
        let events: Vec<Value> = (0..rng.random_range(1..=4))
            .map(|_| json!({"aggregate_type": "T", "event_type": "Tick", "event_data": {"w": worker}}))
            .collect();
        let request = client
            .post(format!("{url}/v1/aggregates/{aggregate}/events"))
            .json(&json!({ "events": events }));
        let Some(_) = window
            .send(request, 201, &format!("writer {worker}: an append"))
            .await?
        else {
            return Ok(());
        };
        window.acked();
    }
}

/// Polls and acks until `stop`, or until the server is killed. Any answer but a delivery
/// (200) to a poll and 204 to an ack fails the test.
async fn consumer(
    client: reqwest::Client,
    url: String,
    name: String,
    ledger: Arc<Mutex<Ledger>>,
    window: Arc<KillWindow>,
    stop: Instant,
) -> Result<(), String> {
    while Instant::now() < stop {
        let request = client
            .post(format!("{url}/v1/subscriptions/bus/poll"))
            .json(&json!({"consumer": name, "max": 50, "wait_ms": 200}));
        let Some(body) = window.send(request, 200, &format!("{name}: a poll")).await? else {
            return Ok(());
        };
        let body: Value = serde_json::from_slice(&body)
            .map_err(|e| format!("{name}: a poll answer that is not JSON: {e}"))?;
        let events = body["events"]
            .as_array()
            .ok_or_else(|| format!("{name}: a poll answer without events: {body}"))?;
        let mut positions = Vec::new();
        {
            let mut ledger = ledger.lock().expect("lock");
            for event in events {
                let position = event["position"].as_u64().expect("position");
                let aggregate = event["aggregate_id"].as_str().expect("aggregate").to_owned();
                if ledger.acked.contains(&position) {
                    ledger.redelivered_after_ack.push(position);
                }
                ledger.received.push((aggregate, position));
                positions.push(position);
            }
        }
        if positions.is_empty() {
            continue;
        }
        ledger
            .lock()
            .expect("lock")
            .ack_sent
            .extend(positions.iter().copied());
        let request = client
            .post(format!("{url}/v1/subscriptions/bus/ack"))
            .json(&json!({ "positions": positions }));
        let Some(_) = window.send(request, 204, &format!("{name}: an ack")).await? else {
            return Ok(());
        };
        ledger.lock().expect("lock").acked.extend(positions);
    }
    Ok(())
}

/// Per aggregate, the positions received in one run never go down.
fn check_order(received: &[(String, u64)]) {
    let mut last: HashMap<&str, u64> = HashMap::new();
    for (aggregate, position) in received {
        let previous = last.insert(aggregate, *position).unwrap_or(0);
        assert!(
            *position >= previous,
            "aggregate {aggregate}: position {position} received after {previous}"
        );
    }
}

async fn head(client: &reqwest::Client, url: &str) -> u64 {
    let body: Value = client
        .get(format!("{url}/v1/head"))
        .send()
        .await
        .expect("head")
        .json()
        .await
        .expect("json");
    body["position"].as_u64().expect("position")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acked_events_are_never_delivered_again_across_kill_9() {
    never_again_across_kill_9(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acked_events_on_postgres_are_never_delivered_again_across_kill_9() {
    if let Some(backend) = Backend::postgres("the subscription crash test on PostgreSQL").await {
        never_again_across_kill_9(backend).await;
    }
}

async fn never_again_across_kill_9(backend: Backend) {
    let cycles: usize = std::env::var("FACTSTORE_SUBSCRIPTION_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().expect("tempdir");
    let client = reqwest::Client::new();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let args = backend.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut server = ServeProcess::start(dir.path(), &args);
    backend.ready(&server.url).await;
    let created = client
        .put(format!("{}/v1/subscriptions/bus", server.url))
        .json(&json!({"ordering": "per_aggregate", "ack_timeout_ms": 5000}))
        .send()
        .await
        .expect("create");
    assert_eq!(created.status().as_u16(), 201);

    for cycle in 0..cycles {
        let window = Arc::new(KillWindow::default());
        let acked_before = ledger.lock().expect("lock").acked.len();
        let stop = Instant::now() + CYCLE_DEADLINE;
        let mut tasks = Vec::new();
        for worker in 0..3 {
            tasks.push(tokio::spawn(writer(
                client.clone(),
                server.url.clone(),
                worker,
                window.clone(),
            )));
        }
        for c in 0..4 {
            tasks.push(tokio::spawn(consumer(
                client.clone(),
                server.url.clone(),
                format!("c{c}"),
                ledger.clone(),
                window.clone(),
                stop,
            )));
        }
        window.first_ack(&tasks, cycle).await;
        tokio::time::sleep(Duration::from_millis(rand::rng().random_range(600..1500))).await;
        window.kill();
        server.kill();
        window.join(tasks, cycle).await;
        {
            let mut ledger = ledger.lock().expect("lock");
            assert!(
                ledger.acked.len() > acked_before,
                "cycle {cycle}: no ack was answered before the kill"
            );
            check_order(&ledger.received);
            ledger.received.clear();
        }
        server = ServeProcess::start(dir.path(), &args);
        backend.ready(&server.url).await;
    }

    // Consume the rest on a server that is not killed.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stop = Instant::now() + Duration::from_millis(500);
        // Never killed: any failure fails the test.
        let window = Arc::new(KillWindow::default());
        let mut tasks = Vec::new();
        for c in 0..2 {
            tasks.push(tokio::spawn(consumer(
                client.clone(),
                server.url.clone(),
                format!("final{c}"),
                ledger.clone(),
                window.clone(),
                stop,
            )));
        }
        for task in tasks {
            if let Err(failure) = task.await.expect("a consumer panicked") {
                panic!("the final consumers: {failure}");
            }
        }
        let status: Value = client
            .get(format!("{}/v1/subscriptions/bus", server.url))
            .send()
            .await
            .expect("status")
            .json()
            .await
            .expect("json");
        if status["lag"] == 0 && status["pending"] == 0 {
            assert_eq!(status["parked"], 0);
            break;
        }
        assert!(Instant::now() < deadline, "the group did not catch up: {status}");
    }
    let head = head(&client, &server.url).await;
    {
        let ledger = ledger.lock().expect("lock");
        check_order(&ledger.received);
        assert_eq!(
            ledger.redelivered_after_ack,
            Vec::<u64>::new(),
            "acked events delivered again"
        );
        // An ack whose answer the kill swallowed may have been made durable: its events are done
        // without an acknowledged ack. Every event was acked at least once in total.
        let missing: Vec<u64> = (1..=head).filter(|p| !ledger.ack_sent.contains(p)).collect();
        assert_eq!(missing, Vec::<u64>::new(), "events never acked");
        let unanswered = (1..=head).filter(|p| !ledger.acked.contains(p)).count();
        assert!(
            unanswered < head as usize / 2,
            "{unanswered} of {head} acks unanswered"
        );
        assert!(head > 0);
    }
    server.kill();
    backend.finish(dir.path()).await;
}
