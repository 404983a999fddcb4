//! Pages read before they are asked for, for readers paging through the store.
//!
//! A reader paging through `GET /v1/events` (a catch-up, an export, a projection) waits, page
//! after page, for PostgreSQL to find and send the rows, then for the server to render them,
//! then for itself to take them in; one of the three works while the others wait. Once a
//! reader has asked for the page that follows a full one, the store reads its next pages one
//! after the other, at most two ahead, while it renders and sends the one asked for, and hands
//! each over when it is asked for.
//!
//! Invariants:
//! - A page read ahead is served only when it is full (`limit` events) and ends below the head
//!   it was read at. Such a page is the same whenever it is read: positions are gap-free and in
//!   commit order, so the first `limit` matching events after `after_position` were all
//!   committed, and no later commit can come between them. Only its head can be older than a
//!   fresh read's, and it is raised to this server's head. A commit acknowledged before the
//!   page was read is in it or after it; one acknowledged later comes after it (its position
//!   is above the head the page was read at). The page ends below its head, so the reader asks
//!   for the next, and the last page it is given (short, or at the head) is always read at its
//!   request: it sees every commit acknowledged before that request (read-your-writes holds).
//! - Any other page (short, at the head, failed) is read afresh, as if nothing had been read
//!   ahead.
//! - Reading ahead starts only for a reader that has already asked for the page following a
//!   full one, so a reader of one page costs one read; a reader that stops mid-way wastes at
//!   most two pages. At most [`SCANS`] readers are followed, only while their pages stay under
//!   [`PAGE_BYTES`], and their pages are dropped when not asked for within [`KEEP`].

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use factstore_core::{EventPage, EventQuery};
use tokio::sync::mpsc;

/// Readers followed at once.
const SCANS: usize = 4;
/// A reader whose pages hold more than this (the binary events) is not read ahead of: with
/// [`SCANS`] readers and two pages each, pages read ahead hold at most 64 MiB.
const PAGE_BYTES: usize = 8 << 20;
/// How long pages read ahead wait for their reader.
const KEEP: Duration = Duration::from_secs(10);
/// Queries remembered as the continuation of a full page, to recognise a reader paging.
const EXPECTED: usize = 64;

/// The pages read ahead for one reader, in order, and the query its next request will make.
/// The channel holds one page and its sender holds at most one more, waiting for room.
pub struct Scan {
    next: EventQuery,
    pages: mpsc::Receiver<EventPage>,
    used: Instant,
}

impl Scan {
    /// The next page read ahead; `None` when reading ahead stopped (a read failed).
    pub async fn page(&mut self) -> Option<EventPage> {
        self.pages.recv().await
    }
}

#[derive(Default)]
struct State {
    scans: Vec<Scan>,
    /// Queries that continue a full page served, most recent last.
    expected: VecDeque<EventQuery>,
}

/// The pages read ahead of the readers of one store.
#[derive(Default)]
pub struct ReadAhead {
    state: Mutex<State>,
}

impl std::fmt::Debug for ReadAhead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadAhead").finish_non_exhaustive()
    }
}

impl ReadAhead {
    /// The reader whose next request is `query`, if its pages are being read ahead; it is
    /// given back with [`ReadAhead::served`].
    pub fn take(&self, query: &EventQuery) -> Option<Scan> {
        let mut state = self.lock();
        let index = state.scans.iter().position(|scan| scan.next == *query)?;
        Some(state.scans.swap_remove(index))
    }

    /// Called with each page served for `query`, with the reader's [`Scan`] if it was taken.
    /// Returns the query to start reading ahead from, with the sender its pages go to, when
    /// the reader is paging through (it asked for the continuation of a full page) and this
    /// page is full and below the head.
    pub fn served(
        &self,
        query: &EventQuery,
        page: &EventPage,
        scan: Option<Scan>,
    ) -> Option<(EventQuery, mpsc::Sender<EventPage>)> {
        let next = continuation(query, page)?;
        if !small(page) {
            return None;
        }
        let now = Instant::now();
        let mut state = self.lock();
        state.scans.retain(|scan| now.duration_since(scan.used) < KEEP);
        if let Some(mut scan) = scan {
            scan.next = next;
            scan.used = now;
            state.scans.push(scan);
            return None;
        }
        match state.expected.iter().position(|expected| expected == query) {
            Some(index) => {
                state.expected.remove(index);
            }
            None => {
                if state.expected.len() == EXPECTED {
                    state.expected.pop_front();
                }
                state.expected.push_back(next);
                return None;
            }
        }
        if state.scans.len() >= SCANS || state.scans.iter().any(|scan| scan.next == next) {
            return None;
        }
        let (sender, pages) = mpsc::channel(1);
        state.scans.push(Scan {
            next: next.clone(),
            pages,
            used: now,
        });
        Some((next, sender))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves nothing half-done that matters: at worst a
        // page is read again.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Whether `page` is small enough to be read ahead of ([`PAGE_BYTES`]).
pub fn small(page: &EventPage) -> bool {
    page.events.iter().map(|e| e.as_bytes().len()).sum::<usize>() <= PAGE_BYTES
}

/// The query for the page after `page`, when `page` is full and ends below the head and the
/// query's end, so that its reader will ask for it; such a page read ahead may be served.
pub fn continuation(query: &EventQuery, page: &EventPage) -> Option<EventQuery> {
    let end = query
        .to_position
        .map_or(page.head_position, |to| to.min(page.head_position));
    (page.events.len() >= query.limit.max(1) && page.next_after_position < end).then(|| EventQuery {
        after_position: page.next_after_position,
        ..query.clone()
    })
}

#[cfg(test)]
mod tests {
    use factstore_core::{Event, EventFields, Timestamp};
    use uuid::Uuid;

    use super::*;

    fn page(after: u64, limit: u64, head: u64) -> EventPage {
        page_of(after, limit, head, "{}")
    }

    fn page_of(after: u64, limit: u64, head: u64, event_data: &str) -> EventPage {
        let events: Vec<Event> = (after + 1..=(after + limit).min(head))
            .map(|position| {
                Event::from_fields(&EventFields {
                    event_id: Uuid::now_v7(),
                    position,
                    aggregate_id: "a",
                    version: position,
                    aggregate_type: "A",
                    event_type: "E",
                    event_version: 1,
                    event_data,
                    metadata: None,
                    created_at: Timestamp::from_micros(0),
                    recorded_at: Timestamp::from_micros(0),
                    created_by: None,
                    correlation_id: None,
                    causation_id: None,
                })
            })
            .collect();
        let next = events.last().map_or(head, Event::position);
        EventPage {
            events,
            next_after_position: next,
            head_position: head,
        }
    }

    #[tokio::test]
    async fn reading_ahead_starts_at_the_second_page_of_a_reader_and_follows_it() {
        let ahead = ReadAhead::default();
        let first = EventQuery::all(0, 10);
        assert!(ahead.served(&first, &page(0, 10, 100), None).is_none());
        let second = EventQuery::all(10, 10);
        let (third, pages) = ahead
            .served(&second, &page(10, 10, 100), None)
            .expect("reads ahead");
        assert_eq!(third, EventQuery::all(20, 10));
        pages.send(page(20, 10, 100)).await.expect("room for one page");
        pages
            .try_send(page(30, 10, 100))
            .expect_err("one page waits in the channel");

        let mut scan = ahead.take(&third).expect("the third page was read ahead");
        assert!(ahead.take(&third).is_none(), "a reader is taken once");
        let served = scan.page().await.expect("a page");
        assert_eq!(served.next_after_position, 30);
        assert!(
            ahead.served(&third, &served, Some(scan)).is_none(),
            "already reading ahead"
        );
        pages.send(page(30, 10, 100)).await.expect("room again");
        let mut scan = ahead
            .take(&EventQuery::all(30, 10))
            .expect("the scan follows the reader");
        assert_eq!(scan.page().await.expect("a page").next_after_position, 40);
        drop(scan);
        assert!(
            pages.send(page(40, 10, 100)).await.is_err(),
            "a reader gone stops the reading"
        );
    }

    #[test]
    fn nothing_is_read_ahead_of_one_page_a_short_page_or_a_page_at_the_head() {
        let ahead = ReadAhead::default();
        // A reader of single pages here and there.
        for after in [0, 50, 7] {
            assert!(
                ahead
                    .served(&EventQuery::all(after, 10), &page(after, 10, 100), None)
                    .is_none()
            );
        }
        // The continuation of a full page, but short itself.
        assert!(
            ahead
                .served(&EventQuery::all(10, 10), &page(10, 10, 15), None)
                .is_none()
        );
        // Full, but ending at the head.
        let ahead = ReadAhead::default();
        assert!(
            ahead
                .served(&EventQuery::all(0, 10), &page(0, 10, 100), None)
                .is_none()
        );
        assert!(
            ahead
                .served(&EventQuery::all(10, 10), &page(10, 10, 20), None)
                .is_none()
        );
        assert!(continuation(&EventQuery::all(10, 10), &page(10, 10, 20)).is_none());
        assert!(continuation(&EventQuery::all(10, 10), &page(10, 10, 21)).is_some());
    }

    #[test]
    fn a_reader_of_large_pages_is_not_read_ahead_of() {
        let ahead = ReadAhead::default();
        let data = format!("{{\"pad\":\"{}\"}}", "x".repeat(1 << 20));
        assert!(
            ahead
                .served(&EventQuery::all(0, 10), &page_of(0, 10, 100, &data), None)
                .is_none()
        );
        assert!(
            ahead
                .served(&EventQuery::all(10, 10), &page_of(10, 10, 100, &data), None)
                .is_none()
        );
        assert!(
            ahead
                .served(&EventQuery::all(20, 10), &page(20, 10, 100), None)
                .is_none()
        );
        assert!(
            ahead
                .served(&EventQuery::all(30, 10), &page(30, 10, 100), None)
                .is_some()
        );
    }

    #[test]
    fn a_page_ending_at_the_queried_end_is_not_continued() {
        let query = EventQuery {
            to_position: Some(20),
            ..EventQuery::all(10, 10)
        };
        assert!(continuation(&query, &page(10, 10, 100)).is_none());
    }

    #[test]
    fn readers_followed_are_bounded() {
        let ahead = ReadAhead::default();
        let mut followed = Vec::new();
        for reader in 0..(SCANS as u64 + 3) {
            let base = reader * 1000;
            let _ = ahead.served(&EventQuery::all(base, 10), &page(base, 10, 100_000), None);
            if let Some(read) = ahead.served(
                &EventQuery::all(base + 10, 10),
                &page(base + 10, 10, 100_000),
                None,
            ) {
                followed.push(read);
            }
        }
        assert_eq!(followed.len(), SCANS);
    }
}
