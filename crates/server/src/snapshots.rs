//! The snapshot endpoints: put a snapshot, read the latest one or the list, and load an
//! aggregate (its latest snapshot and the events after it) in one round trip.
//!
//! Writers put snapshots, readers read them; a token limited to aggregate prefixes gets 403
//! for an aggregate outside them. A snapshot is a cache, not a fact: it takes no position and
//! never shows in event reads.

use std::io::Write as _;

use axum::extract::{FromRequest, RawQuery, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use factstore_core::event::write_json_str;
use factstore_core::{AggregateQuery, Event, PutSnapshot, SnapshotInfo, StoreError, Timestamp};
use serde::Serialize;

use crate::AppState;
use crate::auth::{Principal, Role, Writer};
use crate::error::ApiError;
use crate::extract::{AggregateIdPath, JsonBody, Params};
use crate::render;

/// The answer to a put: the snapshot as stored, without its state.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SnapshotPutResponse {
    aggregate_id: String,
    /// The aggregate version the state was folded up to.
    version: u64,
    snapshot_type: String,
    #[schema(minimum = 1, maximum = 2147483647)]
    snapshot_version: u32,
    /// When the store took the snapshot.
    created_at: Timestamp,
}

/// `{"snapshots": [...]}`
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SnapshotList {
    /// Every snapshot of the aggregate, by increasing version, without states.
    snapshots: Vec<SnapshotInfo>,
}

/// `PUT /v1/aggregates/{aggregate_id}/snapshots`
pub async fn put_snapshot(
    State(state): State<AppState>,
    Writer(principal): Writer,
    AggregateIdPath(aggregate_id): AggregateIdPath,
    RawQuery(query): RawQuery,
    request: Request,
) -> Result<Response, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    // Before the body is read: a token that may not write here learns nothing from it.
    principal.check_aggregate(&aggregate_id)?;
    let JsonBody(mut put) = JsonBody::<PutSnapshot>::from_request(request, &state).await?;
    put.aggregate_id = aggregate_id;
    let aggregate_id = put.aggregate_id.clone();
    let stored = state.store.put_snapshot(put).await?;
    let status = if stored.replaced {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    render::json(
        status,
        &SnapshotPutResponse {
            aggregate_id,
            version: stored.info.version,
            snapshot_type: stored.info.snapshot_type,
            snapshot_version: stored.info.snapshot_version,
            created_at: stored.info.created_at,
        },
    )
}

/// `GET /v1/aggregates/{aggregate_id}/snapshots/latest`
pub async fn latest_snapshot(
    State(state): State<AppState>,
    principal: Principal,
    AggregateIdPath(aggregate_id): AggregateIdPath,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    principal.require(Role::Reader)?;
    principal.check_aggregate(&aggregate_id)?;
    let params = Params::parse(query.as_deref(), &["max_version"])?;
    let max_version = params.version("max_version")?;
    let snapshot = state.store.latest_snapshot(&aggregate_id, max_version).await?;
    Ok(render::json_bytes(
        StatusCode::OK,
        snapshot.to_json().into_bytes(),
    ))
}

/// `GET /v1/aggregates/{aggregate_id}/snapshots`
pub async fn list_snapshots(
    State(state): State<AppState>,
    principal: Principal,
    AggregateIdPath(aggregate_id): AggregateIdPath,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    principal.require(Role::Reader)?;
    principal.check_aggregate(&aggregate_id)?;
    Params::parse(query.as_deref(), &[])?;
    let snapshots = state.store.list_snapshots(&aggregate_id).await?;
    render::json(StatusCode::OK, &SnapshotList { snapshots })
}

/// `GET /v1/aggregates/{aggregate_id}/load`: the latest snapshot (or none) and every event
/// after it, up to the version the first read saw, so that appends during the load do not
/// tear it.
pub async fn load(
    State(state): State<AppState>,
    principal: Principal,
    AggregateIdPath(aggregate_id): AggregateIdPath,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    principal.require(Role::Reader)?;
    principal.check_aggregate(&aggregate_id)?;
    Params::parse(query.as_deref(), &[])?;
    let snapshot = match state.store.latest_snapshot(&aggregate_id, None).await {
        Ok(snapshot) => Some(snapshot),
        Err(StoreError::SnapshotNotFound { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let page_max = state.store.limits().page_events_max;
    let mut query = AggregateQuery::forward(&aggregate_id, page_max);
    query.from_version = Some(snapshot.as_ref().map_or(1, |s| s.version + 1));
    let mut events: Vec<Event> = Vec::new();
    let mut version = None;
    loop {
        let page = state.store.read_aggregate(query.clone()).await?;
        let current = *version.get_or_insert(page.version);
        query.to_version = Some(current);
        events.extend(page.events);
        match page.next_from_version {
            Some(next) if next <= current => query.from_version = Some(next),
            _ => break,
        }
    }
    let version = version.unwrap_or(0);
    if let Some(snapshot) = &snapshot
        && snapshot.version > version
    {
        return Err(StoreError::Internal(format!(
            "aggregate '{aggregate_id}' has a snapshot at version {} but is at version {version}",
            snapshot.version
        ))
        .into());
    }
    let mut out = Vec::with_capacity(
        events.iter().map(|e| e.as_bytes().len() + 256).sum::<usize>()
            + snapshot.as_ref().map_or(0, |s| s.state.len() + 256)
            + 128,
    );
    out.extend_from_slice(b"{\"aggregate_id\":");
    write_json_str(&mut out, &aggregate_id);
    // Writing to a Vec cannot fail.
    let _ = write!(out, ",\"version\":{version},\"snapshot\":");
    match &snapshot {
        Some(snapshot) => snapshot.write_json(&mut out),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"events\":[");
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        event.write_json(&mut out);
    }
    out.extend_from_slice(b"]}");
    Ok(render::json_bytes(StatusCode::OK, out))
}
