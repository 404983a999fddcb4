//! The request log: a request id on every request and a span carrying it.
//!
//! - `x-request-id`: the client's, when it sends a short printable one; otherwise a new UUID.
//!   Echoed in the response either way, so a client can quote it in a report.
//! - Every request runs in a span `request` with `id`, `method`, `route` (the route pattern,
//!   not the raw path) and, once answered, `status`; every log line inside it (an internal
//!   error, a refused write) carries them.
//! - One line per answered request, with its status and latency, at DEBUG under the target
//!   `factstore_server::access` (enable with `FACTSTORE_LOG=info,factstore_server::access=debug`):
//!   at INFO it would cost more than the request itself on the hot path.
//! - Never logged: bodies, query strings, headers. `Authorization` and `Cookie` are marked
//!   sensitive, so even a `Debug` print of the headers by some layer shows them redacted.

use std::time::Duration;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, Response, header};
use tracing::Span;

/// The request id header.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A client's request id longer than this is replaced, so it cannot bloat every log line.
const REQUEST_ID_BYTES_MAX: usize = 128;

/// Headers never to show in logs.
pub const SENSITIVE_HEADERS: [HeaderName; 3] =
    [header::AUTHORIZATION, header::PROXY_AUTHORIZATION, header::COOKIE];

/// Drops a client's request id that is too long or not printable ASCII; the request id layer
/// then makes a new one.
pub fn drop_unusable_request_id(mut request: Request) -> Request {
    let usable = request.headers().get(&REQUEST_ID).is_none_or(|value| {
        let bytes = value.as_bytes();
        !bytes.is_empty() && bytes.len() <= REQUEST_ID_BYTES_MAX && bytes.iter().all(|b| b.is_ascii_graphic())
    });
    if !usable {
        request.headers_mut().remove(&REQUEST_ID);
    }
    request
}

/// The span of one request.
pub fn make_span<B>(request: &axum::http::Request<B>) -> Span {
    let id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str);
    tracing::info_span!(
        "request",
        id,
        method = %request.method(),
        route,
        status = tracing::field::Empty,
    )
}

/// Records the status in the span and writes the access line.
pub fn on_response<B>(response: &Response<B>, latency: Duration, span: &Span) {
    let status = response.status().as_u16();
    span.record("status", status);
    tracing::debug!(
        target: "factstore_server::access",
        status,
        latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
        "answered"
    );
}
