//! The bank service's write side and audit trail against a real factstore server: every
//! scenario that needs no read model (those are in read_models.rs).
#![allow(clippy::unwrap_used)]

mod support;

use axum::http::StatusCode;
use factstore_client::{AppendRequest, Client, NewEvent};
use factstore_example_bank::{AppState, app};
use serde_json::json;
use support::{Factstore, call};

#[tokio::test]
async fn accounts_open_once_and_money_follows_the_rules() {
    let factstore = Factstore::start().await;
    let client = Client::new(&factstore.url).unwrap();
    let app = app(AppState::new(client.clone()));

    let (status, body) = call(
        &app,
        "POST",
        "/accounts",
        Some(r#"{"account_id": "ACC-001", "owner": "Ada"}"#),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        (body["version"].as_u64(), body["position"].as_u64()),
        (Some(1), Some(1))
    );
    assert!(body["event_id"].as_str().is_some());

    let (status, body) = call(
        &app,
        "POST",
        "/accounts",
        Some(r#"{"account_id": "ACC-001", "owner": "Bob"}"#),
        &[],
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("account_exists"))
    );

    for _ in 0..2 {
        let (status, body) = call(
            &app,
            "POST",
            "/accounts/ACC-001/deposits",
            Some(r#"{"amount": 500}"#),
            &[],
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (status, body) = call(
        &app,
        "POST",
        "/accounts/ACC-001/withdrawals",
        Some(r#"{"amount": 200, "description": "rent"}"#),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        (body["balance"].as_i64(), body["version"].as_u64()),
        (Some(800), Some(4))
    );

    // Each refusal is a 4xx with a code and a message, and writes nothing.
    let head = client.head().await.unwrap().position;
    let cases = [
        (
            "/accounts/ACC-001/withdrawals",
            r#"{"amount": 801}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "insufficient_funds",
        ),
        (
            "/accounts/ACC-001/deposits",
            r#"{"amount": -5}"#,
            StatusCode::BAD_REQUEST,
            "invalid_amount",
        ),
        (
            "/accounts/ACC-001/deposits",
            r#"{"amount": 0}"#,
            StatusCode::BAD_REQUEST,
            "invalid_amount",
        ),
        (
            "/accounts/ACC-404/deposits",
            r#"{"amount": 5}"#,
            StatusCode::NOT_FOUND,
            "account_not_found",
        ),
        (
            "/accounts/ACC-001/deposits",
            r#"{"amount": "five"}"#,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/accounts/ACC-001/deposits",
            r#"{"amount": 5, "extra": 1}"#,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/accounts/bad%20id/deposits",
            r#"{"amount": 5}"#,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ];
    for (path, request, expected_status, code) in cases {
        let (status, body) = call(&app, "POST", path, Some(request), &[]).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (expected_status, Some(code)),
            "{path} {request}: {body}"
        );
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let (_, body) = call(
        &app,
        "POST",
        "/accounts/ACC-001/withdrawals",
        Some(r#"{"amount": 801}"#),
        &[],
    )
    .await;
    assert_eq!(
        (
            body["error"]["balance"].as_i64(),
            body["error"]["requested"].as_i64()
        ),
        (Some(800), Some(801))
    );
    assert_eq!(
        client.head().await.unwrap().position,
        head,
        "refusals wrote nothing"
    );
    factstore.stop().await;
}

#[tokio::test]
async fn transfers_move_money_between_two_accounts_atomically() {
    let factstore = Factstore::start().await;
    let client = Client::new(&factstore.url).unwrap();
    let app = app(AppState::new(client.clone()));
    for (id, initial) in [("A", 100), ("B", 0)] {
        let body = json!({"account_id": id, "owner": id, "initial": initial}).to_string();
        assert_eq!(
            call(&app, "POST", "/accounts", Some(&body), &[]).await.0,
            StatusCode::CREATED
        );
    }

    let (status, body) = call(
        &app,
        "POST",
        "/transfers",
        Some(r#"{"from": "A", "to": "B", "amount": 60}"#),
        &[("x-correlation-id", "transfer-1")],
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["events"].as_array().unwrap().len(), 2);
    let linked = client
        .read_events(
            &factstore_client::EventQuery::new()
                .filter(factstore_client::EventFilter::new().correlation_id("transfer-1")),
        )
        .await
        .unwrap();
    let moved: Vec<(String, String)> = linked
        .events
        .iter()
        .map(|e| (e.aggregate_id.clone(), e.event_type.clone()))
        .collect();
    assert_eq!(
        moved,
        vec![
            ("account:A".into(), "MoneyWithdrawn".into()),
            ("account:B".into(), "MoneyDeposited".into())
        ]
    );

    let head = client.head().await.unwrap().position;
    let (status, body) = call(
        &app,
        "POST",
        "/transfers",
        Some(r#"{"from": "A", "to": "B", "amount": 41}"#),
        &[],
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("insufficient_funds"))
    );
    assert_eq!(body["error"]["account_id"], "A");
    let (status, body) = call(
        &app,
        "POST",
        "/transfers",
        Some(r#"{"from": "A", "to": "Z", "amount": 1}"#),
        &[],
    )
    .await;
    assert_eq!(
        (status, body["error"]["account_id"].as_str()),
        (StatusCode::NOT_FOUND, Some("Z"))
    );
    let (status, _) = call(
        &app,
        "POST",
        "/transfers",
        Some(r#"{"from": "A", "to": "A", "amount": 1}"#),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(client.head().await.unwrap().position, head, "no half transfer");
    factstore.stop().await;
}

#[tokio::test]
async fn the_audit_history_shows_every_event_of_a_time_range_with_who_did_it() {
    let factstore = Factstore::start().await;
    let client = Client::new(&factstore.url).unwrap();
    let app = app(AppState::new(client.clone()));

    // History from January 2024, imported with its original times; version 1 deposits had no
    // currency.
    let at = |text: &str| factstore_client::time::parse_timestamp(text).unwrap();
    client
        .append(
            "account:ACC-001",
            AppendRequest::new([
                NewEvent::new("Account", "AccountCreated", json!({"owner": "Ada", "initial": 0}))
                    .with_created_at(at("2023-12-30T09:00:00Z")),
                NewEvent::new("Account", "MoneyDeposited", json!({"amount": 300}))
                    .with_created_at(at("2024-01-15T10:00:00Z"))
                    .with_created_by("user:123"),
                NewEvent::new("Account", "MoneyDeposited", json!({"amount": 200}))
                    .with_created_at(at("2024-01-15T10:05:00Z"))
                    .with_created_by("user:456"),
                NewEvent::new("Account", "MoneyWithdrawn", json!({"amount": 50}))
                    .with_created_at(at("2024-02-01T08:00:00Z")),
            ]),
        )
        .await
        .unwrap();

    let (status, body) = call(
        &app,
        "GET",
        "/accounts/ACC-001/history?from=2024-01-01&to=2024-01-31",
        None,
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let events = body["events"].as_array().unwrap();
    let seen: Vec<(&str, &str, i64)> = events
        .iter()
        .map(|e| {
            (
                e["created_at"].as_str().unwrap(),
                e["created_by"].as_str().unwrap(),
                e["event_data"]["amount"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("2024-01-15T10:00:00.000000Z", "user:123", 300),
            ("2024-01-15T10:05:00.000000Z", "user:456", 200)
        ]
    );

    // New writes carry who and why; old v1 events still count (upcast to USD).
    let (status, body) = call(
        &app,
        "POST",
        "/accounts/ACC-001/withdrawals",
        Some(r#"{"amount": 450}"#),
        &[("x-user-id", "789"), ("x-correlation-id", "corr-123")],
    )
    .await;
    assert_eq!(
        (status, body["balance"].as_i64()),
        (StatusCode::CREATED, Some(0)),
        "{body}"
    );
    let (_, body) = call(&app, "GET", "/accounts/ACC-001/history", None, &[]).await;
    let last = body["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["created_by"].as_str(), last["correlation_id"].as_str()),
        (Some("user:789"), Some("corr-123"))
    );
    assert_eq!(last["event_data"], json!({"amount": 450, "currency": "USD"}));

    let (status, body) = call(&app, "GET", "/accounts/ACC-404/history", None, &[]).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("account_not_found"))
    );
    let (status, _) = call(&app, "GET", "/accounts/ACC-001/history?from=yesterday", None, &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    factstore.stop().await;
}
