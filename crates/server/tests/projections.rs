//! The projection endpoints and `GET /v1/events/{id}/status`, in-process: every route and
//! error code, read-your-writes, `source=event_store`, time travel with and without
//! projection snapshots, rebuilds that swap while the old state serves, failures, auth.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::http::{Method, StatusCode};
use common::{Answer, Call, assert_error};
use factstore_core::{
    AggregatePage, AggregateQuery, CommitOutcome, Event, EventPage, EventQuery, EventStore, Head, Limits,
    PreparedCommit, PutSnapshot, Snapshot, SnapshotInfo, SnapshotStored, StoreError,
};
use factstore_projections::{MemoryStorage, Projections, ProjectionsOptions};
use factstore_server::{AppState, Auth, ServerConfig, app_with_state};
use factstore_testkit::model::ModelStore;
use factstore_testkit::wait::{spawn_waiting, until, until_ok, within};
use serde_json::{Value, json};
use uuid::Uuid;

/// The model store, with a gate that holds reads from position 0 while closed: a rebuild
/// (which starts from 0) waits there while the live projection goes on.
#[derive(Debug)]
struct GatedStore {
    inner: ModelStore,
    hold_from_start: AtomicBool,
    opened: tokio::sync::Notify,
}

impl GatedStore {
    fn new() -> Arc<GatedStore> {
        Arc::new(GatedStore {
            inner: ModelStore::new(),
            hold_from_start: AtomicBool::new(false),
            opened: tokio::sync::Notify::new(),
        })
    }

    fn open(&self) {
        self.hold_from_start.store(false, Ordering::SeqCst);
        self.opened.notify_waiters();
    }
}

#[async_trait]
impl EventStore for GatedStore {
    fn limits(&self) -> &Limits {
        self.inner.limits()
    }

    async fn commit_prepared(&self, commit: PreparedCommit) -> Result<CommitOutcome, StoreError> {
        self.inner.commit_prepared(commit).await
    }

    async fn read_aggregate(&self, query: AggregateQuery) -> Result<AggregatePage, StoreError> {
        self.inner.read_aggregate(query).await
    }

    async fn read_events(&self, query: EventQuery) -> Result<EventPage, StoreError> {
        while query.after_position == 0 && self.hold_from_start.load(Ordering::SeqCst) {
            let opened = self.opened.notified();
            if !self.hold_from_start.load(Ordering::SeqCst) {
                break;
            }
            opened.await;
        }
        self.inner.read_events(query).await
    }

    async fn get_event(&self, event_id: Uuid) -> Result<Event, StoreError> {
        self.inner.get_event(event_id).await
    }

    async fn head(&self) -> Result<Head, StoreError> {
        self.inner.head().await
    }

    async fn put_snapshot(&self, put: PutSnapshot) -> Result<SnapshotStored, StoreError> {
        self.inner.put_snapshot(put).await
    }

    async fn latest_snapshot(&self, aggregate_id: &str, max: Option<u64>) -> Result<Snapshot, StoreError> {
        self.inner.latest_snapshot(aggregate_id, max).await
    }

    async fn list_snapshots(&self, aggregate_id: &str) -> Result<Vec<SnapshotInfo>, StoreError> {
        self.inner.list_snapshots(aggregate_id).await
    }

    fn watch_head(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.watch_head()
    }
}

fn router_over(store: Arc<dyn EventStore>, snapshot_every: u64, config: ServerConfig) -> Router {
    let options = ProjectionsOptions {
        snapshot_every,
        batch_events: 7,
        ..ProjectionsOptions::default()
    };
    let projections = Projections::new(store.clone(), Arc::new(MemoryStorage::new()), options);
    app_with_state(AppState::new(store, config).with_projections(projections))
}

fn router() -> Router {
    router_over(Arc::new(ModelStore::new()), 3, ServerConfig::default())
}

fn bank() -> Value {
    json!({
        "filter": {"event_types": ["AccountCreated", "MoneyDeposited", "MoneyWithdrawn"],
                   "aggregate_type": "Account"},
        "key": "aggregate_id",
        "initial": {"balance": 0, "transactions": 0},
        "on": {
            "AccountCreated": [{"op": "set", "path": "/balance", "from": "/event_data/initial"}],
            "MoneyDeposited": [{"op": "add", "path": "/balance", "from": "/event_data/amount"},
                               {"op": "inc", "path": "/transactions"}],
            "MoneyWithdrawn": [{"op": "sub", "path": "/balance", "from": "/event_data/amount"},
                               {"op": "inc", "path": "/transactions"}],
            "*": [{"op": "set", "path": "/last_event", "from": "/event_type"}]
        }
    })
}

fn ev(event_type: &str, data: Value) -> Value {
    json!({"aggregate_type": "Account", "event_type": event_type, "event_data": data})
}

/// Appends and returns the last position.
async fn append(router: &Router, aggregate_id: &str, events: Vec<Value>) -> u64 {
    let answer = Call::post(
        &format!("/v1/aggregates/{aggregate_id}/events"),
        &json!({ "events": events }),
    )
    .send(router)
    .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());
    answer.body["position"].as_u64().unwrap()
}

async fn put(router: &Router, name: &str, definition: &Value) -> Answer {
    Call::put(&format!("/v1/projections/{name}"), definition)
        .send(router)
        .await
}

async fn get(router: &Router, uri: &str) -> Answer {
    Call::get(uri).send(router).await
}

fn delete(uri: &str) -> Call {
    Call {
        method: Method::DELETE,
        ..Call::get(uri)
    }
}

/// A key's state once the projection has passed `position`.
async fn state_at(router: &Router, name: &str, key: &str, position: u64) -> Answer {
    get(
        router,
        &format!("/v1/projections/{name}/state/{key}?min_position={position}&wait_ms=10000"),
    )
    .await
}

#[tokio::test]
async fn a_projection_folds_reads_and_reports_its_status() {
    let router = router();
    let created = put(&router, "balances", &bank()).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    assert_eq!(created.body["name"], "balances");
    assert_eq!(created.body["status"], "running");
    append(
        &router,
        "account:1",
        vec![ev("AccountCreated", json!({"initial": 100}))],
    )
    .await;
    append(
        &router,
        "account:2",
        vec![ev("AccountCreated", json!({"initial": 5}))],
    )
    .await;
    let last = append(
        &router,
        "account:1",
        vec![
            ev("MoneyDeposited", json!({"amount": 50})),
            ev("MoneyWithdrawn", json!({"amount": 30})),
            ev("Ignored", json!({})),
        ],
    )
    .await;
    let answer = state_at(&router, "balances", "account:1", last).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(
        answer.body,
        json!({"key": "account:1", "position": last,
               "state": {"balance": 120, "transactions": 2, "last_event": "MoneyWithdrawn"}})
    );
    let status = get(&router, "/v1/projections/balances").await;
    assert_eq!(
        status.body,
        json!({"name": "balances", "status": "running", "position": last, "head_position": last,
               "lag": 0, "keys": 2, "unkeyed": 0, "error": null})
    );
    let list = get(&router, "/v1/projections").await;
    assert_eq!(list.body, json!({"projections": [status.body]}));
    // The same definition again: 200, nothing changes.
    let again = put(&router, "balances", &bank()).await;
    assert_eq!(
        (again.status, &again.body["status"]),
        (StatusCode::OK, &json!("running"))
    );
    // Percent-encoded keys are the same key.
    let encoded = get(&router, "/v1/projections/balances/state/account%3A2").await;
    assert_eq!(encoded.body["state"]["balance"], 5);
}

#[tokio::test]
async fn bad_definitions_and_requests_are_refused_before_anything_is_stored() {
    let router = router();
    let cases = [
        (
            json!({"key": "nope", "on": {}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_projection",
            "key:",
        ),
        (
            json!({"key": "all", "on": {"A": [{"op": "mul", "path": "/a"}]}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_projection",
            "on.A[0].op",
        ),
        (
            json!({"key": "all", "on": {"A": [{"op": "add", "path": "/a", "from": "/event_data/x", "value": 1}]}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_projection",
            "on.A[0].from",
        ),
        (
            json!({"key": "all", "on": {}, "extra": 1}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "extra",
        ),
        (
            json!({"key": "all", "filter": {"event_type": "A"}, "on": {}}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "event_type",
        ),
        (
            json!({"on": {}}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "key",
        ),
    ];
    for (body, status, code, names) in cases {
        let answer = put(&router, "p", &body).await;
        assert_error(&answer, status, code);
        let message = answer.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(names), "{body}: {message}");
    }
    let malformed = Call {
        method: Method::PUT,
        ..Call::post_raw("/v1/projections/p", "{not json")
    }
    .send(&router)
    .await;
    assert_error(&malformed, StatusCode::BAD_REQUEST, "invalid_request");
    let bad_name = put(&router, "a%0Ab", &bank()).await;
    assert_error(&bad_name, StatusCode::BAD_REQUEST, "invalid_request");
    let long_name = put(&router, &"x".repeat(101), &bank()).await;
    assert_error(&long_name, StatusCode::BAD_REQUEST, "invalid_request");
    let unknown_param = Call::put("/v1/projections/p?x=1", &bank()).send(&router).await;
    assert_error(&unknown_param, StatusCode::BAD_REQUEST, "invalid_request");
    assert_eq!(
        get(&router, "/v1/projections").await.body,
        json!({"projections": []})
    );
    for uri in [
        "/v1/projections/balances/state/k?source=cache",
        "/v1/projections/balances/state/k?wait_ms=60001",
        "/v1/projections/balances/state/k?until=yesterday",
        "/v1/projections/balances/state?limit=1001",
    ] {
        assert_error(
            &get(&router, uri).await,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        );
    }
}

#[tokio::test]
async fn unknown_projections_and_keys_are_404() {
    let router = router();
    for answer in [
        get(&router, "/v1/projections/nope").await,
        get(&router, "/v1/projections/nope/state").await,
        get(&router, "/v1/projections/nope/state/k").await,
        delete("/v1/projections/nope").send(&router).await,
        Call::post("/v1/projections/nope/rebuild", &json!({}))
            .send(&router)
            .await,
    ] {
        assert_error(&answer, StatusCode::NOT_FOUND, "projection_not_found");
        assert_eq!(answer.body["error"]["projection"], "nope");
    }
    put(&router, "balances", &bank()).await;
    let position = append(
        &router,
        "account:1",
        vec![ev("AccountCreated", json!({"initial": 1}))],
    )
    .await;
    state_at(&router, "balances", "account:1", position).await;
    for uri in [
        "/v1/projections/balances/state/account:9",
        "/v1/projections/balances/state/account:9?source=event_store",
        "/v1/projections/balances/state/account:1?until=2000-01-01",
    ] {
        let answer = get(&router, uri).await;
        assert_error(&answer, StatusCode::NOT_FOUND, "key_not_found");
    }
}

#[tokio::test]
async fn read_your_writes_waits_for_the_position_or_answers_503() {
    let router = router();
    put(&router, "balances", &bank()).await;
    let position = append(
        &router,
        "account:1",
        vec![ev("AccountCreated", json!({"initial": 1}))],
    )
    .await;
    let late = get(
        &router,
        &format!(
            "/v1/projections/balances/state/account:1?min_position={}&wait_ms=50",
            position + 1
        ),
    )
    .await;
    assert_error(&late, StatusCode::SERVICE_UNAVAILABLE, "not_yet_materialized");
    assert_eq!(late.header("retry-after"), Some("1"));
    assert_eq!(late.body["error"]["min_position"], position + 1);
    // A wait that an append ends: the read is waiting first.
    let waiting = {
        let router = router.clone();
        spawn_waiting("a read of a state not yet materialized", async move {
            get(
                &router,
                &format!(
                    "/v1/projections/balances/state/account:1?min_position={}&wait_ms=10000",
                    position + 1
                ),
            )
            .await
        })
        .await
    };
    append(
        &router,
        "account:1",
        vec![ev("MoneyDeposited", json!({"amount": 2}))],
    )
    .await;
    let answer = within("the read, once the event came", Duration::from_secs(5), waiting)
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(answer.body["state"]["balance"], 3);
    assert!(answer.body["position"].as_u64().unwrap() > position);
}

/// The events of one account, with `created_at` one day apart from 2024-01-01.
fn dated(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let mut e = ev("MoneyDeposited", json!({"amount": i + 1}));
            e["created_at"] = json!(format!("2024-01-{:02}T12:00:00Z", i + 1));
            e
        })
        .collect()
}

#[tokio::test]
async fn event_store_reads_and_time_travel_agree_with_a_fold_with_snapshots() {
    // A snapshot every 3 events of an aggregate: 10 events give snapshots at versions 3, 6, 9.
    let router = router();
    put(&router, "balances", &bank()).await;
    let mut recorded = Vec::new();
    let mut last = 0;
    for e in dated(10) {
        last = append(&router, "account:1", vec![e]).await;
        recorded.push(
            get(&router, &format!("/v1/events?after_position={}", last - 1))
                .await
                .body["events"][0]["recorded_at"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
        // Time passes on purpose: each event is recorded at a time of its own.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let maintained = state_at(&router, "balances", "account:1", last).await;
    let balance = |n: usize| (1..=n).sum::<usize>();
    assert_eq!(maintained.body["state"]["balance"], balance(10));
    let from_store = get(
        &router,
        "/v1/projections/balances/state/account:1?source=event_store",
    )
    .await;
    assert_eq!(from_store.status, StatusCode::OK, "{}", from_store.text());
    assert_eq!(from_store.body["state"], maintained.body["state"]);
    for n in 1..=10 {
        let until = get(
            &router,
            &format!("/v1/projections/balances/state/account:1?until=2024-01-{n:02}"),
        )
        .await;
        assert_eq!(
            until.body["state"]["balance"],
            balance(n),
            "until day {n}: {}",
            until.text()
        );
        assert_eq!(until.body["state"]["transactions"], n);
        let as_of = get(
            &router,
            &format!(
                "/v1/projections/balances/state/account:1?as_of={}",
                recorded[n - 1]
            ),
        )
        .await;
        assert_eq!(
            as_of.body["state"]["balance"],
            balance(n),
            "as_of event {n}: {}",
            as_of.text()
        );
    }
}

#[tokio::test]
async fn other_keys_travel_in_time_by_folding_the_store() {
    let router = router();
    let by_day =
        json!({"key": "day", "on": {"*": [{"op": "add", "path": "/total", "from": "/event_data/amount"}]}});
    assert_eq!(put(&router, "daily", &by_day).await.status, StatusCode::CREATED);
    let mut events = dated(3);
    let mut same_day = ev("MoneyDeposited", json!({"amount": 100}));
    same_day["created_at"] = json!("2024-01-02T18:00:00Z");
    events.push(same_day);
    let last = append(&router, "account:1", events).await;
    assert_eq!(
        state_at(&router, "daily", "2024-01-02", last).await.body["state"],
        json!({"total": 102})
    );
    let until = get(
        &router,
        "/v1/projections/daily/state/2024-01-02?until=2024-01-02T13:00:00Z",
    )
    .await;
    assert_eq!(until.body["state"], json!({"total": 2}));
    let from_store = get(
        &router,
        "/v1/projections/daily/state/2024-01-02?source=event_store",
    )
    .await;
    assert_eq!(from_store.body["state"], json!({"total": 102}));
}

#[tokio::test]
async fn a_rebuild_serves_the_old_state_until_the_new_one_has_caught_up() {
    let store = GatedStore::new();
    let router = router_over(store.clone(), 3, ServerConfig::default());
    put(&router, "balances", &bank()).await;
    let mut last = 0;
    for i in 0..20 {
        last = append(
            &router,
            &format!("account:{}", i % 4),
            vec![ev("MoneyDeposited", json!({"amount": 10}))],
        )
        .await;
    }
    assert_eq!(
        state_at(&router, "balances", "account:0", last).await.body["state"]["balance"],
        50
    );
    store.hold_from_start.store(true, Ordering::SeqCst);
    // A changed definition: doubled amounts.
    let mut doubled = bank();
    doubled["on"]["MoneyDeposited"] = json!([{"op": "add", "path": "/balance", "from": "/event_data/amount"},
                                             {"op": "add", "path": "/balance", "from": "/event_data/amount"},
                                             {"op": "inc", "path": "/transactions"}]);
    let replaced = put(&router, "balances", &doubled).await;
    assert_eq!(
        (replaced.status, &replaced.body["status"]),
        (StatusCode::OK, &json!("rebuilding"))
    );
    // The live generation goes on folding new events with the old definition meanwhile.
    last = append(
        &router,
        "account:0",
        vec![ev("MoneyDeposited", json!({"amount": 10}))],
    )
    .await;
    let old = state_at(&router, "balances", "account:0", last).await;
    assert_eq!(old.body["state"]["balance"], 60);
    assert_eq!(
        get(&router, "/v1/projections/balances").await.body["status"],
        "rebuilding"
    );
    store.open();
    until("the rebuild to swap in", Duration::from_secs(10), || async {
        get(&router, "/v1/projections/balances").await.body["status"] == "running"
    })
    .await;
    let new = get(&router, "/v1/projections/balances/state/account:0").await;
    assert_eq!(new.body["state"]["balance"], 120);
    assert!(new.body["position"].as_u64().unwrap() >= last);
    // POST rebuild: 202, and the same state once it is done.
    let rebuild = Call::post("/v1/projections/balances/rebuild", &json!({}))
        .send(&router)
        .await;
    assert_eq!(rebuild.status, StatusCode::ACCEPTED, "{}", rebuild.text());
    until(
        "the second rebuild to swap in",
        Duration::from_secs(10),
        || async { get(&router, "/v1/projections/balances").await.body["status"] == "running" },
    )
    .await;
    let status = get(&router, "/v1/projections/balances").await;
    assert_eq!(status.body["status"], "running");
    assert_eq!(
        get(&router, "/v1/projections/balances/state/account:0")
            .await
            .body["state"]["balance"],
        120
    );
    assert_eq!(status.body["keys"], 4);
}

#[tokio::test]
async fn a_failing_operation_stops_the_projection_at_the_event_before() {
    let router = router();
    put(&router, "balances", &bank()).await;
    let ok = append(
        &router,
        "account:1",
        vec![ev("MoneyDeposited", json!({"amount": 5}))],
    )
    .await;
    let bad = append(
        &router,
        "account:1",
        vec![ev("MoneyDeposited", json!({"amount": "five"}))],
    )
    .await;
    append(
        &router,
        "account:1",
        vec![ev("MoneyDeposited", json!({"amount": 7}))],
    )
    .await;
    let status = until_ok("the projection to fail", Duration::from_secs(10), || async {
        let status = get(&router, "/v1/projections/balances").await.body;
        if status["status"] == "failed" {
            Ok(status)
        } else {
            Err(status)
        }
    })
    .await;
    assert_eq!(status["position"], ok);
    let error = status["error"].as_str().unwrap();
    assert!(error.contains(&format!("position {bad}")), "{error}");
    assert!(error.contains("a string, not a number"), "{error}");
    let state = get(&router, "/v1/projections/balances/state/account:1").await;
    assert_eq!(
        (
            state.body["state"]["balance"].clone(),
            state.body["position"].clone()
        ),
        (json!(5), json!(ok))
    );
    // Waiting for a position past the failure is pointless: 503 at once.
    let wait = get(
        &router,
        &format!("/v1/projections/balances/state/account:1?min_position={bad}&wait_ms=60000"),
    )
    .await;
    assert_error(&wait, StatusCode::SERVICE_UNAVAILABLE, "not_yet_materialized");
}

#[tokio::test]
async fn unkeyed_events_are_counted_and_states_page_in_key_order() {
    let router = router();
    let by_sku = json!({"key": "/event_data/sku", "on": {"*": [{"op": "inc", "path": "/count"}]}});
    put(&router, "skus", &by_sku).await;
    let mut events: Vec<Value> = ["e", "a", "d", "b", "c", "a"]
        .iter()
        .map(|sku| ev("ItemSold", json!({"sku": sku})))
        .collect();
    events.push(ev("ItemSold", json!({"other": 1})));
    events.push(ev("ItemSold", json!({"sku": null})));
    let last = append(&router, "shop:1", events).await;
    assert_eq!(
        state_at(&router, "skus", "a", last).await.body["state"],
        json!({"count": 2})
    );
    let status = get(&router, "/v1/projections/skus").await;
    assert_eq!(
        (status.body["keys"].clone(), status.body["unkeyed"].clone()),
        (json!(5), json!(2))
    );
    let first = get(&router, "/v1/projections/skus/state?limit=2").await;
    assert_eq!(
        first.body,
        json!({"states": [{"key": "a", "state": {"count": 2}}, {"key": "b", "state": {"count": 1}}],
               "next_after_key": "b", "position": last})
    );
    let second = get(&router, "/v1/projections/skus/state?limit=2&after_key=b").await;
    assert_eq!(second.body["next_after_key"], "d");
    let third = get(&router, "/v1/projections/skus/state?limit=2&after_key=d").await;
    assert_eq!(
        (third.body["states"].clone(), third.body["next_after_key"].clone()),
        (json!([{"key": "e", "state": {"count": 1}}]), Value::Null)
    );
    let all = get(&router, "/v1/projections/skus/state").await;
    assert_eq!(all.body["states"].as_array().unwrap().len(), 5);
}

#[tokio::test]
async fn delete_removes_the_projection_and_the_name_can_be_used_again() {
    let router = router();
    put(&router, "balances", &bank()).await;
    let position = append(
        &router,
        "account:1",
        vec![ev("AccountCreated", json!({"initial": 1}))],
    )
    .await;
    state_at(&router, "balances", "account:1", position).await;
    let deleted = delete("/v1/projections/balances").send(&router).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert!(deleted.bytes.is_empty());
    assert_error(
        &get(&router, "/v1/projections/balances").await,
        StatusCode::NOT_FOUND,
        "projection_not_found",
    );
    assert_eq!(
        put(&router, "balances", &bank()).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        state_at(&router, "balances", "account:1", position).await.body["state"]["balance"],
        1
    );
}

#[tokio::test]
async fn event_status_lists_the_projections_whose_filter_matches() {
    let store = GatedStore::new();
    let router = router_over(store.clone(), 3, ServerConfig::default());
    put(&router, "balances", &bank()).await;
    let orders = json!({"filter": {"aggregate_type": "Order"}, "key": "all", "on": {"*": [{"op": "inc", "path": "/n"}]}});
    put(&router, "orders", &orders).await;
    let answer = Call::post(
        "/v1/aggregates/account:1/events",
        &json!({"events": [ev("AccountCreated", json!({"initial": 1}))]}),
    )
    .send(&router)
    .await;
    let event_id = answer.body["events"][0]["event_id"].as_str().unwrap().to_owned();
    let position = answer.body["position"].as_u64().unwrap();
    state_at(&router, "balances", "account:1", position).await;
    let status = get(&router, &format!("/v1/events/{event_id}/status")).await;
    assert_eq!(
        status.body,
        json!({"event_id": event_id, "position": position, "materialized": true,
               "projections": {"balances": true}})
    );
    // A projection still folding from the start (held at the gate) has not processed it.
    store.hold_from_start.store(true, Ordering::SeqCst);
    put(&router, "all-accounts", &json!({"key": "all", "on": {}})).await;
    let status = get(&router, &format!("/v1/events/{event_id}/status")).await;
    assert_eq!(status.body["materialized"], false, "{}", status.text());
    assert_eq!(
        status.body["projections"],
        json!({"balances": true, "all-accounts": false})
    );
    store.open();
    let unknown = get(&router, &format!("/v1/events/{}/status", Uuid::nil())).await;
    assert_error(&unknown, StatusCode::NOT_FOUND, "event_not_found");
    let bad = get(&router, "/v1/events/not-a-uuid/status").await;
    assert_error(&bad, StatusCode::BAD_REQUEST, "invalid_request");
}

const AUTH_FILE: &str = r#"
[[token]]
token = "admin-token-0123456789abcdef"
role = "admin"

[[token]]
token = "writer-token-0123456789abcdef"
role = "writer"

[[token]]
token = "reader-token-0123456789abcdef"
role = "reader"

[[token]]
token = "acc-admin-token-0123456789ab"
role = "admin"
aggregate_id_prefixes = ["acc:"]
"#;
const ADMIN: &str = "admin-token-0123456789abcdef";
const WRITER: &str = "writer-token-0123456789abcdef";
const READER: &str = "reader-token-0123456789abcdef";
const ACC_ADMIN: &str = "acc-admin-token-0123456789ab";

#[tokio::test]
async fn admins_manage_readers_read_and_prefix_limited_tokens_are_refused() {
    let auth = Auth::parse(AUTH_FILE, "test.toml").unwrap();
    let router = router_over(
        Arc::new(ModelStore::new()),
        3,
        ServerConfig::default().with_auth(auth),
    );
    let no_token = Call::put("/v1/projections/balances", &bank()).send(&router).await;
    assert_error(&no_token, StatusCode::UNAUTHORIZED, "unauthorized");
    for token in [WRITER, READER, ACC_ADMIN] {
        let answer = Call::put("/v1/projections/balances", &bank())
            .token(token)
            .send(&router)
            .await;
        assert_error(&answer, StatusCode::FORBIDDEN, "forbidden");
    }
    let created = Call::put("/v1/projections/balances", &bank())
        .token(ADMIN)
        .send(&router)
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let read = Call::get("/v1/projections/balances")
        .token(READER)
        .send(&router)
        .await;
    assert_eq!(read.status, StatusCode::OK);
    for call in [
        Call::get("/v1/projections/balances").token(ACC_ADMIN),
        Call::get("/v1/projections").token(ACC_ADMIN),
        Call::get("/v1/projections/balances/state").token(ACC_ADMIN),
        Call::post("/v1/projections/balances/rebuild", &json!({})).token(WRITER),
        delete("/v1/projections/balances").token(READER),
    ] {
        assert_error(&call.send(&router).await, StatusCode::FORBIDDEN, "forbidden");
    }
    let deleted = delete("/v1/projections/balances")
        .token(ADMIN)
        .send(&router)
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
}
