//! `factstore query`: all events in position order, filtered, page after page up to `--limit`.

use std::pin::pin;
use std::process::ExitCode;

use factstore_client::EventQuery;
use futures::TryStreamExt;

use super::output::Printer;
use super::{ClientArgs, FilterArgs, TimeArgs};

#[derive(Debug, clap::Args)]
pub struct QueryArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Events after this position.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub after_position: u64,
    /// Events up to this position, inclusive.
    #[arg(long, value_name = "N")]
    pub to_position: Option<u64>,
    /// At most this many events (0: all of them).
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub limit: u64,
    #[command(flatten)]
    pub time: TimeArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// The largest page the server serves.
const PAGE_EVENTS_MAX: u64 = 10_000;

pub fn run(args: QueryArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let mut printer = Printer::new(args.client.json);
    let limit = if args.limit == 0 { u64::MAX } else { args.limit };
    let query = EventQuery {
        filter: args.filter.filter(),
        after_position: args.after_position,
        to_position: args.to_position,
        limit: Some(limit.min(PAGE_EVENTS_MAX) as u32),
        from: args.time.from,
        to: args.time.to,
        as_of: args.time.as_of,
        raw: args.time.raw,
    };
    super::block_on(async move {
        let mut events = pin!(client.events_stream(query));
        let mut printed = 0u64;
        while printed < limit
            && let Some(event) = events.try_next().await?
        {
            printer.event(&event)?;
            printed += 1;
        }
        printer.flush()?;
        Ok(ExitCode::SUCCESS)
    })
}
