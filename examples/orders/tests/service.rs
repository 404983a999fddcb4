//! The order service's write side and history against a real factstore server.
#![allow(clippy::unwrap_used)]

mod support;

use axum::http::StatusCode;
use factstore_client::{Client, EventFilter, EventQuery};
use factstore_example_orders::{AppState, app};
use support::{Factstore, call};

const ORDER: &str = r#"{"order_id": "ORD-1", "customer": "Ada", "customer_email": "ada@example.com",
  "items": [{"sku": "SKU-123", "quantity": 2, "price": 2500}, {"sku": "SKU-7", "quantity": 1, "price": 1000}]}"#;

#[tokio::test]
async fn an_order_goes_from_created_to_delivered_and_support_sees_every_step() {
    let factstore = Factstore::start().await;
    let client = Client::new(&factstore.url).unwrap();
    let app = app(AppState::new(client.clone()));

    let (status, body) = call(
        &app,
        "POST",
        "/orders",
        Some(ORDER),
        &[("x-correlation-id", "corr-123")],
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let types: Vec<&str> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        vec!["OrderCreated", "ItemAdded", "ItemAdded"],
        "one atomic append"
    );
    assert_eq!(body["version"], 3);

    // Too early and too late are both 409 wrong_stage, each message saying which it is.
    let (status, body) = call(
        &app,
        "POST",
        "/orders/ORD-1/shipments",
        Some(r#"{"tracking": "ABC123"}"#),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(
        body["error"]["message"],
        "order ORD-1: the order is not paid yet: shipping needs it paid first"
    );

    let steps = [
        (
            "/orders/ORD-1/shipments",
            r#"{"tracking": "ABC123"}"#,
            StatusCode::CONFLICT,
            Some("wrong_stage"),
        ),
        (
            "/orders/ORD-1/payments",
            r#"{"amount": 5999}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("wrong_amount"),
        ),
        (
            "/orders/ORD-1/items",
            r#"{"sku": "SKU-9", "quantity": 1, "price": 100}"#,
            StatusCode::CREATED,
            None,
        ),
        (
            "/orders/ORD-1/payments",
            r#"{"amount": 6100}"#,
            StatusCode::CREATED,
            None,
        ),
        (
            "/orders/ORD-1/items",
            r#"{"sku": "SKU-9", "quantity": 1, "price": 100}"#,
            StatusCode::CONFLICT,
            Some("wrong_stage"),
        ),
        (
            "/orders/ORD-1/payments",
            r#"{"amount": 6100}"#,
            StatusCode::CONFLICT,
            Some("wrong_stage"),
        ),
        (
            "/orders/ORD-1/delivery",
            "{}",
            StatusCode::CONFLICT,
            Some("wrong_stage"),
        ),
        (
            "/orders/ORD-1/shipments",
            r#"{"tracking": " "}"#,
            StatusCode::BAD_REQUEST,
            Some("invalid_order"),
        ),
        (
            "/orders/ORD-1/shipments",
            r#"{"tracking": "ABC123", "carrier": "UPS"}"#,
            StatusCode::CREATED,
            None,
        ),
        ("/orders/ORD-1/delivery", "{}", StatusCode::CREATED, None),
        (
            "/orders/ORD-404/delivery",
            "{}",
            StatusCode::NOT_FOUND,
            Some("order_not_found"),
        ),
    ];
    for (path, request, expected, code) in steps {
        let (status, body) = call(&app, "POST", path, Some(request), &[("x-user-id", "support-7")]).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (expected, code),
            "{path} {request}: {body}"
        );
    }
    let (status, body) = call(
        &app,
        "POST",
        "/orders/ORD-1/payments",
        Some(r#"{"amount": 6100}"#),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(
        body["error"]["message"],
        "order ORD-1: the order is Delivered: paying is no longer possible"
    );
    let (status, body) = call(&app, "POST", "/orders", Some(ORDER), &[]).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("order_exists"))
    );
    let (status, body) = call(
        &app,
        "POST",
        "/orders",
        Some(r#"{"order_id": "ORD-2", "customer": "Bob", "items": []}"#),
        &[],
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_order"))
    );

    // "Where's my order?": the exact history.
    let (status, body) = call(&app, "GET", "/orders/ORD-1/history", None, &[]).await;
    assert_eq!(status, StatusCode::OK);
    let history: Vec<&str> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        history,
        vec![
            "OrderCreated",
            "ItemAdded",
            "ItemAdded",
            "ItemAdded",
            "PaymentReceived",
            "OrderShipped",
            "OrderDelivered"
        ]
    );
    assert_eq!(
        body["events"][5]["event_data"],
        serde_json::json!({"tracking": "ABC123", "carrier": "UPS"})
    );
    assert_eq!(body["events"][5]["created_by"], "user:support-7");

    // The correlation id links the events of the creating request.
    let linked = client
        .read_events(&EventQuery::new().filter(EventFilter::new().correlation_id("corr-123")))
        .await
        .unwrap();
    assert_eq!(linked.events.len(), 3);
    factstore.stop().await;
}
