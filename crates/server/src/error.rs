//! [`ApiError`]: every error the API answers with, and the one place where errors become HTTP.
//!
//! Every failure, whether the store's ([`StoreError`]) or the request's (a malformed body, a
//! bad parameter, an unknown route), ends up here and leaves as
//! `{"error": {"code": "<code>", "message": "<sentence>", ...details}}` with the status of the
//! API contract. Handlers and extractors never build an error response themselves, so the
//! mapping below is the whole table.
//!
//! No message names a file of the server: the causes of `internal` errors and of the
//! unavailable projection, subscription and schema storage go to the log, and the client reads
//! a fixed sentence. The store's `Unavailable` message is shown as it is: every backend words
//! it for clients (the engine from `EngineError::public_reason`), since it says why writes are
//! refused and that a restart is needed.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use factstore_core::StoreError;
use factstore_projections::ProjectionError;
use factstore_schemas::SchemaError;
use factstore_subscriptions::SubscriptionError;
use serde_json::{Map, Value, json};

use crate::backup::BackupError;

/// An error answered to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// Anything the store reports.
    Store(StoreError),
    /// What the schema registry reports about a schema or upcaster change or lookup.
    Schema(SchemaError),
    /// Anything a persistent subscription reports.
    Subscription(SubscriptionError),
    /// What the projections report (but the store's errors, which are `Store`).
    Projection(ProjectionError),
    /// A request the server could not read: malformed JSON, a bad field, a bad parameter,
    /// a bad path segment. The message names the problem.
    InvalidRequest(String),
    /// The body exceeds the request size limit (before it could be parsed).
    PayloadTooLarge(String),
    /// A body sent with a `Content-Type` other than `application/json`.
    UnsupportedMediaType(String),
    /// The server needs a token and the request has none, or one it does not know. The
    /// message never repeats the token.
    Unauthorized(String),
    /// A valid token whose role or aggregate prefixes do not allow this request.
    Forbidden(String),
    /// No route has this path.
    RouteNotFound,
    /// A route has this path but not this method.
    MethodNotAllowed,
    /// A request for the leader (projections, persistent subscriptions) while no server leads
    /// or the leader cannot be reached: the message says which. Retried after a second.
    NoLeader(String),
    /// The server is at one of its bounds on concurrent clients (`--max-subscribers`): the
    /// message says which. Answered with `Retry-After`.
    Overloaded(String),
    /// A backup that was refused or did not complete.
    Backup(BackupError),
}

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::InvalidRequest(message.into())
    }

    /// The code and the human sentence, for errors reported inside a stream that has already
    /// begun (where no status can be sent any more).
    pub fn code_and_message(&self) -> (&'static str, String) {
        (self.parts().1, self.message())
    }

    /// The status, the code and the details of this error: the mapping table of the API.
    fn parts(&self) -> (StatusCode, &'static str, Map<String, Value>) {
        let mut details = Map::new();
        let mut detail = |key: &str, value: Value| {
            details.insert(key.to_owned(), value);
        };
        let (status, code) = match self {
            ApiError::InvalidRequest(_) | ApiError::Store(StoreError::InvalidRequest(_)) => {
                (StatusCode::BAD_REQUEST, "invalid_request")
            }
            ApiError::PayloadTooLarge(_) | ApiError::Store(StoreError::PayloadTooLarge(_)) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::RouteNotFound => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::NoLeader(_) | ApiError::Overloaded(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
            }
            ApiError::Store(StoreError::WrongExpectedVersion {
                aggregate_id,
                expected_version,
                current_version,
            }) => {
                detail("aggregate_id", json!(aggregate_id));
                detail("expected_version", json!(expected_version));
                detail("current_version", json!(current_version));
                (StatusCode::CONFLICT, "wrong_expected_version")
            }
            ApiError::Store(StoreError::ConditionFailed {
                after_position,
                conflicting_position,
            }) => {
                detail("after_position", json!(after_position));
                detail("conflicting_position", json!(conflicting_position));
                (StatusCode::CONFLICT, "condition_failed")
            }
            ApiError::Store(StoreError::DuplicateEventId { event_id, .. }) => {
                detail("event_id", json!(event_id));
                (StatusCode::CONFLICT, "duplicate_event_id")
            }
            ApiError::Store(StoreError::AggregateTypeMismatch {
                aggregate_id,
                existing,
                given,
            }) => {
                detail("aggregate_id", json!(aggregate_id));
                detail("existing", json!(existing));
                detail("given", json!(given));
                (StatusCode::CONFLICT, "aggregate_type_mismatch")
            }
            ApiError::Store(StoreError::AggregateNotFound { aggregate_id }) => {
                detail("aggregate_id", json!(aggregate_id));
                (StatusCode::NOT_FOUND, "aggregate_not_found")
            }
            ApiError::Store(StoreError::EventNotFound { event_id }) => {
                detail("event_id", json!(event_id));
                (StatusCode::NOT_FOUND, "event_not_found")
            }
            ApiError::Store(StoreError::InvalidSnapshot {
                aggregate_id,
                version,
                current_version,
            }) => {
                detail("aggregate_id", json!(aggregate_id));
                detail("version", json!(version));
                detail("current_version", json!(current_version));
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_snapshot")
            }
            ApiError::Store(StoreError::SnapshotNotFound {
                aggregate_id,
                max_version,
            }) => {
                detail("aggregate_id", json!(aggregate_id));
                if let Some(max_version) = max_version {
                    detail("max_version", json!(max_version));
                }
                (StatusCode::NOT_FOUND, "snapshot_not_found")
            }
            ApiError::Store(StoreError::SchemaViolation { violations }) => {
                detail("violations", json!(violations));
                (StatusCode::UNPROCESSABLE_ENTITY, "schema_violation")
            }
            ApiError::Schema(SchemaError::InvalidRequest(_)) => (StatusCode::BAD_REQUEST, "invalid_request"),
            ApiError::Schema(SchemaError::SchemaNotFound { event_type }) => {
                detail("event_type", json!(event_type));
                (StatusCode::NOT_FOUND, "schema_not_found")
            }
            ApiError::Schema(SchemaError::SchemaExists { event_type, version }) => {
                detail("event_type", json!(event_type));
                detail("version", json!(version));
                (StatusCode::CONFLICT, "schema_exists")
            }
            ApiError::Schema(SchemaError::PreviousVersionMissing { event_type, version }) => {
                detail("event_type", json!(event_type));
                detail("version", json!(version));
                (StatusCode::CONFLICT, "schema_version_missing")
            }
            ApiError::Schema(SchemaError::Incompatible {
                event_type,
                version,
                reason,
            }) => {
                detail("event_type", json!(event_type));
                detail("version", json!(version));
                detail("reason", json!(reason));
                (StatusCode::CONFLICT, "incompatible_schema")
            }
            ApiError::Store(StoreError::ArchiveNotConfigured) => {
                (StatusCode::CONFLICT, "archive_not_configured")
            }
            ApiError::Backup(BackupError::NotSupported) => (StatusCode::CONFLICT, "backup_not_supported"),
            ApiError::Backup(BackupError::InvalidTarget(_)) => (StatusCode::BAD_REQUEST, "invalid_request"),
            ApiError::Backup(BackupError::TargetNotEmpty { to }) => {
                detail("to", json!(to));
                (StatusCode::CONFLICT, "backup_target_not_empty")
            }
            ApiError::Backup(BackupError::Failed { to, .. }) => {
                detail("to", json!(to));
                (StatusCode::INTERNAL_SERVER_ERROR, "backup_failed")
            }
            ApiError::Store(StoreError::Unavailable(_))
            | ApiError::Schema(SchemaError::Unavailable(_) | SchemaError::Stale)
            | ApiError::Subscription(SubscriptionError::Unavailable(_)) => {
                (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
            }
            ApiError::Subscription(SubscriptionError::NotFound { group }) => {
                detail("group", json!(group));
                (StatusCode::NOT_FOUND, "subscription_not_found")
            }
            ApiError::Subscription(SubscriptionError::Invalid(_)) => {
                (StatusCode::BAD_REQUEST, "invalid_request")
            }
            // `Internal`, and any variant added later.
            ApiError::Subscription(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            ApiError::Projection(ProjectionError::Unavailable(_) | ProjectionError::ShuttingDown) => {
                (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
            }
            ApiError::Projection(ProjectionError::InvalidRequest(_)) => {
                (StatusCode::BAD_REQUEST, "invalid_request")
            }
            ApiError::Projection(ProjectionError::Invalid(_)) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_projection")
            }
            ApiError::Projection(ProjectionError::NotFound { name }) => {
                detail("projection", json!(name));
                (StatusCode::NOT_FOUND, "projection_not_found")
            }
            ApiError::Projection(ProjectionError::KeyNotFound { name, key }) => {
                detail("projection", json!(name));
                detail("key", json!(key));
                (StatusCode::NOT_FOUND, "key_not_found")
            }
            ApiError::Projection(ProjectionError::NotYetMaterialized {
                name,
                position,
                min_position,
                ..
            }) => {
                detail("projection", json!(name));
                detail("position", json!(position));
                detail("min_position", json!(min_position));
                (StatusCode::SERVICE_UNAVAILABLE, "not_yet_materialized")
            }
            // `Internal`, and any variant added later: a fault on our side.
            ApiError::Projection(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            // `Internal`, and any variant added to the (non-exhaustive) store error later: a
            // fault on our side until someone maps it deliberately.
            ApiError::Store(_) | ApiError::Schema(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        (status, code, details)
    }

    /// The human sentence of the error.
    fn message(&self) -> String {
        match self {
            ApiError::Store(StoreError::Internal(_)) => {
                // The cause may describe files or data of the server: it goes to the log only.
                "the store failed internally; the server log has the details".to_owned()
            }
            ApiError::Store(error) => error.to_string(),
            ApiError::Schema(SchemaError::Unavailable(_)) => {
                "the schema registry cannot record changes: a write failed; the server log has the details"
                    .to_owned()
            }
            ApiError::Schema(error) => error.to_string(),
            ApiError::Subscription(SubscriptionError::Internal(_)) => {
                "the server failed internally; the server log has the details".to_owned()
            }
            ApiError::Subscription(SubscriptionError::Unavailable(_)) => {
                "the subscription group cannot record its state: a write of its journal or the store \
                 failed; the server log has the details"
                    .to_owned()
            }
            ApiError::Subscription(error) => error.to_string(),
            ApiError::Projection(ProjectionError::Internal(_)) => {
                "the projection storage failed internally; the server log has the details".to_owned()
            }
            ApiError::Projection(ProjectionError::Unavailable(_)) => {
                "the projection storage cannot record this: a write failed; the server log has the details"
                    .to_owned()
            }
            ApiError::Projection(error) => error.to_string(),
            ApiError::InvalidRequest(message)
            | ApiError::PayloadTooLarge(message)
            | ApiError::UnsupportedMediaType(message)
            | ApiError::Unauthorized(message)
            | ApiError::Forbidden(message)
            | ApiError::NoLeader(message)
            | ApiError::Overloaded(message) => message.clone(),
            ApiError::Backup(BackupError::NotSupported) => {
                "this server cannot make backups: it runs on PostgreSQL (back up the database with \
                 pg_dump) or over a store in memory"
                    .to_owned()
            }
            ApiError::Backup(BackupError::InvalidTarget(message)) => message.clone(),
            ApiError::Backup(BackupError::TargetNotEmpty { to }) => {
                format!("{to} is not empty: a backup goes into a folder that does not exist or is empty")
            }
            ApiError::Backup(BackupError::Failed { to, reason }) => format!(
                "the backup failed: {reason}; {to} holds an incomplete copy (without \
                 BACKUP_COMPLETE, so no restore takes it): remove it before trying again"
            ),
            ApiError::RouteNotFound => "no such route".to_owned(),
            ApiError::MethodNotAllowed => "this route does not accept this method".to_owned(),
        }
    }
}

impl From<SubscriptionError> for ApiError {
    fn from(error: SubscriptionError) -> ApiError {
        ApiError::Subscription(error)
    }
}

impl From<ProjectionError> for ApiError {
    fn from(error: ProjectionError) -> ApiError {
        match error {
            ProjectionError::Store(error) => ApiError::Store(error),
            other => ApiError::Projection(other),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        ApiError::Store(error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, mut body) = self.parts();
        match &self {
            ApiError::Store(StoreError::Unavailable(cause)) => {
                tracing::warn!(%cause, "refusing a write: the store is unavailable");
            }
            ApiError::Schema(SchemaError::Unavailable(cause)) => {
                tracing::warn!(%cause, "refusing a schema change: the registry cannot write");
            }
            ApiError::Store(error) if status == StatusCode::INTERNAL_SERVER_ERROR => {
                tracing::error!(%error, "internal store error");
            }
            ApiError::Subscription(SubscriptionError::Unavailable(cause)) => {
                tracing::warn!(%cause, "refusing a subscription change: its journal is unavailable");
            }
            ApiError::Subscription(error) if status == StatusCode::INTERNAL_SERVER_ERROR => {
                tracing::error!(%error, "internal subscription error");
            }
            ApiError::Projection(ProjectionError::Unavailable(cause)) => {
                tracing::warn!(%cause, "refusing a projection change: its storage cannot write");
            }
            ApiError::Projection(error) if status == StatusCode::INTERNAL_SERVER_ERROR => {
                tracing::error!(%error, "internal projection error");
            }
            ApiError::NoLeader(cause) => tracing::warn!(%cause, "cannot serve a request for the leader"),
            ApiError::Backup(BackupError::Failed { to, reason }) => {
                tracing::error!(to, reason, "a backup failed");
            }
            _ => {}
        }
        crate::metrics::record_error(code);
        body.insert("code".to_owned(), Value::from(code));
        body.insert("message".to_owned(), Value::from(self.message()));
        let body = json!({ "error": body });
        // Serialising a Value into a Vec cannot fail.
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let mut response = (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response();
        if code == "not_yet_materialized" {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from(crate::projections::RETRY_AFTER_SECONDS),
            );
        }
        if matches!(self, ApiError::NoLeader(_)) {
            // A new leader is usually in place within a second or two.
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(1));
        }
        if matches!(self, ApiError::Overloaded(_)) {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from(crate::budget::RETRY_AFTER_SECONDS),
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            // RFC 6750: a 401 names the scheme the client should use.
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static(r#"Bearer realm="factstore""#),
            );
        }
        response
    }
}
