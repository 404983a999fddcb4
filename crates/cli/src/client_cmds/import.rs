//! `factstore import`: append the events of an export (JSON lines), keeping their ids, types,
//! data, metadata, `created_at` and `created_by`, in the file's order.
//!
//! # Same positions and versions
//! Events are sent in commits through `POST /v1/events`, which places a commit's events at
//! consecutive positions in the order of its appends. So a commit holds runs of consecutive
//! lines, each run one aggregate's, and an aggregate appears in at most one run per commit
//! (the API allows one append per aggregate): the events keep the file's order, and an
//! empty store receives every event at the position the file gives. Each run expects the
//! aggregate to be at the version before its first event (`version − 1` of the file), so an
//! aggregate's versions come out the same too, or the import stops at a conflict rather than
//! renumber them (importing into a store that already has other events of the aggregate).
//! An import is fastest when an aggregate's events are adjacent in the file; interleaved
//! aggregates make smaller commits.
//!
//! # A store that is not empty
//! Events imported after other events land at other positions than the file gives, so
//! position-based reads (`after_position`, `as_of`) of the copy differ from the original. Such
//! an import is refused before it writes anything unless `--renumber` is given
//! ([`check_placement`]); running the same import again is recognised by its first event.
//!
//! # An export of a token limited to aggregate prefixes
//! Such an export holds only the events of the token's aggregates (each aggregate whole), so
//! its positions have gaps. Imported into an empty store, every event keeps its id, its order
//! and its version, and takes the next position: the positions close up. The summary says
//! so rather than blaming a store that was not empty.
//!
//! # Running it again
//! Commit boundaries depend only on the file's contents and the batch options, so a second
//! run (after an interruption anywhere, or after a complete import) sends the same commits:
//! each one either was committed, and the server recognises it by its event ids and writes
//! nothing (HTTP 200), or was not, and is written now. A commit can only be partly present if
//! the earlier run used other batch options (or another tool wrote some of the events): the
//! server then refuses it whole (`duplicate_event_id` or `wrong_expected_version`), and the
//! import looks each of its events up, checks that those present are the same events at the
//! same versions, and commits the others.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufRead, BufReader, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use factstore_client::time::parse_timestamp;
use factstore_client::{
    AggregateAppend, Client, CommitOutcome, CommitRequest, Error, Event, ExpectedVersion, NewEvent, RawJson,
};
use serde::Deserialize;
use uuid::Uuid;

use super::export::progress_bar;
use super::{BatchArgs, ClientArgs};

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The JSON lines file to import (an export); stdin when not given.
    pub input: Option<PathBuf>,
    #[command(flatten)]
    pub batch: BatchArgs,
    /// Import into a store that is not empty although the events then land at other positions
    /// (and `as_of` reads see another history) than the file gives. Without it such an import
    /// is refused before it writes anything.
    #[arg(long)]
    pub renumber: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// One line of an export. Unknown fields are refused: a field this import does not know
/// might matter, and dropping it silently would make a different store.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    event_id: Uuid,
    aggregate_id: String,
    aggregate_type: String,
    event_type: String,
    #[serde(default)]
    event_version: Option<u32>,
    event_data: RawJson,
    #[serde(default)]
    created_at: Option<String>,
    #[serde(default)]
    created_by: Option<String>,
    #[serde(default)]
    metadata: Option<RawJson>,
    /// Checked against the store, not sent.
    #[serde(default)]
    version: Option<u64>,
    /// Compared with where the event lands, not sent.
    #[serde(default)]
    position: Option<u64>,
    /// Set by the store that imports; ignored.
    #[serde(default, rename = "recorded_at")]
    _recorded_at: Option<serde::de::IgnoredAny>,
}

/// One event to import, with where it came from.
#[derive(Debug)]
struct Item {
    line: usize,
    event: NewEvent,
    version: Option<u64>,
    position: Option<u64>,
}

/// Consecutive lines of one aggregate.
#[derive(Debug)]
struct Run {
    aggregate_id: String,
    items: Vec<Item>,
}

/// The lines of one commit.
#[derive(Debug, Default)]
struct Batch {
    runs: Vec<Run>,
    aggregates: HashSet<String>,
    events: u64,
    bytes: u64,
}

impl Batch {
    /// Whether an event of `aggregate_id` of `bytes` may join this commit.
    fn admits(&self, aggregate_id: &str, bytes: u64, batch: &BatchArgs) -> bool {
        if self.events == 0 {
            return true;
        }
        if self.events + 1 > batch.batch_events || self.bytes + bytes > batch.batch_bytes {
            return false;
        }
        let continues_run = self
            .runs
            .last()
            .is_some_and(|run| run.aggregate_id == aggregate_id);
        continues_run || !self.aggregates.contains(aggregate_id)
    }

    fn push(&mut self, aggregate_id: String, item: Item, bytes: u64) -> anyhow::Result<()> {
        match self.runs.last_mut() {
            Some(run) if run.aggregate_id == aggregate_id => {
                let previous = run.items.last().and_then(|i| i.version);
                if let (Some(previous), Some(version)) = (previous, item.version)
                    && version != previous + 1
                {
                    bail!(
                        "line {}: {aggregate_id} goes from version {previous} to {version}; an import needs every event of an aggregate, in order",
                        item.line
                    );
                }
                run.items.push(item);
            }
            _ => {
                self.aggregates.insert(aggregate_id.clone());
                self.runs.push(Run {
                    aggregate_id,
                    items: vec![item],
                });
            }
        }
        self.events += 1;
        self.bytes += bytes;
        Ok(())
    }

    fn lines(&self) -> String {
        let first = self
            .runs
            .first()
            .and_then(|r| r.items.first())
            .map_or(0, |i| i.line);
        let last = self
            .runs
            .last()
            .and_then(|r| r.items.last())
            .map_or(0, |i| i.line);
        if first == last {
            format!("line {first}")
        } else {
            format!("lines {first}-{last}")
        }
    }
}

/// The commit of `runs`: each run expects its aggregate at the version before its first
/// event (any version when the file gives none).
fn commit_of(runs: &[Run]) -> CommitRequest {
    CommitRequest::new(runs.iter().map(|run| {
        let expected = match run.items.first().and_then(|i| i.version) {
            Some(version) => ExpectedVersion::Exact(version.saturating_sub(1)),
            None => ExpectedVersion::Any,
        };
        AggregateAppend::new(
            run.aggregate_id.clone(),
            expected,
            run.items.iter().map(|i| i.event.clone()),
        )
    }))
}

#[derive(Debug, Default, serde::Serialize)]
struct Stats {
    /// Lines read.
    events: u64,
    /// Events this run wrote.
    written: u64,
    /// Events that were already in the store.
    already_present: u64,
    /// Events written at another position or version than the file gives.
    moved: u64,
    /// The last position the file gave, and whether every position from 1 up to it was in
    /// the file (in order): if not, positions are expected to move.
    #[serde(skip)]
    file_positions: Option<(u64, bool)>,
}

impl Stats {
    /// Follows the positions of the file's lines.
    fn saw_position(&mut self, position: Option<u64>) {
        let Some(position) = position else {
            self.file_positions = Some((0, false));
            return;
        };
        let (last, dense) = self.file_positions.unwrap_or((0, true));
        self.file_positions = Some((position, dense && position == last + 1));
    }

    /// Whether the file holds positions 1, 2, 3, … with none left out.
    fn file_is_whole(&self) -> bool {
        self.file_positions.is_none_or(|(_, dense)| dense)
    }

    fn record(&mut self, runs: &[Run], outcome: &CommitOutcome) {
        let count = runs.iter().map(|r| r.items.len() as u64).sum::<u64>();
        if outcome.replayed {
            self.already_present += count;
        } else {
            self.written += count;
        }
        for (run, append) in runs.iter().zip(&outcome.appends) {
            for (item, landed) in run.items.iter().zip(&append.events) {
                if item.position.is_some_and(|p| p != landed.position)
                    || item.version.is_some_and(|v| v != landed.version)
                {
                    self.moved += 1;
                }
            }
        }
    }
}

fn parse_line(number: usize, text: &str) -> anyhow::Result<(String, Item)> {
    let line: Line =
        serde_json::from_str(text).with_context(|| format!("line {number} is not an exported event"))?;
    if line.version == Some(0) {
        bail!("line {number}: versions start at 1");
    }
    let created_at = line
        .created_at
        .map(|text| parse_timestamp(&text).with_context(|| format!("line {number}: created_at '{text}'")))
        .transpose()?;
    let event = NewEvent {
        event_id: Some(line.event_id),
        aggregate_type: line.aggregate_type,
        event_type: line.event_type,
        event_version: line.event_version,
        event_data: line.event_data,
        created_by: line.created_by,
        created_at,
        metadata: line.metadata,
    };
    Ok((
        line.aggregate_id,
        Item {
            line: number,
            event,
            version: line.version,
            position: line.position,
        },
    ))
}

pub fn run(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let (input, size): (Box<dyn BufRead>, Option<u64>) = match &args.input {
        Some(path) => {
            let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
            let size = file.metadata().map(|m| m.len()).ok();
            (Box::new(BufReader::with_capacity(1 << 20, file)), size)
        }
        None if io::stdin().is_terminal() => {
            bail!("give the file to import, or pipe an export into stdin (factstore import export.jsonl)")
        }
        None => (Box::new(io::stdin().lock()), None),
    };
    let json = args.client.json;
    super::block_on(async move {
        let bar = match size {
            Some(size) => progress_bar(
                Some(size),
                "{spinner} importing {wide_bar} {bytes}/{total_bytes} ({eta} left) {msg}",
            ),
            None => progress_bar(None, "{spinner} importing {msg}"),
        };
        let mut stats = Stats::default();
        let mut batch = Batch::default();
        for (index, text) in input.lines().enumerate() {
            let number = index + 1;
            let text = text.with_context(|| format!("cannot read line {number}"))?;
            let bytes = text.len() as u64 + 1;
            bar.inc(bytes);
            if text.trim().is_empty() {
                continue;
            }
            let (aggregate_id, item) = parse_line(number, &text)?;
            if stats.events == 0 && !args.renumber {
                check_placement(&client, &item).await?;
            }
            stats.events += 1;
            stats.saw_position(item.position);
            if !batch.admits(&aggregate_id, bytes, &args.batch) {
                flush(&client, std::mem::take(&mut batch), &mut stats).await?;
                bar.set_message(format!("{} events", stats.events));
            }
            batch.push(aggregate_id, item, bytes)?;
        }
        if batch.events > 0 {
            flush(&client, batch, &mut stats).await?;
        }
        bar.finish_and_clear();
        if json {
            println!("{}", serde_json::to_string(&stats)?);
        }
        let placement = if stats.moved == 0 {
            "every event at the position and version the file gives".to_owned()
        } else if !stats.file_is_whole() {
            format!(
                "{} at another position or version than the file gives (the file leaves positions \
                 out: an export of a token limited to aggregate prefixes, or one that continues \
                 another; the events keep their order)",
                stats.moved
            )
        } else {
            format!(
                "{} at another position or version than the file gives (the store was not empty)",
                stats.moved
            )
        };
        eprintln!(
            "imported {} events: {} written, {} already present; {placement}",
            stats.events, stats.written, stats.already_present
        );
        Ok(ExitCode::SUCCESS)
    })
}

/// Refuses, before anything is written, an import whose first event would land at another
/// position than the file gives: the store holds other events (it is not empty, and this is
/// not the same import run again, whose first event the store already holds). A file without
/// positions, or one that continues the store exactly, passes; so does any file into an empty
/// store (an export with gaps closes up there, as the summary says).
async fn check_placement(client: &Client, first: &Item) -> anyhow::Result<()> {
    let Some(position) = first.position else {
        return Ok(());
    };
    let head = client.head().await?.position;
    if head == 0 || head + 1 == position {
        return Ok(());
    }
    let id = first.event.event_id.unwrap_or_default();
    match client.get_event(id).await {
        Ok(_) => Ok(()), // the same import again: the module docs say how it goes on
        Err(Error::EventNotFound { .. }) => bail!(
            "the store is not empty (its head is at {head}) and does not hold the file's first \
             event: the events would land from position {} on instead of {position}, as the \
             file gives. Import into an empty store to keep positions (and `as_of` reads), or \
             pass --renumber to append them after the store's events anyway",
            head + 1
        ),
        Err(error) => Err(anyhow::Error::new(error).context(format!("line {}", first.line))),
    }
}

/// Commits one batch (see the module documentation for the partly-present case).
async fn flush(client: &Client, batch: Batch, stats: &mut Stats) -> anyhow::Result<()> {
    let lines = batch.lines();
    match client.commit(commit_of(&batch.runs)).await {
        Ok(outcome) => {
            stats.record(&batch.runs, &outcome);
            Ok(())
        }
        Err(error @ (Error::DuplicateEventId { .. } | Error::WrongExpectedVersion { .. })) => {
            resolve(client, batch, error, stats, &lines).await
        }
        Err(error) => Err(anyhow::Error::new(error).context(lines)),
    }
}

/// A commit refused because some of its events may be stored already: keep what is there
/// (if it is the same), commit the rest.
async fn resolve(
    client: &Client,
    batch: Batch,
    refusal: Error,
    stats: &mut Stats,
    lines: &str,
) -> anyhow::Result<()> {
    let mut missing = Vec::new();
    let mut present = 0u64;
    for run in batch.runs {
        let mut items = Vec::new();
        for item in run.items {
            let id = item.event.event_id.unwrap_or_default();
            match client.get_event(id).await {
                Ok(stored) => {
                    check_same(&run.aggregate_id, &item, &stored)?;
                    present += 1;
                }
                Err(Error::EventNotFound { .. }) => items.push(item),
                Err(error) => return Err(anyhow::Error::new(error).context(format!("line {}", item.line))),
            }
        }
        if !items.is_empty() {
            missing.push(Run {
                aggregate_id: run.aggregate_id,
                items,
            });
        }
    }
    if present == 0 {
        // Nothing of it is stored: the refusal stands (another history of an aggregate).
        return Err(anyhow::Error::new(refusal).context(lines.to_owned()));
    }
    stats.already_present += present;
    if missing.is_empty() {
        return Ok(());
    }
    let outcome = client
        .commit(commit_of(&missing))
        .await
        .with_context(|| lines.to_owned())?;
    stats.record(&missing, &outcome);
    Ok(())
}

/// Whether the stored event is the one the line describes.
fn check_same(aggregate_id: &str, item: &Item, stored: &Event) -> anyhow::Result<()> {
    let event = &item.event;
    let json_eq =
        |a: Option<&RawJson>, b: Option<&RawJson>| a.map(RawJson::to_value) == b.map(RawJson::to_value);
    let differs = [
        ("aggregate_id", stored.aggregate_id != aggregate_id),
        ("version", item.version.is_some_and(|v| v != stored.version)),
        ("aggregate_type", stored.aggregate_type != event.aggregate_type),
        ("event_type", stored.event_type != event.event_type),
        (
            "event_version",
            stored.event_version != event.event_version.unwrap_or(1),
        ),
        (
            "event_data",
            !json_eq(Some(&stored.event_data), Some(&event.event_data)),
        ),
        (
            "metadata",
            !json_eq(stored.metadata.as_ref(), event.metadata.as_ref()),
        ),
        ("created_by", stored.created_by != event.created_by),
        (
            "created_at",
            event.created_at.is_some_and(|at| at != stored.created_at),
        ),
    ];
    if let Some((field, _)) = differs.iter().find(|(_, differs)| *differs) {
        bail!(
            "line {}: event {} is already stored, with another {field}",
            item.line,
            stored.event_id
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(aggregate: &str, version: u64) -> String {
        format!(
            r#"{{"event_id":"{}","position":1,"aggregate_id":"{aggregate}","aggregate_type":"A","version":{version},"event_type":"E","event_version":1,"event_data":{{}},"created_at":"2024-01-15T10:00:00.000000Z","recorded_at":"2024-01-15T10:00:00.000000Z","created_by":null,"metadata":null}}"#,
            Uuid::now_v7()
        )
    }

    fn batches(lines: &[String], batch_events: u64) -> Vec<Vec<(String, usize)>> {
        let args = BatchArgs {
            batch_events,
            batch_bytes: 1 << 20,
        };
        let mut out = Vec::new();
        let mut batch = Batch::default();
        for (i, text) in lines.iter().enumerate() {
            let (aggregate, item) = parse_line(i + 1, text).expect("a valid line");
            if !batch.admits(&aggregate, text.len() as u64, &args) {
                out.push(std::mem::take(&mut batch));
            }
            batch
                .push(aggregate, item, text.len() as u64)
                .expect("versions follow");
        }
        out.push(batch);
        out.iter()
            .map(|b| {
                b.runs
                    .iter()
                    .map(|r| (r.aggregate_id.clone(), r.items.len()))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn a_commit_holds_each_aggregate_once_in_file_order() {
        let lines = [
            line("a", 1),
            line("a", 2),
            line("b", 1),
            line("c", 1),
            line("a", 3),
            line("b", 2),
        ];
        assert_eq!(
            batches(&lines, 100),
            [
                vec![("a".to_owned(), 2), ("b".to_owned(), 1), ("c".to_owned(), 1)],
                vec![("a".to_owned(), 1), ("b".to_owned(), 1)],
            ]
        );
        assert_eq!(
            batches(&lines, 2),
            [
                vec![("a".to_owned(), 2)],
                vec![("b".to_owned(), 1), ("c".to_owned(), 1)],
                vec![("a".to_owned(), 1), ("b".to_owned(), 1)],
            ]
        );
        let request = commit_of(&{
            let (aggregate, item) = parse_line(1, &line("x", 5)).expect("valid");
            vec![Run {
                aggregate_id: aggregate,
                items: vec![item],
            }]
        });
        assert_eq!(request.appends[0].expected_version, ExpectedVersion::Exact(4));
    }

    #[test]
    fn lines_are_checked() {
        let mut batch = Batch::default();
        let (aggregate, item) = parse_line(1, &line("a", 1)).expect("valid");
        batch.push(aggregate, item, 1).expect("first");
        let (aggregate, item) = parse_line(2, &line("a", 3)).expect("valid");
        assert!(batch.push(aggregate, item, 1).is_err(), "a gap in versions");
        assert!(parse_line(1, &line("a", 1).replace("\"metadata\"", "\"metadatum\"")).is_err());
        assert!(parse_line(1, &line("a", 0)).is_err());
    }
}
