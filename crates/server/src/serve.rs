//! The connection loop: accept TCP, optionally TLS, serve HTTP/1.1, and shut down gracefully
//! within a bound.
//!
//! # Shutdown
//! When the `shutdown` future completes:
//! 1. The listener is dropped at once: new connections are refused by the kernel.
//! 2. Every open connection is told to finish: an idle keep-alive connection closes, a request
//!    in progress runs to its end and its response is sent (an append is acknowledged), then
//!    the connection closes. Long-lived responses end because their handlers watch
//!    `AppState::shutdown`, which the caller cancels together with this future.
//! 3. After [`ServeOptions::drain_timeout`] the connections still open are dropped, so a stuck
//!    client cannot hold the process forever. A request dropped that way was not acknowledged.
//!
//! Only then does [`serve_with`] return, so the caller may close the store knowing no handler
//! is still using it.
//!
//! # Bounds per connection
//! - A request's head must arrive within [`ServeOptions::header_read_timeout`] (hyper closes the
//!   connection otherwise), and its body within [`ServeOptions::body_read_timeout`] after the
//!   head. A body still incomplete then has its connection closed without an answer, as a
//!   stalled header is: nothing of that request was acted on (handlers act only on a whole
//!   body), and a client that stalls is not reading an answer anyway.
//! - hyper's write buffer is [`WRITE_BUFFER_BYTES`]: it asks a streamed body for more only
//!   while less than that waits for the socket (see [`crate::budget`]).
//!
//! # Bounds on connections
//! At most [`ServeOptions::max_connections`] connections are served at once. Beyond that, up to
//! [`OVERFLOW_CONNECTIONS`] more are accepted into a narrow lane: `GET /health` is answered as
//! usual (so a monitor still sees the server alive), anything else 503 `store_unavailable` with
//! `Retry-After: 5`, one request per connection, each closed within [`OVERFLOW_LIFETIME`].
//! Connections beyond both are accepted and closed at once, so the listen queue keeps moving
//! and the process keeps file descriptors in hand. An accept that fails for lack of file
//! descriptors (EMFILE) is retried after a pause, never in a spin.

use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use axum::response::IntoResponse as _;
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::budget::WRITE_BUFFER_BYTES;
use crate::error::ApiError;

/// Connections accepted beyond [`ServeOptions::max_connections`] to answer `/health` and tell
/// the others to come back (see the module documentation).
pub const OVERFLOW_CONNECTIONS: usize = 64;
/// The longest an overflow connection stays open.
pub const OVERFLOW_LIFETIME: Duration = Duration::from_secs(5);
/// How often reaching the connection bound is logged, at most.
const BOUND_REPORT_INTERVAL: Duration = Duration::from_secs(10);
/// The default of [`ServeOptions::max_connections`].
pub const MAX_CONNECTIONS_DEFAULT: usize = 4096;

/// How [`serve_with`] runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// HTTPS with this configuration (see [`crate::tls::load`]); plain HTTP when `None`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// How long shutdown waits for open connections before dropping them.
    pub drain_timeout: Duration,
    /// How long a client may take for the TLS handshake, and then for each request's head:
    /// a bound on connections that open and send nothing.
    pub header_read_timeout: Duration,
    /// How long a client may take to send a request's body once its head arrived; the
    /// connection is closed without an answer when the body is still incomplete then.
    pub body_read_timeout: Duration,
    /// The most connections served at once; beyond them a few more answer `/health` and 503
    /// (see the module documentation). Keep it below the process's file descriptor limit.
    pub max_connections: usize,
}

impl Default for ServeOptions {
    fn default() -> ServeOptions {
        ServeOptions {
            tls: None,
            drain_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(30),
            max_connections: MAX_CONNECTIONS_DEFAULT,
        }
    }
}

/// How the drain after shutdown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// Every connection finished its requests and closed.
    Complete,
    /// The drain timeout passed; this many connections were dropped.
    TimedOut { dropped: usize },
}

/// Serves `app` over plain HTTP on `listener` until `shutdown` completes, then drains with the
/// default bound (see the module documentation).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_with(listener, app, ServeOptions::default(), shutdown)
        .await
        .map(drop)
}

/// Serves `app` on `listener` as `options` say until `shutdown` completes, then drains.
pub async fn serve_with(
    listener: TcpListener,
    app: Router,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<Drain> {
    let acceptor = options.tls.clone().map(TlsAcceptor::from);
    let slots = Arc::new(Semaphore::new(
        options.max_connections.clamp(1, Semaphore::MAX_PERMITS),
    ));
    let overflow = Arc::new(Semaphore::new(OVERFLOW_CONNECTIONS));
    // When the bound was last reported: at most once in [`BOUND_REPORT_INTERVAL`], however
    // many connections find it reached.
    let mut reported: Option<tokio::time::Instant> = None;
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((tcp, _peer)) => {
                    // Responses are small and written whole: without TCP_NODELAY, Nagle's
                    // algorithm and the client's delayed ACK can hold one back for tens of ms.
                    if let Err(error) = tcp.set_nodelay(true) {
                        tracing::warn!(%error, "could not set TCP_NODELAY");
                    }
                    let lane = match slots.clone().try_acquire_owned() {
                        Ok(permit) => Some((permit, Lane::Normal)),
                        Err(_) => overflow.clone().try_acquire_owned().ok().map(|p| (p, Lane::Overflow)),
                    };
                    let full = !matches!(lane, Some((_, Lane::Normal)));
                    if full && reported.is_none_or(|at| at.elapsed() >= BOUND_REPORT_INTERVAL) {
                        reported = Some(tokio::time::Instant::now());
                        tracing::warn!(
                            max_connections = options.max_connections,
                            "the connection limit is reached: new connections get 503 (/health \
                             still answers) until some close"
                        );
                    }
                    let Some((permit, lane)) = lane else {
                        // Beyond the overflow lane too: closed at once.
                        drop(tcp);
                        continue;
                    };
                    connections.spawn(connection(
                        tcp,
                        acceptor.clone(),
                        app.clone(),
                        graceful.watcher(),
                        Limits {
                            header_read_timeout: options.header_read_timeout,
                            body_read_timeout: options.body_read_timeout,
                            max_connections: options.max_connections,
                            lane,
                            _permit: permit,
                        },
                    ));
                }
                Err(error) if is_connection_error(&error) => {}
                Err(error) => {
                    // Out of file descriptors, most likely: wait for some to close rather than
                    // spin on the error.
                    tracing::error!(%error, "accepting a connection failed; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
    drop(listener);
    tracing::info!(
        connections = connections.len(),
        "stopped accepting connections; draining those open (at most {} s)",
        options.drain_timeout.as_secs_f64()
    );
    let drained = tokio::time::timeout(options.drain_timeout, graceful.shutdown()).await;
    let outcome = if drained.is_ok() {
        Drain::Complete
    } else {
        let dropped = connections.len();
        connections.abort_all();
        tracing::warn!(
            dropped,
            "connections still open after {} s were dropped",
            options.drain_timeout.as_secs_f64()
        );
        Drain::TimedOut { dropped }
    };
    while connections.join_next().await.is_some() {}
    Ok(outcome)
}

/// Errors of one connection that the listener itself survives.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

/// Which service a connection gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    /// The whole API.
    Normal,
    /// Over the connection limit: `/health`, else 503 (see the module documentation).
    Overflow,
}

/// The bounds of one connection, and its place among the connections served.
struct Limits {
    header_read_timeout: Duration,
    body_read_timeout: Duration,
    max_connections: usize,
    lane: Lane,
    /// Freed when the connection ends.
    _permit: OwnedSemaphorePermit,
}

/// One connection, from the TLS handshake (if any) to its close.
async fn connection(
    tcp: TcpStream,
    acceptor: Option<TlsAcceptor>,
    app: Router,
    watcher: Watcher,
    limits: Limits,
) {
    if limits.lane == Lane::Normal {
        serve_tcp(tcp, acceptor, app, watcher, &limits).await;
    } else if tokio::time::timeout(OVERFLOW_LIFETIME, serve_tcp(tcp, acceptor, app, watcher, &limits))
        .await
        .is_err()
    {
        tracing::debug!("closed an overflow connection at the end of its lifetime");
    }
}

/// Serves `tcp` in its lane until it closes.
async fn serve_tcp(
    tcp: TcpStream,
    acceptor: Option<TlsAcceptor>,
    app: Router,
    watcher: Watcher,
    limits: &Limits,
) {
    // Cancelled when a request body is not received in time: the connection is then dropped.
    let stalled = CancellationToken::new();
    let body_read_timeout = limits.body_read_timeout;
    let expired = stalled.clone();
    let timed = move |request: axum::http::Request<Incoming>| {
        request.map(|body| Body::new(DeadlineBody::new(body, body_read_timeout, expired.clone())))
    };
    let service = match limits.lane {
        Lane::Normal => TowerToHyperService::new(app.map_request(timed).boxed_clone()),
        Lane::Overflow => {
            let max = limits.max_connections;
            let narrow = tower::service_fn(move |request: axum::http::Request<Body>| {
                let app = app.clone();
                async move {
                    if request.uri().path() == "/health" {
                        app.oneshot(request).await
                    } else {
                        Ok(ApiError::Overloaded(format!(
                            "the server already serves its most connections ({max}); retry later"
                        ))
                        .into_response())
                    }
                }
            });
            TowerToHyperService::new(narrow.map_request(timed).boxed_clone())
        }
    };
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(WRITE_BUFFER_BYTES);
    if limits.lane == Lane::Overflow {
        // One request, then the place is given back.
        http.keep_alive(false);
    }
    let header_read_timeout = limits.header_read_timeout;
    let served = match acceptor {
        None => {
            let conn = watcher.watch(http.serve_connection(TokioIo::new(tcp), service));
            tokio::select! {
                served = conn => served,
                () = stalled.cancelled() => return stalled_body(body_read_timeout),
            }
        }
        Some(acceptor) => {
            let stream = match tokio::time::timeout(header_read_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(%error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!("TLS handshake timed out");
                    return;
                }
            };
            let conn = watcher.watch(http.serve_connection(TokioIo::new(stream), service));
            tokio::select! {
                served = conn => served,
                () = stalled.cancelled() => return stalled_body(body_read_timeout),
            }
        }
    };
    if let Err(error) = served {
        tracing::debug!(%error, "connection ended with an error");
    }
}

fn stalled_body(timeout: Duration) {
    tracing::debug!(
        "closed a connection whose request body did not arrive within {} s",
        timeout.as_secs_f64()
    );
}

/// A request body that must be complete within a deadline; past it, it cancels its
/// connection's token (and stays pending: the connection is dropped, nothing is answered).
struct DeadlineBody {
    inner: Incoming,
    /// `None` once the body is complete, or when it was empty.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    expired: CancellationToken,
}

impl DeadlineBody {
    fn new(inner: Incoming, timeout: Duration, expired: CancellationToken) -> DeadlineBody {
        use hyper::body::Body as _;
        let deadline = (!inner.is_end_stream()).then(|| Box::pin(tokio::time::sleep(timeout)));
        DeadlineBody {
            inner,
            deadline,
            expired,
        }
    }
}

impl hyper::body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            if frame.is_none() || this.inner.is_end_stream() {
                this.deadline = None;
            }
            return Poll::Ready(frame);
        }
        if let Some(deadline) = &mut this.deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            this.expired.cancel();
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
