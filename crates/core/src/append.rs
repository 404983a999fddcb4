//! Appends: what a client asks to write, its validation, and what the store answers.
//!
//! A [`Commit`] is the unit of atomicity: one or more [`AggregateAppend`]s and an optional
//! [`Condition`], all written or none. An append to one aggregate is a commit with one entry.
//! [`Commit::prepare`] validates everything that can be checked without the store (lengths,
//! formats, limits, duplicate ids within the request) so that a backend sees only well-formed
//! input, and a bad request is refused before anything is looked up.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::error::StoreError;
use crate::event::{Event, EventFields};
use crate::json::stored_object;
use crate::limits::Limits;
use crate::query::EventFilter;
use crate::time::Timestamp;

/// The version an append expects its aggregate to be at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExpectedVersion {
    /// No check (the default).
    #[default]
    Any,
    /// The aggregate must have at least one event.
    Exists,
    /// The aggregate must be at exactly this version; 0 means it must not exist yet.
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether an aggregate at `current` satisfies this expectation.
    pub fn admits(self, current: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::Exists => current > 0,
            ExpectedVersion::Exact(v) => v == current,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::Exists => f.write_str("exists"),
            ExpectedVersion::Exact(v) => write!(f, "{v}"),
        }
    }
}

impl Serialize for ExpectedVersion {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            ExpectedVersion::Any => serializer.serialize_str("any"),
            ExpectedVersion::Exists => serializer.serialize_str("exists"),
            ExpectedVersion::Exact(v) => serializer.serialize_u64(*v),
        }
    }
}

impl<'de> Deserialize<'de> for ExpectedVersion {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ExpectedVisitor;
        impl Visitor<'_> for ExpectedVisitor {
            type Value = ExpectedVersion;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a version number (0 or more), \"any\" or \"exists\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(ExpectedVersion::Exact(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map(ExpectedVersion::Exact)
                    .map_err(|_| E::custom(format!("expected_version must not be negative, got {v}")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                whole_number(v).map(ExpectedVersion::Exact).ok_or_else(|| {
                    E::custom(format!(
                        "expected_version must be a whole number of 0 or more, got {v}"
                    ))
                })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                match v {
                    "any" => Ok(ExpectedVersion::Any),
                    "exists" => Ok(ExpectedVersion::Exists),
                    other => Err(E::custom(format!(
                        "expected_version must be a number, \"any\" or \"exists\", not \"{other}\""
                    ))),
                }
            }
        }
        deserializer.deserialize_any(ExpectedVisitor)
    }
}

/// The whole number a JSON number written with a fraction or an exponent stands for (`1526.0`,
/// `1.5e3`), when it is one of 0 or more that a `u64` holds exactly.
///
/// JSON has one kind of number: `1526.0` and `1526` are the same value to JSON Schema (an
/// `integer` is any number with a zero fractional part) and to most clients' encoders, so a
/// field documented as an integer takes both.
pub fn whole_number(v: f64) -> Option<u64> {
    // 2^64 as f64 is exact; every f64 below it with no fraction converts exactly.
    const TWO_POW_64: f64 = 18_446_744_073_709_551_616.0;
    (v.fract() == 0.0 && (0.0..TWO_POW_64).contains(&v)).then_some(v as u64)
}

/// One event as a client sends it.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewEvent {
    /// The idempotency key; the store assigns a UUIDv7 when absent.
    #[serde(default)]
    pub event_id: Option<Uuid>,
    /// The kind of aggregate, 1 to 50 bytes (by default). An aggregate keeps the type of its
    /// first event. No control characters.
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$")
    )]
    pub aggregate_type: String,
    /// 1 to 100 bytes (by default), no control characters.
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$")
    )]
    pub event_type: String,
    /// The schema version of `event_data`, 1 to 2^31−1; 1 when absent.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 2147483647))]
    pub event_version: Option<i64>,
    /// The fact itself: a JSON object. With `metadata`, at most 1 MiB (by default). Strict
    /// JSON (I-JSON): no escaped lone surrogate, no number beyond a double's range, no name
    /// twice in one object; anything else is 400.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub event_data: Box<RawValue>,
    /// Who caused the event, at most 255 bytes, no control characters.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"))]
    pub created_by: Option<String>,
    /// When the fact happened; the commit time when absent.
    #[serde(default)]
    pub created_at: Option<Timestamp>,
    /// A JSON object, strict as `event_data`. Its `correlation_id` and `causation_id` (strings
    /// of at most 255 bytes, no control characters) are indexed.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::openapi::EventMetadata>))]
    pub metadata: Option<Box<RawValue>>,
}

impl NewEvent {
    /// An event with the required fields; `event_data` must be a JSON object.
    pub fn new(aggregate_type: &str, event_type: &str, event_data: serde_json::Value) -> NewEvent {
        NewEvent {
            event_id: None,
            aggregate_type: aggregate_type.to_owned(),
            event_type: event_type.to_owned(),
            event_version: None,
            event_data: raw_json(&event_data),
            created_by: None,
            created_at: None,
            metadata: None,
        }
    }

    pub fn with_id(mut self, event_id: Uuid) -> NewEvent {
        self.event_id = Some(event_id);
        self
    }

    pub fn with_metadata(mut self, metadata: serde_json::Value) -> NewEvent {
        self.metadata = Some(raw_json(&metadata));
        self
    }

    pub fn with_created_by(mut self, created_by: &str) -> NewEvent {
        self.created_by = Some(created_by.to_owned());
        self
    }

    pub fn with_created_at(mut self, created_at: Timestamp) -> NewEvent {
        self.created_at = Some(created_at);
        self
    }

    pub fn with_event_version(mut self, event_version: i64) -> NewEvent {
        self.event_version = Some(event_version);
        self
    }
}

fn raw_json(value: &serde_json::Value) -> Box<RawValue> {
    // A Value always serialises to valid JSON.
    serde_json::value::to_raw_value(value).unwrap_or_else(|_| empty_object())
}

fn empty_object() -> Box<RawValue> {
    RawValue::from_string("{}".to_owned()).unwrap_or_else(|_| unreachable!("{{}} is valid JSON"))
}

/// Events to append to one aggregate.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AggregateAppend {
    /// 1 to 255 bytes (by default), no control characters.
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$")
    )]
    pub aggregate_id: String,
    #[serde(default)]
    pub expected_version: ExpectedVersion,
    /// At least one event.
    #[cfg_attr(feature = "openapi", schema(min_items = 1))]
    pub events: Vec<NewEvent>,
}

/// "No event matching `filter` exists after `after_position`", checked inside the commit.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Condition {
    pub filter: EventFilter,
    /// Only events after this position count (0, the default: every event).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(maximum = 9223372036854775807_u64))]
    pub after_position: u64,
}

/// One atomic write: every append and the condition hold and all events are written, or
/// nothing is.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Commit {
    /// At least one; an aggregate at most once. The events take consecutive positions in
    /// this order.
    #[cfg_attr(feature = "openapi", schema(min_items = 1))]
    pub appends: Vec<AggregateAppend>,
    #[serde(default)]
    pub condition: Option<Condition>,
}

impl Commit {
    /// A commit of events to one aggregate.
    pub fn single(aggregate_id: &str, expected_version: ExpectedVersion, events: Vec<NewEvent>) -> Commit {
        Commit {
            appends: vec![AggregateAppend {
                aggregate_id: aggregate_id.to_owned(),
                expected_version,
                events,
            }],
            condition: None,
        }
    }

    /// Validates everything that needs no store, and puts the events in their stored form.
    pub fn prepare(self, limits: &Limits) -> Result<PreparedCommit, StoreError> {
        if self.appends.is_empty() {
            return Err(StoreError::invalid("appends must not be empty"));
        }
        let total: usize = self.appends.iter().map(|a| a.events.len()).sum();
        if total > limits.events_per_request_max {
            return Err(StoreError::too_large(format!(
                "a request may hold at most {} events, this one holds {total}",
                limits.events_per_request_max
            )));
        }
        let mut aggregates = HashSet::with_capacity(self.appends.len());
        let mut ids = HashSet::with_capacity(total);
        let mut bytes = 0usize;
        let mut appends = Vec::with_capacity(self.appends.len());
        for append in self.appends {
            validate_aggregate_id(&append.aggregate_id, limits)?;
            if let ExpectedVersion::Exact(version) = append.expected_version {
                crate::query::validate_position("expected_version", version)?;
            }
            if !aggregates.insert(append.aggregate_id.clone()) {
                return Err(StoreError::invalid(format!(
                    "aggregate '{}' appears more than once in appends",
                    append.aggregate_id
                )));
            }
            if append.events.is_empty() {
                return Err(StoreError::invalid(format!(
                    "events for aggregate '{}' must not be empty",
                    append.aggregate_id
                )));
            }
            let mut events = Vec::with_capacity(append.events.len());
            for (index, event) in append.events.into_iter().enumerate() {
                let prepared = PreparedEvent::new(event, index, limits)?;
                if prepared.client_event_id && !ids.insert(prepared.event_id) {
                    return Err(StoreError::invalid(format!(
                        "event_id {} appears more than once in the request",
                        prepared.event_id
                    )));
                }
                bytes += prepared.payload_bytes();
                if bytes > limits.request_bytes_max {
                    return Err(StoreError::too_large(format!(
                        "a request may hold at most {} bytes of events",
                        limits.request_bytes_max
                    )));
                }
                events.push(prepared);
            }
            appends.push(PreparedAppend {
                aggregate_id: append.aggregate_id,
                expected_version: append.expected_version,
                events,
            });
        }
        if let Some(condition) = &self.condition {
            condition.filter.validate(limits)?;
            crate::query::validate_position("condition.after_position", condition.after_position)?;
        }
        Ok(PreparedCommit {
            appends,
            condition: self.condition,
            event_count: total,
        })
    }
}

/// Checks an aggregate id: 1 to the limit in bytes, no control characters.
pub fn validate_aggregate_id(aggregate_id: &str, limits: &Limits) -> Result<(), StoreError> {
    validate_identifier("aggregate_id", aggregate_id, limits.aggregate_id_bytes_max)
}

/// Checks an identifier: 1 to `max` bytes, no control characters.
pub fn validate_identifier(field: &str, value: &str, max: usize) -> Result<(), StoreError> {
    match identifier_problem(value, max) {
        None => Ok(()),
        Some(problem) => Err(StoreError::invalid(format!("{field} {problem}"))),
    }
}

/// What is wrong with an identifier, if anything; the caller names the field (the name is
/// formatted only on failure, as this runs for every event).
fn identifier_problem(value: &str, max: usize) -> Option<String> {
    if value.is_empty() {
        return Some("must not be empty".to_owned());
    }
    text_problem(value, max)
}

/// What is wrong with a short text field kept beside the payload (`created_by`,
/// `correlation_id`, `causation_id`, and identifiers), if anything: more than `max` bytes, or a
/// control character, which would break the lines of logs, headers and CSV exports that show it.
fn text_problem(value: &str, max: usize) -> Option<String> {
    if value.len() > max {
        return Some(format!("may be at most {max} bytes, got {}", value.len()));
    }
    // Printable ASCII (the common case) has no control character; only otherwise look at chars.
    let printable_ascii = !value
        .as_bytes()
        .chunks(64)
        .any(|c| c.iter().fold(false, |bad, &b| bad | !(0x20..0x7f).contains(&b)));
    if !printable_ascii && value.chars().any(char::is_control) {
        return Some("must not contain control characters".to_owned());
    }
    None
}

/// A validated commit, ready for a backend.
#[derive(Debug, Clone)]
pub struct PreparedCommit {
    pub appends: Vec<PreparedAppend>,
    pub condition: Option<Condition>,
    pub event_count: usize,
}

impl PreparedCommit {
    /// The idempotency rule, given what the store holds for each event of the commit (in
    /// commit order: the stored event with the same client-chosen id, or `None`).
    ///
    /// `Ok(None)`: no id is stored, the commit goes on. `Ok(Some(outcome))`: a full retry; the
    /// outcome repeats the stored positions with `created == false`. `Err(DuplicateEventId)`:
    /// any other overlap, naming the first stored id met in commit order.
    pub fn replayed_outcome(&self, stored: Vec<Option<Event>>) -> Result<Option<CommitOutcome>, StoreError> {
        let Some(first_stored) = stored.iter().flatten().next().map(Event::event_id) else {
            return Ok(None);
        };
        let duplicate = |reason: &str| StoreError::DuplicateEventId {
            event_id: first_stored,
            reason: reason.to_owned(),
        };
        if stored.len() != self.event_count || stored.iter().any(Option::is_none) {
            return Err(duplicate("the request mixes new events with stored ones"));
        }
        let mut stored = stored.into_iter().flatten();
        let mut appends = Vec::with_capacity(self.appends.len());
        let mut last_position = 0;
        for append in &self.appends {
            let mut events = Vec::with_capacity(append.events.len());
            let mut previous: Option<u64> = None;
            for event in &append.events {
                let Some(stored) = stored.next() else {
                    return Err(duplicate("the request mixes new events with stored ones"));
                };
                if stored.aggregate_id() != append.aggregate_id {
                    return Err(duplicate("it is stored in another aggregate"));
                }
                if previous.is_some_and(|v| v + 1 != stored.version()) {
                    return Err(duplicate(
                        "the stored events are not at consecutive versions in this order",
                    ));
                }
                if !event.same_content_as(&stored) {
                    return Err(duplicate("the stored event has different content"));
                }
                previous = Some(stored.version());
                last_position = stored.position();
                events.push(AppendedEvent {
                    event_id: stored.event_id(),
                    version: stored.version(),
                    position: stored.position(),
                    recorded_at: stored.recorded_at(),
                });
            }
            appends.push(AppendedAggregate {
                aggregate_id: append.aggregate_id.clone(),
                version: previous.unwrap_or(0),
                events,
            });
        }
        Ok(Some(CommitOutcome {
            created: false,
            position: last_position,
            appends,
        }))
    }
}

/// A validated append to one aggregate.
#[derive(Debug, Clone)]
pub struct PreparedAppend {
    pub aggregate_id: String,
    pub expected_version: ExpectedVersion,
    pub events: Vec<PreparedEvent>,
}

/// A validated event: compact JSON, limits checked, its id settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedEvent {
    pub event_id: Uuid,
    /// Whether the client chose the id (then it is an idempotency key that must be checked).
    pub client_event_id: bool,
    pub aggregate_type: String,
    pub event_type: String,
    pub event_version: u32,
    pub event_data: String,
    pub created_by: Option<String>,
    pub created_at: Option<Timestamp>,
    pub metadata: Option<String>,
    pub correlation_id: Option<String>,
    pub causation_id: Option<String>,
}

#[derive(Deserialize)]
struct LinkIds<'a> {
    #[serde(default, borrow)]
    correlation_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    causation_id: Option<Cow<'a, str>>,
}

impl PreparedEvent {
    fn new(event: NewEvent, index: usize, limits: &Limits) -> Result<PreparedEvent, StoreError> {
        let at = |field: &str| format!("events[{index}].{field}");
        for (field, value, max) in [
            (
                "aggregate_type",
                &event.aggregate_type,
                limits.aggregate_type_bytes_max,
            ),
            ("event_type", &event.event_type, limits.event_type_bytes_max),
        ] {
            if let Some(problem) = identifier_problem(value, max) {
                return Err(StoreError::invalid(format!("{} {problem}", at(field))));
            }
        }
        let event_version = match event.event_version {
            None => 1,
            Some(v) if (1..=i64::from(i32::MAX)).contains(&v) => v as u32,
            Some(v) => {
                return Err(StoreError::invalid(format!(
                    "{} must be between 1 and 2147483647, got {v}",
                    at("event_version")
                )));
            }
        };
        if let Some(problem) = event
            .created_by
            .as_deref()
            .and_then(|by| text_problem(by, limits.created_by_bytes_max))
        {
            return Err(StoreError::invalid(format!("{} {problem}", at("created_by"))));
        }
        let event_data = stored_object(&at("event_data"), event.event_data)?;
        let metadata = match event.metadata {
            None => None,
            Some(raw) if raw.get().trim() == "null" => None,
            Some(raw) => Some(stored_object(&at("metadata"), raw)?),
        };
        let payload = event_data.len() + metadata.as_ref().map_or(0, String::len);
        if payload > limits.event_payload_bytes_max {
            return Err(StoreError::too_large(format!(
                "{}: event_data and metadata may hold at most {} bytes together, got {payload}",
                at("event_data"),
                limits.event_payload_bytes_max
            )));
        }
        let (correlation_id, causation_id) = match &metadata {
            None => (None, None),
            Some(meta) => {
                let links: LinkIds<'_> = serde_json::from_str(meta).map_err(|e| {
                    StoreError::invalid(format!(
                        "{}: correlation_id and causation_id must be strings ({e})",
                        at("metadata")
                    ))
                })?;
                let check = |name: &str, value: Option<Cow<'_, str>>| -> Result<Option<String>, StoreError> {
                    match value {
                        None => Ok(None),
                        Some(v) => match text_problem(&v, limits.link_id_bytes_max) {
                            Some(problem) => Err(StoreError::invalid(format!(
                                "{} {problem}",
                                at(&format!("metadata.{name}"))
                            ))),
                            None => Ok(Some(v.into_owned())),
                        },
                    }
                };
                (
                    check("correlation_id", links.correlation_id)?,
                    check("causation_id", links.causation_id)?,
                )
            }
        };
        let client_event_id = event.event_id.is_some();
        Ok(PreparedEvent {
            event_id: event.event_id.unwrap_or_else(Uuid::now_v7),
            client_event_id,
            aggregate_type: event.aggregate_type,
            event_type: event.event_type,
            event_version,
            event_data,
            created_by: event.created_by,
            created_at: event.created_at,
            metadata,
            correlation_id,
            causation_id,
        })
    }

    /// Bytes of `event_data` and `metadata`.
    pub fn payload_bytes(&self) -> usize {
        self.event_data.len() + self.metadata.as_ref().map_or(0, String::len)
    }

    /// The stored fields of this event once committed at `position` and `version` at
    /// `recorded_at` (which is also `created_at` when the client gave none).
    pub fn fields<'a>(
        &'a self,
        aggregate_id: &'a str,
        position: u64,
        version: u64,
        recorded_at: Timestamp,
    ) -> EventFields<'a> {
        EventFields {
            position,
            version,
            event_id: self.event_id,
            created_at: self.created_at.unwrap_or(recorded_at),
            recorded_at,
            event_version: self.event_version,
            aggregate_id,
            aggregate_type: &self.aggregate_type,
            event_type: &self.event_type,
            created_by: self.created_by.as_deref(),
            correlation_id: self.correlation_id.as_deref(),
            causation_id: self.causation_id.as_deref(),
            event_data: &self.event_data,
            metadata: self.metadata.as_deref(),
        }
    }

    /// Whether a stored event carries the content this client sent: the rule for an
    /// idempotent retry. Only fields the client sent are compared; JSON is compared by value.
    pub fn same_content_as(&self, stored: &crate::event::Event) -> bool {
        if stored.event_id() != self.event_id
            || stored.aggregate_type() != self.aggregate_type
            || stored.event_type() != self.event_type
            || stored.event_version() != self.event_version
            || stored.created_by() != self.created_by.as_deref()
        {
            return false;
        }
        if self
            .created_at
            .is_some_and(|created_at| stored.created_at() != created_at)
        {
            return false;
        }
        json_equal(stored.event_data(), &self.event_data)
            && match (stored.metadata(), self.metadata.as_deref()) {
                (None, None) => true,
                (Some(a), Some(b)) => json_equal(a, b),
                _ => false,
            }
    }
}

fn json_equal(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    match (
        serde_json::from_str::<serde_json::Value>(a),
        serde_json::from_str::<serde_json::Value>(b),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// What the store answers to a commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CommitOutcome {
    /// False when the commit was an idempotent retry: nothing was written and the original
    /// positions are returned (HTTP 200 instead of 201).
    #[serde(skip)]
    pub created: bool,
    /// The position of the last event of the commit.
    pub position: u64,
    pub appends: Vec<AppendedAggregate>,
}

/// The result of one aggregate's part of a commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AppendedAggregate {
    pub aggregate_id: String,
    /// The aggregate's version after its last event of this commit.
    pub version: u64,
    pub events: Vec<AppendedEvent>,
}

/// Where one appended event landed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AppendedEvent {
    pub event_id: Uuid,
    pub version: u64,
    pub position: u64,
    pub recorded_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn prepare_one(event: serde_json::Value) -> Result<PreparedCommit, StoreError> {
        let event: NewEvent =
            serde_json::from_value(event).map_err(|e| StoreError::invalid(e.to_string()))?;
        Commit::single("account:1", ExpectedVersion::Any, vec![event]).prepare(&Limits::default())
    }

    #[test]
    fn expected_version_reads_every_form() {
        let parse = |v: serde_json::Value| serde_json::from_value::<ExpectedVersion>(v);
        assert_eq!(parse(json!(3)).ok(), Some(ExpectedVersion::Exact(3)));
        assert_eq!(parse(json!("any")).ok(), Some(ExpectedVersion::Any));
        assert_eq!(parse(json!("exists")).ok(), Some(ExpectedVersion::Exists));
        assert!(parse(json!(-1)).is_err());
        assert!(parse(json!("latest")).is_err());
        assert!(parse(json!(1.5)).is_err());
    }

    #[test]
    fn event_data_must_be_an_object_and_is_compacted() {
        let ok = prepare_one(json!({"aggregate_type": "A", "event_type": "E", "event_data": {"a": [1, 2]}}))
            .expect("valid");
        assert_eq!(ok.appends[0].events[0].event_data, r#"{"a":[1,2]}"#);
        let err = prepare_one(json!({"aggregate_type": "A", "event_type": "E", "event_data": [1]}));
        assert!(matches!(err, Err(StoreError::InvalidRequest(m)) if m.contains("event_data")));
    }

    #[test]
    fn limits_are_enforced_with_the_right_error() {
        let long = "x".repeat(51);
        let err = prepare_one(json!({"aggregate_type": long, "event_type": "E", "event_data": {}}));
        assert!(matches!(err, Err(StoreError::InvalidRequest(m)) if m.contains("aggregate_type")));
        let big = "x".repeat(1 << 20);
        let err = prepare_one(json!({"aggregate_type": "A", "event_type": "E", "event_data": {"b": big}}));
        assert!(matches!(err, Err(StoreError::PayloadTooLarge(_))));
        let err = prepare_one(
            json!({"aggregate_type": "A", "event_type": "E", "event_data": {}, "event_version": 0}),
        );
        assert!(matches!(err, Err(StoreError::InvalidRequest(m)) if m.contains("event_version")));
        let err = prepare_one(
            json!({"aggregate_type": "A", "event_type": "E", "event_data": {}, "metadata": {"correlation_id": 5}}),
        );
        assert!(matches!(err, Err(StoreError::InvalidRequest(m)) if m.contains("correlation_id")));
    }

    #[test]
    fn duplicate_ids_in_one_request_are_refused() {
        let id = Uuid::now_v7();
        let event = NewEvent::new("A", "E", json!({})).with_id(id);
        let err =
            Commit::single("a", ExpectedVersion::Any, vec![event.clone(), event]).prepare(&Limits::default());
        assert!(matches!(err, Err(StoreError::InvalidRequest(m)) if m.contains("more than once")));
    }

    /// An event as a client sends it, as text: `serde_json::Value` cannot hold what a hostile
    /// client can write.
    fn prepare_text(event: &str) -> Result<PreparedCommit, StoreError> {
        let event: NewEvent = serde_json::from_str(event).map_err(|e| StoreError::invalid(e.to_string()))?;
        Commit::single("account:1", ExpectedVersion::Any, vec![event]).prepare(&Limits::default())
    }

    #[test]
    fn payloads_that_readers_cannot_parse_back_are_refused_naming_the_field() {
        let event = |data: &str, metadata: &str| {
            format!(
                r#"{{"aggregate_type": "A", "event_type": "E", "event_data": {data}, "metadata": {metadata}}}"#
            )
        };
        for (text, field) in [
            (event(r#"{"s": "\ud800"}"#, "null"), "events[0].event_data"),
            (event(r#"{"n": 1e400}"#, "null"), "events[0].event_data"),
            (event(r#"{"a": 1, "a": 2}"#, "null"), "events[0].event_data"),
            (event("{}", r#"{"s": "\udfff"}"#), "events[0].metadata"),
            (event("{}", r#"{"n": [-1e309]}"#), "events[0].metadata"),
        ] {
            match prepare_text(&text) {
                Err(StoreError::InvalidRequest(message)) => {
                    assert!(message.starts_with(field), "{text}: {message}");
                }
                other => panic!("{text} was not refused: {other:?}"),
            }
        }
        let fine = prepare_text(&event(
            r#"{"s": "\ud83d\ude00", "n": 1e300}"#,
            r#"{"k": "\u00e9"}"#,
        ));
        assert!(fine.is_ok(), "{fine:?}");
    }

    #[test]
    fn control_characters_are_refused_in_every_text_field() {
        for (event, field) in [
            (
                json!({"aggregate_type": "A", "event_type": "E", "event_data": {}, "created_by": "a\u{0}b"}),
                "created_by",
            ),
            (
                json!({"aggregate_type": "A", "event_type": "E", "event_data": {}, "metadata": {"correlation_id": "c\n1"}}),
                "metadata.correlation_id",
            ),
            (
                json!({"aggregate_type": "A", "event_type": "E", "event_data": {}, "metadata": {"causation_id": "\u{7f}"}}),
                "metadata.causation_id",
            ),
        ] {
            match prepare_one(event) {
                Err(StoreError::InvalidRequest(message)) => {
                    assert!(
                        message.contains(field) && message.contains("control"),
                        "{message}"
                    );
                }
                other => panic!("{field}: {other:?}"),
            }
        }
        let fine = prepare_one(json!({"aggregate_type": "A", "event_type": "E", "event_data": {},
            "created_by": "Zoë", "metadata": {"correlation_id": "c-ü"}}));
        assert!(fine.is_ok(), "{fine:?}");
    }

    #[test]
    fn links_are_extracted_from_metadata() {
        let ok = prepare_one(json!({"aggregate_type": "A", "event_type": "E", "event_data": {},
            "metadata": {"correlation_id": "c-1", "causation_id": "k-1", "ip": "10.0.0.1"}}))
        .expect("valid");
        let event = &ok.appends[0].events[0];
        assert_eq!(event.correlation_id.as_deref(), Some("c-1"));
        assert_eq!(event.causation_id.as_deref(), Some("k-1"));
    }
}
