//! Administration: archiving to cold storage and where the store's bytes are.
//!
//! Both need the admin role: archiving is an administrator's decision (the contract), and the
//! storage numbers describe the whole store, which a token limited to aggregate prefixes must
//! not see (`auth::whole_store_reason` refuses it both routes before they run).

use axum::extract::{FromRequest, RawQuery, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use factstore_core::Timestamp;
use factstore_core::time::Bound;
use serde::Deserialize;

use crate::AppState;
use crate::auth::Admin;
use crate::error::ApiError;
use crate::extract::{JsonBody, Params};
use crate::render;

/// The body of `POST /v1/admin/archive`. `before`: events recorded before this time
/// (exclusive) are archived: an RFC 3339 time, or a date `YYYY-MM-DD` meaning the start of that
/// day (UTC).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ArchiveBody {
    // Described on the struct: utoipa would wrap a described field's schema in an `allOf`
    // with `type: object`, which no string passes.
    #[schema(schema_with = crate::openapi::time_or_date)]
    before: String,
}

/// `POST /v1/admin/archive`: archives, and answers once done.
pub async fn archive(
    State(state): State<AppState>,
    Admin(_): Admin,
    RawQuery(query): RawQuery,
    request: Request,
) -> Result<Response, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    let JsonBody(body) = JsonBody::<ArchiveBody>::from_request(request, &state).await?;
    let before = Timestamp::parse_bound(&body.before, Bound::Lower)
        .map_err(|e| ApiError::invalid(format!("before: {e}; give an RFC 3339 time or a date YYYY-MM-DD")))?;
    let outcome = state.raw_store.archive(before).await?;
    render::json(StatusCode::OK, &outcome)
}

/// `GET /v1/admin/storage`
pub async fn storage(
    State(state): State<AppState>,
    Admin(_): Admin,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    let stats = state.raw_store.storage().await?;
    render::json(StatusCode::OK, &stats)
}
