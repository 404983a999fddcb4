//! `factstore archive --before DATE` and `factstore storage`: archiving to cold storage, and
//! where the store's bytes are.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use serde_json::json;

use super::ClientArgs;
use super::export::progress_bar;
use super::output::Printer;

#[derive(Debug, clap::Args)]
pub struct ArchiveArgs {
    /// Archive the events recorded before this time (exclusive): an RFC 3339 time, or a date
    /// YYYY-MM-DD meaning the start of that day (UTC).
    #[arg(long, value_name = "TIME")]
    pub before: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, clap::Args)]
pub struct StorageArgs {
    #[command(flatten)]
    pub client: ClientArgs,
}

/// How often the progress bar asks the server how far archiving has got.
const PROGRESS_POLL: Duration = Duration::from_millis(500);

pub fn run_archive(args: ArchiveArgs) -> anyhow::Result<ExitCode> {
    let before = args.before.trim().to_owned();
    if before.parse::<factstore_client::TimeBound>().is_err() {
        bail!("--before '{before}' is not an RFC 3339 time or a date YYYY-MM-DD");
    }
    let client = args.client.client()?;
    let mut printer = Printer::new(args.client.json);
    super::block_on(async move {
        let start = client.storage().await?;
        let bar = progress_bar(
            Some(start.events),
            "{spinner} archiving {wide_bar} {pos}/{len} events in cold storage ({elapsed})",
        );
        bar.set_position(start.archived_events);
        // The server answers when done; meanwhile its storage numbers show how far it got.
        let archive = client.archive(&before);
        tokio::pin!(archive);
        let outcome = loop {
            tokio::select! {
                outcome = &mut archive => break outcome?,
                () = tokio::time::sleep(PROGRESS_POLL) => {
                    if let Ok(now) = client.storage().await {
                        bar.set_length(now.events);
                        bar.set_position(now.archived_events);
                    }
                }
            }
        };
        bar.set_position(outcome.archived_events);
        bar.finish_and_clear();
        if printer.json() {
            printer.value(&outcome)?;
        } else {
            let newly = outcome.archived_events.saturating_sub(start.archived_events);
            printer.line(&format!(
                "archived {newly} more events; {} events ({}) are in cold storage",
                outcome.archived_events,
                human_bytes(outcome.archived_bytes)
            ))?;
        }
        if outcome.hot_before_cut > 0 {
            let why = match outcome.hot_reason.as_deref() {
                Some("shares_segment_with_later_events") => {
                    "they share a log segment with events recorded at or after the cut, and a segment moves whole"
                }
                Some(other) => other,
                None => "the server gave no reason",
            };
            eprintln!(
                "{} events recorded before {before} stay on local disk: {why}",
                outcome.hot_before_cut
            );
        }
        printer.flush()?;
        Ok(ExitCode::SUCCESS)
    })
}

pub fn run_storage(args: StorageArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let mut printer = Printer::new(args.client.json);
    super::block_on(async move {
        let stats = client.storage().await?;
        if printer.json() {
            printer.value(&json!(stats))?;
        } else {
            printer.line(&format!("hot:   {} on local disk", human_bytes(stats.hot_bytes)))?;
            printer.line(&format!(
                "cold:  {} in cold storage",
                human_bytes(stats.cold_bytes)
            ))?;
            printer.line(&format!(
                "events: {} ({} archived, {} hot)",
                stats.events,
                stats.archived_events,
                stats.events.saturating_sub(stats.archived_events)
            ))?;
        }
        printer.flush()?;
        Ok(ExitCode::SUCCESS)
    })
}

/// `1536` → `1.5 KiB`.
pub(super) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::human_bytes;

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(human_bytes(0), "0 bytes");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
