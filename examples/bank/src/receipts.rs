//! The event bus of the write workflow: a receipt for every deposit and
//! withdrawal, written by a worker that consumes a persistent subscription with the SDK's
//! [`Projector`] (poll → handle → ack; a failed handler is nacked and delivered again).
//!
//! Delivery is at least once: an event whose ack was lost comes again. The receipt names the
//! event id, so whoever reads the receipts can drop a repeat; this worker also skips the ids it
//! has already written while it runs.

use std::collections::HashSet;
use std::io::Write;
use std::sync::{Arc, Mutex};

use factstore_client::sdk::{Projector, ProjectorStats};
use factstore_client::{
    Client, DeliveryOrdering, Event, EventFilter, SubscriptionGroup, SubscriptionStart,
    time::format_timestamp,
};

/// The group's name.
pub const GROUP: &str = "bank_receipts";

/// The group: every money event from the moment the group is created (`start: end`: a new
/// deployment does not send receipts for the past), one event of an account in flight at a
/// time so that an account's receipts come in order.
pub fn group() -> SubscriptionGroup {
    SubscriptionGroup::new(
        EventFilter::new()
            .aggregate_type("Account")
            .event_type("MoneyDeposited")
            .event_type("MoneyWithdrawn"),
    )
    .start(SubscriptionStart::End)
    .ordering(DeliveryOrdering::PerAggregate)
    .max_deliveries(5)
}

/// Creates the group if it does not exist (putting the same definition again keeps its
/// progress).
pub async fn install(client: &Client) -> Result<(), factstore_client::Error> {
    client.put_subscription(GROUP, &group()).await?;
    Ok(())
}

/// One receipt line: `RECEIPT <event_id> <account> <deposited|withdrew> <amount> <currency> <when>`.
pub fn receipt(event: &Event) -> Result<String, String> {
    let data = event.event_data.to_value();
    let amount = data["amount"]
        .as_i64()
        .ok_or_else(|| format!("event {} has no integer amount", event.event_id))?;
    let currency = data["currency"].as_str().unwrap_or("USD");
    let verb = match event.event_type.as_str() {
        "MoneyDeposited" => "deposited",
        "MoneyWithdrawn" => "withdrew",
        other => return Err(format!("no receipt for a {other} event")),
    };
    Ok(format!(
        "RECEIPT {} {} {verb} {amount} {currency} {}",
        event.event_id,
        event.aggregate_id,
        format_timestamp(event.created_at)
    ))
}

/// Writes a receipt line to `out` for each event of the group until `stop` completes.
pub async fn run<W: Write + Send + 'static>(
    client: Client,
    consumer: &str,
    out: W,
    stop: impl std::future::Future<Output = ()>,
) -> Result<ProjectorStats, factstore_client::Error> {
    let out = Arc::new(Mutex::new(out));
    let written: Arc<Mutex<HashSet<uuid::Uuid>>> = Arc::default();
    Projector::new(client, GROUP, consumer)
        .batch(50)
        .run(
            move |delivery| {
                let out = out.clone();
                let written = written.clone();
                async move {
                    let event = delivery.event;
                    if written.lock().map_err(|_| "poisoned")?.contains(&event.event_id) {
                        return Ok(());
                    }
                    let line = receipt(&event)?;
                    let mut out = out.lock().map_err(|_| "poisoned")?;
                    writeln!(out, "{line}")
                        .and_then(|()| out.flush())
                        .map_err(|e| e.to_string())?;
                    written.lock().map_err(|_| "poisoned")?.insert(event.event_id);
                    Ok::<(), String>(())
                }
            },
            stop,
        )
        .await
}
