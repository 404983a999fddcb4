//! Printing events and answers: a line per event for people, JSON for scripts.
//!
//! An event line is `POSITION  CREATED_AT  AGGREGATE_ID@VERSION  EVENT_TYPE vEVENT_VERSION  DATA`,
//! with the data as compact JSON: `grep`-able, and wide only when the data is. The schema
//! version of the data is there because reading it needs it (upcasters, `--raw`). `--json` prints the
//! event exactly as the server sent it, one per line.

use std::io::{self, Write};

use factstore_client::time::format_timestamp;
use factstore_client::{AppendOutcome, Delivery, Event, Head};
use serde::Serialize;

/// Where a command prints, and how. Writes go to a buffered stdout; `flush` after each
/// event when following a stream.
pub struct Printer {
    out: io::BufWriter<io::Stdout>,
    json: bool,
}

impl Printer {
    pub fn new(json: bool) -> Printer {
        Printer {
            out: io::BufWriter::new(io::stdout()),
            json,
        }
    }

    pub fn json(&self) -> bool {
        self.json
    }

    /// One event: a line of text, or a line of JSON.
    pub fn event(&mut self, event: &Event) -> io::Result<()> {
        if self.json {
            serde_json::to_writer(&mut self.out, event)?;
            self.out.write_all(b"\n")
        } else {
            writeln!(self.out, "{}", event_line(event))
        }
    }

    /// A delivery of a persistent subscription (a poll's, or a parked event): the event and
    /// its attempt, as one line of text or the event's JSON with `attempt` added.
    pub fn delivery(&mut self, delivery: &Delivery) -> io::Result<()> {
        if self.json {
            let mut value = serde_json::to_value(&delivery.event).map_err(io::Error::other)?;
            if let Some(object) = value.as_object_mut() {
                object.insert("attempt".to_owned(), delivery.attempt.into());
            }
            return self.value(&value);
        }
        writeln!(
            self.out,
            "{}  (attempt {})",
            event_line(&delivery.event),
            delivery.attempt
        )
    }

    /// A JSON value on one line (in JSON mode).
    pub fn value<T: Serialize>(&mut self, value: &T) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, value)?;
        self.out.write_all(b"\n")
    }

    /// A line of text.
    pub fn line(&mut self, line: &str) -> io::Result<()> {
        writeln!(self.out, "{line}")
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// An event in full, field by field (`factstore get`).
    pub fn event_details(&mut self, event: &Event) -> io::Result<()> {
        if self.json {
            return self.event(event);
        }
        let out = &mut self.out;
        writeln!(out, "event_id        {}", event.event_id)?;
        writeln!(out, "position        {}", event.position)?;
        writeln!(out, "aggregate_id    {}", event.aggregate_id)?;
        writeln!(out, "aggregate_type  {}", event.aggregate_type)?;
        writeln!(out, "version         {}", event.version)?;
        writeln!(out, "event_type      {}", event.event_type)?;
        writeln!(out, "event_version   {}", event.event_version)?;
        writeln!(out, "created_at      {}", format_timestamp(event.created_at))?;
        writeln!(out, "recorded_at     {}", format_timestamp(event.recorded_at))?;
        writeln!(
            out,
            "created_by      {}",
            event.created_by.as_deref().unwrap_or("-")
        )?;
        match &event.metadata {
            Some(metadata) => writeln!(out, "metadata        {}", pretty(&metadata.to_value(), 16))?,
            None => writeln!(out, "metadata        -")?,
        }
        writeln!(
            out,
            "event_data      {}",
            pretty(&event.event_data.to_value(), 16)
        )
    }

    /// The outcome of an append.
    pub fn append_outcome(&mut self, aggregate_id: &str, outcome: &AppendOutcome) -> io::Result<()> {
        if self.json {
            let mut value = serde_json::to_value(outcome).map_err(io::Error::other)?;
            if let Some(object) = value.as_object_mut() {
                object.insert("aggregate_id".to_owned(), aggregate_id.into());
                object.insert("replayed".to_owned(), outcome.replayed.into());
            }
            return self.value(&value);
        }
        let count = outcome.events.len();
        let (first, last) = match (outcome.events.first(), outcome.events.last()) {
            (Some(first), Some(last)) => (first, last),
            _ => return self.line(&format!("nothing appended to {aggregate_id}")),
        };
        let span = |a: u64, b: u64| if a == b { a.to_string() } else { format!("{a}-{b}") };
        let events = if count == 1 { "event" } else { "events" };
        let (what, versions, positions) = (
            if outcome.replayed {
                "already appended (a repeat; nothing written):"
            } else {
                "appended"
            },
            span(first.version, last.version),
            span(first.position, last.position),
        );
        self.line(&format!(
            "{what} {count} {events} to {aggregate_id}: version {versions}, position {positions}"
        ))
    }

    /// The head.
    pub fn head(&mut self, head: &Head) -> io::Result<()> {
        if self.json {
            return self.value(head);
        }
        match head.recorded_at {
            Some(at) => self.line(&format!(
                "position {} (last event recorded {})",
                head.position,
                format_timestamp(at)
            )),
            None => self.line(&format!("position {} (the store is empty)", head.position)),
        }
    }
}

/// One line for an event.
pub fn event_line(event: &Event) -> String {
    format!(
        "{:>8}  {}  {}@{}  {} v{}  {}",
        event.position,
        format_timestamp(event.created_at),
        event.aggregate_id,
        event.version,
        event.event_type,
        event.event_version,
        event.event_data
    )
}

/// Pretty JSON, its continuation lines indented by `indent` spaces.
fn pretty(value: &serde_json::Value, indent: usize) -> String {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.replace('\n', &format!("\n{:indent$}", ""))
}
