//! The order: created with its items, paid once for its total, shipped once paid, delivered
//! once shipped.

use factstore_client::sdk::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

/// The aggregate id of order `order_id` (`ORD-1` → `order:ORD-1`).
pub fn aggregate_id(order_id: &str) -> String {
    format!("order:{order_id}")
}

/// The order aggregate.
#[derive(Debug)]
pub struct Order;

/// Where an order is in its life, in the order of its stages.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    #[default]
    None,
    Created,
    Paid,
    Shipped,
    Delivered,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderState {
    pub stage: Stage,
    /// In cents.
    pub total: i64,
    pub items: u32,
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Item {
    pub sku: String,
    pub quantity: u32,
    /// The unit price in cents.
    pub price: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum OrderCommand {
    Create {
        customer: String,
        customer_email: Option<String>,
        items: Vec<Item>,
    },
    AddItem(Item),
    Pay {
        amount: i64,
    },
    Ship {
        tracking: String,
        carrier: Option<String>,
    },
    Deliver,
}

/// The facts. `ItemAdded` carries its `line_total` (quantity × price) so that read models
/// can sum it without computing anything (event enrichment).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event_type", content = "event_data")]
pub enum OrderEvent {
    OrderCreated {
        customer: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        customer_email: Option<String>,
    },
    ItemAdded {
        sku: String,
        quantity: u32,
        price: i64,
        line_total: i64,
    },
    PaymentReceived {
        amount: i64,
    },
    OrderShipped {
        tracking: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        carrier: Option<String>,
    },
    OrderDelivered,
}

impl DomainEvent for OrderEvent {}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the order already exists")]
    AlreadyExists,
    #[error("the order does not exist")]
    NotFound,
    #[error("an order needs at least one item")]
    NoItems,
    #[error("item {sku}: the quantity must be positive and the price not negative")]
    BadItem { sku: String },
    /// The order is past the stage the command needs (paying twice, adding to a paid order).
    #[error("the order is {stage:?}: {action} is no longer possible")]
    WrongStage { stage: Stage, action: &'static str },
    /// The order has not reached the stage the command needs (shipping an unpaid order).
    #[error("the order is not {missing} yet: {action} needs it {missing} first")]
    NotYet {
        action: &'static str,
        missing: &'static str,
    },
    #[error("the payment must be the order's total, {total}, not {amount}")]
    WrongAmount { total: i64, amount: i64 },
    #[error("a tracking number is required")]
    NoTracking,
}

fn item_added(item: Item) -> Result<OrderEvent, Refused> {
    if item.quantity == 0 || item.price < 0 || item.sku.trim().is_empty() {
        return Err(Refused::BadItem { sku: item.sku });
    }
    Ok(OrderEvent::ItemAdded {
        line_total: i64::from(item.quantity) * item.price,
        sku: item.sku,
        quantity: item.quantity,
        price: item.price,
    })
}

impl Aggregate for Order {
    const AGGREGATE_TYPE: &'static str = "Order";
    type State = OrderState;
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = Refused;

    fn apply(state: &mut OrderState, event: &OrderEvent) {
        match event {
            OrderEvent::OrderCreated { .. } => state.stage = Stage::Created,
            OrderEvent::ItemAdded { line_total, .. } => {
                state.total += line_total;
                state.items += 1;
            }
            OrderEvent::PaymentReceived { .. } => state.stage = Stage::Paid,
            OrderEvent::OrderShipped { .. } => state.stage = Stage::Shipped,
            OrderEvent::OrderDelivered => state.stage = Stage::Delivered,
        }
    }

    fn handle(state: &OrderState, command: OrderCommand) -> Result<Vec<OrderEvent>, Refused> {
        let stage = state.stage;
        // A command that needs stage `needs`: before it, the order lacks what `missing` says;
        // after it, the moment has passed.
        let wrong = |action, needs: Stage, missing| {
            if stage < needs {
                Err(Refused::NotYet { action, missing })
            } else {
                Err(Refused::WrongStage { stage, action })
            }
        };
        match command {
            OrderCommand::Create { .. } if stage != Stage::None => Err(Refused::AlreadyExists),
            OrderCommand::Create { items, .. } if items.is_empty() => Err(Refused::NoItems),
            OrderCommand::Create {
                customer,
                customer_email,
                items,
            } => {
                let mut events = vec![OrderEvent::OrderCreated {
                    customer,
                    customer_email,
                }];
                for item in items {
                    events.push(item_added(item)?);
                }
                Ok(events)
            }
            _ if stage == Stage::None => Err(Refused::NotFound),
            OrderCommand::AddItem(_) if stage != Stage::Created => {
                wrong("adding an item", Stage::Created, "created")
            }
            OrderCommand::AddItem(item) => Ok(vec![item_added(item)?]),
            OrderCommand::Pay { .. } if stage != Stage::Created => wrong("paying", Stage::Created, "created"),
            OrderCommand::Pay { amount } if amount != state.total => Err(Refused::WrongAmount {
                total: state.total,
                amount,
            }),
            OrderCommand::Pay { amount } => Ok(vec![OrderEvent::PaymentReceived { amount }]),
            OrderCommand::Ship { .. } if stage != Stage::Paid => wrong("shipping", Stage::Paid, "paid"),
            OrderCommand::Ship { tracking, .. } if tracking.trim().is_empty() => Err(Refused::NoTracking),
            OrderCommand::Ship { tracking, carrier } => {
                Ok(vec![OrderEvent::OrderShipped { tracking, carrier }])
            }
            OrderCommand::Deliver if stage != Stage::Shipped => {
                wrong("delivering", Stage::Shipped, "shipped")
            }
            OrderCommand::Deliver => Ok(vec![OrderEvent::OrderDelivered]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use factstore_client::sdk::AggregateTest;

    fn created() -> Vec<OrderEvent> {
        vec![
            OrderEvent::OrderCreated {
                customer: "Ada".into(),
                customer_email: None,
            },
            OrderEvent::ItemAdded {
                sku: "SKU-123".into(),
                quantity: 2,
                price: 2500,
                line_total: 5000,
            },
        ]
    }

    fn item(sku: &str, quantity: u32, price: i64) -> Item {
        Item {
            sku: sku.into(),
            quantity,
            price,
        }
    }

    #[test]
    fn an_order_is_created_with_its_items() {
        AggregateTest::<Order>::new()
            .when(OrderCommand::Create {
                customer: "Ada".into(),
                customer_email: None,
                items: vec![item("SKU-123", 2, 2500)],
            })
            .then_events(created());
        AggregateTest::<Order>::new()
            .when(OrderCommand::Create {
                customer: "Ada".into(),
                customer_email: None,
                items: vec![],
            })
            .then_error(Refused::NoItems);
        AggregateTest::<Order>::given(created())
            .when(OrderCommand::Create {
                customer: "Ada".into(),
                customer_email: None,
                items: vec![item("SKU-1", 1, 1)],
            })
            .then_error(Refused::AlreadyExists);
        AggregateTest::<Order>::new()
            .when(OrderCommand::Create {
                customer: "Ada".into(),
                customer_email: None,
                items: vec![item("SKU-1", 0, 1)],
            })
            .then_error(Refused::BadItem { sku: "SKU-1".into() });
    }

    #[test]
    fn the_lifecycle_goes_in_order() {
        AggregateTest::<Order>::given(created())
            .when(OrderCommand::Pay { amount: 4999 })
            .then_error(Refused::WrongAmount {
                total: 5000,
                amount: 4999,
            });
        AggregateTest::<Order>::given(created())
            .when(OrderCommand::Ship {
                tracking: "ABC123".into(),
                carrier: None,
            })
            .then_error(Refused::NotYet {
                action: "shipping",
                missing: "paid",
            });
        AggregateTest::<Order>::given(created())
            .when(OrderCommand::Deliver)
            .then_error(Refused::NotYet {
                action: "delivering",
                missing: "shipped",
            });
        let mut paid = created();
        paid.push(OrderEvent::PaymentReceived { amount: 5000 });
        AggregateTest::<Order>::given(paid.clone())
            .when(OrderCommand::AddItem(item("SKU-9", 1, 1)))
            .then_error_matches(|e| matches!(e, Refused::WrongStage { .. }));
        AggregateTest::<Order>::given(paid.clone())
            .when(OrderCommand::Ship {
                tracking: "ABC123".into(),
                carrier: None,
            })
            .then_events([OrderEvent::OrderShipped {
                tracking: "ABC123".into(),
                carrier: None,
            }]);
        let mut shipped = paid;
        shipped.push(OrderEvent::OrderShipped {
            tracking: "ABC123".into(),
            carrier: None,
        });
        AggregateTest::<Order>::given(shipped.clone())
            .when(OrderCommand::Deliver)
            .then_events([OrderEvent::OrderDelivered]);
        shipped.push(OrderEvent::OrderDelivered);
        AggregateTest::<Order>::given(shipped)
            .when(OrderCommand::Deliver)
            .then_error(Refused::WrongStage {
                stage: Stage::Delivered,
                action: "delivering",
            });
        AggregateTest::<Order>::new()
            .when(OrderCommand::Deliver)
            .then_error(Refused::NotFound);
    }
}
