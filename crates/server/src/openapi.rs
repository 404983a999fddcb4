//! The OpenAPI 3.1 document of the API, built from the code once and served by
//! `GET /v1/openapi.json`.
//!
//! # Where each part comes from
//! - Bodies that serde reads or writes derive their schemas: [`AppendBody`], the answer to
//!   an append and to a snapshot put here, `Commit`, `NewEvent`, `CommitOutcome`, `Head`,
//!   `PutSnapshot`, `SnapshotInfo`, … in `factstore-core`
//!   (its `openapi` feature), so they cannot drift from the code.
//! - Bodies written by hand (events, pages, errors, the subscription's messages) are described
//!   by the schema types of [`schemas`], each naming the function that writes it. They are
//!   closed (`additionalProperties: false`, every field required), and `tests/openapi.rs`
//!   validates real responses against them, so a field added, renamed or removed on one side
//!   alone fails there.
//! - The query parameters are the [`params`] types; `tests/openapi.rs` checks that each
//!   operation documents exactly the names its handler accepts.
//! - Errors: [`ErrorCode`] lists every code with its status; each operation declares the codes
//!   it can answer (the body of its declaration below), and [`build`] turns them into one
//!   response per status, whose schema narrows `error.code` to those codes.
//!
//! The declarations are functions annotated with `#[utoipa::path]` that are never routed:
//! they describe the real handlers (of the same name) without touching their files.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::LazyLock;

use axum::body::Bytes;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use factstore_core::{ArchiveOutcome, Commit, CommitOutcome, Head, PutSnapshot, StorageStats, StoreError};
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{AllOfBuilder, ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr};
use utoipa::{OpenApi, PartialSchema, ToSchema};

use crate::admin::ArchiveBody;
use crate::append::{AppendBody, AppendResponse};
use crate::backup::{BackupBody, BackupOutcome};
use crate::error::ApiError;
use crate::persistent::{AckBody, GroupList, NackBody, PollBody, ReplayBody, ReplayResponse};
use crate::schemas::{SchemaList, SchemaPutResponse, UpcasterList};
use crate::snapshots::{SnapshotList, SnapshotPutResponse};
use factstore_schemas::{EventTypeSchemas, UpcasterDef, UpcasterView};
use factstore_subscriptions::{GroupDefinition, GroupStatus};
use params::ParkedParams;
use params::{
    AggregateReadParams, EventPageParams, FilterParams, LatestSnapshotParams, RawParam, StateParams,
    StatesPageParams, SubscribeParams, TimeParams,
};
use schemas::{
    AggregateLoad, AggregatePage, Deliveries, ErrorBody, Event, EventPage, EventStatus, Health, KeyState,
    ParkedPage, ProjectionBody, ProjectionList, ProjectionStatus, Snapshot, StatePage, StreamError,
    StreamPosition, StreamShutdown,
};

/// `GET /v1/openapi.json`: the document, built on first use.
pub async fn serve_document() -> Response {
    match &*DOCUMENT {
        Ok(bytes) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            bytes.clone(),
        )
            .into_response(),
        Err(problem) => ApiError::Store(StoreError::Internal(format!(
            "building the OpenAPI document: {problem}"
        )))
        .into_response(),
    }
}

static DOCUMENT: LazyLock<Result<Bytes, String>> =
    LazyLock::new(|| build().and_then(|doc| doc.to_json().map(Bytes::from).map_err(|e| e.to_string())));

/// Every error code the API answers with, and its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    AggregateNotFound,
    EventNotFound,
    SnapshotNotFound,
    MethodNotAllowed,
    WrongExpectedVersion,
    ConditionFailed,
    DuplicateEventId,
    AggregateTypeMismatch,
    PayloadTooLarge,
    UnsupportedMediaType,
    InvalidSnapshot,
    SchemaViolation,
    SchemaNotFound,
    SchemaExists,
    IncompatibleSchema,
    SchemaVersionMissing,
    SubscriptionNotFound,
    ProjectionNotFound,
    KeyNotFound,
    InvalidProjection,
    NotYetMaterialized,
    Internal,
    StoreUnavailable,
    ArchiveNotConfigured,
    BackupNotSupported,
    BackupTargetNotEmpty,
    BackupFailed,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 31] = [
        ErrorCode::InvalidRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::AggregateNotFound,
        ErrorCode::EventNotFound,
        ErrorCode::SnapshotNotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::WrongExpectedVersion,
        ErrorCode::ConditionFailed,
        ErrorCode::DuplicateEventId,
        ErrorCode::AggregateTypeMismatch,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::InvalidSnapshot,
        ErrorCode::SchemaViolation,
        ErrorCode::SchemaNotFound,
        ErrorCode::SchemaExists,
        ErrorCode::IncompatibleSchema,
        ErrorCode::SchemaVersionMissing,
        ErrorCode::SubscriptionNotFound,
        ErrorCode::ProjectionNotFound,
        ErrorCode::KeyNotFound,
        ErrorCode::InvalidProjection,
        ErrorCode::NotYetMaterialized,
        ErrorCode::Internal,
        ErrorCode::StoreUnavailable,
        ErrorCode::ArchiveNotConfigured,
        ErrorCode::BackupNotSupported,
        ErrorCode::BackupTargetNotEmpty,
        ErrorCode::BackupFailed,
    ];

    /// The `error.code` of the body.
    pub fn code(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AggregateNotFound => "aggregate_not_found",
            ErrorCode::EventNotFound => "event_not_found",
            ErrorCode::SnapshotNotFound => "snapshot_not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::WrongExpectedVersion => "wrong_expected_version",
            ErrorCode::ConditionFailed => "condition_failed",
            ErrorCode::DuplicateEventId => "duplicate_event_id",
            ErrorCode::AggregateTypeMismatch => "aggregate_type_mismatch",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::InvalidSnapshot => "invalid_snapshot",
            ErrorCode::SchemaViolation => "schema_violation",
            ErrorCode::SchemaNotFound => "schema_not_found",
            ErrorCode::SchemaExists => "schema_exists",
            ErrorCode::IncompatibleSchema => "incompatible_schema",
            ErrorCode::SchemaVersionMissing => "schema_version_missing",
            ErrorCode::SubscriptionNotFound => "subscription_not_found",
            ErrorCode::ProjectionNotFound => "projection_not_found",
            ErrorCode::KeyNotFound => "key_not_found",
            ErrorCode::InvalidProjection => "invalid_projection",
            ErrorCode::NotYetMaterialized => "not_yet_materialized",
            ErrorCode::Internal => "internal",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::ArchiveNotConfigured => "archive_not_configured",
            ErrorCode::BackupNotSupported => "backup_not_supported",
            ErrorCode::BackupTargetNotEmpty => "backup_target_not_empty",
            ErrorCode::BackupFailed => "backup_failed",
        }
    }

    /// The status `ApiError` answers this code with (a unit test holds them together).
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::InvalidRequest => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound
            | ErrorCode::AggregateNotFound
            | ErrorCode::EventNotFound
            | ErrorCode::SnapshotNotFound
            | ErrorCode::SchemaNotFound
            | ErrorCode::SubscriptionNotFound
            | ErrorCode::ProjectionNotFound
            | ErrorCode::KeyNotFound => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::WrongExpectedVersion
            | ErrorCode::ConditionFailed
            | ErrorCode::DuplicateEventId
            | ErrorCode::AggregateTypeMismatch
            | ErrorCode::SchemaExists
            | ErrorCode::IncompatibleSchema
            | ErrorCode::SchemaVersionMissing
            | ErrorCode::ArchiveNotConfigured
            | ErrorCode::BackupNotSupported
            | ErrorCode::BackupTargetNotEmpty => StatusCode::CONFLICT,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::InvalidSnapshot | ErrorCode::SchemaViolation | ErrorCode::InvalidProjection => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ErrorCode::NotYetMaterialized => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal | ErrorCode::BackupFailed => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// When it is answered, for the response descriptions.
    fn meaning(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => {
                "a malformed body (bad JSON, a wrong type, an unknown field), a bad or unknown \
                 query parameter, a bad path segment, or a value outside its limits; the \
                 message names the problem"
            }
            ErrorCode::Unauthorized => {
                "the server runs with `--auth` and the request has no valid bearer token"
            }
            ErrorCode::Forbidden => "the token's role or aggregate id prefixes do not allow this request",
            ErrorCode::NotFound => "no route has this path",
            ErrorCode::AggregateNotFound => "the aggregate has no events (`aggregate_id`)",
            ErrorCode::EventNotFound => "no event has this id (`event_id`)",
            ErrorCode::SnapshotNotFound => {
                "the aggregate has no snapshot (at or below `max_version`, when given) \
                 (`aggregate_id`, `max_version`)"
            }
            ErrorCode::MethodNotAllowed => "the path exists but not with this method",
            ErrorCode::WrongExpectedVersion => {
                "an aggregate is not at its `expected_version` (`aggregate_id`, \
                 `expected_version`, `current_version`); nothing was written"
            }
            ErrorCode::ConditionFailed => {
                "an event matching the condition's filter exists after its `after_position` \
                 (`after_position`, `conflicting_position`); nothing was written"
            }
            ErrorCode::DuplicateEventId => {
                "an `event_id` of the request is already stored and the request is not an exact \
                 retry (`event_id`: the first such id); nothing was written"
            }
            ErrorCode::AggregateTypeMismatch => {
                "the aggregate exists with another `aggregate_type` (`aggregate_id`, `existing`, \
                 `given`); nothing was written"
            }
            ErrorCode::PayloadTooLarge => {
                "the body, an event's `event_data` + `metadata`, or the number of events is over \
                 its limit (16 MiB, 1 MiB and 1000 by default); the message names the limit"
            }
            ErrorCode::UnsupportedMediaType => {
                "the body has a `Content-Type` other than `application/json` (none at all is \
                 read as JSON)"
            }
            ErrorCode::InvalidSnapshot => {
                "the aggregate has no event at the snapshot's `version` (`aggregate_id`, \
                 `version`, `current_version`: 0 when it has no events); nothing was stored"
            }
            ErrorCode::SubscriptionNotFound => "no persistent-subscription group has this name (`group`)",
            ErrorCode::SchemaViolation => {
                "events do not match the JSON Schema registered for their `event_type` and \
                 `event_version` (`violations`: every failing field of every such event, each \
                 with `event_index`, `aggregate_id`, `event_type`, `event_version`, `path`, \
                 `message`); nothing was written"
            }
            ErrorCode::SchemaNotFound => "no schema is registered for the event type (`event_type`)",
            ErrorCode::SchemaExists => {
                "the version is registered with a different schema; registered schemas never \
                 change (`event_type`, `version`)"
            }
            ErrorCode::IncompatibleSchema => {
                "the schema is not backward compatible with the previous version (a property \
                 removed or retyped, or a required one added) (`event_type`, `version`, `reason`)"
            }
            ErrorCode::SchemaVersionMissing => {
                "version n > 1 is checked against version n − 1, which is not registered: \
                 register the versions in order (`event_type`, `version`)"
            }
            ErrorCode::ProjectionNotFound => "no projection has this name (`projection`)",
            ErrorCode::KeyNotFound => {
                "the projection has no state under this key: no event of the key was folded (or, \
                 with time travel, none up to that time) (`projection`, `key`)"
            }
            ErrorCode::InvalidProjection => {
                "the definition cannot work (an unknown key or operation, a JSON Pointer that does \
                 not parse or does not point into the event, an operand of the wrong type); the \
                 message names the field. With `source=event_store` or time travel: an event \
                 cannot be folded by the definition"
            }
            ErrorCode::NotYetMaterialized => {
                "the projection had not passed `min_position` within `wait_ms` (`projection`, \
                 `position`: where it is, `min_position`); the `Retry-After` header says when \
                 to ask again"
            }
            ErrorCode::Internal => "a fault in the server or the store; the server log has the details",
            ErrorCode::StoreUnavailable => {
                "the store cannot write safely (a failed fsync, a full disk) or is shutting down; \
                 nothing was written, and reads go on. For a persistent subscription: its journal \
                 failed a write or sync, and the group refuses polls and changes until the server \
                 restarts"
            }
            ErrorCode::ArchiveNotConfigured => {
                "the server runs without cold storage: start it with `--archive-url`"
            }
            ErrorCode::BackupNotSupported => {
                "the server cannot make backups: it runs on PostgreSQL (back up the database \
                 with `pg_dump`) or over a store in memory"
            }
            ErrorCode::BackupTargetNotEmpty => {
                "the folder exists and holds something (`to`); nothing was written"
            }
            ErrorCode::BackupFailed => {
                "reading the store or writing the copy failed (`to`; the message says why): the \
                 folder holds an incomplete copy without `BACKUP_COMPLETE`, which no restore \
                 takes; remove it before trying again"
            }
        }
    }
}

impl PartialSchema for ErrorCode {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(ErrorCode::ALL.map(ErrorCode::code)))
            .description(Some(
                "What went wrong, for programs. Each operation lists the codes it can answer.",
            ))
            .into()
    }
}

impl ToSchema for ErrorCode {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("ErrorCode")
    }
}

/// A time parameter: an RFC 3339 time, or a date `YYYY-MM-DD` (the start or the end of that
/// day, as the parameter says).
pub(crate) struct TimeOrDate;

impl utoipa::PartialSchema for TimeOrDate {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        time_or_date()
    }
}

impl utoipa::ToSchema for TimeOrDate {}

/// The schema of [`TimeOrDate`], for `schema_with`.
pub(crate) fn time_or_date() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{AnyOfBuilder, KnownFormat, SchemaFormat};
    let format = |known| {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(known)))
    };
    AnyOfBuilder::new()
        .item(format(KnownFormat::DateTime))
        .item(format(KnownFormat::Date))
        .into()
}

/// One message of `GET /v1/subscribe` as an SSE parser reads it: its `event`, `id` and
/// `data` fields. In OpenAPI 3.1 the schema of `text/event-stream` describes each message;
/// `data` is JSON text whose schema (`contentSchema`) depends on the `event`. `shutdown` and
/// `error` carry no `id:` line (a parser may still report the last one seen).
pub(crate) struct StreamMessage;

impl PartialSchema for StreamMessage {
    fn schema() -> RefOr<Schema> {
        let message = |events: &[&'static str], data: &str, with_id: bool| {
            let mut object = ObjectBuilder::new()
                .schema_type(Type::Object)
                .property(
                    "event",
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .enum_values(Some(events.to_vec())),
                )
                .property(
                    "id",
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .pattern(Some("^[0-9]+$"))
                        .description(Some("A position: resume after it with `Last-Event-ID`.")),
                )
                .property(
                    "data",
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .content_media_type("application/json")
                        .content_schema(Some(Ref::from_schema_name(data))),
                )
                .required("event")
                .required("data");
            if with_id {
                object = object.required("id");
            }
            object
        };
        utoipa::openapi::schema::OneOfBuilder::new()
            .item(message(&["event"], "Event", true))
            .item(message(&["caught_up", "checkpoint"], "StreamPosition", true))
            .item(message(&["shutdown"], "StreamShutdown", false))
            .item(message(&["error"], "StreamError", false))
            .into()
    }
}

impl ToSchema for StreamMessage {}

/// The API's description: the conventions every operation follows.
const DESCRIPTION: &str = "\
The HTTP API of factstore, an event store: immutable events, appended with optimistic \
concurrency to aggregates, read by aggregate or in global order, and followed live.

- Bodies are JSON (UTF-8). Times in responses are RFC 3339 in UTC with microseconds; inputs take \
any RFC 3339 time, and time query parameters also take a date `YYYY-MM-DD` (the start of that day \
as a lower bound, its end as an upper bound).
- Everything is validated before anything is looked up: a bad parameter is 400 even for an \
aggregate that does not exist. Unknown query parameters, and a parameter given twice, are 400 \
rather than ignored. Limits are in bytes of UTF-8 and are the defaults of the store. Positions \
and versions are at most 2^63−1 (9223372036854775807) everywhere, as PostgreSQL keeps them. In \
bodies an integer field takes any JSON number with a zero fraction (`2.0` is 2), as JSON Schema \
reads `integer`.
- Path segments are percent-decoded: `account:ACC-001` and `account%3AACC-001` are one id.
- Every error is `{\"error\": {\"code\", \"message\", ...details}}` (the `Error` schema). Besides \
the responses listed per operation, any unknown path is 404 `not_found` and a known path with \
another method is 405 `method_not_allowed`.
- With `--auth`, requests carry `Authorization: Bearer <token>` (401 `unauthorized` without a valid \
one, 403 `forbidden` outside its role or aggregate prefixes); `/health` and this document need no \
token.";

/// Builds the document: the declarations below, then errors and security per operation.
pub fn build() -> Result<utoipa::openapi::OpenApi, String> {
    let mut doc = ApiDoc::openapi();
    doc.info.title = "factstore".to_owned();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc.info.description = Some(DESCRIPTION.to_owned());
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        BEARER,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "A token of the server's `--auth` file. Without `--auth` no token is needed.",
                ))
                .build(),
        ),
    );
    let errors: BTreeMap<&str, &[ErrorCode]> = OPERATIONS.iter().map(|(id, codes)| (*id, codes())).collect();
    for (path, item) in doc.paths.paths.iter_mut() {
        for operation in [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.delete,
            &mut item.patch,
            &mut item.head,
            &mut item.options,
            &mut item.trace,
            &mut item.query,
        ]
        .into_iter()
        .flatten()
        {
            let id = operation.operation_id.clone().unwrap_or_default();
            let codes = errors
                .get(id.as_str())
                .ok_or_else(|| format!("the operation '{id}' of {path} declares no error codes"))?;
            add_errors(operation, codes)?;
        }
    }
    Ok(doc)
}

const BEARER: &str = "bearer";

/// Adds one response per status of `codes`, and the bearer token when it can be refused.
fn add_errors(operation: &mut Operation, codes: &[ErrorCode]) -> Result<(), String> {
    let mut by_status: BTreeMap<u16, Vec<ErrorCode>> = BTreeMap::new();
    for code in codes {
        by_status.entry(code.status().as_u16()).or_default().push(*code);
    }
    for (status, codes) in by_status {
        let key = status.to_string();
        if operation.responses.responses.contains_key(&key) {
            return Err(format!("status {status} is declared twice"));
        }
        let reason = StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error");
        let mut description = format!("{reason}:\n");
        for code in &codes {
            description.push_str(&format!("\n- `{}`: {}.", code.code(), code.meaning()));
        }
        let narrowed = ObjectBuilder::new().property(
            "error",
            ObjectBuilder::new().property(
                "code",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(codes.iter().map(|c| c.code()))),
            ),
        );
        let schema = AllOfBuilder::new()
            .item(Ref::from_schema_name(ErrorBody::name()))
            .item(narrowed);
        let response = ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new().schema(Some(schema)).build(),
            )
            .build();
        operation.responses.responses.insert(key, RefOr::T(response));
    }
    if codes.contains(&ErrorCode::Unauthorized) {
        operation.security = Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
    }
    Ok(())
}

/// Declares the operations: the `#[derive(OpenApi)]` list of paths and, from the same names,
/// the table of their error codes, so that neither can miss one.
macro_rules! operations {
    ($($name:ident),* $(,)?) => {
        #[derive(OpenApi)]
        #[openapi(
            paths($($name),*),
            components(schemas(ErrorBody, ErrorCode, Event, StreamPosition, StreamShutdown, StreamError)),
            tags(
                (name = "events", description = "Append and read events."),
                (name = "stream", description = "Follow events live."),
                (name = "snapshots", description = "Cached aggregate states, and loading an aggregate."),
                (name = "schemas", description = "JSON Schemas per event type and version, and upcasters."),
                (name = "subscriptions", description = "Persistent subscriptions: consumer groups \
with leases, acks, redelivery and parking; the server keeps each group's checkpoint."),
                (name = "projections", description = "Read models: JSON states folded from the events by the server."),
                (name = "admin", description = "Archiving to cold storage, backups, and where the store's bytes are."),
                (name = "operations", description = "Health, metrics and this document."),
            )
        )]
        struct ApiDoc;

        /// Each operation id (the name of its declaration) with the error codes it answers.
        const OPERATIONS: &[(&str, fn() -> &'static [ErrorCode])] = &[$((stringify!($name), $name)),*];
    };
}

operations!(
    append_to_aggregate,
    commit,
    read_aggregate,
    read_events,
    get_event,
    head,
    put_snapshot,
    latest_snapshot,
    list_snapshots,
    load,
    put_projection,
    list_projections,
    get_projection,
    delete_projection,
    rebuild_projection,
    get_projection_state,
    list_projection_states,
    event_status,
    subscribe,
    put_schema,
    list_schemas,
    get_schema,
    put_upcaster,
    list_upcasters,
    list_upcasters_of,
    list_groups,
    put_group,
    get_group,
    delete_group,
    poll,
    ack,
    nack,
    list_parked,
    replay_parked,
    archive,
    backup,
    storage,
    health,
    metrics,
    openapi,
);

use ErrorCode::{
    AggregateNotFound, AggregateTypeMismatch, ArchiveNotConfigured, BackupFailed, BackupNotSupported,
    BackupTargetNotEmpty, ConditionFailed, DuplicateEventId, EventNotFound, Forbidden, IncompatibleSchema,
    Internal, InvalidProjection, InvalidRequest, InvalidSnapshot, KeyNotFound, NotYetMaterialized,
    PayloadTooLarge, ProjectionNotFound, SchemaExists, SchemaNotFound, SchemaVersionMissing, SchemaViolation,
    SnapshotNotFound, StoreUnavailable, SubscriptionNotFound, Unauthorized, UnsupportedMediaType,
    WrongExpectedVersion,
};

// Identifiers in paths and queries have the pattern `^[^\u0000-\u001F\u007F-\u009F]+$` (written
// out at each, as utoipa takes only literals there): not empty, no control characters (Unicode
// category Cc, what `char::is_control` finds). Their limits in bytes are in the descriptions:
// JSON Schema's `maxLength` counts characters, not bytes.

/// The path parameter of the aggregate endpoints.
const AGGREGATE_ID: &str = "The aggregate, percent-decoded: 1 to 255 bytes (by default), no \
control characters. `account:ACC-001` and `account%3AACC-001` are the same id.";

#[utoipa::path(
    post,
    path = "/v1/aggregates/{aggregate_id}/events",
    tag = "events",
    summary = "Append events to one aggregate",
    description = "Appends the events atomically at consecutive versions and positions, or none. \
The answer comes once the events are durable.\n\n\
Idempotency: when every `event_id` of the request is already stored in this aggregate, in the \
same order, at consecutive versions, with the same content (the fields the client sent), the \
append succeeds again with 200 and the original versions and positions, and writes nothing. \
This check comes before `expected_version`, so a retry succeeds although the version has moved. \
Any other overlap with stored ids is 409 `duplicate_event_id`; one id twice in one request is \
400. Takes no query parameters.",
    params(("aggregate_id" = String, Path, description = AGGREGATE_ID, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$")),
    request_body(
        content = AppendBody,
        example = json!({
            "expected_version": 2,
            "events": [{
                "aggregate_type": "Account",
                "event_type": "MoneyDeposited",
                "event_data": {"amount": 500, "currency": "USD"},
                "created_by": "user:123",
                "metadata": {"correlation_id": "corr-123"}
            }]
        })
    ),
    responses(
        (status = 201, description = "Written and durable.", body = AppendResponse),
        (status = 200, description = "An exact retry of an earlier append: nothing was written; the \
original versions and positions.", body = AppendResponse),
    )
)]
fn append_to_aggregate() -> &'static [ErrorCode] {
    &[
        InvalidRequest,
        Unauthorized,
        Forbidden,
        WrongExpectedVersion,
        DuplicateEventId,
        AggregateTypeMismatch,
        PayloadTooLarge,
        SchemaViolation,
        UnsupportedMediaType,
        Internal,
        StoreUnavailable,
    ]
}

#[utoipa::path(
    post,
    path = "/v1/events",
    tag = "events",
    summary = "Append to several aggregates in one atomic commit",
    description = "All or nothing: every `expected_version` must hold and, with a `condition`, no \
event matching its filter may exist after its `after_position`. The events take consecutive \
positions in the order given. An aggregate may appear once. Idempotency works as for one \
aggregate. The answer comes once the events are durable. Takes no query parameters.",
    request_body(
        content = Commit,
        example = json!({
            "appends": [
                {"aggregate_id": "order:ORD-1", "expected_version": 0, "events": [
                    {"aggregate_type": "Order", "event_type": "OrderPlaced", "event_data": {"sku": "SKU-123"}}
                ]},
                {"aggregate_id": "inventory:SKU-123", "expected_version": 7, "events": [
                    {"aggregate_type": "Inventory", "event_type": "StockReserved",
                     "event_data": {"quantity": 1}}
                ]}
            ],
            "condition": {"filter": {"event_types": ["StockReserved"], "aggregate_id_prefix": "inventory:"},
                          "after_position": 1200}
        })
    ),
    responses(
        (status = 201, description = "Written and durable.", body = CommitOutcome),
        (status = 200, description = "An exact retry of an earlier commit: nothing was written; the \
original versions and positions.", body = CommitOutcome),
    )
)]
fn commit() -> &'static [ErrorCode] {
    &[
        InvalidRequest,
        Unauthorized,
        Forbidden,
        WrongExpectedVersion,
        ConditionFailed,
        DuplicateEventId,
        AggregateTypeMismatch,
        PayloadTooLarge,
        SchemaViolation,
        UnsupportedMediaType,
        Internal,
        StoreUnavailable,
    ]
}

#[utoipa::path(
    get,
    path = "/v1/aggregates/{aggregate_id}/events",
    tag = "events",
    summary = "Read one aggregate's events by version",
    description = "A page of the aggregate's events in version order (forward or backward). \
`next_from_version` is where the next page starts in the same direction; null at the end.",
    params(
        ("aggregate_id" = String, Path, description = AGGREGATE_ID, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"),
        AggregateReadParams,
        TimeParams,
        RawParam,
    ),
    responses((status = 200, description = "A page of events.", body = AggregatePage))
)]
fn read_aggregate() -> &'static [ErrorCode] {
    &[
        InvalidRequest,
        Unauthorized,
        Forbidden,
        AggregateNotFound,
        Internal,
    ]
}

#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "events",
    summary = "Read all events in position order, filtered",
    description = "A page of the events after `after_position` that pass every filter given. \
Continue from `next_after_position`, which moves past filtered-out events too; a page may be \
empty and still not be the end: the end is `next_after_position` = `head_position`.",
    params(EventPageParams, FilterParams, TimeParams, RawParam),
    responses((status = 200, description = "A page of events.", body = EventPage))
)]
fn read_events() -> &'static [ErrorCode] {
    &[InvalidRequest, Unauthorized, Forbidden, Internal]
}

#[utoipa::path(
    get,
    path = "/v1/events/{event_id}",
    tag = "events",
    summary = "Read one event by id",
    params(
        ("event_id" = uuid::Uuid, Path, description = "The event's id, a UUID."),
        RawParam,
    ),
    responses((status = 200, description = "The event.", body = Event))
)]
fn get_event() -> &'static [ErrorCode] {
    &[InvalidRequest, Unauthorized, Forbidden, EventNotFound, Internal]
}

#[utoipa::path(
    get,
    path = "/v1/head",
    tag = "events",
    summary = "The last committed position",
    description = "Takes no query parameters.",
    responses((status = 200, description = "The head.", body = Head))
)]
fn head() -> &'static [ErrorCode] {
    &[InvalidRequest, Unauthorized, Forbidden, Internal]
}

#[utoipa::path(
    put,
    path = "/v1/aggregates/{aggregate_id}/snapshots",
    tag = "snapshots",
    summary = "Store a snapshot of an aggregate",
    description = "Stores the aggregate's state folded up to `version`, which the aggregate must \
have (else 422 `invalid_snapshot`). A snapshot is a cache, not a fact: it takes no position and \
never shows in event reads, and a put at a version that has a snapshot replaces it (200). The \
answer comes once the snapshot is durable. Needs the writer role. Takes no query parameters.",
    params(("aggregate_id" = String, Path, description = AGGREGATE_ID, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$")),
    request_body(
        content = PutSnapshot,
        example = json!({
            "version": 1000,
            "state": {"balance": 1250, "currency": "USD"},
            "snapshot_type": "Account",
            "snapshot_version": 1
        })
    ),
    responses(
        (status = 201, description = "Stored and durable.", body = SnapshotPutResponse),
        (status = 200, description = "Stored and durable; it replaced the snapshot at the same \
version.", body = SnapshotPutResponse),
    )
)]
fn put_snapshot() -> &'static [ErrorCode] {
    &[
        InvalidRequest,
        Unauthorized,
        Forbidden,
        PayloadTooLarge,
        UnsupportedMediaType,
        InvalidSnapshot,
        Internal,
        StoreUnavailable,
    ]
}

#[utoipa::path(
    get,
    path = "/v1/aggregates/{aggregate_id}/snapshots/latest",
    tag = "snapshots",
    summary = "The newest snapshot of an aggregate",
    description = "The snapshot with the highest version, or with `max_version` the highest at \
or below it.",
    params(
        ("aggregate_id" = String, Path, description = AGGREGATE_ID, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"),
        LatestSnapshotParams,
    ),
    responses((status = 200, description = "The snapshot, with its state.", body = Snapshot))
)]
fn latest_snapshot() -> &'static [ErrorCode] {
    &[
        InvalidRequest,
        Unauthorized,
        Forbidden,
        SnapshotNotFound,
        Internal,
    ]
}

#[utoipa::path(
    get,
    path = "/v1/aggregates/{aggregate_id}/snapshots",
    tag = "snapshots",
    summary = "Every snapshot of an aggregate",
    description = "By increasing version, without their states; an empty list when there are \
none. Takes no query parameters.",
    params(("aggregate_id" = String, Path, description = AGGREGATE_ID, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$")),
    responses((status = 200, description = "The snapshots.", body = SnapshotList))
)]
fn list_snapshots() -> &'static [ErrorCode] {
    &[InvalidRequest, Unauthorized, Forbidden, Internal]
}

#[utoipa::path(
    get,
    path = "/v1/aggregates/{aggregate_id}/load",
    tag = "snapshots",
    summary = "Load an aggregate: its latest snapshot and the events after it",
    description = "One round trip to rebuild an aggregate: the newest snapshot (null when there \
is none) and every event after its version up to the aggregate's current `version`, in version \
order. Takes no query parameters.",
    params(("aggregate_id" = String, Path, description = AGGREGATE_ID, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$")),
    responses((status = 200, description = "The aggregate.", body = AggregateLoad))
)]
fn load() -> &'static [ErrorCode] {
    &[
        InvalidRequest,
        Unauthorized,
        Forbidden,
        AggregateNotFound,
        Internal,
    ]
}

const PROJECTION_NAME: &str = "The projection's name, percent-decoded: 1 to 100 bytes, no control \
characters.";

#[utoipa::path(
    put,
    path = "/v1/projections/{name}",
    tag = "projections",
    summary = "Create or replace a projection",
    description = "A projection folds the events its `filter` passes into one JSON state per key, \
kept up to date by the server, persisted with its checkpoint and restored after a restart.\n\n\
- `key`: `aggregate_id`, `day` (the UTC date of `created_at`), `all` (one state, under `all`), or \
a JSON Pointer into the event (`/event_data/sku`; an event without a value there is passed over \
and counted as `unkeyed`).\n\
- `on`: per event type, and `*` for every event, operations applied in order (the type's first, \
then `*`): `set`, `add`, `sub`, `inc` (adds `value`, default 1), `min`, `max`, `append`, `unset`. \
`path` is a JSON Pointer into the state; the operand comes from `from` (a JSON Pointer into the \
event; missing fails the operation unless `optional: true`) or `value` (a literal). A missing \
number counts as 0; `min`/`max` take the operand when nothing is there yet and compare numbers \
or strings.\n\
- An event on which an operation fails stops the projection (`failed`, the event's position in \
`error`); it is never skipped.\n\n\
201 for a new projection. 200 for an existing one: the same definition changes nothing; a \
changed one is rebuilt from the first event while the old state keeps serving, then they swap \
at once (`status: rebuilding` meanwhile). Needs the admin role. A token limited to aggregate id \
prefixes may not use any projection route (403): states fold events of every aggregate. Takes no \
query parameters.",
    params(("name" = String, Path, description = PROJECTION_NAME, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$")),
    request_body(
        content = ProjectionBody,
        example = json!({
            "filter": {"event_types": ["AccountCreated", "MoneyDeposited", "MoneyWithdrawn"],
                       "aggregate_type": "Account"},
            "key": "aggregate_id",
            "initial": {"balance": 0, "transactions": 0},
            "on": {
                "AccountCreated": [{"op": "set", "path": "/balance", "from": "/event_data/initial"}],
                "MoneyDeposited": [{"op": "add", "path": "/balance", "from": "/event_data/amount"},
                                   {"op": "inc", "path": "/transactions"}],
                "MoneyWithdrawn": [{"op": "sub", "path": "/balance", "from": "/event_data/amount"},
                                   {"op": "inc", "path": "/transactions"}],
                "*": [{"op": "set", "path": "/last_event", "from": "/event_type"}]
            }
        })
    ),
    responses(
        (status = 201, description = "Created; it folds from the first event.", body = ProjectionStatus),
        (status = 200, description = "Replaced: unchanged, or rebuilding with the new definition.",
         body = ProjectionStatus),
    )
)]
fn put_projection() -> &'static [ErrorCode] {
    &[
        InvalidRequest,
        Unauthorized,
        Forbidden,
        PayloadTooLarge,
        UnsupportedMediaType,
        InvalidProjection,
        Internal,
        StoreUnavailable,
    ]
}

#[utoipa::path(
    get,
    path = "/v1/projections",
    tag = "projections",
    summary = "Every projection's status",
    description = "By name. Takes no query parameters.",
    responses((status = 200, description = "The statuses.", body = ProjectionList))
)]
fn list_projections() -> &'static [ErrorCode] {
    &[InvalidRequest, Unauthorized, Forbidden, Internal]
}

#[utoipa::path(
    get,
    path = "/v1/projections/{name}",
    tag = "projections",
    summary = "A projection's status",
    description = "Takes no query parameters.",
    params(("name" = String, Path, description = PROJECTION_NAME, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$")),
    responses((status = 200, description = "The status.", body = ProjectionStatus))
)]
fn get_projection() -> &'static [ErrorCode] {
    &[
        InvalidRequest,
        Unauthorized,
        Forbidden,
        ProjectionNotFound,
        Internal,
    ]
}

#[utoipa::path(
    delete,
    path = "/v1/projections/{name}",
    tag = "projections",
    summary = "Delete a projection",
    description = "Stops it and removes its states, checkpoint and snapshots. Needs the admin role. \
Takes no query parameters.",
    params(("name" = String, Path, description = PROJECTION_NAME, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$")),
    responses((status = 204, description = "Deleted."))
)]
fn delete_projection() -> &'static [ErrorCode] {
    &[
        InvalidRequest,
        Unauthorized,
        Forbidden,
        ProjectionNotFound,
        Internal,
        StoreUnavailable,
    ]
}

#[utoipa::path(
    post,
    path = "/v1/projections/{name}/rebuild",
    tag = "projections",
    summary = "Rebuild a projection from the first event",
    description = "Folds every event again into a new generation while the current state keeps \
serving; when the new one has caught up with the head they swap at once. A rebuild already under \
way goes on. Needs the admin role. Takes no query parameters and no body.",
    params(("name" = String, Path, description = PROJECTION_NAME, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$")),
    responses((status = 202, description = "The rebuild is under way.", body = ProjectionStatus))
)]
fn rebuild_projection() -> &'static [ErrorCode] {
    &[
        InvalidRequest,
        Unauthorized,
        Forbidden,
        ProjectionNotFound,
        Internal,
        StoreUnavailable,
    ]
}

#[utoipa::path(
    get,
    path = "/v1/projections/{name}/state/{key}",
    tag = "projections",
    summary = "One key's state",
    description = "The maintained state by default, as of `position`. With `min_position`, waits \
(at most `wait_ms`) until the projection has passed it: read-your-writes. With \
`source=event_store`, the state is folded from the events up to the head (for `aggregate_id` \
keys from the projection's newest snapshot of the aggregate; for other keys from every event the \
filter passes, which costs a scan). `until` / `as_of` fold only the events with `created_at` / \
`recorded_at` at or before that time.",
    params(
        ("name" = String, Path, description = PROJECTION_NAME, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"),
        ("key" = String, Path, description = "The key, percent-decoded."),
        StateParams,
    ),
    responses((status = 200, description = "The state.", body = KeyState))
)]
fn get_projection_state() -> &'static [ErrorCode] {
    &[
        InvalidRequest,
        Unauthorized,
        Forbidden,
        ProjectionNotFound,
        KeyNotFound,
        InvalidProjection,
        Internal,
        NotYetMaterialized,
    ]
}

#[utoipa::path(
    get,
    path = "/v1/projections/{name}/state",
    tag = "projections",
    summary = "The states, a page at a time",
    description = "In key order (bytes of UTF-8), after `after_key`. Continue from \
`next_after_key`; null at the end.",
    params(
        ("name" = String, Path, description = PROJECTION_NAME, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"),
        StatesPageParams,
    ),
    responses((status = 200, description = "A page of states.", body = StatePage))
)]
fn list_projection_states() -> &'static [ErrorCode] {
    &[
        InvalidRequest,
        Unauthorized,
        Forbidden,
        ProjectionNotFound,
        Internal,
    ]
}

#[utoipa::path(
    get,
    path = "/v1/events/{event_id}/status",
    tag = "projections",
    summary = "Whether the projections have processed an event",
    description = "Lists the projections whose filter passes the event, each with whether it has \
processed it; `materialized` is true when all of them have (also when none is listed). Takes no \
query parameters.",
    params(("event_id" = uuid::Uuid, Path, description = "The event's id, a UUID.")),
    responses((status = 200, description = "The event's status.", body = EventStatus))
)]
fn event_status() -> &'static [ErrorCode] {
    &[InvalidRequest, Unauthorized, Forbidden, EventNotFound, Internal]
}

#[utoipa::path(
    get,
    path = "/v1/subscribe",
    tag = "stream",
    summary = "Follow events live (server-sent events)",
    description = "A `text/event-stream` of the events that pass the filters: first the history \
after `after_position` (or the `Last-Event-ID` header, which wins), then live events as they \
become durable, in position order, with no gap and no duplicate. Messages:\n\n\
- `event: event`, `id: <position>`, `data:` the event's JSON on one line (the `Event` schema).\n\
- `event: caught_up`, `id: <position>`, `data: {\"position\": p}` (`StreamPosition`): once, when \
the history (what was committed when the subscription began) is delivered.\n\
- `event: checkpoint`, `id: <position>`, `data: {\"position\": p}` (`StreamPosition`): at least \
every 5 s while the filters pass over events, so that a client can resume from there.\n\
- `: keep-alive`, a comment, when nothing else was sent for 15 s.\n\
- `event: shutdown`, `data: {\"reason\": \"…\"}` (`StreamShutdown`): the server is stopping; the \
stream ends. Reconnect later with `Last-Event-ID`.\n\
- `event: error`, `data: {\"code\", \"message\"}` (`StreamError`): a read failed after the stream \
began; the stream ends. Reconnect with `Last-Event-ID`.\n\n\
Every `id:` is a position up to which everything has been considered: reconnecting with \
`Last-Event-ID: <the last id seen>` continues with no gap and no duplicate. Errors before the \
stream starts are ordinary JSON errors.",
    params(
        SubscribeParams,
        FilterParams,
        TimeParams,
        RawParam,
        ("Last-Event-ID" = Option<u64>, Header, nullable = false, maximum = 9223372036854775807_u64,
         description = "The last `id:` seen, to resume \
after it; wins over `after_position`. A whole number of 0 or more."),
    ),
    responses(
        (status = 200, description = "The stream; its messages are described above.",
         content_type = "text/event-stream", body = inline(StreamMessage)),
    )
)]
fn subscribe() -> &'static [ErrorCode] {
    &[InvalidRequest, Unauthorized, Forbidden, Internal]
}

/// The path parameter of the subscription endpoints.
const GROUP: &str = "The group's name: 1 to 100 bytes of ASCII letters, digits, `-`, `_`, `.` and `:`.";

#[utoipa::path(
    get,
    path = "/v1/subscriptions",
    tag = "subscriptions",
    summary = "Every persistent-subscription group",
    description = "Each group's definition and status, by name. Needs the reader role and a \
token without aggregate prefixes. Takes no query parameters.",
    responses((status = 200, description = "The groups.", body = GroupList))
)]
fn list_groups() -> &'static [ErrorCode] {
    &[InvalidRequest, Unauthorized, Forbidden, Internal]
}

#[utoipa::path(
    put,
    path = "/v1/subscriptions/{group}",
    tag = "subscriptions",
    summary = "Create a group, or change its definition",
    description = "Creates the group (201), starting after `start`: `beginning` (every matching \
event), `end` (only events appended after it exists) or a position P (the events after P). The \
same definition again is 200 and changes nothing. A different definition is 200 and replaces it: \
the group keeps its progress (checkpoint, acks, parked events, delivery counts; `start` is not \
applied again), reads again from its checkpoint with the new filter, and events leased under the \
old definition are delivered again. Durable before the answer. Needs the admin role and a token \
without aggregate prefixes. Takes no query parameters.",
    params(("group" = String, Path, description = GROUP, pattern = "^[A-Za-z0-9_.:-]+$", max_length = 100)),
    request_body(
        content = GroupDefinition,
        example = json!({
            "filter": {"event_types": ["OrderPlaced"], "aggregate_id_prefix": "order:"},
            "start": "beginning",
            "ack_timeout_ms": 30000,
            "max_deliveries": 5,
            "ordering": "per_aggregate"
        })
    ),
    responses(
        (status = 201, description = "Created.", body = GroupStatus),
        (status = 200, description = "Unchanged, or its definition replaced.", body = GroupStatus),
    )
)]
fn put_group() -> &'static [ErrorCode] {
    &[
        InvalidRequest,
        Unauthorized,
        Forbidden,
        PayloadTooLarge,
        UnsupportedMediaType,
        Internal,
        StoreUnavailable,
    ]
}

#[utoipa::path(
    get,
    path = "/v1/subscriptions/{group}",
    tag = "subscriptions",
    summary = "A group's definition and status",
    description = "`checkpoint`: every position up to it is acked, parked or passed over by the \
filter. `lag` = `head_position` − `checkpoint`. `in_flight`: events leased to consumers now. \
Takes no query parameters.",
    params(("group" = String, Path, description = GROUP, pattern = "^[A-Za-z0-9_.:-]+$", max_length = 100)),
    responses((status = 200, description = "The group.", body = GroupStatus))
)]
fn get_group() -> &'static [ErrorCode] {
    &[
        InvalidRequest,
        Unauthorized,
        Forbidden,
        SubscriptionNotFound,
        Internal,
    ]
}

#[utoipa::path(
    delete,
    path = "/v1/subscriptions/{group}",
    tag = "subscriptions",
    summary = "Delete a group",
    description = "Deletes the group and its state, durably. Long polls on it end. Needs the \
admin role. Takes no query parameters.",
    params(("group" = String, Path, description = GROUP, pattern = "^[A-Za-z0-9_.:-]+$", max_length = 100)),
    responses((status = 204, description = "Deleted."))
)]
fn delete_group() -> &'static [ErrorCode] {
    &[
        InvalidRequest,
        Unauthorized,
        Forbidden,
        SubscriptionNotFound,
        Internal,
        StoreUnavailable,
    ]
}

#[utoipa::path(
    post,
    path = "/v1/subscriptions/{group}/poll",
    tag = "subscriptions",
    summary = "Lease events to a consumer",
    description = "Up to `max` events, each leased to `consumer` until it is acked or nacked or \
`ack_timeout_ms` passes; then it is delivered again (to any consumer), and after \
`max_deliveries` deliveries it is parked instead. Lower positions come first. With \
`per_aggregate` ordering no two events of one aggregate are in flight at once and each \
aggregate's events come in version order, also across redeliveries and replays. When no event \
is ready, waits up to `wait_ms` for one. Each event carries `attempt`: which delivery it is \
(1 for the first). Needs the reader role. Takes no query parameters.",
    params(("group" = String, Path, description = GROUP, pattern = "^[A-Za-z0-9_.:-]+$", max_length = 100)),
    request_body(
        content = PollBody,
        example = json!({"consumer": "worker-1", "max": 100, "wait_ms": 0})
    ),
    responses((status = 200, description = "The events leased (maybe none).", body = Deliveries))
)]
fn poll() -> &'static [ErrorCode] {
    &[
        InvalidRequest,
        Unauthorized,
        Forbidden,
        SubscriptionNotFound,
        PayloadTooLarge,
        UnsupportedMediaType,
        Internal,
        StoreUnavailable,
    ]
}

#[utoipa::path(
    post,
    path = "/v1/subscriptions/{group}/ack",
    tag = "subscriptions",
    summary = "Acknowledge processed events",
    description = "Marks the events done; the answer comes once that is durable, and after any \
crash no acked event is delivered again. All or nothing: a position that was never delivered to \
the group (passed over by its filter, or not handed out yet) is 400 and nothing is acked. \
Acking again, or acking an event whose lease expired or that was parked meanwhile, succeeds \
(a parked event so acked leaves the parked list). After a restart, events delivered before it \
may be acked before they are delivered again. Needs the reader role. Takes no query parameters.",
    params(("group" = String, Path, description = GROUP, pattern = "^[A-Za-z0-9_.:-]+$", max_length = 100)),
    request_body(content = AckBody, example = json!({"positions": [41, 42]})),
    responses((status = 204, description = "Acked, durably."))
)]
fn ack() -> &'static [ErrorCode] {
    &[
        InvalidRequest,
        Unauthorized,
        Forbidden,
        SubscriptionNotFound,
        PayloadTooLarge,
        UnsupportedMediaType,
        Internal,
        StoreUnavailable,
    ]
}

#[utoipa::path(
    post,
    path = "/v1/subscriptions/{group}/nack",
    tag = "subscriptions",
    summary = "Give events back",
    description = "Ends the leases: each event is delivered again at once, or parked when `park` \
is true or it has had `max_deliveries` deliveries. All or nothing: an acked position, or one \
never delivered, is 400. A parked position is left as it is. Parks are durable before the \
answer. Needs the reader role. Takes no query parameters.",
    params(("group" = String, Path, description = GROUP, pattern = "^[A-Za-z0-9_.:-]+$", max_length = 100)),
    request_body(content = NackBody, example = json!({"positions": [43], "park": false})),
    responses((status = 204, description = "Given back."))
)]
fn nack() -> &'static [ErrorCode] {
    &[
        InvalidRequest,
        Unauthorized,
        Forbidden,
        SubscriptionNotFound,
        PayloadTooLarge,
        UnsupportedMediaType,
        Internal,
        StoreUnavailable,
    ]
}

#[utoipa::path(
    get,
    path = "/v1/subscriptions/{group}/parked",
    tag = "subscriptions",
    summary = "The group's parked (dead-lettered) events",
    description = "Parked events by position, each with `attempt`: how many deliveries it had. \
Continue from `next_after_position`; null at the end. Needs the reader role.",
    params(("group" = String, Path, description = GROUP, pattern = "^[A-Za-z0-9_.:-]+$", max_length = 100), ParkedParams),
    responses((status = 200, description = "A page of parked events.", body = ParkedPage))
)]
fn list_parked() -> &'static [ErrorCode] {
    &[
        InvalidRequest,
        Unauthorized,
        Forbidden,
        SubscriptionNotFound,
        Internal,
    ]
}

#[utoipa::path(
    post,
    path = "/v1/subscriptions/{group}/parked/replay",
    tag = "subscriptions",
    summary = "Deliver parked events again",
    description = "Puts the parked events named by `positions` (each must be parked), or without \
them the lowest `limit` parked events, back into delivery with a fresh count of deliveries. The \
checkpoint does not move back. Durable before the answer. An empty body replays up to 1000. Needs \
the admin role. Takes no query parameters.",
    params(("group" = String, Path, description = GROUP, pattern = "^[A-Za-z0-9_.:-]+$", max_length = 100)),
    request_body(content = Option<ReplayBody>, example = json!({"positions": [43]})),
    responses((status = 200, description = "Replayed.", body = ReplayResponse))
)]
fn replay_parked() -> &'static [ErrorCode] {
    &[
        InvalidRequest,
        Unauthorized,
        Forbidden,
        SubscriptionNotFound,
        PayloadTooLarge,
        UnsupportedMediaType,
        Internal,
        StoreUnavailable,
    ]
}

/// The path parameter of the schema endpoints.
const EVENT_TYPE: &str = "The event type, percent-decoded: 1 to 100 bytes (by default), no \
control characters.";

#[utoipa::path(
    put,
    path = "/v1/schemas/{event_type}/versions/{version}",
    tag = "schemas",
    summary = "Register a JSON Schema for one version of an event type",
    description = "The body is a JSON Schema (draft 2020-12; a `$schema` naming another draft is \
400) for `event_data` of events of this type and `event_version`. Once a type has a schema, every \
append of it is validated (422 `schema_violation` naming every failing field), and an \
`event_version` without a schema is refused too. Version n > 1 must be backward compatible with \
n − 1: it may only add optional properties (409 `incompatible_schema` with the reason), and n − 1 \
must be registered first (409 `schema_version_missing`). Registering the same schema again is \
200; another schema for a registered version is 409 `schema_exists`. Durable before the answer. \
Needs the admin role. Takes no query parameters.",
    params(
        ("event_type" = String, Path, description = EVENT_TYPE, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"),
        ("version" = u32, Path, description = "The `event_version` the schema is for, 1 to 2^31 − 1.", minimum = 1, maximum = 2147483647),
    ),
    request_body(
        content = Object,
        description = "A JSON Schema object (draft 2020-12).",
        example = json!({
            "type": "object",
            "properties": {"amount": {"type": "number"}, "currency": {"type": "string"}},
            "required": ["amount"]
        })
    ),
    responses(
        (status = 201, description = "Registered and durable.", body = SchemaPutResponse),
        (status = 200, description = "This schema was registered for this version already.", body = SchemaPutResponse),
    )
)]
fn put_schema() -> &'static [ErrorCode] {
    &[
        InvalidRequest,
        Unauthorized,
        Forbidden,
        SchemaExists,
        IncompatibleSchema,
        SchemaVersionMissing,
        PayloadTooLarge,
        UnsupportedMediaType,
        Internal,
        StoreUnavailable,
    ]
}

#[utoipa::path(
    post,
    path = "/v1/admin/archive",
    tag = "admin",
    summary = "Move old events to cold storage",
    description = "Moves the events recorded before `before` (exclusive; a date means the start of \
that day, UTC) to the cold storage of `--archive-url`, and frees their local copy only after the \
cold copy is verified. Whole segments of the log move, oldest first; the newest segment is \
sealed first when it holds events recorded before `before`, so that they move too. Events \
before `before` that share a segment with events recorded at or after it stay hot: \
`hot_before_cut` counts them and `hot_reason` says why (on PostgreSQL every one moves). Answers \
when done, with the totals archived so far (all runs). Every read, query, subscription \
and replay still returns archived events, at the same positions. 409 `archive_not_configured` \
without `--archive-url`. Needs the admin role. Takes no query parameters.",
    request_body(content = ArchiveBody, example = json!({"before": "2023-01-01"})),
    responses((status = 200, description = "Done: the totals archived so far.", body = ArchiveOutcome))
)]
fn archive() -> &'static [ErrorCode] {
    &[
        InvalidRequest,
        Unauthorized,
        Forbidden,
        ArchiveNotConfigured,
        PayloadTooLarge,
        UnsupportedMediaType,
        Internal,
        StoreUnavailable,
    ]
}

#[utoipa::path(
    post,
    path = "/v1/admin/backup",
    tag = "admin",
    summary = "Copy the whole store into a folder, while it serves",
    description = "Copies the store (events, index, snapshots, projections, persistent-subscription \
groups, schema registry, archive manifest) into `to`, an absolute path on the server's machine of a \
folder that does not exist (it is created) or is empty, while appends and reads go on. The copy is \
the store as it was at one moment, with the events appended while it ran added to its log: \
projections and groups are where they were at that moment and catch up after a restore. \
Immutable files on the same file system are hard-linked, the others copied; every file and folder \
is synced, then a `BACKUP_COMPLETE` file is written: the folder is a backup only with it (`factstore \
restore --from` refuses one without). Answers when done, with the last position copied. Archived \
events stay in cold storage: the restored store needs the same `--archive-url`. Archiving waits \
while a backup runs. 409 `backup_target_not_empty` for a folder that holds something, \
`backup_not_supported` on PostgreSQL (use `pg_dump`). Needs the admin role and a token not limited \
to aggregate prefixes. Takes no query parameters.",
    request_body(content = BackupBody, example = json!({"to": "/backups/factstore-2024-05-01"})),
    responses((status = 200, description = "Done: the backup is complete and durable.", body = BackupOutcome))
)]
fn backup() -> &'static [ErrorCode] {
    &[
        InvalidRequest,
        Unauthorized,
        Forbidden,
        BackupNotSupported,
        BackupTargetNotEmpty,
        PayloadTooLarge,
        UnsupportedMediaType,
        BackupFailed,
        Internal,
    ]
}

#[utoipa::path(
    get,
    path = "/v1/admin/storage",
    tag = "admin",
    summary = "Where the store's bytes are",
    description = "`hot_bytes`: the local log and index files (not the cache of archived \
segments); `cold_bytes`: the compressed objects in cold storage; `events`: the head position; \
`archived_events`: events whose only copy is in cold storage. Needs the admin role (the numbers \
are the whole store's). Takes no query parameters.",
    responses((status = 200, description = "The numbers.", body = StorageStats))
)]
fn storage() -> &'static [ErrorCode] {
    &[InvalidRequest, Unauthorized, Forbidden, Internal]
}

#[utoipa::path(
    get,
    path = "/v1/schemas",
    tag = "schemas",
    summary = "Every event type with a schema",
    description = "By name, with their registered versions. Takes no query parameters.",
    responses((status = 200, description = "The event types.", body = SchemaList))
)]
fn list_schemas() -> &'static [ErrorCode] {
    &[InvalidRequest, Unauthorized, Forbidden, Internal]
}

#[utoipa::path(
    get,
    path = "/v1/schemas/{event_type}",
    tag = "schemas",
    summary = "The schemas of one event type",
    description = "Every registered version with its schema. Takes no query parameters.",
    params(("event_type" = String, Path, description = EVENT_TYPE, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$")),
    responses((status = 200, description = "The schemas.", body = EventTypeSchemas))
)]
fn get_schema() -> &'static [ErrorCode] {
    &[InvalidRequest, Unauthorized, Forbidden, SchemaNotFound, Internal]
}

#[utoipa::path(
    put,
    path = "/v1/upcasters/{event_type}/{from_version}",
    tag = "schemas",
    summary = "Register the upcaster of an event type from one version",
    description = "Operations that turn `event_data` of `from_version` into `to_version`, applied \
in order: `default` (put `value` at `path` when nothing is there), `set` (put `value` at `path`), \
`rename` (move `from` to `path`; nothing at `from` is nothing to do, something at `path` already \
is an error), `unset` (remove `path`). Paths are JSON Pointers into `event_data`. Upcasters chain \
version to version: every read, query, subscription and projection sees events upcast to the \
newest version the chain reaches; `raw=true` reads them as stored, and stored bytes never change. \
An event an upcaster cannot apply to is read as stored, with its stored `event_version`, and \
counted in `factstore_upcast_failures_total`; the events around it are read upcast. \
A new upcaster is 201, replacing one 200. Needs the admin role. Takes no query parameters.",
    params(
        ("event_type" = String, Path, description = EVENT_TYPE, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"),
        ("from_version" = u32, Path, description = "The `event_version` it upcasts from.", minimum = 1, maximum = 2147483647),
    ),
    request_body(
        content = UpcasterDef,
        example = json!({"to_version": 2, "ops": [
            {"op": "default", "path": "/currency", "value": "USD"},
            {"op": "rename", "from": "/amt", "path": "/amount"}
        ]})
    ),
    responses(
        (status = 201, description = "Registered and durable.", body = UpcasterView),
        (status = 200, description = "Registered and durable; it replaced the upcaster from this version, or was the same.", body = UpcasterView),
    )
)]
fn put_upcaster() -> &'static [ErrorCode] {
    &[
        InvalidRequest,
        Unauthorized,
        Forbidden,
        PayloadTooLarge,
        UnsupportedMediaType,
        Internal,
        StoreUnavailable,
    ]
}

#[utoipa::path(
    get,
    path = "/v1/upcasters",
    tag = "schemas",
    summary = "Every upcaster",
    description = "By event type, then by the version they upcast from. Takes no query parameters.",
    responses((status = 200, description = "The upcasters.", body = UpcasterList))
)]
fn list_upcasters() -> &'static [ErrorCode] {
    &[InvalidRequest, Unauthorized, Forbidden, Internal]
}

#[utoipa::path(
    get,
    path = "/v1/upcasters/{event_type}",
    tag = "schemas",
    summary = "The upcasters of one event type",
    description = "By the version they upcast from; an empty list when it has none. Takes no \
query parameters.",
    params(("event_type" = String, Path, description = EVENT_TYPE, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$")),
    responses((status = 200, description = "The upcasters.", body = UpcasterList))
)]
fn list_upcasters_of() -> &'static [ErrorCode] {
    &[InvalidRequest, Unauthorized, Forbidden, Internal]
}

#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    summary = "Whether the server answers, and whether its store accepts writes",
    description = "Needs no token. `degraded` (still 200, since reads are served) means the store \
refuses writes until the server is restarted; `reason` says why.",
    responses((status = 200, description = "The server is up.", body = Health))
)]
fn health() -> &'static [ErrorCode] {
    &[]
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Metrics in the Prometheus text format",
    description = "Counters and histograms of requests, appends, reads and the store, in the \
Prometheus text exposition format (version 0.0.4). With `--auth`, any valid token may read them.",
    responses(
        (status = 200, description = "The metrics.", content_type = "text/plain",
         body = String),
    )
)]
fn metrics() -> &'static [ErrorCode] {
    &[Unauthorized]
}

#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "operations",
    summary = "This document",
    description = "The OpenAPI document of the API, generated from the server's code. Needs no \
token.",
    responses((status = 200, description = "An OpenAPI 3.1 document.", body = Object))
)]
fn openapi() -> &'static [ErrorCode] {
    &[]
}

/// The schemas of the bodies written by hand. These types are never built: they only describe
/// JSON that other functions write. Each names its writer in a plain comment, which stays out of
/// the published description.
mod schemas {
    #![expect(dead_code, reason = "these types describe JSON and are never built")]

    use factstore_core::{ExpectedVersion, Timestamp};
    use serde_json::Value;
    use utoipa::ToSchema;
    use uuid::Uuid;

    use super::ErrorCode;

    // Written by `Event::write_json` (factstore-core), for reads and the live feed alike.
    /// An event as the API shows it.
    #[derive(ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct Event {
        /// Unique in the whole store: the client's idempotency key, or a UUIDv7 from the server.
        event_id: Uuid,
        /// The global order: 1, 2, 3, … with no gaps, in commit order, never reused.
        #[schema(minimum = 1)]
        position: u64,
        aggregate_id: String,
        aggregate_type: String,
        /// The event's place in its aggregate: 1, 2, 3, … with no gaps.
        #[schema(minimum = 1)]
        version: u64,
        event_type: String,
        /// The schema version of `event_data` (not the aggregate's version).
        #[schema(minimum = 1, maximum = 2147483647)]
        event_version: u32,
        /// The fact: a JSON object.
        #[schema(value_type = Object)]
        event_data: Value,
        /// When the fact happened (the client's, or the commit time).
        created_at: Timestamp,
        /// When the store committed it; never decreasing along `position`.
        recorded_at: Timestamp,
        #[schema(required = true)]
        created_by: Option<String>,
        /// A JSON object, or null when none was given.
        #[schema(value_type = Option<Object>, required = true)]
        metadata: Option<Value>,
    }

    // Written by `chunked::EventPageBody` (from the store or the live feed), a chunk at a time.
    /// A page of `GET /v1/events`.
    #[derive(ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct EventPage {
        /// The events, in position order.
        events: Vec<Event>,
        /// Where the next page starts (its `after_position`). Past the last event of the page
        /// when filters passed over later events.
        next_after_position: u64,
        /// The last committed position when the page was read.
        head_position: u64,
    }

    // Written by `render::aggregate_page`.
    /// A page of `GET /v1/aggregates/{aggregate_id}/events`.
    #[derive(ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct AggregatePage {
        aggregate_id: String,
        aggregate_type: String,
        /// The aggregate's current version, or its version as of `as_of`.
        version: u64,
        /// The events, in the direction of the read.
        events: Vec<Event>,
        /// Where the next page starts in the same direction (its `from_version`); null at the
        /// end.
        #[schema(required = true)]
        next_from_version: Option<u64>,
    }

    // Written by `Snapshot::write_json` (factstore-core).
    /// A snapshot with its state.
    #[derive(ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct Snapshot {
        aggregate_id: String,
        /// The aggregate version the state was folded up to.
        #[schema(minimum = 1)]
        version: u64,
        snapshot_type: String,
        /// The schema version of `state`.
        #[schema(minimum = 1, maximum = 2147483647)]
        snapshot_version: u32,
        /// The state: a JSON object.
        #[schema(value_type = Object)]
        state: Value,
        /// When the store took the snapshot.
        created_at: Timestamp,
    }

    // Written by `snapshots::load` (snapshots.rs).
    /// The body of `GET /v1/aggregates/{aggregate_id}/load`.
    #[derive(ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct AggregateLoad {
        aggregate_id: String,
        /// The aggregate's current version: that of the last event, or of the snapshot when no
        /// event follows it.
        version: u64,
        /// The newest snapshot, or null.
        #[schema(required = true)]
        snapshot: Option<Snapshot>,
        /// Every event after the snapshot's version (all of them without a snapshot), in
        /// version order.
        events: Vec<Event>,
    }

    /// Any JSON value, spelt as a list of types so that the document reads back as OpenAPI.
    fn any_json() -> utoipa::openapi::schema::Object {
        use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
        ObjectBuilder::new()
            .schema_type(SchemaType::from_iter([
                Type::Object,
                Type::Array,
                Type::String,
                Type::Number,
                Type::Boolean,
                Type::Null,
            ]))
            .build()
    }

    // Serialised from `ProjectionDefinition` (factstore-projections).
    /// The definition of a projection (the body of `PUT /v1/projections/{name}`).
    #[derive(ToSchema)]
    #[schema(as = ProjectionDefinition)]
    #[serde(deny_unknown_fields)]
    pub struct ProjectionBody {
        /// Which events it folds: the filters of `GET /v1/events` (every one given must hold);
        /// all events when absent.
        #[schema(nullable = false)]
        filter: Option<factstore_core::EventFilter>,
        /// `aggregate_id`, `day`, `all`, or a JSON Pointer into the event.
        #[schema(example = "aggregate_id")]
        key: String,
        /// The state of a key before its first event; `{}` when absent.
        #[schema(schema_with = any_json, required = false)]
        initial: Option<Value>,
        /// Per event type (and `*` for every event), the operations, in order.
        on: std::collections::BTreeMap<String, Vec<ProjectionOp>>,
    }

    /// One operation of a projection.
    #[derive(ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct ProjectionOp {
        /// `set`, `add`, `sub`, `inc`, `min`, `max`, `append` or `unset`.
        #[schema(example = "add")]
        op: String,
        /// A JSON Pointer into the state.
        #[schema(example = "/balance")]
        path: String,
        /// A JSON Pointer into the event: where the operand comes from.
        #[schema(nullable = false, example = "/event_data/amount")]
        from: Option<String>,
        /// A literal operand (any JSON).
        #[schema(schema_with = any_json, required = false)]
        value: Option<Value>,
        /// With `from`: when the event has nothing there, do nothing instead of failing.
        #[schema(nullable = false)]
        optional: Option<bool>,
    }

    // Serialised from `ProjectionStatus` (factstore-projections).
    /// A projection's status.
    #[derive(ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct ProjectionStatus {
        name: String,
        /// `rebuilding` while a rebuild folds beside the served state.
        status: ProjectionState,
        /// The last global position the served state has considered (events the filter passes
        /// over count as considered).
        position: u64,
        head_position: u64,
        /// `head_position - position`.
        lag: u64,
        /// Keys with a state.
        keys: u64,
        /// Events passed over because they had no key.
        unkeyed: u64,
        /// Why it (or its rebuild) stopped, naming the event's position; null when running.
        #[schema(required = true)]
        error: Option<String>,
    }

    /// What a projection is doing.
    #[derive(ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum ProjectionState {
        Running,
        Rebuilding,
        Failed,
    }

    // Written by `projections::list_projections`.
    /// `{"projections": [...]}`
    #[derive(ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct ProjectionList {
        projections: Vec<ProjectionStatus>,
    }

    // Written by `projections::get_projection_state`.
    /// One key's state.
    #[derive(ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct KeyState {
        key: String,
        /// The state (any JSON; an object unless the definition's `initial` says otherwise).
        #[schema(schema_with = any_json)]
        state: Value,
        /// The position the state is as of (for `source=event_store` and time travel: the head
        /// when the fold began).
        position: u64,
    }

    /// A key and its state.
    #[derive(ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct KeyAndState {
        key: String,
        #[schema(schema_with = any_json)]
        state: Value,
    }

    // Written by `projections::list_projection_states`.
    /// A page of states.
    #[derive(ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct StatePage {
        /// In key order.
        states: Vec<KeyAndState>,
        /// Where the next page starts (its `after_key`); null at the end.
        #[schema(required = true)]
        next_after_key: Option<String>,
        /// The position every state of the page is as of.
        position: u64,
    }

    // Written by `projections::event_status`.
    /// Whether the projections have processed an event.
    #[derive(ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct EventStatus {
        event_id: Uuid,
        position: u64,
        /// Every listed projection has processed the event.
        materialized: bool,
        /// The projections whose filter passes the event, each with whether it has processed it.
        projections: std::collections::BTreeMap<String, bool>,
    }

    // Written by `ApiError::into_response` (error.rs), the details by `ApiError::parts`.
    /// The body of every error.
    #[derive(ToSchema)]
    #[schema(as = Error)]
    #[serde(deny_unknown_fields)]
    pub struct ErrorBody {
        error: ErrorDetail,
    }

    /// The code, the message and the details of the code.
    #[derive(ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct ErrorDetail {
        code: ErrorCode,
        /// What went wrong, for people.
        message: String,
        /// `wrong_expected_version`, `aggregate_type_mismatch`, `aggregate_not_found`,
        /// `invalid_snapshot`, `snapshot_not_found`.
        #[schema(nullable = false)]
        aggregate_id: Option<String>,
        /// `wrong_expected_version`: what the request expected.
        #[schema(nullable = false)]
        expected_version: Option<ExpectedVersion>,
        /// `wrong_expected_version`, `invalid_snapshot`: the aggregate's version (0: it does
        /// not exist).
        #[schema(nullable = false)]
        current_version: Option<u64>,
        /// `subscription_not_found`: the group asked for.
        #[schema(nullable = false)]
        group: Option<String>,
        /// `invalid_snapshot`: the version the snapshot named; `schema_exists`,
        /// `incompatible_schema`, `schema_version_missing`: the schema version.
        #[schema(nullable = false)]
        version: Option<u64>,
        /// `snapshot_not_found`: the bound asked for, when one was.
        #[schema(nullable = false)]
        max_version: Option<u64>,
        /// `condition_failed`: the condition's `after_position`.
        #[schema(nullable = false)]
        after_position: Option<u64>,
        /// `condition_failed`: the first event matching the condition's filter after it.
        #[schema(nullable = false)]
        conflicting_position: Option<u64>,
        /// `duplicate_event_id`: the first id of the request already stored;
        /// `event_not_found`: the id asked for.
        #[schema(nullable = false)]
        event_id: Option<Uuid>,
        /// `aggregate_type_mismatch`: the aggregate's type.
        #[schema(nullable = false)]
        existing: Option<String>,
        /// `aggregate_type_mismatch`: the type the request gave.
        #[schema(nullable = false)]
        given: Option<String>,
        /// `schema_not_found`, `schema_exists`, `incompatible_schema`,
        /// `schema_version_missing`: the event type.
        #[schema(nullable = false)]
        event_type: Option<String>,
        /// `not_yet_materialized`: where the projection is.
        #[schema(nullable = false)]
        position: Option<u64>,
        /// `incompatible_schema`: why the schema cannot follow the previous version.
        #[schema(nullable = false)]
        reason: Option<String>,
        /// `schema_violation`: every failing field of every event that does not match its
        /// schema.
        #[schema(nullable = false)]
        violations: Option<Vec<factstore_core::SchemaViolation>>,
        /// `projection_not_found`, `key_not_found`, `not_yet_materialized`: the projection.
        #[schema(nullable = false)]
        projection: Option<String>,
        /// `key_not_found`: the key asked for.
        #[schema(nullable = false)]
        key: Option<String>,
        /// `not_yet_materialized`: the position asked for.
        #[schema(nullable = false)]
        min_position: Option<u64>,
    }

    // Written by `chunked::deliveries` and `persistent::list_parked`: `Event::write_json` with
    // `attempt` added.
    /// An event leased to a consumer, or a parked event.
    #[derive(ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct DeliveredEvent {
        event_id: Uuid,
        #[schema(minimum = 1)]
        position: u64,
        aggregate_id: String,
        aggregate_type: String,
        #[schema(minimum = 1)]
        version: u64,
        event_type: String,
        #[schema(minimum = 1, maximum = 2147483647)]
        event_version: u32,
        #[schema(value_type = Object)]
        event_data: Value,
        created_at: Timestamp,
        recorded_at: Timestamp,
        #[schema(required = true)]
        created_by: Option<String>,
        #[schema(value_type = Option<Object>, required = true)]
        metadata: Option<Value>,
        /// Which delivery this is (1 for the first); for a parked event, how many it had.
        #[schema(minimum = 1)]
        attempt: u32,
    }

    // Written by `chunked::deliveries`, a chunk at a time.
    /// The answer to a poll.
    #[derive(ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct Deliveries {
        /// The events leased, in position order.
        events: Vec<DeliveredEvent>,
    }

    // Written by `persistent::list_parked` (persistent.rs).
    /// A page of parked events.
    #[derive(ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct ParkedPage {
        events: Vec<DeliveredEvent>,
        /// Where the next page starts (its `after_position`); null at the end.
        #[schema(required = true)]
        next_after_position: Option<u64>,
    }

    // Written by `health` (lib.rs).
    /// The body of `GET /health`.
    #[derive(ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct Health {
        status: HealthStatus,
        /// Why writes are refused (only with `degraded`): what failed and the system's reason.
        #[schema(nullable = false)]
        reason: Option<String>,
    }

    /// `ok`: the server answers and accepts writes. `degraded`: it answers reads, and refuses
    /// writes until it is restarted (an earlier write or sync failed).
    #[derive(ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum HealthStatus {
        Ok,
        Degraded,
    }

    // Written by `Subscription::write_position` (subscribe.rs).
    /// The data of a subscription's `caught_up` and `checkpoint` messages.
    #[derive(ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct StreamPosition {
        /// Every position up to this one has been considered; also the message's `id`.
        position: u64,
    }

    // Written by `Subscription::next_chunk` (subscribe.rs).
    /// The data of a subscription's `shutdown` message: the server is stopping.
    #[derive(ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct StreamShutdown {
        reason: String,
    }

    // Written by `write_error` (subscribe.rs).
    /// The data of a subscription's `error` message: a read failed after the stream began.
    #[derive(ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct StreamError {
        code: ErrorCode,
        message: String,
    }
}

/// The query parameters of each operation.
mod params {
    #![expect(
        dead_code,
        reason = "these types describe query parameters and are never built"
    )]

    use factstore_core::Direction;
    use utoipa::IntoParams;

    use super::TimeOrDate;

    /// The paging of `GET /v1/events`.
    #[derive(IntoParams)]
    #[into_params(parameter_in = Query)]
    pub struct EventPageParams {
        /// Events after this position (exclusive): the `next_after_position` of the previous
        /// page.
        #[param(default = 0, minimum = 0, maximum = 9223372036854775807_u64)]
        after_position: Option<u64>,
        /// Events up to this position (inclusive).
        #[param(minimum = 0, maximum = 9223372036854775807_u64)]
        to_position: Option<u64>,
        /// Events per page: 1 to 10000 (the store's page limit; more is 400).
        #[param(default = 1000, minimum = 1, maximum = 10000)]
        limit: Option<u64>,
    }

    /// Where a subscription starts.
    #[derive(IntoParams)]
    #[into_params(parameter_in = Query)]
    pub struct SubscribeParams {
        /// Send the events after this position (exclusive). The `Last-Event-ID` header wins.
        #[param(default = 0, minimum = 0, maximum = 9223372036854775807_u64)]
        after_position: Option<u64>,
    }

    /// The filters of `GET /v1/events` and `GET /v1/subscribe`: every one given must hold.
    #[derive(IntoParams)]
    #[into_params(parameter_in = Query)]
    pub struct FilterParams {
        /// Event types, comma-separated: an event of any of them passes. Each 1 to 100 bytes.
        #[param(
            example = "MoneyDeposited,MoneyWithdrawn",
            pattern = "^[^,\\u0000-\\u001F\\u007F-\\u009F]+(,[^,\\u0000-\\u001F\\u007F-\\u009F]+)*$"
        )]
        event_type: Option<String>,
        /// Exactly this aggregate type (1 to 50 bytes).
        #[param(pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$")]
        aggregate_type: Option<String>,
        /// Exactly this aggregate (1 to 255 bytes).
        #[param(pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$")]
        aggregate_id: Option<String>,
        /// Aggregates whose id starts with this (1 to 255 bytes).
        #[param(example = "account:", pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$")]
        aggregate_id_prefix: Option<String>,
        /// Events whose `metadata.correlation_id` is this (at most 255 bytes).
        correlation_id: Option<String>,
        /// Events whose `metadata.causation_id` is this (at most 255 bytes).
        causation_id: Option<String>,
        /// Events whose `created_by` is this (at most 255 bytes).
        created_by: Option<String>,
    }

    /// Bounds on the times of events.
    #[derive(IntoParams)]
    #[into_params(parameter_in = Query)]
    pub struct TimeParams {
        /// Events whose `created_at` is at or after this: an RFC 3339 time, or a date
        /// `YYYY-MM-DD` (the start of that day).
        #[param(example = "2024-01-01", inline)]
        from: Option<TimeOrDate>,
        /// Events whose `created_at` is at or before this: an RFC 3339 time, or a date
        /// `YYYY-MM-DD` (the end of that day).
        #[param(example = "2024-01-31", inline)]
        to: Option<TimeOrDate>,
        /// The store as it was then: events whose `recorded_at` is at or before this. An RFC 3339
        /// time, or a date `YYYY-MM-DD` (the end of that day).
        #[param(example = "2024-01-15T14:00:00Z", inline)]
        as_of: Option<TimeOrDate>,
    }

    /// How to read one aggregate.
    #[derive(IntoParams)]
    #[into_params(parameter_in = Query)]
    pub struct AggregateReadParams {
        /// The first version to return, inclusive, in the direction of travel: by default 1
        /// forward, the current version backward. At least 1.
        #[param(minimum = 1, maximum = 9223372036854775807_u64)]
        from_version: Option<u64>,
        /// The last version to return, inclusive, in the direction of travel. At least 1.
        #[param(minimum = 1, maximum = 9223372036854775807_u64)]
        to_version: Option<u64>,
        /// `forward` (by increasing version) or `backward`.
        #[param(inline)]
        direction: Option<Direction>,
        /// Events per page: 1 to 10000 (the store's page limit; more is 400).
        #[param(default = 1000, minimum = 1, maximum = 10000)]
        limit: Option<u64>,
        /// The same as `to` ("replay up to this time"); give one of them, not both.
        #[param(example = "2024-01-31", inline)]
        until: Option<TimeOrDate>,
    }

    /// Which snapshot `latest` means.
    #[derive(IntoParams)]
    #[into_params(parameter_in = Query)]
    pub struct LatestSnapshotParams {
        /// The newest snapshot at or below this version (any version when absent). At least 1.
        #[param(minimum = 1, maximum = 9223372036854775807_u64)]
        max_version: Option<u64>,
    }

    /// A page of parked events.
    #[derive(IntoParams)]
    #[into_params(parameter_in = Query)]
    pub struct ParkedParams {
        /// Parked events after this position.
        #[param(default = 0, minimum = 0, maximum = 9223372036854775807_u64)]
        after_position: Option<u64>,
        /// Events per page: 1 to 1000.
        #[param(default = 100, minimum = 1, maximum = 1000)]
        limit: Option<u64>,
    }

    /// How to read one key's state.
    #[derive(IntoParams)]
    #[into_params(parameter_in = Query)]
    pub struct StateParams {
        /// `read_model` (the maintained state) or `event_store` (folded from the events up to
        /// the head: always current, slower).
        #[param(inline)]
        source: Option<StateSource>,
        /// Read-your-writes: wait until the projection has passed this position.
        #[param(minimum = 0, maximum = 9223372036854775807_u64)]
        min_position: Option<u64>,
        /// How long to wait for `min_position`, in milliseconds: at most 60000; 503
        /// `not_yet_materialized` after it.
        #[param(default = 5000, minimum = 0, maximum = 60000)]
        wait_ms: Option<u64>,
        /// Time travel: only the events whose `created_at` is at or before this (an RFC 3339
        /// time, or a date `YYYY-MM-DD`: the end of that day).
        #[param(example = "2024-01-15T14:00:00Z", inline)]
        until: Option<TimeOrDate>,
        /// Time travel: only the events whose `recorded_at` is at or before this (the store as
        /// it knew them then).
        #[param(example = "2024-01-15T14:00:00Z", inline)]
        as_of: Option<TimeOrDate>,
    }

    /// Where a state comes from.
    #[derive(utoipa::ToSchema)]
    #[serde(rename_all = "snake_case")]
    pub enum StateSource {
        ReadModel,
        EventStore,
    }

    /// The paging of states.
    #[derive(IntoParams)]
    #[into_params(parameter_in = Query)]
    pub struct StatesPageParams {
        /// States after this key (exclusive): the `next_after_key` of the previous page.
        after_key: Option<String>,
        /// States per page: 1 to 1000.
        #[param(default = 100, minimum = 1, maximum = 1000)]
        limit: Option<u64>,
    }

    /// `raw`.
    #[derive(IntoParams)]
    #[into_params(parameter_in = Query)]
    pub struct RawParam {
        /// `true`: the events exactly as stored, not upcast by the registered upcasters.
        #[param(default = false)]
        raw: Option<bool>,
    }
}

#[cfg(test)]
mod tests {
    use factstore_core::ExpectedVersion;
    use factstore_projections::ProjectionError;
    use uuid::Uuid;

    use super::*;

    /// One `ApiError` for every code that exists today, to hold [`ErrorCode::status`] to the
    /// mapping of error.rs.
    fn samples() -> Vec<ApiError> {
        vec![
            ApiError::invalid("x"),
            ApiError::Unauthorized("x".into()),
            ApiError::Forbidden("x".into()),
            ApiError::RouteNotFound,
            ApiError::MethodNotAllowed,
            ApiError::Store(StoreError::AggregateNotFound {
                aggregate_id: "a".into(),
            }),
            ApiError::Store(StoreError::EventNotFound {
                event_id: Uuid::nil(),
            }),
            ApiError::Store(StoreError::WrongExpectedVersion {
                aggregate_id: "a".into(),
                expected_version: ExpectedVersion::Exact(1),
                current_version: 2,
            }),
            ApiError::Store(StoreError::ConditionFailed {
                after_position: 1,
                conflicting_position: 2,
            }),
            ApiError::Store(StoreError::DuplicateEventId {
                event_id: Uuid::nil(),
                reason: "r".into(),
            }),
            ApiError::Store(StoreError::AggregateTypeMismatch {
                aggregate_id: "a".into(),
                existing: "A".into(),
                given: "B".into(),
            }),
            ApiError::Store(StoreError::SnapshotNotFound {
                aggregate_id: "a".into(),
                max_version: Some(3),
            }),
            ApiError::Store(StoreError::InvalidSnapshot {
                aggregate_id: "a".into(),
                version: 4,
                current_version: 3,
            }),
            ApiError::Store(StoreError::SchemaViolation {
                violations: Vec::new(),
            }),
            ApiError::Schema(factstore_schemas::SchemaError::SchemaNotFound {
                event_type: "T".into(),
            }),
            ApiError::Schema(factstore_schemas::SchemaError::SchemaExists {
                event_type: "T".into(),
                version: 1,
            }),
            ApiError::Schema(factstore_schemas::SchemaError::Incompatible {
                event_type: "T".into(),
                version: 2,
                reason: "r".into(),
            }),
            ApiError::Schema(factstore_schemas::SchemaError::PreviousVersionMissing {
                event_type: "T".into(),
                version: 2,
            }),
            ApiError::PayloadTooLarge("x".into()),
            ApiError::UnsupportedMediaType("x".into()),
            ApiError::Store(StoreError::Internal("x".into())),
            ApiError::Store(StoreError::Unavailable("x".into())),
            ApiError::Store(StoreError::ArchiveNotConfigured),
            ApiError::Backup(crate::backup::BackupError::NotSupported),
            ApiError::Backup(crate::backup::BackupError::TargetNotEmpty { to: "/b".into() }),
            ApiError::Backup(crate::backup::BackupError::Failed {
                to: "/b".into(),
                reason: "r".into(),
            }),
            ApiError::Subscription(factstore_subscriptions::SubscriptionError::NotFound {
                group: "g".into(),
            }),
            ApiError::from(ProjectionError::NotFound { name: "p".into() }),
            ApiError::from(ProjectionError::KeyNotFound {
                name: "p".into(),
                key: "k".into(),
            }),
            ApiError::from(ProjectionError::invalid("x")),
            ApiError::from(ProjectionError::NotYetMaterialized {
                name: "p".into(),
                position: 1,
                min_position: 2,
                reason: None,
            }),
        ]
    }

    #[test]
    fn every_code_has_the_status_the_error_mapping_gives_it() {
        let mut seen = Vec::new();
        for error in samples() {
            let (code, _) = error.code_and_message();
            let status = error.into_response().status();
            let documented = ErrorCode::ALL
                .into_iter()
                .find(|c| c.code() == code)
                .unwrap_or_else(|| panic!("the code '{code}' is not in ErrorCode"));
            assert_eq!(documented.status(), status, "{code}");
            seen.push(documented);
        }
        let unsampled: Vec<_> = ErrorCode::ALL.into_iter().filter(|c| !seen.contains(c)).collect();
        assert_eq!(unsampled, [], "every documented code is sampled");
    }

    #[test]
    fn the_document_builds_with_every_operation_declaring_its_errors() {
        let doc = build().unwrap_or_else(|e| panic!("{e}"));
        let operations: usize = doc
            .paths
            .paths
            .values()
            .map(|item| {
                [&item.get, &item.post, &item.put, &item.delete]
                    .into_iter()
                    .flatten()
                    .count()
            })
            .sum();
        assert_eq!(operations, OPERATIONS.len());
    }
}
