//! `factstore subscriptions`: create, inspect and delete persistent subscription groups, see
//! and replay their parked (dead-lettered) events, and consume them from the shell: `poll`
//! leases events to a consumer as a worker would, `ack` and `nack` settle them by position
//! (for scripts, and for looking at what a group delivers).

use std::pin::pin;
use std::process::ExitCode;

use anyhow::{Context, bail};
use factstore_client::{
    Client, DeliveryOrdering, EventFilter, PollRequest, SubscriptionGroup, SubscriptionGroupStatus,
    SubscriptionStart,
};
use futures::TryStreamExt;

use super::output::Printer;
use super::{ClientArgs, FilterArgs};

/// The largest page of parked events the server serves.
const PARKED_PAGE_MAX: u64 = 1000;

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
    /// The group's parked (dead-lettered) events, by position.
    Parked {
        group: String,
        /// Parked events after this position.
        #[arg(long, value_name = "N")]
        after_position: Option<u64>,
        /// At most this many events (default: all of them); when there are more, stderr says
        /// where to continue.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        limit: Option<u64>,
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
    /// Lease events to a consumer and print them (then ack or nack them by position).
    ///
    /// Each event comes with its attempt (1 for a first delivery). Ack or nack it before the
    /// group's ack timeout, or it is delivered again.
    Poll(PollArgs),
    /// Settle leased events as handled, by position: they are never delivered again.
    Ack {
        /// The group's name.
        group: String,
        /// Positions of events the poll delivered.
        #[arg(value_name = "POSITION", required = true)]
        positions: Vec<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Give leased events back, by position: delivered again, or parked with --park.
    ///
    /// An event nacked without --park is delivered again, and parked after the group's
    /// max deliveries.
    Nack {
        /// The group's name.
        group: String,
        /// Positions of events the poll delivered.
        #[arg(value_name = "POSITION", required = true)]
        positions: Vec<u64>,
        /// Park them (dead-letter) now instead of delivering them again.
        #[arg(long)]
        park: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, clap::Args)]
pub struct PollArgs {
    /// The group's name.
    pub group: String,
    /// Who consumes: events are leased to it (1 to 255 bytes).
    #[arg(long, value_name = "NAME", default_value = "factstore-cli")]
    pub consumer: String,
    /// At most this many events (1 to 10000; the server's default is 100).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max: Option<u32>,
    /// When no event is ready, wait this long for one (at most 60000; 0 answers at once).
    #[arg(long, value_name = "MS", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub wait_ms: u64,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Most positions one ack or nack may carry; more are sent in several.
const POSITIONS_PER_REQUEST: usize = 10_000;

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
        SubscriptionsCommand::Parked {
            group,
            after_position,
            limit,
            client,
        } => {
            let (client, mut printer) = connect(&client)?;
            super::block_on(async move {
                // Pages end at the limit, so that only more parked events read another.
                let page = limit.map(|limit| limit.min(PARKED_PAGE_MAX) as u32);
                let mut parked = pin!(client.parked_stream(&group, after_position, page));
                let mut printed = 0u64;
                let mut last_position = None;
                while let Some(delivery) = parked.try_next().await? {
                    if let (Some(limit), Some(last)) = (limit.filter(|&l| printed == l), last_position) {
                        super::stopped_at_limit(
                            &mut printer,
                            limit,
                            &format!("more events are parked: continue with --after-position {last}"),
                        )?;
                        break;
                    }
                    printer.delivery(&delivery)?;
                    printed += 1;
                    last_position = Some(delivery.event.position);
                }
                if printed == 0 && !printer.json() {
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
        SubscriptionsCommand::Poll(args) => poll(args),
        SubscriptionsCommand::Ack {
            group,
            positions,
            client,
        } => {
            let (client, mut printer) = connect(&client)?;
            super::block_on(async move {
                for chunk in positions.chunks(POSITIONS_PER_REQUEST) {
                    client.ack(&group, chunk).await?;
                }
                let count = positions.len();
                if printer.json() {
                    printer.value(&serde_json::json!({"group": group, "acked": count}))?;
                } else {
                    printer.line(&format!("acked {count} {} of {group}", events(count)))?;
                }
                printer.flush()?;
                Ok(ExitCode::SUCCESS)
            })
        }
        SubscriptionsCommand::Nack {
            group,
            positions,
            park,
            client,
        } => {
            let (client, mut printer) = connect(&client)?;
            super::block_on(async move {
                for chunk in positions.chunks(POSITIONS_PER_REQUEST) {
                    client.nack(&group, chunk, park).await?;
                }
                let count = positions.len();
                if printer.json() {
                    printer.value(&serde_json::json!({"group": group, "nacked": count, "parked": park}))?;
                } else if park {
                    printer.line(&format!("parked {count} {} of {group}", events(count)))?;
                } else {
                    printer.line(&format!(
                        "nacked {count} {} of {group}: they will be delivered again",
                        events(count)
                    ))?;
                }
                printer.flush()?;
                Ok(ExitCode::SUCCESS)
            })
        }
    }
}

fn events(count: usize) -> &'static str {
    if count == 1 { "event" } else { "events" }
}

/// `subscriptions poll`: one poll, its deliveries printed, and on stderr how to settle them.
fn poll(args: PollArgs) -> anyhow::Result<ExitCode> {
    let (client, mut printer) = connect(&args.client)?;
    let mut request = PollRequest::new(&args.consumer).wait_ms(args.wait_ms);
    request.max = args.max;
    super::block_on(async move {
        let deliveries = client.poll(&args.group, &request).await?;
        for delivery in &deliveries {
            printer.delivery(delivery)?;
        }
        if deliveries.is_empty() {
            if !printer.json() {
                printer.line(&format!("no events to deliver in {}", args.group))?;
            }
        } else if !printer.json() {
            printer.flush()?;
            eprintln!(
                "leased {} {} to consumer {}: settle them by position with `factstore subscriptions \
                 ack {} POSITION...` (or nack) before the group's ack timeout",
                deliveries.len(),
                events(deliveries.len()),
                args.consumer,
                super::shell_word(&args.group)
            );
        }
        printer.flush()?;
        Ok(ExitCode::SUCCESS)
    })
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
