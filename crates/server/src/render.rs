//! Writing response bodies.
//!
//! Event lists are the hot path of reads (the target is over a million events a second through
//! `GET /v1/events`), so they are written straight into one `Vec<u8>` with
//! [`Event::write_json`], never through `serde_json::Value`. Small bodies (append outcomes,
//! the head) go through serde.

use std::io::Write as _;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use factstore_core::event::write_json_str;
use factstore_core::{AggregatePage, AppendedEvent, Event, EventPage, Timestamp};
use serde::Serialize;

use crate::error::ApiError;

/// A response with a JSON body already written.
pub fn json_bytes(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// A response with `value` serialised as its body.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Result<Response, ApiError> {
    let body = serde_json::to_vec(value).map_err(|e| {
        ApiError::Store(factstore_core::StoreError::Internal(format!(
            "serialising a response: {e}"
        )))
    })?;
    Ok(json_bytes(status, body))
}

/// A rough size of an event's JSON, to allocate a body once.
fn estimate(events: &[Event]) -> usize {
    events.iter().map(|e| e.as_bytes().len() + 256).sum::<usize>() + 128
}

fn write_events(out: &mut Vec<u8>, events: &[Event]) {
    out.extend_from_slice(b"\"events\":[");
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        event.write_json(out);
    }
    out.push(b']');
}

fn write_optional_u64(out: &mut Vec<u8>, value: Option<u64>) {
    match value {
        // Writing to a Vec cannot fail.
        Some(value) => {
            let _ = write!(out, "{value}");
        }
        None => out.extend_from_slice(b"null"),
    }
}

/// `{"events": [...], "next_after_position": p, "head_position": h}` in one buffer: the form
/// `chunked::EventPageBody` writes a chunk at a time (tests compare the two).
pub fn event_page(page: &EventPage) -> Vec<u8> {
    let mut out = Vec::with_capacity(estimate(&page.events));
    out.push(b'{');
    write_events(&mut out, &page.events);
    let _ = write!(
        out,
        ",\"next_after_position\":{},\"head_position\":{}}}",
        page.next_after_position, page.head_position
    );
    out
}

/// `{"aggregate_id", "aggregate_type", "version", "events": [...], "next_from_version": n|null}`
pub fn aggregate_page(page: &AggregatePage) -> Vec<u8> {
    let mut out = Vec::with_capacity(estimate(&page.events) + page.aggregate_id.len());
    out.extend_from_slice(b"{\"aggregate_id\":");
    write_json_str(&mut out, &page.aggregate_id);
    out.extend_from_slice(b",\"aggregate_type\":");
    write_json_str(&mut out, &page.aggregate_type);
    let _ = write!(out, ",\"version\":{},", page.version);
    write_events(&mut out, &page.events);
    out.extend_from_slice(b",\"next_from_version\":");
    write_optional_u64(&mut out, page.next_from_version);
    out.push(b'}');
    out
}

/// The answer to an append to one aggregate,
/// `{"version":v,"position":p,"events":[{"event_id","version","position","recorded_at"},…]}`,
/// written by hand: serde formatted every id and timestamp through `fmt`, a tenth of the
/// request workers' time at 1000-event appends. The events of a commit share one
/// `recorded_at`, formatted once. Byte for byte what serde writes for `AppendResponse`
/// (checked in `append.rs`'s tests).
pub fn append_outcome(version: u64, position: u64, events: &[AppendedEvent]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + events.len() * 128);
    let mut numbers = itoa::Buffer::new();
    out.extend_from_slice(b"{\"version\":");
    out.extend_from_slice(numbers.format(version).as_bytes());
    out.extend_from_slice(b",\"position\":");
    out.extend_from_slice(numbers.format(position).as_bytes());
    out.extend_from_slice(b",\"events\":[");
    let mut stamp: Option<(Timestamp, Vec<u8>)> = None;
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"event_id\":\"");
        out.extend_from_slice(
            event
                .event_id
                .hyphenated()
                .encode_lower(&mut uuid::Uuid::encode_buffer())
                .as_bytes(),
        );
        out.extend_from_slice(b"\",\"version\":");
        out.extend_from_slice(numbers.format(event.version).as_bytes());
        out.extend_from_slice(b",\"position\":");
        out.extend_from_slice(numbers.format(event.position).as_bytes());
        out.extend_from_slice(b",\"recorded_at\":\"");
        let text = match &mut stamp {
            Some((at, text)) if *at == event.recorded_at => text,
            slot => {
                let mut text = Vec::with_capacity(32);
                event.recorded_at.write_rfc3339(&mut text);
                &mut slot.insert((event.recorded_at, text)).1
            }
        };
        out.extend_from_slice(text);
        out.extend_from_slice(b"\"}");
    }
    out.extend_from_slice(b"]}");
    out
}

/// One event, as `GET /v1/events/{event_id}` answers it.
pub fn event(event: &Event) -> Vec<u8> {
    let mut out = Vec::with_capacity(event.as_bytes().len() + 256);
    event.write_json(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use factstore_core::{EventFields, Timestamp};
    use uuid::Uuid;

    fn sample(position: u64) -> Event {
        Event::from_fields(&EventFields {
            position,
            version: position,
            event_id: Uuid::now_v7(),
            created_at: Timestamp::from_micros(0),
            recorded_at: Timestamp::from_micros(0),
            event_version: 1,
            aggregate_id: "a\"b",
            aggregate_type: "A",
            event_type: "E",
            created_by: None,
            correlation_id: None,
            causation_id: None,
            event_data: "{}",
            metadata: None,
        })
    }

    #[test]
    fn pages_are_valid_json() {
        let page = EventPage {
            events: vec![sample(1), sample(2)],
            next_after_position: 2,
            head_position: 7,
        };
        let value: serde_json::Value = serde_json::from_slice(&event_page(&page)).expect("JSON");
        assert_eq!(value["events"][1]["position"], 2);
        assert_eq!(
            (
                value["next_after_position"].as_u64(),
                value["head_position"].as_u64()
            ),
            (Some(2), Some(7))
        );

        let page = AggregatePage {
            aggregate_id: "a\"b".into(),
            aggregate_type: "A".into(),
            version: 2,
            events: vec![],
            next_from_version: None,
        };
        let value: serde_json::Value = serde_json::from_slice(&aggregate_page(&page)).expect("JSON");
        assert_eq!(value["aggregate_id"], "a\"b");
        assert!(value["next_from_version"].is_null());
        assert_eq!(value["events"], serde_json::json!([]));
    }
}
