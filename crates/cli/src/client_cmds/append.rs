//! `factstore append`: append events to one aggregate, from the command line or from JSON
//! lines on stdin.
//!
//! With `--stdin`, each non-blank line is either
//! - an event object, `{"event_type": "...", "aggregate_type": "...", "event_data": {...}}`
//!   with the optional `event_id`, `event_version`, `created_by`, `created_at`, `metadata`:
//!   such lines are packed, in order, into requests of at most `--batch-events` events and
//!   about `--batch-bytes` bytes (under the server's limits on one request), the first under
//!   `--expected-version` and, when it is given, each next one expecting the version the one
//!   before reached, so that nothing else lands between them; or
//! - a whole append request, `{"expected_version": 3, "events": [...]}`: each such line is
//!   one atomic append, in order (its `expected_version`, not the option's, applies), never
//!   split.
//!
//! One input holds one kind of line or the other; every line is read and checked before the
//! first request. Each request is atomic, a split input is not: when a request fails after
//! others, the error says which lines were appended before it. Every event gets its id before the first
//! attempt, so the client's retries never append anything twice.

use std::io::BufRead;
use std::process::ExitCode;

use anyhow::{Context, bail};
use factstore_client::{AppendRequest, Client, ExpectedVersion, NewEvent, RawJson, StatusCode, TimeBound};
use uuid::Uuid;

use super::output::Printer;
use super::{BatchArgs, ClientArgs};

#[derive(Debug, clap::Args)]
pub struct AppendArgs {
    /// The aggregate to append to.
    pub aggregate_id: String,
    /// The event type.
    #[arg(long = "type", value_name = "EVENT_TYPE", required_unless_present = "stdin")]
    pub event_type: Option<String>,
    /// The aggregate's type.
    #[arg(long, required_unless_present = "stdin")]
    pub aggregate_type: Option<String>,
    /// The event data, a JSON object.
    #[arg(long, value_name = "JSON", required_unless_present = "stdin")]
    pub data: Option<String>,
    /// The version the aggregate must be at: a number (0: must not exist yet), `any` or
    /// `exists`.
    #[arg(long, value_name = "N|any|exists")]
    pub expected_version: Option<ExpectedVersion>,
    /// Metadata, a JSON object (correlation_id and causation_id in it are indexed).
    #[arg(long, value_name = "JSON", conflicts_with = "stdin")]
    pub metadata: Option<String>,
    /// The event id (the idempotency key); a new UUIDv7 when not given.
    #[arg(long, value_name = "UUID", conflicts_with = "stdin")]
    pub event_id: Option<Uuid>,
    /// The schema version of the data (default 1).
    #[arg(long, value_name = "N", conflicts_with = "stdin")]
    pub event_version: Option<u32>,
    /// Who caused the event.
    #[arg(long, conflicts_with = "stdin")]
    pub created_by: Option<String>,
    /// When the fact happened (RFC 3339); the commit time when not given.
    #[arg(long, value_name = "TIME", conflicts_with = "stdin")]
    pub created_at: Option<String>,
    /// Read events or append requests as JSON lines from stdin (see `factstore append --help`).
    #[arg(long, conflicts_with_all = ["event_type", "aggregate_type", "data"])]
    pub stdin: bool,
    // With --stdin: how event lines are packed into requests.
    #[command(flatten)]
    pub batch: BatchArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// What stdin holds: event lines, or request lines (see the module documentation). Each item
/// keeps the number of its line, for the messages.
#[derive(Debug)]
enum Input {
    Events(Vec<(usize, NewEvent)>),
    Requests(Vec<(usize, AppendRequest)>),
}

/// Requests of event lines: the events and the range of lines they came from.
#[derive(Debug)]
struct Batch {
    lines: (usize, usize),
    events: Vec<NewEvent>,
    bytes: u64,
}

/// JSON a request adds around its events, and a client-given event id (`"event_id":"<uuid>",`)
/// that each event may gain before it is sent.
const REQUEST_OVERHEAD_BYTES: u64 = 64;
const EVENT_ID_BYTES: u64 = 50;

pub fn run(args: AppendArgs) -> anyhow::Result<ExitCode> {
    if !args.stdin {
        let request =
            AppendRequest::new([event_from_flags(&args)?]).expect(args.expected_version.unwrap_or_default());
        let client = args.client.client()?;
        let mut printer = Printer::new(args.client.json);
        return super::block_on(async move {
            let outcome = client.append(&args.aggregate_id, request).await?;
            printer.append_outcome(&args.aggregate_id, &outcome)?;
            printer.flush()?;
            Ok(ExitCode::SUCCESS)
        });
    }
    let input = input_from_lines(std::io::stdin().lock(), args.expected_version)?;
    let client = args.client.client()?;
    let mut printer = Printer::new(args.client.json);
    super::block_on(async move {
        match input {
            Input::Events(events) => {
                let batches = pack(events, &args.batch)?;
                append_batches(&client, &mut printer, &args, batches).await?;
            }
            Input::Requests(requests) => {
                append_requests(&client, &mut printer, &args, requests).await?;
            }
        }
        printer.flush()?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Appends the batches of event lines in order, each expecting the version the one before
/// reached (when an expected version was given), and says how the input was split.
async fn append_batches(
    client: &Client,
    printer: &mut Printer,
    args: &AppendArgs,
    batches: Vec<Batch>,
) -> anyhow::Result<()> {
    let total: usize = batches.iter().map(|b| b.events.len()).sum();
    let count = batches.len();
    let mut expected = args.expected_version.unwrap_or_default();
    let mut appended: Option<(usize, u64)> = None;
    for batch in batches {
        let (first, last) = batch.lines;
        let (events, bytes) = (batch.events.len(), batch.bytes);
        let request = AppendRequest::new(batch.events).expect(expected);
        let outcome = match client.append(&args.aggregate_id, request).await {
            Ok(outcome) => outcome,
            // One request that failed is the whole story: the error says it.
            Err(error) if count == 1 && error.status() != Some(StatusCode::PAYLOAD_TOO_LARGE) => {
                return Err(error.into());
            }
            Err(error) => {
                let mut message = format!(
                    "{} ({events} {}, about {bytes} bytes) not appended",
                    lines(first, last),
                    if events == 1 { "event" } else { "events" }
                );
                if error.status() == Some(StatusCode::PAYLOAD_TOO_LARGE) {
                    message.push_str(&format!(
                        " (the server takes fewer events or bytes per request than --batch-events {} \
                         and --batch-bytes {}: give lower ones)",
                        args.batch.batch_events, args.batch.batch_bytes
                    ));
                }
                if let Some((line, version)) = appended {
                    message.push_str(&format!(
                        "; {} appended, up to version {version} of {}",
                        lines(1, line),
                        args.aggregate_id
                    ));
                }
                return Err(anyhow::Error::new(error).context(message));
            }
        };
        printer.append_outcome(&args.aggregate_id, &outcome)?;
        appended = Some((last, outcome.version));
        // What follows must land right after: another writer in between is a conflict, as it
        // would have been for one request.
        if expected != ExpectedVersion::Any {
            expected = ExpectedVersion::Exact(outcome.version);
        }
    }
    if count > 1 {
        printer.flush()?;
        eprintln!(
            "appended {total} events in {count} requests of at most {} events and about {} bytes              (--batch-events, --batch-bytes): each request is atomic, the whole input is not",
            args.batch.batch_events, args.batch.batch_bytes
        );
    }
    Ok(())
}

/// "line 3", or "lines 3-9".
fn lines(first: usize, last: usize) -> String {
    if first == last {
        format!("line {first}")
    } else {
        format!("lines {first}-{last}")
    }
}

/// Appends each request line as it is, in order.
async fn append_requests(
    client: &Client,
    printer: &mut Printer,
    args: &AppendArgs,
    requests: Vec<(usize, AppendRequest)>,
) -> anyhow::Result<()> {
    for (appended, (line, request)) in requests.into_iter().enumerate() {
        let events = request.events.len();
        let bytes = serde_json::to_vec(&request).map_or(0, |body| body.len());
        let outcome = match client.append(&args.aggregate_id, request).await {
            Ok(outcome) => outcome,
            // The first line failing, for another reason than its size: the error says it all.
            Err(error) if appended == 0 && error.status() != Some(StatusCode::PAYLOAD_TOO_LARGE) => {
                return Err(error.into());
            }
            Err(error) => {
                let mut message = format!("line {line} was not appended");
                if error.status() == Some(StatusCode::PAYLOAD_TOO_LARGE) {
                    message.push_str(&format!(
                        ": it is an append request ({{\"expected_version\": ..., \"events\": [...]}}) of \
                         {events} events and {bytes} bytes, sent as one atomic request and never \
                         split, and the server's limits per request (1000 events and 16 MiB \
                         unless it was started with others) refuse it; split it into several \
                         request lines, or give its events as event lines (one event object a \
                         line), which are packed into requests under --batch-events and \
                         --batch-bytes"
                    ));
                }
                if appended > 0 {
                    message.push_str(&format!("; the {appended} request lines before it were appended"));
                }
                return Err(anyhow::Error::new(error).context(message));
            }
        };
        printer.append_outcome(&args.aggregate_id, &outcome)?;
    }
    Ok(())
}

/// Packs event lines, in order, into batches of at most `batch_events` events and about
/// `batch_bytes` bytes (an event larger than that goes alone).
fn pack(events: Vec<(usize, NewEvent)>, limits: &BatchArgs) -> anyhow::Result<Vec<Batch>> {
    let mut batches: Vec<Batch> = Vec::new();
    for (line, event) in events {
        let bytes = serde_json::to_vec(&event)
            .with_context(|| format!("line {line} cannot be serialised"))?
            .len() as u64
            + EVENT_ID_BYTES
            + 1;
        match batches.last_mut() {
            Some(batch)
                if (batch.events.len() as u64) < limits.batch_events
                    && batch.bytes + bytes <= limits.batch_bytes =>
            {
                batch.events.push(event);
                batch.bytes += bytes;
                batch.lines.1 = line;
            }
            _ => batches.push(Batch {
                lines: (line, line),
                events: vec![event],
                bytes: REQUEST_OVERHEAD_BYTES + bytes,
            }),
        }
    }
    Ok(batches)
}

fn json_object(name: &str, text: &str) -> anyhow::Result<RawJson> {
    let json = RawJson::from_string(text.to_owned()).with_context(|| format!("{name} is not valid JSON"))?;
    if !json.is_object() {
        bail!("{name} must be a JSON object, like '{{\"amount\": 500}}'");
    }
    Ok(json)
}

fn event_from_flags(args: &AppendArgs) -> anyhow::Result<NewEvent> {
    let (Some(event_type), Some(aggregate_type), Some(data)) =
        (&args.event_type, &args.aggregate_type, &args.data)
    else {
        bail!("--type, --aggregate-type and --data are required without --stdin");
    };
    let mut event = NewEvent::new(aggregate_type, event_type, json_object("--data", data)?);
    event.event_id = args.event_id;
    event.event_version = args.event_version;
    event.created_by = args.created_by.clone();
    if let Some(metadata) = &args.metadata {
        event.metadata = Some(json_object("--metadata", metadata)?);
    }
    if let Some(created_at) = &args.created_at {
        match created_at.parse::<TimeBound>() {
            Ok(TimeBound::At(at)) => event.created_at = Some(at),
            _ => {
                bail!("--created-at must be an RFC 3339 time, like 2024-01-15T14:00:00Z, not '{created_at}'")
            }
        }
    }
    Ok(event)
}

/// The events or requests of JSON lines (see the module documentation), every line checked.
fn input_from_lines(input: impl BufRead, expected: Option<ExpectedVersion>) -> anyhow::Result<Input> {
    let mut events = Vec::new();
    let mut requests = Vec::new();
    for (index, line) in input.lines().enumerate() {
        let number = index + 1;
        let line = line.context("cannot read stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("line {number} is not valid JSON"))?;
        if value.get("events").is_some() {
            let request: AppendRequest = serde_json::from_str(&line)
                .with_context(|| format!("line {number} is not an append request"))?;
            requests.push((number, request));
        } else {
            let event: NewEvent =
                serde_json::from_str(&line).with_context(|| format!("line {number} is not an event"))?;
            events.push((number, event));
        }
    }
    match (events.is_empty(), requests.is_empty()) {
        (true, true) => bail!("no events on stdin"),
        (false, false) => {
            bail!("stdin mixes event lines and append requests (lines with \"events\"); give one kind")
        }
        (false, true) => Ok(Input::Events(events)),
        (true, false) if expected.is_some() => {
            bail!("--expected-version applies to event lines; append requests carry their own")
        }
        (true, false) => Ok(Input::Requests(requests)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENT: &str = "{\"aggregate_type\":\"A\",\"event_type\":\"E\",\"event_data\":{\"x\":1}}";

    fn events(input: &str) -> Vec<(usize, NewEvent)> {
        match input_from_lines(input.as_bytes(), Some(ExpectedVersion::Exact(0))).expect("parses") {
            Input::Events(events) => events,
            Input::Requests(_) => panic!("event lines read as requests"),
        }
    }

    #[test]
    fn event_lines_and_request_lines_are_told_apart() {
        let input =
            format!("{EVENT}\n\n{{\"aggregate_type\":\"A\",\"event_type\":\"F\",\"event_data\":{{}}}}\n");
        let read = events(&input);
        assert_eq!(read.iter().map(|(line, _)| *line).collect::<Vec<_>>(), [1, 3]);

        let input = "{\"expected_version\":0,\"events\":[{\"aggregate_type\":\"A\",\"event_type\":\"E\",\"event_data\":{}}]}\n\
                     {\"events\":[{\"aggregate_type\":\"A\",\"event_type\":\"E\",\"event_data\":{}}]}\n";
        let Input::Requests(requests) = input_from_lines(input.as_bytes(), None).expect("parses") else {
            panic!("request lines read as events")
        };
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[1].1.expected_version, ExpectedVersion::Any);
        assert!(input_from_lines(input.as_bytes(), Some(ExpectedVersion::Exact(0))).is_err());

        let mixed = format!("{EVENT}\n{{\"events\":[]}}\n");
        assert!(input_from_lines(mixed.as_bytes(), None).is_err());
        assert!(input_from_lines("\n".as_bytes(), None).is_err());
        let typo = "{\"aggregate_type\":\"A\",\"event_typ\":\"E\",\"event_data\":{}}\n";
        assert!(input_from_lines(typo.as_bytes(), None).is_err());
    }

    #[test]
    fn event_lines_are_packed_in_order_under_both_limits() {
        let input = format!("{EVENT}\n").repeat(2500);
        let by_count = pack(
            events(&input),
            &BatchArgs {
                batch_events: 1000,
                batch_bytes: 1 << 20,
            },
        )
        .expect("packs");
        let sizes: Vec<usize> = by_count.iter().map(|b| b.events.len()).collect();
        assert_eq!(sizes, [1000, 1000, 500]);
        assert_eq!(
            by_count.iter().map(|b| b.lines).collect::<Vec<_>>(),
            [(1, 1000), (1001, 2000), (2001, 2500)]
        );

        // Each event is about 120 bytes with its id: 1000 bytes take 8 of them.
        let by_bytes = pack(
            events(&input),
            &BatchArgs {
                batch_events: 1000,
                batch_bytes: 1000,
            },
        )
        .expect("packs");
        assert!(by_bytes.len() > 2500 / 10, "{} batches", by_bytes.len());
        assert!(by_bytes.iter().all(|b| b.bytes <= 1000 && !b.events.is_empty()));
        assert_eq!(by_bytes.iter().map(|b| b.events.len()).sum::<usize>(), 2500);

        // An event over the byte limit goes alone rather than not at all.
        let alone = pack(
            events(&format!("{EVENT}\n{EVENT}\n")),
            &BatchArgs {
                batch_events: 1000,
                batch_bytes: 10,
            },
        )
        .expect("packs");
        assert_eq!(alone.len(), 2);
    }
}
