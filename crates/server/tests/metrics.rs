//! `GET /metrics`: what appends, errors, requests and subscribers add, over the real engine.
//!
//! The recorder is global to the process, so this file holds one test: counters are compared
//! before and after, and no other test of this binary moves them meanwhile.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use common::{Call, event, events};
use factstore_engine::store::EmbeddedStore;
use factstore_engine::{Engine, EngineOptions};
use serde_json::json;

/// The value of the sample `name{labels}` (labels exactly as rendered), 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            (key == series).then(|| value.parse::<f64>().unwrap())
        })
        .unwrap_or(0.0)
}

async fn scrape(router: &Router) -> String {
    let answer = Call::get("/metrics").send(router).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    answer.text()
}

#[tokio::test]
async fn metrics_count_appends_errors_requests_fsyncs_and_subscribers() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(Engine::open(dir.path(), EngineOptions::default()).unwrap());
    // Two apps in one process: the second must not fail installing the recorder again.
    let _first = factstore_server::app(Arc::new(EmbeddedStore::new(engine.clone())));
    let router = factstore_server::app(Arc::new(EmbeddedStore::new(engine.clone())));
    let before = scrape(&router).await;

    let body = json!({"events": [
        {"aggregate_type": "A", "event_type": "E", "event_data": {"n": 1}},
        {"aggregate_type": "A", "event_type": "E", "event_data": {"n": 2}, "metadata": {"k": "v"}},
        {"aggregate_type": "A", "event_type": "E", "event_data": {}},
    ]});
    let payload_bytes = r#"{"n":1}"#.len() + r#"{"n":2}"#.len() + r#"{"k":"v"}"#.len() + "{}".len();
    let answer = Call::post("/v1/aggregates/m:1/events", &body).send(&router).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());
    let replay_id = answer.body["events"][0]["event_id"].as_str().unwrap().to_owned();
    let answer = Call::post("/v1/aggregates/m:2/events", &events(1))
        .send(&router)
        .await;
    assert_eq!(answer.status, StatusCode::CREATED);
    // An idempotent retry: a replayed request, no event written.
    let mut retry = event("E");
    retry["event_id"] = json!(replay_id);
    retry["aggregate_type"] = json!("A");
    retry["event_data"] = json!({"n": 1});
    let answer = Call::post("/v1/aggregates/m:1/events", &json!({"events": [retry]}))
        .send(&router)
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    // Errors: two bad requests, one conflict, one unknown route.
    for _ in 0..2 {
        let answer = Call::post_raw("/v1/aggregates/m:1/events", "{")
            .send(&router)
            .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    }
    let answer = Call::post(
        "/v1/aggregates/m:1/events",
        &json!({"expected_version": 0, "events": [event("E")]}),
    )
    .send(&router)
    .await;
    assert_eq!(answer.status, StatusCode::CONFLICT);
    let answer = Call::get("/v1/no/such/route/12345").send(&router).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    // Reads of two different aggregates: one route series, not one per id.
    for id in ["m:1", "m:2"] {
        let answer = Call::get(&format!("/v1/aggregates/{id}/events"))
            .send(&router)
            .await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    let subscribers = factstore_server::metrics::subscriber_guard();
    let second = factstore_server::metrics::subscriber_guard();

    let after = scrape(&router).await;
    let delta = |series: &str| sample(&after, series) - sample(&before, series);
    assert_eq!(delta(r#"factstore_append_requests_total{result="created"}"#), 2.0);
    assert_eq!(
        delta(r#"factstore_append_requests_total{result="replayed"}"#),
        1.0
    );
    assert_eq!(delta("factstore_append_events_total"), 4.0);
    assert_eq!(
        delta("factstore_append_bytes_total"),
        (payload_bytes + r#"{"amount":1}"#.len()) as f64
    );
    assert_eq!(delta("factstore_append_batch_events_count"), 2.0);
    assert_eq!(delta("factstore_append_batch_events_sum"), 4.0);
    assert_eq!(delta(r#"factstore_append_batch_events_bucket{le="1"}"#), 1.0);
    assert_eq!(delta(r#"factstore_append_batch_events_bucket{le="5"}"#), 2.0);
    // Each written append is one commit group here (they were sent one after another).
    assert!(delta("factstore_fsync_duration_seconds_count") >= 2.0, "{after}");
    assert!(
        after.contains(r#"factstore_fsync_duration_seconds_bucket{le="+Inf"}"#),
        "{after}"
    );
    assert_eq!(delta(r#"factstore_errors_total{code="invalid_request"}"#), 2.0);
    assert_eq!(
        delta(r#"factstore_errors_total{code="wrong_expected_version"}"#),
        1.0
    );
    assert_eq!(delta(r#"factstore_errors_total{code="not_found"}"#), 1.0);
    let route = "/v1/aggregates/{aggregate_id}/events";
    assert_eq!(
        delta(&format!(
            r#"factstore_http_requests_total{{method="POST",route="{route}",status="201"}}"#
        )),
        2.0
    );
    assert_eq!(
        delta(&format!(
            r#"factstore_http_requests_total{{method="POST",route="{route}",status="400"}}"#
        )),
        2.0
    );
    assert_eq!(
        delta(&format!(
            r#"factstore_http_requests_total{{method="GET",route="{route}",status="200"}}"#
        )),
        2.0
    );
    assert_eq!(
        delta(r#"factstore_http_requests_total{method="GET",route="unmatched",status="404"}"#),
        1.0
    );
    assert_eq!(
        delta(&format!(
            r#"factstore_http_request_duration_seconds_count{{method="GET",route="{route}"}}"#
        )),
        2.0
    );
    assert!(
        !after.contains("m:1") && !after.contains("12345"),
        "raw paths leak into labels"
    );
    assert_eq!(delta("factstore_subscribers"), 2.0);
    assert_eq!(sample(&after, "factstore_head_position"), 4.0);
    assert!(after.contains("# HELP factstore_append_events_total"), "{after}");
    assert!(
        after.contains("# TYPE factstore_fsync_duration_seconds histogram"),
        "{after}"
    );

    drop(subscribers);
    drop(second);
    let last = scrape(&router).await;
    assert_eq!(
        sample(&last, "factstore_subscribers"),
        sample(&before, "factstore_subscribers")
    );
}
