//! [`Subscription`]: `GET /v1/subscribe` (server-sent events) as a stream that resumes by
//! itself.
//!
//! # What the server sends
//! ```text
//! event: event       id: <position>  data: <event JSON>
//! event: caught_up   id: <position>  data: {"position": p}   once, history delivered
//! event: checkpoint  id: <position>  data: {"position": p}   while filters skip events
//! : keep-alive                                               at least every 15 s
//! event: shutdown                    data: {"reason": ...}   the server is stopping
//! event: error                       data: {"code", ...}     a read failed; resume later
//! ```
//! Every `id` is a position, and a request with `Last-Event-ID: <id>` continues right after
//! it with no gap and no duplicate.
//!
//! # Resuming
//! The stream remembers the highest position it has seen (an event's, a checkpoint's, the
//! caught-up position). When the connection drops, goes silent for longer than the client's
//! read timeout, or the server ends the stream (`shutdown`, `error`), it reconnects with
//! `Last-Event-ID` set to that position, backing off under the [`ReconnectPolicy`]. As a
//! second line of defence it never delivers an event whose position is not above the last
//! one it delivered. `CaughtUp` is delivered once per subscription, not once per connection.
//!
//! The SSE framing is parsed by `sse-stream`, which works through each chunk once; the
//! better-known `eventsource-stream` re-copies the rest of its buffer after every line, which
//! is quadratic in the size of a chunk, and a catch-up over a fast connection brings large
//! chunks.
//!
//! [`ReconnectPolicy`]: crate::ReconnectPolicy

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use futures::stream::{BoxStream, Stream, StreamExt};
use reqwest::Method;
use reqwest::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE};
use serde::Deserialize;
use sse_stream::{Sse, SseByteStream};

use crate::client::{Client, decode};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::query::{EventFilter, Params, push_times};
use crate::time::TimeBound;

/// What to subscribe to: the filters of `GET /v1/events`, where to start, time bounds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubscribeOptions {
    pub filter: EventFilter,
    /// Deliver events after this position (0: the whole history first).
    pub after_position: u64,
    /// On `created_at`, inclusive.
    pub from: Option<TimeBound>,
    /// On `created_at`, inclusive.
    pub to: Option<TimeBound>,
    /// On `recorded_at`.
    pub as_of: Option<TimeBound>,
    /// The events exactly as stored, not upcast.
    pub raw: bool,
}

impl SubscribeOptions {
    pub fn new() -> SubscribeOptions {
        SubscribeOptions::default()
    }

    pub fn filter(mut self, filter: EventFilter) -> SubscribeOptions {
        self.filter = filter;
        self
    }

    pub fn after_position(mut self, position: u64) -> SubscribeOptions {
        self.after_position = position;
        self
    }

    pub fn from(mut self, from: impl Into<TimeBound>) -> SubscribeOptions {
        self.from = Some(from.into());
        self
    }

    pub fn to(mut self, to: impl Into<TimeBound>) -> SubscribeOptions {
        self.to = Some(to.into());
        self
    }

    pub fn as_of(mut self, as_of: impl Into<TimeBound>) -> SubscribeOptions {
        self.as_of = Some(as_of.into());
        self
    }

    pub fn raw(mut self, raw: bool) -> SubscribeOptions {
        self.raw = raw;
        self
    }

    fn params(&self) -> Params {
        let mut params = Params::default();
        if self.after_position > 0 {
            params.push("after_position", self.after_position.to_string());
        }
        self.filter.push_params(&mut params);
        push_times(&mut params, &self.from, &self.to, &self.as_of);
        if self.raw {
            params.push("raw", "true".to_owned());
        }
        params
    }
}

/// One message of a subscription. Keep-alives, shutdown notices and reconnections are
/// handled inside and never show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionMessage {
    /// The next event, in position order.
    Event(Box<Event>),
    /// The history up to `position` has been delivered; what follows is live. Delivered
    /// once.
    CaughtUp { position: u64 },
    /// Every event up to `position` has been considered (the filters passed over the ones
    /// not delivered). Sent while filters skip events, so that a consumer can record its
    /// progress.
    Checkpoint { position: u64 },
}

/// A live subscription: a `Stream` of [`SubscriptionMessage`]s that ends only on an error it
/// cannot recover from (a 4xx on reconnection, an event it cannot read, or the reconnection
/// limit of the [`ReconnectPolicy`](crate::ReconnectPolicy)).
pub struct Subscription {
    inner: BoxStream<'static, Result<SubscriptionMessage>>,
    cursor: Arc<AtomicU64>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("position", &self.position())
            .finish()
    }
}

impl Subscription {
    /// The position the subscription would resume from: the highest it has seen. A new
    /// subscription with `after_position` set to it continues where this one stands.
    pub fn position(&self) -> u64 {
        self.cursor.load(Ordering::Acquire)
    }

    pub(crate) async fn open(client: Client, options: SubscribeOptions) -> Result<Subscription> {
        let policy = client.inner.retry.clone();
        let mut attempt = 1;
        let connection = loop {
            match connect(&client, &options, None).await {
                Ok(connection) => break connection,
                Err(error) if error.is_retryable() && attempt < policy.max_attempts => {
                    tokio::time::sleep(policy.delay(attempt)).await;
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        };
        let cursor = Arc::new(AtomicU64::new(options.after_position));
        let state = State {
            client,
            options,
            cursor: cursor.clone(),
            last_event: 0,
            caught_up: false,
            connection: Some(connection),
            delivered: false,
            failures: 0,
            connect_failures: 0,
            finished: false,
        };
        let inner = futures::stream::unfold(state, State::step).boxed();
        Ok(Subscription { inner, cursor })
    }
}

impl Stream for Subscription {
    type Item = Result<SubscriptionMessage>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

type SseStream = Pin<Box<dyn Stream<Item = Result<Sse, sse_stream::Error>> + Send>>;

/// Opens one connection; `resume_from` becomes `Last-Event-ID`.
async fn connect(client: &Client, options: &SubscribeOptions, resume_from: Option<u64>) -> Result<SseStream> {
    let url = client.endpoint(&["v1", "subscribe"], &options.params())?;
    // No total timeout: the response never ends. The client's read timeout bounds both the
    // wait for the answer and any silence on the stream.
    let mut request = client
        .request(Method::GET, url)
        .header(ACCEPT, "text/event-stream")
        .header(CACHE_CONTROL, "no-cache");
    if let Some(position) = resume_from {
        request = request.header("Last-Event-ID", position.to_string());
    }
    let response = request.send().await.map_err(Error::Transport)?;
    let status = response.status();
    if !status.is_success() {
        let body = response.bytes().await.map_err(Error::Transport)?;
        return Err(Error::from_response(status, &body));
    }
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("text/event-stream") {
        return Err(Error::Decode {
            message: format!("a subscription answered with '{content_type}', not text/event-stream"),
            source: None,
        });
    }
    Ok(Box::pin(SseByteStream::new(response.bytes_stream())))
}

#[derive(Deserialize)]
struct PositionData {
    position: u64,
}

/// The subscription's state between messages.
struct State {
    client: Client,
    options: SubscribeOptions,
    /// The highest position seen: what a reconnection resumes from. Shared with the
    /// `Subscription` for [`Subscription::position`].
    cursor: Arc<AtomicU64>,
    /// The position of the last event delivered.
    last_event: u64,
    caught_up: bool,
    connection: Option<SseStream>,
    /// Whether the current connection has delivered any message.
    delivered: bool,
    /// Consecutive connections that failed or ended without a message: the backoff.
    failures: u32,
    /// Consecutive reconnections that got no success answer: the give-up count.
    connect_failures: u32,
    finished: bool,
}

impl State {
    async fn step(mut self) -> Option<(Result<SubscriptionMessage>, State)> {
        loop {
            if self.finished {
                return None;
            }
            let Some(connection) = self.connection.as_mut() else {
                if let Err(error) = self.reconnect().await {
                    self.finished = true;
                    return Some((Err(error), self));
                }
                continue;
            };
            match connection.next().await {
                Some(Ok(sse)) => {
                    self.delivered = true;
                    self.failures = 0;
                    match self.handle(sse) {
                        Ok(Some(message)) => return Some((Ok(message), self)),
                        Ok(None) => {}
                        Err(error) => {
                            self.finished = true;
                            return Some((Err(error), self));
                        }
                    }
                }
                Some(Err(error)) => {
                    tracing::debug!(%error, position = self.position(), "subscription connection failed; resuming");
                    self.drop_connection();
                }
                None => {
                    tracing::debug!(
                        position = self.position(),
                        "subscription connection ended; resuming"
                    );
                    self.drop_connection();
                }
            }
        }
    }

    fn position(&self) -> u64 {
        self.cursor.load(Ordering::Acquire)
    }

    fn advance(&mut self, position: u64) {
        self.cursor.fetch_max(position, Ordering::AcqRel);
    }

    fn drop_connection(&mut self) {
        self.connection = None;
        if !self.delivered {
            self.failures += 1;
        }
        self.delivered = false;
    }

    /// Waits out the backoff and connects again; an error is one to end the subscription.
    async fn reconnect(&mut self) -> Result<()> {
        let policy = self.client.inner.reconnect.clone();
        loop {
            tokio::time::sleep(policy.delay(self.failures.max(1))).await;
            match connect(&self.client, &self.options, Some(self.position())).await {
                Ok(connection) => {
                    self.connection = Some(connection);
                    self.connect_failures = 0;
                    return Ok(());
                }
                Err(error) if error.is_retryable() => {
                    self.failures += 1;
                    self.connect_failures += 1;
                    if policy
                        .max_attempts
                        .is_some_and(|max| self.connect_failures >= max)
                    {
                        return Err(error);
                    }
                    tracing::debug!(%error, attempt = self.connect_failures, "subscription cannot reconnect yet");
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// One SSE message: `Some` to deliver, `None` to pass over.
    fn handle(&mut self, sse: Sse) -> Result<Option<SubscriptionMessage>> {
        let data = sse.data.as_deref().unwrap_or("");
        match sse.event.as_deref() {
            Some("event") => {
                let event: Event = decode(data.as_bytes(), "a subscription event")?;
                if event.position <= self.last_event {
                    tracing::debug!(
                        position = event.position,
                        last = self.last_event,
                        "subscription passed over an event it had delivered"
                    );
                    return Ok(None);
                }
                self.last_event = event.position;
                self.advance(event.position);
                Ok(Some(SubscriptionMessage::Event(Box::new(event))))
            }
            Some("caught_up") => {
                let PositionData { position } = decode(data.as_bytes(), "a caught_up message")?;
                self.advance(position);
                if self.caught_up {
                    return Ok(None);
                }
                self.caught_up = true;
                Ok(Some(SubscriptionMessage::CaughtUp { position }))
            }
            Some("checkpoint") => {
                let PositionData { position } = decode(data.as_bytes(), "a checkpoint message")?;
                if position <= self.position() {
                    return Ok(None);
                }
                self.advance(position);
                Ok(Some(SubscriptionMessage::Checkpoint { position }))
            }
            Some(kind @ ("shutdown" | "error")) => {
                // `shutdown`: the server is stopping. `error`: it could not read the store for
                // this subscription. Either way the stream ends here and resumes later.
                tracing::debug!(
                    kind,
                    data,
                    position = self.position(),
                    "the server ended the stream; resuming later"
                );
                self.connection = None;
                self.delivered = false;
                // The server is going away or in trouble: the first reconnection waits already.
                self.failures = self.failures.max(1);
                Ok(None)
            }
            // A message this client does not know (a newer server): not for us.
            _ => Ok(None),
        }
    }
}
