//! The live feed: the newest durable events, each with its JSON rendered once, shared by every
//! subscriber and by reads of the tail.
//!
//! Without it, each subscriber would read the store after every commit: a thousand subscribers
//! would turn one commit into a thousand storage reads, and every event sent would be rendered
//! once per reader. Instead one task follows the store's durable head, reads each new event
//! once, renders its JSON once, and appends it to a ring bounded in bytes. Subscribers and tail
//! reads copy bytes out of the ring; anything older than the ring comes from the store.
//!
//! # Invariants
//! - The ring holds the consecutive positions `first ..= last`, each exactly as the store
//!   returns it (unfiltered, stored form). `last` never exceeds the store's durable head, so
//!   nothing in the ring is ever undurable.
//! - `last` only grows; `first` only grows (eviction drops the oldest).
//! - The ring's bytes (event buffers plus JSON) stay under `max_bytes`, except that the newest
//!   event is always kept.
//! - A reader that asks for positions below `first` is told so ([`Slice::Evicted`]) and reads
//!   from the store; the feed never blocks on a reader.
//! - While nobody subscribes, the feed reads nothing: on each move of the head it empties the
//!   ring and starts it again after the head. Reading every event once costs little on the
//!   embedded engine but a second read of every commit on PostgreSQL, for nobody; tail reads
//!   meanwhile go to the store.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use factstore_core::{Event, EventQuery, EventStore};
use parking_lot::RwLock;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Events read from the store per refill of the ring.
const REFILL_PAGE: usize = 10_000;

/// One event of the ring: the stored event and its JSON as the API writes it, rendered the
/// first time someone reads it (a store that nobody follows pays nothing for rendering).
#[derive(Debug)]
pub struct FeedEvent {
    pub event: Event,
    json: OnceLock<Bytes>,
}

impl FeedEvent {
    pub fn new(event: &Event) -> FeedEvent {
        // A copy: the store's event may be a slice of a large read buffer, which the ring must
        // not keep alive.
        let event = Event::from_checked_bytes(Bytes::copy_from_slice(event.as_bytes()))
            .unwrap_or_else(|_| event.clone());
        FeedEvent {
            event,
            json: OnceLock::new(),
        }
    }

    /// The event's JSON, rendered once.
    pub fn json(&self) -> &Bytes {
        self.json.get_or_init(|| {
            let mut json = Vec::with_capacity(self.event.as_bytes().len() + 256);
            self.event.write_json(&mut json);
            Bytes::from(json)
        })
    }

    /// What the event costs the ring, JSON included (estimated before it is rendered: the JSON
    /// repeats the stored strings and payload plus about 250 bytes of names and numbers).
    fn cost(&self) -> usize {
        2 * self.event.as_bytes().len() + 256 + std::mem::size_of::<FeedEvent>() + 32
    }
}

#[derive(Debug)]
struct Ring {
    /// Position of `events[0]`; when empty, the position the next event will have.
    first: u64,
    events: VecDeque<Arc<FeedEvent>>,
    bytes: usize,
}

impl Ring {
    fn last(&self) -> u64 {
        self.first + self.events.len() as u64 - 1
    }
}

/// What the ring holds after a position.
#[derive(Debug)]
pub enum Slice {
    /// Events after the position, in order (possibly empty: nothing newer yet).
    Events(Vec<Arc<FeedEvent>>),
    /// The ring no longer holds the next position: read it from the store.
    Evicted,
}

/// The shared feed. Create it with [`Feed::start`]; it stops when the shutdown token is
/// cancelled or the store's head channel closes.
#[derive(Debug)]
pub struct Feed {
    ring: RwLock<Ring>,
    max_bytes: usize,
    /// The last position in the ring, for subscribers to wait on.
    last: watch::Sender<u64>,
}

impl Feed {
    /// Starts following `store` from its current head. The ring starts empty: events committed
    /// before the start are read from the store.
    pub fn start(store: Arc<dyn EventStore>, max_bytes: usize, shutdown: CancellationToken) -> Arc<Feed> {
        let head_rx = store.watch_head();
        let head = *head_rx.borrow();
        let feed = Arc::new(Feed {
            ring: RwLock::new(Ring {
                first: head + 1,
                events: VecDeque::new(),
                bytes: 0,
            }),
            max_bytes,
            last: watch::Sender::new(head),
        });
        tokio::spawn(follow(Arc::downgrade(&feed), store, head_rx, head, shutdown));
        feed
    }

    /// The last position the feed holds (every position up to it is durable).
    pub fn last(&self) -> u64 {
        *self.last.borrow()
    }

    /// A receiver that changes whenever the ring grows.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.last.subscribe()
    }

    /// Up to `max` events after `after`, in position order, or [`Slice::Evicted`] when the ring
    /// has already dropped `after + 1`.
    pub fn after(&self, after: u64, max: usize) -> Slice {
        let ring = self.ring.read();
        if after + 1 < ring.first {
            return Slice::Evicted;
        }
        let skip = (after + 1 - ring.first) as usize;
        Slice::Events(ring.events.iter().skip(skip).take(max).cloned().collect())
    }

    /// Empties the ring and starts it again after `head` (nothing up to it will be read).
    fn skip_to(&self, head: u64) {
        {
            let mut ring = self.ring.write();
            ring.events.clear();
            ring.bytes = 0;
            ring.first = head + 1;
        }
        self.last.send_replace(head);
    }

    fn push(&self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        let rendered: Vec<Arc<FeedEvent>> = events.iter().map(|e| Arc::new(FeedEvent::new(e))).collect();
        let last = {
            let mut ring = self.ring.write();
            for event in rendered {
                debug_assert_eq!(
                    event.event.position(),
                    ring.first + ring.events.len() as u64,
                    "the ring holds consecutive positions"
                );
                ring.bytes += event.cost();
                ring.events.push_back(event);
            }
            while ring.bytes > self.max_bytes && ring.events.len() > 1 {
                if let Some(old) = ring.events.pop_front() {
                    ring.bytes -= old.cost();
                    ring.first += 1;
                }
            }
            ring.last()
        };
        self.last.send_replace(last);
    }
}

/// The feed's task: read every newly durable event once, in order, into the ring.
async fn follow(
    feed: Weak<Feed>,
    store: Arc<dyn EventStore>,
    mut head_rx: watch::Receiver<u64>,
    mut last: u64,
    shutdown: CancellationToken,
) {
    loop {
        let head = *head_rx.borrow_and_update();
        if let Some(feed) = feed.upgrade()
            && last < head
            && feed.last.receiver_count() == 0
        {
            feed.skip_to(head);
            last = head;
        }
        while last < head {
            let Some(feed) = feed.upgrade() else { return };
            match store.read_events(EventQuery::all(last, REFILL_PAGE)).await {
                Ok(page) => {
                    if page.events.is_empty() {
                        break;
                    }
                    // Positions are dense: a page read after `last` starts at `last + 1`.
                    if page.events.first().map(Event::position) != Some(last + 1) {
                        tracing::error!(last, "the store returned a page that does not follow the feed");
                        return;
                    }
                    last = page.events.last().map_or(last, Event::position);
                    feed.push(&page.events);
                }
                Err(error) => {
                    // Reads keep working while the store refuses writes; a failure here is
                    // unexpected, and subscribers fall back to the store on their own.
                    tracing::warn!(%error, "the live feed could not read new events; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(100)) => {},
                        () = shutdown.cancelled() => return,
                    }
                }
            }
        }
        tokio::select! {
            changed = head_rx.changed() => if changed.is_err() { return },
            () = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use factstore_core::{Commit, ExpectedVersion, NewEvent};
    use factstore_testkit::model::ModelStore;

    async fn append(store: &ModelStore, n: usize) {
        let events = (0..n)
            .map(|i| NewEvent::new("Thing", "Happened", serde_json::json!({"i": i})))
            .collect();
        store
            .commit(Commit::single("a", ExpectedVersion::Any, events))
            .await
            .expect("commit");
    }

    async fn settled(feed: &Feed, position: u64) {
        tokio::time::timeout(Duration::from_secs(5), async {
            while feed.last() < position {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the feed reaches the head");
    }

    #[tokio::test]
    async fn the_feed_reads_nothing_while_nobody_subscribes_and_follows_once_someone_does() {
        let store = Arc::new(ModelStore::new());
        let feed = Feed::start(store.clone(), 1 << 20, CancellationToken::new());
        append(&store, 3).await;
        settled(&feed, 3).await;
        assert!(
            matches!(feed.after(0, 10), Slice::Evicted),
            "nothing was read for nobody"
        );
        assert!(matches!(feed.after(3, 10), Slice::Events(events) if events.is_empty()));

        let mut subscriber = feed.subscribe();
        append(&store, 2).await;
        tokio::time::timeout(Duration::from_secs(5), subscriber.wait_for(|last| *last >= 5))
            .await
            .expect("the subscriber hears of the new events")
            .expect("the feed runs");
        let Slice::Events(events) = feed.after(3, 10) else {
            panic!("the feed holds what came after its subscriber arrived");
        };
        let positions: Vec<u64> = events.iter().map(|e| e.event.position()).collect();
        assert_eq!(positions, [4, 5]);
    }
}
