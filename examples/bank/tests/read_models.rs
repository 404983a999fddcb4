//! The bank's read side against a real server: balances from the projection, from the event
//! store, as of a time; read-your-writes by event status and by min_position; the daily
//! summary.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use factstore_client::{AppendRequest, Client, NewEvent};
use factstore_example_bank::{AppState, app, projections};
use serde_json::json;
use support::{Factstore, call};

async fn service(factstore: &Factstore) -> (Client, axum::Router) {
    let client = Client::new(&factstore.url).unwrap();
    projections::install(&client).await.unwrap();
    (client.clone(), app(AppState::new(client)))
}

#[tokio::test]
async fn the_balance_comes_from_the_read_model_the_event_store_or_the_past() {
    let factstore = Factstore::start().await;
    let (client, app) = service(&factstore).await;
    // Installing again is harmless (same definitions).
    projections::install(&client).await.unwrap();

    let at = |text: &str| factstore_client::time::parse_timestamp(text).unwrap();
    client
        .append(
            "account:ACC-001",
            AppendRequest::new([
                NewEvent::new("Account", "AccountCreated", json!({"owner": "Ada", "initial": 0}))
                    .with_created_at(at("2024-01-15T09:00:00Z")),
                NewEvent::new("Account", "MoneyDeposited", json!({"amount": 1000}))
                    .with_created_at(at("2024-01-15T10:00:00Z")),
                NewEvent::new("Account", "MoneyDeposited", json!({"amount": 500}))
                    .with_created_at(at("2024-01-15T15:00:00Z")),
            ]),
        )
        .await
        .unwrap();

    // "The balance was wrong at 2 PM yesterday": replay up to that time.
    let (status, body) = call(
        &app,
        "GET",
        "/accounts/ACC-001/balance?at=2024-01-15T14:00:00Z",
        None,
        &[],
    )
    .await;
    assert_eq!(
        (status, body["balance"].as_i64()),
        (StatusCode::OK, Some(1000)),
        "{body}"
    );

    // Always current, straight from the events.
    let (status, body) = call(
        &app,
        "GET",
        "/accounts/ACC-001/balance?source=event_store",
        None,
        &[],
    )
    .await;
    assert_eq!(
        (status, body["balance"].as_i64(), body["source"].as_str()),
        (StatusCode::OK, Some(1500), Some("event_store"))
    );

    // Read your write: the write answers its event id and position.
    let (status, written) = call(
        &app,
        "POST",
        "/accounts/ACC-001/deposits",
        Some(r#"{"amount": 500}"#),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let event_id = written["event_id"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = call(&app, "GET", &format!("/events/{event_id}/status"), None, &[]).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if body["materialized"] == true {
            assert_eq!(body["projections"][projections::BALANCES], true);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never materialized: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, body) = call(&app, "GET", "/accounts/ACC-001/balance", None, &[]).await;
    assert_eq!(
        (body["balance"].as_i64(), body["transactions"].as_i64()),
        (Some(2000), Some(3)),
        "{body}"
    );

    // Or in one call: wait for the write's position.
    let (_, written) = call(
        &app,
        "POST",
        "/accounts/ACC-001/withdrawals",
        Some(r#"{"amount": 300}"#),
        &[],
    )
    .await;
    let path = format!("/accounts/ACC-001/balance?min_position={}", written["position"]);
    let (status, body) = call(&app, "GET", &path, None, &[]).await;
    assert_eq!(
        (status, body["balance"].as_i64()),
        (StatusCode::OK, Some(1700)),
        "{body}"
    );

    // A position the read model cannot reach in time: 503 with Retry-After.
    let (status, body) = call(
        &app,
        "GET",
        "/accounts/ACC-001/balance?min_position=999999&wait_ms=50",
        None,
        &[],
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("not_yet_materialized"))
    );

    let (status, body) = call(&app, "GET", "/accounts/ACC-404/balance", None, &[]).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("account_not_found"))
    );
    let (status, _) = call(&app, "GET", "/accounts/ACC-001/balance?source=cache", None, &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    factstore.stop().await;
}

#[tokio::test]
async fn the_daily_summary_sums_each_days_deposits_and_withdrawals() {
    let factstore = Factstore::start().await;
    let (client, app) = service(&factstore).await;
    let at = |text: &str| factstore_client::time::parse_timestamp(text).unwrap();
    let events = [
        ("MoneyDeposited", 300, "2024-01-15T10:00:00Z"),
        ("MoneyDeposited", 200, "2024-01-15T10:05:00Z"),
        ("MoneyWithdrawn", 50, "2024-01-15T18:00:00Z"),
        ("MoneyDeposited", 70, "2024-01-16T08:00:00Z"),
    ];
    let mut batch = vec![
        NewEvent::new("Account", "AccountCreated", json!({"owner": "Ada", "initial": 0}))
            .with_created_at(at("2024-01-14T10:00:00Z")),
    ];
    batch.extend(events.iter().map(|(event_type, amount, when)| {
        NewEvent::new(
            "Account",
            *event_type,
            json!({"amount": amount, "currency": "USD"}),
        )
        .with_created_at(at(when))
    }));
    let outcome = client
        .append("account:ACC-001", AppendRequest::new(batch))
        .await
        .unwrap();
    client
        .wait_materialized(outcome.events.last().unwrap().event_id, Duration::from_secs(5))
        .await
        .unwrap();

    let (status, body) = call(&app, "GET", "/summary/2024-01-15", None, &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["summary"],
        json!({"deposits": 500, "withdrawals": 50, "deposit_count": 2, "withdrawal_count": 1})
    );
    let (_, body) = call(&app, "GET", "/summary", None, &[]).await;
    let days: Vec<&str> = body["days"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["day"].as_str().unwrap())
        .collect();
    assert_eq!(days, vec!["2024-01-15", "2024-01-16"]);
    let (status, body) = call(&app, "GET", "/summary/2024-01-01", None, &[]).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("no_activity"))
    );
    let (status, _) = call(&app, "GET", "/summary/today", None, &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    factstore.stop().await;
}
