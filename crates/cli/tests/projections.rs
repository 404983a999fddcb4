//! Projections through real crashes: the `factstore` binary folds projections while writers
//! append concurrently, is killed with SIGKILL at random moments and restarted on the same
//! data folder.
//!
//! After every restart, once the projections have caught up with the head: each key's state
//! equals a fold of the stored events computed here (each event's position appended once, so
//! an event applied twice or skipped shows), `source=event_store` reads agree (they start from
//! the projection's snapshots), and `factstore verify` still passes at the end.
//!
//! Every cycle gets acknowledgements of its own, and its kill lands while appends are in flight
//! and while the projection has events left to fold.
//!
//! `FACTSTORE_PROJECTION_CRASH_CYCLES` sets the number of cycles (default 6).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

mod common;
use common::ServeProcess;
use common::kill::{CYCLE_DEADLINE, KillWindow};
use common::pg::Backend;

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
        let aggregate = format!("acc:{worker}:{}", rng.random_range(0..3));
        let events: Vec<Value> = (0..rng.random_range(1..=4))
            .map(|_| {
                json!({"aggregate_type": "Account", "event_type": "Deposited",
                       "event_data": {"amount": rng.random_range(1..100)}})
            })
            .collect();
        let request = client
            .post(format!("{url}/v1/aggregates/{aggregate}/events"))
            .json(&json!({"events": events}));
        let Some(_) = window
            .send(request, 201, &format!("writer {worker}: an append"))
            .await?
        else {
            return Ok(());
        };
        window.acked();
    }
}

/// Waits until a projection is behind the head (it has events to fold), so that a kill right
/// after lands while it folds.
async fn wait_lagging(client: &reqwest::Client, url: &str, name: &str, cycle: usize) {
    let deadline = Instant::now() + CYCLE_DEADLINE;
    loop {
        let status: Value = client
            .get(format!("{url}/v1/projections/{name}"))
            .send()
            .await
            .expect("status")
            .json()
            .await
            .expect("json");
        if status["lag"].as_u64().expect("lag") > 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "cycle {cycle}: {name} never fell behind the appends: {status}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
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

/// The states the two projections must hold for `events`, folded here by hand.
fn expected(events: &[Value]) -> (BTreeMap<String, Value>, Value) {
    let mut by_account: BTreeMap<String, (u64, i64, Vec<u64>)> = BTreeMap::new();
    for event in events {
        let entry = by_account
            .entry(event["aggregate_id"].as_str().expect("id").to_owned())
            .or_default();
        entry.0 += 1;
        entry.1 += event["event_data"]["amount"].as_i64().expect("amount");
        entry.2.push(event["position"].as_u64().expect("position"));
    }
    let accounts = by_account
        .into_iter()
        .map(|(id, (n, sum, positions))| (id, json!({"n": n, "sum": sum, "positions": positions})))
        .collect();
    (accounts, json!({"events": events.len()}))
}

async fn states(client: &reqwest::Client, url: &str, name: &str) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let mut uri = format!("{url}/v1/projections/{name}/state?limit=1000");
        if let Some(after) = &after {
            uri.push_str(&format!("&after_key={after}"));
        }
        let page: Value = client
            .get(uri)
            .send()
            .await
            .expect("states")
            .json()
            .await
            .expect("json");
        for entry in page["states"].as_array().expect("states") {
            out.insert(
                entry["key"].as_str().expect("key").to_owned(),
                entry["state"].clone(),
            );
        }
        match page["next_after_key"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return out,
        }
    }
}

async fn wait_caught_up(client: &reqwest::Client, url: &str, name: &str, head: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status: Value = client
            .get(format!("{url}/v1/projections/{name}"))
            .send()
            .await
            .expect("status")
            .json()
            .await
            .expect("json");
        assert_ne!(status["status"], "failed", "{status}");
        if status["position"].as_u64() >= Some(head) {
            return;
        }
        assert!(Instant::now() < deadline, "{name} did not catch up: {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projections_survive_kill_9_without_applying_an_event_twice_or_skipping_one() {
    survive_kill_9(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projections_on_postgres_survive_kill_9_without_applying_an_event_twice_or_skipping_one() {
    if let Some(backend) = Backend::postgres("the projection crash test on PostgreSQL").await {
        survive_kill_9(backend).await;
    }
}

async fn survive_kill_9(backend: Backend) {
    let cycles: usize = std::env::var("FACTSTORE_PROJECTION_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let dir = tempfile::tempdir().expect("tempdir");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client");
    let mut rng = rand::rng();
    let mut extra = backend.args();
    extra.extend(["--snapshot-every".to_owned(), "5".to_owned()]);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let server = ServeProcess::start(dir.path(), &extra);
    backend.ready(&server.url).await;
    for (name, definition) in [
        (
            "accounts",
            json!({"key": "aggregate_id", "on": {"Deposited": [
                {"op": "inc", "path": "/n"},
                {"op": "add", "path": "/sum", "from": "/event_data/amount"},
                {"op": "append", "path": "/positions", "from": "/position"}]}}),
        ),
        (
            "totals",
            json!({"key": "all", "on": {"*": [{"op": "inc", "path": "/events"}]}}),
        ),
    ] {
        let answer = client
            .put(format!("{}/v1/projections/{name}", server.url))
            .json(&definition)
            .send()
            .await
            .expect("put");
        assert_eq!(answer.status().as_u16(), 201);
    }
    let mut server = Some(server);
    for cycle in 0..=cycles {
        let running = match server.take() {
            Some(running) => running,
            None => {
                let started = ServeProcess::start(dir.path(), &extra);
                backend.ready(&started.url).await;
                started
            }
        };
        let events = read_all(&client, &running.url).await;
        let head = events
            .last()
            .map_or(0, |e| e["position"].as_u64().expect("position"));
        assert!(
            cycle == 0 || head > 0,
            "cycle {cycle}: the acknowledged appends are gone"
        );
        wait_caught_up(&client, &running.url, "accounts", head).await;
        wait_caught_up(&client, &running.url, "totals", head).await;
        let (accounts, totals) = expected(&events);
        let got = states(&client, &running.url, "accounts").await;
        assert_eq!(got, accounts, "cycle {cycle}: the account states");
        if head > 0 {
            assert_eq!(
                states(&client, &running.url, "totals").await["all"],
                totals,
                "cycle {cycle}"
            );
        }
        // source=event_store folds from the projection's snapshots: the same states.
        for key in accounts.keys().take(3) {
            let read: Value = client
                .get(format!(
                    "{}/v1/projections/accounts/state/{key}?source=event_store",
                    running.url
                ))
                .send()
                .await
                .expect("read")
                .json()
                .await
                .expect("json");
            assert_eq!(
                &read["state"], &accounts[key],
                "cycle {cycle}: {key} from the store"
            );
        }
        if cycle == cycles {
            running.kill();
            break;
        }
        let window = Arc::new(KillWindow::default());
        let writers: Vec<_> = (0..6)
            .map(|worker| {
                tokio::spawn(writer(
                    client.clone(),
                    running.url.clone(),
                    worker,
                    window.clone(),
                ))
            })
            .collect();
        // The kill comes at a random moment after this cycle's first acknowledgement, when
        // the projection has events to fold.
        window.first_ack(&writers, cycle).await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
        wait_lagging(&client, &running.url, "accounts", cycle).await;
        window.kill();
        running.kill();
        window.join(writers, cycle).await;
    }
    backend.finish(dir.path()).await;
}
