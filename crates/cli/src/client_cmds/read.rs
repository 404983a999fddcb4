//! `factstore read`: one aggregate's events by version: all of them, page after page as it
//! prints them (one page held at a time), or the first `--limit N`.

use std::pin::pin;
use std::process::ExitCode;

use factstore_client::{AggregateQuery, Direction};
use futures::{StreamExt, TryStreamExt, stream};

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
    /// At most this many events (default: all of them); when there are more, stderr says
    /// where to continue.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
    #[command(flatten)]
    pub time: TimeArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// The server's default page; a smaller one for a smaller `--limit`.
const PAGE_EVENTS: u64 = 1000;

pub fn run(args: ReadArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let mut printer = Printer::new(args.client.json);
    let direction = if args.backward {
        Direction::Backward
    } else {
        Direction::Forward
    };
    let query = AggregateQuery {
        from_version: args.from_version,
        to_version: args.to_version,
        direction,
        // One event more than the limit tells whether there are more.
        limit: args
            .limit
            .map(|limit| limit.saturating_add(1).min(PAGE_EVENTS) as u32),
        from: args.time.from,
        to: args.time.to,
        as_of: args.time.as_of,
        raw: args.time.raw,
    };
    super::block_on(async move {
        // The first page says what the aggregate is; the stream reads on from there.
        let first = client.read_aggregate(&args.aggregate_id, &query).await?;
        if !printer.json() {
            printer.line(&format!(
                "{} ({}), version {}",
                first.aggregate_id, first.aggregate_type, first.version
            ))?;
        }
        let rest = first.next_from_version.map(|next| {
            client.aggregate_stream(
                &args.aggregate_id,
                AggregateQuery {
                    from_version: Some(next),
                    ..query
                },
            )
        });
        let mut events =
            pin!(stream::iter(first.events.into_iter().map(Ok)).chain(stream::iter(rest).flatten()));
        let mut printed = 0u64;
        let mut last_version: Option<u64> = None;
        while let Some(event) = events.try_next().await? {
            if let (Some(limit), Some(last)) = (args.limit.filter(|&limit| printed == limit), last_version) {
                let next = match direction {
                    Direction::Forward => last + 1,
                    Direction::Backward => last.saturating_sub(1),
                };
                super::stopped_at_limit(
                    &mut printer,
                    limit,
                    &format!("there are more events: continue with --from-version {next}"),
                )?;
                break;
            }
            printer.event(&event)?;
            printed += 1;
            last_version = Some(event.version);
        }
        printer.flush()?;
        Ok(ExitCode::SUCCESS)
    })
}
