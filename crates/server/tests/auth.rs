//! `--auth`: every rule of API.md's "Security and operations", in-process.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use common::{Call, assert_error, event, events};
use factstore_server::{AppState, Auth, ServerConfig, app_with_state};
use factstore_testkit::model::ModelStore;
use serde_json::{Value, json};

const ADMIN: &str = "admin-token-0123456789abcdef";
const WRITER: &str = "writer-token-0123456789abcdef";
const READER: &str = "reader-token-0123456789abcdef";
/// A writer limited to `acc:`.
const ACC_WRITER: &str = "acc-writer-token-0123456789ab";
/// A reader limited to `acc:` and `ord:`.
const ACC_ORD_READER: &str = "acc-ord-reader-token-01234567";
/// An admin limited to `acc:`.
const ACC_ADMIN: &str = "acc-admin-token-0123456789abcd";

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
token = "acc-writer-token-0123456789ab"
role = "writer"
aggregate_id_prefixes = ["acc:"]

[[token]]
token = "acc-ord-reader-token-01234567"
role = "reader"
aggregate_id_prefixes = ["acc:", "ord:"]

[[token]]
token = "acc-admin-token-0123456789abcd"
role = "admin"
aggregate_id_prefixes = ["acc:"]
"#;

fn secured() -> Router {
    let auth = Auth::parse(AUTH_FILE, "test.toml").unwrap();
    app_with_state(AppState::new(
        Arc::new(ModelStore::new()),
        ServerConfig::default().with_auth(auth),
    ))
}

async fn append(router: &Router, token: &str, aggregate_id: &str, body: &Value) -> common::Answer {
    Call::post(&format!("/v1/aggregates/{aggregate_id}/events"), body)
        .token(token)
        .send(router)
        .await
}

async fn head(router: &Router) -> u64 {
    let answer = Call::get("/v1/head").token(ADMIN).send(router).await;
    answer.body["position"].as_u64().unwrap()
}

#[tokio::test]
async fn a_missing_or_unknown_token_is_401_with_www_authenticate() {
    let router = secured();
    let unauthorized = StatusCode::UNAUTHORIZED;
    for call in [
        Call::get("/v1/head"),
        Call::get("/v1/head").token("not-a-token"),
        Call::get("/v1/head").token(&ADMIN[..ADMIN.len() - 1]),
        Call::get("/v1/head").header("authorization", &format!("Basic {ADMIN}")),
        Call::get("/v1/head").header("authorization", "Bearer"),
        Call::get("/v1/head").header("authorization", "Bearer "),
        Call::get("/v1/events"),
        Call::get("/v1/aggregates/acc:1/events"),
        Call::post("/v1/aggregates/acc:1/events", &events(1)),
        Call::post("/v1/events", &json!({"appends": []})),
        // No route either: a client without a token does not learn which routes exist.
        Call::get("/v1/nowhere"),
    ] {
        let uri = call.uri.clone();
        let answer = call.send(&router).await;
        assert_error(&answer, unauthorized, "unauthorized");
        assert_eq!(
            answer.header("www-authenticate"),
            Some(r#"Bearer realm="factstore""#),
            "{uri}"
        );
        assert!(!answer.text().contains(ADMIN), "the answer repeats a token");
    }
    assert_eq!(head(&router).await, 0, "nothing was written");
    // The scheme is case-insensitive; extra spaces do not matter.
    let answer = Call::get("/v1/head")
        .header("authorization", &format!("bearer   {READER}"))
        .send(&router)
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    // With a token, an unknown route is an ordinary 404.
    let answer = Call::get("/v1/nowhere").token(READER).send(&router).await;
    assert_error(&answer, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn health_and_openapi_need_no_token_and_metrics_needs_one() {
    let router = secured();
    let answer = Call::get("/health").send(&router).await;
    assert_eq!(answer.status, StatusCode::OK);
    // The document may not be served by this build; either way it is not hidden behind a token.
    let answer = Call::get("/v1/openapi.json").send(&router).await;
    assert_ne!(answer.status, StatusCode::UNAUTHORIZED, "{}", answer.text());
    let answer = Call::get("/metrics").send(&router).await;
    assert_error(&answer, StatusCode::UNAUTHORIZED, "unauthorized");
    for token in [READER, ACC_ORD_READER, WRITER, ADMIN] {
        let answer = Call::get("/metrics").token(token).send(&router).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        assert!(
            answer.text().contains("factstore_head_position"),
            "{}",
            answer.text()
        );
    }
}

#[tokio::test]
async fn readers_read_and_writers_also_append() {
    let router = secured();
    let answer = append(&router, READER, "acc:1", &events(1)).await;
    assert_error(&answer, StatusCode::FORBIDDEN, "forbidden");
    assert!(answer.text().contains("writer"), "{}", answer.text());
    // The role is checked before the body is read: a reader learns nothing from a bad body.
    let answer = Call::post_raw("/v1/aggregates/acc:1/events", "{not json")
        .token(READER)
        .send(&router)
        .await;
    assert_error(&answer, StatusCode::FORBIDDEN, "forbidden");
    let answer = Call::post(
        "/v1/events",
        &json!({"appends": [{"aggregate_id": "acc:1", "events": [event("E")]}]}),
    )
    .token(READER)
    .send(&router)
    .await;
    assert_error(&answer, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(head(&router).await, 0);

    for token in [WRITER, ADMIN] {
        let answer = append(&router, token, "acc:1", &events(1)).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());
    }
    let answer = Call::post(
        "/v1/events",
        &json!({"appends": [{"aggregate_id": "x:1", "events": [event("E")]}]}),
    )
    .token(WRITER)
    .send(&router)
    .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());

    for token in [READER, WRITER, ADMIN] {
        for uri in ["/v1/aggregates/acc:1/events", "/v1/events", "/v1/head"] {
            let answer = Call::get(uri).token(token).send(&router).await;
            assert_eq!(answer.status, StatusCode::OK, "{uri}: {}", answer.text());
        }
    }
}

#[tokio::test]
async fn appends_outside_the_prefixes_are_403_and_write_nothing() {
    let router = secured();
    let answer = append(&router, ACC_WRITER, "acc:1", &events(2)).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());

    let answer = append(&router, ACC_WRITER, "ord:1", &events(1)).await;
    assert_error(&answer, StatusCode::FORBIDDEN, "forbidden");
    assert!(answer.text().contains("acc:"), "{}", answer.text());
    // The prefix is checked before the body is read, as the role is.
    let answer = Call::post_raw("/v1/aggregates/ord:1/events", "{not json")
        .token(ACC_WRITER)
        .send(&router)
        .await;
    assert_error(&answer, StatusCode::FORBIDDEN, "forbidden");
    // `ac` is not `acc:`; prefixes are plain string prefixes of the id.
    let answer = append(&router, ACC_WRITER, "ac", &events(1)).await;
    assert_error(&answer, StatusCode::FORBIDDEN, "forbidden");

    // One aggregate outside makes the whole commit 403.
    let commit = json!({"appends": [
        {"aggregate_id": "acc:2", "events": [event("E")]},
        {"aggregate_id": "ord:2", "events": [event("E")]},
    ]});
    let answer = Call::post("/v1/events", &commit)
        .token(ACC_WRITER)
        .send(&router)
        .await;
    assert_error(&answer, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(head(&router).await, 2, "nothing more was written");

    // A condition is a read the store does for us: it must stay inside the prefixes too.
    let with_condition = |filter: Value| {
        json!({"appends": [{"aggregate_id": "acc:2", "events": [event("E")]}],
               "condition": {"filter": filter, "after_position": 0}})
    };
    for filter in [
        json!({}),
        json!({"aggregate_id_prefix": "ord:"}),
        json!({"aggregate_id": "ord:1"}),
    ] {
        let answer = Call::post("/v1/events", &with_condition(filter.clone()))
            .token(ACC_WRITER)
            .send(&router)
            .await;
        assert_error(&answer, StatusCode::FORBIDDEN, "forbidden");
    }
    assert_eq!(head(&router).await, 2);
    let answer = Call::post(
        "/v1/events",
        &with_condition(json!({"aggregate_id_prefix": "acc:9"})),
    )
    .token(ACC_WRITER)
    .send(&router)
    .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());
    let answer = Call::post(
        "/v1/events",
        &json!({"appends": [{"aggregate_id": "acc:3", "events": [event("E")]}]}),
    )
    .token(ACC_WRITER)
    .send(&router)
    .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());
}

/// acc:1, ord:1, other:1, acc:2, ord:2, other:2 — positions 1 to 6; the ids of the events.
async fn seed(router: &Router) -> Vec<String> {
    let mut ids = Vec::new();
    for round in 1..=2 {
        for prefix in ["acc", "ord", "other"] {
            let answer = append(router, ADMIN, &format!("{prefix}:{round}"), &events(1)).await;
            assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());
            ids.push(answer.body["events"][0]["event_id"].as_str().unwrap().to_owned());
        }
    }
    ids
}

#[tokio::test]
async fn reading_one_aggregate_outside_the_prefixes_is_403() {
    let router = secured();
    seed(&router).await;
    let answer = Call::get("/v1/aggregates/acc:1/events")
        .token(ACC_ORD_READER)
        .send(&router)
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    for uri in ["/v1/aggregates/other:1/events", "/v1/aggregates/nobody/events"] {
        let answer = Call::get(uri).token(ACC_ORD_READER).send(&router).await;
        assert_error(&answer, StatusCode::FORBIDDEN, "forbidden");
    }
}

#[tokio::test]
async fn reading_all_events_is_filtered_to_the_prefixes() {
    let router = secured();
    seed(&router).await;
    let read = |query: &str| {
        let router = router.clone();
        let uri = format!("/v1/events{query}");
        async move {
            let answer = Call::get(&uri).token(ACC_ORD_READER).send(&router).await;
            assert_eq!(answer.status, StatusCode::OK, "{uri}: {}", answer.text());
            answer
        }
    };
    let answer = read("").await;
    assert_eq!(answer.aggregate_ids(), ["acc:1", "ord:1", "acc:2", "ord:2"]);
    assert_eq!(answer.body["next_after_position"], 6);
    assert_eq!(
        read("?aggregate_id_prefix=acc:").await.aggregate_ids(),
        ["acc:1", "acc:2"]
    );
    assert_eq!(
        read("?aggregate_id_prefix=o").await.aggregate_ids(),
        ["ord:1", "ord:2"]
    );
    assert_eq!(
        read("?aggregate_id_prefix=other:").await.aggregate_ids(),
        Vec::<String>::new()
    );
    assert_eq!(
        read("?aggregate_id=other:1").await.aggregate_ids(),
        Vec::<String>::new()
    );
    assert_eq!(read("?aggregate_id=ord:2").await.aggregate_ids(), ["ord:2"]);

    // Paging: pages may come back short (even empty), but next_after_position moves past the
    // hidden events, and walking the pages yields exactly the visible events once each.
    let mut after = 0;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = read(&format!("?after_position={after}&limit=2")).await;
        seen.extend(page.aggregate_ids());
        let next = page.body["next_after_position"].as_u64().unwrap();
        pages += 1;
        if next >= page.body["head_position"].as_u64().unwrap() {
            break;
        }
        assert!(next > after, "next_after_position must move");
        after = next;
    }
    assert_eq!(seen, ["acc:1", "ord:1", "acc:2", "ord:2"]);
    assert!(pages >= 3);

    // A token with one prefix: the store does the filtering.
    let answer = Call::get("/v1/events").token(ACC_WRITER).send(&router).await;
    assert_eq!(answer.aggregate_ids(), ["acc:1", "acc:2"]);
    // An unlimited token sees everything.
    let answer = Call::get("/v1/events").token(READER).send(&router).await;
    assert_eq!(answer.aggregate_ids().len(), 6);
}

#[tokio::test]
async fn an_event_outside_the_prefixes_is_not_found_by_id() {
    let router = secured();
    let ids = seed(&router).await;
    let answer = Call::get(&format!("/v1/events/{}", ids[0]))
        .token(ACC_ORD_READER)
        .send(&router)
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let hidden = Call::get(&format!("/v1/events/{}", ids[2]))
        .token(ACC_ORD_READER)
        .send(&router)
        .await;
    assert_error(&hidden, StatusCode::NOT_FOUND, "event_not_found");
    // Exactly the answer for an id that does not exist, but for the id itself.
    let missing_id = uuid::Uuid::now_v7();
    let missing = Call::get(&format!("/v1/events/{missing_id}"))
        .token(ACC_ORD_READER)
        .send(&router)
        .await;
    assert_eq!(
        hidden.text().replace(&ids[2], "ID"),
        missing.text().replace(&missing_id.to_string(), "ID")
    );
    let answer = Call::get(&format!("/v1/events/{}", ids[2]))
        .token(READER)
        .send(&router)
        .await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test]
async fn without_auth_everything_is_open() {
    let router = factstore_server::app(Arc::new(ModelStore::new()));
    let answer = Call::post("/v1/aggregates/any:1/events", &events(1))
        .send(&router)
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());
    for uri in [
        "/v1/events",
        "/v1/head",
        "/metrics",
        "/v1/aggregates/any:1/events",
    ] {
        let answer = Call::get(uri).send(&router).await;
        assert_eq!(answer.status, StatusCode::OK, "{uri}: {}", answer.text());
    }
    // A token sent to an open server is ignored, even an unknown one.
    let answer = Call::get("/v1/head").token("whatever").send(&router).await;
    assert_eq!(answer.status, StatusCode::OK);
}

/// What a token limited to aggregate prefixes gets on a route, whatever its role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limited {
    /// 403: the route's answer or effect is not confined to some aggregates.
    WholeStore,
    /// Served within the prefixes (403 for one aggregate outside, filtered for many, 404 by
    /// id), or not about aggregates at all.
    Scoped,
}

/// The decision for every route of the router. A route missing here fails the test: each new
/// route needs one.
fn decision(method: &axum::http::Method, path: &str) -> Limited {
    use Limited::{Scoped, WholeStore};
    match (method.as_str(), path) {
        ("GET", "/health" | "/metrics" | "/v1/openapi.json" | "/v1/head") => Scoped,
        (
            _,
            "/v1/aggregates/{aggregate_id}/events"
            | "/v1/aggregates/{aggregate_id}/snapshots"
            | "/v1/aggregates/{aggregate_id}/snapshots/latest"
            | "/v1/aggregates/{aggregate_id}/load"
            | "/v1/events"
            | "/v1/events/{event_id}"
            | "/v1/events/{event_id}/status"
            | "/v1/subscribe",
        ) => Scoped,
        (
            "GET",
            "/v1/schemas" | "/v1/schemas/{event_type}" | "/v1/upcasters" | "/v1/upcasters/{event_type}",
        ) => Scoped,
        (
            "PUT",
            "/v1/schemas/{event_type}/versions/{version}" | "/v1/upcasters/{event_type}/{from_version}",
        ) => WholeStore,
        (_, p) if p.starts_with("/v1/projections") => WholeStore,
        (_, p) if p.starts_with("/v1/subscriptions") => WholeStore,
        ("POST", "/v1/admin/archive") | ("GET", "/v1/admin/storage") => WholeStore,
        (method, path) => panic!("{method} {path}: no decision for a token limited to aggregate prefixes"),
    }
}

/// The route with its parameters filled in, inside the prefix `acc:`.
fn concrete(path: &str) -> String {
    path.replace("{aggregate_id}", "acc:1")
        .replace("{event_id}", "0190a5a0-0000-7000-8000-000000000001")
        .replace("{name}", "p")
        .replace("{key}", "acc:1")
        .replace("{event_type}", "MoneyDeposited")
        .replace("{version}", "1")
        .replace("{from_version}", "1")
        .replace("{group}", "g")
}

/// The status of one request, and its body unless it is a stream (`/v1/subscribe` never ends).
async fn status_of(
    router: &Router,
    method: &axum::http::Method,
    path: &str,
    token: &str,
) -> (StatusCode, String) {
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let mut request = axum::http::Request::builder()
        .method(method.clone())
        .uri(concrete(path))
        .header("authorization", format!("Bearer {token}"));
    let body = if matches!(*method, axum::http::Method::POST | axum::http::Method::PUT) {
        request = request.header("content-type", "application/json");
        Body::from("{}")
    } else {
        Body::empty()
    };
    let response = router.clone().oneshot(request.body(body).unwrap()).await.unwrap();
    let status = response.status();
    if path == "/v1/subscribe" && status.is_success() {
        return (status, String::new());
    }
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// Every route of the router, with tokens limited to `acc:` of each role: the routes whose
/// answer or effect concerns the whole store (admin storage and archive, projections,
/// persistent subscriptions, schema and upcaster changes) are 403 for all of them, however
/// their request looks; the others are not refused for the prefixes. The same routes do not
/// refuse an unlimited admin, so the 403s come from the prefixes.
#[tokio::test]
async fn a_token_limited_to_prefixes_gets_no_route_that_concerns_the_whole_store() {
    let router = secured();
    let mut whole_store = 0;
    for (method, path) in factstore_server::route_list() {
        let expected = decision(&method, path);
        for token in [ACC_ADMIN, ACC_WRITER, ACC_ORD_READER] {
            let (status, body) = status_of(&router, &method, path, token).await;
            match expected {
                Limited::WholeStore => {
                    assert_eq!(
                        status,
                        StatusCode::FORBIDDEN,
                        "{method} {path} with {token}: {body}"
                    );
                    assert!(body.contains("\"forbidden\""), "{method} {path}: {body}");
                }
                Limited::Scoped if token == ACC_ADMIN => {
                    assert_ne!(status, StatusCode::FORBIDDEN, "{method} {path}: {body}");
                }
                Limited::Scoped => {}
            }
        }
        if expected == Limited::WholeStore {
            whole_store += 1;
            let (status, body) = status_of(&router, &method, path, ADMIN).await;
            assert_ne!(
                status,
                StatusCode::FORBIDDEN,
                "{method} {path} with an unlimited admin: {body}"
            );
            assert_ne!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {body}");
        }
    }
    assert!(
        whole_store >= 20,
        "the router's routes were not all walked: {whole_store}"
    );
    // The limited admin's refusal says why, and archiving never reached the store.
    let (_, body) = status_of(&router, &axum::http::Method::GET, "/v1/admin/storage", ACC_ADMIN).await;
    assert!(body.contains("limited to aggregate id prefixes"), "{body}");
    assert!(body.contains("whole store"), "{body}");
}

/// A limited writer that sends an event id another aggregate holds learns only that the id is
/// taken: the same `duplicate_event_id` answer whether the holder is an aggregate it cannot
/// see (where `GET /v1/events/{id}` answers 404) or one it can.
#[tokio::test]
async fn a_taken_event_id_does_not_tell_a_limited_writer_which_aggregate_holds_it() {
    let router = secured();
    let hidden_id = uuid::Uuid::now_v7();
    let visible_id = uuid::Uuid::now_v7();
    let with_id = |id: uuid::Uuid| {
        let mut event = event("MoneyDeposited");
        event["event_id"] = json!(id);
        json!({ "events": [event] })
    };
    let answer = append(&router, WRITER, "ord:secret-1", &with_id(hidden_id)).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());
    let answer = append(&router, WRITER, "acc:2", &with_id(visible_id)).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());
    let hidden = Call::get(&format!("/v1/events/{hidden_id}"))
        .token(ACC_WRITER)
        .send(&router)
        .await;
    assert_error(&hidden, StatusCode::NOT_FOUND, "event_not_found");

    let refused = append(&router, ACC_WRITER, "acc:1", &with_id(hidden_id)).await;
    assert_error(&refused, StatusCode::CONFLICT, "duplicate_event_id");
    let text = refused.text();
    assert!(
        !text.contains("another aggregate") && !text.contains("ord:"),
        "{text}"
    );
    let as_commit = Call::post(
        "/v1/events",
        &json!({"appends": [{"aggregate_id": "acc:1", "events": with_id(hidden_id)["events"]}]}),
    )
    .token(ACC_WRITER)
    .send(&router)
    .await;
    assert_eq!(as_commit.text(), text, "the same answer from POST /v1/events");
    let in_sight = append(&router, ACC_WRITER, "acc:1", &with_id(visible_id)).await;
    assert_error(&in_sight, StatusCode::CONFLICT, "duplicate_event_id");
    assert_eq!(
        in_sight.text().replace(&visible_id.to_string(), "ID"),
        text.replace(&hidden_id.to_string(), "ID"),
        "the holder's visibility does not change the answer"
    );
    assert_eq!(head(&router).await, 2, "nothing was written");
    // A token that sees every aggregate keeps the precise reason.
    let unlimited = append(&router, WRITER, "acc:1", &with_id(hidden_id)).await;
    assert_error(&unlimited, StatusCode::CONFLICT, "duplicate_event_id");
    assert_ne!(
        unlimited.text(),
        text,
        "an unlimited writer is told where the id is"
    );
}
