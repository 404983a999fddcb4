//! Snapshots: an aggregate's folded state at one of its versions, kept so that loading a long
//! aggregate does not replay it from its first event.
//!
//! A snapshot is a cache, not a fact: it takes no position, never appears in event reads, and
//! a put at a version that already has one replaces it. [`PutSnapshot::prepare`] validates
//! everything that needs no store, so that a backend sees only well-formed snapshots.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::append::{validate_aggregate_id, validate_identifier};
use crate::error::StoreError;
use crate::event::write_json_str;
use crate::json::stored_object;
use crate::limits::Limits;
use crate::time::Timestamp;

/// A snapshot as a client sends it: the body of `PUT /v1/aggregates/{aggregate_id}/snapshots`
/// plus the aggregate id of the path.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PutSnapshot {
    /// From the path, never from the body.
    #[serde(skip)]
    pub aggregate_id: String,
    /// The aggregate version the state was folded up to: a version the aggregate has.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 9223372036854775807_u64))]
    pub version: u64,
    /// What kind of state this is, 1 to 50 bytes (by default, the `aggregate_type` rule).
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$")
    )]
    pub snapshot_type: String,
    /// The schema version of `state`, 1 to 2^31−1; 1 when absent.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 2147483647))]
    pub snapshot_version: Option<i64>,
    /// The state: a JSON object, at most 1 MiB (by default, the event payload limit), strict
    /// JSON as `event_data` is.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub state: Box<RawValue>,
}

impl PutSnapshot {
    /// A snapshot of `aggregate_id` at `version`; `state` must be a JSON object.
    pub fn new(
        aggregate_id: &str,
        version: u64,
        snapshot_type: &str,
        state: serde_json::Value,
    ) -> PutSnapshot {
        let state = serde_json::value::to_raw_value(&state)
            .unwrap_or_else(|_| RawValue::from_string("null".to_owned()).unwrap_or_else(|_| unreachable!()));
        PutSnapshot {
            aggregate_id: aggregate_id.to_owned(),
            version,
            snapshot_type: snapshot_type.to_owned(),
            snapshot_version: None,
            state,
        }
    }

    pub fn with_snapshot_version(mut self, snapshot_version: i64) -> PutSnapshot {
        self.snapshot_version = Some(snapshot_version);
        self
    }

    /// Validates everything that needs no store and gives the snapshot its stored form
    /// (compact JSON) and its `created_at`. Bad fields are `InvalidRequest`, a state over the
    /// event payload limit is `PayloadTooLarge`.
    pub fn prepare(self, limits: &Limits, created_at: Timestamp) -> Result<Snapshot, StoreError> {
        validate_aggregate_id(&self.aggregate_id, limits)?;
        if self.version == 0 {
            return Err(StoreError::invalid(
                "version must be at least 1 (versions start at 1)",
            ));
        }
        validate_identifier(
            "snapshot_type",
            &self.snapshot_type,
            limits.aggregate_type_bytes_max,
        )?;
        let snapshot_version = match self.snapshot_version {
            None => 1,
            Some(v) if (1..=i64::from(i32::MAX)).contains(&v) => v as u32,
            Some(v) => {
                return Err(StoreError::invalid(format!(
                    "snapshot_version must be between 1 and 2147483647, got {v}"
                )));
            }
        };
        let state = stored_object("state", self.state)?;
        if state.len() > limits.event_payload_bytes_max {
            return Err(StoreError::too_large(format!(
                "state may hold at most {} bytes, got {}",
                limits.event_payload_bytes_max,
                state.len()
            )));
        }
        Ok(Snapshot {
            aggregate_id: self.aggregate_id,
            version: self.version,
            snapshot_type: self.snapshot_type,
            snapshot_version,
            state,
            created_at,
        })
    }
}

/// A stored snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub aggregate_id: String,
    /// The aggregate version the state was folded up to.
    pub version: u64,
    pub snapshot_type: String,
    /// The schema version of `state`, 1 to 2^31−1.
    pub snapshot_version: u32,
    /// A JSON object, as compact text.
    pub state: String,
    /// When the store took the snapshot.
    pub created_at: Timestamp,
}

impl Snapshot {
    /// What a listing shows of it.
    pub fn info(&self) -> SnapshotInfo {
        SnapshotInfo {
            version: self.version,
            snapshot_type: self.snapshot_type.clone(),
            snapshot_version: self.snapshot_version,
            created_at: self.created_at,
        }
    }

    /// `{"aggregate_id", "version", "snapshot_type", "snapshot_version", "state", "created_at"}`
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"aggregate_id\":");
        write_json_str(out, &self.aggregate_id);
        out.extend_from_slice(format!(",\"version\":{},\"snapshot_type\":", self.version).as_bytes());
        write_json_str(out, &self.snapshot_type);
        out.extend_from_slice(
            format!(",\"snapshot_version\":{},\"state\":", self.snapshot_version).as_bytes(),
        );
        out.extend_from_slice(self.state.as_bytes());
        out.extend_from_slice(b",\"created_at\":\"");
        self.created_at.write_rfc3339(out);
        out.extend_from_slice(b"\"}");
    }

    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(self.state.len() + self.aggregate_id.len() + 160);
        self.write_json(&mut out);
        // Only valid UTF-8 went in.
        String::from_utf8(out).unwrap_or_default()
    }
}

/// A snapshot without its state, as `GET /v1/aggregates/{aggregate_id}/snapshots` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SnapshotInfo {
    /// The aggregate version the state was folded up to.
    pub version: u64,
    pub snapshot_type: String,
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 2147483647))]
    pub snapshot_version: u32,
    /// When the store took the snapshot.
    pub created_at: Timestamp,
}

/// The answer to a put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotStored {
    pub info: SnapshotInfo,
    /// Whether it replaced a snapshot at the same version.
    pub replaced: bool,
}

/// Checks the arguments of `latest_snapshot`: a valid aggregate id, and `max_version` of 1 or
/// more (versions start at 1).
pub fn validate_latest_query(
    aggregate_id: &str,
    max_version: Option<u64>,
    limits: &Limits,
) -> Result<(), StoreError> {
    validate_aggregate_id(aggregate_id, limits)?;
    if max_version == Some(0) {
        return Err(StoreError::invalid(
            "max_version must be at least 1 (versions start at 1)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn put(state: serde_json::Value) -> PutSnapshot {
        PutSnapshot::new("account:1", 3, "Account", state)
    }

    fn prepare(put: PutSnapshot) -> Result<Snapshot, StoreError> {
        put.prepare(&Limits::default(), Timestamp::from_micros(1_700_000_000_000_000))
    }

    #[test]
    fn a_valid_put_is_compacted_and_defaults_its_schema_version() {
        let raw =
            RawValue::from_string("{ \"balance\" : 500 }".to_owned()).unwrap_or_else(|_| unreachable!());
        let mut request = put(json!({}));
        request.state = raw;
        let snapshot = prepare(request).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(snapshot.state, r#"{"balance":500}"#);
        assert_eq!(snapshot.snapshot_version, 1);
        let value: serde_json::Value =
            serde_json::from_str(&snapshot.to_json()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            value,
            json!({"aggregate_id": "account:1", "version": 3, "snapshot_type": "Account",
                   "snapshot_version": 1, "state": {"balance": 500},
                   "created_at": "2023-11-14T22:13:20.000000Z"})
        );
    }

    #[test]
    fn every_rule_of_a_put_is_checked() {
        let invalid = |put: PutSnapshot, what: &str| match prepare(put) {
            Err(StoreError::InvalidRequest(message)) => assert!(message.contains(what), "{message}"),
            other => panic!("{what}: expected InvalidRequest, got {other:?}"),
        };
        invalid(put(json!([1])), "state must be a JSON object");
        invalid(put(json!("x")), "state must be a JSON object");
        let mut zero = put(json!({}));
        zero.version = 0;
        invalid(zero, "version must be at least 1");
        invalid(put(json!({})).with_snapshot_version(0), "snapshot_version");
        invalid(put(json!({})).with_snapshot_version(1 << 31), "snapshot_version");
        let mut long_type = put(json!({}));
        long_type.snapshot_type = "T".repeat(51);
        invalid(long_type, "snapshot_type may be at most 50 bytes");
        let mut empty_type = put(json!({}));
        empty_type.snapshot_type = String::new();
        invalid(empty_type, "snapshot_type must not be empty");
        let mut bad_id = put(json!({}));
        bad_id.aggregate_id = "a\u{7}".to_owned();
        invalid(bad_id, "aggregate_id");
        assert!(prepare(put(json!({})).with_snapshot_version(i64::from(i32::MAX))).is_ok());

        let limit = Limits::default().event_payload_bytes_max;
        let at_limit = json!({"s": "x".repeat(limit - 8)});
        assert!(prepare(put(at_limit)).is_ok());
        let over = json!({"s": "x".repeat(limit - 7)});
        assert!(matches!(prepare(put(over)), Err(StoreError::PayloadTooLarge(_))));
    }

    #[test]
    fn max_version_zero_is_invalid() {
        let limits = Limits::default();
        assert!(validate_latest_query("a", Some(0), &limits).is_err());
        assert!(validate_latest_query("a", Some(1), &limits).is_ok());
        assert!(validate_latest_query("", None, &limits).is_err());
    }
}
