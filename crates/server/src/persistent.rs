//! Persistent subscriptions (`/v1/subscriptions`): consumer groups with leases, ACK/NACK,
//! redelivery and parking, over [`factstore_subscriptions::Subscriptions`].
//!
//! Who may do what: admins create, replace and delete groups and replay parked events;
//! readers (and so writers and admins) list groups, read their status and parked events, and
//! poll, ack and nack. A token limited to aggregate id prefixes gets 403 on every route here,
//! before any handler (`auth::whole_store_reason`): a group's events are not limited to the
//! token's aggregates, and two consumers with different limits could not share one group's
//! checkpoint.
//!
//! Bodies and parameters are validated before the group is looked up.

use std::io::Write as _;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, RawQuery, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::Response;
use factstore_subscriptions::registry::PutOutcome;
use factstore_subscriptions::{GroupDefinition, GroupStatus, validate_group_name};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::auth::{Principal, Role};
use crate::error::ApiError;
use crate::extract::{JsonBody, Params, parse_json, path_segment};
use crate::render;

/// Most events one poll may ask for.
pub const POLL_MAX: usize = 10_000;
/// Events a poll asks for when it does not say.
pub const POLL_DEFAULT: usize = 100;
/// Longest long poll.
pub const WAIT_MS_MAX: u64 = 60_000;
/// Most positions in one ack, nack or replay.
pub const POSITIONS_MAX: usize = 10_000;
/// Longest consumer name, in bytes.
pub const CONSUMER_BYTES_MAX: usize = 255;
/// Default and largest page of parked events.
pub const PARKED_PAGE_DEFAULT: usize = 100;
pub const PARKED_PAGE_MAX: usize = 1_000;
/// Most parked events one replay puts back when it names none.
pub const REPLAY_DEFAULT: usize = 1_000;

/// The `{group}` of `/v1/subscriptions/{group}/…`, decoded and validated.
#[derive(Debug)]
pub struct GroupPath(pub String);

impl FromRequestParts<AppState> for GroupPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &AppState) -> Result<Self, ApiError> {
        let name = path_segment(parts, 3, "group")?;
        validate_group_name(&name)?;
        Ok(GroupPath(name))
    }
}

/// The group of the path and the rest of the request, taken apart only after the caller has
/// checked the token, so that a refused token is 403 whatever the path and body hold.
async fn group_of(state: &AppState, request: Request) -> Result<(String, Request), ApiError> {
    let (mut parts, body) = request.into_parts();
    let GroupPath(group) = GroupPath::from_request_parts(&mut parts, state).await?;
    Ok((group, Request::from_parts(parts, body)))
}

/// The group of the path and the JSON body, after the token was checked (see [`group_of`]).
async fn group_and_body<T: serde::de::DeserializeOwned>(
    state: &AppState,
    request: Request,
) -> Result<(String, T), ApiError> {
    let (group, request) = group_of(state, request).await?;
    let JsonBody(body) = JsonBody::<T>::from_request(request, state).await?;
    Ok((group, body))
}

/// `{"subscriptions": [...]}`
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct GroupList {
    /// Every group, by name.
    subscriptions: Vec<GroupStatus>,
}

/// The body of a poll.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PollBody {
    /// Who asks: the events are leased to it. 1 to 255 bytes, no control characters.
    #[schema(pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$")]
    consumer: String,
    /// Most events to return: 1 to 10000.
    #[serde(default = "poll_default")]
    #[schema(minimum = 1, maximum = 10000, default = 100)]
    max: usize,
    /// How long to wait for a first event when none is ready, in milliseconds (0 to 60000):
    /// a long poll. 0 (the default) answers at once.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 60000, default = 0)]
    wait_ms: u64,
}

fn poll_default() -> usize {
    POLL_DEFAULT
}

/// The body of an ack.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AckBody {
    /// The positions of the events processed: 1 to 10000 of them.
    #[schema(min_items = 1, max_items = 10000)]
    positions: Vec<u64>,
}

/// The body of a nack.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NackBody {
    /// The positions of the events given back: 1 to 10000 of them.
    #[schema(min_items = 1, max_items = 10000)]
    positions: Vec<u64>,
    /// Park them (dead-letter) at once instead of delivering them again.
    #[serde(default)]
    park: bool,
}

/// The body of a replay; every field optional, `null` meaning absent (an empty or `null` body
/// replays the lowest 1000).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReplayBody {
    /// The parked positions to replay (each must be parked); all of them (up to `limit`)
    /// when absent. 1 to 10000 of them.
    #[schema(min_items = 1, max_items = 10000)]
    positions: Option<Vec<u64>>,
    /// Without `positions`: how many parked events to replay, lowest positions first (1 to
    /// 10000, default 1000).
    #[schema(minimum = 1, maximum = 10000)]
    limit: Option<usize>,
}

/// The answer to a replay.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReplayResponse {
    /// Events put back into delivery.
    replayed: usize,
    /// Events still parked.
    parked: usize,
}

fn check_positions(positions: &[u64]) -> Result<(), ApiError> {
    if positions.is_empty() || positions.len() > POSITIONS_MAX {
        return Err(ApiError::invalid(format!(
            "positions must list 1 to {POSITIONS_MAX} positions, not {}",
            positions.len()
        )));
    }
    Ok(())
}

/// `GET /v1/subscriptions`
pub async fn list_groups(
    State(state): State<AppState>,
    principal: Principal,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    principal.require(Role::Reader)?;
    Params::parse(query.as_deref(), &[])?;
    render::json(
        StatusCode::OK,
        &GroupList {
            subscriptions: state.subscriptions().list(),
        },
    )
}

/// `PUT /v1/subscriptions/{group}`
pub async fn put_group(
    State(state): State<AppState>,
    principal: Principal,
    RawQuery(query): RawQuery,
    request: Request,
) -> Result<Response, ApiError> {
    principal.require(Role::Admin)?;
    Params::parse(query.as_deref(), &[])?;
    let (group, definition) = group_and_body::<GroupDefinition>(&state, request).await?;
    let (outcome, status) = state.subscriptions().put(&group, definition).await?;
    let code = match outcome {
        PutOutcome::Created => StatusCode::CREATED,
        PutOutcome::Replaced | PutOutcome::Unchanged => StatusCode::OK,
    };
    render::json(code, &status)
}

/// `GET /v1/subscriptions/{group}`
pub async fn get_group(
    State(state): State<AppState>,
    principal: Principal,
    RawQuery(query): RawQuery,
    GroupPath(group): GroupPath,
) -> Result<Response, ApiError> {
    principal.require(Role::Reader)?;
    Params::parse(query.as_deref(), &[])?;
    render::json(StatusCode::OK, &state.subscriptions().status(&group)?)
}

/// `DELETE /v1/subscriptions/{group}`
pub async fn delete_group(
    State(state): State<AppState>,
    principal: Principal,
    RawQuery(query): RawQuery,
    GroupPath(group): GroupPath,
) -> Result<Response, ApiError> {
    principal.require(Role::Admin)?;
    Params::parse(query.as_deref(), &[])?;
    state.subscriptions().delete(&group).await?;
    Ok(no_content())
}

fn no_content() -> Response {
    let mut response = Response::new(axum::body::Body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

/// `POST /v1/subscriptions/{group}/poll`
pub async fn poll(
    State(state): State<AppState>,
    principal: Principal,
    RawQuery(query): RawQuery,
    request: Request,
) -> Result<Response, ApiError> {
    principal.require(Role::Reader)?;
    Params::parse(query.as_deref(), &[])?;
    let (group, body) = group_and_body::<PollBody>(&state, request).await?;
    if body.consumer.is_empty()
        || body.consumer.len() > CONSUMER_BYTES_MAX
        || body.consumer.chars().any(char::is_control)
    {
        return Err(ApiError::invalid(format!(
            "consumer must be 1 to {CONSUMER_BYTES_MAX} bytes without control characters"
        )));
    }
    if !(1..=POLL_MAX).contains(&body.max) {
        return Err(ApiError::invalid(format!(
            "max must be between 1 and {POLL_MAX}, not {}",
            body.max
        )));
    }
    if body.wait_ms > WAIT_MS_MAX {
        return Err(ApiError::invalid(format!(
            "wait_ms must be between 0 and {WAIT_MS_MAX}, not {}",
            body.wait_ms
        )));
    }
    // A server that begins to stop ends long polls, so that the drain is quick.
    let wait = Duration::from_millis(body.wait_ms);
    let subscriptions = state.subscriptions();
    let deliveries = tokio::select! {
        result = subscriptions.poll(&group, &body.consumer, body.max, wait) => result?,
        () = state.shutdown.cancelled() => Vec::new(),
    };
    // Rendered a chunk at a time: a client that does not read holds one chunk, not 10,000
    // events of JSON.
    Ok(crate::chunked::deliveries(
        deliveries,
        state.budget.bodies.clone(),
    ))
}

/// An event's own JSON with `"attempt": n` added before its closing brace, so no event is
/// parsed or rebuilt.
pub(crate) fn write_with_attempt(
    out: &mut Vec<u8>,
    event: &factstore_core::Event,
    attempt: u32,
    numbers: &mut itoa::Buffer,
) {
    event.write_json(out);
    // `write_json` writes one JSON object: its last byte is the closing brace.
    debug_assert_eq!(out.last(), Some(&b'}'));
    out.pop();
    out.extend_from_slice(b",\"attempt\":");
    out.extend_from_slice(numbers.format(attempt).as_bytes());
    out.push(b'}');
}

/// `POST /v1/subscriptions/{group}/ack`
pub async fn ack(
    State(state): State<AppState>,
    principal: Principal,
    RawQuery(query): RawQuery,
    request: Request,
) -> Result<Response, ApiError> {
    principal.require(Role::Reader)?;
    Params::parse(query.as_deref(), &[])?;
    let (group, body) = group_and_body::<AckBody>(&state, request).await?;
    check_positions(&body.positions)?;
    state.subscriptions().ack(&group, &body.positions).await?;
    Ok(no_content())
}

/// `POST /v1/subscriptions/{group}/nack`
pub async fn nack(
    State(state): State<AppState>,
    principal: Principal,
    RawQuery(query): RawQuery,
    request: Request,
) -> Result<Response, ApiError> {
    principal.require(Role::Reader)?;
    Params::parse(query.as_deref(), &[])?;
    let (group, body) = group_and_body::<NackBody>(&state, request).await?;
    check_positions(&body.positions)?;
    state
        .subscriptions()
        .nack(&group, &body.positions, body.park)
        .await?;
    Ok(no_content())
}

/// `GET /v1/subscriptions/{group}/parked`
pub async fn list_parked(
    State(state): State<AppState>,
    principal: Principal,
    RawQuery(query): RawQuery,
    GroupPath(group): GroupPath,
) -> Result<Response, ApiError> {
    principal.require(Role::Reader)?;
    let params = Params::parse(query.as_deref(), &["after_position", "limit"])?;
    let after = params.u64("after_position")?.unwrap_or(0);
    let limit = params.limit(PARKED_PAGE_DEFAULT, PARKED_PAGE_MAX)?;
    let (events, next) = state.subscriptions().parked(&group, after, limit).await?;
    let mut out = Vec::with_capacity(
        events
            .iter()
            .map(|e| e.event.as_bytes().len() + 280)
            .sum::<usize>()
            + 64,
    );
    let mut numbers = itoa::Buffer::new();
    out.extend_from_slice(b"{\"events\":[");
    for (i, parked) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_with_attempt(&mut out, &parked.event, parked.attempts, &mut numbers);
    }
    out.extend_from_slice(b"],\"next_after_position\":");
    match next {
        // Writing to a Vec cannot fail.
        Some(next) => {
            let _ = write!(out, "{next}");
        }
        None => out.extend_from_slice(b"null"),
    }
    out.push(b'}');
    Ok(render::json_bytes(StatusCode::OK, out))
}

/// `POST /v1/subscriptions/{group}/parked/replay`
pub async fn replay_parked(
    State(state): State<AppState>,
    principal: Principal,
    RawQuery(query): RawQuery,
    request: Request,
) -> Result<Response, ApiError> {
    principal.require(Role::Admin)?;
    Params::parse(query.as_deref(), &[])?;
    let (group, request) = group_of(&state, request).await?;
    // An empty body means "replay what is parked".
    let bytes = Bytes::from_request(request, &state)
        .await
        .map_err(|e| ApiError::invalid(format!("could not read the request body: {e}")))?;
    // An empty body, `null`, and fields that are `null` all mean "absent".
    let body: ReplayBody = if bytes.iter().all(u8::is_ascii_whitespace) {
        ReplayBody::default()
    } else {
        parse_json::<Option<ReplayBody>>(&bytes)?.unwrap_or_default()
    };
    if let Some(positions) = &body.positions {
        check_positions(positions)?;
    }
    let limit = body.limit.unwrap_or(REPLAY_DEFAULT);
    if !(1..=POSITIONS_MAX).contains(&limit) {
        return Err(ApiError::invalid(format!(
            "limit must be between 1 and {POSITIONS_MAX}, not {limit}"
        )));
    }
    let replayed = state
        .subscriptions()
        .replay(&group, body.positions.as_deref(), limit)
        .await?;
    let parked = state.subscriptions().status(&group)?.parked;
    render::json(StatusCode::OK, &ReplayResponse { replayed, parked })
}
