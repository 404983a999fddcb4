//! [`Aggregate`]: a consistency boundary as two pure functions, and [`DomainEvent`]: how its
//! events are written to and read from the store.

use std::fmt::Debug;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::event::{Event, NewEvent};
use crate::json::RawJson;

/// An event that could not be written or read: names the event type and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CodecError {
    pub message: String,
}

impl CodecError {
    pub fn new(message: impl Into<String>) -> CodecError {
        CodecError {
            message: message.into(),
        }
    }
}

/// An aggregate: a state rebuilt from its events (`apply`), and the decision of a command on
/// that state (`handle`), which either refuses with a domain error or returns the new events.
///
/// Both are pure functions of their arguments: no I/O, no clock. That is what makes an
/// aggregate testable without a server ([`AggregateTest`](super::AggregateTest)) and what lets
/// the [`Repository`](super::Repository) run `handle` again after a version conflict.
pub trait Aggregate: Send + Sync + 'static {
    /// The `aggregate_type` of its events (and the `snapshot_type` of its snapshots).
    const AGGREGATE_TYPE: &'static str;
    /// The schema version of `State` in snapshots. Raise it when `State` changes shape: older
    /// snapshots are then ignored and the state is folded from the events.
    const SNAPSHOT_VERSION: u32 = 1;

    /// The state before the first event is `State::default()`.
    type State: Default + Clone + Debug + Serialize + DeserializeOwned + Send + Sync;
    type Command: Send;
    type Event: DomainEvent;
    /// Why a command is refused (a business rule, not a technical failure).
    type Error: std::error::Error + Send + Sync + 'static;

    /// Applies one event to the state. Events are facts: `apply` cannot refuse them.
    fn apply(state: &mut Self::State, event: &Self::Event);

    /// Decides a command: the events it causes (none is fine), or why it is refused.
    fn handle(state: &Self::State, command: Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// The state after `events`, from the default state.
    fn fold<'a>(events: impl IntoIterator<Item = &'a Self::Event>) -> Self::State
    where
        Self::Event: 'a,
    {
        let mut state = Self::State::default();
        for event in events {
            Self::apply(&mut state, event);
        }
        state
    }
}

/// An event of the domain, and its form in the store: `event_type`, `event_version` and
/// `event_data` (a JSON object).
///
/// The default methods fit an enum with serde's adjacent tagging, one variant per event type
/// with its fields as `event_data`:
///
/// ```
/// use factstore_client::sdk::DomainEvent;
/// use serde::{Deserialize, Serialize};
/// use serde_json::json;
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// #[serde(tag = "event_type", content = "event_data")]
/// enum OrderEvent {
///     OrderCreated { items: Vec<String> },
///     OrderShipped { tracking: String },
///     OrderDelivered,
/// }
/// impl DomainEvent for OrderEvent {}
///
/// let (event_type, data) = OrderEvent::OrderShipped { tracking: "ABC123".into() }.encode().unwrap();
/// assert_eq!((event_type.as_str(), data), ("OrderShipped", json!({"tracking": "ABC123"})));
/// assert_eq!(OrderEvent::decode("OrderDelivered", 1, json!({})).unwrap(), OrderEvent::OrderDelivered);
/// assert!(OrderEvent::decode("OrderLost", 1, json!({})).is_err());
/// ```
///
/// Override them for any other shape. `decode` receives the data already upcast
/// ([`Upcasters`](super::Upcasters)) to the newest version the application knows.
pub trait DomainEvent:
    Serialize + DeserializeOwned + Clone + Debug + PartialEq + Send + Sync + 'static
{
    /// The schema version this event is written with (default 1).
    fn event_version(&self) -> u32 {
        1
    }

    /// The event type and the data (a JSON object).
    fn encode(&self) -> Result<(String, Value), CodecError> {
        let value = serde_json::to_value(self)
            .map_err(|e| CodecError::new(format!("cannot serialise {self:?}: {e}")))?;
        let Value::Object(mut tagged) = value else {
            return Err(CodecError::new(format!(
                "{self:?} does not serialise to {{\"event_type\", \"event_data\"}}: use #[serde(tag = \"event_type\", content = \"event_data\")] or override DomainEvent::encode"
            )));
        };
        let event_type = match tagged.remove("event_type") {
            Some(Value::String(event_type)) => event_type,
            _ => {
                return Err(CodecError::new(format!(
                    "{self:?} serialises without a string \"event_type\": use #[serde(tag = \"event_type\", content = \"event_data\")] or override DomainEvent::encode"
                )));
            }
        };
        let data = match tagged.remove("event_data") {
            None => Value::Object(Map::new()),
            Some(data @ Value::Object(_)) => data,
            Some(other) => {
                return Err(CodecError::new(format!(
                    "the event_data of {event_type} must be a JSON object, not {other}"
                )));
            }
        };
        Ok((event_type, data))
    }

    /// The event of `event_type` with `data` (already upcast), written at `event_version`.
    fn decode(event_type: &str, event_version: u32, data: Value) -> Result<Self, CodecError> {
        let tagged = serde_json::json!({"event_type": event_type, "event_data": data});
        serde_json::from_value(tagged).or_else(|first| {
            // A variant without fields (serde's unit variant) refuses `{}` as its content.
            let empty = data_is_empty(&data);
            let bare = serde_json::json!({"event_type": event_type});
            match empty.then(|| serde_json::from_value(bare)) {
                Some(Ok(event)) => Ok(event),
                _ => Err(CodecError::new(format!(
                    "cannot read a {event_type} event (event_version {event_version}): {first}"
                ))),
            }
        })
    }
}

fn data_is_empty(data: &Value) -> bool {
    data.as_object().is_some_and(Map::is_empty)
}

/// The event written for `event` of aggregate `A`.
pub(crate) fn to_new_event<E: DomainEvent>(aggregate_type: &str, event: &E) -> Result<NewEvent, CodecError> {
    let (event_type, data) = event.encode()?;
    let mut new = NewEvent::new(aggregate_type, event_type, RawJson::from_value(&data));
    let version = event.event_version();
    if version != 1 {
        new = new.with_event_version(version);
    }
    Ok(new)
}

/// A stored event's data, upcast, as the domain event.
pub(crate) fn from_stored<E: DomainEvent>(
    upcasters: &super::Upcasters,
    event: &Event,
) -> Result<E, CodecError> {
    let data: Value = event.data().map_err(|e| {
        CodecError::new(format!(
            "event {} ({}) of {} has data that is not JSON: {e}",
            event.event_id, event.event_type, event.aggregate_id
        ))
    })?;
    let (version, data) = upcasters.upcast(&event.event_type, event.event_version, data)?;
    E::decode(&event.event_type, version, data).map_err(|e| {
        CodecError::new(format!(
            "event {} (version {} of {}): {}",
            event.event_id, event.version, event.aggregate_id, e.message
        ))
    })
}
