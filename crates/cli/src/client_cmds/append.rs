//! `factstore append`: append events to one aggregate, from the command line or from JSON
//! lines on stdin.
//!
//! With `--stdin`, each non-blank line is either
//! - an event object, `{"event_type": "...", "aggregate_type": "...", "event_data": {...}}`
//!   with the optional `event_id`, `event_version`, `created_by`, `created_at`, `metadata`:
//!   all such lines are appended together, atomically, under `--expected-version`; or
//! - a whole append request, `{"expected_version": 3, "events": [...]}`: each such line is
//!   one append, in order (its `expected_version`, not the option's, applies).
//!
//! One input holds one kind of line or the other. Every event gets its id before the first
//! attempt, so the client's retries never append anything twice.

use std::io::BufRead;
use std::process::ExitCode;

use anyhow::{Context, bail};
use factstore_client::{AppendRequest, ExpectedVersion, NewEvent, RawJson, TimeBound};
use uuid::Uuid;

use super::ClientArgs;
use super::output::Printer;

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
    #[command(flatten)]
    pub client: ClientArgs,
}

pub fn run(args: AppendArgs) -> anyhow::Result<ExitCode> {
    let requests = if args.stdin {
        requests_from_lines(std::io::stdin().lock(), args.expected_version)?
    } else {
        vec![AppendRequest::new([event_from_flags(&args)?]).expect(args.expected_version.unwrap_or_default())]
    };
    let client = args.client.client()?;
    let mut printer = Printer::new(args.client.json);
    super::block_on(async move {
        for request in requests {
            let outcome = client.append(&args.aggregate_id, request).await?;
            printer.append_outcome(&args.aggregate_id, &outcome)?;
        }
        printer.flush()?;
        Ok(ExitCode::SUCCESS)
    })
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

/// The appends described by JSON lines (see the module documentation).
fn requests_from_lines(
    input: impl BufRead,
    expected: Option<ExpectedVersion>,
) -> anyhow::Result<Vec<AppendRequest>> {
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
            requests.push(request);
        } else {
            let event: NewEvent =
                serde_json::from_str(&line).with_context(|| format!("line {number} is not an event"))?;
            events.push(event);
        }
    }
    match (events.is_empty(), requests.is_empty()) {
        (true, true) => bail!("no events on stdin"),
        (false, false) => {
            bail!("stdin mixes event lines and append requests (lines with \"events\"); give one kind")
        }
        (false, true) => Ok(vec![
            AppendRequest::new(events).expect(expected.unwrap_or_default()),
        ]),
        (true, false) if expected.is_some() => {
            bail!("--expected-version applies to event lines; append requests carry their own")
        }
        (true, false) => Ok(requests),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_lines_make_one_append_and_request_lines_one_each() {
        let input = "{\"aggregate_type\":\"A\",\"event_type\":\"E\",\"event_data\":{\"x\":1}}\n\n\
                     {\"aggregate_type\":\"A\",\"event_type\":\"F\",\"event_data\":{}}\n";
        let requests =
            requests_from_lines(input.as_bytes(), Some(ExpectedVersion::Exact(0))).expect("parses");
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].events.len(), 2);
        assert_eq!(requests[0].expected_version, ExpectedVersion::Exact(0));

        let input = "{\"expected_version\":0,\"events\":[{\"aggregate_type\":\"A\",\"event_type\":\"E\",\"event_data\":{}}]}\n\
                     {\"events\":[{\"aggregate_type\":\"A\",\"event_type\":\"E\",\"event_data\":{}}]}\n";
        let requests = requests_from_lines(input.as_bytes(), None).expect("parses");
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[1].expected_version, ExpectedVersion::Any);

        let mixed = "{\"aggregate_type\":\"A\",\"event_type\":\"E\",\"event_data\":{}}\n{\"events\":[]}\n";
        assert!(requests_from_lines(mixed.as_bytes(), None).is_err());
        assert!(requests_from_lines("\n".as_bytes(), None).is_err());
        let typo = "{\"aggregate_type\":\"A\",\"event_typ\":\"E\",\"event_data\":{}}\n";
        assert!(requests_from_lines(typo.as_bytes(), None).is_err());
    }
}
