//! The read endpoints: one aggregate's events, all events filtered, one event, the head.
//!
//! Every parameter is parsed and checked before the store is asked anything, so a bad
//! parameter is 400 even for an aggregate that does not exist.
//!
//! With `--auth`, a token limited to aggregate prefixes gets 403 for one aggregate outside
//! them, `GET /v1/events` filtered to them, and 404 for an event by id outside them.
//!
//! Events are read upcast to the newest version their upcasters reach (the store in
//! `AppState::store`); `raw=true` reads them exactly as stored. Unfiltered tail reads come
//! from the live feed, which holds the stored form, so they use it only while no upcaster is
//! registered (or with `raw=true`).

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use factstore_core::time::Bound;
use factstore_core::{AggregateQuery, EventFilter, EventQuery, Limits, StoreError};

use crate::AppState;
use crate::auth::{Principal, Role};
use crate::chunked::EventPageBody;
use crate::error::ApiError;
use crate::extract::{AggregateIdPath, EventIdPath, Params};
use crate::render;

/// The page size when a read gives no `limit`.
pub const DEFAULT_LIMIT: usize = 1000;

const AGGREGATE_PARAMS: &[&str] = &[
    "from_version",
    "to_version",
    "from",
    "to",
    "until",
    "as_of",
    "direction",
    "limit",
    "raw",
];

/// The filters of `GET /v1/events`, shared with `GET /v1/subscribe` (the contract: "the same
/// filters").
pub(crate) const FILTER_PARAMS: [&str; 11] = [
    "event_type",
    "aggregate_type",
    "aggregate_id",
    "aggregate_id_prefix",
    "correlation_id",
    "causation_id",
    "created_by",
    "from",
    "to",
    "as_of",
    "raw",
];

const EVENTS_PARAMS: [&str; 14] = concat_names(["after_position", "to_position", "limit"], FILTER_PARAMS);

/// `a` then `b`, at compile time.
pub(crate) const fn concat_names<const A: usize, const B: usize, const N: usize>(
    a: [&'static str; A],
    b: [&'static str; B],
) -> [&'static str; N] {
    assert!(A + B == N, "the lengths add up");
    let mut out = [""; N];
    let mut i = 0;
    while i < A {
        out[i] = a[i];
        i += 1;
    }
    while i < N {
        out[i] = b[i - A];
        i += 1;
    }
    out
}

/// `GET /v1/aggregates/{aggregate_id}/events`
pub async fn read_aggregate(
    State(state): State<AppState>,
    principal: Principal,
    AggregateIdPath(aggregate_id): AggregateIdPath,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    principal.require(Role::Reader)?;
    principal.check_aggregate(&aggregate_id)?;
    let params = Params::parse(query.as_deref(), AGGREGATE_PARAMS)?;
    let to = match (params.get("to"), params.get("until")) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "to and until mean the same; give one of them, not both",
            ));
        }
        (_, Some(_)) => params.time("until", Bound::Upper)?,
        _ => params.time("to", Bound::Upper)?,
    };
    let query = AggregateQuery {
        aggregate_id,
        from_version: params.version("from_version")?,
        to_version: params.version("to_version")?,
        direction: params.direction()?,
        from: params.time("from", Bound::Lower)?,
        to,
        as_of: params.time("as_of", Bound::Upper)?,
        limit: params.limit(DEFAULT_LIMIT, state.store.limits().page_events_max)?,
    };
    let raw = params.bool("raw")?.unwrap_or(false);
    let page = state.store_for(raw).read_aggregate(query).await?;
    Ok(render::json_bytes(StatusCode::OK, render::aggregate_page(&page)))
}

/// The filter of `GET /v1/events`, from its parameters, checked against the limits.
pub(crate) fn filter_from(params: &Params, limits: &Limits) -> Result<EventFilter, ApiError> {
    let owned = |name: &str| params.get(name).map(str::to_owned);
    let filter = EventFilter {
        event_types: params
            .get("event_type")
            .map(|list| list.split(',').map(str::to_owned).collect())
            .unwrap_or_default(),
        aggregate_type: owned("aggregate_type"),
        aggregate_id: owned("aggregate_id"),
        aggregate_id_prefix: owned("aggregate_id_prefix"),
        correlation_id: owned("correlation_id"),
        causation_id: owned("causation_id"),
        created_by: owned("created_by"),
    };
    filter.validate(limits)?;
    // These three are not identifiers the core validates; a value longer than the store keeps
    // could never match, which is a mistake worth telling.
    for (name, max) in [
        ("correlation_id", limits.link_id_bytes_max),
        ("causation_id", limits.link_id_bytes_max),
        ("created_by", limits.created_by_bytes_max),
    ] {
        if let Some(value) = params.get(name)
            && value.len() > max
        {
            return Err(ApiError::invalid(format!(
                "{name} may be at most {max} bytes, got {}",
                value.len()
            )));
        }
    }
    Ok(filter)
}

/// `GET /v1/events`
pub async fn read_events(
    State(state): State<AppState>,
    principal: Principal,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    principal.require(Role::Reader)?;
    let params = Params::parse(query.as_deref(), &EVENTS_PARAMS)?;
    let limits = state.store.limits();
    let mut query = EventQuery {
        filter: filter_from(&params, limits)?,
        after_position: params.u64("after_position")?.unwrap_or(0),
        to_position: params.u64("to_position")?,
        from: params.time("from", Bound::Lower)?,
        to: params.time("to", Bound::Upper)?,
        as_of: params.time("as_of", Bound::Upper)?,
        limit: params.limit(DEFAULT_LIMIT, limits.page_events_max)?,
    };
    let raw = params.bool("raw")?.unwrap_or(false);
    let scope = principal.restrict(&mut query);
    // The tail of the log is usually in the live feed, JSON and all.
    let feed = (query.filter.is_empty() && scope.is_everything() && (raw || !state.schemas.upcasts()))
        .then(|| (state.feed(), *state.store.watch_head().borrow()));
    // Read and rendered a chunk at a time (see `chunked`): a long page held by a client that
    // does not read costs one chunk.
    EventPageBody::new(
        state.store_for(raw).clone(),
        feed,
        query,
        scope,
        state.budget.bodies.clone(),
        state.budget.read_ahead.clone(),
    )
    .respond()
    .await
}

/// `GET /v1/events/{event_id}`
pub async fn get_event(
    State(state): State<AppState>,
    principal: Principal,
    EventIdPath(event_id): EventIdPath,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    principal.require(Role::Reader)?;
    let params = Params::parse(query.as_deref(), &["raw"])?;
    let raw = params.bool("raw")?.unwrap_or(false);
    let event = state.store_for(raw).get_event(event_id).await?;
    if event.event_id() != event_id {
        return Err(StoreError::Internal(format!(
            "asked for event {event_id}, the store answered {}",
            event.event_id()
        ))
        .into());
    }
    if !principal.can_see(event.aggregate_id()) {
        // As if it did not exist: a 403 would tell the token it does.
        return Err(StoreError::EventNotFound { event_id }.into());
    }
    Ok(render::json_bytes(StatusCode::OK, render::event(&event)))
}

/// `GET /v1/head`
pub async fn head(
    State(state): State<AppState>,
    principal: Principal,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    principal.require(Role::Reader)?;
    Params::parse(query.as_deref(), &[])?;
    let head = state.store.head().await?;
    render::json(StatusCode::OK, &head)
}
