//! The order read models, all declarative: the server maintains them, no code runs here.

use factstore_client::{Client, EventFilter, Operation, ProjectionDefinition, ProjectionKey};
use serde_json::json;

/// Per order (`order:ORD-1`): status, customer, items, total, paid, tracking.
pub const ORDER_STATUS: &str = "order_status";
/// Per UTC day: orders shipped and delivered ("total shipped today").
pub const SHIPPING_DAILY: &str = "shipping_daily";
/// Per SKU (`/event_data/sku`): units ordered and in how many order lines.
pub const SKU_DEMAND: &str = "sku_demand";

pub fn order_status() -> ProjectionDefinition {
    ProjectionDefinition::new(
        EventFilter::new().aggregate_type("Order"),
        ProjectionKey::AggregateId,
    )
    .initial(json!({"status": "created", "items": 0, "total": 0, "paid": 0}))
    .on(
        "OrderCreated",
        [
            Operation::set("/status").value("created"),
            Operation::set("/customer").from("/event_data/customer"),
            Operation::set("/created_at").from("/created_at"),
        ],
    )
    .on(
        "ItemAdded",
        [
            Operation::add("/items").from("/event_data/quantity"),
            Operation::add("/total").from("/event_data/line_total"),
            Operation::append("/skus").from("/event_data/sku"),
        ],
    )
    .on(
        "PaymentReceived",
        [
            Operation::set("/status").value("paid"),
            Operation::add("/paid").from("/event_data/amount"),
        ],
    )
    .on(
        "OrderShipped",
        [
            Operation::set("/status").value("shipped"),
            Operation::set("/tracking").from("/event_data/tracking"),
            Operation::set("/carrier").from("/event_data/carrier").optional(),
            Operation::set("/shipped_at").from("/created_at"),
        ],
    )
    .on(
        "OrderDelivered",
        [
            Operation::set("/status").value("delivered"),
            Operation::set("/delivered_at").from("/created_at"),
        ],
    )
    .on("*", [Operation::set("/last_event").from("/event_type")])
}

pub fn shipping_daily() -> ProjectionDefinition {
    ProjectionDefinition::new(
        EventFilter::new()
            .aggregate_type("Order")
            .event_type("OrderShipped")
            .event_type("OrderDelivered"),
        ProjectionKey::Day,
    )
    .initial(json!({"shipped": 0, "delivered": 0}))
    .on("OrderShipped", [Operation::inc("/shipped")])
    .on("OrderDelivered", [Operation::inc("/delivered")])
}

pub fn sku_demand() -> ProjectionDefinition {
    ProjectionDefinition::new(
        EventFilter::new().aggregate_type("Order").event_type("ItemAdded"),
        ProjectionKey::Pointer("/event_data/sku".into()),
    )
    .initial(json!({"ordered": 0, "order_lines": 0}))
    .on(
        "ItemAdded",
        [
            Operation::add("/ordered").from("/event_data/quantity"),
            Operation::inc("/order_lines"),
        ],
    )
}

/// Puts the three projections.
pub async fn install(client: &Client) -> Result<(), factstore_client::Error> {
    client.put_projection(ORDER_STATUS, &order_status()).await?;
    client.put_projection(SHIPPING_DAILY, &shipping_daily()).await?;
    client.put_projection(SKU_DEMAND, &sku_demand()).await?;
    Ok(())
}
