//! The event: an immutable fact, held in its compact binary form.
//!
//! An [`Event`] is a reference-counted byte buffer laid out as below. Reading an event from the
//! embedded engine's log costs no copy and no allocation: the buffer is a slice of the block
//! that was read. The layout is also the body of a log record (see `docs/format.md`).
//!
//! ```text
//! offset size  field
//!      0    8  position          u64 LE
//!      8    8  version           u64 LE (per aggregate)
//!     16   16  event_id          UUID bytes (RFC 4122 order)
//!     32    8  created_at        i64 LE, microseconds since the Unix epoch
//!     40    8  recorded_at       i64 LE, microseconds since the Unix epoch
//!     48    4  event_version     u32 LE
//!     52    2  aggregate_id len  u16 LE
//!     54    1  aggregate_type len
//!     55    1  event_type len
//!     56    1  created_by len
//!     57    1  flags             bit 0 created_by present, bit 1 metadata present,
//!                                bit 2 correlation_id present, bit 3 causation_id present
//!     58    1  correlation_id len
//!     59    1  causation_id len
//!     60    4  event_data len    u32 LE
//!     64    4  metadata len      u32 LE
//!     68    …  aggregate_id, aggregate_type, event_type, created_by, correlation_id,
//!              causation_id, event_data (compact JSON object), metadata (compact JSON object)
//! ```
//! `correlation_id` and `causation_id` repeat the strings of the same name in `metadata`, so
//! that filters and indexes need not parse JSON.

use std::fmt;

use bytes::Bytes;
use uuid::Uuid;

use crate::time::Timestamp;

/// Size of the fixed part of an event's binary form.
pub const HEADER_LEN: usize = 68;

const FLAG_CREATED_BY: u8 = 1;
const FLAG_METADATA: u8 = 2;
const FLAG_CORRELATION: u8 = 4;
const FLAG_CAUSATION: u8 = 8;
const KNOWN_FLAGS: u8 = FLAG_CREATED_BY | FLAG_METADATA | FLAG_CORRELATION | FLAG_CAUSATION;

/// Byte offsets of the fields that the writer fills in at commit time.
pub mod offsets {
    pub const POSITION: usize = 0;
    pub const VERSION: usize = 8;
    pub const CREATED_AT: usize = 32;
    pub const RECORDED_AT: usize = 40;
}

/// Why a buffer is not a well-formed event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed event: {0}")]
pub struct DecodeError(pub &'static str);

/// The fields of an event, borrowed, used to build its binary form.
#[derive(Debug, Clone, Copy)]
pub struct EventFields<'a> {
    pub position: u64,
    pub version: u64,
    pub event_id: Uuid,
    pub created_at: Timestamp,
    pub recorded_at: Timestamp,
    pub event_version: u32,
    pub aggregate_id: &'a str,
    pub aggregate_type: &'a str,
    pub event_type: &'a str,
    pub created_by: Option<&'a str>,
    pub correlation_id: Option<&'a str>,
    pub causation_id: Option<&'a str>,
    /// A compact JSON object.
    pub event_data: &'a str,
    /// A compact JSON object.
    pub metadata: Option<&'a str>,
}

impl EventFields<'_> {
    /// The length of the binary form.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN
            + self.aggregate_id.len()
            + self.aggregate_type.len()
            + self.event_type.len()
            + self.created_by.map_or(0, str::len)
            + self.correlation_id.map_or(0, str::len)
            + self.causation_id.map_or(0, str::len)
            + self.event_data.len()
            + self.metadata.map_or(0, str::len)
    }

    /// Appends the binary form to `out`.
    ///
    /// The caller has validated the lengths (see [`crate::limits`]); a length that does not
    /// fit its field is a bug, so this panics rather than writing a record that cannot be read.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let short = |s: &str| -> u8 { u8::try_from(s.len()).expect("validated: fits in u8") };
        let mut flags = 0u8;
        if self.created_by.is_some() {
            flags |= FLAG_CREATED_BY;
        }
        if self.metadata.is_some() {
            flags |= FLAG_METADATA;
        }
        if self.correlation_id.is_some() {
            flags |= FLAG_CORRELATION;
        }
        if self.causation_id.is_some() {
            flags |= FLAG_CAUSATION;
        }
        out.reserve(self.encoded_len());
        out.extend_from_slice(&self.position.to_le_bytes());
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(self.event_id.as_bytes());
        out.extend_from_slice(&self.created_at.as_micros().to_le_bytes());
        out.extend_from_slice(&self.recorded_at.as_micros().to_le_bytes());
        out.extend_from_slice(&self.event_version.to_le_bytes());
        let agg_len = u16::try_from(self.aggregate_id.len()).expect("validated: fits in u16");
        out.extend_from_slice(&agg_len.to_le_bytes());
        out.push(short(self.aggregate_type));
        out.push(short(self.event_type));
        out.push(short(self.created_by.unwrap_or("")));
        out.push(flags);
        out.push(short(self.correlation_id.unwrap_or("")));
        out.push(short(self.causation_id.unwrap_or("")));
        let data_len = u32::try_from(self.event_data.len()).expect("validated: fits in u32");
        let meta_len = u32::try_from(self.metadata.map_or(0, str::len)).expect("validated: fits in u32");
        out.extend_from_slice(&data_len.to_le_bytes());
        out.extend_from_slice(&meta_len.to_le_bytes());
        out.extend_from_slice(self.aggregate_id.as_bytes());
        out.extend_from_slice(self.aggregate_type.as_bytes());
        out.extend_from_slice(self.event_type.as_bytes());
        out.extend_from_slice(self.created_by.unwrap_or("").as_bytes());
        out.extend_from_slice(self.correlation_id.unwrap_or("").as_bytes());
        out.extend_from_slice(self.causation_id.unwrap_or("").as_bytes());
        out.extend_from_slice(self.event_data.as_bytes());
        out.extend_from_slice(self.metadata.unwrap_or("").as_bytes());
    }
}

/// One stored event. Cheap to clone (a reference count).
#[derive(Clone, PartialEq, Eq)]
pub struct Event {
    buf: Bytes,
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(raw)
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(raw)
}

/// Start and end of each variable field, in the order of the layout.
#[derive(Clone, Copy)]
struct Spans([usize; 9]);

impl Spans {
    fn of(buf: &[u8]) -> Spans {
        let lens = [
            u16::from_le_bytes([buf[52], buf[53]]) as usize,
            buf[54] as usize,
            buf[55] as usize,
            buf[56] as usize,
            buf[58] as usize,
            buf[59] as usize,
            u32_at(buf, 60) as usize,
            u32_at(buf, 64) as usize,
        ];
        let mut ends = [HEADER_LEN; 9];
        for (i, len) in lens.iter().enumerate() {
            ends[i + 1] = ends[i] + len;
        }
        Spans(ends)
    }

    fn field(self, index: usize) -> std::ops::Range<usize> {
        self.0[index]..self.0[index + 1]
    }
}

const F_AGGREGATE_ID: usize = 0;
const F_AGGREGATE_TYPE: usize = 1;
const F_EVENT_TYPE: usize = 2;
const F_CREATED_BY: usize = 3;
const F_CORRELATION: usize = 4;
const F_CAUSATION: usize = 5;
const F_EVENT_DATA: usize = 6;
const F_METADATA: usize = 7;

impl Event {
    /// Checks a buffer and wraps it. Every accessor relies on what this checks: the lengths add
    /// up, the strings are UTF-8, `event_data` (and `metadata` when present) look like JSON
    /// objects, and no unknown flag is set.
    pub fn from_bytes(buf: Bytes) -> Result<Event, DecodeError> {
        Self::decode(buf, true)
    }

    /// Like [`Event::from_bytes`], for a record whose checksum matched what the store wrote: the
    /// structure and the identifiers are checked, but not the UTF-8 of `event_data` and
    /// `metadata`, which was checked before the record was written. This is the read path's
    /// decoder; it skips the one check that costs as much as the rest together.
    pub fn from_checked_bytes(buf: Bytes) -> Result<Event, DecodeError> {
        Self::decode(buf, false)
    }

    fn decode(buf: Bytes, check_payload_utf8: bool) -> Result<Event, DecodeError> {
        if buf.len() < HEADER_LEN {
            return Err(DecodeError("shorter than the fixed header"));
        }
        let flags = buf[57];
        if flags & !KNOWN_FLAGS != 0 {
            return Err(DecodeError("unknown flags"));
        }
        let spans = Spans::of(&buf);
        if spans.0[8] != buf.len() {
            return Err(DecodeError("field lengths do not add up to the record length"));
        }
        for (field, flag) in [
            (F_CREATED_BY, FLAG_CREATED_BY),
            (F_CORRELATION, FLAG_CORRELATION),
            (F_CAUSATION, FLAG_CAUSATION),
            (F_METADATA, FLAG_METADATA),
        ] {
            if flags & flag == 0 && !spans.field(field).is_empty() {
                return Err(DecodeError("an absent field has a length"));
            }
        }
        // One UTF-8 check over all identifiers, then each boundary: cheaper than six checks.
        let identifiers = std::str::from_utf8(&buf[HEADER_LEN..spans.0[F_EVENT_DATA]])
            .map_err(|_| DecodeError("an identifier is not UTF-8"))?;
        if !spans.0[F_AGGREGATE_TYPE..=F_CAUSATION]
            .iter()
            .all(|&end| identifiers.is_char_boundary(end - HEADER_LEN))
        {
            return Err(DecodeError("an identifier is not UTF-8"));
        }
        let data = &buf[spans.field(F_EVENT_DATA)];
        if !looks_like_object(data) || (check_payload_utf8 && std::str::from_utf8(data).is_err()) {
            return Err(DecodeError("event_data is not a JSON object"));
        }
        if flags & FLAG_METADATA != 0 {
            let meta = &buf[spans.field(F_METADATA)];
            if !looks_like_object(meta) || (check_payload_utf8 && std::str::from_utf8(meta).is_err()) {
                return Err(DecodeError("metadata is not a JSON object"));
            }
        }
        Ok(Event { buf })
    }

    /// Builds an event from its fields.
    pub fn from_fields(fields: &EventFields<'_>) -> Event {
        let mut out = Vec::with_capacity(fields.encoded_len());
        fields.encode_into(&mut out);
        Event {
            buf: Bytes::from(out),
        }
    }

    /// The binary form.
    pub fn as_bytes(&self) -> &Bytes {
        &self.buf
    }

    pub fn position(&self) -> u64 {
        u64_at(&self.buf, offsets::POSITION)
    }

    pub fn version(&self) -> u64 {
        u64_at(&self.buf, offsets::VERSION)
    }

    pub fn event_id(&self) -> Uuid {
        let mut raw = [0u8; 16];
        raw.copy_from_slice(&self.buf[16..32]);
        Uuid::from_bytes(raw)
    }

    pub fn created_at(&self) -> Timestamp {
        Timestamp::from_micros(u64_at(&self.buf, offsets::CREATED_AT) as i64)
    }

    pub fn recorded_at(&self) -> Timestamp {
        Timestamp::from_micros(u64_at(&self.buf, offsets::RECORDED_AT) as i64)
    }

    pub fn event_version(&self) -> u32 {
        u32_at(&self.buf, 48)
    }

    fn str_field(&self, index: usize) -> &str {
        // from_bytes checked that every identifier is UTF-8.
        std::str::from_utf8(&self.buf[Spans::of(&self.buf).field(index)]).unwrap_or_default()
    }

    fn flag(&self, flag: u8) -> bool {
        self.buf[57] & flag != 0
    }

    pub fn aggregate_id(&self) -> &str {
        self.str_field(F_AGGREGATE_ID)
    }

    pub fn aggregate_type(&self) -> &str {
        self.str_field(F_AGGREGATE_TYPE)
    }

    pub fn event_type(&self) -> &str {
        self.str_field(F_EVENT_TYPE)
    }

    pub fn created_by(&self) -> Option<&str> {
        self.flag(FLAG_CREATED_BY).then(|| self.str_field(F_CREATED_BY))
    }

    pub fn correlation_id(&self) -> Option<&str> {
        self.flag(FLAG_CORRELATION).then(|| self.str_field(F_CORRELATION))
    }

    pub fn causation_id(&self) -> Option<&str> {
        self.flag(FLAG_CAUSATION).then(|| self.str_field(F_CAUSATION))
    }

    /// `event_data` as compact JSON text.
    pub fn event_data(&self) -> &str {
        self.str_field(F_EVENT_DATA)
    }

    /// `metadata` as compact JSON text, when the event has any.
    pub fn metadata(&self) -> Option<&str> {
        self.flag(FLAG_METADATA).then(|| self.str_field(F_METADATA))
    }

    /// `event_data` as bytes, without a UTF-8 check (see [`Event::from_checked_bytes`]).
    pub fn event_data_bytes(&self) -> &[u8] {
        &self.buf[Spans::of(&self.buf).field(F_EVENT_DATA)]
    }

    /// `metadata` as bytes, when the event has any.
    pub fn metadata_bytes(&self) -> Option<&[u8]> {
        self.flag(FLAG_METADATA)
            .then(|| &self.buf[Spans::of(&self.buf).field(F_METADATA)])
    }

    /// The fields of this event, borrowed.
    pub fn fields(&self) -> EventFields<'_> {
        EventFields {
            position: self.position(),
            version: self.version(),
            event_id: self.event_id(),
            created_at: self.created_at(),
            recorded_at: self.recorded_at(),
            event_version: self.event_version(),
            aggregate_id: self.aggregate_id(),
            aggregate_type: self.aggregate_type(),
            event_type: self.event_type(),
            created_by: self.created_by(),
            correlation_id: self.correlation_id(),
            causation_id: self.causation_id(),
            event_data: self.event_data(),
            metadata: self.metadata(),
        }
    }

    /// Appends the event's JSON, as the API shows it, to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let mut ints = itoa_buf();
        out.extend_from_slice(b"{\"event_id\":\"");
        out.extend_from_slice(
            self.event_id()
                .hyphenated()
                .encode_lower(&mut Uuid::encode_buffer())
                .as_bytes(),
        );
        out.extend_from_slice(b"\",\"position\":");
        out.extend_from_slice(fmt_u64(&mut ints, self.position()));
        out.extend_from_slice(b",\"aggregate_id\":");
        write_json_str(out, self.aggregate_id());
        out.extend_from_slice(b",\"aggregate_type\":");
        write_json_str(out, self.aggregate_type());
        out.extend_from_slice(b",\"version\":");
        out.extend_from_slice(fmt_u64(&mut ints, self.version()));
        out.extend_from_slice(b",\"event_type\":");
        write_json_str(out, self.event_type());
        out.extend_from_slice(b",\"event_version\":");
        out.extend_from_slice(fmt_u64(&mut ints, u64::from(self.event_version())));
        out.extend_from_slice(b",\"event_data\":");
        out.extend_from_slice(self.event_data_bytes());
        out.extend_from_slice(b",\"created_at\":\"");
        self.created_at().write_rfc3339(out);
        out.extend_from_slice(b"\",\"recorded_at\":\"");
        self.recorded_at().write_rfc3339(out);
        out.extend_from_slice(b"\",\"created_by\":");
        match self.created_by() {
            Some(by) => write_json_str(out, by),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"metadata\":");
        out.extend_from_slice(self.metadata_bytes().unwrap_or(b"null"));
        out.push(b'}');
    }

    /// The event's JSON as the API shows it.
    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(self.buf.len() + 256);
        self.write_json(&mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

fn looks_like_object(json: &[u8]) -> bool {
    json.first() == Some(&b'{') && json.last() == Some(&b'}')
}

fn itoa_buf() -> [u8; 20] {
    [0u8; 20]
}

fn fmt_u64(buf: &mut [u8; 20], mut value: u64) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    &buf[at..]
}

/// Appends `s` as a JSON string literal.
pub fn write_json_str(out: &mut Vec<u8>, s: &str) {
    let needs_escape = s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\');
    if needs_escape {
        // serde_json's escaping is the reference; writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    } else {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_json())
    }
}

impl serde::Serialize for Event {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let json = self.to_json();
        let raw = serde_json::value::RawValue::from_string(json).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample<'a>() -> EventFields<'a> {
        EventFields {
            position: 42,
            version: 3,
            event_id: Uuid::from_u128(0x0192f3c4_5e6a_7b8c_9d0e_1f2a3b4c5d6e),
            created_at: Timestamp::parse_rfc3339("2024-01-15T10:00:00Z").expect("valid"),
            recorded_at: Timestamp::parse_rfc3339("2026-11-27T18:00:00.123456Z").expect("valid"),
            event_version: 2,
            aggregate_id: "account:ACC-001",
            aggregate_type: "Account",
            event_type: "MoneyDeposited",
            created_by: Some("user:123"),
            correlation_id: Some("corr-123"),
            causation_id: None,
            event_data: r#"{"amount":500,"currency":"USD"}"#,
            metadata: Some(r#"{"correlation_id":"corr-123"}"#),
        }
    }

    #[test]
    fn renders_the_api_json() {
        let event = Event::from_fields(&sample());
        let json: serde_json::Value = serde_json::from_str(&event.to_json()).expect("valid JSON");
        assert_eq!(
            json,
            serde_json::json!({
                "event_id": "0192f3c4-5e6a-7b8c-9d0e-1f2a3b4c5d6e",
                "position": 42,
                "aggregate_id": "account:ACC-001",
                "aggregate_type": "Account",
                "version": 3,
                "event_type": "MoneyDeposited",
                "event_version": 2,
                "event_data": {"amount": 500, "currency": "USD"},
                "created_at": "2024-01-15T10:00:00.000000Z",
                "recorded_at": "2026-11-27T18:00:00.123456Z",
                "created_by": "user:123",
                "metadata": {"correlation_id": "corr-123"}
            })
        );
    }

    #[test]
    fn decodes_what_it_encodes() {
        let fields = sample();
        let event = Event::from_fields(&fields);
        let decoded = Event::from_bytes(event.as_bytes().clone()).expect("well formed");
        assert_eq!(decoded.aggregate_id(), "account:ACC-001");
        assert_eq!(decoded.correlation_id(), Some("corr-123"));
        assert_eq!(decoded.causation_id(), None);
        assert_eq!(decoded.created_by(), Some("user:123"));
        assert_eq!(decoded.event_version(), 2);
        assert_eq!(decoded.as_bytes().len(), fields.encoded_len());
    }

    #[test]
    fn escapes_strings() {
        let mut fields = sample();
        fields.created_by = Some("a \"quoted\" \\ name");
        let event = Event::from_fields(&fields);
        let json: serde_json::Value = serde_json::from_str(&event.to_json()).expect("valid JSON");
        assert_eq!(json["created_by"], "a \"quoted\" \\ name");
    }

    proptest::proptest! {
        /// The decoder never panics, whatever the bytes.
        #[test]
        fn decoder_survives_any_bytes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            if let Ok(event) = Event::from_bytes(Bytes::from(bytes)) {
                let _ = event.to_json();
                let _ = event.fields();
            }
        }

        /// Flipping any byte of a valid event either still decodes or is refused; never a panic.
        #[test]
        fn decoder_survives_corruption(at in 0usize..200, value in proptest::num::u8::ANY) {
            let mut bytes = Event::from_fields(&sample()).as_bytes().to_vec();
            let at = at % bytes.len();
            bytes[at] = value;
            if let Ok(event) = Event::from_bytes(Bytes::from(bytes)) {
                let _ = event.to_json();
            }
        }
    }
}
