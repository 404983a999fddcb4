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

use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

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
}

impl Default for ServeOptions {
    fn default() -> ServeOptions {
        ServeOptions {
            tls: None,
            drain_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(30),
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
                    connections.spawn(connection(
                        tcp,
                        acceptor.clone(),
                        app.clone(),
                        graceful.watcher(),
                        options.header_read_timeout,
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

/// One connection, from the TLS handshake (if any) to its close.
async fn connection(
    tcp: TcpStream,
    acceptor: Option<TlsAcceptor>,
    app: Router,
    watcher: Watcher,
    header_read_timeout: Duration,
) {
    let service = TowerToHyperService::new(
        app.map_request(|request: axum::http::Request<Incoming>| request.map(Body::new)),
    );
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let served = match acceptor {
        None => {
            watcher
                .watch(http.serve_connection(TokioIo::new(tcp), service))
                .await
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
            watcher
                .watch(http.serve_connection(TokioIo::new(stream), service))
                .await
        }
    };
    if let Err(error) = served {
        tracing::debug!(%error, "connection ended with an error");
    }
}
