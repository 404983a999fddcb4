//! `factstore export`: every event, in position order, as JSON lines in the stored form.
//!
//! Each line is the event exactly as `GET /v1/events?raw=true` returns it; with `--upcast`, as
//! `GET /v1/events` returns it (upcast to the newest version its upcasters reach).
//! The export covers the positions after `--after-position` (default 0) up to
//! `--to-position` or the head when the export starts, so it is a consistent snapshot even
//! while writers go on. It pages on the server's `next_after_position`, which moves past every
//! position considered, and checks that positions only increase and stay in the range, and
//! that the pages reach its end. With `--output FILE` the events go to `FILE.partial`, renamed
//! to `FILE` once complete and synced: a file of that name is never a half export.
//!
//! # With a token limited to aggregate prefixes
//! The server shows such a token only the events of its aggregates, so its export is those
//! events, in position order: every event of each visible aggregate (a prefix takes whole
//! aggregates), the other positions left out. The summary says how many positions of the
//! range it did not see. Imported into an empty store, those events keep their ids, order and
//! versions and take new, consecutive positions. (A store's positions have no gap, so with a
//! token that sees everything the export holds every position of the range.)

use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use factstore_client::EventQuery;
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
            "{spinner} exporting {wide_bar} {pos}/{len} positions ({per_sec}, {eta} left)",
        );
        let query = EventQuery {
            after_position: args.after_position,
            to_position: Some(to),
            limit: Some(PAGE_EVENTS),
            raw: !args.upcast,
            ..EventQuery::default()
        };
        let mut after = args.after_position;
        let mut exported: u64 = 0;
        while after < to {
            let query = EventQuery {
                after_position: after,
                ..query.clone()
            };
            let page = client.read_events(&query).await?;
            let mut previous = after;
            for event in &page.events {
                if event.position <= previous || event.position > to {
                    bail!(
                        "the server answered position {} after position {previous} in a read of \
                         positions {}-{to}; the export is incomplete",
                        event.position,
                        after + 1
                    );
                }
                previous = event.position;
                serde_json::to_writer(&mut out, event)?;
                out.write_all(b"\n")?;
                exported += 1;
            }
            // The page considered every position up to `next_after_position`: it must move on,
            // cover what it returned and stay in the range, or the export would skip or loop.
            let next = page.next_after_position;
            if next <= after || next < previous || next > to {
                bail!(
                    "the server's page after position {after} ends at position {next} (expected \
                     {}-{to}); the export is incomplete",
                    previous.max(after + 1)
                );
            }
            bar.inc(next - after);
            after = next;
        }
        bar.finish_and_clear();
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
        let unseen = total - exported;
        let range = if total == 0 {
            "none".to_owned()
        } else if unseen == 0 {
            format!("positions {}-{to}", args.after_position + 1)
        } else {
            format!(
                "of positions {}-{to}; the other {unseen} are events outside this token's aggregate prefixes",
                args.after_position + 1
            )
        };
        let target = args
            .output
            .as_ref()
            .map_or("stdout".to_owned(), |p| p.display().to_string());
        eprintln!("exported {exported} events ({range}) to {target}");
        Ok(ExitCode::SUCCESS)
    })
}
