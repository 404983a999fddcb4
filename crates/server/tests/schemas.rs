//! Schemas and upcasting over HTTP: appends validated against the registered schemas (422 with
//! every failing field, nothing written), and every read path (one aggregate, all events, one
//! event, load, a subscription both from history and live) returning events upcast to the
//! newest version, while `raw=true` returns them exactly as stored.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use factstore_core::{Commit, EventStore, ExpectedVersion, Limits, NewEvent};
use factstore_server::app;
use factstore_testkit::model::ModelStore;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

async fn call(router: &Router, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn deposit(version: u32, data: Value) -> Value {
    json!({"aggregate_type": "Account", "event_type": "MoneyDeposited", "event_version": version, "event_data": data})
}

async fn append(router: &Router, events: Vec<Value>) -> (StatusCode, Value) {
    call(
        router,
        "POST",
        "/v1/aggregates/account:1/events",
        Some(json!({"events": events})),
    )
    .await
}

/// What a persistent group over every deposit, created now from the beginning, delivers to its
/// first poll.
async fn polled_from_the_start(router: &Router) -> Value {
    let group = json!({"filter": {"event_types": ["MoneyDeposited"]}, "start": "beginning"});
    let (status, body) = call(router, "PUT", "/v1/subscriptions/workers", Some(group)).await;
    assert!(status.is_success(), "{body}");
    let (status, polled) = call(
        router,
        "POST",
        "/v1/subscriptions/workers/poll",
        Some(json!({"consumer": "w1", "max": 10, "wait_ms": 2000})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{polled}");
    polled
}

/// The first `n` events of a subscription's body, as (event_version, event_data).
async fn subscribed(router: &Router, uri: &str, n: usize) -> Vec<(u64, Value)> {
    let request = Request::builder().uri(uri).body(Body::empty()).unwrap();
    let mut body = router.clone().oneshot(request).await.unwrap().into_body();
    let mut buffer = String::new();
    let mut out = Vec::new();
    while out.len() < n {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("the stream went quiet")
            .unwrap()
            .unwrap();
        if let Ok(data) = frame.into_data() {
            buffer.push_str(std::str::from_utf8(&data).unwrap());
        }
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            if block.starts_with("event: event\n")
                && let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: "))
            {
                let event: Value = serde_json::from_str(data).unwrap();
                out.push((
                    event["event_version"].as_u64().unwrap(),
                    event["event_data"].clone(),
                ));
            }
        }
    }
    out
}

#[tokio::test]
async fn appends_are_validated_against_their_schema_and_refused_whole() {
    let router = app(Arc::new(ModelStore::new()));
    let schema = json!({
        "type": "object",
        "properties": {"amount": {"type": "number", "exclusiveMinimum": 0}, "currency": {"type": "string"}},
        "required": ["amount"]
    });
    let (status, _) = call(
        &router,
        "PUT",
        "/v1/schemas/MoneyDeposited/versions/1",
        Some(schema),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = append(
        &router,
        vec![
            deposit(1, json!({"amount": 10})),
            deposit(1, json!({"amount": 0, "currency": 5})),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "schema_violation");
    let paths: Vec<(u64, &str)> = body["error"]["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["event_index"].as_u64().unwrap(), v["path"].as_str().unwrap()))
        .collect();
    assert_eq!(paths, [(1, "/amount"), (1, "/currency")]);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("event 1 (MoneyDeposited v1) at /amount"),
        "{message}"
    );
    let (_, head) = call(&router, "GET", "/v1/head", None).await;
    assert_eq!(head["position"], 0, "nothing was written");
    // A version without a schema is refused too; a valid append goes through.
    let (status, body) = append(&router, vec![deposit(2, json!({"amount": 10}))]).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body["error"]["violations"][0]["message"]
            .as_str()
            .unwrap()
            .contains("no schema")
    );
    let (status, _) = append(&router, vec![deposit(1, json!({"amount": 10}))]).await;
    assert_eq!(status, StatusCode::CREATED);
}

/// A version is checked against the one before it: a later version before that one is its
/// own refusal, naming the version to register first, and the versions then go in in order.
#[tokio::test]
async fn a_version_before_its_predecessor_is_refused_naming_the_missing_version() {
    let router = app(Arc::new(ModelStore::new()));
    let v1 = json!({"type": "object", "properties": {"amount": {"type": "number"}}, "required": ["amount"]});
    let mut v2 = v1.clone();
    v2["properties"]["currency"] = json!({"type": "string"});
    let uri = |n: u32| format!("/v1/schemas/MoneyDeposited/versions/{n}");

    let (status, body) = call(&router, "PUT", &uri(2), Some(v2.clone())).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "schema_version_missing", "{body}");
    assert_eq!(
        body["error"]["message"],
        "version 2 of event type 'MoneyDeposited' needs version 1 registered first"
    );
    assert_eq!(
        (&body["error"]["event_type"], &body["error"]["version"]),
        (&json!("MoneyDeposited"), &json!(2))
    );
    let (status, _) = call(&router, "GET", "/v1/schemas/MoneyDeposited", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "the refusal registered nothing");

    let (status, body) = call(&router, "PUT", &uri(1), Some(v1)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = call(&router, "PUT", &uri(2), Some(v2)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // A gap further up is the same refusal; an incompatible successor is the other one.
    let (_, body) = call(&router, "PUT", &uri(4), Some(json!({"type": "object"}))).await;
    assert_eq!(body["error"]["code"], "schema_version_missing", "{body}");
    let (_, body) = call(&router, "PUT", &uri(3), Some(json!({"type": "object"}))).await;
    assert_eq!(body["error"]["code"], "incompatible_schema", "{body}");
}

#[tokio::test]
async fn every_read_path_upcasts_and_raw_reads_return_the_stored_form() {
    let router = app(Arc::new(ModelStore::new()));
    let (status, appended) = append(
        &router,
        vec![
            deposit(1, json!({"amt": 500})),
            deposit(2, json!({"amount": 7, "currency": "EUR"})),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{appended}");
    let first_id = appended["events"][0]["event_id"].as_str().unwrap().to_owned();
    // Before any upcaster: the subscription's live feed holds these events already.
    let upcaster = json!({"to_version": 2, "ops": [
        {"op": "rename", "from": "/amt", "path": "/amount"},
        {"op": "default", "path": "/currency", "value": "USD"}
    ]});
    let (status, view) = call(&router, "PUT", "/v1/upcasters/MoneyDeposited/1", Some(upcaster)).await;
    assert_eq!(status, StatusCode::CREATED, "{view}");
    assert_eq!(view["to_version"], 2);
    let upcast = json!({"amount": 500, "currency": "USD"});
    let stored = json!({"amt": 500});

    let (_, page) = call(&router, "GET", "/v1/aggregates/account:1/events", None).await;
    assert_eq!(page["events"][0]["event_version"], 2);
    assert_eq!(page["events"][0]["event_data"], upcast);
    assert_eq!(
        page["events"][1]["event_data"],
        json!({"amount": 7, "currency": "EUR"})
    );
    let (_, raw) = call(&router, "GET", "/v1/aggregates/account:1/events?raw=true", None).await;
    assert_eq!(
        (
            raw["events"][0]["event_version"].clone(),
            raw["events"][0]["event_data"].clone()
        ),
        (json!(1), stored.clone())
    );

    let (_, all) = call(&router, "GET", "/v1/events", None).await;
    assert_eq!(all["events"][0]["event_data"], upcast);
    let (_, raw) = call(&router, "GET", "/v1/events?raw=true", None).await;
    assert_eq!(raw["events"][0]["event_data"], stored);

    let (_, one) = call(&router, "GET", &format!("/v1/events/{first_id}"), None).await;
    assert_eq!(one["event_data"], upcast);
    let (_, raw) = call(&router, "GET", &format!("/v1/events/{first_id}?raw=true"), None).await;
    assert_eq!(raw["event_data"], stored);

    let (_, loaded) = call(&router, "GET", "/v1/aggregates/account:1/load", None).await;
    assert_eq!(loaded["events"][0]["event_data"], upcast);

    // Subscriptions: history from the live feed (stored form inside), then a live event.
    let (status, _) = append(&router, vec![deposit(1, json!({"amt": 1}))]).await;
    assert_eq!(status, StatusCode::CREATED);
    let events = subscribed(&router, "/v1/subscribe", 3).await;
    assert_eq!(events[0], (2, upcast.clone()));
    assert_eq!(events[2], (2, json!({"amount": 1, "currency": "USD"})));
    let events = subscribed(&router, "/v1/subscribe?raw=true", 3).await;
    assert_eq!(events[0], (1, stored));
}

/// An upcaster registered after events it does not fit: the one event it fails on is read as
/// stored (its `event_version` says it was not upcast), and every other event of the same
/// page, aggregate, stream and group is read upcast. Failing the read instead would stop every
/// reader at that event for good.
#[tokio::test]
async fn an_event_an_upcaster_cannot_apply_to_is_read_as_stored_and_the_rest_upcast() {
    let router = app(Arc::new(ModelStore::new()));
    let (status, _) = append(
        &router,
        vec![
            deposit(1, json!({"amount": 5})),
            deposit(1, json!({"amount": {"value": 6}})),
            deposit(1, json!({"amount": 7})),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let upcaster = json!({"to_version": 2, "ops": [{"op": "set", "path": "/amount/value", "value": 1}]});
    let (status, _) = call(&router, "PUT", "/v1/upcasters/MoneyDeposited/1", Some(upcaster)).await;
    assert_eq!(status, StatusCode::CREATED);
    let versions = |events: &Value| -> Vec<u64> {
        events
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event_version"].as_u64().unwrap())
            .collect()
    };
    let (status, page) = call(&router, "GET", "/v1/events", None).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(versions(&page["events"]), [1, 2, 1]);
    assert_eq!(page["events"][1]["event_data"], json!({"amount": {"value": 1}}));
    assert_eq!(page["events"][0]["event_data"], json!({"amount": 5}), "as stored");
    let (status, aggregate) = call(&router, "GET", "/v1/aggregates/account:1/events", None).await;
    assert_eq!(status, StatusCode::OK, "{aggregate}");
    assert_eq!(versions(&aggregate["events"]), [1, 2, 1]);
    let (status, loaded) = call(&router, "GET", "/v1/aggregates/account:1/load", None).await;
    assert_eq!(status, StatusCode::OK, "{loaded}");
    assert_eq!(versions(&loaded["events"]), [1, 2, 1]);
    let first_id = page["events"][0]["event_id"].as_str().unwrap();
    let (status, one) = call(&router, "GET", &format!("/v1/events/{first_id}"), None).await;
    assert_eq!((status, one["event_version"].as_u64()), (StatusCode::OK, Some(1)));
    let streamed = subscribed(&router, "/v1/subscribe", 3).await;
    assert_eq!(streamed.iter().map(|(v, _)| *v).collect::<Vec<_>>(), [1, 2, 1]);

    let polled = polled_from_the_start(&router).await;
    assert_eq!(versions(&polled["events"]), [1, 2, 1]);

    // Each event read as stored is counted, for an operator to see.
    let request = Request::builder().uri("/metrics").body(Body::empty()).unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let text = String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    let failures: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("factstore_upcast_failures_total "))
        .unwrap_or_else(|| panic!("no factstore_upcast_failures_total in {text}"))
        .parse()
        .unwrap();
    assert!(failures >= 6.0, "{failures}");
}

#[tokio::test]
async fn projections_and_persistent_subscriptions_see_upcast_events() {
    let router = app(Arc::new(ModelStore::new()));
    let upcaster = json!({"to_version": 2, "ops": [{"op": "rename", "from": "/amt", "path": "/amount"}]});
    let (status, _) = call(&router, "PUT", "/v1/upcasters/MoneyDeposited/1", Some(upcaster)).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = append(
        &router,
        vec![deposit(1, json!({"amt": 500})), deposit(2, json!({"amount": 7}))],
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);

    let projection = json!({
        "filter": {"event_types": ["MoneyDeposited"]},
        "key": "aggregate_id",
        "initial": {"balance": 0},
        "on": {"MoneyDeposited": [{"op": "add", "path": "/balance", "from": "/event_data/amount"}]}
    });
    let (status, body) = call(&router, "PUT", "/v1/projections/balances", Some(projection)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, state) = call(
        &router,
        "GET",
        "/v1/projections/balances/state/account:1?min_position=2",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{state}");
    assert_eq!(state["state"]["balance"], 507, "the v1 event was folded upcast");

    let polled = polled_from_the_start(&router).await;
    let first = &polled["events"][0];
    assert_eq!(first["event_version"], 2);
    assert_eq!(first["event_data"], json!({"amount": 500}));
    assert_eq!(first["attempt"], 1);
}

/// A store written before payloads were checked strictly may hold an event whose `event_data`
/// does not parse. Every reader goes past it: reads return it as stored (no upcast), the
/// subscription and the persistent group deliver it and the events after it, and a projection
/// reading `event_data` treats its values as missing.
#[tokio::test]
async fn an_event_that_does_not_parse_from_an_older_store_stops_no_reader() {
    let store = Arc::new(ModelStore::new());
    let mut prepared = Commit::single(
        "account:1",
        ExpectedVersion::Any,
        vec![
            NewEvent::new("Account", "MoneyDeposited", json!({"amount": 5})),
            NewEvent::new("Account", "MoneyDeposited", json!({"amount": 6})),
            NewEvent::new("Account", "MoneyDeposited", json!({"amount": 7})),
        ],
    )
    .prepare(&Limits::default())
    .unwrap();
    // What an older, less strict door let through, written past today's.
    prepared.appends[0].events[1].event_data = r#"{"amount":6,"s":"\ud800"}"#.to_owned();
    store.commit_prepared(prepared).await.unwrap();
    let router = app(store);
    let upcaster = json!({"to_version": 2, "ops": [{"op": "default", "path": "/currency", "value": "EUR"}]});
    let (status, _) = call(&router, "PUT", "/v1/upcasters/MoneyDeposited/1", Some(upcaster)).await;
    assert_eq!(status, StatusCode::CREATED);

    let request = Request::builder().uri("/v1/events").body(Body::empty()).unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let text = std::str::from_utf8(&bytes).unwrap();
    assert!(
        text.contains(r#""event_version":1,"event_data":{"amount":6,"s":"\ud800"}"#),
        "{text}"
    );
    assert_eq!(text.matches(r#""currency":"EUR""#).count(), 2, "{text}");
    let request = Request::builder()
        .uri("/v1/aggregates/account:1/events")
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        router.clone().oneshot(request).await.unwrap().status(),
        StatusCode::OK
    );

    // The subscription goes past it: three events, in order, and no error.
    let request = Request::builder()
        .uri("/v1/subscribe")
        .body(Body::empty())
        .unwrap();
    let mut body = router.clone().oneshot(request).await.unwrap().into_body();
    let mut streamed = String::new();
    while streamed.matches("event: event\n").count() < 3 {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("the stream went quiet")
            .unwrap()
            .unwrap();
        if let Ok(data) = frame.into_data() {
            streamed.push_str(std::str::from_utf8(&data).unwrap());
        }
        assert!(!streamed.contains("event: error"), "{streamed}");
    }
    assert!(streamed.contains("id: 3\n"), "{streamed}");

    // A projection that reads event_data optionally folds all three; one that needs the
    // value fails naming why.
    let projection = json!({
        "key": "aggregate_id",
        "initial": {"n": 0, "total": 0},
        "on": {"MoneyDeposited": [
            {"op": "inc", "path": "/n"},
            {"op": "add", "path": "/total", "from": "/event_data/amount", "optional": true}]}
    });
    let (status, body) = call(&router, "PUT", "/v1/projections/deposits", Some(projection)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, state) = call(
        &router,
        "GET",
        "/v1/projections/deposits/state/account:1?min_position=3",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{state}");
    assert_eq!(state["state"], json!({"n": 3, "total": 12}));

    let group = json!({"filter": {"event_types": ["MoneyDeposited"]}, "start": "beginning"});
    let (status, body) = call(&router, "PUT", "/v1/subscriptions/workers", Some(group)).await;
    assert!(status.is_success(), "{body}");
    let request = Request::builder()
        .method("POST")
        .uri("/v1/subscriptions/workers/poll")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            json!({"consumer": "w1", "max": 10, "wait_ms": 2000}).to_string(),
        ))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        std::str::from_utf8(&bytes)
            .unwrap()
            .matches(r#""attempt":1"#)
            .count(),
        3
    );
}
