//! Lowered limits (as `factstore serve --max-…` sets them) are enforced with the codes of the
//! contract: identifier lengths 400, sizes and counts 413; the next request is still served.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use common::{Call, assert_error, event, events};
use factstore_core::Limits;
use factstore_testkit::model::ModelStore;
use serde_json::json;

fn lowered() -> Router {
    let limits = Limits {
        aggregate_id_bytes_max: 8,
        aggregate_type_bytes_max: 4,
        event_type_bytes_max: 5,
        created_by_bytes_max: 6,
        link_id_bytes_max: 7,
        event_payload_bytes_max: 64,
        events_per_request_max: 3,
        request_bytes_max: 2048,
        page_events_max: 5,
    };
    factstore_server::app(Arc::new(ModelStore::with_limits(limits)))
}

async fn still_serving(router: &Router) {
    let answer = Call::post(
        "/v1/aggregates/ok/events",
        &json!({"events": [{
        "aggregate_type": "Acc", "event_type": "Dep", "event_data": {"a": 1}}]}),
    )
    .send(router)
    .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());
}

#[tokio::test]
async fn identifier_limits_are_400() {
    let router = lowered();
    let bad = StatusCode::BAD_REQUEST;
    let small = |field: &str, value: &str| {
        let mut e = json!({"aggregate_type": "Acc", "event_type": "Dep", "event_data": {}});
        e[field] = json!(value);
        json!({ "events": [e] })
    };
    let answer = Call::post("/v1/aggregates/123456789/events", &small("event_type", "Dep"))
        .send(&router)
        .await;
    assert_error(&answer, bad, "invalid_request");
    assert!(answer.text().contains("at most 8"), "{}", answer.text());
    let answer = Call::get("/v1/aggregates/123456789/events").send(&router).await;
    assert_error(&answer, bad, "invalid_request");
    let answer = Call::post("/v1/aggregates/a/events", &small("aggregate_type", "Accnt"))
        .send(&router)
        .await;
    assert_error(&answer, bad, "invalid_request");
    assert!(answer.text().contains("aggregate_type"), "{}", answer.text());
    let answer = Call::post("/v1/aggregates/a/events", &small("event_type", "Deposit"))
        .send(&router)
        .await;
    assert_error(&answer, bad, "invalid_request");
    assert!(answer.text().contains("event_type"), "{}", answer.text());
    let answer = Call::post("/v1/aggregates/a/events", &small("created_by", "user:1234"))
        .send(&router)
        .await;
    assert_error(&answer, bad, "invalid_request");
    assert!(answer.text().contains("created_by"), "{}", answer.text());
    let answer = Call::get("/v1/events?event_type=Deposit").send(&router).await;
    assert_error(&answer, bad, "invalid_request");
    let answer = Call::get("/v1/events?correlation_id=12345678")
        .send(&router)
        .await;
    assert_error(&answer, bad, "invalid_request");
    still_serving(&router).await;
}

#[tokio::test]
async fn size_and_count_limits_are_413() {
    let router = lowered();
    let too_large = StatusCode::PAYLOAD_TOO_LARGE;
    let answer = Call::post(
        "/v1/aggregates/a/events",
        &json!({"events": [
        event("Dep"), event("Dep"), event("Dep"), event("Dep")]}),
    )
    .send(&router)
    .await;
    assert_error(&answer, too_large, "payload_too_large");
    assert!(answer.text().contains('3'), "{}", answer.text());
    let mut big = json!({"aggregate_type": "Acc", "event_type": "Dep", "event_data": {"x": "y".repeat(60)}});
    let answer = Call::post("/v1/aggregates/a/events", &json!({"events": [big.clone()]}))
        .send(&router)
        .await;
    assert_error(&answer, too_large, "payload_too_large");
    big["event_data"] = json!({"x": "y"});
    big["metadata"] = json!({"note": "z".repeat(60)});
    let answer = Call::post("/v1/aggregates/a/events", &json!({"events": [big]}))
        .send(&router)
        .await;
    assert_error(&answer, too_large, "payload_too_large");
    let mut body = events(1).to_string().into_bytes();
    body.extend(std::iter::repeat_n(b' ', 2048));
    let answer = Call::post_raw("/v1/aggregates/a/events", body)
        .send(&router)
        .await;
    assert_error(&answer, too_large, "payload_too_large");
    assert!(answer.text().contains("2048"), "{}", answer.text());
    still_serving(&router).await;
    let answer = Call::get("/v1/head").send(&router).await;
    assert_eq!(answer.body["position"], 1, "only the last append was written");
}

#[tokio::test]
async fn the_page_size_limit_caps_limit_and_the_default() {
    let router = lowered();
    for _ in 0..4 {
        let answer = Call::post(
            "/v1/aggregates/p/events",
            &json!({"events": [
            {"aggregate_type": "Acc", "event_type": "Dep", "event_data": {}},
            {"aggregate_type": "Acc", "event_type": "Dep", "event_data": {}}]}),
        )
        .send(&router)
        .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());
    }
    for uri in ["/v1/events?limit=6", "/v1/aggregates/p/events?limit=6"] {
        let answer = Call::get(uri).send(&router).await;
        assert_error(&answer, StatusCode::BAD_REQUEST, "invalid_request");
        assert!(answer.text().contains("between 1 and 5"), "{}", answer.text());
    }
    // Without `limit` a page is the smaller of the default (1000) and the maximum.
    let answer = Call::get("/v1/events").send(&router).await;
    assert_eq!(answer.body["events"].as_array().unwrap().len(), 5);
    let answer = Call::get("/v1/aggregates/p/events").send(&router).await;
    assert_eq!(answer.body["events"].as_array().unwrap().len(), 5);
    assert_eq!(answer.body["next_from_version"], 6);
}
