//! The read models the bank asks the server to maintain (declarative projections, put at
//! start; putting the same definition again changes nothing).

use factstore_client::{Client, EventFilter, Operation, ProjectionDefinition, ProjectionKey};
use serde_json::json;

/// Per account (`account:ACC-001`): balance, owner, number of transactions, last event.
pub const BALANCES: &str = "bank_balances";
/// Per UTC day of `created_at`: deposits and withdrawals, their counts.
pub const DAILY_SUMMARY: &str = "bank_daily_summary";

pub fn balances() -> ProjectionDefinition {
    ProjectionDefinition::new(
        EventFilter::new()
            .aggregate_type("Account")
            .event_type("AccountCreated")
            .event_type("MoneyDeposited")
            .event_type("MoneyWithdrawn"),
        ProjectionKey::AggregateId,
    )
    .initial(json!({"balance": 0, "transactions": 0}))
    .on(
        "AccountCreated",
        [
            Operation::set("/balance").from("/event_data/initial"),
            Operation::set("/owner").from("/event_data/owner"),
        ],
    )
    .on(
        "MoneyDeposited",
        [
            Operation::add("/balance").from("/event_data/amount"),
            Operation::inc("/transactions"),
        ],
    )
    .on(
        "MoneyWithdrawn",
        [
            Operation::sub("/balance").from("/event_data/amount"),
            Operation::inc("/transactions"),
        ],
    )
    .on(
        "*",
        [
            Operation::set("/last_event").from("/event_type"),
            Operation::set("/updated_at").from("/created_at"),
        ],
    )
}

pub fn daily_summary() -> ProjectionDefinition {
    ProjectionDefinition::new(
        EventFilter::new()
            .aggregate_type("Account")
            .event_type("MoneyDeposited")
            .event_type("MoneyWithdrawn"),
        ProjectionKey::Day,
    )
    .initial(json!({"deposits": 0, "withdrawals": 0, "deposit_count": 0, "withdrawal_count": 0}))
    .on(
        "MoneyDeposited",
        [
            Operation::add("/deposits").from("/event_data/amount"),
            Operation::inc("/deposit_count"),
        ],
    )
    .on(
        "MoneyWithdrawn",
        [
            Operation::add("/withdrawals").from("/event_data/amount"),
            Operation::inc("/withdrawal_count"),
        ],
    )
}

/// Puts both projections.
pub async fn install(client: &Client) -> Result<(), factstore_client::Error> {
    client.put_projection(BALANCES, &balances()).await?;
    client.put_projection(DAILY_SUMMARY, &daily_summary()).await?;
    Ok(())
}
