//! `GET /v1/subscribe`: server-sent events, catch-up then live.
//!
//! # Protocol
//! ```text
//! event: event        id: <position>   data: <event JSON>       every matching event
//! event: caught_up    id: <position>   data: {"position":p}     once, when history is delivered
//! event: checkpoint   id: <position>   data: {"position":p}     while filters skip events
//! : keep-alive                                                  when nothing else was sent
//! event: shutdown                      data: {"reason":"…"}     the server is stopping
//! event: error                         data: {"code","message"} a read failed; resume later
//! ```
//! Every `id` is a position, and every position up to it has been considered, so a client that
//! reconnects with `Last-Event-ID: <last id seen>` continues with no gap and no duplicate.
//! "History" is what was committed when the subscription began: `caught_up` comes once the
//! stream has passed that head.
//!
//! # Why memory stays bounded
//! The body is a pull stream: hyper asks for the next chunk only while its write buffer has
//! room (see [`crate::budget`]). A chunk is cut at [`CHUNK_BYTES`](crate::budget::CHUNK_BYTES) (and at most
//! [`CHUNK_EVENTS`] events), and reads from the store ask for about as many events as fill one
//! chunk, so a subscriber holds at most one chunk and a cursor, however large the events; a
//! slow reader simply is not polled, and when it comes back it reads from the live feed if the
//! feed still has its position, else from the store. An idle subscriber is a parked future
//! waiting on the feed's watch channel. At most `--max-subscribers` subscriptions live at once;
//! more are answered 503 with `Retry-After`.

use std::convert::Infallible;
use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use factstore_core::time::Bound;
use factstore_core::{EventQuery, EventStore, StoreError};
use factstore_schemas::SchemaRegistry;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::AppState;
use crate::auth::{Principal, Role, Scope};
use crate::budget::{BodyBytes, Slot, batch_for, fits};
use crate::error::ApiError;
use crate::extract::Params;
use crate::feed::{Feed, Slice};
use crate::metrics;
use crate::read::{FILTER_PARAMS, concat_names, filter_from};

/// Most events per chunk written to the socket (and per read from the store); chunks are cut
/// at [`CHUNK_BYTES`](crate::budget::CHUNK_BYTES) first when events are larger than about 64 bytes of JSON.
pub const CHUNK_EVENTS: usize = 1000;

/// The bytes an event's message adds to its JSON (`event: event`, `id: <position>`, `data: `).
const SSE_FRAMING_BYTES: usize = 48;

/// Events of the first read from the store, before their size is known.
const FIRST_READ_EVENTS: usize = 16;

const SUBSCRIBE_PARAMS: [&str; 12] = concat_names(["after_position"], FILTER_PARAMS);
/// How often a subscription speaks when it has nothing else to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscribeTimers {
    /// A `: keep-alive` comment after this long without writing anything (API: ≤ 15 s).
    pub keep_alive: Duration,
    /// A `checkpoint` after this long while filtered-out events move the cursor (API: ≤ 5 s).
    pub checkpoint: Duration,
}

impl Default for SubscribeTimers {
    fn default() -> SubscribeTimers {
        SubscribeTimers {
            keep_alive: Duration::from_secs(15),
            checkpoint: Duration::from_secs(5),
        }
    }
}

/// `GET /v1/subscribe`
pub async fn subscribe(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    principal.require(Role::Reader)?;
    let params = Params::parse(query.as_deref(), &SUBSCRIBE_PARAMS)?;
    let limits = state.store.limits();
    let mut query = EventQuery {
        filter: filter_from(&params, limits)?,
        after_position: params.u64("after_position")?.unwrap_or(0),
        to_position: None,
        from: params.time("from", Bound::Lower)?,
        to: params.time("to", Bound::Upper)?,
        as_of: params.time("as_of", Bound::Upper)?,
        limit: CHUNK_EVENTS,
    };
    let raw = params.bool("raw")?.unwrap_or(false);
    if let Some(value) = headers.get("last-event-id") {
        query.after_position = last_event_id(value)?;
    }
    // A token limited to aggregate prefixes sees only those aggregates' events; the others
    // are passed over like filtered ones (checkpoints move past them).
    let scope = principal.restrict(&mut query);
    // After every check of the request: a bad request is 400 even when no place is free.
    let slot = state.budget.subscribers.take()?;
    let head = state.store.head().await?.position;
    let feed = state.feed();
    let subscription = Subscription {
        store: state.store_for(raw).clone(),
        upcast: (!raw).then(|| state.schemas.clone()),
        feed_rx: feed.subscribe(),
        feed,
        cursor: query.after_position,
        last_id: query.after_position,
        history_head: head,
        caught_up: false,
        query,
        timers: state.config.subscribe,
        last_write: Instant::now(),
        last_id_at: Instant::now(),
        shutdown: state.shutdown.clone(),
        finished: false,
        scope,
        bodies: state.budget.bodies.clone(),
        rendered_bytes: 0,
        rendered_events: 0,
        _slot: slot,
        _counted: metrics::subscriber_guard(),
    };
    let body = futures::stream::unfold(subscription, |mut sub| async move {
        let chunk = sub.next_chunk().await?;
        Some((Ok::<_, Infallible>(chunk), sub))
    });
    Ok((
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            // Proxies that buffer responses would hold live events back.
            (
                header::HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            ),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

fn last_event_id(value: &HeaderValue) -> Result<u64, ApiError> {
    let text = value.to_str().unwrap_or("");
    if !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && let Ok(position) = text.parse::<u64>()
        && position <= factstore_core::POSITION_MAX
    {
        return Ok(position);
    }
    Err(ApiError::invalid(format!(
        "Last-Event-ID must be a position (a whole number from 0 to {}), got '{}'",
        factstore_core::POSITION_MAX,
        String::from_utf8_lossy(value.as_bytes())
    )))
}

struct Subscription {
    /// Reads what the feed no longer holds: upcast, or as stored with `raw=true`.
    store: Arc<dyn EventStore>,
    /// The registry that upcasts events taken from the feed (which holds the stored form);
    /// `None` with `raw=true`.
    upcast: Option<Arc<SchemaRegistry>>,
    feed: Arc<Feed>,
    feed_rx: watch::Receiver<u64>,
    query: EventQuery,
    /// Every position up to here has been considered (sent or filtered out).
    cursor: u64,
    /// The last `id:` written to the client.
    last_id: u64,
    /// The head when the subscription began: `caught_up` comes once the cursor passes it.
    history_head: u64,
    caught_up: bool,
    timers: SubscribeTimers,
    last_write: Instant,
    last_id_at: Instant,
    shutdown: CancellationToken,
    finished: bool,
    /// The aggregates the caller's token may see.
    scope: Scope,
    /// Where the chunks sent are counted until written.
    bodies: Arc<BodyBytes>,
    /// JSON bytes and events written so far: the size of the next read from the store.
    rendered_bytes: usize,
    rendered_events: usize,
    /// This subscription's place among `--max-subscribers`, freed when the stream is dropped.
    _slot: Slot,
    /// Counts this subscription in `factstore_subscribers` while it lives.
    _counted: metrics::SubscriberGuard,
}

impl Subscription {
    /// The next bytes to send; `None` ends the stream.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.finished {
            return None;
        }
        loop {
            if self.shutdown.is_cancelled() {
                self.finished = true;
                return Some(Bytes::from_static(
                    b"event: shutdown\ndata: {\"reason\":\"the server is shutting down; reconnect with Last-Event-ID\"}\n\n",
                ));
            }
            let mut out = Vec::new();
            match self.advance(&mut out).await {
                Ok(()) => {}
                Err(error) => {
                    tracing::warn!(%error, cursor = self.cursor, "a subscription could not read");
                    self.finished = true;
                    write_error(&mut out, &ApiError::from(error));
                    return Some(self.bodies.chunk(out));
                }
            }
            if !self.caught_up && self.cursor >= self.history_head {
                self.caught_up = true;
                self.write_position(&mut out, "caught_up");
            } else if self.cursor > self.last_id && self.last_id_at.elapsed() >= self.timers.checkpoint {
                self.write_position(&mut out, "checkpoint");
            }
            if !out.is_empty() {
                self.last_write = Instant::now();
                return Some(self.bodies.chunk(out));
            }
            if self.cursor < self.feed.last() {
                // Everything read was filtered out and more is waiting: go on reading, letting
                // other tasks run between chunks.
                tokio::task::yield_now().await;
                continue;
            }
            // Nothing new: wait for the feed, a timer or the shutdown.
            let keep_alive_at = self.last_write + self.timers.keep_alive;
            let checkpoint_at = if self.cursor > self.last_id {
                self.last_id_at + self.timers.checkpoint
            } else {
                keep_alive_at
            };
            let wake_at = keep_alive_at.min(checkpoint_at);
            tokio::select! {
                changed = self.feed_rx.changed() => {
                    if changed.is_err() {
                        // The feed stopped: the server is going away.
                        self.finished = true;
                        return None;
                    }
                }
                () = tokio::time::sleep_until(wake_at) => {
                    if Instant::now() >= keep_alive_at {
                        self.last_write = Instant::now();
                        return Some(Bytes::from_static(b": keep-alive\n\n"));
                    }
                }
                () = self.shutdown.cancelled() => {}
            }
        }
    }

    /// Moves the cursor over the next events after it, writing those that match into `out`,
    /// until `out` holds [`CHUNK_BYTES`](crate::budget::CHUNK_BYTES) (always at least one event).
    async fn advance(&mut self, out: &mut Vec<u8>) -> Result<(), StoreError> {
        match self.feed.after(self.cursor, CHUNK_EVENTS) {
            Slice::Events(events) => {
                let mut upcast_json = Vec::new();
                for event in &events {
                    if !fits(out.len(), event.json().len() + SSE_FRAMING_BYTES) {
                        // The rest waits for the next chunk: the cursor stays before it.
                        break;
                    }
                    if self.query.matches(&event.event) && self.scope.allows(&event.event) {
                        match &self.upcast {
                            Some(registry) if registry.needs_upcast(&event.event) => {
                                upcast_json.clear();
                                registry.upcast(event.event.clone()).write_json(&mut upcast_json);
                                write_event(out, event.event.position(), &upcast_json);
                            }
                            _ => write_event(out, event.event.position(), event.json()),
                        }
                        self.last_id = event.event.position();
                        self.last_id_at = Instant::now();
                    }
                    self.cursor = event.event.position();
                }
                Ok(())
            }
            Slice::Evicted => {
                // Older than the feed: read from the store about as many events as fill a
                // chunk. Those that do not fit are dropped and read again for the next chunk,
                // so nothing beyond the chunk is held while the client does not read.
                let mut query = self.query.clone();
                query.after_position = self.cursor;
                query.limit = batch_for(
                    self.rendered_bytes,
                    self.rendered_events,
                    FIRST_READ_EVENTS,
                    CHUNK_EVENTS,
                );
                let page = self.store.read_events(query).await?;
                let mut json = Vec::new();
                let mut cut = false;
                for event in &page.events {
                    if self.scope.allows(event) {
                        json.clear();
                        event.write_json(&mut json);
                        if !fits(out.len(), json.len() + SSE_FRAMING_BYTES) {
                            cut = true;
                            break;
                        }
                        write_event(out, event.position(), &json);
                        self.rendered_bytes = self.rendered_bytes.saturating_add(json.len());
                        self.rendered_events = self.rendered_events.saturating_add(1);
                        self.last_id = event.position();
                        self.last_id_at = Instant::now();
                    }
                    self.cursor = event.position();
                }
                if !cut {
                    self.cursor = self.cursor.max(page.next_after_position);
                }
                Ok(())
            }
        }
    }

    fn write_position(&mut self, out: &mut Vec<u8>, event: &str) {
        let _ = write!(
            out,
            "event: {event}\nid: {p}\ndata: {{\"position\":{p}}}\n\n",
            p = self.cursor
        );
        self.last_id = self.cursor;
        self.last_id_at = Instant::now();
    }
}

fn write_event(out: &mut Vec<u8>, position: u64, json: &[u8]) {
    // Writing to a Vec cannot fail. The JSON is one line: strings escape control characters.
    let _ = write!(out, "event: event\nid: {position}\ndata: ");
    out.extend_from_slice(json);
    out.extend_from_slice(b"\n\n");
}

fn write_error(out: &mut Vec<u8>, error: &ApiError) {
    let (code, message) = error.code_and_message();
    let data = serde_json::json!({ "code": code, "message": message });
    let _ = write!(out, "event: error\ndata: {data}\n\n");
}
