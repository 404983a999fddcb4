//! What the decoders must do with any bytes: the checks shared by the `decode_props` property
//! tests and the `event_decode` and `frame_decode` fuzz targets (`fuzz/`, which include this
//! file by path).
//!
//! - [`check_event`]: `Event::from_bytes` never panics; an event it accepts has accessors that
//!   do not panic, encodes back to the very same bytes, and renders JSON that parses and shows
//!   its fields, whenever its two payloads are JSON.
//! - [`check_frame`]: `FrameHeader::decode`, `check_body`, `record_head` and `split_records`
//!   never panic (nor allocate what a length field claims); records they return lie inside the
//!   body, in order, at least an event header long, as many as the frame says.

use bytes::Bytes;
use factstore_core::{Event, Timestamp};
use factstore_engine::log::format::{
    FRAME_HEADER_LEN, FrameHeader, RECORD_HEADER_LEN, RECORD_LEN_LIMIT, RecordHead, record_head,
    split_records,
};
use serde_json::Value;

fn is_json(text: &str) -> bool {
    serde_json::from_str::<Value>(text).is_ok()
}

/// Decodes `bytes` as an event and, when it is accepted, checks everything that can be asked
/// of it. Panics on a broken promise.
pub fn check_event(bytes: &[u8]) -> Option<Event> {
    let event = Event::from_bytes(Bytes::copy_from_slice(bytes)).ok()?;
    // `fields` calls every accessor.
    let fields = event.fields();
    assert_eq!(
        Event::from_fields(&fields).as_bytes().as_ref(),
        bytes,
        "an accepted event does not encode back to its bytes"
    );
    let json = event.to_json();
    let _ = format!("{event:?}");
    let payloads_are_json = is_json(event.event_data()) && event.metadata().is_none_or(is_json);
    let value = match serde_json::from_str::<Value>(&json) {
        Ok(value) => value,
        Err(error) => {
            // The decoder only checks that payloads *look like* objects (`{…}`): it trusts the
            // checksums for the rest. So the JSON is only promised when the payloads are JSON.
            assert!(
                !payloads_are_json,
                "to_json is not JSON although both payloads are: {error}: {json}"
            );
            return Some(event);
        }
    };
    assert!(
        serde_json::to_string(&event).is_ok(),
        "serialising fails although to_json is JSON"
    );
    let text = |v: &Value| v.as_str().map(str::to_owned);
    assert_eq!(
        text(&value["event_id"]),
        Some(event.event_id().hyphenated().to_string())
    );
    assert_eq!(value["position"].as_u64(), Some(event.position()));
    assert_eq!(value["version"].as_u64(), Some(event.version()));
    assert_eq!(
        value["event_version"].as_u64(),
        Some(u64::from(event.event_version()))
    );
    assert_eq!(
        text(&value["aggregate_id"]).as_deref(),
        Some(event.aggregate_id())
    );
    assert_eq!(
        text(&value["aggregate_type"]).as_deref(),
        Some(event.aggregate_type())
    );
    assert_eq!(text(&value["event_type"]).as_deref(), Some(event.event_type()));
    assert_eq!(text(&value["created_by"]).as_deref(), event.created_by());
    if event.created_by().is_none() {
        assert!(value["created_by"].is_null());
    }
    if payloads_are_json {
        let parse = |s: &str| serde_json::from_str::<Value>(s).ok();
        assert_eq!(Some(&value["event_data"]), parse(event.event_data()).as_ref());
        match event.metadata() {
            Some(metadata) => assert_eq!(Some(&value["metadata"]), parse(metadata).as_ref()),
            None => assert!(value["metadata"].is_null()),
        }
    }
    for (name, at) in [
        ("created_at", event.created_at()),
        ("recorded_at", event.recorded_at()),
    ] {
        let shown = text(&value[name]).expect("times are strings");
        if at.is_representable() {
            assert_eq!(Timestamp::parse_rfc3339(&shown), Ok(at), "{name} renders wrongly");
        }
    }
    Some(event)
}

/// Checks the records `split_records` found in `body`.
fn check_ranges(body: &[u8], expected: u32, ranges: &[std::ops::Range<usize>]) {
    assert_eq!(
        ranges.len(),
        expected as usize,
        "as many records as the frame says"
    );
    let mut at = 0;
    for range in ranges {
        assert_eq!(range.start, at + RECORD_HEADER_LEN, "records follow each other");
        assert!(range.end <= body.len(), "a record lies inside its body");
        let len = range.end - range.start;
        assert!(
            (factstore_core::event::HEADER_LEN..RECORD_LEN_LIMIT).contains(&len),
            "a record has a length no record can have"
        );
        at = range.end;
    }
    assert_eq!(at, body.len(), "the records fill the body");
}

/// Runs the frame decoders over `bytes` in every way recovery and `verify` do, and over the
/// raw bytes as a frame body; returns the events when `bytes` is one whole valid frame.
pub fn check_frame(bytes: &[u8]) -> Option<Vec<Event>> {
    match record_head(bytes) {
        RecordHead::Record { len, .. } => assert!(
            (factstore_core::event::HEADER_LEN..RECORD_LEN_LIMIT).contains(&len),
            "record_head accepted a length no record can have"
        ),
        RecordHead::Truncated => assert!(bytes.len() < RECORD_HEADER_LEN),
        RecordHead::Frame | RecordHead::Invalid => {}
    }
    // The bytes as a body, with a count taken from them: a claimed count is never trusted.
    let claimed = bytes
        .get(..4)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    for expected in [claimed, u32::MAX, 1] {
        if let Ok(ranges) = split_records(bytes, expected) {
            check_ranges(bytes, expected, &ranges);
        }
    }

    let header = FrameHeader::decode(bytes).ok()?;
    assert!(bytes.len() >= FRAME_HEADER_LEN, "decode accepted a short header");
    let rest = &bytes[FRAME_HEADER_LEN..];
    // What `check_body` makes of short header slices and of a body of the wrong length.
    for header_len in [0, 23, 24] {
        let _ = header.check_body(&bytes[..header_len], rest);
    }
    let _ = header.check_body(bytes, rest);
    if let Ok(ranges) = split_records(rest, header.event_count) {
        check_ranges(rest, header.event_count, &ranges);
    }
    // As recovery reads a frame.
    let body = rest.get(..header.body_len as usize)?;
    if !header.check_body(bytes, body) {
        return None;
    }
    let ranges = split_records(body, header.event_count).ok()?;
    check_ranges(body, header.event_count, &ranges);
    let events: Vec<Event> = ranges
        .iter()
        .filter_map(|r| check_event(&body[r.clone()]))
        .collect();
    (events.len() == ranges.len()).then_some(events)
}

/// Whether recovery would take `bytes` as one valid frame: header, length, checksum, records.
pub fn frame_is_valid(bytes: &[u8]) -> bool {
    let Ok(header) = FrameHeader::decode(bytes) else {
        return false;
    };
    let Some(body) = bytes.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + header.body_len as usize) else {
        return false;
    };
    header.check_body(bytes, body) && split_records(body, header.event_count).is_ok()
}
