//! The snapshot endpoints, in-process: every status and code of `PUT` and `GET
//! /v1/aggregates/{id}/snapshots`, `…/snapshots/latest` and `…/load`, against the reference
//! model, with `--auth`, and over the embedded engine.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use common::{Call, assert_error, events};
use factstore_core::{EventStore, Limits};
use factstore_engine::store::EmbeddedStore;
use factstore_engine::{Engine, EngineOptions};
use factstore_server::{AppState, Auth, ServerConfig, app, app_with_state};
use factstore_testkit::faultfs::FaultFs;
use factstore_testkit::model::ModelStore;
use serde_json::{Value, json};

fn model() -> Router {
    app(Arc::new(ModelStore::new()))
}

async fn fill(router: &Router, aggregate_id: &str, n: usize) {
    let answer = Call::post(&format!("/v1/aggregates/{aggregate_id}/events"), &events(n))
        .send(router)
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());
}

async fn put(router: &Router, aggregate_id: &str, body: &Value) -> common::Answer {
    Call::put(&format!("/v1/aggregates/{aggregate_id}/snapshots"), body)
        .send(router)
        .await
}

async fn get(router: &Router, uri: &str) -> common::Answer {
    Call::get(uri).send(router).await
}

fn snapshot(version: u64, state: Value) -> Value {
    json!({"version": version, "state": state, "snapshot_type": "Account", "snapshot_version": 1})
}

#[tokio::test]
async fn a_put_is_201_then_200_when_it_replaces_and_reads_back() {
    let router = model();
    fill(&router, "account:ACC-001", 5).await;
    let first = put(&router, "account:ACC-001", &snapshot(3, json!({"balance": 300}))).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text());
    let created_at = first.body["created_at"].as_str().unwrap().to_owned();
    assert_eq!(
        first.body,
        json!({"aggregate_id": "account:ACC-001", "version": 3, "snapshot_type": "Account",
               "snapshot_version": 1, "created_at": created_at})
    );
    assert!(
        created_at.ends_with('Z') && created_at.len() == 27,
        "{created_at}"
    );

    // The same version again replaces it: 200, and the new state is the one read back.
    let body = json!({"version": 3, "state": {"balance": 333}, "snapshot_type": "AccountV2",
                      "snapshot_version": 2});
    let again = put(&router, "account%3AACC-001", &body).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text());
    assert_eq!(again.body["snapshot_type"], "AccountV2");
    // snapshot_version defaults to 1.
    let at_five = put(
        &router,
        "account:ACC-001",
        &json!({"version": 5, "state": {"balance": 500}, "snapshot_type": "Account"}),
    )
    .await;
    assert_eq!(at_five.status, StatusCode::CREATED);
    assert_eq!(at_five.body["snapshot_version"], 1);

    let latest = get(&router, "/v1/aggregates/account:ACC-001/snapshots/latest").await;
    assert_eq!(latest.status, StatusCode::OK);
    assert_eq!(latest.body["version"], 5);
    assert_eq!(latest.body["state"], json!({"balance": 500}));
    assert_eq!(latest.body["aggregate_id"], "account:ACC-001");
    let below = get(
        &router,
        "/v1/aggregates/account:ACC-001/snapshots/latest?max_version=4",
    )
    .await;
    assert_eq!(below.status, StatusCode::OK);
    assert_eq!(
        below.body,
        json!({"aggregate_id": "account:ACC-001", "version": 3, "snapshot_type": "AccountV2",
               "snapshot_version": 2, "state": {"balance": 333},
               "created_at": below.body["created_at"]})
    );

    let list = get(&router, "/v1/aggregates/account:ACC-001/snapshots").await;
    assert_eq!(list.status, StatusCode::OK);
    let listed = list.body["snapshots"].as_array().unwrap();
    assert_eq!(list.body.as_object().unwrap().len(), 1, "only `snapshots`");
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["version"], 3);
    assert_eq!(listed[1]["version"], 5);
    assert_eq!(
        listed[0].as_object().unwrap().keys().collect::<Vec<_>>(),
        ["created_at", "snapshot_type", "snapshot_version", "version"],
        "no state in a listing"
    );

    // Snapshots are not events.
    let head = get(&router, "/v1/head").await;
    assert_eq!(head.body["position"], 5);
    let read = get(&router, "/v1/events").await;
    assert_eq!(read.body["events"].as_array().unwrap().len(), 5);
}

#[tokio::test]
async fn a_version_the_aggregate_lacks_is_422_invalid_snapshot() {
    let router = model();
    fill(&router, "account:1", 2).await;
    let answer = put(&router, "account:1", &snapshot(3, json!({}))).await;
    assert_error(&answer, StatusCode::UNPROCESSABLE_ENTITY, "invalid_snapshot");
    assert_eq!(answer.body["error"]["aggregate_id"], "account:1");
    assert_eq!(answer.body["error"]["version"], 3);
    assert_eq!(answer.body["error"]["current_version"], 2);
    let answer = put(&router, "account:none", &snapshot(1, json!({}))).await;
    assert_error(&answer, StatusCode::UNPROCESSABLE_ENTITY, "invalid_snapshot");
    assert_eq!(answer.body["error"]["current_version"], 0);
    let list = get(&router, "/v1/aggregates/account:1/snapshots").await;
    assert_eq!(list.body, json!({"snapshots": []}), "nothing was stored");
}

#[tokio::test]
async fn bad_puts_are_400_413_or_415_even_for_a_missing_aggregate() {
    let router = model();
    fill(&router, "account:1", 2).await;
    let bad: Vec<(Value, &str)> = vec![
        (snapshot(1, json!([1])), "state must be a JSON object"),
        (snapshot(0, json!({})), "version must be at least 1"),
        (json!({"version": -1, "state": {}, "snapshot_type": "A"}), "-1"),
        (json!({"version": 1, "state": {}}), "snapshot_type"),
        (
            json!({"version": 1, "state": {}, "snapshot_type": ""}),
            "snapshot_type",
        ),
        (
            json!({"version": 1, "state": {}, "snapshot_type": "T".repeat(51)}),
            "snapshot_type",
        ),
        (
            json!({"version": 1, "state": {}, "snapshot_type": "A", "snapshot_version": 0}),
            "snapshot_version",
        ),
        (
            json!({"version": 1, "state": {}, "snapshot_type": "A", "snapshot_version": 2147483648_i64}),
            "snapshot_version",
        ),
        (json!({"version": 1, "snapshot_type": "A"}), "state"),
        (
            json!({"version": 1, "state": {}, "snapshot_type": "A", "extra": 1}),
            "extra",
        ),
        (
            json!({"version": 1, "state": {}, "snapshot_type": "A", "aggregate_id": "x"}),
            "aggregate_id",
        ),
    ];
    for aggregate_id in ["account:1", "account:missing"] {
        for (body, names) in &bad {
            let answer = put(&router, aggregate_id, body).await;
            assert_error(&answer, StatusCode::BAD_REQUEST, "invalid_request");
            let message = answer.body["error"]["message"].as_str().unwrap();
            assert!(message.contains(names), "{body}: {message}");
        }
    }
    let malformed = Call {
        method: axum::http::Method::PUT,
        ..Call::post_raw("/v1/aggregates/account:1/snapshots", "{\"version\": 1,")
    }
    .send(&router)
    .await;
    assert_error(&malformed, StatusCode::BAD_REQUEST, "invalid_request");
    let answer = Call::put(
        "/v1/aggregates/account:1/snapshots?version=1",
        &snapshot(1, json!({})),
    )
    .send(&router)
    .await;
    assert_error(&answer, StatusCode::BAD_REQUEST, "invalid_request");
    let answer = put(&router, "bad%07id", &snapshot(1, json!({}))).await;
    assert_error(&answer, StatusCode::BAD_REQUEST, "invalid_request");

    let big = json!({"s": "x".repeat(Limits::default().event_payload_bytes_max)});
    let answer = put(&router, "account:1", &snapshot(1, big)).await;
    assert_error(&answer, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");

    let mut call = Call::put("/v1/aggregates/account:1/snapshots", &snapshot(1, json!({})));
    call.headers = vec![("content-type".into(), "text/plain".into())];
    let answer = call.send(&router).await;
    assert_error(
        &answer,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    let list = get(&router, "/v1/aggregates/account:1/snapshots").await;
    assert_eq!(list.body, json!({"snapshots": []}), "no bad put stored anything");
}

#[tokio::test]
async fn latest_is_404_snapshot_not_found_and_checks_its_parameter() {
    let router = model();
    fill(&router, "account:1", 5).await;
    let answer = get(&router, "/v1/aggregates/account:1/snapshots/latest").await;
    assert_error(&answer, StatusCode::NOT_FOUND, "snapshot_not_found");
    assert_eq!(answer.body["error"]["aggregate_id"], "account:1");
    assert!(answer.body["error"].get("max_version").is_none());
    put(&router, "account:1", &snapshot(4, json!({}))).await;
    let answer = get(&router, "/v1/aggregates/account:1/snapshots/latest?max_version=3").await;
    assert_error(&answer, StatusCode::NOT_FOUND, "snapshot_not_found");
    assert_eq!(answer.body["error"]["max_version"], 3);
    let answer = get(&router, "/v1/aggregates/nobody/snapshots/latest").await;
    assert_error(&answer, StatusCode::NOT_FOUND, "snapshot_not_found");
    for query in [
        "max_version=0",
        "max_version=-1",
        "max_version=x",
        "version=3",
        "max_version=1&max_version=2",
    ] {
        let answer = get(
            &router,
            &format!("/v1/aggregates/nobody/snapshots/latest?{query}"),
        )
        .await;
        assert_error(&answer, StatusCode::BAD_REQUEST, "invalid_request");
    }
    let answer = get(&router, "/v1/aggregates/account:1/snapshots?limit=1").await;
    assert_error(&answer, StatusCode::BAD_REQUEST, "invalid_request");
    let answer = get(&router, "/v1/aggregates/nobody/snapshots").await;
    assert_eq!(
        (answer.status, answer.body.clone()),
        (StatusCode::OK, json!({"snapshots": []}))
    );
}

#[tokio::test]
async fn load_answers_the_latest_snapshot_and_the_events_after_it() {
    // A page of two events, so that load must page through the store.
    let limits = Limits {
        page_events_max: 2,
        ..Limits::default()
    };
    let router = app(Arc::new(ModelStore::with_limits(limits)));
    let answer = get(&router, "/v1/aggregates/account:1/load").await;
    assert_error(&answer, StatusCode::NOT_FOUND, "aggregate_not_found");
    assert_eq!(answer.body["error"]["aggregate_id"], "account:1");

    fill(&router, "account:1", 5).await;
    let versions = |answer: &common::Answer| -> Vec<u64> {
        answer.body["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["version"].as_u64().unwrap())
            .collect()
    };
    let answer = get(&router, "/v1/aggregates/account:1/load").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(answer.body["aggregate_id"], "account:1");
    assert_eq!(answer.body["version"], 5);
    assert_eq!(answer.body["snapshot"], Value::Null);
    assert_eq!(versions(&answer), [1, 2, 3, 4, 5]);
    assert_eq!(answer.body["events"][0]["event_type"], "MoneyDeposited");

    put(&router, "account:1", &snapshot(2, json!({"at": 2}))).await;
    let answer = get(&router, "/v1/aggregates/account%3A1/load").await;
    assert_eq!(answer.body["snapshot"]["version"], 2);
    assert_eq!(answer.body["snapshot"]["state"], json!({"at": 2}));
    assert_eq!(versions(&answer), [3, 4, 5]);

    put(&router, "account:1", &snapshot(5, json!({"at": 5}))).await;
    let answer = get(&router, "/v1/aggregates/account:1/load").await;
    assert_eq!(answer.body["version"], 5);
    assert_eq!(answer.body["snapshot"]["version"], 5);
    assert_eq!(versions(&answer), Vec::<u64>::new());
    assert_eq!(
        answer.body.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["aggregate_id", "events", "snapshot", "version"]
    );

    let answer = get(&router, "/v1/aggregates/account:1/load?from_version=1").await;
    assert_error(&answer, StatusCode::BAD_REQUEST, "invalid_request");
    let answer = get(&router, "/v1/aggregates/a%00b/load").await;
    assert_error(&answer, StatusCode::BAD_REQUEST, "invalid_request");
}

const AUTH_FILE: &str = r#"
[[token]]
token = "writer-token-0123456789abcdef"
role = "writer"

[[token]]
token = "reader-token-0123456789abcdef"
role = "reader"

[[token]]
token = "acc-writer-token-0123456789ab"
role = "writer"
aggregate_id_prefixes = ["acc:"]

[[token]]
token = "acc-reader-token-0123456789ab"
role = "reader"
aggregate_id_prefixes = ["acc:"]
"#;
const WRITER: &str = "writer-token-0123456789abcdef";
const READER: &str = "reader-token-0123456789abcdef";
const ACC_WRITER: &str = "acc-writer-token-0123456789ab";
const ACC_READER: &str = "acc-reader-token-0123456789ab";

#[tokio::test]
async fn writers_put_readers_read_and_prefixes_hold() {
    let auth = Auth::parse(AUTH_FILE, "test.toml").unwrap();
    let router = app_with_state(AppState::new(
        Arc::new(ModelStore::new()),
        ServerConfig::default().with_auth(auth),
    ));
    for id in ["acc:1", "ord:1"] {
        let answer = Call::post(&format!("/v1/aggregates/{id}/events"), &events(2))
            .token(WRITER)
            .send(&router)
            .await;
        assert_eq!(answer.status, StatusCode::CREATED);
    }
    let body = snapshot(2, json!({}));
    let put_as = |token: Option<&'static str>, id: &'static str| {
        let call = Call::put(&format!("/v1/aggregates/{id}/snapshots"), &body);
        let router = router.clone();
        async move {
            match token {
                Some(token) => call.token(token).send(&router).await,
                None => call.send(&router).await,
            }
        }
    };
    assert_error(
        &put_as(None, "acc:1").await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    assert_error(
        &put_as(Some(READER), "acc:1").await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_error(
        &put_as(Some(ACC_WRITER), "ord:1").await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    // Refused before the body is read: even a bad body is 403 outside the prefixes.
    let answer = Call::put("/v1/aggregates/ord:1/snapshots", &json!({"bad": true}))
        .token(ACC_WRITER)
        .send(&router)
        .await;
    assert_error(&answer, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(
        put_as(Some(ACC_WRITER), "acc:1").await.status,
        StatusCode::CREATED
    );
    assert_eq!(put_as(Some(WRITER), "ord:1").await.status, StatusCode::CREATED);

    for path in ["snapshots", "snapshots/latest", "load"] {
        let read = |token: &str, id: &str| Call::get(&format!("/v1/aggregates/{id}/{path}")).token(token);
        assert_eq!(
            read(READER, "ord:1").send(&router).await.status,
            StatusCode::OK,
            "{path}"
        );
        assert_eq!(
            read(ACC_READER, "acc:1").send(&router).await.status,
            StatusCode::OK,
            "{path}"
        );
        let answer = read(ACC_READER, "ord:1").send(&router).await;
        assert_error(&answer, StatusCode::FORBIDDEN, "forbidden");
        let answer = Call::get(&format!("/v1/aggregates/acc:1/{path}"))
            .send(&router)
            .await;
        assert_error(&answer, StatusCode::UNAUTHORIZED, "unauthorized");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_engine_snapshots_persist_and_load_works() {
    let fs = FaultFs::new();
    let open = || -> Arc<dyn EventStore> {
        let options = EngineOptions {
            fs: Arc::new(fs.clone()),
            ..EngineOptions::default()
        };
        Arc::new(EmbeddedStore::new(Arc::new(
            Engine::open(Path::new("/db"), options).unwrap(),
        )))
    };
    let store = open();
    let router = app(store.clone());
    fill(&router, "account:1", 4).await;
    let answer = put(&router, "account:1", &snapshot(3, json!({"balance": 3}))).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());
    let answer = put(&router, "account:1", &snapshot(9, json!({}))).await;
    assert_error(&answer, StatusCode::UNPROCESSABLE_ENTITY, "invalid_snapshot");
    let before = get(&router, "/v1/aggregates/account:1/load").await;
    drop(router);
    drop(store);
    fs.crash();
    let router = app(open());
    let after = get(&router, "/v1/aggregates/account:1/load").await;
    assert_eq!(after.status, StatusCode::OK);
    assert_eq!(after.body, before.body, "the same load after a crash");
    assert_eq!(after.body["snapshot"]["state"], json!({"balance": 3}));
    assert_eq!(after.body["events"].as_array().unwrap().len(), 1);
}
