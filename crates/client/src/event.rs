//! The event as the API shows it ([`Event`]), as a client sends it ([`NewEvent`]), and the
//! version an append expects ([`ExpectedVersion`]).

use std::fmt;
use std::str::FromStr;

use serde::de::{self, DeserializeOwned, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::json::RawJson;

/// One stored event, with every field of the API.
///
/// Serialising an `Event` gives the server's JSON for it, field for field and byte for byte
/// (same field order, times with microseconds, `event_data` and `metadata` as stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Unique in the whole store; the idempotency key of the append that wrote it.
    pub event_id: Uuid,
    /// The global order: 1, 2, 3, … with no gaps, in commit order.
    pub position: u64,
    pub aggregate_id: String,
    pub aggregate_type: String,
    /// The version of the aggregate this event brought it to: 1, 2, 3, … with no gaps.
    pub version: u64,
    pub event_type: String,
    /// The schema version of `event_data` (not the aggregate version).
    pub event_version: u32,
    /// A JSON object.
    pub event_data: RawJson,
    /// When the fact happened.
    #[serde(with = "crate::time::required")]
    pub created_at: OffsetDateTime,
    /// When the store committed it; never decreasing along `position`.
    #[serde(with = "crate::time::required")]
    pub recorded_at: OffsetDateTime,
    pub created_by: Option<String>,
    /// A JSON object, when the event has metadata.
    pub metadata: Option<RawJson>,
}

impl Event {
    /// `event_data` deserialised into `T`.
    pub fn data<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        self.event_data.parse()
    }

    /// `metadata.correlation_id`, when present and a string.
    pub fn correlation_id(&self) -> Option<String> {
        self.metadata_str("correlation_id")
    }

    /// `metadata.causation_id`, when present and a string.
    pub fn causation_id(&self) -> Option<String> {
        self.metadata_str("causation_id")
    }

    fn metadata_str(&self, key: &str) -> Option<String> {
        let value = self.metadata.as_ref()?.to_value();
        value.get(key)?.as_str().map(str::to_owned)
    }

    /// The event as a client would send it to write the same fact again elsewhere (an import):
    /// `event_id`, `aggregate_type`, `event_type`, `event_version`, `event_data`, `created_at`,
    /// `created_by` and `metadata` are kept; the store assigns `position`, `version` and
    /// `recorded_at`.
    pub fn to_new_event(&self) -> NewEvent {
        NewEvent {
            event_id: Some(self.event_id),
            aggregate_type: self.aggregate_type.clone(),
            event_type: self.event_type.clone(),
            event_version: Some(self.event_version),
            event_data: self.event_data.clone(),
            created_by: self.created_by.clone(),
            created_at: Some(self.created_at),
            metadata: self.metadata.clone(),
        }
    }
}

/// One event as a client sends it. Optional fields left `None` are not sent and take the
/// server's defaults.
///
/// ```
/// use factstore_client::NewEvent;
/// use serde_json::json;
///
/// let event = NewEvent::new("Account", "MoneyDeposited", json!({"amount": 500}))
///     .with_metadata(json!({"correlation_id": "corr-123"}))
///     .with_created_by("user:123");
/// assert_eq!(event.event_data.as_str(), r#"{"amount":500}"#);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewEvent {
    /// The idempotency key. [`Client::append`](crate::Client::append) and
    /// [`Client::commit`](crate::Client::commit) assign a UUIDv7 to every event without one
    /// before the first attempt, so that a retry is recognised by the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<Uuid>,
    pub aggregate_type: String,
    pub event_type: String,
    /// The schema version of `event_data`, 1 when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_version: Option<u32>,
    /// Must be a JSON object.
    pub event_data: RawJson,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// When the fact happened; the commit time when not given.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::time::optional"
    )]
    pub created_at: Option<OffsetDateTime>,
    /// A JSON object; `correlation_id` and `causation_id` in it are indexed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<RawJson>,
}

impl NewEvent {
    /// An event of `event_type` for an aggregate of `aggregate_type`, with `event_data`
    /// (a `serde_json::Value`, or a [`RawJson`]).
    pub fn new(
        aggregate_type: impl Into<String>,
        event_type: impl Into<String>,
        event_data: impl Into<RawJson>,
    ) -> NewEvent {
        NewEvent {
            event_id: None,
            aggregate_type: aggregate_type.into(),
            event_type: event_type.into(),
            event_version: None,
            event_data: event_data.into(),
            created_by: None,
            created_at: None,
            metadata: None,
        }
    }

    /// An event whose data is any serialisable value (which must serialise to an object).
    pub fn from_data<T: Serialize + ?Sized>(
        aggregate_type: impl Into<String>,
        event_type: impl Into<String>,
        event_data: &T,
    ) -> Result<NewEvent, serde_json::Error> {
        Ok(NewEvent::new(
            aggregate_type,
            event_type,
            RawJson::from_serialize(event_data)?,
        ))
    }

    /// Sets the event id (the idempotency key).
    pub fn with_id(mut self, event_id: Uuid) -> NewEvent {
        self.event_id = Some(event_id);
        self
    }

    /// Sets the schema version of the data.
    pub fn with_event_version(mut self, event_version: u32) -> NewEvent {
        self.event_version = Some(event_version);
        self
    }

    /// Sets the metadata (a JSON object).
    pub fn with_metadata(mut self, metadata: impl Into<RawJson>) -> NewEvent {
        self.metadata = Some(metadata.into());
        self
    }

    /// Sets who caused the event.
    pub fn with_created_by(mut self, created_by: impl Into<String>) -> NewEvent {
        self.created_by = Some(created_by.into());
        self
    }

    /// Sets when the fact happened (imports, backfills).
    pub fn with_created_at(mut self, created_at: OffsetDateTime) -> NewEvent {
        self.created_at = Some(created_at);
        self
    }
}

/// The version an append expects its aggregate to be at.
///
/// On the wire: a number, `"any"` or `"exists"`. Parses from the same words
/// (`"3".parse()`, `"any".parse()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ExpectedVersion {
    /// No check (the default).
    #[default]
    Any,
    /// The aggregate must have at least one event.
    Exists,
    /// The aggregate must be at exactly this version; 0 means it must not exist yet.
    Exact(u64),
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

/// The error of parsing an [`ExpectedVersion`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an expected version is a number (0 or more), 'any' or 'exists', not '{0}'")]
pub struct ExpectedVersionParseError(String);

impl FromStr for ExpectedVersion {
    type Err = ExpectedVersionParseError;

    fn from_str(text: &str) -> Result<ExpectedVersion, ExpectedVersionParseError> {
        match text {
            "any" => Ok(ExpectedVersion::Any),
            "exists" => Ok(ExpectedVersion::Exists),
            digits if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => digits
                .parse()
                .map(ExpectedVersion::Exact)
                .map_err(|_| ExpectedVersionParseError(text.to_owned())),
            _ => Err(ExpectedVersionParseError(text.to_owned())),
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const SERVER_JSON: &str = r#"{"event_id":"0192f3c4-5e6a-7b8c-9d0e-1f2a3b4c5d6e","position":42,"aggregate_id":"account:ACC-001","aggregate_type":"Account","version":3,"event_type":"MoneyDeposited","event_version":2,"event_data":{"currency":"USD","amount":500},"created_at":"2024-01-15T10:00:00.000000Z","recorded_at":"2026-11-27T18:00:00.123456Z","created_by":"user:123","metadata":{"correlation_id":"corr-123"}}"#;

    #[test]
    fn an_event_serialises_back_to_the_servers_bytes() {
        let event: Event = serde_json::from_str(SERVER_JSON).unwrap();
        assert_eq!(event.position, 42);
        assert_eq!(event.correlation_id().as_deref(), Some("corr-123"));
        assert_eq!(serde_json::to_string(&event).unwrap(), SERVER_JSON);

        let bare = SERVER_JSON
            .replace(r#""user:123""#, "null")
            .replace(r#"{"correlation_id":"corr-123"}"#, "null");
        let event: Event = serde_json::from_str(&bare).unwrap();
        assert_eq!(
            (event.created_by.as_deref(), event.metadata.as_ref()),
            (None, None)
        );
        assert_eq!(serde_json::to_string(&event).unwrap(), bare);
    }

    #[test]
    fn a_new_event_sends_only_what_is_set() {
        let event = NewEvent::new("A", "E", serde_json::json!({"x": 1}));
        assert_eq!(
            serde_json::to_string(&event).unwrap(),
            r#"{"aggregate_type":"A","event_type":"E","event_data":{"x":1}}"#
        );
        let stored: Event = serde_json::from_str(SERVER_JSON).unwrap();
        let again = serde_json::to_value(stored.to_new_event()).unwrap();
        assert_eq!(again["created_at"], "2024-01-15T10:00:00.000000Z");
        assert_eq!(again["event_version"], 2);
        assert!(again.get("position").is_none() && again.get("recorded_at").is_none());
    }

    #[test]
    fn expected_versions_parse_and_serialise() {
        assert_eq!("7".parse::<ExpectedVersion>(), Ok(ExpectedVersion::Exact(7)));
        assert_eq!("any".parse::<ExpectedVersion>(), Ok(ExpectedVersion::Any));
        assert_eq!("exists".parse::<ExpectedVersion>(), Ok(ExpectedVersion::Exists));
        assert!("-1".parse::<ExpectedVersion>().is_err() && "+1".parse::<ExpectedVersion>().is_err());
        assert_eq!(serde_json::to_string(&ExpectedVersion::Exact(3)).unwrap(), "3");
        assert_eq!(
            serde_json::from_str::<ExpectedVersion>(r#""exists""#).unwrap(),
            ExpectedVersion::Exists
        );
    }
}
