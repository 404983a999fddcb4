//! `factstore projections`: define, inspect, read, rebuild and delete projections (read
//! models the server maintains).

use std::io::Read;
use std::path::PathBuf;
use std::pin::pin;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use factstore_client::{
    Client, Error, ProjectionDefinition, ProjectionRunStatus, ProjectionStatus, StateQuery, StateSource,
    TimeBound,
};
use futures::TryStreamExt;

use super::ClientArgs;
use super::output::Printer;

#[derive(Debug, clap::Args)]
pub struct ProjectionsArgs {
    #[command(subcommand)]
    pub command: ProjectionsCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum ProjectionsCommand {
    /// Every projection: status, position, lag, keys.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Create or replace a projection from a JSON definition (a changed definition rebuilds it).
    #[command(long_about = PUT_HELP)]
    Put {
        name: String,
        /// The definition: a JSON file, or - for stdin.
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// One projection's status, position, lag, keys and error.
    Show {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// One key's state, or every key's state when no key is given.
    State(StateArgs),
    /// Fold every event again; the old state serves until the new one has caught up.
    Rebuild {
        name: String,
        /// Wait until the rebuild has caught up, showing its progress.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds (exit 1; the rebuild goes on).
        #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
        timeout: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a projection and its states.
    Delete {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, clap::Args)]
pub struct StateArgs {
    pub name: String,
    /// The key (an aggregate id, a day YYYY-MM-DD, `all`, or the value the key pointer picks).
    pub key: Option<String>,
    /// Read-your-writes: wait until the projection has passed this position.
    #[arg(long, value_name = "POSITION")]
    pub min_position: Option<u64>,
    /// With --min-position: how long the server waits (its default is 5000 ms).
    #[arg(long, value_name = "MS")]
    pub wait_ms: Option<u64>,
    /// Fold straight from the events (always current) instead of the maintained state.
    #[arg(long, value_enum, default_value_t = Source::ReadModel)]
    pub source: Source,
    /// Time travel: only events created at or before this time (RFC 3339 or YYYY-MM-DD).
    #[arg(long, value_name = "TIME")]
    pub until: Option<TimeBound>,
    /// Time travel: only events recorded at or before this time.
    #[arg(long, value_name = "TIME")]
    pub as_of: Option<TimeBound>,
    /// Without KEY: start after this key.
    #[arg(long, value_name = "KEY")]
    pub after_key: Option<String>,
    /// Without KEY: at most this many states (default: all of them); when there are more,
    /// stderr says where to continue.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// The largest page of states the server serves.
const STATES_PAGE_MAX: u64 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Source {
    ReadModel,
    EventStore,
}

const PUT_HELP: &str = "Create or replace a projection from a JSON definition, such as

{\"filter\": {\"aggregate_type\": \"Account\"},
 \"key\": \"aggregate_id\",
 \"initial\": {\"balance\": 0},
 \"on\": {\"MoneyDeposited\": [{\"op\": \"add\", \"path\": \"/balance\", \"from\": \"/event_data/amount\"}],
        \"MoneyWithdrawn\": [{\"op\": \"sub\", \"path\": \"/balance\", \"from\": \"/event_data/amount\"}]}}

key: aggregate_id, day, all, or a JSON Pointer into the event. Operations: set, add, sub, inc, \
min, max, append, unset. A changed definition rebuilds the projection.";

pub fn run(args: ProjectionsArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ProjectionsCommand::List { client } => {
            let (client, mut printer) = connect(&client)?;
            super::block_on(async move {
                let projections = client.list_projections().await?;
                if printer.json() {
                    for projection in &projections {
                        printer.value(projection)?;
                    }
                } else if projections.is_empty() {
                    printer.line("no projections")?;
                } else {
                    printer.line(&format!(
                        "{:<24} {:<10} {:>10} {:>8} {:>8} {:>8}  ERROR",
                        "NAME", "STATUS", "POSITION", "LAG", "KEYS", "UNKEYED"
                    ))?;
                    for p in &projections {
                        printer.line(&format!(
                            "{:<24} {:<10} {:>10} {:>8} {:>8} {:>8}  {}",
                            p.name,
                            p.status.as_str(),
                            p.position,
                            p.lag,
                            p.keys,
                            p.unkeyed,
                            error_text(p)
                        ))?;
                    }
                }
                printer.flush()?;
                Ok(ExitCode::SUCCESS)
            })
        }
        ProjectionsCommand::Put { name, file, client } => {
            let definition = read_definition(&file)?;
            let (client, mut printer) = connect(&client)?;
            super::block_on(async move {
                let put = client.put_projection(&name, &definition).await?;
                if printer.json() {
                    printer.value(&serde_json::json!({"name": name, "created": put.created}))?;
                } else if put.created {
                    printer.line(&format!("created projection {name}"))?;
                } else {
                    printer.line(&format!("replaced projection {name}"))?;
                }
                printer.flush()?;
                Ok(ExitCode::SUCCESS)
            })
        }
        ProjectionsCommand::Show { name, client } => {
            let (client, mut printer) = connect(&client)?;
            super::block_on(async move {
                let status = client.get_projection(&name).await?;
                show(&mut printer, &status)?;
                printer.flush()?;
                Ok(ExitCode::SUCCESS)
            })
        }
        ProjectionsCommand::State(args) => state(args),
        ProjectionsCommand::Rebuild {
            name,
            wait,
            timeout,
            client,
        } => {
            let (client, mut printer) = connect(&client)?;
            super::block_on(async move {
                client.rebuild_projection(&name).await?;
                if !wait {
                    printer.line(&format!("rebuilding projection {name}"))?;
                    printer.flush()?;
                    return Ok(ExitCode::SUCCESS);
                }
                let status = wait_rebuilt(&client, &name, Duration::from_secs(timeout)).await?;
                show(&mut printer, &status)?;
                printer.flush()?;
                if status.status == ProjectionRunStatus::Failed {
                    bail!(
                        "projection {name} failed while rebuilding: {}",
                        error_text(&status)
                    );
                }
                Ok(ExitCode::SUCCESS)
            })
        }
        ProjectionsCommand::Delete { name, client } => {
            let (client, mut printer) = connect(&client)?;
            super::block_on(async move {
                client.delete_projection(&name).await?;
                printer.line(&format!("deleted projection {name}"))?;
                printer.flush()?;
                Ok(ExitCode::SUCCESS)
            })
        }
    }
}

fn connect(args: &ClientArgs) -> anyhow::Result<(Client, Printer)> {
    Ok((args.client()?, Printer::new(args.json)))
}

/// The definition in `file` (`-`: stdin), checked here so that a typo is named before any
/// request.
fn read_definition(file: &PathBuf) -> anyhow::Result<ProjectionDefinition> {
    let text = if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the definition from stdin")?;
        text
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?
    };
    serde_json::from_str(&text).with_context(|| format!("{} is not a projection definition", file.display()))
}

fn error_text(status: &ProjectionStatus) -> String {
    match &status.error {
        None | Some(serde_json::Value::Null) => "-".to_owned(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn show(printer: &mut Printer, status: &ProjectionStatus) -> std::io::Result<()> {
    if printer.json() {
        return printer.value(status);
    }
    printer.line(&format!("name           {}", status.name))?;
    printer.line(&format!("status         {}", status.status.as_str()))?;
    printer.line(&format!("position       {}", status.position))?;
    printer.line(&format!("head_position  {}", status.head_position))?;
    printer.line(&format!("lag            {}", status.lag))?;
    printer.line(&format!("keys           {}", status.keys))?;
    printer.line(&format!("unkeyed        {}", status.unkeyed))?;
    printer.line(&format!("error          {}", error_text(status)))
}

fn state(args: StateArgs) -> anyhow::Result<ExitCode> {
    let (client, mut printer) = connect(&args.client)?;
    let mut query = StateQuery::new();
    query.min_position = args.min_position;
    query.wait_ms = args.wait_ms;
    query.until = args.until;
    query.as_of = args.as_of;
    if args.source == Source::EventStore {
        query = query.source(StateSource::EventStore);
    }
    let Some(key) = args.key else {
        if query != StateQuery::new() {
            bail!("--min-position, --wait-ms, --source, --until and --as-of need a KEY");
        }
        return super::block_on(async move {
            list_states(&client, &mut printer, &args.name, args.after_key, args.limit).await?;
            printer.flush()?;
            Ok(ExitCode::SUCCESS)
        });
    };
    if args.after_key.is_some() || args.limit.is_some() {
        bail!("--after-key and --limit list the states of every key: give them without a KEY");
    }
    super::block_on(async move {
        let state = match client.projection_state(&args.name, &key, &query).await {
            Ok(state) => state,
            Err(error @ Error::NotYetMaterialized { .. }) => {
                return Err(not_materialized(&client, error, query.min_position).await);
            }
            Err(error) => return Err(error.into()),
        };
        if printer.json() {
            printer.value(&state)?;
        } else {
            printer.line(&format!("{}  (as of position {})", state.key, state.position))?;
            let pretty = serde_json::to_string_pretty(&state.state.to_value())?;
            printer.line(&pretty)?;
        }
        printer.flush()?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Every state after `after_key` in key order, page after page as they are printed, or the
/// first `limit`.
async fn list_states(
    client: &Client,
    printer: &mut Printer,
    name: &str,
    after_key: Option<String>,
    limit: Option<u64>,
) -> anyhow::Result<()> {
    // Pages end at the limit, so that only more states read another.
    let page = limit.map(|limit| limit.min(STATES_PAGE_MAX) as u32);
    let mut states = pin!(client.projection_states_stream(name, after_key, page));
    let mut printed = 0u64;
    let mut last_key: Option<String> = None;
    while let Some(state) = states.try_next().await? {
        if let (Some(limit), Some(last)) = (limit.filter(|&l| printed == l), &last_key) {
            super::stopped_at_limit(
                printer,
                limit,
                &format!(
                    "there are more states: continue with --after-key {}",
                    super::shell_word(last)
                ),
            )?;
            break;
        }
        if printer.json() {
            printer.value(&state)?;
        } else {
            printer.line(&format!("{}  {}", state.key, state.state))?;
        }
        printed += 1;
        last_key = Some(state.key);
    }
    Ok(())
}

/// The error of a read that waited for `--min-position` in vain. A position beyond the store's
/// head cannot be materialized by waiting for the projection: that is said first, with the
/// head, since the server's answer speaks only of the projection.
async fn not_materialized(client: &Client, error: Error, min_position: Option<u64>) -> anyhow::Error {
    let head = client.head().await.map(|head| head.position);
    match (head, min_position) {
        (Ok(head), Some(min_position)) if head < min_position => anyhow::Error::new(error).context(format!(
            "the store's head is at position {head}, below --min-position {min_position}: no \
             event has that position yet"
        )),
        _ => error.into(),
    }
}

/// Polls the projection until it is no longer rebuilding, with a progress bar of its position
/// against the head (drawn on stderr when it is a terminal).
async fn wait_rebuilt(client: &Client, name: &str, timeout: Duration) -> anyhow::Result<ProjectionStatus> {
    let started = std::time::Instant::now();
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({eta})")
            .context("the progress bar template")?
            .progress_chars("=> "),
    );
    bar.set_message(format!("rebuilding {name}"));
    loop {
        let status = client.get_projection(name).await?;
        bar.set_length(status.head_position.max(status.position));
        bar.set_position(status.position);
        if status.status != ProjectionRunStatus::Rebuilding {
            bar.finish_and_clear();
            return Ok(status);
        }
        if started.elapsed() >= timeout {
            bar.abandon();
            bail!(
                "projection {name} is still rebuilding after {} s (position {} of {})",
                timeout.as_secs(),
                status.position,
                status.head_position
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
