//! What reads ask ([`EventFilter`], [`EventQuery`], [`AggregateQuery`]) and what they answer
//! ([`EventPage`], [`AggregatePage`], [`Head`], [`Health`]).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::event::Event;
use crate::time::TimeBound;

/// Which events a reader wants: every field that is set must match (AND); `event_types` ORs
/// inside. The default passes every event.
///
/// The same filter serves `GET /v1/events`, subscriptions and commit conditions (where it is
/// a JSON object, serialised here with only the fields that are set).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventFilter {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub event_types: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate_id_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
}

impl EventFilter {
    /// A filter that passes every event.
    pub fn new() -> EventFilter {
        EventFilter::default()
    }

    /// Adds an event type (events of any of the given types pass).
    pub fn event_type(mut self, event_type: impl Into<String>) -> EventFilter {
        self.event_types.push(event_type.into());
        self
    }

    pub fn aggregate_type(mut self, aggregate_type: impl Into<String>) -> EventFilter {
        self.aggregate_type = Some(aggregate_type.into());
        self
    }

    pub fn aggregate_id(mut self, aggregate_id: impl Into<String>) -> EventFilter {
        self.aggregate_id = Some(aggregate_id.into());
        self
    }

    pub fn aggregate_id_prefix(mut self, prefix: impl Into<String>) -> EventFilter {
        self.aggregate_id_prefix = Some(prefix.into());
        self
    }

    pub fn correlation_id(mut self, correlation_id: impl Into<String>) -> EventFilter {
        self.correlation_id = Some(correlation_id.into());
        self
    }

    pub fn causation_id(mut self, causation_id: impl Into<String>) -> EventFilter {
        self.causation_id = Some(causation_id.into());
        self
    }

    pub fn created_by(mut self, created_by: impl Into<String>) -> EventFilter {
        self.created_by = Some(created_by.into());
        self
    }

    /// The query parameters of this filter.
    pub(crate) fn push_params(&self, params: &mut Params) {
        if !self.event_types.is_empty() {
            params.push("event_type", self.event_types.join(","));
        }
        params.push_opt("aggregate_type", self.aggregate_type.as_deref());
        params.push_opt("aggregate_id", self.aggregate_id.as_deref());
        params.push_opt("aggregate_id_prefix", self.aggregate_id_prefix.as_deref());
        params.push_opt("correlation_id", self.correlation_id.as_deref());
        params.push_opt("causation_id", self.causation_id.as_deref());
        params.push_opt("created_by", self.created_by.as_deref());
    }
}

/// `GET /v1/events`: all events in position order, filtered.
///
/// ```
/// use factstore_client::{EventFilter, EventQuery};
///
/// let query = EventQuery::new()
///     .filter(EventFilter::new().event_type("MoneyDeposited").aggregate_id_prefix("account:"))
///     .after_position(1200)
///     .limit(500);
/// # let _ = query;
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventQuery {
    pub filter: EventFilter,
    /// Events after this position (0: from the start).
    pub after_position: u64,
    /// Up to this position, inclusive.
    pub to_position: Option<u64>,
    /// Events per page (server default 1000, at most 10000).
    pub limit: Option<u32>,
    /// On `created_at`, inclusive.
    pub from: Option<TimeBound>,
    /// On `created_at`, inclusive.
    pub to: Option<TimeBound>,
    /// On `recorded_at`: the store as it was then.
    pub as_of: Option<TimeBound>,
    /// The events exactly as stored, not upcast.
    pub raw: bool,
}

impl EventQuery {
    pub fn new() -> EventQuery {
        EventQuery::default()
    }

    pub fn filter(mut self, filter: EventFilter) -> EventQuery {
        self.filter = filter;
        self
    }

    pub fn after_position(mut self, position: u64) -> EventQuery {
        self.after_position = position;
        self
    }

    pub fn to_position(mut self, position: u64) -> EventQuery {
        self.to_position = Some(position);
        self
    }

    pub fn limit(mut self, limit: u32) -> EventQuery {
        self.limit = Some(limit);
        self
    }

    pub fn from(mut self, from: impl Into<TimeBound>) -> EventQuery {
        self.from = Some(from.into());
        self
    }

    pub fn to(mut self, to: impl Into<TimeBound>) -> EventQuery {
        self.to = Some(to.into());
        self
    }

    pub fn as_of(mut self, as_of: impl Into<TimeBound>) -> EventQuery {
        self.as_of = Some(as_of.into());
        self
    }

    pub fn raw(mut self, raw: bool) -> EventQuery {
        self.raw = raw;
        self
    }

    pub(crate) fn params(&self) -> Params {
        let mut params = Params::default();
        if self.after_position > 0 {
            params.push("after_position", self.after_position.to_string());
        }
        params.push_opt("to_position", self.to_position);
        params.push_opt("limit", self.limit);
        self.filter.push_params(&mut params);
        push_times(&mut params, &self.from, &self.to, &self.as_of);
        if self.raw {
            params.push("raw", "true".to_owned());
        }
        params
    }
}

/// The direction of an aggregate read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Direction {
    /// From version 1 up (the default).
    #[default]
    Forward,
    /// From the current version down.
    Backward,
}

impl Direction {
    /// `forward` or `backward`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Forward => "forward",
            Direction::Backward => "backward",
        }
    }
}

/// `GET /v1/aggregates/{aggregate_id}/events`: one aggregate's events by version.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AggregateQuery {
    /// The first version, in the direction of travel (forward: 1 by default; backward: the
    /// current version by default).
    pub from_version: Option<u64>,
    /// The last version, inclusive, in the direction of travel.
    pub to_version: Option<u64>,
    pub direction: Direction,
    /// Events per page (server default 1000, at most 10000).
    pub limit: Option<u32>,
    /// On `created_at`, inclusive.
    pub from: Option<TimeBound>,
    /// On `created_at`, inclusive ("replay up to this time").
    pub to: Option<TimeBound>,
    /// On `recorded_at`: the aggregate as the store knew it then.
    pub as_of: Option<TimeBound>,
    /// The events exactly as stored, not upcast.
    pub raw: bool,
}

impl AggregateQuery {
    pub fn new() -> AggregateQuery {
        AggregateQuery::default()
    }

    pub fn from_version(mut self, version: u64) -> AggregateQuery {
        self.from_version = Some(version);
        self
    }

    pub fn to_version(mut self, version: u64) -> AggregateQuery {
        self.to_version = Some(version);
        self
    }

    pub fn direction(mut self, direction: Direction) -> AggregateQuery {
        self.direction = direction;
        self
    }

    pub fn backward(self) -> AggregateQuery {
        self.direction(Direction::Backward)
    }

    pub fn limit(mut self, limit: u32) -> AggregateQuery {
        self.limit = Some(limit);
        self
    }

    pub fn from(mut self, from: impl Into<TimeBound>) -> AggregateQuery {
        self.from = Some(from.into());
        self
    }

    pub fn to(mut self, to: impl Into<TimeBound>) -> AggregateQuery {
        self.to = Some(to.into());
        self
    }

    pub fn as_of(mut self, as_of: impl Into<TimeBound>) -> AggregateQuery {
        self.as_of = Some(as_of.into());
        self
    }

    pub fn raw(mut self, raw: bool) -> AggregateQuery {
        self.raw = raw;
        self
    }

    pub(crate) fn params(&self) -> Params {
        let mut params = Params::default();
        params.push_opt("from_version", self.from_version);
        params.push_opt("to_version", self.to_version);
        if self.direction == Direction::Backward {
            params.push("direction", "backward".to_owned());
        }
        params.push_opt("limit", self.limit);
        push_times(&mut params, &self.from, &self.to, &self.as_of);
        if self.raw {
            params.push("raw", "true".to_owned());
        }
        params
    }
}

pub(crate) fn push_times(
    params: &mut Params,
    from: &Option<TimeBound>,
    to: &Option<TimeBound>,
    as_of: &Option<TimeBound>,
) {
    params.push_opt("from", from.as_ref().map(TimeBound::to_param));
    params.push_opt("to", to.as_ref().map(TimeBound::to_param));
    params.push_opt("as_of", as_of.as_ref().map(TimeBound::to_param));
}

/// Query parameters in order, encoded when the URL is built.
#[derive(Debug, Default)]
pub(crate) struct Params(pub(crate) Vec<(&'static str, String)>);

impl Params {
    pub(crate) fn push(&mut self, name: &'static str, value: String) {
        self.0.push((name, value));
    }

    pub(crate) fn push_opt<T: ToString>(&mut self, name: &'static str, value: Option<T>) {
        if let Some(value) = value {
            self.0.push((name, value.to_string()));
        }
    }
}

/// A page of `GET /v1/events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventPage {
    pub events: Vec<Event>,
    /// Where the next page starts (`after_position`); it moves past filtered-out events too.
    pub next_after_position: u64,
    /// The head when the read began.
    pub head_position: u64,
}

/// A page of `GET /v1/aggregates/{aggregate_id}/events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AggregatePage {
    pub aggregate_id: String,
    pub aggregate_type: String,
    /// The aggregate's current version (or as of `as_of`).
    pub version: u64,
    pub events: Vec<Event>,
    /// Where the next page starts in the same direction; `None` at the end.
    pub next_from_version: Option<u64>,
}

/// `GET /v1/head`: the last committed position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// 0 for an empty store.
    pub position: u64,
    /// When the last event was recorded; `None` for an empty store.
    #[serde(default, with = "crate::time::optional")]
    pub recorded_at: Option<OffsetDateTime>,
}

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `"ok"` when the server is up.
    pub status: String,
}
