//! Readers paging through a store on PostgreSQL, whose next page the store reads ahead: they
//! must get exactly what fresh reads would give them, every event once and in order, with
//! every commit acknowledged before their request.

mod common;

use common::TestSchema;
use factstore_core::{Commit, EventFilter, EventPage, EventQuery, EventStore, ExpectedVersion, NewEvent};
use factstore_postgres::PgStore;
use factstore_testkit::wait::within;
use serde_json::json;

async fn append(store: &PgStore, aggregate: &str, event_type: &str, n: usize) {
    let events = (0..n)
        .map(|i| NewEvent::new("Thing", event_type, json!({"i": i})))
        .collect();
    store
        .commit(Commit::single(aggregate, ExpectedVersion::Any, events))
        .await
        .expect("append");
}

fn positions(page: &EventPage) -> Vec<u64> {
    page.events.iter().map(|e| e.position()).collect()
}

#[tokio::test]
async fn a_page_read_ahead_holds_the_commits_made_before_it_is_asked_for() {
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let store = schema.open().await;
    append(&store, "a", "Made", 25).await;

    // Pages of 10: the second is the continuation of a full page, so the store reads the third
    // ahead: 21..=25, short and at the head.
    let first = store.read_events(EventQuery::all(0, 10)).await.expect("read");
    let second = store
        .read_events(EventQuery::all(first.next_after_position, 10))
        .await
        .expect("read");
    assert_eq!(positions(&second), (11..=20).collect::<Vec<_>>());

    // Acknowledged before the third page is asked for: the third page must hold it.
    append(&store, "a", "Made", 10).await;
    let third = store
        .read_events(EventQuery::all(second.next_after_position, 10))
        .await
        .expect("read");
    assert_eq!(positions(&third), (21..=30).collect::<Vec<_>>());
    assert_eq!(third.head_position, 35);

    // A full page read ahead is served, and its head is the head when it is asked for.
    append(&store, "a", "Made", 5).await;
    let fourth = store
        .read_events(EventQuery::all(third.next_after_position, 10))
        .await
        .expect("read");
    assert_eq!(positions(&fourth), (31..=40).collect::<Vec<_>>());
    assert_eq!(fourth.head_position, 40);
    assert_eq!(fourth.next_after_position, 40);
}

#[tokio::test]
async fn readers_paging_while_others_append_get_every_event_once_in_order() {
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let store = schema.open().await;
    append(&store, "seed", "Seeded", 500).await;

    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..100 {
                let event_type = if i % 3 == 0 { "Marked" } else { "Plain" };
                append(&store, &format!("w{}", i % 7), event_type, 1 + i % 5).await;
            }
        })
    };
    // One reader of everything and one of a type, each paging until it has caught up with a
    // head taken after the writer finished.
    let everything = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut heads = std::collections::BTreeSet::new();
            let mut after = 0;
            loop {
                let page = store.read_events(EventQuery::all(after, 37)).await.expect("read");
                seen.extend(positions(&page));
                heads.insert(page.head_position);
                after = page.next_after_position;
                if page.events.is_empty() && after >= page.head_position {
                    // Caught up with the head for now: a pause before looking again.
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    if *store.watch_head().borrow() == after && seen.len() >= 500 + 300 {
                        return (seen, heads);
                    }
                }
            }
        })
    };
    within("the writer", std::time::Duration::from_secs(30), writer)
        .await
        .expect("writer");
    let (seen, heads) = within(
        "the reader to catch up",
        std::time::Duration::from_secs(30),
        everything,
    )
    .await
    .expect("reader");
    assert!(
        heads.len() > 1,
        "the reader paged while the writer appended: it saw the head at {heads:?}"
    );
    let head = store.head().await.expect("head").position;
    assert_eq!(
        seen,
        (1..=head).collect::<Vec<_>>(),
        "every position once, in order"
    );

    let marked = EventQuery {
        filter: EventFilter {
            event_types: vec!["Marked".to_owned()],
            ..EventFilter::default()
        },
        ..EventQuery::all(0, 3)
    };
    let mut paged = Vec::new();
    let mut query = marked.clone();
    loop {
        let page = store.read_events(query.clone()).await.expect("read");
        paged.extend(positions(&page));
        if page.next_after_position >= page.head_position {
            break;
        }
        query.after_position = page.next_after_position;
    }
    let all = store
        .read_events(EventQuery {
            limit: 10_000,
            ..marked
        })
        .await
        .expect("read");
    assert_eq!(
        paged,
        positions(&all),
        "the filtered pages are the filtered events"
    );
    assert_eq!(paged.len(), 102, "the events of every third commit");
}
