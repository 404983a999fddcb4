//! The order read models against a real server: order status, shipping per day, demand per
//! SKU, all declarative projections.
#![allow(clippy::unwrap_used)]

mod support;

use axum::http::StatusCode;
use factstore_client::Client;
use factstore_example_orders::{AppState, app, projections};
use serde_json::json;
use support::{Factstore, call};

#[tokio::test]
async fn status_shipping_and_demand_follow_the_orders() {
    let factstore = Factstore::start().await;
    let client = Client::new(&factstore.url).unwrap();
    projections::install(&client).await.unwrap();
    let app = app(AppState::new(client.clone()));

    for (id, sku, quantity) in [("ORD-1", "SKU-123", 2), ("ORD-2", "SKU-123", 3)] {
        let body = json!({"order_id": id, "customer": "Ada", "items": [{"sku": sku, "quantity": quantity, "price": 100}]});
        let (status, _) = call(&app, "POST", "/orders", Some(&body.to_string()), &[]).await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let (_, paid) = call(
        &app,
        "POST",
        "/orders/ORD-1/payments",
        Some(r#"{"amount": 200}"#),
        &[],
    )
    .await;
    let (status, body) = call(
        &app,
        "GET",
        &format!("/orders/ORD-1?min_position={}", paid["position"]),
        None,
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (
            body["status"].as_str(),
            body["items"].as_i64(),
            body["total"].as_i64()
        ),
        (Some("paid"), Some(2), Some(200))
    );

    let (_, shipped) = call(
        &app,
        "POST",
        "/orders/ORD-1/shipments",
        Some(r#"{"tracking": "ABC123"}"#),
        &[],
    )
    .await;
    let (status, body) = call(&app, "GET", "/orders/ORD-1?source=event_store", None, &[]).await;
    assert_eq!(
        (status, body["status"].as_str(), body["tracking"].as_str()),
        (StatusCode::OK, Some("shipped"), Some("ABC123"))
    );

    let (_, delivered) = call(&app, "POST", "/orders/ORD-1/delivery", None, &[]).await;
    let event_id = uuid::Uuid::parse_str(delivered["event_id"].as_str().unwrap()).unwrap();
    client
        .wait_materialized(event_id, std::time::Duration::from_secs(5))
        .await
        .unwrap();
    let _ = shipped;

    let (_, body) = call(&app, "GET", "/shipping", None, &[]).await;
    let days = body["days"].as_array().unwrap();
    assert_eq!(days.len(), 1, "{body}");
    assert_eq!(days[0]["shipping"], json!({"shipped": 1, "delivered": 1}));
    let day = days[0]["day"].as_str().unwrap().to_owned();
    let (_, body) = call(&app, "GET", &format!("/shipping/{day}"), None, &[]).await;
    assert_eq!(body["shipping"]["shipped"], 1);

    let (_, body) = call(&app, "GET", "/skus/SKU-123", None, &[]).await;
    assert_eq!(body["demand"], json!({"ordered": 5, "order_lines": 2}));
    let (status, _) = call(&app, "GET", "/orders/ORD-404", None, &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    factstore.stop().await;
}
