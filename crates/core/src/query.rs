//! Reads: the filter shared by queries, subscriptions, projections and conditions, and the
//! queries and pages of the read API.

use serde::{Deserialize, Serialize};

use crate::append::validate_identifier;
use crate::error::StoreError;
use crate::event::Event;
use crate::limits::Limits;
use crate::time::Timestamp;

/// The largest position or version a request may name: PostgreSQL keeps positions and
/// versions as `bigint`, so no store holds one beyond 2^63−1, and both backends refuse a larger
/// bound in a request alike (400 naming the field) rather than each reading it its own way.
pub const POSITION_MAX: u64 = i64::MAX as u64;

/// Checks that a position or version named by a request is at most [`POSITION_MAX`].
pub fn validate_position(field: &str, value: u64) -> Result<(), StoreError> {
    if value > POSITION_MAX {
        return Err(StoreError::invalid(format!(
            "{field} may be at most {POSITION_MAX}, got {value}"
        )));
    }
    Ok(())
}

/// Which events a reader wants. Every field is optional and all of them AND; `event_types`
/// ORs inside. As a JSON body an unknown key is refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EventFilter {
    /// Any of these event types; an empty list passes every type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<crate::openapi::Identifier>))]
    pub event_types: Vec<String>,
    /// Exactly this aggregate type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::openapi::Identifier>))]
    pub aggregate_type: Option<String>,
    /// Exactly this aggregate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::openapi::Identifier>))]
    pub aggregate_id: Option<String>,
    /// Aggregates whose id starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::openapi::Identifier>))]
    pub aggregate_id_prefix: Option<String>,
    /// Events whose `metadata.correlation_id` is this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// Events whose `metadata.causation_id` is this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    /// Events whose `created_by` is this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
}

impl EventFilter {
    /// Whether the filter passes every event.
    pub fn is_empty(&self) -> bool {
        *self == EventFilter::default()
    }

    /// Whether `event` passes the filter.
    pub fn matches(&self, event: &Event) -> bool {
        (self.event_types.is_empty() || self.event_types.iter().any(|t| t == event.event_type()))
            && self
                .aggregate_type
                .as_deref()
                .is_none_or(|t| t == event.aggregate_type())
            && self
                .aggregate_id
                .as_deref()
                .is_none_or(|id| id == event.aggregate_id())
            && self
                .aggregate_id_prefix
                .as_deref()
                .is_none_or(|prefix| event.aggregate_id().starts_with(prefix))
            && self
                .correlation_id
                .as_deref()
                .is_none_or(|c| Some(c) == event.correlation_id())
            && self
                .causation_id
                .as_deref()
                .is_none_or(|c| Some(c) == event.causation_id())
            && self
                .created_by
                .as_deref()
                .is_none_or(|c| Some(c) == event.created_by())
    }

    /// Checks the identifiers of the filter against the limits.
    pub fn validate(&self, limits: &Limits) -> Result<(), StoreError> {
        for event_type in &self.event_types {
            validate_identifier("event_type", event_type, limits.event_type_bytes_max)?;
        }
        if let Some(t) = &self.aggregate_type {
            validate_identifier("aggregate_type", t, limits.aggregate_type_bytes_max)?;
        }
        if let Some(id) = &self.aggregate_id {
            validate_identifier("aggregate_id", id, limits.aggregate_id_bytes_max)?;
        }
        if let Some(prefix) = &self.aggregate_id_prefix {
            validate_identifier("aggregate_id_prefix", prefix, limits.aggregate_id_bytes_max)?;
        }
        Ok(())
    }
}

/// `GET /v1/events`: all events in position order, filtered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventQuery {
    pub filter: EventFilter,
    /// Events after this position (exclusive).
    pub after_position: u64,
    /// Events up to this position (inclusive).
    pub to_position: Option<u64>,
    /// `created_at` ≥ this.
    pub from: Option<Timestamp>,
    /// `created_at` ≤ this.
    pub to: Option<Timestamp>,
    /// `recorded_at` ≤ this: the store as it was then.
    pub as_of: Option<Timestamp>,
    pub limit: usize,
}

impl EventQuery {
    /// Every event after `after_position`, `limit` at a time.
    pub fn all(after_position: u64, limit: usize) -> EventQuery {
        EventQuery {
            filter: EventFilter::default(),
            after_position,
            to_position: None,
            from: None,
            to: None,
            as_of: None,
            limit,
        }
    }

    /// Whether `event` passes the filter and the time bounds (not the position bounds).
    pub fn matches(&self, event: &Event) -> bool {
        self.from.is_none_or(|from| event.created_at() >= from)
            && self.to.is_none_or(|to| event.created_at() <= to)
            && self.as_of.is_none_or(|as_of| event.recorded_at() <= as_of)
            && self.filter.matches(event)
    }
}

/// One page of `GET /v1/events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventPage {
    pub events: Vec<Event>,
    /// Where the next page starts; past filtered-out events too.
    pub next_after_position: u64,
    pub head_position: u64,
}

impl EventPage {
    /// The page of `events` (at most `limit`) matching a query after position `after`, in the
    /// range that ends at `range_end` (the head, or `to_position` below it): a full page goes
    /// on after its last event, a shorter one reached the end of the range.
    pub fn ending(events: Vec<Event>, after: u64, limit: usize, range_end: u64, head: u64) -> EventPage {
        let next_after_position = if events.len() >= limit {
            events.last().map_or(range_end, Event::position)
        } else {
            range_end.max(after)
        };
        EventPage {
            events,
            next_after_position,
            head_position: head,
        }
    }
}

/// The direction of an aggregate read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    #[default]
    Forward,
    Backward,
}

/// `GET /v1/aggregates/{id}/events`: one aggregate's events by version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregateQuery {
    pub aggregate_id: String,
    /// Where the read starts, inclusive (1 forward, the current version backward, by default).
    pub from_version: Option<u64>,
    /// Where the read stops, inclusive.
    pub to_version: Option<u64>,
    pub direction: Direction,
    /// `created_at` ≥ this.
    pub from: Option<Timestamp>,
    /// `created_at` ≤ this (also `until`).
    pub to: Option<Timestamp>,
    /// `recorded_at` ≤ this: the aggregate as the store knew it then.
    pub as_of: Option<Timestamp>,
    pub limit: usize,
}

impl AggregateQuery {
    /// Every event of one aggregate, forward, `limit` at a time.
    pub fn forward(aggregate_id: &str, limit: usize) -> AggregateQuery {
        AggregateQuery {
            aggregate_id: aggregate_id.to_owned(),
            from_version: None,
            to_version: None,
            direction: Direction::Forward,
            from: None,
            to: None,
            as_of: None,
            limit,
        }
    }

    /// Whether `event` passes the time bounds.
    pub fn matches(&self, event: &Event) -> bool {
        self.from.is_none_or(|from| event.created_at() >= from)
            && self.to.is_none_or(|to| event.created_at() <= to)
            && self.as_of.is_none_or(|as_of| event.recorded_at() <= as_of)
    }
}

/// One page of an aggregate read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregatePage {
    pub aggregate_id: String,
    pub aggregate_type: String,
    /// The current version, or the version as of `as_of`.
    pub version: u64,
    pub events: Vec<Event>,
    /// Where the next page starts in the same direction; `None` at the end.
    pub next_from_version: Option<u64>,
}

/// The last committed position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Head {
    /// The last committed position; 0 for an empty store.
    pub position: u64,
    /// When the last event was recorded; null for an empty store.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub recorded_at: Option<Timestamp>,
}
