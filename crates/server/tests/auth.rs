//! `--auth`: every rule of the contract's "Security and operations" (README.md, "Running the server"), in-process.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use axum::Router;
use axum::http::{Method, StatusCode};
use common::{Call, assert_error, event, events};
use factstore_server::{AppState, Auth, Role, ServerConfig, app_with_state};
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

/// What a token limited to aggregate prefixes gets on a route, once its role suffices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limited {
    /// 403 whatever the request: the route's answer or effect is not confined to some
    /// aggregates.
    WholeStore,
    /// The route names one aggregate (in its path, or in a commit's appends): 403 outside the
    /// prefixes, served inside.
    OneAggregate,
    /// The route names one event by id: 404 `event_not_found` for an event outside the
    /// prefixes (its existence is not revealed), served inside.
    ById,
    /// The route reads across aggregates: served, with only the events inside the prefixes.
    Filtered,
    /// The route says nothing about any aggregate: served as to an unlimited token.
    NoAggregate,
}

/// The contract of one route: the least role that may call it (`None`: no token needed), and
/// what a token limited to prefixes gets.
#[derive(Debug, Clone, Copy)]
struct Rule {
    role: Option<Role>,
    limited: Limited,
}

/// The decision for every route of the router, from the contract's "Security and operations" and
/// ARCHITECTURE.md. A route missing here fails the test: each new route needs one.
fn decision(method: &Method, path: &str) -> Rule {
    use Limited::{ById, Filtered, NoAggregate, OneAggregate, WholeStore};
    let rule = |role: Option<Role>, limited: Limited| Rule { role, limited };
    let (reader, writer, admin) = (Some(Role::Reader), Some(Role::Writer), Some(Role::Admin));
    match (method.as_str(), path) {
        ("GET", "/health" | "/v1/openapi.json") => rule(None, NoAggregate),
        ("GET", "/metrics" | "/v1/head") => rule(reader, NoAggregate),
        ("POST", "/v1/aggregates/{aggregate_id}/events" | "/v1/events")
        | ("PUT", "/v1/aggregates/{aggregate_id}/snapshots") => rule(writer, OneAggregate),
        (
            "GET",
            "/v1/aggregates/{aggregate_id}/events"
            | "/v1/aggregates/{aggregate_id}/snapshots"
            | "/v1/aggregates/{aggregate_id}/snapshots/latest"
            | "/v1/aggregates/{aggregate_id}/load",
        ) => rule(reader, OneAggregate),
        ("GET", "/v1/events/{event_id}" | "/v1/events/{event_id}/status") => rule(reader, ById),
        ("GET", "/v1/events" | "/v1/subscribe") => rule(reader, Filtered),
        (
            "GET",
            "/v1/schemas" | "/v1/schemas/{event_type}" | "/v1/upcasters" | "/v1/upcasters/{event_type}",
        ) => rule(reader, NoAggregate),
        (
            "PUT",
            "/v1/schemas/{event_type}/versions/{version}" | "/v1/upcasters/{event_type}/{from_version}",
        ) => rule(admin, WholeStore),
        (
            "GET",
            "/v1/projections"
            | "/v1/projections/{name}"
            | "/v1/projections/{name}/state"
            | "/v1/projections/{name}/state/{key}",
        ) => rule(reader, WholeStore),
        ("PUT" | "DELETE", "/v1/projections/{name}") | ("POST", "/v1/projections/{name}/rebuild") => {
            rule(admin, WholeStore)
        }
        ("GET", "/v1/subscriptions" | "/v1/subscriptions/{group}" | "/v1/subscriptions/{group}/parked")
        | (
            "POST",
            "/v1/subscriptions/{group}/poll"
            | "/v1/subscriptions/{group}/ack"
            | "/v1/subscriptions/{group}/nack",
        ) => rule(reader, WholeStore),
        ("PUT" | "DELETE", "/v1/subscriptions/{group}")
        | ("POST", "/v1/subscriptions/{group}/parked/replay") => rule(admin, WholeStore),
        ("POST", "/v1/admin/archive" | "/v1/admin/backup") | ("GET", "/v1/admin/storage") => {
            rule(admin, WholeStore)
        }
        (method, path) => panic!("{method} {path}: no decision on who may call it"),
    }
}

/// The aggregate and the event every limited token of [`AUTH_FILE`] sees (`acc:1`), or none
/// of them sees (`zzz:1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Inside,
    Outside,
}

/// The ids of the events of `acc:1` and `zzz:1`.
struct Seeded {
    inside: String,
    outside: String,
}

/// The route with its parameters filled in, and the request's body: `{}` (refused as invalid
/// once the route's checks pass, so nothing is written), but for a commit, whose aggregates are
/// in its body.
fn request(method: &Method, path: &str, target: Target, seeded: &Seeded) -> (String, Option<Value>) {
    let (aggregate_id, event_id) = match target {
        Target::Inside => ("acc:1", &seeded.inside),
        Target::Outside => ("zzz:1", &seeded.outside),
    };
    let uri = path
        .replace("{aggregate_id}", aggregate_id)
        .replace("{event_id}", event_id)
        .replace("{name}", "p")
        .replace("{key}", aggregate_id)
        .replace("{event_type}", "MoneyDeposited")
        .replace("{version}", "1")
        .replace("{from_version}", "1")
        .replace("{group}", "g");
    let body = match (method.as_str(), path) {
        ("POST", "/v1/events") => Some(json!({
            "appends": [{"aggregate_id": aggregate_id, "events": [event("MoneyDeposited")]}],
            // Never met (acc:1 has an event), so even an allowed commit writes nothing; inside
            // every limited token's prefixes, so only the append decides.
            "condition": {"filter": {"aggregate_id": "acc:1"}, "after_position": 0},
        })),
        ("POST" | "PUT", _) => Some(json!({})),
        _ => None,
    };
    (uri, body)
}

/// One request's status and body. A subscription is read until it is caught up (it never
/// ends); its body is then the messages read so far.
async fn call(
    router: &Router,
    method: &Method,
    uri: &str,
    body: Option<&Value>,
    token: Option<&str>,
) -> (StatusCode, String) {
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let mut request = axum::http::Request::builder().method(method.clone()).uri(uri);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let body = match body {
        Some(body) => {
            request = request.header("content-type", "application/json");
            Body::from(body.to_string())
        }
        None => Body::empty(),
    };
    let response = router.clone().oneshot(request.body(body).unwrap()).await.unwrap();
    let status = response.status();
    let mut body = response.into_body();
    let mut text = String::new();
    while let Some(frame) = tokio::time::timeout(std::time::Duration::from_secs(5), body.frame())
        .await
        .unwrap_or_else(|_| panic!("{method} {uri}: no answer in 5 s"))
    {
        if let Ok(data) = frame.unwrap().into_data() {
            text.push_str(&String::from_utf8_lossy(&data));
        }
        if uri.starts_with("/v1/subscribe") && text.contains("event: caught_up") {
            break;
        }
    }
    (status, text)
}

/// Every route of the router, called with no token and with tokens of each role, unlimited
/// and limited to prefixes, on an aggregate and an event inside and outside the prefixes:
/// - without a token, 401 (but `/health` and the OpenAPI document);
/// - below the route's role, 403 whatever the token's prefixes;
/// - an unlimited token with the role is served (neither 401 nor 403);
/// - a limited token with the role gets what [`Limited`] says: 403 for the routes that concern
///   the whole store, 403 outside for one aggregate, 404 outside for an event by id, reads
///   across aggregates filtered to the prefixes.
#[tokio::test]
async fn every_route_answers_each_role_and_each_prefix_limit_as_the_contract_says() {
    let router = secured();
    let mut ids = Vec::new();
    for aggregate_id in ["acc:1", "zzz:1"] {
        let answer = append(&router, ADMIN, aggregate_id, &events(1)).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());
        ids.push(answer.body["events"][0]["event_id"].as_str().unwrap().to_owned());
    }
    let seeded = Seeded {
        inside: ids[0].clone(),
        outside: ids[1].clone(),
    };
    let tokens = [
        (READER, Role::Reader, false),
        (WRITER, Role::Writer, false),
        (ADMIN, Role::Admin, false),
        (ACC_ORD_READER, Role::Reader, true),
        (ACC_WRITER, Role::Writer, true),
        (ACC_ADMIN, Role::Admin, true),
    ];
    let routes = factstore_server::route_list();
    let mut seen = std::collections::BTreeSet::new();
    for (method, path) in &routes {
        let rule = decision(method, path);
        seen.insert(rule.limited as u8);
        for target in [Target::Inside, Target::Outside] {
            let (uri, body) = request(method, path, target, &seeded);
            let what = format!("{method} {uri} ({target:?})");
            let (status, text) = call(&router, method, &uri, body.as_ref(), None).await;
            match rule.role {
                // The document may not be served by this build; either way it needs no token.
                None => assert_ne!(status, StatusCode::UNAUTHORIZED, "{what} without a token: {text}"),
                Some(_) => {
                    assert_eq!(status, StatusCode::UNAUTHORIZED, "{what} without a token: {text}");
                    continue;
                }
            }
        }
        let Some(needed) = rule.role else { continue };
        for (token, role, limited) in tokens {
            for target in [Target::Inside, Target::Outside] {
                let (uri, body) = request(method, path, target, &seeded);
                let what = format!("{method} {uri} ({target:?}) with the {role} token {token}");
                let (status, text) = call(&router, method, &uri, body.as_ref(), Some(token)).await;
                assert_ne!(status, StatusCode::UNAUTHORIZED, "{what}: {text}");
                if role < needed {
                    assert_eq!(status, StatusCode::FORBIDDEN, "{what}: {text}");
                    assert!(text.contains("\"forbidden\""), "{what}: {text}");
                    // A limited token on a whole-store route is refused for its prefixes first.
                    if !(limited && rule.limited == Limited::WholeStore) {
                        assert!(
                            text.contains(&format!("needs the {needed} role")),
                            "{what}: {text}"
                        );
                    }
                    continue;
                }
                let refused = limited
                    && match rule.limited {
                        Limited::WholeStore => true,
                        Limited::OneAggregate => target == Target::Outside,
                        Limited::ById | Limited::Filtered | Limited::NoAggregate => false,
                    };
                if refused {
                    assert_eq!(status, StatusCode::FORBIDDEN, "{what}: {text}");
                    assert!(text.contains("\"forbidden\""), "{what}: {text}");
                    if rule.limited == Limited::WholeStore {
                        assert!(
                            text.contains("limited to aggregate id prefixes"),
                            "{what}: {text}"
                        );
                    }
                    continue;
                }
                assert_ne!(status, StatusCode::FORBIDDEN, "{what}: {text}");
                match rule.limited {
                    Limited::ById => {
                        let hidden = limited && target == Target::Outside;
                        let expected = if hidden {
                            StatusCode::NOT_FOUND
                        } else {
                            StatusCode::OK
                        };
                        assert_eq!(status, expected, "{what}: {text}");
                        if hidden {
                            assert!(text.contains("event_not_found"), "{what}: {text}");
                        }
                    }
                    Limited::Filtered => {
                        assert_eq!(status, StatusCode::OK, "{what}: {text}");
                        assert!(text.contains("\"acc:1\""), "{what}: {text}");
                        assert_eq!(text.contains("\"zzz:1\""), !limited, "{what}: {text}");
                    }
                    Limited::WholeStore | Limited::OneAggregate | Limited::NoAggregate => {}
                }
            }
        }
    }
    assert_eq!(seen.len(), 5, "every kind of route was walked");
    assert!(
        routes.len() >= 35,
        "the router's routes were not all walked: {}",
        routes.len()
    );
    assert_eq!(head(&router).await, 2, "no request of the walk wrote anything");
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
