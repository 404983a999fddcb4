//! `factstore read`: one aggregate's events by version, page after page.

use std::pin::pin;
use std::process::ExitCode;

use factstore_client::{AggregateQuery, Direction};
use futures::TryStreamExt;

use super::output::Printer;
use super::{ClientArgs, TimeArgs};

#[derive(Debug, clap::Args)]
pub struct ReadArgs {
    /// The aggregate to read.
    pub aggregate_id: String,
    /// The first version, in the direction of travel (forward: 1; backward: the current one).
    #[arg(long, value_name = "N")]
    pub from_version: Option<u64>,
    /// The last version, inclusive, in the direction of travel.
    #[arg(long, value_name = "N")]
    pub to_version: Option<u64>,
    /// Newest first.
    #[arg(long)]
    pub backward: bool,
    /// At most this many events (default: all).
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    #[command(flatten)]
    pub time: TimeArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Events asked of the server per page.
const PAGE_EVENTS: u64 = 1000;

pub fn run(args: ReadArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let mut printer = Printer::new(args.client.json);
    let page_events = args
        .limit
        .map_or(PAGE_EVENTS, |limit| limit.clamp(1, PAGE_EVENTS));
    let query = AggregateQuery {
        from_version: args.from_version,
        to_version: args.to_version,
        direction: if args.backward {
            Direction::Backward
        } else {
            Direction::Forward
        },
        limit: Some(page_events as u32),
        from: args.time.from,
        to: args.time.to,
        as_of: args.time.as_of,
        raw: args.time.raw,
    };
    super::block_on(async move {
        if args.limit == Some(0) {
            return Ok(ExitCode::SUCCESS);
        }
        // The first page says what the aggregate is; the stream reads it again from there.
        let first = client.read_aggregate(&args.aggregate_id, &query).await?;
        if !printer.json() {
            printer.line(&format!(
                "{} ({}), version {}",
                first.aggregate_id, first.aggregate_type, first.version
            ))?;
        }
        let mut printed = 0u64;
        let limit = args.limit.unwrap_or(u64::MAX);
        for event in &first.events {
            if printed == limit {
                break;
            }
            printer.event(event)?;
            printed += 1;
        }
        if let Some(next) = first.next_from_version.filter(|_| printed < limit) {
            let rest = AggregateQuery {
                from_version: Some(next),
                ..query
            };
            let mut events = pin!(client.aggregate_stream(&args.aggregate_id, rest));
            while printed < limit
                && let Some(event) = events.try_next().await?
            {
                printer.event(&event)?;
                printed += 1;
            }
        }
        printer.flush()?;
        Ok(ExitCode::SUCCESS)
    })
}
