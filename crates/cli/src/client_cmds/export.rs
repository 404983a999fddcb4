//! `factstore export`: every event, in position order, as JSON lines in the stored form.
//!
//! Each line is the event exactly as `GET /v1/events?raw=true` returns it; with `--upcast`, as
//! `GET /v1/events` returns it (upcast to the newest version its upcasters reach).
//! The export covers the positions after `--after-position` (default 0) up to
//! `--to-position` or the head when the export starts, so it is a consistent snapshot even
//! while writers go on. Positions are checked to follow each other with no gap as they are
//! read. With `--output FILE` the events go to `FILE.partial`, renamed to `FILE` once
//! complete and synced: a file of that name is never a half export.

use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::process::ExitCode;

use anyhow::{Context, bail};
use factstore_client::EventQuery;
use futures::TryStreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::ClientArgs;

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Write to this file instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Export the events after this position (for an export that continues an earlier one).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub after_position: u64,
    /// Export up to this position, inclusive (default: the head when the export starts).
    #[arg(long, value_name = "N")]
    pub to_position: Option<u64>,
    /// Write the events upcast to the newest version their upcasters reach, rather than as
    /// stored. An upcast export is for reading: imported, it would store the upcast form.
    #[arg(long)]
    pub upcast: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// The largest page the server serves.
const PAGE_EVENTS: u32 = 10_000;

/// A progress bar on stderr when it is a terminal; hidden otherwise.
pub fn progress_bar(total: Option<u64>, template: &str) -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(total) => ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr()),
        None => ProgressBar::new_spinner().with_finish(indicatif::ProgressFinish::AndLeave),
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

pub fn run(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    super::block_on(async move {
        let head = client.head().await?.position;
        let to = args.to_position.map_or(head, |to| to.min(head));
        let total = to.saturating_sub(args.after_position);
        let (sink, partial): (Box<dyn Write>, Option<PathBuf>) = match &args.output {
            Some(path) => {
                let partial = partial_path(path);
                let file =
                    File::create(&partial).with_context(|| format!("cannot create {}", partial.display()))?;
                (Box::new(file), Some(partial))
            }
            None => (Box::new(io::stdout().lock()), None),
        };
        let mut out = io::BufWriter::with_capacity(1 << 20, sink);
        let bar = progress_bar(
            Some(total),
            "{spinner} exporting {wide_bar} {pos}/{len} events ({per_sec}, {eta} left)",
        );
        let query = EventQuery {
            after_position: args.after_position,
            to_position: Some(to),
            limit: Some(PAGE_EVENTS),
            raw: !args.upcast,
            ..EventQuery::default()
        };
        let mut expected = args.after_position + 1;
        if total > 0 {
            let mut events = pin!(client.events_stream(query));
            while let Some(event) = events.try_next().await? {
                if event.position != expected {
                    bail!(
                        "the server answered position {} where {expected} was due; the export is incomplete",
                        event.position
                    );
                }
                serde_json::to_writer(&mut out, &event)?;
                out.write_all(b"\n")?;
                expected += 1;
                bar.inc(1);
            }
        }
        bar.finish_and_clear();
        let exported = expected - 1 - args.after_position;
        if exported != total {
            bail!("the export ended at position {} before {to}", expected - 1);
        }
        let sink = out.into_inner().map_err(|e| e.into_error())?;
        drop(sink);
        if let (Some(path), Some(partial)) = (&args.output, &partial) {
            File::open(partial)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("cannot sync {}", partial.display()))?;
            std::fs::rename(partial, path)
                .with_context(|| format!("cannot rename {} to {}", partial.display(), path.display()))?;
            // The rename is durable once the folder is synced.
            let folder = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            File::open(folder)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("cannot sync {}", folder.display()))?;
        }
        let range = if exported == 0 {
            "none".to_owned()
        } else {
            format!("positions {}-{to}", args.after_position + 1)
        };
        let target = args
            .output
            .as_ref()
            .map_or("stdout".to_owned(), |p| p.display().to_string());
        eprintln!("exported {exported} events ({range}) to {target}");
        Ok(ExitCode::SUCCESS)
    })
}
