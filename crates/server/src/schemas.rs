//! The schema registry's endpoints: register and read JSON Schemas per event type and version,
//! and the upcasters between versions.
//!
//! Admins register, readers read (the contract: admins manage schemas). Registering writes to disk,
//! so it runs on the blocking pool.

use axum::extract::{FromRequest, FromRequestParts, RawQuery, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::Response;
use factstore_core::append::validate_identifier;
use factstore_schemas::{EventTypeSummary, SchemaError, UpcasterDef, UpcasterView};
use serde::Serialize;
use serde_json::Value;

use crate::AppState;
use crate::auth::{Admin, Principal, Role};
use crate::error::ApiError;
use crate::extract::{JsonBody, Params, path_segment};
use crate::render;

/// The `{event_type}` of `/v1/schemas/{event_type}…` and `/v1/upcasters/{event_type}…`.
#[derive(Debug)]
pub struct EventTypePath(pub String);

impl FromRequestParts<AppState> for EventTypePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let event_type = path_segment(parts, 3, "event_type")?;
        validate_identifier(
            "event_type",
            &event_type,
            state.store.limits().event_type_bytes_max,
        )?;
        Ok(EventTypePath(event_type))
    }
}

/// A schema version in the path: `{version}` of `/v1/schemas/{event_type}/versions/{version}`
/// (segment 5) or `{from_version}` of `/v1/upcasters/{event_type}/{from_version}` (segment 4).
#[derive(Debug)]
pub struct VersionPath<const SEGMENT: usize>(pub u32);

impl<const SEGMENT: usize> FromRequestParts<AppState> for VersionPath<SEGMENT> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &AppState) -> Result<Self, ApiError> {
        let name = if SEGMENT == 5 { "version" } else { "from_version" };
        let text = path_segment(parts, SEGMENT, name)?;
        match text.parse::<u32>() {
            Ok(version) if (1..=i32::MAX as u32).contains(&version) => Ok(VersionPath(version)),
            _ => Err(ApiError::invalid(format!(
                "{name} in the path must be an integer from 1 to {}, got '{text}'",
                i32::MAX
            ))),
        }
    }
}

/// The answer to a schema registration.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SchemaPutResponse {
    event_type: String,
    /// The version registered.
    #[schema(minimum = 1, maximum = 2147483647)]
    version: u32,
    /// The newest registered version of the event type.
    #[schema(minimum = 1, maximum = 2147483647)]
    latest_version: u32,
}

/// `{"schemas": [...]}`
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SchemaList {
    /// Every event type with a registered schema, by name.
    schemas: Vec<EventTypeSummary>,
}

/// `{"upcasters": [...]}`
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpcasterList {
    /// By event type, then by the version they upcast from.
    upcasters: Vec<UpcasterView>,
}

/// Runs a registry change on the blocking pool (it syncs to disk).
async fn change<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, SchemaError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::Store(factstore_core::StoreError::Internal(e.to_string())))?
        .map_err(ApiError::Schema)
}

/// `PUT /v1/schemas/{event_type}/versions/{version}`
pub async fn put_schema(
    State(state): State<AppState>,
    Admin(_): Admin,
    EventTypePath(event_type): EventTypePath,
    VersionPath(version): VersionPath<5>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Result<Response, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    let JsonBody(schema) = JsonBody::<Value>::from_request(request, &state).await?;
    let registry = state.schemas.clone();
    let limits = state.store.limits().clone();
    let name = event_type.clone();
    let created = change(move || registry.put_schema(&name, version, schema, &limits)).await?;
    let latest_version = state
        .schemas
        .get(&event_type)
        .map_err(ApiError::Schema)?
        .latest_version;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    render::json(
        status,
        &SchemaPutResponse {
            event_type,
            version,
            latest_version,
        },
    )
}

/// `GET /v1/schemas`
pub async fn list_schemas(
    State(state): State<AppState>,
    principal: Principal,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    principal.require(Role::Reader)?;
    Params::parse(query.as_deref(), &[])?;
    render::json(
        StatusCode::OK,
        &SchemaList {
            schemas: state.schemas.list(),
        },
    )
}

/// `GET /v1/schemas/{event_type}`
pub async fn get_schema(
    State(state): State<AppState>,
    principal: Principal,
    EventTypePath(event_type): EventTypePath,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    principal.require(Role::Reader)?;
    Params::parse(query.as_deref(), &[])?;
    let schemas = state.schemas.get(&event_type).map_err(ApiError::Schema)?;
    render::json(StatusCode::OK, &schemas)
}

/// `PUT /v1/upcasters/{event_type}/{from_version}`
pub async fn put_upcaster(
    State(state): State<AppState>,
    Admin(_): Admin,
    EventTypePath(event_type): EventTypePath,
    VersionPath(from_version): VersionPath<4>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Result<Response, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    let JsonBody(def) = JsonBody::<UpcasterDef>::from_request(request, &state).await?;
    let registry = state.schemas.clone();
    let limits = state.store.limits().clone();
    let name = event_type.clone();
    let created = change(move || registry.put_upcaster(&name, from_version, def, &limits)).await?;
    let view = state
        .schemas
        .upcasters(Some(&event_type))
        .into_iter()
        .find(|u| u.from_version == from_version)
        .ok_or_else(|| {
            ApiError::Store(factstore_core::StoreError::Internal(
                "a registered upcaster is missing from the registry".to_owned(),
            ))
        })?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    render::json(status, &view)
}

/// `GET /v1/upcasters`
pub async fn list_upcasters(
    State(state): State<AppState>,
    principal: Principal,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    principal.require(Role::Reader)?;
    Params::parse(query.as_deref(), &[])?;
    render::json(
        StatusCode::OK,
        &UpcasterList {
            upcasters: state.schemas.upcasters(None),
        },
    )
}

/// `GET /v1/upcasters/{event_type}`: an empty list when the type has none.
pub async fn list_upcasters_of(
    State(state): State<AppState>,
    principal: Principal,
    EventTypePath(event_type): EventTypePath,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    principal.require(Role::Reader)?;
    Params::parse(query.as_deref(), &[])?;
    render::json(
        StatusCode::OK,
        &UpcasterList {
            upcasters: state.schemas.upcasters(Some(&event_type)),
        },
    )
}
