//! Upcasting through `factstore serve`, on the embedded engine and on PostgreSQL: what the
//! server wires at start-up (the upcaster registry read back from storage, projections and
//! persistent subscriptions built over the upcasting store) must hand every consumer the
//! events upcast to the newest version, not only the reads.
//!
//! Events of version 1 carry `amt`; the upcaster to version 2 renames it `amount` and adds
//! `currency`. A projection that adds `/event_data/amount` fails on an event that was not
//! upcast, and a subscription's or the parked list's `event_data` shows which version it got.
//!
//! The PostgreSQL run needs `FACTSTORE_TEST_PG` (see `common/pg.rs`); without it, it says so
//! and returns, unless `FACTSTORE_REQUIRE_PG=1`.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

mod common;
use common::ServeProcess;
use common::pg::Backend;

const AGGREGATE: &str = "acc:1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projections_groups_and_parked_events_see_upcast_events_on_the_embedded_engine() {
    upcast_everywhere(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projections_groups_and_parked_events_see_upcast_events_on_postgres() {
    let Some(backend) = Backend::postgres("upcasting").await else {
        return;
    };
    upcast_everywhere(backend).await;
}

/// A version 1 deposit: the amount under its old name.
fn deposit_v1(amt: u64) -> Value {
    json!({"aggregate_type": "Account", "event_type": "MoneyDeposited", "event_version": 1,
           "event_data": {"amt": amt}})
}

async fn append(client: &Client, url: &str, amounts: &[u64]) -> u64 {
    let events: Vec<Value> = amounts.iter().map(|a| deposit_v1(*a)).collect();
    let response = client
        .post(format!("{url}/v1/aggregates/{AGGREGATE}/events"))
        .json(&json!({ "events": events }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    body["position"].as_u64().expect("position")
}

async fn send(request: reqwest::RequestBuilder, expected: &[StatusCode]) -> Value {
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(expected.contains(&status), "{status}: {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// The balance state of `acc:1`, from the read model once it has passed `position`, or folded
/// from the events (`source=event_store`).
async fn state(client: &Client, url: &str, query: &str) -> Value {
    let body = send(
        client.get(format!("{url}/v1/projections/balance/state/{AGGREGATE}?{query}")),
        &[StatusCode::OK],
    )
    .await;
    body["state"].clone()
}

/// Checks that every event of a subscription's or the parked list's answer is the upcast
/// version 2, and returns their positions and amounts.
fn upcast(events: &Value) -> Vec<(u64, u64)> {
    events
        .as_array()
        .expect("events")
        .iter()
        .map(|event| {
            let data = &event["event_data"];
            assert_eq!(event["event_version"], 2, "not upcast: {event}");
            assert_eq!(data["currency"], "USD", "not upcast: {event}");
            assert!(data.get("amt").is_none(), "not upcast: {event}");
            (
                event["position"].as_u64().expect("position"),
                data["amount"].as_u64().expect("amount"),
            )
        })
        .collect()
}

/// Polls the group until it has delivered `n` events (a deadline, not a sleep), parks them and
/// returns them as [`upcast`] does.
async fn poll_and_park(client: &Client, url: &str, n: usize) -> Vec<(u64, u64)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    while got.len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "the group delivered {got:?}, not {n} events, in 10 s"
        );
        let body = send(
            client
                .post(format!("{url}/v1/subscriptions/g/poll"))
                .json(&json!({"consumer": "c", "max": 100, "wait_ms": 500})),
            &[StatusCode::OK],
        )
        .await;
        got.extend(upcast(&body["events"]));
    }
    let positions: Vec<u64> = got.iter().map(|(position, _)| *position).collect();
    send(
        client
            .post(format!("{url}/v1/subscriptions/g/nack"))
            .json(&json!({"positions": positions, "park": true})),
        &[StatusCode::OK, StatusCode::NO_CONTENT],
    )
    .await;
    got
}

async fn parked(client: &Client, url: &str) -> Vec<(u64, u64)> {
    let body = send(
        client.get(format!("{url}/v1/subscriptions/g/parked")),
        &[StatusCode::OK],
    )
    .await;
    upcast(&body["events"])
}

async fn upcast_everywhere(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let args = backend.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let client = Client::new();

    let server = ServeProcess::start(dir.path(), &args);
    let url = server.url.clone();
    backend.ready(&url).await;
    send(
        client
            .put(format!("{url}/v1/upcasters/MoneyDeposited/1"))
            .json(&json!({
                "to_version": 2,
                "ops": [{"op": "rename", "from": "/amt", "path": "/amount"},
                        {"op": "default", "path": "/currency", "value": "USD"}]
            })),
        &[StatusCode::OK, StatusCode::CREATED],
    )
    .await;
    // Stored before the projection and the group exist: they catch up from the store.
    append(&client, &url, &[5, 7]).await;
    send(
        client.put(format!("{url}/v1/projections/balance")).json(&json!({
            "filter": {"event_types": ["MoneyDeposited"]},
            "key": "aggregate_id",
            "initial": {"balance": 0},
            "on": {"MoneyDeposited": [
                {"op": "add", "path": "/balance", "from": "/event_data/amount"},
                {"op": "set", "path": "/currency", "from": "/event_data/currency"}
            ]}
        })),
        &[StatusCode::CREATED],
    )
    .await;
    send(
        client
            .put(format!("{url}/v1/subscriptions/g"))
            .json(&json!({"filter": {"event_types": ["MoneyDeposited"]}, "start": "beginning"})),
        &[StatusCode::OK, StatusCode::CREATED],
    )
    .await;
    // Appended while they run: they take it live.
    let head = append(&client, &url, &[11]).await;

    let expected = json!({"balance": 23, "currency": "USD"});
    let query = format!("min_position={head}&wait_ms=10000");
    assert_eq!(state(&client, &url, &query).await, expected);
    assert_eq!(state(&client, &url, "source=event_store").await, expected);
    let delivered = poll_and_park(&client, &url, 3).await;
    assert_eq!(delivered, [(1, 5), (2, 7), (3, 11)]);
    assert_eq!(parked(&client, &url).await, delivered);

    // A new server on the same storage reads the upcaster back before it serves.
    server.kill();
    let server = ServeProcess::start(dir.path(), &args);
    let url = server.url.clone();
    backend.ready(&url).await;
    let head = append(&client, &url, &[13]).await;
    let expected = json!({"balance": 36, "currency": "USD"});
    let query = format!("min_position={head}&wait_ms=10000");
    assert_eq!(state(&client, &url, &query).await, expected);
    assert_eq!(state(&client, &url, "source=event_store").await, expected);
    assert_eq!(parked(&client, &url).await, delivered);
    assert_eq!(poll_and_park(&client, &url, 1).await, [(4, 13)]);
    assert_eq!(parked(&client, &url).await.len(), 4);

    drop(server);
    backend.finish(dir.path()).await;
}
