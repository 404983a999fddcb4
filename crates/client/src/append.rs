//! What appends send and what they answer.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::event::{ExpectedVersion, NewEvent};
use crate::query::EventFilter;

/// The body of `POST /v1/aggregates/{aggregate_id}/events`: events for one aggregate, appended
/// atomically at consecutive versions.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppendRequest {
    #[serde(default)]
    pub expected_version: ExpectedVersion,
    pub events: Vec<NewEvent>,
}

impl AppendRequest {
    /// An append of `events` with no version check.
    pub fn new(events: impl IntoIterator<Item = NewEvent>) -> AppendRequest {
        AppendRequest {
            expected_version: ExpectedVersion::Any,
            events: events.into_iter().collect(),
        }
    }

    /// Sets the version the aggregate must be at.
    pub fn expect(mut self, expected_version: ExpectedVersion) -> AppendRequest {
        self.expected_version = expected_version;
        self
    }

    /// Adds one event.
    pub fn event(mut self, event: NewEvent) -> AppendRequest {
        self.events.push(event);
        self
    }
}

/// One aggregate's part of a [`CommitRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateAppend {
    pub aggregate_id: String,
    #[serde(default)]
    pub expected_version: ExpectedVersion,
    pub events: Vec<NewEvent>,
}

impl AggregateAppend {
    pub fn new(
        aggregate_id: impl Into<String>,
        expected_version: ExpectedVersion,
        events: impl IntoIterator<Item = NewEvent>,
    ) -> AggregateAppend {
        AggregateAppend {
            aggregate_id: aggregate_id.into(),
            expected_version,
            events: events.into_iter().collect(),
        }
    }
}

/// A commit fails with [`Error::ConditionFailed`](crate::Error::ConditionFailed) when an event
/// matching `filter` exists after `after_position`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    pub filter: EventFilter,
    #[serde(default)]
    pub after_position: u64,
}

/// The body of `POST /v1/events`: one atomic commit across aggregates. The events take
/// consecutive positions in the order given; one aggregate may appear only once.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitRequest {
    pub appends: Vec<AggregateAppend>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<Condition>,
}

impl CommitRequest {
    /// A commit of `appends` without a condition.
    pub fn new(appends: impl IntoIterator<Item = AggregateAppend>) -> CommitRequest {
        CommitRequest {
            appends: appends.into_iter().collect(),
            condition: None,
        }
    }

    /// Adds one aggregate's events.
    pub fn append(mut self, append: AggregateAppend) -> CommitRequest {
        self.appends.push(append);
        self
    }

    /// Fails the commit if an event matching `filter` exists after `after_position`.
    pub fn condition(mut self, filter: EventFilter, after_position: u64) -> CommitRequest {
        self.condition = Some(Condition {
            filter,
            after_position,
        });
        self
    }

    /// The events of the commit, in position order.
    pub(crate) fn events_mut(&mut self) -> impl Iterator<Item = &mut NewEvent> {
        self.appends.iter_mut().flat_map(|a| a.events.iter_mut())
    }
}

/// Where one appended event landed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendedEvent {
    pub event_id: Uuid,
    pub version: u64,
    pub position: u64,
    #[serde(with = "crate::time::required")]
    pub recorded_at: OffsetDateTime,
}

/// The answer to an append to one aggregate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendOutcome {
    /// The aggregate's version after the last event of the append.
    pub version: u64,
    /// The position of the last event of the append.
    pub position: u64,
    pub events: Vec<AppendedEvent>,
    /// True when the server recognised the request as a repeat of one it had already
    /// committed (HTTP 200 rather than 201): nothing was written, and the positions and
    /// versions are the original ones.
    #[serde(skip)]
    pub replayed: bool,
}

/// One aggregate's part of a [`CommitOutcome`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendedAggregate {
    pub aggregate_id: String,
    /// The aggregate's version after its last event of this commit.
    pub version: u64,
    pub events: Vec<AppendedEvent>,
}

/// The answer to a commit across aggregates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitOutcome {
    /// The position of the last event of the commit.
    pub position: u64,
    pub appends: Vec<AppendedAggregate>,
    /// True when the commit was a repeat of one already committed (see
    /// [`AppendOutcome::replayed`]).
    #[serde(skip)]
    pub replayed: bool,
}
