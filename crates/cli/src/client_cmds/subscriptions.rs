//! `factstore subscriptions`: create, inspect and delete persistent subscription groups, and
//! see and replay their parked (dead-lettered) events.

use std::process::ExitCode;

use anyhow::{Context, bail};
use factstore_client::{
    Client, DeliveryOrdering, EventFilter, SubscriptionGroup, SubscriptionGroupStatus, SubscriptionStart,
};

use super::output::{Printer, event_line};
use super::{ClientArgs, FilterArgs};

#[derive(Debug, clap::Args)]
pub struct SubscriptionsArgs {
    #[command(subcommand)]
    pub command: SubscriptionsCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum SubscriptionsCommand {
    /// Every group: checkpoint, events in flight, parked, lag.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Create a group (or replace its definition).
    Create(Box<CreateArgs>),
    /// One group's checkpoint, events in flight, parked events and lag.
    Show {
        group: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The group's parked (dead-lettered) events.
    Parked {
        group: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Deliver the group's parked events again.
    Replay {
        group: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a group and its checkpoint.
    Delete {
        group: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    pub group: String,
    /// The filter as a JSON object ({"event_types": [...], "aggregate_type": ...}), instead of
    /// the filter flags.
    #[arg(long, value_name = "JSON")]
    pub filter_json: Option<String>,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// beginning (every matching event), end (only new ones), or a position P (from P + 1).
    #[arg(long, default_value = "beginning", value_parser = parse_start)]
    pub start: SubscriptionStart,
    /// none, or per-aggregate: one event of an aggregate in flight at a time, in version order.
    #[arg(long, value_enum)]
    pub ordering: Option<Ordering>,
    /// How long a consumer has to ack a delivery before it is delivered again.
    #[arg(long, value_name = "MS")]
    pub ack_timeout_ms: Option<u64>,
    /// Deliveries of an event before it is parked.
    #[arg(long)]
    pub max_deliveries: Option<u32>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Ordering {
    None,
    PerAggregate,
}

fn parse_start(text: &str) -> Result<SubscriptionStart, String> {
    text.parse()
}

pub fn run(args: SubscriptionsArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        SubscriptionsCommand::List { client } => {
            let (client, mut printer) = connect(&client)?;
            super::block_on(async move {
                let groups = client.list_subscriptions().await?;
                if printer.json() {
                    for group in &groups {
                        printer.value(group)?;
                    }
                } else if groups.is_empty() {
                    printer.line("no subscription groups")?;
                } else {
                    printer.line(&format!(
                        "{:<24} {:>10} {:>9} {:>7} {:>8}",
                        "GROUP", "CHECKPOINT", "IN_FLIGHT", "PARKED", "LAG"
                    ))?;
                    for g in &groups {
                        printer.line(&format!(
                            "{:<24} {:>10} {:>9} {:>7} {:>8}",
                            g.group().unwrap_or("?"),
                            g.checkpoint,
                            g.in_flight,
                            g.parked,
                            g.lag
                        ))?;
                    }
                }
                printer.flush()?;
                Ok(ExitCode::SUCCESS)
            })
        }
        SubscriptionsCommand::Create(args) => {
            let args = *args;
            let filter = filter(&args)?;
            let mut definition = SubscriptionGroup::new(filter).start(args.start);
            definition.ack_timeout_ms = args.ack_timeout_ms;
            definition.max_deliveries = args.max_deliveries;
            definition.ordering = args.ordering.map(|o| match o {
                Ordering::None => DeliveryOrdering::None,
                Ordering::PerAggregate => DeliveryOrdering::PerAggregate,
            });
            let (client, mut printer) = connect(&args.client)?;
            let group = args.group;
            super::block_on(async move {
                let created = client.put_subscription(&group, &definition).await?;
                if printer.json() {
                    printer.value(&serde_json::json!({"group": group, "created": created}))?;
                } else if created {
                    printer.line(&format!("created subscription group {group}"))?;
                } else {
                    printer.line(&format!("replaced subscription group {group}"))?;
                }
                printer.flush()?;
                Ok(ExitCode::SUCCESS)
            })
        }
        SubscriptionsCommand::Show { group, client } => {
            let (client, mut printer) = connect(&client)?;
            super::block_on(async move {
                let status = client.get_subscription(&group).await?;
                show(&mut printer, &group, &status)?;
                printer.flush()?;
                Ok(ExitCode::SUCCESS)
            })
        }
        SubscriptionsCommand::Parked { group, client } => {
            let (client, mut printer) = connect(&client)?;
            super::block_on(async move {
                let parked = client.parked(&group).await?;
                for delivery in &parked {
                    if printer.json() {
                        let mut value = serde_json::to_value(&delivery.event)?;
                        if let Some(object) = value.as_object_mut() {
                            object.insert("attempt".to_owned(), delivery.attempt.into());
                        }
                        printer.value(&value)?;
                    } else {
                        printer.line(&event_line(&delivery.event))?;
                    }
                }
                if parked.is_empty() && !printer.json() {
                    printer.line(&format!("no parked events in {group}"))?;
                }
                printer.flush()?;
                Ok(ExitCode::SUCCESS)
            })
        }
        SubscriptionsCommand::Replay { group, client } => {
            let (client, mut printer) = connect(&client)?;
            super::block_on(async move {
                let outcome = client.replay_parked(&group).await?;
                match (outcome.replayed, outcome.parked) {
                    (Some(replayed), Some(parked)) => printer.line(&format!(
                        "{replayed} parked events of {group} will be delivered again ({parked} still parked)"
                    ))?,
                    _ => printer.line(&format!("parked events of {group} will be delivered again"))?,
                }
                printer.flush()?;
                Ok(ExitCode::SUCCESS)
            })
        }
        SubscriptionsCommand::Delete { group, client } => {
            let (client, mut printer) = connect(&client)?;
            super::block_on(async move {
                client.delete_subscription(&group).await?;
                printer.line(&format!("deleted subscription group {group}"))?;
                printer.flush()?;
                Ok(ExitCode::SUCCESS)
            })
        }
    }
}

fn connect(args: &ClientArgs) -> anyhow::Result<(Client, Printer)> {
    Ok((args.client()?, Printer::new(args.json)))
}

fn filter(args: &CreateArgs) -> anyhow::Result<EventFilter> {
    let flags = args.filter.filter();
    match &args.filter_json {
        None => Ok(flags),
        Some(_) if flags != EventFilter::default() => {
            bail!("give the filter either as --filter-json or as filter flags, not both")
        }
        Some(json) => serde_json::from_str(json)
            .with_context(|| format!("--filter-json '{json}' is not a filter object")),
    }
}

fn show(printer: &mut Printer, group: &str, status: &SubscriptionGroupStatus) -> std::io::Result<()> {
    if printer.json() {
        return printer.value(status);
    }
    let mut fields = vec![
        ("group".to_owned(), group.to_owned()),
        ("checkpoint".to_owned(), status.checkpoint.to_string()),
        ("in_flight".to_owned(), status.in_flight.to_string()),
        ("parked".to_owned(), status.parked.to_string()),
        ("lag".to_owned(), status.lag.to_string()),
    ];
    // The rest of what the server sent (its definition, head, …), strings without quotes.
    for (key, value) in &status.other {
        if key != "group" && key != "name" {
            let text = match value {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            fields.push((key.clone(), text));
        }
    }
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (key, value) in fields {
        printer.line(&format!("{key:<width$}  {value}"))?;
    }
    Ok(())
}
