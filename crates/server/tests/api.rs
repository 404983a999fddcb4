//! The HTTP API, driven in-process with `oneshot` against the reference model store.
//!
//! Every test asserts the exact status, the `error.code` and the key details, and every bad
//! request is followed by a health check: a bad request must never break the server.

use std::sync::Arc;

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use factstore_core::{
    AggregatePage, AggregateQuery, CommitOutcome, Event, EventPage, EventQuery, EventStore, Head, Limits,
    PreparedCommit, PutSnapshot, Snapshot, SnapshotInfo, SnapshotStored, StoreError,
};
use factstore_server::app;
use factstore_testkit::model::ModelStore;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;
use uuid::Uuid;

/// One answer: status, content type and the body as JSON.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    content_type: String,
    body: Value,
}

impl Answer {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("<no error code>")
    }

    fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or("<no message>")
    }
}

struct Api {
    router: Router,
}

impl Api {
    fn new() -> Api {
        Api::over(Arc::new(ModelStore::new()))
    }

    fn over(store: Arc<dyn EventStore>) -> Api {
        Api { router: app(store) }
    }

    async fn request(&self, request: Request<Body>) -> Answer {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("the router never fails");
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let bytes = response.into_body().collect().await.expect("body").to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
        Answer {
            status,
            content_type,
            body,
        }
    }

    async fn send(&self, method: Method, uri: &str, body: impl Into<Body>) -> Answer {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.into())
            .expect("request");
        self.request(request).await
    }

    async fn get(&self, uri: &str) -> Answer {
        let request = Request::builder().uri(uri).body(Body::empty()).expect("request");
        self.request(request).await
    }

    async fn post(&self, uri: &str, body: &Value) -> Answer {
        self.send(Method::POST, uri, body.to_string()).await
    }

    /// Appends and checks it was created.
    async fn append_ok(&self, aggregate_id: &str, body: Value) -> Answer {
        let answer = self
            .post(&format!("/v1/aggregates/{aggregate_id}/events"), &body)
            .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{answer:?}");
        answer
    }

    /// Checks an error answer, then that the server still answers.
    async fn assert_error(&self, answer: &Answer, status: StatusCode, code: &str) {
        assert_eq!((answer.status, answer.code()), (status, code), "{answer:?}");
        assert_eq!(answer.content_type, "application/json");
        assert!(!answer.message().is_empty());
        let health = self.get("/health").await;
        assert_eq!(health.status, StatusCode::OK, "the server stopped answering");
    }

    async fn expect_get_error(&self, uri: &str, status: StatusCode, code: &str) -> Answer {
        let answer = self.get(uri).await;
        self.assert_error(&answer, status, code).await;
        answer
    }

    async fn expect_post_error(&self, uri: &str, body: &Value, status: StatusCode, code: &str) -> Answer {
        let answer = self.post(uri, body).await;
        self.assert_error(&answer, status, code).await;
        answer
    }

    async fn expect_raw_post_error(
        &self,
        uri: &str,
        body: impl Into<Body>,
        status: StatusCode,
        code: &str,
    ) -> Answer {
        let answer = self.send(Method::POST, uri, body).await;
        self.assert_error(&answer, status, code).await;
        answer
    }
}

fn event(event_type: &str) -> Value {
    json!({"aggregate_type": "Account", "event_type": event_type, "event_data": {"amount": 1}})
}

fn events(n: usize) -> Value {
    json!({ "events": (0..n).map(|_| event("MoneyDeposited")).collect::<Vec<_>>() })
}

fn positions(answer: &Answer) -> Vec<u64> {
    answer.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["position"].as_u64().expect("position"))
        .collect()
}

fn versions(answer: &Answer) -> Vec<u64> {
    answer.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["version"].as_u64().expect("version"))
        .collect()
}

#[tokio::test]
async fn health_is_ok() {
    let api = Api::new();
    let answer = api.get("/health").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.content_type, "application/json");
    assert_eq!(answer.body, json!({"status": "ok"}));
}

#[tokio::test]
async fn append_answers_201_with_positions_and_a_retry_answers_200_with_the_same() {
    let api = Api::new();
    let id = Uuid::now_v7();
    let mut first = event("AccountOpened");
    first["event_id"] = json!(id);
    let body = json!({"expected_version": 0, "events": [first, event("MoneyDeposited")]});
    let created = api.append_ok("account:1", body.clone()).await;
    assert_eq!(created.content_type, "application/json");
    assert_eq!(
        (
            created.body["version"].as_u64(),
            created.body["position"].as_u64()
        ),
        (Some(2), Some(2))
    );
    let appended = created.body["events"].as_array().expect("events");
    assert_eq!(appended.len(), 2);
    assert_eq!(appended[0]["event_id"], json!(id));
    assert_eq!(
        (appended[0]["version"].as_u64(), appended[0]["position"].as_u64()),
        (Some(1), Some(1))
    );
    let recorded_at = appended[0]["recorded_at"].as_str().expect("recorded_at");
    assert_eq!(
        recorded_at.len(),
        "2024-01-15T14:00:00.000000Z".len(),
        "{recorded_at}"
    );
    assert!(recorded_at.ends_with('Z'));

    // A retry of a batch whose ids are all client-chosen is 200 with the original outcome,
    // even after the aggregate moved on.
    let single = json!({"expected_version": 0, "events": [{"event_id": id, "aggregate_type": "Account",
        "event_type": "AccountOpened", "event_data": {"amount": 1}}]});
    let retry_first = api.post("/v1/aggregates/account:1/events", &single).await;
    assert_eq!(retry_first.status, StatusCode::OK, "{retry_first:?}");
    assert_eq!(retry_first.body["events"][0]["recorded_at"], json!(recorded_at));
    assert_eq!(
        (
            retry_first.body["version"].as_u64(),
            retry_first.body["position"].as_u64()
        ),
        (Some(1), Some(1))
    );
    let head = api.get("/v1/head").await;
    assert_eq!(head.body["position"], 2, "a retry writes nothing");
}

#[tokio::test]
async fn path_ids_are_percent_decoded() {
    let api = Api::new();
    api.append_ok("account%3AACC-001", events(1)).await;
    let read = api.get("/v1/aggregates/account:ACC-001/events").await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.body["aggregate_id"], "account:ACC-001");
    let read = api.get("/v1/aggregates/account%3aACC-001/events").await;
    assert_eq!(read.body["events"][0]["aggregate_id"], "account:ACC-001");
    // An encoded slash is part of the id, not a path separator.
    api.append_ok("a%2Fb", events(1)).await;
    let read = api.get("/v1/events?aggregate_id=a%2Fb").await;
    assert_eq!(positions(&read), vec![2]);
}

#[tokio::test]
async fn multi_aggregate_commit_is_atomic_and_idempotent() {
    let api = Api::new();
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let mut ea = event("OrderPlaced");
    ea["event_id"] = json!(a);
    ea["aggregate_type"] = json!("Order");
    let mut eb = event("StockReserved");
    eb["event_id"] = json!(b);
    eb["aggregate_type"] = json!("Inventory");
    let body = json!({"appends": [
        {"aggregate_id": "order:1", "expected_version": 0, "events": [ea]},
        {"aggregate_id": "inventory:1", "events": [eb]}
    ]});
    let created = api.post("/v1/events", &body).await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    assert_eq!(created.body["position"], 2);
    let appends = created.body["appends"].as_array().expect("appends");
    assert_eq!(appends.len(), 2);
    assert_eq!(appends[0]["aggregate_id"], "order:1");
    assert_eq!(appends[0]["version"], 1);
    assert_eq!(appends[0]["events"][0]["event_id"], json!(a));
    assert_eq!(appends[1]["aggregate_id"], "inventory:1");
    assert_eq!(appends[1]["events"][0]["position"], 2);

    let retry = api.post("/v1/events", &body).await;
    assert_eq!(retry.status, StatusCode::OK);
    assert_eq!(retry.body, created.body);

    // One failing append fails the whole commit, naming its aggregate.
    let failing = json!({"appends": [
        {"aggregate_id": "order:2", "events": [event("OrderPlaced")]},
        {"aggregate_id": "order:1", "expected_version": 5, "events": [event("OrderPlaced")]}
    ]});
    let answer = api
        .expect_post_error(
            "/v1/events",
            &failing,
            StatusCode::CONFLICT,
            "wrong_expected_version",
        )
        .await;
    assert_eq!(answer.body["error"]["aggregate_id"], "order:1");
    api.expect_get_error(
        "/v1/aggregates/order:2/events",
        StatusCode::NOT_FOUND,
        "aggregate_not_found",
    )
    .await;
}

#[tokio::test]
async fn conflicts_are_409_with_their_details() {
    let api = Api::new();
    api.append_ok("account:1", events(2)).await;
    let uri = "/v1/aggregates/account:1/events";

    let mut body = events(1);
    body["expected_version"] = json!(1);
    let answer = api
        .expect_post_error(uri, &body, StatusCode::CONFLICT, "wrong_expected_version")
        .await;
    assert_eq!(answer.body["error"]["aggregate_id"], "account:1");
    assert_eq!(answer.body["error"]["expected_version"], 1);
    assert_eq!(answer.body["error"]["current_version"], 2);

    body["expected_version"] = json!("exists");
    let answer = api
        .expect_post_error(
            "/v1/aggregates/account:2/events",
            &body,
            StatusCode::CONFLICT,
            "wrong_expected_version",
        )
        .await;
    assert_eq!(answer.body["error"]["expected_version"], "exists");
    assert_eq!(answer.body["error"]["current_version"], 0);

    let mut other = event("OrderPlaced");
    other["aggregate_type"] = json!("Order");
    let answer = api
        .expect_post_error(
            uri,
            &json!({"events": [other]}),
            StatusCode::CONFLICT,
            "aggregate_type_mismatch",
        )
        .await;
    assert_eq!(answer.body["error"]["aggregate_id"], "account:1");
    assert_eq!(answer.body["error"]["existing"], "Account");
    assert_eq!(answer.body["error"]["given"], "Order");

    // Same id, different content: a duplicate, not a retry.
    let id = Uuid::now_v7();
    let mut first = event("MoneyDeposited");
    first["event_id"] = json!(id);
    api.append_ok("account:1", json!({"events": [first.clone()]}))
        .await;
    first["event_data"] = json!({"amount": 2});
    let answer = api
        .expect_post_error(
            uri,
            &json!({"events": [first.clone()]}),
            StatusCode::CONFLICT,
            "duplicate_event_id",
        )
        .await;
    assert_eq!(answer.body["error"]["event_id"], json!(id));
    // Same id in another aggregate.
    let answer = api
        .expect_post_error(
            "/v1/aggregates/account:9/events",
            &json!({"events": [first]}),
            StatusCode::CONFLICT,
            "duplicate_event_id",
        )
        .await;
    assert_eq!(answer.body["error"]["event_id"], json!(id));

    // A condition that fails names the first conflicting position.
    let conditional = json!({
        "appends": [{"aggregate_id": "account:3", "events": [event("MoneyDeposited")]}],
        "condition": {"filter": {"event_types": ["MoneyDeposited"], "aggregate_id_prefix": "account:"},
                      "after_position": 1}
    });
    let answer = api
        .expect_post_error(
            "/v1/events",
            &conditional,
            StatusCode::CONFLICT,
            "condition_failed",
        )
        .await;
    assert_eq!(answer.body["error"]["conflicting_position"], 2);
    let head = api.get("/v1/head").await;
    assert_eq!(head.body["position"], 3, "no failed request wrote anything");
    let ok = json!({
        "appends": [{"aggregate_id": "account:3", "events": [event("MoneyDeposited")]}],
        "condition": {"filter": {"event_types": ["MoneyDeposited"]}, "after_position": 3}
    });
    assert_eq!(api.post("/v1/events", &ok).await.status, StatusCode::CREATED);
}

#[tokio::test]
async fn malformed_bodies_are_400_naming_the_problem() {
    let api = Api::new();
    let uri = "/v1/aggregates/account:1/events";
    let bad = StatusCode::BAD_REQUEST;

    let answer = api
        .expect_raw_post_error(uri, "{\"events\": [", bad, "invalid_request")
        .await;
    assert!(
        answer.message().contains("not valid JSON"),
        "{}",
        answer.message()
    );
    let answer = api.expect_raw_post_error(uri, "", bad, "invalid_request").await;
    assert!(answer.message().contains("empty"), "{}", answer.message());
    let answer = api
        .expect_raw_post_error(uri, b"{\"events\": \"\xff\"}".to_vec(), bad, "invalid_request")
        .await;
    assert!(answer.message().contains("UTF-8"), "{}", answer.message());
    let answer = api
        .expect_post_error(uri, &json!({"events": 5}), bad, "invalid_request")
        .await;
    assert!(answer.message().contains("invalid type"), "{}", answer.message());
    let answer = api
        .expect_post_error(uri, &json!({"events": [], "extra": 1}), bad, "invalid_request")
        .await;
    assert!(
        answer.message().contains("unknown field `extra`"),
        "{}",
        answer.message()
    );
    let mut with_unknown = event("E");
    with_unknown["colour"] = json!("red");
    let answer = api
        .expect_post_error(uri, &json!({"events": [with_unknown]}), bad, "invalid_request")
        .await;
    assert!(answer.message().contains("colour"), "{}", answer.message());
    let answer = api
        .expect_post_error(uri, &json!({"events": []}), bad, "invalid_request")
        .await;
    assert!(
        answer.message().contains("must not be empty"),
        "{}",
        answer.message()
    );
    let answer = api
        .expect_post_error(
            uri,
            &json!({"expected_version": -1, "events": [event("E")]}),
            bad,
            "invalid_request",
        )
        .await;
    assert!(answer.message().contains("negative"), "{}", answer.message());
    let answer = api
        .expect_post_error(
            uri,
            &json!({"expected_version": "latest", "events": [event("E")]}),
            bad,
            "invalid_request",
        )
        .await;
    assert!(answer.message().contains("latest"), "{}", answer.message());
    let mut bad_version = event("E");
    bad_version["event_version"] = json!(0);
    let answer = api
        .expect_post_error(uri, &json!({"events": [bad_version]}), bad, "invalid_request")
        .await;
    assert!(answer.message().contains("event_version"), "{}", answer.message());
    let mut bad_time = event("E");
    bad_time["created_at"] = json!("yesterday");
    let answer = api
        .expect_post_error(uri, &json!({"events": [bad_time]}), bad, "invalid_request")
        .await;
    assert!(answer.message().contains("yesterday"), "{}", answer.message());
    let mut not_object = event("E");
    not_object["event_data"] = json!([1, 2]);
    let answer = api
        .expect_post_error(uri, &json!({"events": [not_object]}), bad, "invalid_request")
        .await;
    assert!(answer.message().contains("event_data"), "{}", answer.message());
    let mut empty_type = event("E");
    empty_type["event_type"] = json!("");
    let answer = api
        .expect_post_error(uri, &json!({"events": [empty_type]}), bad, "invalid_request")
        .await;
    assert!(answer.message().contains("event_type"), "{}", answer.message());

    // One event id twice in one batch.
    let id = Uuid::now_v7();
    let mut twice = event("E");
    twice["event_id"] = json!(id);
    let answer = api
        .expect_post_error(
            uri,
            &json!({"events": [twice.clone(), twice]}),
            bad,
            "invalid_request",
        )
        .await;
    assert!(
        answer.message().contains("more than once"),
        "{}",
        answer.message()
    );
    let answer = api
        .expect_post_error(
            uri,
            &json!({"events": [{"event_id": "nope", "aggregate_type": "A",
        "event_type": "E", "event_data": {}}]}),
            bad,
            "invalid_request",
        )
        .await;
    assert!(
        answer.message().contains("event_id") || answer.message().contains("UUID"),
        "{}",
        answer.message()
    );

    // The multi-aggregate form.
    let answer = api
        .expect_post_error("/v1/events", &json!({"appends": []}), bad, "invalid_request")
        .await;
    assert!(answer.message().contains("appends"), "{}", answer.message());
    let twice = json!({"appends": [
        {"aggregate_id": "a", "events": [event("E")]},
        {"aggregate_id": "a", "events": [event("E")]}
    ]});
    let answer = api
        .expect_post_error("/v1/events", &twice, bad, "invalid_request")
        .await;
    assert!(
        answer.message().contains("more than once"),
        "{}",
        answer.message()
    );
    let bad_filter = json!({"appends": [{"aggregate_id": "a", "events": [event("E")]}],
        "condition": {"filter": {"event_type": ["E"]}}});
    let answer = api
        .expect_post_error("/v1/events", &bad_filter, bad, "invalid_request")
        .await;
    assert!(answer.message().contains("event_type"), "{}", answer.message());

    assert_eq!(
        api.get("/v1/head").await.body["position"],
        0,
        "nothing was written"
    );
}

#[tokio::test]
async fn content_type_must_be_json_when_given() {
    let api = Api::new();
    let body = events(1).to_string();
    let request = |content_type: Option<&str>| {
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri("/v1/aggregates/a/events");
        if let Some(content_type) = content_type {
            builder = builder.header(header::CONTENT_TYPE, content_type);
        }
        builder.body(Body::from(body.clone())).expect("request")
    };
    assert_eq!(api.request(request(None)).await.status, StatusCode::CREATED);
    let answer = api
        .request(request(Some("application/json; charset=utf-8")))
        .await;
    assert_eq!(answer.status, StatusCode::CREATED);
    let answer = api.request(request(Some("text/plain"))).await;
    api.assert_error(
        &answer,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    assert!(answer.message().contains("text/plain"));
}

#[tokio::test]
async fn bad_path_segments_are_400() {
    let api = Api::new();
    let bad = StatusCode::BAD_REQUEST;
    let answer = api
        .expect_get_error("/v1/aggregates/a%zz/events", bad, "invalid_request")
        .await;
    assert!(answer.message().contains("aggregate_id"), "{}", answer.message());
    let answer = api
        .expect_get_error("/v1/aggregates/a%FF/events", bad, "invalid_request")
        .await;
    assert!(answer.message().contains("UTF-8"), "{}", answer.message());
    let answer = api
        .expect_get_error("/v1/aggregates/a%01/events", bad, "invalid_request")
        .await;
    assert!(answer.message().contains("control"), "{}", answer.message());
    let long = "x".repeat(256);
    let answer = api
        .expect_get_error(&format!("/v1/aggregates/{long}/events"), bad, "invalid_request")
        .await;
    assert!(answer.message().contains("aggregate_id"), "{}", answer.message());
    api.expect_post_error(
        &format!("/v1/aggregates/{long}/events"),
        &events(1),
        bad,
        "invalid_request",
    )
    .await;
    let answer = api
        .expect_get_error("/v1/events/not-a-uuid", bad, "invalid_request")
        .await;
    assert!(answer.message().contains("UUID"), "{}", answer.message());
}

#[tokio::test]
async fn bad_parameters_are_400_even_for_an_unknown_aggregate() {
    let api = Api::new();
    let bad = StatusCode::BAD_REQUEST;
    let nowhere = "/v1/aggregates/nobody/events";
    for (query, named) in [
        ("limit=0", "limit"),
        ("limit=10001", "limit"),
        ("limit=ten", "limit"),
        ("from_version=0", "from_version"),
        ("to_version=0", "to_version"),
        ("from_version=-1", "negative"),
        ("from_version=%2B1", "from_version"),
        ("from=yesterday", "from"),
        ("to=2024-13-01", "to"),
        ("until=2024-01-01T25:00:00Z", "until"),
        ("as_of=tomorrow", "as_of"),
        ("direction=sideways", "direction"),
        ("raw=yes", "raw"),
        ("to=2024-01-01&until=2024-01-01", "until"),
        ("colour=red", "'colour'"),
        ("limit=5&limit=6", "limit"),
        ("limit=%zz", "limit"),
    ] {
        let answer = api
            .expect_get_error(&format!("{nowhere}?{query}"), bad, "invalid_request")
            .await;
        assert!(answer.message().contains(named), "{query}: {}", answer.message());
    }
    for (query, named) in [
        ("after_position=-5", "negative"),
        ("to_position=x", "to_position"),
        ("limit=0", "limit"),
        ("limit=10001", "limit"),
        ("event_type=a,,b", "event_type"),
        ("aggregate_type=", "aggregate_type"),
        ("from=2024-02-30", "from"),
        ("until=2024-01-01", "'until'"),
        ("event_types=A", "'event_types'"),
    ] {
        let answer = api
            .expect_get_error(&format!("/v1/events?{query}"), bad, "invalid_request")
            .await;
        assert!(answer.message().contains(named), "{query}: {}", answer.message());
    }
    let long = "c".repeat(256);
    let answer = api
        .expect_get_error(
            &format!("/v1/events?correlation_id={long}"),
            bad,
            "invalid_request",
        )
        .await;
    assert!(
        answer.message().contains("correlation_id"),
        "{}",
        answer.message()
    );
    let answer = api.expect_get_error("/v1/head?x=1", bad, "invalid_request").await;
    assert!(answer.message().contains("'x'"), "{}", answer.message());
    let answer = api
        .expect_post_error(
            "/v1/aggregates/a/events?dry_run=true",
            &events(1),
            bad,
            "invalid_request",
        )
        .await;
    assert!(answer.message().contains("dry_run"), "{}", answer.message());
    api.expect_get_error(
        &format!("/v1/events/{}?raw=1", Uuid::now_v7()),
        bad,
        "invalid_request",
    )
    .await;
}

#[tokio::test]
async fn not_found_errors_are_404_with_their_codes() {
    let api = Api::new();
    let answer = api
        .expect_get_error(
            "/v1/aggregates/nobody/events",
            StatusCode::NOT_FOUND,
            "aggregate_not_found",
        )
        .await;
    assert_eq!(answer.body["error"]["aggregate_id"], "nobody");
    let id = Uuid::now_v7();
    let answer = api
        .expect_get_error(
            &format!("/v1/events/{id}"),
            StatusCode::NOT_FOUND,
            "event_not_found",
        )
        .await;
    assert_eq!(answer.body["error"]["event_id"], json!(id));
    api.expect_get_error("/v1/nothing", StatusCode::NOT_FOUND, "not_found")
        .await;
    api.expect_get_error("/", StatusCode::NOT_FOUND, "not_found")
        .await;
    api.expect_get_error("/v1/head/", StatusCode::NOT_FOUND, "not_found")
        .await;
    let answer = api.send(Method::DELETE, "/v1/head", Body::empty()).await;
    api.assert_error(&answer, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
        .await;
    let answer = api.send(Method::PUT, "/v1/events", Body::empty()).await;
    api.assert_error(&answer, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
        .await;
    let request = Request::builder()
        .method(Method::DELETE)
        .uri("/v1/events")
        .body(Body::empty())
        .expect("request");
    let response = api.router.clone().oneshot(request).await.expect("response");
    let allow = response
        .headers()
        .get(header::ALLOW)
        .and_then(|v| v.to_str().ok());
    let mut allowed: Vec<&str> = allow.unwrap_or("").split(',').collect();
    allowed.sort_unstable();
    assert_eq!(
        allowed,
        vec!["GET", "HEAD", "POST"],
        "405 names the methods that are allowed"
    );
}

#[tokio::test]
async fn size_limits_are_413() {
    let api = Api::new();
    let uri = "/v1/aggregates/a/events";
    let too_large = StatusCode::PAYLOAD_TOO_LARGE;
    let answer = api
        .expect_post_error(uri, &events(1001), too_large, "payload_too_large")
        .await;
    assert!(answer.message().contains("1000"), "{}", answer.message());
    let mut big = event("E");
    big["event_data"] = json!({"blob": "x".repeat(1 << 20)});
    let answer = api
        .expect_post_error(uri, &json!({"events": [big]}), too_large, "payload_too_large")
        .await;
    assert!(answer.message().contains("event_data"), "{}", answer.message());
    // A body over 16 MiB is refused before it is parsed.
    let mut body = events(1).to_string().into_bytes();
    body.extend(std::iter::repeat_n(b' ', 16 << 20));
    let answer = api
        .expect_raw_post_error(uri, body, too_large, "payload_too_large")
        .await;
    assert!(
        answer.message().contains(&(16 << 20).to_string()),
        "{}",
        answer.message()
    );
    assert_eq!(api.get("/v1/head").await.body["position"], 0);
}

#[tokio::test]
async fn the_body_limit_is_the_stores() {
    let limits = Limits {
        request_bytes_max: 1000,
        ..Limits::default()
    };
    let api = Api::over(Arc::new(ModelStore::with_limits(limits)));
    let answer = api
        .expect_post_error(
            "/v1/aggregates/a/events",
            &events(20),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        )
        .await;
    assert!(answer.message().contains("1000"), "{}", answer.message());
    api.append_ok("a", events(2)).await;
}

/// Five aggregates, 3 events each, interleaved: positions 1..=15.
async fn seeded() -> Api {
    let api = Api::new();
    for round in 0..3 {
        for n in 0..5 {
            let kind = if n % 2 == 0 { "Even" } else { "Odd" };
            let mut e = event(kind);
            e["metadata"] =
                json!({"correlation_id": format!("corr-{n}"), "causation_id": format!("cause-{round}")});
            e["created_by"] = json!(format!("user:{round}"));
            e["created_at"] = json!(format!("2024-01-0{}T12:00:00Z", round + 1));
            if n == 4 {
                e["aggregate_type"] = json!("Order");
            }
            let id = if n == 4 {
                "order:4".to_owned()
            } else {
                format!("account:{n}")
            };
            api.append_ok(&id, json!({ "events": [e] })).await;
        }
    }
    api
}

#[tokio::test]
async fn reading_all_events_pages_through_next_after_position() {
    let api = seeded().await;
    let mut after = 0;
    let mut seen = Vec::new();
    loop {
        let page = api
            .get(&format!("/v1/events?after_position={after}&limit=4"))
            .await;
        assert_eq!(page.status, StatusCode::OK);
        assert_eq!(page.content_type, "application/json");
        assert_eq!(page.body["head_position"], 15);
        let got = positions(&page);
        let next = page.body["next_after_position"].as_u64().expect("next");
        seen.extend(got.iter().copied());
        if got.is_empty() {
            assert_eq!(next, 15);
            break;
        }
        after = next;
    }
    assert_eq!(seen, (1..=15).collect::<Vec<_>>());

    let page = api.get("/v1/events").await;
    assert_eq!(positions(&page).len(), 15);
    let first = &page.body["events"][0];
    assert_eq!(first["aggregate_id"], "account:0");
    assert_eq!(first["event_data"], json!({"amount": 1}));
    assert_eq!(first["created_at"], "2024-01-01T12:00:00.000000Z");
    assert_eq!(first["metadata"]["correlation_id"], "corr-0");

    // A filter that skips events still moves next_after_position to the end of the range.
    let page = api.get("/v1/events?event_type=Odd&to_position=10&limit=10").await;
    assert_eq!(positions(&page), vec![2, 4, 7, 9]);
    assert_eq!(page.body["next_after_position"], 10);
    let page = api.get("/v1/events?event_type=Odd&limit=2").await;
    assert_eq!(
        (positions(&page), page.body["next_after_position"].as_u64()),
        (vec![2, 4], Some(4))
    );
}

#[tokio::test]
async fn every_filter_of_get_events_applies() {
    let api = seeded().await;
    let cases: Vec<(&str, Vec<u64>)> = vec![
        ("event_type=Even,Odd", (1..=15).collect()),
        ("event_type=Even", vec![1, 3, 5, 6, 8, 10, 11, 13, 15]),
        ("aggregate_type=Order", vec![5, 10, 15]),
        ("aggregate_id=account%3A1", vec![2, 7, 12]),
        (
            "aggregate_id_prefix=account:",
            vec![1, 2, 3, 4, 6, 7, 8, 9, 11, 12, 13, 14],
        ),
        ("correlation_id=corr-3", vec![4, 9, 14]),
        ("causation_id=cause-1", vec![6, 7, 8, 9, 10]),
        ("created_by=user:2", vec![11, 12, 13, 14, 15]),
        ("from=2024-01-02&to=2024-01-02", vec![6, 7, 8, 9, 10]),
        ("from=2024-01-02T12:00:00.000001Z", vec![11, 12, 13, 14, 15]),
        ("to=2024-01-01T13:00:00%2B01:00", vec![1, 2, 3, 4, 5]),
        (
            "aggregate_type=Account&causation_id=cause-0&event_type=Odd",
            vec![2, 4],
        ),
        ("after_position=12&to_position=14", vec![13, 14]),
        ("as_of=2000-01-01", vec![]),
        ("raw=true", (1..=15).collect()),
        ("raw=false&limit=3", vec![1, 2, 3]),
    ];
    for (query, expected) in cases {
        let page = api.get(&format!("/v1/events?{query}")).await;
        assert_eq!(page.status, StatusCode::OK, "{query}: {page:?}");
        assert_eq!(positions(&page), expected, "{query}");
    }
}

#[tokio::test]
async fn reading_an_aggregate_pages_by_version_both_ways() {
    let api = Api::new();
    api.append_ok("account:1", events(5)).await;
    let uri = "/v1/aggregates/account:1/events";

    let page = api.get(&format!("{uri}?limit=2")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.body["aggregate_id"], "account:1");
    assert_eq!(page.body["aggregate_type"], "Account");
    assert_eq!(page.body["version"], 5);
    assert_eq!(
        (versions(&page), page.body["next_from_version"].as_u64()),
        (vec![1, 2], Some(3))
    );
    let page = api.get(&format!("{uri}?limit=2&from_version=3")).await;
    assert_eq!(
        (versions(&page), page.body["next_from_version"].as_u64()),
        (vec![3, 4], Some(5))
    );
    let page = api.get(&format!("{uri}?limit=2&from_version=5")).await;
    assert_eq!(versions(&page), vec![5]);
    assert!(page.body["next_from_version"].is_null());

    let page = api.get(&format!("{uri}?direction=backward&limit=2")).await;
    assert_eq!(
        (versions(&page), page.body["next_from_version"].as_u64()),
        (vec![5, 4], Some(3))
    );
    let page = api
        .get(&format!("{uri}?direction=backward&from_version=2&limit=2"))
        .await;
    assert_eq!(versions(&page), vec![2, 1]);
    assert!(page.body["next_from_version"].is_null());
    let page = api
        .get(&format!("{uri}?from_version=2&to_version=3&raw=true"))
        .await;
    assert_eq!(versions(&page), vec![2, 3]);
    let page = api.get(&format!("{uri}?direction=forward")).await;
    assert_eq!(page.body["events"][4]["version"], 5);
}

#[tokio::test]
async fn reading_an_aggregate_by_time() {
    let api = Api::new();
    for day in 1..=3 {
        let mut e = event("E");
        e["created_at"] = json!(format!("2024-01-0{day}T08:00:00Z"));
        api.append_ok("a", json!({"events": [e]})).await;
    }
    let uri = "/v1/aggregates/a/events";
    let page = api.get(&format!("{uri}?from=2024-01-02")).await;
    assert_eq!(versions(&page), vec![2, 3]);
    let page = api.get(&format!("{uri}?to=2024-01-02")).await;
    assert_eq!(versions(&page), vec![1, 2]);
    let page = api.get(&format!("{uri}?until=2024-01-01")).await;
    assert_eq!(versions(&page), vec![1]);
    assert_eq!(
        page.body["version"], 3,
        "until filters events; the version is still the current one"
    );

    // as_of is on recorded_at: the aggregate as the store knew it then.
    let recorded = page.body["events"][0]["recorded_at"]
        .as_str()
        .expect("recorded_at")
        .to_owned();
    let page = api.get(&format!("{uri}?as_of={recorded}")).await;
    assert!(page.body["version"].as_u64().expect("version") >= 1);
    api.expect_get_error(
        &format!("{uri}?as_of=2000-01-01"),
        StatusCode::NOT_FOUND,
        "aggregate_not_found",
    )
    .await;
}

#[tokio::test]
async fn one_event_and_the_head() {
    let api = Api::new();
    let head = api.get("/v1/head").await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.body, json!({"position": 0, "recorded_at": null}));

    let id = Uuid::now_v7();
    let mut e = event("MoneyDeposited");
    e["event_id"] = json!(id);
    e["event_version"] = json!(2);
    e["created_by"] = json!("user:123");
    e["metadata"] = json!({"correlation_id": "corr-123", "ip_address": "10.0.0.7"});
    let created = api.append_ok("account:ACC-001", json!({"events": [e]})).await;
    let recorded_at = created.body["events"][0]["recorded_at"].clone();

    let one = api.get(&format!("/v1/events/{id}")).await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(one.content_type, "application/json");
    assert_eq!(
        one.body,
        json!({
            "event_id": id,
            "position": 1,
            "aggregate_id": "account:ACC-001",
            "aggregate_type": "Account",
            "version": 1,
            "event_type": "MoneyDeposited",
            "event_version": 2,
            "event_data": {"amount": 1},
            "created_at": recorded_at,
            "recorded_at": recorded_at,
            "created_by": "user:123",
            "metadata": {"correlation_id": "corr-123", "ip_address": "10.0.0.7"}
        })
    );
    // The simple (unhyphenated) form of a UUID names the same event.
    let simple = api.get(&format!("/v1/events/{}?raw=true", id.simple())).await;
    assert_eq!(simple.body["event_id"], json!(id));

    let head = api.get("/v1/head").await;
    assert_eq!(head.body, json!({"position": 1, "recorded_at": recorded_at}));
}

/// A store that cannot write (as after a failed fsync) and whose reads fail inside.
#[derive(Debug, Default)]
struct BrokenStore {
    limits: Limits,
}

#[async_trait]
impl EventStore for BrokenStore {
    fn limits(&self) -> &Limits {
        &self.limits
    }

    async fn commit_prepared(&self, _commit: PreparedCommit) -> Result<CommitOutcome, StoreError> {
        Err(StoreError::Unavailable("fsync failed".into()))
    }

    async fn read_aggregate(&self, _query: AggregateQuery) -> Result<AggregatePage, StoreError> {
        Err(StoreError::Internal("segment 7 is corrupt".into()))
    }

    async fn read_events(&self, _query: EventQuery) -> Result<EventPage, StoreError> {
        Err(StoreError::Internal("segment 7 is corrupt".into()))
    }

    async fn get_event(&self, event_id: Uuid) -> Result<Event, StoreError> {
        Err(StoreError::EventNotFound { event_id })
    }

    async fn head(&self) -> Result<Head, StoreError> {
        Ok(Head {
            position: 0,
            recorded_at: None,
        })
    }

    async fn put_snapshot(&self, _put: PutSnapshot) -> Result<SnapshotStored, StoreError> {
        Err(StoreError::Unavailable("fsync failed".into()))
    }

    async fn latest_snapshot(&self, _aggregate_id: &str, _max: Option<u64>) -> Result<Snapshot, StoreError> {
        Err(StoreError::Internal("segment 7 is corrupt".into()))
    }

    async fn list_snapshots(&self, _aggregate_id: &str) -> Result<Vec<SnapshotInfo>, StoreError> {
        Err(StoreError::Internal("segment 7 is corrupt".into()))
    }

    fn watch_head(&self) -> tokio::sync::watch::Receiver<u64> {
        tokio::sync::watch::channel(0).1
    }
}

#[tokio::test]
async fn store_failures_are_503_and_500() {
    let api = Api::over(Arc::new(BrokenStore::default()));
    let answer = api
        .expect_post_error(
            "/v1/aggregates/a/events",
            &events(1),
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
        )
        .await;
    assert!(answer.message().contains("fsync failed"), "{}", answer.message());
    let commit = json!({"appends": [{"aggregate_id": "a", "events": [event("E")]}]});
    api.expect_post_error(
        "/v1/events",
        &commit,
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
    )
    .await;
    // A filtered read goes to the store (an unfiltered one at the head is answered by the
    // live feed without asking it).
    let answer = api
        .expect_get_error(
            "/v1/events?event_type=E",
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
        )
        .await;
    assert!(
        !answer.message().contains("segment 7"),
        "internal details stay in the log"
    );
    api.expect_get_error(
        "/v1/aggregates/a/events",
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
    )
    .await;
    // Validation still comes first.
    api.expect_get_error("/v1/events?limit=0", StatusCode::BAD_REQUEST, "invalid_request")
        .await;
}

#[tokio::test]
async fn serve_answers_on_a_real_socket_and_shuts_down_gracefully() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(factstore_server::serve(
        listener,
        app(Arc::new(ModelStore::new())),
        async move {
            let _ = stopped.await;
        },
    ));
    let mut socket = tokio::net::TcpStream::connect(address).await.expect("connect");
    socket
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut response = String::new();
    socket.read_to_string(&mut response).await.expect("read");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with(r#"{"status":"ok"}"#), "{response}");
    stop.send(()).expect("server still running");
    let result = tokio::time::timeout(std::time::Duration::from_secs(5), server)
        .await
        .expect("shut down in time")
        .expect("task");
    assert!(result.is_ok(), "{result:?}");
}
