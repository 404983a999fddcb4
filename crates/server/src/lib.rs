//! The factstore HTTP API, over any [`EventStore`].
//!
//! # Layout
//! - [`app`] builds the [`Router`]: every route of the API, the JSON 404/405 fallbacks, the
//!   request body limit, and the layers every request goes through (request id and log span,
//!   metrics, authentication). Tests drive it in-process with `tower::ServiceExt::oneshot`.
//! - [`serve`](serve()) / [`serve_with`] run a router on a listener (plain or TLS, [`tls`])
//!   until a shutdown signal, then drain connections within a bound.
//! - [`error`]: [`ApiError`], the one place where errors become HTTP statuses and codes.
//! - [`extract`]: the JSON body, path ids and query parameters, each failing as an `ApiError`;
//!   [`whole`]: integer fields of bodies take `1526.0` as the whole number it is.
//! - [`auth`]: tokens, roles and aggregate prefixes; the `Principal` extractor handlers use.
//! - [`metrics`]: `GET /metrics` and the names recorded. [`trace`]: request ids and the log.
//! - [`admin`]: archiving to cold storage and the storage numbers; [`backup`]: a copy of the
//!   whole store while it serves.
//! - [`append`], [`read`], [`snapshots`], [`subscribe`], [`projections`], [`schemas`] and
//!   [`persistent`] (persistent subscriptions): the handlers. [`render`]: response bodies.
//! - [`budget`]: long bodies in bounded chunks, and the bound on live subscriptions: what a
//!   client that never reads can make the server hold. [`chunked`]: pages of events and poll
//!   answers rendered a chunk at a time.
//! - [`feed`]: the newest events with their JSON rendered once, shared by subscribers and
//!   tail reads.
//! - [`cluster`]: several servers on one database; the routes only the leader serves are
//!   forwarded to it.
//! - [`openapi`]: the OpenAPI document of these routes, served at `GET /v1/openapi.json`.
//!
//! # API boundary
//! This crate speaks HTTP and JSON and nothing else: no storage, no validation rules of its
//! own beyond the shape of requests. What an event is and what a commit may do is decided by
//! `factstore-core` and the store behind `Arc<dyn EventStore>`; the limits are the store's.
//! The binary (`factstore serve`) opens the store, binds the listener, logs where it listens
//! and calls [`serve_with`].

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use axum::routing::{MethodRouter, delete, get, post, put};
use factstore_core::EventStore;
use factstore_projections::{MemoryStorage, Projections, ProjectionsOptions};
use factstore_schemas::{SchemaRegistry, SchemaStore};
use factstore_subscriptions::Subscriptions;
use parking_lot::RwLock;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;

pub mod admin;
pub mod append;
pub mod auth;
pub mod backup;
pub mod budget;
pub mod chunked;
pub mod cluster;
pub mod error;
pub mod extract;
pub mod feed;
pub mod metrics;
pub mod openapi;
pub mod persistent;
pub mod projections;
pub mod read;
pub mod render;
pub mod schemas;
pub mod serve;
pub mod snapshots;
pub mod subscribe;
pub mod tls;
pub mod trace;
pub mod whole;

pub use auth::{Auth, Principal, Role, Scope};
pub use cluster::{Cluster, Leadership, Placement};
pub use error::ApiError;
use feed::Feed;
pub use serve::{Drain, ServeOptions, serve, serve_with};
pub use subscribe::SubscribeTimers;

/// Options of the server that are not the store's (the store's limits are its own).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// The tokens of `--auth`; `None` leaves every route open.
    pub auth: Option<Arc<Auth>>,
    /// When subscriptions send keep-alives and checkpoints.
    pub subscribe: SubscribeTimers,
    /// The live feed's budget: the newest events with their JSON, shared by subscribers and
    /// tail reads (see [`feed`]). Older events are read from the store.
    pub feed_bytes_max: usize,
    /// The most live subscriptions at once (`--max-subscribers`); more are answered 503 with
    /// `Retry-After` until one ends.
    pub subscribers_max: usize,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            auth: None,
            subscribe: SubscribeTimers::default(),
            feed_bytes_max: 64 << 20,
            subscribers_max: budget::SUBSCRIBERS_MAX_DEFAULT,
        }
    }
}

impl ServerConfig {
    /// Requires the tokens of `auth` on every route but [`auth::OPEN_PATHS`].
    pub fn with_auth(mut self, auth: Auth) -> ServerConfig {
        self.auth = Some(Arc::new(auth));
        self
    }
}

/// What every handler shares. Cheap to clone (a few reference counts).
#[derive(Clone)]
pub struct AppState {
    /// The store every request reads from and writes to: commits validated against the
    /// registered schemas, events read upcast to their newest version. Its limits are the
    /// API's limits.
    pub store: Arc<dyn EventStore>,
    /// The same store without the schema layer: events exactly as stored (`raw=true`).
    pub raw_store: Arc<dyn EventStore>,
    /// The schema registry in front of `store`.
    pub schemas: Arc<SchemaRegistry>,
    /// The server's own options.
    pub config: Arc<ServerConfig>,
    /// Cancelled when the server begins to shut down. Long-lived responses (subscriptions)
    /// watch it to tell their clients and end, so that the graceful drain can finish.
    pub shutdown: CancellationToken,
    /// The bounds on what clients hold: places for live subscriptions, and the response
    /// chunks not yet written.
    pub budget: Arc<budget::Budget>,
    /// The live feed, started on first use (it needs the async runtime).
    feed: Arc<OnceLock<Arc<Feed>>>,
    /// The projections and persistent-subscription groups this server runs. Swapped whole
    /// when a server sharing its database becomes the leader ([`AppState::install_services`]).
    services: Arc<RwLock<Services>>,
    /// Set when other servers share the database: who leads, and forwarding to it.
    pub cluster: Option<Arc<Cluster>>,
    /// What makes backups (`POST /v1/admin/backup`), when the store can be backed up.
    pub backup: Option<Arc<dyn backup::Backup>>,
}

/// What a server runs over the store beyond answering requests.
#[derive(Debug, Clone)]
pub struct Services {
    /// The projections (read models) over `store`. [`AppState::new`] keeps them in memory;
    /// `factstore serve` opens them from its storage ([`AppState::with_projections`]).
    pub projections: Projections,
    /// The persistent-subscription groups (`/v1/subscriptions`). [`AppState::new`] keeps them
    /// in memory; `factstore serve` opens them from its storage
    /// ([`AppState::with_subscriptions`]) and closes them after the drain.
    pub subscriptions: Arc<Subscriptions>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("limits", self.store.limits())
            .field("config", &self.config)
            .finish()
    }
}

impl AppState {
    /// A state over `store` with an empty schema registry kept in memory.
    pub fn new(store: Arc<dyn EventStore>, config: ServerConfig) -> AppState {
        AppState::with_schemas(store, Arc::new(SchemaRegistry::in_memory()), config)
    }

    /// A state over `store` (as stored) behind the schema registry `schemas`.
    pub fn with_schemas(
        store: Arc<dyn EventStore>,
        schemas: Arc<SchemaRegistry>,
        config: ServerConfig,
    ) -> AppState {
        let upcast: Arc<dyn EventStore> = Arc::new(SchemaStore::new(store.clone(), schemas.clone()));
        let projections = Projections::new(
            upcast.clone(),
            Arc::new(MemoryStorage::new()),
            ProjectionsOptions::default(),
        );
        AppState {
            raw_store: store,
            schemas,
            services: Arc::new(RwLock::new(Services {
                projections,
                subscriptions: Subscriptions::in_memory(upcast.clone()),
            })),
            store: upcast,
            budget: Arc::new(budget::Budget::new(config.subscribers_max)),
            config: Arc::new(config),
            shutdown: CancellationToken::new(),
            feed: Arc::new(OnceLock::new()),
            cluster: None,
            backup: None,
        }
    }

    /// The store for a read: as stored when `raw`, else upcast.
    pub fn store_for(&self, raw: bool) -> &Arc<dyn EventStore> {
        if raw { &self.raw_store } else { &self.store }
    }

    /// The same state with these persistent-subscription groups (opened on the same store).
    pub fn with_subscriptions(mut self, subscriptions: Arc<Subscriptions>) -> AppState {
        let services = Services {
            subscriptions,
            ..self.services()
        };
        self.services = Arc::new(RwLock::new(services));
        self
    }

    /// Serves `projections` (opened over the same store) instead of in-memory ones.
    pub fn with_projections(mut self, projections: Projections) -> AppState {
        let services = Services {
            projections,
            ..self.services()
        };
        self.services = Arc::new(RwLock::new(services));
        self
    }

    /// Answers `POST /v1/admin/backup` with `backup`.
    pub fn with_backup(mut self, backup: Arc<dyn backup::Backup>) -> AppState {
        self.backup = Some(backup);
        self
    }

    /// The same state as one of several servers on one database: the leader's routes follow
    /// `cluster`.
    pub fn with_cluster(mut self, cluster: Cluster) -> AppState {
        self.cluster = Some(Arc::new(cluster));
        self
    }

    /// The projections and groups served now.
    pub fn services(&self) -> Services {
        self.services.read().clone()
    }

    /// The projections served now.
    pub fn projections(&self) -> Projections {
        self.services.read().projections.clone()
    }

    /// The persistent-subscription groups served now.
    pub fn subscriptions(&self) -> Arc<Subscriptions> {
        self.services.read().subscriptions.clone()
    }

    /// Serves `services` from now on, in every clone of this state, and returns the ones
    /// served until now (for the caller to stop). For a server that has just become leader.
    pub fn install_services(&self, services: Services) -> Services {
        std::mem::replace(&mut *self.services.write(), services)
    }

    /// The live feed of the newest events, in their stored form. Must be called within the
    /// async runtime.
    pub fn feed(&self) -> Arc<Feed> {
        self.feed
            .get_or_init(|| {
                Feed::start(
                    self.raw_store.clone(),
                    self.config.feed_bytes_max,
                    self.shutdown.clone(),
                )
            })
            .clone()
    }
}

/// The API over `store`, with the default [`ServerConfig`].
pub fn app(store: Arc<dyn EventStore>) -> Router {
    app_with_state(AppState::new(store, ServerConfig::default()))
}

/// The API over the given state.
pub fn app_with_state(state: AppState) -> Router {
    // Start the feed now when a runtime is at hand, so that it holds the newest events before
    // the first subscriber asks.
    if tokio::runtime::Handle::try_current().is_ok() {
        state.feed();
    }
    crate::metrics::install();
    let body_limit = state.store.limits().request_bytes_max;
    // Outermost first. Each layer wraps every route and the fallback, after routing, so the
    // matched route pattern is known to the span and the metrics.
    let layers = ServiceBuilder::new()
        .layer(SetSensitiveRequestHeadersLayer::new(trace::SENSITIVE_HEADERS))
        .map_request(trace::drop_unusable_request_id)
        .layer(SetRequestIdLayer::new(trace::REQUEST_ID, MakeRequestUuid))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(trace::make_span)
                .on_request(())
                .on_response(trace::on_response)
                // Failures are logged where they happen (`ApiError`), with their cause.
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::new(trace::REQUEST_ID))
        .layer(axum::middleware::from_fn(crate::metrics::track))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        // After authentication: a request is refused here before it is forwarded anywhere.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            cluster::route,
        ))
        // Read by the body extractor, which turns an overflow into 413 `payload_too_large`.
        .layer(DefaultBodyLimit::max(body_limit));
    routes()
        .router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(layers)
        .with_state(state)
}

/// Every route of the API. Routes are added only here, through [`Routes`], so that the list of
/// what the router answers cannot miss one: the OpenAPI document must describe exactly these
/// (`tests/openapi.rs`).
fn routes() -> Routes {
    Routes::default()
        .get("/health", health)
        .get("/metrics", crate::metrics::render)
        .post(
            "/v1/aggregates/{aggregate_id}/events",
            append::append_to_aggregate,
        )
        .get("/v1/aggregates/{aggregate_id}/events", read::read_aggregate)
        .post("/v1/events", append::commit)
        .get("/v1/events", read::read_events)
        .get("/v1/events/{event_id}", read::get_event)
        .get("/v1/events/{event_id}/status", projections::event_status)
        .put("/v1/aggregates/{aggregate_id}/snapshots", snapshots::put_snapshot)
        .get(
            "/v1/aggregates/{aggregate_id}/snapshots",
            snapshots::list_snapshots,
        )
        .get(
            "/v1/aggregates/{aggregate_id}/snapshots/latest",
            snapshots::latest_snapshot,
        )
        .get("/v1/aggregates/{aggregate_id}/load", snapshots::load)
        .get("/v1/head", read::head)
        .put("/v1/projections/{name}", projections::put_projection)
        .get("/v1/projections/{name}", projections::get_projection)
        .delete("/v1/projections/{name}", projections::delete_projection)
        .get("/v1/projections", projections::list_projections)
        .post("/v1/projections/{name}/rebuild", projections::rebuild_projection)
        .get(
            "/v1/projections/{name}/state",
            projections::list_projection_states,
        )
        .get(
            "/v1/projections/{name}/state/{key}",
            projections::get_projection_state,
        )
        .get("/v1/subscribe", subscribe::subscribe)
        .put("/v1/schemas/{event_type}/versions/{version}", schemas::put_schema)
        .get("/v1/schemas", schemas::list_schemas)
        .get("/v1/schemas/{event_type}", schemas::get_schema)
        .put("/v1/upcasters/{event_type}/{from_version}", schemas::put_upcaster)
        .get("/v1/upcasters", schemas::list_upcasters)
        .get("/v1/upcasters/{event_type}", schemas::list_upcasters_of)
        .get("/v1/subscriptions", persistent::list_groups)
        .put("/v1/subscriptions/{group}", persistent::put_group)
        .get("/v1/subscriptions/{group}", persistent::get_group)
        .delete("/v1/subscriptions/{group}", persistent::delete_group)
        .post("/v1/subscriptions/{group}/poll", persistent::poll)
        .post("/v1/subscriptions/{group}/ack", persistent::ack)
        .post("/v1/subscriptions/{group}/nack", persistent::nack)
        .get("/v1/subscriptions/{group}/parked", persistent::list_parked)
        .post(
            "/v1/subscriptions/{group}/parked/replay",
            persistent::replay_parked,
        )
        .post("/v1/admin/archive", admin::archive)
        .post("/v1/admin/backup", backup::backup)
        .get("/v1/admin/storage", admin::storage)
        .get("/v1/openapi.json", openapi::serve_document)
}

/// Every (method, path) the API answers, paths in the router's (and OpenAPI's) `{name}` form.
pub fn route_list() -> Vec<(Method, &'static str)> {
    routes().list
}

/// A router being built, and the (method, path) of every route added to it.
#[derive(Default)]
struct Routes {
    router: Router<AppState>,
    list: Vec<(Method, &'static str)>,
}

impl Routes {
    fn get<H: Handler<T, AppState>, T: 'static>(self, path: &'static str, handler: H) -> Routes {
        self.add(Method::GET, path, get(handler))
    }

    fn post<H: Handler<T, AppState>, T: 'static>(self, path: &'static str, handler: H) -> Routes {
        self.add(Method::POST, path, post(handler))
    }

    fn put<H: Handler<T, AppState>, T: 'static>(self, path: &'static str, handler: H) -> Routes {
        self.add(Method::PUT, path, put(handler))
    }

    fn delete<H: Handler<T, AppState>, T: 'static>(self, path: &'static str, handler: H) -> Routes {
        self.add(Method::DELETE, path, delete(handler))
    }

    /// axum merges the methods of one path given in several calls.
    fn add(mut self, method: Method, path: &'static str, route: MethodRouter<AppState>) -> Routes {
        self.router = self.router.route(path, route);
        self.list.push((method, path));
        self
    }
}

/// `GET /health`: `{"status":"ok"}`, or `{"status":"degraded","reason":"..."}` while the store
/// refuses writes until a restart. Both are 200: reads are still served correctly, so a load
/// balancer should keep routing them; the body and the `factstore_store_writable` gauge tell
/// an operator that a restart is needed, and why.
async fn health(axum::extract::State(state): axum::extract::State<AppState>) -> Response {
    match state.raw_store.health() {
        factstore_core::StoreHealth::Writable => {
            render::json_bytes(StatusCode::OK, br#"{"status":"ok"}"#.to_vec())
        }
        factstore_core::StoreHealth::WritesRefused { reason } => {
            let body = serde_json::json!({"status": "degraded", "reason": reason});
            render::json_bytes(StatusCode::OK, body.to_string().into_bytes())
        }
    }
}

async fn not_found() -> ApiError {
    ApiError::RouteNotFound
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
