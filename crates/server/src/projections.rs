//! The projection endpoints (read models kept by the server) and `GET /v1/events/{id}/status`.
//!
//! Roles: creating, replacing, rebuilding and deleting a projection needs the admin role (the
//! API contract: "admins also manage projections"); reading statuses and states needs the
//! reader role. A token limited to aggregate id prefixes may not use projections at all
//! (403, refused before any handler by `auth::whole_store_reason`): a projection folds events
//! of any aggregate into states that cannot be filtered afterwards (a per-day total mixes
//! every account). The event status route follows the rules
//! of `GET /v1/events/{id}`: an event outside the token's prefixes is 404 for it.

use std::time::Duration;

use axum::extract::{FromRequest, FromRequestParts, RawQuery, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use factstore_core::StoreError;
use factstore_core::time::Bound;
use factstore_projections::definition::validate_name;
use factstore_projections::{ProjectionDefinition, ProjectionStatus, PutOutcome, Source, StateQuery};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::AppState;
use crate::auth::{Admin, Principal, Role};
use crate::error::ApiError;
use crate::extract::{EventIdPath, JsonBody, Params, percent_decode};
use crate::render;

/// The longest a read-your-writes read may wait (`wait_ms`).
pub const WAIT_MS_MAX: u64 = 60_000;
/// Default and largest `limit` of a page of states.
pub const STATES_PAGE_DEFAULT: usize = 100;
pub const STATES_PAGE_MAX: usize = 1000;

/// `{"projections": [...]}`
#[derive(Debug, Serialize)]
struct ProjectionList {
    projections: Vec<ProjectionStatus>,
}

/// `{"key", "state", "position"}`
#[derive(Debug, Serialize)]
struct KeyStateBody {
    key: String,
    state: Value,
    position: u64,
}

/// One entry of a page of states.
#[derive(Debug, Serialize)]
struct KeyAndState {
    key: String,
    state: Value,
}

/// `{"states": [...], "next_after_key", "position"}`
#[derive(Debug, Serialize)]
struct StatesBody {
    states: Vec<KeyAndState>,
    next_after_key: Option<String>,
    position: u64,
}

/// `{"event_id", "position", "materialized", "projections"}`
#[derive(Debug, Serialize)]
struct EventStatusBody {
    event_id: Uuid,
    position: u64,
    materialized: bool,
    projections: std::collections::BTreeMap<String, bool>,
}

/// The `{name}` of `/v1/projections/{name}/…`, decoded and validated.
#[derive(Debug)]
pub struct ProjectionName(pub String);

fn segment(parts: &Parts, index: usize, name: &str) -> Result<String, ApiError> {
    let raw = parts.uri.path().split('/').nth(index).unwrap_or("");
    percent_decode(raw, false)
        .map(std::borrow::Cow::into_owned)
        .map_err(|problem| ApiError::invalid(format!("{name} in the path: {problem}")))
}

impl FromRequestParts<AppState> for ProjectionName {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &AppState) -> Result<Self, ApiError> {
        let name = segment(parts, 3, "the projection name")?;
        validate_name(&name)?;
        Ok(ProjectionName(name))
    }
}

/// `PUT /v1/projections/{name}`: 201 for a new projection, 200 for a replaced one (a changed
/// definition rebuilds; the same definition changes nothing). The body is the status.
pub async fn put_projection(
    State(state): State<AppState>,
    _: Admin,
    ProjectionName(name): ProjectionName,
    RawQuery(query): RawQuery,
    request: Request,
) -> Result<Response, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    let JsonBody(definition) = JsonBody::<ProjectionDefinition>::from_request(request, &state).await?;
    let outcome = state.projections().put(&name, definition).await?;
    let status = match outcome {
        PutOutcome::Created => StatusCode::CREATED,
        PutOutcome::Unchanged | PutOutcome::Rebuilding => StatusCode::OK,
    };
    render::json(status, &state.projections().status(&name)?)
}

/// `GET /v1/projections`
pub async fn list_projections(
    State(state): State<AppState>,
    principal: Principal,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    principal.require(Role::Reader)?;
    Params::parse(query.as_deref(), &[])?;
    render::json(
        StatusCode::OK,
        &ProjectionList {
            projections: state.projections().list(),
        },
    )
}

/// `GET /v1/projections/{name}`
pub async fn get_projection(
    State(state): State<AppState>,
    principal: Principal,
    ProjectionName(name): ProjectionName,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    principal.require(Role::Reader)?;
    Params::parse(query.as_deref(), &[])?;
    render::json(StatusCode::OK, &state.projections().status(&name)?)
}

/// `DELETE /v1/projections/{name}`
pub async fn delete_projection(
    State(state): State<AppState>,
    _: Admin,
    ProjectionName(name): ProjectionName,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    state.projections().delete(&name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /v1/projections/{name}/rebuild`: 202; the old state serves until the rebuilt one has
/// caught up.
pub async fn rebuild_projection(
    State(state): State<AppState>,
    _: Admin,
    ProjectionName(name): ProjectionName,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    state.projections().rebuild(&name).await?;
    render::json(StatusCode::ACCEPTED, &state.projections().status(&name)?)
}

/// `GET /v1/projections/{name}/state/{key}`
pub async fn get_projection_state(
    State(state): State<AppState>,
    principal: Principal,
    ProjectionName(name): ProjectionName,
    request: Request,
) -> Result<Response, ApiError> {
    principal.require(Role::Reader)?;
    let (parts, _) = request.into_parts();
    let key = segment(&parts, 5, "the key")?;
    let params = Params::parse(
        parts.uri.query(),
        &["source", "min_position", "wait_ms", "until", "as_of"],
    )?;
    let source = match params.get("source") {
        None | Some("read_model") => Source::ReadModel,
        Some("event_store") => Source::EventStore,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "source must be read_model or event_store, got '{other}'"
            )));
        }
    };
    let wait = match params.u64("wait_ms")? {
        Some(ms) if ms > WAIT_MS_MAX => {
            return Err(ApiError::invalid(format!(
                "wait_ms may be at most {WAIT_MS_MAX}, got {ms}"
            )));
        }
        other => other.map(Duration::from_millis),
    };
    let query = StateQuery {
        source,
        min_position: params.u64("min_position")?,
        wait,
        until: params.time("until", Bound::Upper)?,
        as_of: params.time("as_of", Bound::Upper)?,
    };
    let found = state.projections().state(&name, &key, &query).await?;
    render::json(
        StatusCode::OK,
        &KeyStateBody {
            key: found.key,
            state: found.state,
            position: found.position,
        },
    )
}

/// `GET /v1/projections/{name}/state`: states in key order, a page at a time.
pub async fn list_projection_states(
    State(state): State<AppState>,
    principal: Principal,
    ProjectionName(name): ProjectionName,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    principal.require(Role::Reader)?;
    let params = Params::parse(query.as_deref(), &["after_key", "limit"])?;
    let limit = params.limit(STATES_PAGE_DEFAULT, STATES_PAGE_MAX)?;
    let page = state
        .projections()
        .states(&name, params.get("after_key"), limit)?;
    render::json(
        StatusCode::OK,
        &StatesBody {
            states: page
                .states
                .into_iter()
                .map(|(key, state)| KeyAndState { key, state })
                .collect(),
            next_after_key: page.next_after_key,
            position: page.position,
        },
    )
}

/// `GET /v1/events/{event_id}/status`: whether every projection whose filter matches the
/// event has processed it.
pub async fn event_status(
    State(state): State<AppState>,
    principal: Principal,
    EventIdPath(event_id): EventIdPath,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    principal.require(Role::Reader)?;
    Params::parse(query.as_deref(), &[])?;
    let event = state.store.get_event(event_id).await?;
    if !principal.can_see(event.aggregate_id()) {
        // As if it did not exist, like `GET /v1/events/{id}`.
        return Err(StoreError::EventNotFound { event_id }.into());
    }
    let projections = state.projections().event_status(&event);
    render::json(
        StatusCode::OK,
        &EventStatusBody {
            event_id,
            position: event.position(),
            materialized: projections.values().all(|done| *done),
            projections,
        },
    )
}

/// The time a `Retry-After` suggests after `not_yet_materialized`, in seconds.
pub const RETRY_AFTER_SECONDS: u64 = 1;
