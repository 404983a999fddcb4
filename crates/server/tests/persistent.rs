//! Persistent subscriptions through the HTTP API, in-process: every endpoint and error,
//! competing consumers, redelivery, parking and replay, per-aggregate order, long polls,
//! roles, and the journal on a fault-injecting disk (a failed sync answers 503 and poisons the
//! group; a crash never loses an acknowledged ack).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{Method, StatusCode};
use common::{Answer, Call, assert_error, event};
use factstore_core::EventStore;
use factstore_server::{AppState, Auth, ServerConfig, app, app_with_state};
use factstore_subscriptions::{FileStorage, Options, Subscriptions};
use factstore_testkit::faultfs::{FaultFs, Repeat};
use factstore_testkit::model::ModelStore;
use factstore_testkit::wait::{spawn_waiting, until, within};
use serde_json::{Value, json};

fn delete(uri: &str) -> Call {
    Call {
        method: Method::DELETE,
        ..Call::get(uri)
    }
}

async fn append(router: &Router, aggregate_id: &str, n: usize) -> Answer {
    let body = json!({"events": (0..n).map(|_| event("MoneyDeposited")).collect::<Vec<_>>()});
    let answer = Call::post(&format!("/v1/aggregates/{aggregate_id}/events"), &body)
        .send(router)
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());
    answer
}

async fn create(router: &Router, group: &str, definition: Value) -> Answer {
    Call::put(&format!("/v1/subscriptions/{group}"), &definition)
        .send(router)
        .await
}

async fn poll(
    router: &Router,
    group: &str,
    consumer: &str,
    max: usize,
    wait_ms: u64,
) -> Vec<(u64, u64, String)> {
    let answer = Call::post(
        &format!("/v1/subscriptions/{group}/poll"),
        &json!({"consumer": consumer, "max": max, "wait_ms": wait_ms}),
    )
    .send(router)
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    answer.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["position"].as_u64().unwrap(),
                e["attempt"].as_u64().unwrap(),
                e["aggregate_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn ack(router: &Router, group: &str, positions: &[u64]) -> Answer {
    Call::post(
        &format!("/v1/subscriptions/{group}/ack"),
        &json!({ "positions": positions }),
    )
    .send(router)
    .await
}

async fn nack(router: &Router, group: &str, positions: &[u64], park: bool) -> Answer {
    Call::post(
        &format!("/v1/subscriptions/{group}/nack"),
        &json!({ "positions": positions, "park": park }),
    )
    .send(router)
    .await
}

async fn status(router: &Router, group: &str) -> Value {
    let answer = Call::get(&format!("/v1/subscriptions/{group}"))
        .send(router)
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    answer.body
}

fn positions(delivered: &[(u64, u64, String)]) -> Vec<u64> {
    delivered.iter().map(|d| d.0).collect()
}

#[tokio::test]
async fn a_group_delivers_leases_and_moves_its_checkpoint_with_acks() {
    let router = app(Arc::new(ModelStore::new()));
    append(&router, "account:1", 3).await;
    let answer = create(&router, "billing", json!({})).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());
    assert_eq!(
        (
            answer.body["group"].clone(),
            answer.body["start"].clone(),
            answer.body["ack_timeout_ms"].clone()
        ),
        (json!("billing"), json!("beginning"), json!(30000))
    );
    assert_eq!(create(&router, "billing", json!({})).await.status, StatusCode::OK);

    let got = poll(&router, "billing", "w1", 2, 1000).await;
    assert_eq!(positions(&got), [1, 2]);
    assert!(got.iter().all(|d| d.1 == 1), "first attempts");
    // The other consumer gets what is left, never what w1 holds.
    assert_eq!(positions(&poll(&router, "billing", "w2", 10, 0).await), [3]);
    assert_eq!(poll(&router, "billing", "w3", 10, 0).await, []);
    let s = status(&router, "billing").await;
    assert_eq!(
        (s["in_flight"].clone(), s["checkpoint"].clone(), s["lag"].clone()),
        (json!(3), json!(0), json!(3))
    );

    assert_eq!(
        ack(&router, "billing", &[2, 3]).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        status(&router, "billing").await["checkpoint"],
        0,
        "1 is still in flight"
    );
    assert_eq!(ack(&router, "billing", &[1]).await.status, StatusCode::NO_CONTENT);
    let s = status(&router, "billing").await;
    assert_eq!(
        (s["checkpoint"].clone(), s["lag"].clone(), s["in_flight"].clone()),
        (json!(3), json!(0), json!(0))
    );
    // Acking again is the same success.
    assert_eq!(
        ack(&router, "billing", &[1, 2]).await.status,
        StatusCode::NO_CONTENT
    );

    let list = Call::get("/v1/subscriptions").send(&router).await;
    assert_eq!(list.body["subscriptions"][0]["group"], "billing");
    assert_eq!(
        delete("/v1/subscriptions/billing").send(&router).await.status,
        StatusCode::NO_CONTENT
    );
    assert_error(
        &Call::get("/v1/subscriptions/billing").send(&router).await,
        StatusCode::NOT_FOUND,
        "subscription_not_found",
    );
    let list = Call::get("/v1/subscriptions").send(&router).await;
    assert_eq!(list.body, json!({"subscriptions": []}));
}

#[tokio::test]
async fn start_filter_and_long_polls() {
    let router = app(Arc::new(ModelStore::new()));
    append(&router, "account:1", 2).await;
    append(&router, "order:1", 2).await;
    create(&router, "from-end", json!({"start": "end"})).await;
    create(
        &router,
        "after-1",
        json!({"start": 1, "filter": {"aggregate_id_prefix": "account:"}}),
    )
    .await;
    // A new group's reader fills its buffer in the background: wait for it, not on it.
    assert_eq!(positions(&poll(&router, "after-1", "w", 10, 5_000).await), [2]);
    assert_eq!(poll(&router, "from-end", "w", 10, 0).await, []);
    assert_eq!(status(&router, "from-end").await["checkpoint"], 4);

    // A long poll answers as soon as an event is appended: the poll is waiting first.
    let waiting = {
        let router = router.clone();
        spawn_waiting("a long poll of a group with nothing to lease", async move {
            poll(&router, "from-end", "w", 10, 10_000).await
        })
        .await
    };
    append(&router, "order:2", 1).await;
    let got = within(
        "the long poll, once an event came",
        Duration::from_secs(5),
        waiting,
    )
    .await
    .unwrap();
    assert_eq!(positions(&got), [5]);
    // The filter passes over order:2; its position still counts as done.
    ack(&router, "after-1", &[2]).await;
    assert_eq!(status(&router, "after-1").await["checkpoint"], 5);
}

#[tokio::test]
async fn an_unacked_event_comes_again_after_the_ack_timeout_and_is_parked_after_max_deliveries() {
    let router = app(Arc::new(ModelStore::new()));
    append(&router, "account:1", 1).await;
    create(&router, "g", json!({"ack_timeout_ms": 100, "max_deliveries": 2})).await;
    assert_eq!(poll(&router, "g", "w1", 1, 1000).await[0].1, 1);
    // The timer releases the lease and wakes the long poll.
    let again = poll(&router, "g", "w2", 1, 2000).await;
    assert_eq!((again[0].0, again[0].1), (1, 2));
    // The second lease runs out too, and that was the last delivery: the event is parked.
    until("the event to be parked", Duration::from_secs(5), || async {
        let s = status(&router, "g").await;
        (s["parked"].clone(), s["checkpoint"].clone()) == (json!(1), json!(1))
    })
    .await;
    let parked = Call::get("/v1/subscriptions/g/parked").send(&router).await;
    assert_eq!(parked.body["events"][0]["position"], 1);
    assert_eq!(parked.body["events"][0]["attempt"], 2);
    assert_eq!(parked.body["next_after_position"], Value::Null);

    let replay = Call::post("/v1/subscriptions/g/parked/replay", &json!({}))
        .send(&router)
        .await;
    assert_eq!(
        replay.body,
        json!({"replayed": 1, "parked": 0}),
        "{}",
        replay.text()
    );
    let again = poll(&router, "g", "w3", 1, 1000).await;
    assert_eq!(
        (again[0].0, again[0].1),
        (1, 1),
        "a replay starts the count afresh"
    );
    assert_eq!(ack(&router, "g", &[1]).await.status, StatusCode::NO_CONTENT);
    assert_eq!(status(&router, "g").await["pending"], 0);
}

#[tokio::test]
async fn nack_redelivers_or_parks_and_parked_pages_and_replays_by_position() {
    let router = app(Arc::new(ModelStore::new()));
    append(&router, "account:1", 4).await;
    create(&router, "g", json!({})).await;
    let got = poll(&router, "g", "w", 4, 5_000).await;
    assert_eq!(positions(&got), [1, 2, 3, 4]);
    assert_eq!(
        nack(&router, "g", &[1], false).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        nack(&router, "g", &[2, 3], true).await.status,
        StatusCode::NO_CONTENT
    );
    let again = poll(&router, "g", "w", 4, 0).await;
    assert_eq!((again[0].0, again[0].1), (1, 2));
    let page = Call::get("/v1/subscriptions/g/parked?limit=1")
        .send(&router)
        .await;
    assert_eq!(
        (
            page.body["events"][0]["position"].clone(),
            page.body["next_after_position"].clone()
        ),
        (json!(2), json!(2))
    );
    let page = Call::get("/v1/subscriptions/g/parked?after_position=2")
        .send(&router)
        .await;
    assert_eq!(page.body["events"][0]["position"], 3);
    let replay = Call::post("/v1/subscriptions/g/parked/replay", &json!({"positions": [3]}))
        .send(&router)
        .await;
    assert_eq!(replay.body, json!({"replayed": 1, "parked": 1}));
    assert_eq!(positions(&poll(&router, "g", "w", 4, 0).await), [3]);
    // A late ack of a parked event takes it off the parked list.
    ack(&router, "g", &[1, 2, 3, 4]).await;
    let s = status(&router, "g").await;
    assert_eq!(
        (s["parked"].clone(), s["checkpoint"].clone()),
        (json!(0), json!(4))
    );
}

#[tokio::test]
async fn per_aggregate_ordering_holds_an_aggregate_while_one_of_its_events_is_in_flight() {
    let router = app(Arc::new(ModelStore::new()));
    append(&router, "account:a", 3).await; // 1, 2, 3
    append(&router, "account:b", 2).await; // 4, 5
    create(&router, "g", json!({"ordering": "per_aggregate"})).await;
    let first = poll(&router, "g", "w1", 10, 1000).await;
    assert_eq!(positions(&first), [1, 4]);
    assert_eq!(poll(&router, "g", "w2", 10, 0).await, []);
    nack(&router, "g", &[1], false).await;
    assert_eq!(
        positions(&poll(&router, "g", "w2", 10, 0).await),
        [1],
        "1 again, before 2"
    );
    ack(&router, "g", &[1, 4]).await;
    assert_eq!(positions(&poll(&router, "g", "w2", 10, 0).await), [2, 5]);
}

#[tokio::test]
async fn a_changed_definition_keeps_the_progress() {
    let router = app(Arc::new(ModelStore::new()));
    append(&router, "account:1", 3).await;
    create(&router, "g", json!({})).await;
    let got = poll(&router, "g", "w", 2, 1000).await;
    ack(&router, "g", &positions(&got)).await;
    let answer = create(&router, "g", json!({"ack_timeout_ms": 5000})).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        (
            answer.body["ack_timeout_ms"].clone(),
            answer.body["checkpoint"].clone()
        ),
        (json!(5000), json!(2))
    );
    assert_eq!(positions(&poll(&router, "g", "w", 10, 1000).await), [3]);
}

#[tokio::test]
async fn bad_requests_are_400_and_unknown_groups_404() {
    let router = app(Arc::new(ModelStore::new()));
    append(&router, "account:1", 2).await;
    create(
        &router,
        "g",
        json!({"filter": {"event_types": ["MoneyDeposited"]}}),
    )
    .await;
    let got = poll(&router, "g", "w", 1, 1000).await;
    assert_eq!(positions(&got), [1]);
    for (uri, body, words) in [
        ("/v1/subscriptions/g", json!({"colour": 1}), "unknown field"),
        (
            "/v1/subscriptions/g",
            json!({"filter": {"event_type": ["x"]}}),
            "unknown field",
        ),
        (
            "/v1/subscriptions/g",
            json!({"max_deliveries": 0}),
            "max_deliveries",
        ),
        ("/v1/subscriptions/g", json!({"start": "later"}), "start"),
        ("/v1/subscriptions/a%2Fb", json!({}), "group name"),
    ] {
        let answer = Call::put(uri, &body).send(&router).await;
        assert_error(&answer, StatusCode::BAD_REQUEST, "invalid_request");
        assert!(answer.text().contains(words), "{body}: {}", answer.text());
    }
    for (path, body, words) in [
        ("poll", json!({"consumer": "w", "max": 0}), "max"),
        ("poll", json!({"consumer": "w", "max": 10001}), "max"),
        ("poll", json!({"consumer": "", "max": 1}), "consumer"),
        ("poll", json!({"consumer": "w", "wait_ms": 600000}), "wait_ms"),
        ("poll", json!({"max": 1}), "consumer"),
        ("ack", json!({"positions": []}), "positions"),
        ("ack", json!({"positions": [2]}), "not been delivered"),
        ("ack", json!({"positions": [1, 99]}), "not an event"),
        ("nack", json!({"positions": [2]}), "not been delivered"),
        ("ack", json!({"positions": [1], "extra": true}), "unknown field"),
        ("parked/replay", json!({"positions": [1]}), "not parked"),
    ] {
        let answer = Call::post(&format!("/v1/subscriptions/g/{path}"), &body)
            .send(&router)
            .await;
        assert_error(&answer, StatusCode::BAD_REQUEST, "invalid_request");
        assert!(answer.text().contains(words), "{path} {body}: {}", answer.text());
    }
    // Nothing of a refused ack was applied: 1 is still in flight.
    assert_eq!(status(&router, "g").await["in_flight"], 1);
    ack(&router, "g", &[1]).await;
    let answer = nack(&router, "g", &[1], false).await;
    assert_error(&answer, StatusCode::BAD_REQUEST, "invalid_request");
    assert!(answer.text().contains("already acked"));

    let bad_param = Call::get("/v1/subscriptions/g/parked?limit=0")
        .send(&router)
        .await;
    assert_error(&bad_param, StatusCode::BAD_REQUEST, "invalid_request");
    for call in [
        Call::get("/v1/subscriptions/nope"),
        delete("/v1/subscriptions/nope"),
        Call::get("/v1/subscriptions/nope/parked"),
        Call::post("/v1/subscriptions/nope/poll", &json!({"consumer": "w"})),
        Call::post("/v1/subscriptions/nope/ack", &json!({"positions": [1]})),
        Call::post("/v1/subscriptions/nope/nack", &json!({"positions": [1]})),
        Call::post("/v1/subscriptions/nope/parked/replay", &json!({})),
    ] {
        let answer = call.send(&router).await;
        assert_error(&answer, StatusCode::NOT_FOUND, "subscription_not_found");
        assert_eq!(answer.body["error"]["group"], "nope");
    }
}

const AUTH_FILE: &str = r#"
[[token]]
token = "admin-token-0123456789abcdef01"
role = "admin"

[[token]]
token = "reader-token-0123456789abcdef"
role = "reader"

[[token]]
token = "acc-admin-token-0123456789abc"
role = "admin"
aggregate_id_prefixes = ["acc:"]
"#;

#[tokio::test]
async fn admins_manage_groups_readers_consume_and_prefix_tokens_are_refused() {
    let auth = Auth::parse(AUTH_FILE, "test.toml").unwrap();
    let router = app_with_state(AppState::new(
        Arc::new(ModelStore::new()),
        ServerConfig::default().with_auth(auth),
    ));
    let (admin, reader, limited) = (
        "admin-token-0123456789abcdef01",
        "reader-token-0123456789abcdef",
        "acc-admin-token-0123456789abc",
    );
    let answer = Call::put("/v1/subscriptions/g", &json!({}))
        .token(reader)
        .send(&router)
        .await;
    assert_error(&answer, StatusCode::FORBIDDEN, "forbidden");
    let answer = Call::put("/v1/subscriptions/g", &json!({}))
        .token(limited)
        .send(&router)
        .await;
    assert_error(&answer, StatusCode::FORBIDDEN, "forbidden");
    let answer = Call::put("/v1/subscriptions/g", &json!({}))
        .token(admin)
        .send(&router)
        .await;
    assert_eq!(answer.status, StatusCode::CREATED);
    let answer = Call::post("/v1/subscriptions/g/poll", &json!({"consumer": "w"}))
        .token(reader)
        .send(&router)
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    let answer = Call::get("/v1/subscriptions/g")
        .token(limited)
        .send(&router)
        .await;
    assert_error(&answer, StatusCode::FORBIDDEN, "forbidden");
    let answer = Call::post("/v1/subscriptions/g/parked/replay", &json!({}))
        .token(reader)
        .send(&router)
        .await;
    assert_error(&answer, StatusCode::FORBIDDEN, "forbidden");
    let answer = delete("/v1/subscriptions/g").token(reader).send(&router).await;
    assert_error(&answer, StatusCode::FORBIDDEN, "forbidden");
    let answer = Call::get("/v1/subscriptions").send(&router).await;
    assert_error(&answer, StatusCode::UNAUTHORIZED, "unauthorized");
}

/// A server over `store` whose groups keep their journals on `fs`.
async fn durable_app(
    store: Arc<ModelStore>,
    fs: &Arc<FaultFs>,
    options: Options,
) -> (Router, Arc<Subscriptions>) {
    let storage = FileStorage::open(fs.clone(), Path::new("/data/subscriptions")).unwrap();
    let subscriptions = Subscriptions::open(store.clone() as Arc<dyn EventStore>, Arc::new(storage), options)
        .await
        .unwrap();
    let state = AppState::new(store, ServerConfig::default()).with_subscriptions(subscriptions.clone());
    (app_with_state(state), subscriptions)
}

#[tokio::test]
async fn a_failed_sync_fails_the_ack_with_503_and_a_crash_keeps_every_acknowledged_ack() {
    let fs = Arc::new(FaultFs::new());
    let store = Arc::new(ModelStore::new());
    let (router, subscriptions) = durable_app(store.clone(), &fs, Options::default()).await;
    append(&router, "account:1", 6).await;
    assert_eq!(create(&router, "g", json!({})).await.status, StatusCode::CREATED);
    let got = poll(&router, "g", "w", 6, 1000).await;
    assert_eq!(positions(&got), [1, 2, 3, 4, 5, 6]);
    assert_eq!(ack(&router, "g", &[1, 2]).await.status, StatusCode::NO_CONTENT);

    fs.fail_sync_after(0, Repeat::Once);
    assert_error(
        &ack(&router, "g", &[3]).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
    );
    // Poisoned: no more changes, no more deliveries, until a restart.
    assert_error(
        &ack(&router, "g", &[4]).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
    );
    let answer = Call::post("/v1/subscriptions/g/poll", &json!({"consumer": "w"}))
        .send(&router)
        .await;
    assert_error(&answer, StatusCode::SERVICE_UNAVAILABLE, "store_unavailable");

    // The process dies; the disk keeps only what was synced.
    drop(router);
    subscriptions.close().await;
    drop(subscriptions);
    fs.crash();
    let (router, subscriptions) = durable_app(store, &fs, Options::default()).await;
    let s = status(&router, "g").await;
    assert_eq!(s["checkpoint"], 2, "the acknowledged acks survived");
    let again = poll(&router, "g", "w", 10, 1000).await;
    assert_eq!(
        positions(&again),
        [3, 4, 5, 6],
        "the failed ack's event comes again; 1 and 2 never"
    );
    assert!(again.iter().all(|d| d.1 == 2), "attempts survive: {again:?}");
    assert_eq!(
        ack(&router, "g", &[3, 4, 5, 6]).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(status(&router, "g").await["checkpoint"], 6);
    subscriptions.close().await;
}

#[tokio::test]
async fn compaction_and_restarts_keep_acks_parks_and_replays() {
    let fs = Arc::new(FaultFs::new());
    let store = Arc::new(ModelStore::new());
    let mut options = Options::default();
    // Compact at nearly every write.
    options.compact_bytes = 64;
    let (router, subscriptions) = durable_app(store.clone(), &fs, options.clone()).await;
    append(&router, "account:1", 20).await;
    create(&router, "g", json!({"max_deliveries": 3})).await;
    let mut acked = BTreeSet::new();
    let got = poll(&router, "g", "w", 20, 1000).await;
    for chunk in positions(&got).chunks(3) {
        if chunk[0] % 2 == 0 {
            nack(&router, "g", chunk, true).await;
        } else {
            ack(&router, "g", chunk).await;
            acked.extend(chunk.iter().copied());
        }
    }
    let replay = Call::post("/v1/subscriptions/g/parked/replay", &json!({"limit": 1}))
        .send(&router)
        .await;
    assert_eq!(replay.body["replayed"], 1);
    let before = status(&router, "g").await;
    subscriptions.close().await;
    drop((router, subscriptions));
    fs.crash();

    let (router, subscriptions) = durable_app(store, &fs, options).await;
    let after = status(&router, "g").await;
    assert_eq!(
        (after["checkpoint"].clone(), after["parked"].clone()),
        (before["checkpoint"].clone(), before["parked"].clone())
    );
    let again = poll(&router, "g", "w", 20, 1000).await;
    for (p, _, _) in &again {
        assert!(!acked.contains(p), "acked {p} delivered again");
    }
    assert_eq!(
        again.len() as u64 + acked.len() as u64 + after["parked"].as_u64().unwrap(),
        20
    );
    subscriptions.close().await;
}
