//! Several servers on one database: the routes of what only the leader runs (projections and
//! persistent subscriptions) are answered by the leader, and every other server forwards them.
//!
//! Projections fold in one process and persistent subscriptions lease events to consumers
//! from one process's memory, so a server that does not lead has neither: it passes such
//! requests to the leader it knows, unchanged (headers, token and body), and streams the
//! answer back. The leader authenticates them like any request. Everything else (appends,
//! reads, live subscriptions, schemas) every server answers itself.
//!
//! # Invariants
//! - A forwarded request carries [`FORWARDED`]; a server that receives one and does not lead
//!   answers 503 instead of forwarding again, so a stale view of who leads cannot loop.
//! - While no leader is known, or it cannot be reached, the answer is 503 `store_unavailable`
//!   with `Retry-After: 1`: the request was not carried out, and may be sent again.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::{ApiError, AppState};

/// Set on a request one server forwards to the leader.
pub const FORWARDED: &str = "x-factstore-forwarded";

/// Where the leader's work is done now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// On this server.
    Here,
    /// On the server at this URL.
    At(String),
    /// Nowhere known: at start, or while leadership changes hands.
    Unknown,
}

/// Who leads. Implemented over the storage's lease (`factstore serve --storage postgres://`).
pub trait Leadership: Send + Sync + Debug {
    fn placement(&self) -> Placement;
}

/// The leadership of a server that shares its database, and the client it forwards with.
#[derive(Debug)]
pub struct Cluster {
    leadership: Arc<dyn Leadership>,
    client: reqwest::Client,
}

impl Cluster {
    pub fn new(leadership: Arc<dyn Leadership>) -> Cluster {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            // Keep the answer as the leader gave it (a redirect or compression is the
            // client's business).
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Cluster { leadership, client }
    }

    pub fn placement(&self) -> Placement {
        self.leadership.placement()
    }
}

/// Whether a route (in the router's pattern form) is served by the leader only.
pub fn leader_only(route: &str) -> bool {
    route.starts_with("/v1/projections")
        || route.starts_with("/v1/subscriptions")
        || route == "/v1/events/{event_id}/status"
}

/// The middleware: serves the leader's routes here when this server leads, forwards them
/// otherwise, and passes every other route through.
pub async fn route(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(cluster) = state.cluster.clone() else {
        return next.run(request).await;
    };
    let for_leader = request
        .extensions()
        .get::<MatchedPath>()
        .is_some_and(|m| leader_only(m.as_str()));
    if !for_leader {
        return next.run(request).await;
    }
    match cluster.placement() {
        Placement::Here => next.run(request).await,
        Placement::Unknown => ApiError::NoLeader(
            "no server leads the projections and persistent subscriptions at the moment (a new \
             leader is being chosen); retry"
                .into(),
        )
        .into_response(),
        Placement::At(_) if request.headers().contains_key(FORWARDED) => ApiError::NoLeader(
            "this server was sent a request for the leader but does not lead (leadership is \
             changing hands); retry"
                .into(),
        )
        .into_response(),
        Placement::At(url) => match forward(&state, &cluster, &url, request).await {
            Ok(response) => response,
            Err(error) => error.into_response(),
        },
    }
}

/// Headers that belong to one connection, not to the request: never passed on.
fn hop_by_hop(name: &HeaderName) -> bool {
    [
        header::CONNECTION,
        header::HOST,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ]
    .contains(name)
        || name.as_str() == "keep-alive"
}

async fn forward(
    state: &AppState,
    cluster: &Cluster,
    leader: &str,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let limit = state.store.limits().request_bytes_max;
    let body = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::PayloadTooLarge(format!("the request body is larger than {limit} bytes")))?;
    let target = format!(
        "{}{}",
        leader.trim_end_matches('/'),
        parts
            .uri
            .path_and_query()
            .map_or(parts.uri.path(), |p| p.as_str())
    );
    let mut outgoing = cluster.client.request(parts.method, &target).body(body);
    for (name, value) in &parts.headers {
        if !hop_by_hop(name) {
            outgoing = outgoing.header(name, value);
        }
    }
    let answer =
        outgoing.header(FORWARDED, "1").send().await.map_err(|e| {
            ApiError::NoLeader(format!("the leader at {leader} cannot be reached ({e}); retry"))
        })?;
    let mut response = Response::builder().status(answer.status());
    if let Some(headers) = response.headers_mut() {
        for (name, value) in answer.headers() {
            if !hop_by_hop(name) {
                headers.append(name, value.clone());
            }
        }
    }
    response
        .body(Body::from_stream(answer.bytes_stream()))
        .map_err(|e| ApiError::NoLeader(format!("the leader's answer cannot be passed on: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_projection_and_group_routes_go_to_the_leader() {
        for (method, route) in crate::route_list() {
            let expected = route.contains("/projections")
                || route.contains("/subscriptions")
                || route.ends_with("/status");
            assert_eq!(leader_only(route), expected, "{method} {route}");
        }
    }
}
