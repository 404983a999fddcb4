//! [`Error`]: what a request can fail with, and reading the server's error bodies.
//!
//! The server answers every error as `{"error": {"code", "message", ...details}}`. The
//! outcomes an application acts on (a version conflict, a failed condition, a duplicate
//! event id, something not found, a refused token) get their own variants with their details;
//! every other answer is [`Error::Api`]. Failing to reach the server at all is
//! [`Error::Transport`], never confused with an answer.

use std::error::Error as StdError;
use std::time::Duration;

use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::event::ExpectedVersion;

/// A boxed error cause.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// An error of a request to factstore.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// 409 `wrong_expected_version`: the aggregate is not at the version the append expected.
    /// Nothing was written. Read the aggregate again, decide again, append again.
    #[error(
        "wrong expected version for {aggregate_id}: expected {expected_version}, current {current_version}"
    )]
    WrongExpectedVersion {
        aggregate_id: String,
        expected_version: ExpectedVersion,
        current_version: u64,
    },

    /// 409 `condition_failed`: an event matching the commit's condition exists after its
    /// `after_position`. Nothing was written.
    #[error("condition failed: {message}")]
    ConditionFailed {
        after_position: Option<u64>,
        conflicting_position: Option<u64>,
        message: String,
    },

    /// 409 `duplicate_event_id`: some event id of the request is already stored, but the
    /// request is not an exact repeat of the one that stored it. Nothing was written.
    #[error("duplicate event id: {message}")]
    DuplicateEventId { event_id: Option<Uuid>, message: String },

    /// 404 `aggregate_not_found`: the aggregate has no events.
    #[error("aggregate {aggregate_id} not found")]
    AggregateNotFound { aggregate_id: String },

    /// 404 `event_not_found`.
    #[error("event {event_id} not found")]
    EventNotFound { event_id: String },

    /// 404 `snapshot_not_found`: the aggregate has no snapshot (at or below `max_version`).
    #[error("no snapshot of {aggregate_id}{}", max_version.map(|v| format!(" at or below version {v}")).unwrap_or_default())]
    SnapshotNotFound {
        aggregate_id: String,
        max_version: Option<u64>,
    },

    /// 422 `invalid_snapshot`: the aggregate has no event at the snapshot's version. Nothing
    /// was stored.
    #[error("invalid snapshot of {aggregate_id}: no version {version} (current {current_version})")]
    InvalidSnapshot {
        aggregate_id: String,
        version: u64,
        current_version: u64,
    },

    /// 404 `projection_not_found`: no projection of that name.
    #[error("projection {name} not found")]
    ProjectionNotFound { name: String },

    /// 404 `key_not_found`: the projection has no state under that key (no event with that key
    /// has been folded, or none up to the time asked for).
    #[error("no state under key {key} in projection {projection}")]
    KeyNotFound { projection: String, key: String },

    /// 422 `invalid_projection`: the definition is refused; `message` names the problem
    /// (an unknown operation, a bad JSON Pointer, a bad key). Nothing was stored.
    #[error("invalid projection: {message}")]
    InvalidProjection {
        message: String,
        /// The other fields of the error object.
        details: Map<String, Value>,
    },

    /// 503 `not_yet_materialized`: the projection had not passed `min_position` when the wait
    /// ended. Ask again after `retry_after` (the `Retry-After` header), or read with
    /// `source=event_store`.
    #[error("not yet materialized: {message}")]
    NotYetMaterialized {
        message: String,
        retry_after: Option<Duration>,
        /// The projection's position when the server gave up waiting, when it said.
        position: Option<u64>,
    },

    /// 404 `subscription_not_found`: no persistent subscription group of that name.
    #[error("subscription group {group} not found")]
    SubscriptionNotFound { group: String },

    /// 401 `unauthorized`: no token, or not a valid one.
    #[error("unauthorized: {message}")]
    Unauthorized { message: String },

    /// 403 `forbidden`: the token's role or prefixes do not allow this.
    #[error("forbidden: {message}")]
    Forbidden { message: String },

    /// Any other error answer of the server.
    #[error("{message} ({status} {code})", status = status.as_u16())]
    Api {
        status: StatusCode,
        /// The API's error code (`invalid_request`, `aggregate_type_mismatch`, …); for an
        /// answer that is not in the API's error shape (a proxy's page), `http_<status>`.
        code: String,
        message: String,
        /// The other fields of the error object.
        details: Map<String, Value>,
    },

    /// The request did not get an answer: the connection failed, was closed, or timed out.
    /// An append that failed this way may or may not have been committed; sending the same
    /// request again (same event ids) is safe and tells.
    #[error("{}", transport_message(.0))]
    Transport(#[source] reqwest::Error),

    /// The server answered something this client cannot read.
    #[error("could not read the server's answer: {message}")]
    Decode {
        message: String,
        #[source]
        source: Option<BoxError>,
    },

    /// A setting of the client is wrong (the URL, a certificate, the token).
    #[error("invalid client configuration: {0}")]
    Config(String),
}

/// A `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Error::WrongExpectedVersion { .. }
            | Error::ConditionFailed { .. }
            | Error::DuplicateEventId { .. } => Some(StatusCode::CONFLICT),
            Error::AggregateNotFound { .. }
            | Error::EventNotFound { .. }
            | Error::SnapshotNotFound { .. } => Some(StatusCode::NOT_FOUND),
            Error::ProjectionNotFound { .. }
            | Error::KeyNotFound { .. }
            | Error::SubscriptionNotFound { .. } => Some(StatusCode::NOT_FOUND),
            Error::InvalidSnapshot { .. } | Error::InvalidProjection { .. } => {
                Some(StatusCode::UNPROCESSABLE_ENTITY)
            }
            Error::NotYetMaterialized { .. } => Some(StatusCode::SERVICE_UNAVAILABLE),
            Error::Unauthorized { .. } => Some(StatusCode::UNAUTHORIZED),
            Error::Forbidden { .. } => Some(StatusCode::FORBIDDEN),
            Error::Api { status, .. } => Some(*status),
            Error::Transport(_) | Error::Decode { .. } | Error::Config(_) => None,
        }
    }

    /// The API's error code, when the server answered.
    pub fn code(&self) -> Option<&str> {
        Some(match self {
            Error::WrongExpectedVersion { .. } => "wrong_expected_version",
            Error::ConditionFailed { .. } => "condition_failed",
            Error::DuplicateEventId { .. } => "duplicate_event_id",
            Error::AggregateNotFound { .. } => "aggregate_not_found",
            Error::EventNotFound { .. } => "event_not_found",
            Error::SnapshotNotFound { .. } => "snapshot_not_found",
            Error::InvalidSnapshot { .. } => "invalid_snapshot",
            Error::ProjectionNotFound { .. } => "projection_not_found",
            Error::KeyNotFound { .. } => "key_not_found",
            Error::InvalidProjection { .. } => "invalid_projection",
            Error::NotYetMaterialized { .. } => "not_yet_materialized",
            Error::SubscriptionNotFound { .. } => "subscription_not_found",
            Error::Unauthorized { .. } => "unauthorized",
            Error::Forbidden { .. } => "forbidden",
            Error::Api { code, .. } => code,
            Error::Transport(_) | Error::Decode { .. } | Error::Config(_) => return None,
        })
    }

    /// A 409: the request conflicts with what is stored (nothing was written).
    pub fn is_conflict(&self) -> bool {
        self.status() == Some(StatusCode::CONFLICT)
    }

    /// A 404.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(StatusCode::NOT_FOUND)
    }

    /// Whether a request that failed this way may succeed if sent again unchanged: no answer
    /// at all, or a 502/503/504 (a proxy without a backend, a store refusing writes for a
    /// while). Never a 4xx: those say the request itself is wrong or conflicts. Not
    /// [`Error::NotYetMaterialized`] either: the request already waited as long as it asked
    /// to, and the caller decides whether to wait more.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Transport(e) => !e.is_builder() && !e.is_redirect(),
            Error::Api { status, .. } => retryable_status(*status),
            _ => false,
        }
    }

    pub(crate) fn decode(message: impl Into<String>, source: impl Into<BoxError>) -> Error {
        Error::Decode {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// The error of a non-success answer with `body`, for the request of `context` (which
    /// names the projection, key or group the request was about, for the variants that name
    /// them when the server's details do not).
    pub(crate) fn from_answer(
        status: StatusCode,
        retry_after: Option<Duration>,
        body: &[u8],
        context: &Context,
    ) -> Error {
        match Error::from_response(status, body) {
            Error::Api {
                status: StatusCode::NOT_FOUND,
                code,
                message,
                details,
            } if code == "projection_not_found"
                || code == "key_not_found"
                || code == "subscription_not_found" =>
            {
                let detail = |keys: &[&str], fallback: &Option<String>| {
                    keys.iter()
                        .find_map(|k| details.get(*k).and_then(Value::as_str).map(str::to_owned))
                        .or_else(|| fallback.clone())
                };
                match code.as_str() {
                    "projection_not_found" => match detail(&["name", "projection"], &context.projection) {
                        Some(name) => Error::ProjectionNotFound { name },
                        None => Error::Api {
                            status: StatusCode::NOT_FOUND,
                            code,
                            message,
                            details,
                        },
                    },
                    "key_not_found" => match (
                        detail(&["projection", "name"], &context.projection),
                        detail(&["key"], &context.key),
                    ) {
                        (Some(projection), Some(key)) => Error::KeyNotFound { projection, key },
                        _ => Error::Api {
                            status: StatusCode::NOT_FOUND,
                            code,
                            message,
                            details,
                        },
                    },
                    _ => match detail(&["group", "subscription", "name"], &context.group) {
                        Some(group) => Error::SubscriptionNotFound { group },
                        None => Error::Api {
                            status: StatusCode::NOT_FOUND,
                            code,
                            message,
                            details,
                        },
                    },
                }
            }
            Error::Api {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                code,
                message,
                details,
            } if code == "invalid_projection" => Error::InvalidProjection { message, details },
            Error::Api {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code,
                message,
                details,
            } if code == "not_yet_materialized" => Error::NotYetMaterialized {
                message,
                retry_after,
                position: details.get("position").and_then(Value::as_u64),
            },
            other => other,
        }
    }

    /// The error of a non-success answer with `body`.
    pub(crate) fn from_response(status: StatusCode, body: &[u8]) -> Error {
        #[derive(Deserialize)]
        struct Envelope {
            error: Map<String, Value>,
        }
        let Ok(Envelope { error: mut details }) = serde_json::from_slice::<Envelope>(body) else {
            // Not our shape: a proxy, a load balancer, something else on that port.
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            let message = if text.is_empty() {
                status.canonical_reason().unwrap_or("no message").to_owned()
            } else {
                text.chars().take(300).collect()
            };
            return Error::Api {
                status,
                code: format!("http_{}", status.as_u16()),
                message,
                details: Map::new(),
            };
        };
        let take_str = |details: &mut Map<String, Value>, key: &str| match details.remove(key) {
            Some(Value::String(s)) => Some(s),
            _ => None,
        };
        let code = take_str(&mut details, "code").unwrap_or_default();
        let message = take_str(&mut details, "message").unwrap_or_default();
        let u64_of = |key: &str| details.get(key).and_then(Value::as_u64);
        let str_of = |key: &str| details.get(key).and_then(Value::as_str).map(str::to_owned);
        let specific = match (status, code.as_str()) {
            (StatusCode::CONFLICT, "wrong_expected_version") => {
                let expected = details
                    .get("expected_version")
                    .and_then(|v| ExpectedVersion::deserialize(v).ok());
                match (str_of("aggregate_id"), expected, u64_of("current_version")) {
                    (Some(aggregate_id), Some(expected_version), Some(current_version)) => {
                        Some(Error::WrongExpectedVersion {
                            aggregate_id,
                            expected_version,
                            current_version,
                        })
                    }
                    _ => None,
                }
            }
            (StatusCode::CONFLICT, "condition_failed") => Some(Error::ConditionFailed {
                after_position: u64_of("after_position"),
                conflicting_position: u64_of("conflicting_position"),
                message: message.clone(),
            }),
            (StatusCode::CONFLICT, "duplicate_event_id") => Some(Error::DuplicateEventId {
                event_id: str_of("event_id").and_then(|s| Uuid::try_parse(&s).ok()),
                message: message.clone(),
            }),
            (StatusCode::NOT_FOUND, "aggregate_not_found") => {
                str_of("aggregate_id").map(|aggregate_id| Error::AggregateNotFound { aggregate_id })
            }
            (StatusCode::NOT_FOUND, "event_not_found") => {
                str_of("event_id").map(|event_id| Error::EventNotFound { event_id })
            }
            (StatusCode::NOT_FOUND, "snapshot_not_found") => {
                str_of("aggregate_id").map(|aggregate_id| Error::SnapshotNotFound {
                    aggregate_id,
                    max_version: u64_of("max_version"),
                })
            }
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_snapshot") => {
                match (
                    str_of("aggregate_id"),
                    u64_of("version"),
                    u64_of("current_version"),
                ) {
                    (Some(aggregate_id), Some(version), Some(current_version)) => {
                        Some(Error::InvalidSnapshot {
                            aggregate_id,
                            version,
                            current_version,
                        })
                    }
                    _ => None,
                }
            }
            (StatusCode::UNAUTHORIZED, _) => Some(Error::Unauthorized {
                message: message.clone(),
            }),
            (StatusCode::FORBIDDEN, _) => Some(Error::Forbidden {
                message: message.clone(),
            }),
            _ => None,
        };
        specific.unwrap_or(Error::Api {
            status,
            code,
            message,
            details,
        })
    }
}

/// What a request was about, for errors whose details the server may leave out.
#[derive(Debug, Clone, Default)]
pub(crate) struct Context {
    pub(crate) projection: Option<String>,
    pub(crate) key: Option<String>,
    pub(crate) group: Option<String>,
}

impl Context {
    pub(crate) fn projection(name: &str) -> Context {
        Context {
            projection: Some(name.to_owned()),
            ..Context::default()
        }
    }

    pub(crate) fn key(projection: &str, key: &str) -> Context {
        Context {
            projection: Some(projection.to_owned()),
            key: Some(key.to_owned()),
            group: None,
        }
    }

    pub(crate) fn group(group: &str) -> Context {
        Context {
            group: Some(group.to_owned()),
            ..Context::default()
        }
    }
}

/// `Retry-After` in seconds (the HTTP-date form is not used by factstore).
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

pub(crate) fn retryable_status(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

/// One sentence for a transport failure: what was asked and the innermost cause (reqwest's
/// own message is "error sending request", with the useful part several sources down).
fn transport_message(error: &reqwest::Error) -> String {
    let url = error
        .url()
        .map(|u| {
            let mut u = u.clone();
            u.set_query(None);
            u.to_string()
        })
        .unwrap_or_else(|| "the server".to_owned());
    if error.is_timeout() {
        return format!("no answer from {url}: timed out");
    }
    let mut root: &dyn StdError = error;
    while let Some(next) = root.source() {
        root = next;
    }
    if error.is_connect() {
        format!("cannot connect to {url}: {root}")
    } else {
        format!("request to {url} failed: {root}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_become_variants() {
        let body = br#"{"error":{"code":"wrong_expected_version","message":"m","aggregate_id":"account:1","expected_version":3,"current_version":5}}"#;
        let error = Error::from_response(StatusCode::CONFLICT, body);
        assert_eq!(
            error.to_string(),
            "wrong expected version for account:1: expected 3, current 5"
        );
        assert!(error.is_conflict() && !error.is_retryable());

        let body = br#"{"error":{"code":"aggregate_type_mismatch","message":"nope","aggregate_id":"a"}}"#;
        match Error::from_response(StatusCode::CONFLICT, body) {
            Error::Api {
                code,
                details,
                message,
                ..
            } => {
                assert_eq!(
                    (code.as_str(), message.as_str()),
                    ("aggregate_type_mismatch", "nope")
                );
                assert_eq!(details.get("aggregate_id"), Some(&Value::from("a")));
                assert!(details.get("code").is_none());
            }
            other => panic!("unexpected {other:?}"),
        }

        let error = Error::from_response(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>");
        assert_eq!(error.code(), Some("http_502"));
        assert!(error.is_retryable());
    }

    #[test]
    fn projection_and_subscription_errors_name_what_was_asked() {
        let body = br#"{"error":{"code":"projection_not_found","message":"no projection balances"}}"#;
        let error = Error::from_answer(
            StatusCode::NOT_FOUND,
            None,
            body,
            &Context::projection("balances"),
        );
        assert!(matches!(&error, Error::ProjectionNotFound { name } if name == "balances"));
        assert_eq!(error.code(), Some("projection_not_found"));
        assert!(error.is_not_found());

        let body = br#"{"error":{"code":"key_not_found","message":"m","key":"account:9"}}"#;
        let error = Error::from_answer(StatusCode::NOT_FOUND, None, body, &Context::key("balances", "x"));
        assert_eq!(
            error.to_string(),
            "no state under key account:9 in projection balances"
        );

        let body = br#"{"error":{"code":"subscription_not_found","message":"m","group":"billing"}}"#;
        let error = Error::from_answer(StatusCode::NOT_FOUND, None, body, &Context::default());
        assert!(matches!(error, Error::SubscriptionNotFound { group } if group == "billing"));

        let body = br#"{"error":{"code":"invalid_projection","message":"unknown op 'mul' at /on/X/0"}}"#;
        let error = Error::from_answer(StatusCode::UNPROCESSABLE_ENTITY, None, body, &Context::default());
        assert_eq!(
            error.to_string(),
            "invalid projection: unknown op 'mul' at /on/X/0"
        );
        assert_eq!(error.status(), Some(StatusCode::UNPROCESSABLE_ENTITY));

        let body = br#"{"error":{"code":"not_yet_materialized","message":"behind","position":41}}"#;
        let retry_after = parse_retry_after(" 2 ");
        let error = Error::from_answer(
            StatusCode::SERVICE_UNAVAILABLE,
            retry_after,
            body,
            &Context::default(),
        );
        match &error {
            Error::NotYetMaterialized {
                retry_after,
                position,
                ..
            } => assert_eq!(
                (*retry_after, *position),
                (Some(Duration::from_secs(2)), Some(41))
            ),
            other => panic!("unexpected {other:?}"),
        }
        assert!(!error.is_retryable(), "the wait already happened on the server");
        // A 503 of another kind is still retried.
        let body = br#"{"error":{"code":"store_unavailable","message":"fsync failed"}}"#;
        assert!(
            Error::from_answer(StatusCode::SERVICE_UNAVAILABLE, None, body, &Context::default())
                .is_retryable()
        );
    }
}
