//! `POST /v1/admin/archive` and `GET /v1/admin/storage` over the embedded engine with a
//! `file://` cold store: archived events read the same through every HTTP read path, the
//! numbers add up, and only admins may archive.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use common::{Call, assert_error};
use factstore_engine::archive::{ArchiveOptions, ObjectColdStore};
use factstore_engine::store::EmbeddedStore;
use factstore_engine::{Engine, EngineOptions};
use factstore_server::{AppState, Auth, ServerConfig, app_with_state};
use factstore_testkit::wait::until;
use serde_json::{Value, json};

fn engine(data: &Path, cold: &Path) -> Arc<Engine> {
    let store = ObjectColdStore::from_url(&format!("file://{}", cold.display())).expect("cold store");
    let options = EngineOptions {
        segment_bytes_max: 4096,
        memtable_events_max: 16,
        archive: Some(ArchiveOptions::new(Arc::new(store))),
        ..EngineOptions::default()
    };
    Arc::new(Engine::open(data, options).expect("open"))
}

fn router(engine: &Arc<Engine>, auth: Option<&str>) -> Router {
    let mut config = ServerConfig::default();
    if let Some(text) = auth {
        config = config.with_auth(Auth::parse(text, "auth.toml").expect("auth"));
    }
    app_with_state(AppState::new(
        Arc::new(EmbeddedStore::new(engine.clone())),
        config,
    ))
}

async fn settle(engine: &Engine) {
    until("the indexer to settle", Duration::from_secs(10), || async {
        engine.shared().index_quiet()
    })
    .await;
}

/// Every HTTP read path whose answer does not depend on the time of the read.
async fn reads(router: &Router) -> Vec<Value> {
    let mut out = Vec::new();
    for uri in [
        "/v1/events?limit=10000",
        "/v1/events?limit=10000&event_type=Withdrawn",
        "/v1/events?limit=10000&correlation_id=corr-1",
        "/v1/events?limit=10000&aggregate_id=acct-2",
        "/v1/events?limit=10000&aggregate_id_prefix=acct-3",
        "/v1/events?after_position=17&limit=5",
        "/v1/aggregates/acct-1/events",
        "/v1/aggregates/acct-4/events?direction=backward&limit=3",
        "/v1/aggregates/acct-0/load",
    ] {
        let answer = Call::get(uri).send(router).await;
        assert_eq!(answer.status, StatusCode::OK, "{uri}: {}", answer.text());
        out.push(answer.body);
    }
    let first = &out[0]["events"][3]["event_id"];
    let answer = Call::get(&format!("/v1/events/{}", first.as_str().expect("id")))
        .send(router)
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    out.push(answer.body);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archived_events_read_the_same_over_http_and_storage_reports_both_tiers() {
    let data = tempfile::tempdir().expect("tempdir");
    let cold = tempfile::tempdir().expect("tempdir");
    let engine = engine(data.path(), cold.path());
    let router = router(&engine, None);
    for i in 0..90 {
        const TYPES: [&str; 3] = ["Opened", "Deposited", "Withdrawn"];
        let body = json!({"events": (0..1 + i % 3).map(|j| json!({
            "aggregate_type": "Account",
            "event_type": TYPES[(i + j) % 3],
            "event_data": {"i": i, "pad": "x".repeat(120)},
            "metadata": {"correlation_id": format!("corr-{}", i % 4)}
        })).collect::<Vec<_>>()});
        let answer = Call::post(&format!("/v1/aggregates/acct-{}/events", i % 5), &body)
            .send(&router)
            .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());
    }
    settle(&engine).await;
    let before = reads(&router).await;
    let storage = Call::get("/v1/admin/storage").send(&router).await;
    assert_eq!(storage.status, StatusCode::OK);
    assert_eq!(storage.body["archived_events"], 0);
    assert_eq!(storage.body["cold_bytes"], 0);
    let hot_before = storage.body["hot_bytes"].as_u64().expect("hot_bytes");

    // A date far ahead archives every sealed, indexed segment.
    let answer = Call::post("/v1/admin/archive", &json!({"before": "2999-01-01"}))
        .send(&router)
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let archived_events = answer.body["archived_events"].as_u64().expect("archived_events");
    assert!(archived_events > 0, "{}", answer.body);
    assert!(answer.body["archived_bytes"].as_u64().expect("archived_bytes") > 0);
    let objects = std::fs::read_dir(cold.path().join("segments"))
        .expect("objects")
        .count();
    assert!(objects > 0, "objects are in the file:// store");

    assert_eq!(reads(&router).await, before, "archived events read the same");
    let storage = Call::get("/v1/admin/storage").send(&router).await;
    assert_eq!(storage.body["archived_events"], archived_events);
    assert_eq!(storage.body["events"], before[0]["head_position"]);
    assert!(storage.body["cold_bytes"].as_u64().expect("cold") > 0);
    assert!(
        storage.body["hot_bytes"].as_u64().expect("hot") < hot_before,
        "{}",
        storage.body
    );

    // A date before every event archives nothing more; the totals are those so far.
    let answer = Call::post("/v1/admin/archive", &json!({"before": "2000-01-01T00:00:00Z"}))
        .send(&router)
        .await;
    assert_eq!(answer.body["archived_events"], archived_events);

    for body in [
        json!({"before": "soon"}),
        json!({}),
        json!({"before": "2024-01-01", "x": 1}),
    ] {
        let answer = Call::post("/v1/admin/archive", &body).send(&router).await;
        assert_error(&answer, StatusCode::BAD_REQUEST, "invalid_request");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admins_archive_and_see_storage() {
    let data = tempfile::tempdir().expect("tempdir");
    let cold = tempfile::tempdir().expect("tempdir");
    let engine = engine(data.path(), cold.path());
    let auth = r#"
        [[token]]
        token = "reader-token-0123456789abcdef"
        role = "reader"
        [[token]]
        token = "writer-token-0123456789abcdef"
        role = "writer"
        [[token]]
        token = "admin-token-0123456789abcdef"
        role = "admin"
    "#;
    let router = router(&engine, Some(auth));
    for token in ["reader-token-0123456789abcdef", "writer-token-0123456789abcdef"] {
        let answer = Call::post("/v1/admin/archive", &json!({"before": "2024-01-01"}))
            .token(token)
            .send(&router)
            .await;
        assert_error(&answer, StatusCode::FORBIDDEN, "forbidden");
        let answer = Call::get("/v1/admin/storage").token(token).send(&router).await;
        assert_error(&answer, StatusCode::FORBIDDEN, "forbidden");
    }
    let answer = Call::post("/v1/admin/archive", &json!({"before": "2024-01-01"}))
        .send(&router)
        .await;
    assert_error(&answer, StatusCode::UNAUTHORIZED, "unauthorized");
    let answer = Call::post("/v1/admin/archive", &json!({"before": "2024-01-01"}))
        .token("admin-token-0123456789abcdef")
        .send(&router)
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(
        answer.body,
        json!({"archived_events": 0, "archived_bytes": 0, "hot_before_cut": 0})
    );
}

#[tokio::test]
async fn a_server_without_cold_storage_answers_archive_not_configured() {
    let data = tempfile::tempdir().expect("tempdir");
    let engine = Arc::new(Engine::open(data.path(), EngineOptions::default()).expect("open"));
    let router = router(&engine, None);
    let answer = Call::post("/v1/admin/archive", &json!({"before": "2023-01-01"}))
        .send(&router)
        .await;
    assert_error(&answer, StatusCode::CONFLICT, "archive_not_configured");
    let answer = Call::get("/v1/admin/storage").send(&router).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body["cold_bytes"], 0);
    assert_eq!(answer.body["archived_events"], 0);
}
