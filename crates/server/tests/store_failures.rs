//! A server whose disk fails: no answer names a file of the server, and once the store refuses
//! writes until a restart, the 503, `/health` and `/metrics` say so and why.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use common::{Answer, Call, assert_error, events};
use factstore_core::EventStore;
use factstore_engine::store::EmbeddedStore;
use factstore_engine::{Engine, EngineOptions};
use factstore_projections::storage::JournalStorage;
use factstore_projections::{Projections, ProjectionsOptions};
use factstore_schemas::SchemaRegistry;
use factstore_server::{AppState, ServerConfig, app_with_state};
use factstore_subscriptions::storage::FileStorage;
use factstore_subscriptions::{Options as SubscriptionOptions, Subscriptions};
use factstore_testkit::faultfs::{FaultFs, Repeat};
use factstore_testkit::wait::until_ok;
use serde_json::json;

/// The data folder: a name no answer may contain.
const DATA: &str = "/srv/secret-data-dir-7f3a";

/// The server `factstore serve` builds: the engine on `store_fs`, the schema registry,
/// projections and groups on `state_fs`, all under [`DATA`].
async fn server(store_fs: &FaultFs, state_fs: &FaultFs) -> Router {
    let data = Path::new(DATA);
    let options = EngineOptions {
        fs: Arc::new(store_fs.clone()),
        ..EngineOptions::default()
    };
    let engine = Arc::new(Engine::open(data, options).unwrap());
    let store: Arc<dyn EventStore> = Arc::new(EmbeddedStore::new(engine));
    let state_fs: Arc<dyn factstore_engine::io::FileSystem> = Arc::new(state_fs.clone());
    let schemas = factstore_schemas::storage::JournalStorage::open(state_fs.clone(), &data.join("schemas"))
        .and_then(|storage| SchemaRegistry::open(Box::new(storage)))
        .unwrap();
    let state = AppState::with_schemas(store, Arc::new(schemas), ServerConfig::default());
    let storage = JournalStorage::open(state_fs.clone(), &data.join("projections")).unwrap();
    let projections = Projections::open(
        state.store.clone(),
        Arc::new(storage),
        ProjectionsOptions::default(),
    )
    .await
    .unwrap();
    let storage = FileStorage::open(state_fs, &data.join("subscriptions")).unwrap();
    let subscriptions = Subscriptions::open(
        state.store.clone(),
        Arc::new(storage),
        SubscriptionOptions::default(),
    )
    .await
    .unwrap();
    app_with_state(
        state
            .with_subscriptions(subscriptions)
            .with_projections(projections),
    )
}

#[track_caller]
fn assert_no_path(answer: &Answer, what: &str) {
    let text = answer.text();
    assert!(
        !text.contains("secret-data-dir") && !text.contains(".journal") && !text.contains(".seg"),
        "{what} tells where the server keeps its data: {text}"
    );
}

fn counting() -> serde_json::Value {
    json!({"key": "aggregate_id", "initial": {"n": 0}, "on": {"*": [{"op": "inc", "path": "/n"}]}})
}

async fn append(router: &Router, n: usize) -> Answer {
    Call::post("/v1/aggregates/account:1/events", &events(n))
        .send(router)
        .await
}

/// Every write that meets a failing disk answers without a path: projections, groups, schemas,
/// the event log, snapshots, a failed projection's status, `/health`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_names_a_file_of_the_server() {
    let store_fs = FaultFs::new();
    let state_fs = FaultFs::new();
    let router = server(&store_fs, &state_fs).await;
    let answer = Call::put("/v1/projections/before", &counting())
        .send(&router)
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());

    // The projections', groups' and registry's disk fails; the event log's does not.
    state_fs.fail_sync_after(0, Repeat::Forever);
    let answer = Call::put("/v1/projections/after", &counting())
        .send(&router)
        .await;
    assert_error(&answer, StatusCode::SERVICE_UNAVAILABLE, "store_unavailable");
    assert_no_path(&answer, "a projection that cannot be created");
    let answer = Call::put("/v1/subscriptions/g", &json!({})).send(&router).await;
    assert!(answer.status.is_server_error(), "{}", answer.text());
    assert_no_path(&answer, "a group that cannot be created");
    let answer = Call::put(
        "/v1/schemas/MoneyDeposited/versions/1",
        &json!({"type": "object"}),
    )
    .send(&router)
    .await;
    assert_error(&answer, StatusCode::SERVICE_UNAVAILABLE, "store_unavailable");
    assert_no_path(&answer, "a schema that cannot be registered");

    // The running projection cannot record the events it folds: it fails, and says so.
    assert_eq!(append(&router, 2).await.status, StatusCode::CREATED);
    let status = until_ok("the projection to fail", Duration::from_secs(10), || async {
        let answer = Call::get("/v1/projections/before").send(&router).await;
        if answer.body["status"] == "failed" {
            Ok(answer)
        } else {
            Err(answer.text())
        }
    })
    .await;
    assert!(
        status.body["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("storage"))
    );
    assert_no_path(&status, "a projection whose storage failed");

    // The event log's disk fails: the store refuses writes from then on.
    store_fs.fail_sync_after(0, Repeat::Forever);
    for attempt in ["the failed write", "a write after it"] {
        let answer = append(&router, 1).await;
        assert_error(&answer, StatusCode::SERVICE_UNAVAILABLE, "store_unavailable");
        assert_no_path(&answer, attempt);
    }
    let snapshot = json!({"version": 1, "state": {}, "snapshot_type": "Account", "snapshot_version": 1});
    let answer = Call::put("/v1/aggregates/account:1/snapshots", &snapshot)
        .send(&router)
        .await;
    assert_error(&answer, StatusCode::SERVICE_UNAVAILABLE, "store_unavailable");
    assert_no_path(&answer, "a snapshot refused");
    assert_no_path(&Call::get("/health").send(&router).await, "/health");
}

/// A full disk poisons the event log: every later write is refused until a restart, and the
/// write's 503, `/health` and the `factstore_store_writable` gauge say so and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_refuses_writes_says_a_restart_is_needed_and_why() {
    let store_fs = FaultFs::new();
    let router = server(&store_fs, &FaultFs::new()).await;
    assert_eq!(append(&router, 1).await.status, StatusCode::CREATED);
    let health = Call::get("/health").send(&router).await;
    assert_eq!(
        (health.status, health.body.clone()),
        (StatusCode::OK, json!({"status": "ok"}))
    );
    let metrics = Call::get("/metrics").send(&router).await.text();
    assert!(metrics.contains("\nfactstore_store_writable 1\n"), "{metrics}");

    store_fs.disk_full_after_bytes(0);
    for attempt in ["the failed write", "a write after it"] {
        let answer = append(&router, 1).await;
        assert_error(&answer, StatusCode::SERVICE_UNAVAILABLE, "store_unavailable");
        let message = answer.body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("restarted") && message.contains("no storage space"),
            "{attempt}: {message}"
        );
        assert_no_path(&answer, attempt);
    }

    let health = Call::get("/health").send(&router).await;
    assert_eq!(health.status, StatusCode::OK, "reads are still served");
    assert_eq!(health.body["status"], "degraded", "{}", health.text());
    let reason = health.body["reason"].as_str().unwrap();
    assert!(
        reason.contains("writing the event log failed")
            && reason.contains("no storage space")
            && reason.contains("restarted"),
        "{reason}"
    );
    assert_no_path(&health, "/health");
    let metrics = Call::get("/metrics").send(&router).await.text();
    assert!(metrics.contains("\nfactstore_store_writable 0\n"), "{metrics}");
    // Reads go on.
    let read = Call::get("/v1/aggregates/account:1/events").send(&router).await;
    assert_eq!(read.status, StatusCode::OK);
}
