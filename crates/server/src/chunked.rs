//! Long response bodies rendered chunk by chunk: a page of `GET /v1/events` and the answer to
//! a poll of a persistent subscription.
//!
//! Both may hold 10,000 events. Rendered into one buffer, a page of 1 KiB events is 13 MiB
//! that the server holds for as long as its client takes to read it, forever for a client that
//! never does. Here the body is a pull stream: each chunk (about [`CHUNK_BYTES`], see
//! [`crate::budget`]) is rendered when hyper asks for it, so a client that stops reading holds
//! one chunk and a cursor.
//!
//! A page of `GET /v1/events` is read from the store (or the live feed) a chunk's worth at a
//! time rather than at once. The reads after the first are bounded by the head the first one
//! saw, so the page is exactly the one a single read would have returned: positions are dense
//! and what is durable below the head never changes. The first chunk is rendered before the
//! status is sent, so the errors a read usually meets (a bad query, an unavailable store) are
//! still answered with their status; a read that fails later ends the body early (the
//! connection is closed without the body's last chunk), which every HTTP client reports as an
//! error. A body that fits in one chunk is sent whole, with a `Content-Length`.

use std::collections::VecDeque;
use std::io::Write as _;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use factstore_core::{Event, EventQuery, EventStore, StoreError};
use factstore_subscriptions::Delivery;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::Scope;
use crate::budget::{BodyBytes, CHUNK_BYTES, READ_AHEAD_CHUNKS, batch_for, fits};
use crate::error::ApiError;
use crate::feed::{Feed, Slice};

/// Events of the first read from the store, before their size is known.
const FIRST_READ_EVENTS: usize = 64;
/// Most events taken from the feed per look.
const FEED_SCAN: usize = 4096;

/// A JSON response whose body is `first` and then whatever `rest` yields.
fn json_stream<S>(first: Bytes, rest: Option<S>) -> Response
where
    S: futures::Stream<Item = Result<Bytes, ApiError>> + Send + 'static,
{
    let body = match rest {
        None => Body::from(first),
        Some(rest) => {
            use futures::StreamExt as _;
            let rest = rest.map(|chunk| {
                chunk.map_err(|error| {
                    let (code, message) = error.code_and_message();
                    tracing::warn!(code, message, "a long response body ends early");
                    std::io::Error::other(message)
                })
            });
            Body::from_stream(futures::stream::once(async { Ok(first) }).chain(rest))
        }
    };
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// A page of `GET /v1/events`, read and rendered a chunk at a time.
pub(crate) struct EventPageBody {
    store: Arc<dyn EventStore>,
    /// The live feed while the page may still come from it (unfiltered, as stored, everything
    /// visible); `None` once the feed does not hold the next position.
    feed: Option<Arc<Feed>>,
    query: EventQuery,
    /// Every position up to here has been considered.
    cursor: u64,
    /// Events the page may still take (the store counts them before `scope` is applied).
    remaining: usize,
    /// The end of the range, `min(head, to_position)`, once the head is known.
    end: Option<u64>,
    head: u64,
    scope: Scope,
    bodies: Arc<BodyBytes>,
    /// Whether the opening bytes were written.
    opened: bool,
    /// Whether an event was written (the next one needs a comma).
    any: bool,
    /// The page's `next_after_position` once it is complete.
    finished: Option<u64>,
    /// Whether the closing bytes were written: the stream ends.
    closed: bool,
    rendered_bytes: usize,
    rendered_events: usize,
    /// The shared read-ahead: bytes of events read and not yet rendered, beyond one chunk's
    /// worth, for all long reads together.
    read_ahead: Arc<Semaphore>,
    /// Events read from the store and not yet rendered, in order.
    held: VecDeque<Event>,
    /// What `held` took from the read-ahead; given back once `held` is rendered.
    held_permit: Option<OwnedSemaphorePermit>,
    /// The read that filled `held` reached the end of the range: its `next_after_position`.
    held_end: Option<u64>,
    /// Whether `held` is copied out of the store's read buffers.
    held_owned: bool,
}

impl EventPageBody {
    /// The page `query` asks for, from `store`; from `feed` first when given (only for an
    /// unfiltered read of events as stored that the caller may see whole), whose head is then
    /// `head`.
    pub fn new(
        store: Arc<dyn EventStore>,
        feed: Option<(Arc<Feed>, u64)>,
        query: EventQuery,
        scope: Scope,
        bodies: Arc<BodyBytes>,
        read_ahead: Arc<Semaphore>,
    ) -> EventPageBody {
        let (feed, end, head) = match feed {
            Some((feed, head)) => {
                let end = query.to_position.map_or(head, |to| to.min(head));
                (Some(feed), Some(end), head)
            }
            None => (None, None, 0),
        };
        EventPageBody {
            store,
            feed,
            cursor: query.after_position,
            remaining: query.limit,
            query,
            end,
            head,
            scope,
            bodies,
            opened: false,
            any: false,
            finished: None,
            closed: false,
            rendered_bytes: 0,
            rendered_events: 0,
            read_ahead,
            held: VecDeque::new(),
            held_permit: None,
            held_end: None,
            held_owned: false,
        }
    }

    /// The response: the first chunk is read before the status is chosen.
    pub async fn respond(mut self) -> Result<Response, ApiError> {
        let Some(first) = self.next_chunk().await? else {
            return Err(StoreError::Internal("a page rendered nothing".to_owned()).into());
        };
        if self.closed {
            return Ok(json_stream::<futures::stream::Empty<_>>(first, None));
        }
        let rest = futures::stream::unfold(self, |mut page| async move {
            match page.next_chunk().await {
                Ok(Some(chunk)) => Some((Ok(chunk), page)),
                Ok(None) => None,
                Err(error) => {
                    page.closed = true;
                    Some((Err(error), page))
                }
            }
        });
        Ok(json_stream(first, Some(rest)))
    }

    /// The next chunk, `None` after the last.
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, ApiError> {
        if self.closed {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(CHUNK_BYTES);
        if !self.opened {
            self.opened = true;
            out.extend_from_slice(b"{\"events\":[");
        }
        while self.finished.is_none() {
            if self.fill(&mut out).await? {
                break;
            }
        }
        if let Some(next) = self.finished {
            let _ = write!(
                out,
                "],\"next_after_position\":{next},\"head_position\":{}}}",
                self.head
            );
            self.closed = true;
        }
        Ok(Some(self.bodies.chunk(out)))
    }

    fn write(&mut self, out: &mut Vec<u8>, json: &[u8]) {
        if self.any {
            out.push(b',');
        }
        self.any = true;
        out.extend_from_slice(json);
        self.rendered_bytes = self.rendered_bytes.saturating_add(json.len());
        self.rendered_events = self.rendered_events.saturating_add(1);
    }

    /// Moves the cursor over the next events, writing those of the page into `out`; sets
    /// `finished` when the page is complete. True when the chunk is full (the next event does
    /// not fit).
    async fn fill(&mut self, out: &mut Vec<u8>) -> Result<bool, ApiError> {
        if self.remaining == 0 {
            self.finished = Some(self.cursor);
            return Ok(false);
        }
        if let (Some(feed), Some(end)) = (self.feed.clone(), self.end) {
            if self.cursor >= end {
                self.finished = Some(end.max(self.query.after_position));
                return Ok(false);
            }
            if let Slice::Events(slice) = feed.after(self.cursor, FEED_SCAN.min(self.remaining))
                && !slice.is_empty()
            {
                for event in slice {
                    let position = event.event.position();
                    if position > end {
                        self.cursor = end;
                        return Ok(false);
                    }
                    if self.query.matches(&event.event) {
                        if !fits(out.len(), event.json().len() + 1) {
                            return Ok(true);
                        }
                        self.write(out, event.json());
                        self.remaining -= 1;
                    }
                    self.cursor = position;
                    if self.remaining == 0 {
                        self.finished = Some(position);
                        return Ok(false);
                    }
                }
                return Ok(false);
            }
            // Evicted, or the feed has not reached the head yet: the store from here on.
            self.feed = None;
        }
        if self.held.is_empty() {
            self.read().await?;
        }
        let mut json = Vec::new();
        while let Some(event) = self.held.pop_front() {
            if self.scope.allows(&event) {
                json.clear();
                event.write_json(&mut json);
                if !fits(out.len(), json.len() + 1) {
                    if self.held_permit.is_some() {
                        // Held for the next chunk, which the client asks for only once it has
                        // read this one, against the shared read-ahead.
                        self.held.push_front(event);
                        self.own_held();
                    } else {
                        // A chunk's worth read outside the read-ahead: what did not fit is read
                        // again for the next chunk, so a client that stops reading holds
                        // nothing beyond its chunk.
                        self.held.clear();
                        self.held_end = None;
                    }
                    return Ok(true);
                }
                self.write(out, &json);
            }
            self.cursor = event.position();
            self.remaining -= 1;
        }
        // Rendered all it read: the read-ahead it took goes back.
        self.held_permit = None;
        if let Some(next) = self.held_end.take() {
            self.finished = Some(next);
        } else if self.remaining == 0 {
            self.finished = Some(self.cursor);
        }
        Ok(false)
    }

    /// Reads the next events of the page from the store into `held`: a chunk's worth, or
    /// [`READ_AHEAD_CHUNKS`] chunks' worth when the shared read-ahead has room for them.
    async fn read(&mut self) -> Result<(), ApiError> {
        let mut query = self.query.clone();
        query.after_position = self.cursor;
        if let Some(end) = self.end {
            query.to_position = Some(end);
        }
        let chunk_events = batch_for(
            self.rendered_bytes,
            self.rendered_events,
            FIRST_READ_EVENTS,
            self.remaining,
        );
        let ahead_bytes = u32::try_from(CHUNK_BYTES * (READ_AHEAD_CHUNKS - 1)).unwrap_or(u32::MAX);
        let limit = if self.rendered_events > 0
            && chunk_events < self.remaining
            && let Ok(permit) = self.read_ahead.clone().try_acquire_many_owned(ahead_bytes)
        {
            self.held_permit = Some(permit);
            chunk_events.saturating_mul(READ_AHEAD_CHUNKS).min(self.remaining)
        } else {
            chunk_events
        };
        query.limit = limit;
        let page = self.store.read_events(query).await?;
        if self.end.is_none() {
            // The first read: its head bounds the rest, as one read would have been.
            self.head = page.head_position;
            self.end = Some(
                self.query
                    .to_position
                    .map_or(page.head_position, |to| to.min(page.head_position)),
            );
        }
        if page.events.len() < limit {
            // A short read reached the end of the range.
            self.held_end = Some(page.next_after_position);
        }
        self.held = page.events.into();
        self.held_owned = false;
        Ok(())
    }

    /// Copies the held events out of the store's read buffers, once per read, when they wait
    /// for the client: an event read is a slice of a buffer that may be many times its size,
    /// and a held slice would keep the whole buffer (a stalled client's few events, a whole
    /// megabyte).
    fn own_held(&mut self) {
        if self.held_owned {
            return;
        }
        self.held_owned = true;
        for event in &mut self.held {
            if let Ok(copy) = Event::from_checked_bytes(Bytes::copy_from_slice(event.as_bytes())) {
                *event = copy;
            }
        }
    }
}

/// The answer to a poll, `{"events": [<event> + "attempt": n, …]}`, rendered a chunk at a time
/// from the deliveries (whose events the group holds anyway until they are acked).
pub fn deliveries(deliveries: Vec<Delivery>, bodies: Arc<BodyBytes>) -> Response {
    let mut rest = Deliveries {
        deliveries: deliveries.into_iter(),
        bodies,
        next: None,
        json: Vec::new(),
        numbers: itoa::Buffer::new(),
        any: false,
        closed: false,
    };
    let first = rest.next_chunk(b"{\"events\":[");
    if rest.closed {
        return json_stream::<futures::stream::Empty<_>>(first, None);
    }
    let rest = futures::stream::unfold(rest, |mut rest| async move {
        (!rest.closed).then(|| (Ok(rest.next_chunk(b"")), rest))
    });
    json_stream(first, Some(rest))
}

struct Deliveries {
    deliveries: std::vec::IntoIter<Delivery>,
    bodies: Arc<BodyBytes>,
    /// A delivery that did not fit in the previous chunk.
    next: Option<Delivery>,
    /// One delivery's JSON, before it is known to fit.
    json: Vec<u8>,
    numbers: itoa::Buffer,
    any: bool,
    closed: bool,
}

impl Deliveries {
    fn next_chunk(&mut self, opening: &[u8]) -> Bytes {
        let mut out = Vec::with_capacity(CHUNK_BYTES);
        out.extend_from_slice(opening);
        loop {
            let Some(delivery) = self.next.take().or_else(|| self.deliveries.next()) else {
                out.extend_from_slice(b"]}");
                self.closed = true;
                break;
            };
            self.json.clear();
            crate::persistent::write_with_attempt(
                &mut self.json,
                &delivery.event,
                delivery.attempt,
                &mut self.numbers,
            );
            // The opening alone does not count: a chunk holds at least one delivery.
            let used = if self.any { out.len() } else { 0 };
            if !fits(used, self.json.len() + 1) {
                self.next = Some(delivery);
                break;
            }
            if self.any {
                out.push(b',');
            }
            self.any = true;
            out.extend_from_slice(&self.json);
        }
        self.bodies.chunk(out)
    }
}
