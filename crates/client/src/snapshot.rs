//! Snapshots: an aggregate's folded state at one of its versions, and loading an aggregate
//! (its latest snapshot and the events after it) in one round trip.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::event::Event;
use crate::json::RawJson;

/// The body of `PUT /v1/aggregates/{aggregate_id}/snapshots`.
#[derive(Debug, Clone, Serialize)]
pub struct PutSnapshotRequest {
    /// The aggregate version the state was folded up to; the aggregate must have it.
    pub version: u64,
    /// What kind of state this is (1 to 50 bytes by default).
    pub snapshot_type: String,
    /// The schema version of `state`; the server takes 1 when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_version: Option<u32>,
    /// A JSON object.
    pub state: RawJson,
}

impl PutSnapshotRequest {
    /// A snapshot at `version`; `state` must be a JSON object.
    pub fn new(
        version: u64,
        snapshot_type: impl Into<String>,
        state: impl Into<RawJson>,
    ) -> PutSnapshotRequest {
        PutSnapshotRequest {
            version,
            snapshot_type: snapshot_type.into(),
            snapshot_version: None,
            state: state.into(),
        }
    }

    pub fn snapshot_version(mut self, snapshot_version: u32) -> PutSnapshotRequest {
        self.snapshot_version = Some(snapshot_version);
        self
    }
}

/// The answer to a put: the snapshot as stored, without its state.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SnapshotPut {
    pub aggregate_id: String,
    pub version: u64,
    pub snapshot_type: String,
    pub snapshot_version: u32,
    /// When the store took the snapshot.
    #[serde(with = "crate::time::required")]
    pub created_at: OffsetDateTime,
    /// Whether it replaced a snapshot at the same version (the server answered 200, not 201).
    #[serde(skip)]
    pub replaced: bool,
}

/// A stored snapshot with its state.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Snapshot {
    pub aggregate_id: String,
    /// The aggregate version the state was folded up to.
    pub version: u64,
    pub snapshot_type: String,
    /// The schema version of `state`.
    pub snapshot_version: u32,
    /// A JSON object, as the server sent it.
    pub state: RawJson,
    /// When the store took the snapshot.
    #[serde(with = "crate::time::required")]
    pub created_at: OffsetDateTime,
}

impl Snapshot {
    /// `state` deserialised into `T`.
    pub fn state<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        self.state.parse()
    }
}

/// A snapshot without its state, as the list shows it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SnapshotInfo {
    pub version: u64,
    pub snapshot_type: String,
    pub snapshot_version: u32,
    #[serde(with = "crate::time::required")]
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Deserialize)]
pub(crate) struct SnapshotList {
    pub(crate) snapshots: Vec<SnapshotInfo>,
}

/// An aggregate as `GET /v1/aggregates/{aggregate_id}/load` answers it: fold `events` over
/// `snapshot`'s state (or the initial state when there is none) to get the state at
/// `version`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LoadedAggregate {
    pub aggregate_id: String,
    /// The aggregate's current version.
    pub version: u64,
    /// The newest snapshot, if any.
    pub snapshot: Option<Snapshot>,
    /// Every event after the snapshot's version (all of them without one), in version order.
    pub events: Vec<Event>,
}
