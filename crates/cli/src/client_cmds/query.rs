//! `factstore query`: all events in position order, filtered: every matching event, page after
//! page as it prints them (one page held at a time), or the first `--limit N`.

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
    /// At most this many events (default: every matching event); when more match, stderr
    /// says where to continue.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
    #[command(flatten)]
    pub time: TimeArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// The server's default page; a smaller one for a smaller `--limit`.
const PAGE_EVENTS: u64 = 1000;

pub fn run(args: QueryArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let mut printer = Printer::new(args.client.json);
    let query = EventQuery {
        filter: args.filter.filter(),
        after_position: args.after_position,
        to_position: args.to_position,
        // One event more than the limit tells whether more match.
        limit: args
            .limit
            .map(|limit| limit.saturating_add(1).min(PAGE_EVENTS) as u32),
        from: args.time.from,
        to: args.time.to,
        as_of: args.time.as_of,
        raw: args.time.raw,
    };
    super::block_on(async move {
        let mut events = pin!(client.events_stream(query));
        let mut printed = 0u64;
        let mut last_position = args.after_position;
        while let Some(event) = events.try_next().await? {
            if let Some(limit) = args.limit.filter(|&limit| printed == limit) {
                super::stopped_at_limit(
                    &mut printer,
                    limit,
                    &format!("more events match: continue with --after-position {last_position}"),
                )?;
                break;
            }
            printer.event(&event)?;
            printed += 1;
            last_position = event.position;
        }
        printer.flush()?;
        Ok(ExitCode::SUCCESS)
    })
}
