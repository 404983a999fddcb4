//! `GET /metrics`: counters, gauges and histograms in the Prometheus text format.
//!
//! Code anywhere in the process records through the `metrics` facade (`metrics::counter!` and
//! friends; the engine's writer times its fsyncs that way); this module installs the one global
//! Prometheus recorder and renders it in our own route, so there is no second listener.
//!
//! The recorder is global to the process and installed once, by the first
//! [`app_with_state`](crate::app_with_state); later apps (tests build many) share it. Counters therefore add up
//! over every app of a process. If some other recorder was installed first, ours is not, and
//! `/metrics` shows only what is set at scrape time.
//!
//! # Names
//! | name | kind | labels | what |
//! | --- | --- | --- | --- |
//! | `factstore_http_requests_total` | counter | `method`, `route`, `status` | requests answered |
//! | `factstore_http_request_duration_seconds` | histogram | `method`, `route` | time to the response head |
//! | `factstore_errors_total` | counter | `code` | error responses, by API error code |
//! | `factstore_append_requests_total` | counter | `result` (`created`, `replayed`) | successful appends |
//! | `factstore_append_events_total` | counter | | events written |
//! | `factstore_append_bytes_total` | counter | | `event_data` + `metadata` bytes written |
//! | `factstore_append_batch_events` | histogram | | events per written append request |
//! | `factstore_fsync_duration_seconds` | histogram | | the engine's data sync of a commit group |
//! | `factstore_subscribers` | gauge | | open live subscriptions |
//! | `factstore_head_position` | gauge | | the last committed position, at scrape time |
//! | `factstore_upcast_failures_total` | counter | | events read as stored because an upcaster failed on them (recorded by `factstore-schemas`) |
//! | `factstore_store_writable` | gauge | | 1, or 0 while the store refuses writes until a restart (`/health` says why) |
//! | `factstore_response_bytes_pending` | gauge | | response chunks rendered, not yet written to a socket |
//!
//! `route` is the route's pattern (`/v1/aggregates/{aggregate_id}/events`), never the raw path,
//! so ids do not create series; requests no route matched count as `unmatched`.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use factstore_core::{Commit, CommitOutcome, NewEvent};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::AppState;
use crate::error::ApiError;

/// The gauge of open live subscriptions.
pub const SUBSCRIBERS: &str = "factstore_subscribers";
/// The engine's fsync histogram; recorded by the engine under this name.
pub const FSYNC_SECONDS: &str = "factstore_fsync_duration_seconds";

const REQUESTS: &str = "factstore_http_requests_total";
const REQUEST_SECONDS: &str = "factstore_http_request_duration_seconds";
const ERRORS: &str = "factstore_errors_total";
const APPEND_REQUESTS: &str = "factstore_append_requests_total";
const APPEND_EVENTS: &str = "factstore_append_events_total";
const APPEND_BYTES: &str = "factstore_append_bytes_total";
const APPEND_BATCH: &str = "factstore_append_batch_events";
const HEAD: &str = "factstore_head_position";
const WRITABLE: &str = "factstore_store_writable";
const BODY_BYTES: &str = "factstore_response_bytes_pending";

/// From 100 µs (an fsync on a fast NVMe disk, a cached read) to 10 s (a stalled disk).
const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 10_000.0, 100_000.0,
];
/// Histograms keep raw samples until drained; without scrapes, upkeep drains them.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global recorder the first time; returns its handle every time.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), SECONDS_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(APPEND_BATCH.to_owned()), BATCH_BUCKETS));
        let recorder = match builder {
            Ok(builder) => builder.build_recorder(),
            // Only empty bucket lists fail, and ours are constants.
            Err(error) => {
                tracing::error!(%error, "metrics buckets refused; histograms render as summaries");
                PrometheusBuilder::new().build_recorder()
            }
        };
        let handle = recorder.handle();
        match metrics::set_global_recorder(recorder) {
            Ok(()) => {
                describe();
                let upkeep = handle.clone();
                let spawned = std::thread::Builder::new()
                    .name("metrics-upkeep".to_owned())
                    .spawn(move || {
                        loop {
                            std::thread::sleep(UPKEEP_INTERVAL);
                            upkeep.run_upkeep();
                        }
                    });
                if let Err(error) = spawned {
                    tracing::warn!(%error, "no metrics upkeep thread; histograms drain only when scraped");
                }
            }
            Err(_) => {
                tracing::warn!(
                    "another metrics recorder is installed; /metrics shows only scrape-time gauges"
                )
            }
        }
        handle
    })
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        REQUESTS,
        "HTTP requests answered, by method, route pattern and status"
    );
    describe_histogram!(
        REQUEST_SECONDS,
        Unit::Seconds,
        "Time from request to response head, by route"
    );
    describe_counter!(ERRORS, "Error responses, by API error code");
    describe_counter!(
        APPEND_REQUESTS,
        "Successful append requests (created or idempotent replay)"
    );
    describe_counter!(APPEND_EVENTS, "Events written by appends");
    describe_counter!(
        APPEND_BYTES,
        Unit::Bytes,
        "event_data and metadata bytes written by appends"
    );
    describe_histogram!(APPEND_BATCH, "Events per written append request");
    describe_histogram!(
        FSYNC_SECONDS,
        Unit::Seconds,
        "Data sync of one commit group by the engine's writer"
    );
    describe_gauge!(SUBSCRIBERS, "Open live subscriptions (GET /v1/subscribe)");
    describe_gauge!(HEAD, "The last committed position, at scrape time");
    describe_gauge!(
        WRITABLE,
        "1 while the store accepts writes; 0 once it refuses them until a restart (see /health)"
    );
    describe_gauge!(
        BODY_BYTES,
        Unit::Bytes,
        "Response chunks rendered and not yet written to a socket (clients that do not read)"
    );
}

/// `GET /metrics`
pub async fn render(State(state): State<AppState>) -> Result<Response, ApiError> {
    let handle = install();
    let head = state.store.head().await?;
    metrics::gauge!(HEAD).set(head.position as f64);
    let writable = matches!(state.raw_store.health(), factstore_core::StoreHealth::Writable);
    metrics::gauge!(WRITABLE).set(if writable { 1.0 } else { 0.0 });
    let body = handle.render();
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        body,
    )
        .into_response())
}

/// Middleware: counts every request and times it, labelled by the matched route pattern.
pub async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!(REQUEST_SECONDS, "method" => method, "route" => route.clone())
        .record(started.elapsed());
    metrics::counter!(REQUESTS, "method" => method, "route" => route, "status" => status).increment(1);
    response
}

/// The method as a label; any method outside the standard ones is `other`, so a client cannot
/// create series at will.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Counts one error response (called by `ApiError`'s `IntoResponse`, the one place).
pub(crate) fn record_error(code: &'static str) {
    metrics::counter!(ERRORS, "code" => code).increment(1);
}

fn payload_bytes(event: &NewEvent) -> usize {
    event.event_data.get().len() + event.metadata.as_ref().map_or(0, |m| m.get().len())
}

/// What a commit will write, measured before it is handed to the store (which consumes it).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CommitSize {
    events: usize,
    bytes: usize,
}

impl CommitSize {
    pub(crate) fn of(commit: &Commit) -> CommitSize {
        let events = commit.appends.iter().flat_map(|a| &a.events);
        CommitSize {
            events: commit.appends.iter().map(|a| a.events.len()).sum(),
            bytes: events.map(payload_bytes).sum(),
        }
    }

    /// Counts a successful append.
    pub(crate) fn record(self, outcome: &CommitOutcome) {
        if outcome.created {
            metrics::counter!(APPEND_REQUESTS, "result" => "created").increment(1);
            metrics::counter!(APPEND_EVENTS).increment(self.events as u64);
            metrics::counter!(APPEND_BYTES).increment(self.bytes as u64);
            metrics::histogram!(APPEND_BATCH).record(self.events as f64);
        } else {
            metrics::counter!(APPEND_REQUESTS, "result" => "replayed").increment(1);
        }
    }
}

/// Counts `bytes` of a response chunk rendered (see [`crate::budget`]).
pub(crate) fn body_bytes_add(bytes: usize) {
    metrics::gauge!(BODY_BYTES).increment(bytes as f64);
}

/// Counts `bytes` of a response chunk written or dropped.
pub(crate) fn body_bytes_sub(bytes: usize) {
    metrics::gauge!(BODY_BYTES).decrement(bytes as f64);
}

/// Counts one open live subscription in `factstore_subscribers` until dropped.
///
/// The subscription handler keeps it inside its stream, so the gauge falls however the stream
/// ends (client gone, shutdown, error).
#[derive(Debug)]
#[must_use = "the subscriber is counted only while the guard lives"]
pub struct SubscriberGuard(());

/// Counts a new subscriber; see [`SubscriberGuard`].
pub fn subscriber_guard() -> SubscriberGuard {
    metrics::gauge!(SUBSCRIBERS).increment(1.0);
    SubscriberGuard(())
}

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        metrics::gauge!(SUBSCRIBERS).decrement(1.0);
    }
}
