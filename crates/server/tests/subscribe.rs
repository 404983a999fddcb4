//! `GET /v1/subscribe`, in-process: catch-up then live, resume, filters, checkpoints,
//! keep-alives, shutdown, eviction from the live feed and bad requests.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use factstore_core::{Commit, EventStore, ExpectedVersion, NewEvent};
use factstore_server::{AppState, ServerConfig, SubscribeTimers, app_with_state};
use factstore_testkit::model::ModelStore;
use factstore_testkit::wait::{until, within};
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::sync::watch;
use tower::ServiceExt;

/// One server-sent message.
#[derive(Debug, Clone, PartialEq)]
struct Message {
    event: String,
    id: Option<u64>,
    data: Option<Value>,
    comment: bool,
}

/// A subscription's body, parsed message by message.
struct Stream {
    body: Body,
    buffer: String,
}

impl Stream {
    /// The next message, or `None` when the stream ends.
    async fn next(&mut self) -> Option<Message> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                return Some(parse(&block));
            }
            let frame = tokio::time::timeout(Duration::from_secs(10), self.body.frame())
                .await
                .expect("the stream went quiet for 10 s")?
                .expect("body frame");
            if let Ok(data) = frame.into_data() {
                self.buffer.push_str(std::str::from_utf8(&data).expect("UTF-8"));
            }
        }
    }

    /// The next message that is not a keep-alive: keep-alives alone do not keep it waiting
    /// past 10 s.
    async fn next_message(&mut self) -> Message {
        within(
            "a message other than a keep-alive",
            Duration::from_secs(10),
            async {
                loop {
                    let message = self.next().await.expect("the stream ended");
                    if !message.comment {
                        return message;
                    }
                }
            },
        )
        .await
    }

    /// Positions of the next `n` events, checking that nothing else comes in between.
    async fn events(&mut self, n: usize) -> Vec<u64> {
        let mut positions = Vec::new();
        while positions.len() < n {
            let message = self.next_message().await;
            assert_eq!(message.event, "event", "{message:?}");
            let data = message.data.as_ref().unwrap();
            assert_eq!(data["position"].as_u64(), message.id, "id is the position");
            positions.push(message.id.unwrap());
        }
        positions
    }
}

fn parse(block: &str) -> Message {
    let mut message = Message {
        event: "message".into(),
        id: None,
        data: None,
        comment: false,
    };
    for line in block.lines() {
        if line.starts_with(':') {
            message.comment = true;
        } else if let Some(value) = line.strip_prefix("event: ") {
            message.event = value.to_owned();
        } else if let Some(value) = line.strip_prefix("id: ") {
            message.id = Some(value.parse().expect("numeric id"));
        } else if let Some(value) = line.strip_prefix("data: ") {
            message.data = Some(serde_json::from_str(value).expect("data is JSON"));
        } else if !line.is_empty() {
            panic!("unexpected line {line:?}");
        }
    }
    message
}

struct Setup {
    store: Arc<ModelStore>,
    state: AppState,
}

impl Setup {
    fn new() -> Setup {
        Setup::with(|_| {})
    }

    fn with(configure: impl FnOnce(&mut ServerConfig)) -> Setup {
        let store = Arc::new(ModelStore::new());
        let mut config = ServerConfig::default();
        configure(&mut config);
        let state = AppState::new(store.clone(), config);
        Setup { store, state }
    }

    async fn append(&self, aggregate_id: &str, event_type: &str, n: usize) {
        let events = (0..n)
            .map(|i| NewEvent::new("Thing", event_type, serde_json::json!({"i": i})))
            .collect();
        self.store
            .commit(Commit::single(aggregate_id, ExpectedVersion::Any, events))
            .await
            .unwrap();
    }

    async fn open(&self, uri: &str, last_event_id: Option<&str>) -> Result<Stream, (StatusCode, Value)> {
        let headers: Vec<(&str, String)> = last_event_id
            .map(|id| ("last-event-id", id.to_owned()))
            .into_iter()
            .collect();
        self.open_with(uri, &headers).await
    }

    async fn open_with(&self, uri: &str, headers: &[(&str, String)]) -> Result<Stream, (StatusCode, Value)> {
        let mut request = Request::builder().uri(uri);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = app_with_state(self.state.clone())
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        if status != StatusCode::OK {
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            return Err((status, serde_json::from_slice(&bytes).unwrap()));
        }
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/event-stream",
            "a subscription is an event stream"
        );
        Ok(Stream {
            body: response.into_body(),
            buffer: String::new(),
        })
    }

    async fn subscribe(&self, uri: &str) -> Stream {
        self.open(uri, None).await.unwrap()
    }
}

fn range(from: u64, to: u64) -> Vec<u64> {
    (from..=to).collect()
}

#[tokio::test]
async fn catches_up_then_follows_live_without_gaps_or_duplicates() {
    let setup = Setup::new();
    setup.append("a", "E", 5).await;
    let mut stream = setup.subscribe("/v1/subscribe").await;
    assert_eq!(stream.events(5).await, range(1, 5));
    let caught_up = stream.next_message().await;
    assert_eq!(caught_up.event, "caught_up");
    assert_eq!(caught_up.id, Some(5));
    assert_eq!(caught_up.data.unwrap()["position"], 5);

    setup.append("b", "E", 3).await;
    setup.append("a", "E", 2).await;
    assert_eq!(stream.events(5).await, range(6, 10));

    // The event's JSON is the same as a read returns.
    let message = {
        setup.append("c", "Named", 1).await;
        stream.next_message().await
    };
    let data = message.data.unwrap();
    assert_eq!(
        (
            data["aggregate_id"].as_str(),
            data["event_type"].as_str(),
            data["version"].as_u64()
        ),
        (Some("c"), Some("Named"), Some(1))
    );
    assert_eq!(data["event_data"]["i"], 0);
}

#[tokio::test]
async fn an_empty_store_is_caught_up_at_once() {
    let setup = Setup::new();
    let mut stream = setup.subscribe("/v1/subscribe").await;
    let message = stream.next_message().await;
    assert_eq!((message.event.as_str(), message.id), ("caught_up", Some(0)));
    setup.append("a", "E", 1).await;
    assert_eq!(stream.events(1).await, vec![1]);
}

#[tokio::test]
async fn resumes_after_a_position_and_last_event_id_wins() {
    let setup = Setup::new();
    setup.append("a", "E", 10).await;
    let mut stream = setup.subscribe("/v1/subscribe?after_position=7").await;
    assert_eq!(stream.events(3).await, range(8, 10));

    let mut stream = setup
        .open("/v1/subscribe?after_position=2", Some("6"))
        .await
        .unwrap();
    assert_eq!(stream.events(4).await, range(7, 10));
    assert_eq!(stream.next_message().await.event, "caught_up");
}

#[tokio::test]
async fn filters_apply_and_checkpoints_mark_skipped_events() {
    let setup = Setup::with(|config| {
        config.subscribe = SubscribeTimers {
            keep_alive: Duration::from_secs(60),
            checkpoint: Duration::from_millis(50),
        };
    });
    setup.append("a", "Wanted", 2).await; // 1, 2
    setup.append("b", "Other", 3).await; // 3..5
    setup.append("a", "Wanted", 1).await; // 6
    setup.append("c", "Other", 4).await; // 7..10

    let mut stream = setup.subscribe("/v1/subscribe?event_type=Wanted,Rare").await;
    assert_eq!(stream.events(3).await, vec![1, 2, 6]);
    let caught_up = stream.next_message().await;
    assert_eq!((caught_up.event.as_str(), caught_up.id), ("caught_up", Some(10)));

    // Live events that are all filtered out still move the resume point, by a checkpoint.
    setup.append("d", "Other", 5).await; // 11..15
    let checkpoint = stream.next_message().await;
    assert_eq!(
        (checkpoint.event.as_str(), checkpoint.id),
        ("checkpoint", Some(15))
    );
    assert_eq!(checkpoint.data.unwrap()["position"], 15);

    let mut by_aggregate = setup.subscribe("/v1/subscribe?aggregate_id=a").await;
    assert_eq!(by_aggregate.events(3).await, vec![1, 2, 6]);
    let mut by_prefix = setup
        .subscribe("/v1/subscribe?aggregate_id_prefix=b&after_position=1")
        .await;
    assert_eq!(by_prefix.events(3).await, vec![3, 4, 5]);
}

#[tokio::test]
async fn keep_alives_come_when_nothing_else_does() {
    let setup = Setup::with(|config| {
        config.subscribe = SubscribeTimers {
            keep_alive: Duration::from_millis(50),
            checkpoint: Duration::from_secs(60),
        };
    });
    let mut stream = setup.subscribe("/v1/subscribe").await;
    assert_eq!(stream.next().await.unwrap().event, "caught_up");
    let message = stream.next().await.unwrap();
    assert!(message.comment, "{message:?}");
    let message = stream.next().await.unwrap();
    assert!(message.comment, "{message:?}");
}

#[tokio::test]
async fn shutdown_tells_subscribers_and_ends_the_stream() {
    let setup = Setup::new();
    setup.append("a", "E", 2).await;
    let mut stream = setup.subscribe("/v1/subscribe").await;
    assert_eq!(stream.events(2).await, vec![1, 2]);
    assert_eq!(stream.next_message().await.event, "caught_up");
    setup.state.shutdown.cancel();
    let message = stream.next_message().await;
    assert_eq!(message.event, "shutdown");
    assert!(
        message.data.unwrap()["reason"]
            .as_str()
            .unwrap()
            .contains("Last-Event-ID")
    );
    assert_eq!(
        stream.next().await,
        None,
        "the stream ends after the shutdown message"
    );
}

#[tokio::test]
async fn a_reader_behind_the_live_feed_reads_from_the_store_in_order() {
    // A feed of a few KiB keeps only the newest handful of events.
    let setup = Setup::with(|config| config.feed_bytes_max = 8 << 10);
    let mut early = setup.subscribe("/v1/subscribe").await;
    assert_eq!(early.next_message().await.event, "caught_up");
    for i in 0..50 {
        setup.append(&format!("agg-{}", i % 7), "E", 40).await;
    }
    // The early subscriber did not read while 2,000 events went by: the feed has long dropped
    // its position, and it must still get every event once, in order.
    assert_eq!(early.events(2000).await, range(1, 2000));

    let mut late = setup.subscribe("/v1/subscribe?after_position=17").await;
    assert_eq!(late.events(1983).await, range(18, 2000));
    assert_eq!(late.next_message().await.id, Some(2000));
}

#[tokio::test]
async fn bad_requests_are_refused_before_the_stream_starts() {
    let setup = Setup::new();
    for (uri, last_event_id, needle) in [
        ("/v1/subscribe?limit=5", None, "limit"),
        ("/v1/subscribe?after_position=-1", None, "after_position"),
        ("/v1/subscribe?from=yesterday", None, "from"),
        ("/v1/subscribe?raw=maybe", None, "raw"),
        ("/v1/subscribe", Some("abc"), "Last-Event-ID"),
        ("/v1/subscribe", Some("-3"), "Last-Event-ID"),
    ] {
        let Err((status, body)) = setup.open(uri, last_event_id).await else {
            panic!("{uri} with {last_event_id:?} was accepted");
        };
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(body["error"]["code"], "invalid_request");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{uri}: {message}");
    }
}

#[tokio::test]
async fn reads_of_the_tail_from_the_feed_match_the_store() {
    let setup = Setup::new();
    // Start the feed before the events exist, so it holds all of them.
    let _ = setup.subscribe("/v1/subscribe").await;
    for i in 0..20 {
        setup.append(&format!("x-{}", i % 3), "E", 5).await;
    }
    let feed = setup.state.feed();
    until(
        "the feed to hold every event",
        Duration::from_secs(10),
        || async { feed.last() >= 100 },
    )
    .await;
    let router = app_with_state(setup.state.clone());
    for uri in [
        "/v1/events?after_position=0&limit=7",
        "/v1/events?after_position=95",
        "/v1/events?after_position=40&to_position=60&limit=100",
        "/v1/events?after_position=100",
        "/v1/events?after_position=150",
        "/v1/events?after_position=3&limit=10&from=2000-01-01",
    ] {
        let response = router
            .clone()
            .oneshot(Request::builder().uri(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{uri}");
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let from_feed: Value = serde_json::from_slice(&bytes).unwrap();

        // The same read, answered by the store (a filter that every event passes sends it there).
        let filtered = format!("{uri}&aggregate_id_prefix=x-");
        let response = router
            .clone()
            .oneshot(Request::builder().uri(&filtered).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let from_store: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(from_feed, from_store, "{uri}");
    }
}

#[tokio::test]
async fn a_token_limited_to_prefixes_hears_only_those_aggregates() {
    let auth = factstore_server::Auth::parse(
        r#"
[[token]]
token = "limited-reader-token-0123456789"
role = "reader"
aggregate_id_prefixes = ["acc:", "ord:"]
"#,
        "test.toml",
    )
    .unwrap();
    let setup = Setup::with(|config| {
        *config = config.clone().with_auth(auth);
        config.subscribe.checkpoint = Duration::from_millis(50);
    });
    setup.append("acc:1", "E", 2).await; // 1, 2
    setup.append("other:1", "E", 2).await; // 3, 4
    setup.append("ord:1", "E", 1).await; // 5

    let Err((status, body)) = setup.open("/v1/subscribe", None).await else {
        panic!("a subscription without a token was accepted");
    };
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized"))
    );

    let token = vec![(
        "authorization",
        "Bearer limited-reader-token-0123456789".to_owned(),
    )];
    let mut stream = setup.open_with("/v1/subscribe", &token).await.unwrap();
    assert_eq!(stream.events(3).await, vec![1, 2, 5]);
    assert_eq!(stream.next_message().await.id, Some(5), "caught up at the head");
    // Live: an event outside the prefixes is passed over, and only moves the checkpoint.
    setup.append("other:2", "E", 1).await; // 6
    setup.append("acc:2", "E", 1).await; // 7
    assert_eq!(stream.events(1).await, vec![7]);
    setup.append("other:3", "E", 1).await; // 8
    let checkpoint = stream.next_message().await;
    assert_eq!(
        (checkpoint.event.as_str(), checkpoint.id),
        ("checkpoint", Some(8))
    );

    // Asking for an aggregate outside the prefixes gives nothing of it.
    let mut outside = setup
        .open_with("/v1/subscribe?aggregate_id=other:1", &token)
        .await
        .unwrap();
    let first = outside.next_message().await;
    assert_eq!((first.event.as_str(), first.id), ("caught_up", Some(8)));
}

/// What a client that resumed across cuts received.
#[derive(Debug, Default)]
struct AcrossCuts {
    /// The positions of the events, in the order they came, over every connection.
    positions: Vec<u64>,
    /// Connections dropped while the writer was still appending.
    cuts_while_writing: usize,
    /// Connections dropped right after a checkpoint that had moved past the last event
    /// received, so the next one resumed from the checkpoint's id.
    resumed_from_checkpoint: usize,
}

/// Reads `uri` as a client does that loses its connection: it drops each connection after the
/// next number of messages of `cut_after` (and at once after every checkpoint), with whatever
/// bytes of the next message were already read, and reconnects with `Last-Event-ID` set to the
/// `id` of the last whole message, until the writer is done (`done` holds the head then, 0
/// before) and that id is the head. Every event must come after the one before it: a duplicate or a step
/// back fails at once.
async fn read_across_cuts(
    setup: &Setup,
    uri: &str,
    mut done: watch::Receiver<u64>,
    cut_after: &[usize],
) -> AcrossCuts {
    let mut seen = AcrossCuts::default();
    let mut last_id: Option<u64> = None;
    for connection in 0.. {
        let last = last_id.map(|id| id.to_string());
        let mut stream = setup.open(uri, last.as_deref()).await.unwrap();
        let mut budget = cut_after[connection % cut_after.len()];
        loop {
            let message = tokio::select! {
                message = stream.next() => message.expect("the stream ended"),
                // (An error, once the writer has dropped the sender, disables this branch.)
                Ok(_) = done.wait_for(|head| *head > 0 && last_id == Some(*head)) => return seen,
            };
            if message.comment {
                continue;
            }
            let id = message
                .id
                .unwrap_or_else(|| panic!("a message without an id: {message:?}"));
            assert!(
                last_id.is_none_or(|last| id >= last),
                "{message:?} after id {last_id:?}"
            );
            last_id = Some(id);
            match message.event.as_str() {
                "event" => {
                    if let Some(previous) = seen.positions.last() {
                        assert!(
                            id > *previous,
                            "position {id} after {previous}: sent again or out of order"
                        );
                    }
                    seen.positions.push(id);
                }
                "checkpoint" => {
                    if seen.positions.last().is_none_or(|event| id > *event) {
                        seen.resumed_from_checkpoint += 1;
                        break;
                    }
                }
                "caught_up" => {}
                other => panic!("unexpected message {other}: {message:?}"),
            }
            budget -= 1;
            if budget == 0 {
                break;
            }
        }
        if *done.borrow() == 0 {
            seen.cuts_while_writing += 1;
        }
        // Dropping the stream drops its body: the server sees the connection gone, with the
        // bytes it had sent of a next message lost.
        drop(stream);
    }
    unreachable!()
}

#[tokio::test]
async fn a_client_cut_off_mid_stream_resumes_with_last_event_id_without_a_gap_or_a_duplicate() {
    let setup = Arc::new(Setup::new());
    setup.append("a-0", "E", 20).await; // a backlog, so the first connections catch up
    let (done, done_rx) = watch::channel(0);
    let writer = {
        let setup = setup.clone();
        tokio::spawn(async move {
            let mut head = 20;
            for i in 0..120 {
                let n = i % 3 + 1;
                setup.append(&format!("a-{}", i % 5), "E", n).await;
                head += n as u64;
                // Paced on purpose, so that the client's cuts come while it writes.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            done.send_replace(head);
            head
        })
    };
    let seen = within(
        "the client to read every event across its cuts",
        Duration::from_secs(60),
        read_across_cuts(&setup, "/v1/subscribe", done_rx, &[1, 7, 3, 16, 2]),
    )
    .await;
    let head = within("the writer", Duration::from_secs(10), writer)
        .await
        .unwrap();
    assert_eq!(seen.positions, range(1, head), "every position exactly once");
    assert!(
        seen.cuts_while_writing >= 5,
        "the connection was cut only {} times while events were appended",
        seen.cuts_while_writing
    );
}

#[tokio::test]
async fn a_filtered_stream_resumes_from_a_checkpoint_id_without_a_gap_or_a_duplicate() {
    let setup = Arc::new(Setup::with(|config| {
        config.subscribe = SubscribeTimers {
            keep_alive: Duration::from_secs(60),
            checkpoint: Duration::from_millis(10),
        };
    }));
    let (done, done_rx) = watch::channel(0);
    let writer = {
        let setup = setup.clone();
        tokio::spawn(async move {
            let (mut head, mut wanted) = (0, Vec::new());
            for round in 0..40_u64 {
                let n = round % 2 + 1;
                setup
                    .append(&format!("w-{}", round % 3), "Wanted", n as usize)
                    .await;
                wanted.extend(head + 1..=head + n);
                setup.append("other", "Other", 5).await;
                head += n + 5;
                // Now and then a pause longer than the checkpoint interval after passed-over
                // events: the stream sends a checkpoint past the last wanted event. (Time
                // passes on purpose here, as in any pause of this writer.)
                let pause = if round % 4 == 3 { 30 } else { 1 };
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            setup.append("w-0", "Wanted", 1).await;
            head += 1;
            wanted.push(head);
            done.send_replace(head);
            wanted
        })
    };
    let seen = within(
        "the client to read every wanted event across its cuts",
        Duration::from_secs(60),
        read_across_cuts(&setup, "/v1/subscribe?event_type=Wanted", done_rx, &[2, 5, 3, 9]),
    )
    .await;
    let wanted = within("the writer", Duration::from_secs(10), writer)
        .await
        .unwrap();
    assert_eq!(seen.positions, wanted, "every wanted position exactly once");
    assert!(
        seen.resumed_from_checkpoint >= 2,
        "resumed from a checkpoint id only {} times",
        seen.resumed_from_checkpoint
    );
    assert!(seen.cuts_while_writing >= 5, "{seen:?}");
}
