//! Subscriptions against a real server: history then live, filters and checkpoints, and
//! resuming without a gap or a duplicate after the server restarts or the network cuts the
//! stream.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use factstore_client::{
    AppendRequest, Client, Error, EventFilter, NewEvent, ReconnectPolicy, RetryPolicy, SubscribeOptions,
    Subscription, SubscriptionMessage,
};
use futures::StreamExt;
use serde_json::json;
use support::{Fault, Proxy, Server, closed_port};

fn tick(n: u64) -> NewEvent {
    NewEvent::new("Clock", "Ticked", json!({"n": n}))
}

fn quick_client(url: &str) -> Client {
    Client::builder(url)
        .reconnect(ReconnectPolicy::default().backoff(Duration::from_millis(20), Duration::from_millis(200)))
        .retry(RetryPolicy::default().backoff(Duration::from_millis(10), Duration::from_millis(50)))
        .build()
        .unwrap()
}

/// The next message, failing the test after 10 s of silence.
async fn next(subscription: &mut Subscription) -> SubscriptionMessage {
    tokio::time::timeout(Duration::from_secs(10), subscription.next())
        .await
        .expect("a message within 10 s")
        .expect("the subscription goes on")
        .expect("no error")
}

/// The next `count` events' positions, passing over other messages; counts `CaughtUp`s seen.
async fn next_events(subscription: &mut Subscription, count: usize, caught_up: &mut usize) -> Vec<u64> {
    let mut positions = Vec::new();
    while positions.len() < count {
        match next(subscription).await {
            SubscriptionMessage::Event(event) => positions.push(event.position),
            SubscriptionMessage::CaughtUp { .. } => *caught_up += 1,
            SubscriptionMessage::Checkpoint { .. } => {}
        }
    }
    positions
}

async fn append_ticks(client: &Client, aggregate: &str, from: u64, to: u64) {
    let events: Vec<NewEvent> = (from..=to).map(tick).collect();
    client
        .append(aggregate, AppendRequest::new(events))
        .await
        .unwrap();
}

#[tokio::test]
async fn history_then_caught_up_then_live() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let client = quick_client(&server.url);
    append_ticks(&client, "clock:1", 1, 5).await;

    let mut subscription = client.subscribe(SubscribeOptions::new()).await.unwrap();
    for position in 1..=5 {
        match next(&mut subscription).await {
            SubscriptionMessage::Event(event) => {
                assert_eq!((event.position, event.version), (position, position));
                assert_eq!(event.data::<serde_json::Value>().unwrap(), json!({"n": position}));
            }
            other => panic!("expected event {position}, got {other:?}"),
        }
    }
    assert_eq!(
        next(&mut subscription).await,
        SubscriptionMessage::CaughtUp { position: 5 }
    );

    append_ticks(&client, "clock:1", 6, 7).await;
    let mut caught_up = 0;
    assert_eq!(next_events(&mut subscription, 2, &mut caught_up).await, [6, 7]);
    assert_eq!(subscription.position(), 7);

    // Starting after a position skips what is before it.
    let mut later = client
        .subscribe(SubscribeOptions::new().after_position(5))
        .await
        .unwrap();
    assert_eq!(next_events(&mut later, 2, &mut caught_up).await, [6, 7]);
    server.stop().await;
}

#[tokio::test]
async fn filters_select_and_checkpoints_report_progress() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let client = quick_client(&server.url);
    for i in 1..=6u64 {
        let aggregate = if i % 3 == 0 {
            format!("seat:{i}")
        } else {
            format!("clock:{i}")
        };
        client
            .append(&aggregate, AppendRequest::new([tick(i)]))
            .await
            .unwrap();
    }

    let options = SubscribeOptions::new().filter(EventFilter::new().aggregate_id_prefix("seat:"));
    let mut subscription = client.subscribe(options).await.unwrap();
    let mut seen = Vec::new();
    loop {
        match next(&mut subscription).await {
            SubscriptionMessage::Event(event) => {
                assert!(event.aggregate_id.starts_with("seat:"), "{event:?}");
                seen.push(event.position);
            }
            SubscriptionMessage::CaughtUp { position } => {
                assert_eq!(position, 6);
                break;
            }
            SubscriptionMessage::Checkpoint { .. } => {}
        }
    }
    assert_eq!(seen, [3, 6]);

    // Live events the filter passes over: no event, but a checkpoint past them.
    append_ticks(&client, "clock:9", 1, 3).await;
    match next(&mut subscription).await {
        SubscriptionMessage::Checkpoint { position } => assert_eq!(position, 9),
        other => panic!("expected a checkpoint, got {other:?}"),
    }
    client
        .append("seat:10", AppendRequest::new([tick(10)]))
        .await
        .unwrap();
    let mut caught_up = 0;
    assert_eq!(next_events(&mut subscription, 1, &mut caught_up).await, [10]);

    // Event types OR, other filters AND.
    let options = SubscribeOptions::new().filter(
        EventFilter::new()
            .event_type("Ticked")
            .event_type("Other")
            .aggregate_id("clock:9"),
    );
    let mut subscription = client.subscribe(options).await.unwrap();
    assert_eq!(next_events(&mut subscription, 3, &mut caught_up).await, [7, 8, 9]);
    server.stop().await;
}

#[tokio::test]
async fn resumes_after_the_server_restarts_with_no_gap_and_no_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let addr = server.addr;
    let client = quick_client(&server.url);
    append_ticks(&client, "clock:1", 1, 3).await;

    let mut subscription = client.subscribe(SubscribeOptions::new()).await.unwrap();
    let mut caught_up = 0;
    let mut positions = next_events(&mut subscription, 3, &mut caught_up).await;

    // A graceful stop: the server says `shutdown` and closes. Then it comes back on the same
    // port and data, and more events arrive.
    server.stop().await;
    let server = Server::start_on(dir.path(), addr).await;
    append_ticks(&client, "clock:2", 1, 4).await;
    positions.extend(next_events(&mut subscription, 4, &mut caught_up).await);

    // And once more, with events committed while the subscriber was away.
    server.stop().await;
    let server = Server::start_on(dir.path(), addr).await;
    append_ticks(&client, "clock:3", 1, 2).await;
    positions.extend(next_events(&mut subscription, 2, &mut caught_up).await);
    assert_eq!(positions, (1..=9).collect::<Vec<_>>());

    // Nothing more than that: the next message is live, after a new append.
    append_ticks(&client, "clock:4", 1, 1).await;
    assert_eq!(next_events(&mut subscription, 1, &mut caught_up).await, [10]);
    assert_eq!(caught_up, 1, "caught_up is delivered once per subscription");
    server.stop().await;
}

#[tokio::test]
async fn resumes_after_the_network_cuts_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let direct = quick_client(&server.url);
    append_ticks(&direct, "clock:1", 1, 3).await;
    let proxy = Proxy::start(server.addr, |_| Fault::Forward).await;
    let client = quick_client(&proxy.url);

    let mut subscription = client.subscribe(SubscribeOptions::new()).await.unwrap();
    let mut caught_up = 0;
    let mut positions = next_events(&mut subscription, 3, &mut caught_up).await;
    for round in 0..3u64 {
        // Cut mid-stream: no shutdown message, the connection just dies.
        proxy.cut();
        append_ticks(&direct, "clock:2", round * 2 + 1, round * 2 + 2).await;
        positions.extend(next_events(&mut subscription, 2, &mut caught_up).await);
    }
    assert_eq!(positions, (1..=9).collect::<Vec<_>>());

    // Each reconnection asked to continue after the last position seen.
    let requests = proxy.requests();
    assert!(requests.len() >= 4, "{requests:?}");
    assert!(!requests[0].to_ascii_lowercase().contains("last-event-id"));
    let resumed_from: Vec<u64> = requests[1..]
        .iter()
        .filter_map(|r| {
            r.lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("last-event-id: ")
                    .map(str::to_owned)
            })
        })
        .map(|v| v.trim().parse().unwrap())
        .collect();
    assert!(resumed_from.iter().is_sorted(), "{resumed_from:?}");
    assert!(
        resumed_from.contains(&3) && resumed_from.contains(&5) && resumed_from.contains(&7),
        "{resumed_from:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_silent_connection_is_given_up_and_opened_again() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let direct = quick_client(&server.url);
    append_ticks(&direct, "clock:1", 1, 2).await;
    // The first attempt never gets an answer; the read timeout ends it and a retry goes through.
    let proxy = Proxy::start(
        server.addr,
        |n| if n == 0 { Fault::Stall } else { Fault::Forward },
    )
    .await;
    let client = Client::builder(&proxy.url)
        .read_timeout(Duration::from_millis(300))
        .retry(RetryPolicy::default().backoff(Duration::from_millis(10), Duration::from_millis(10)))
        .build()
        .unwrap();
    let mut subscription = client.subscribe(SubscribeOptions::new()).await.unwrap();
    let mut caught_up = 0;
    assert_eq!(next_events(&mut subscription, 2, &mut caught_up).await, [1, 2]);
    assert_eq!(proxy.requests().len(), 2);
    server.stop().await;
}

#[tokio::test]
async fn an_event_at_or_below_the_last_one_is_never_delivered_twice() {
    // A misbehaving server that repeats itself: the client passes over what it has delivered.
    let event = |position: u64| {
        format!(
            r#"{{"event_id":"0192f3c4-5e6a-7b8c-9d0e-{position:012}","position":{position},"aggregate_id":"a","aggregate_type":"A","version":{position},"event_type":"E","event_version":1,"event_data":{{}},"created_at":"2024-01-15T10:00:00.000000Z","recorded_at":"2024-01-15T10:00:00.000000Z","created_by":null,"metadata":null}}"#
        )
    };
    let mut body = String::new();
    for position in [1, 2, 2, 1, 3] {
        body.push_str(&format!(
            "event: event\nid: {position}\ndata: {}\n\n",
            event(position)
        ));
    }
    body.push_str(": keep-alive\n\nevent: caught_up\nid: 3\ndata: {\"position\":3}\n\n");
    let answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes();
    let proxy = Proxy::start(closed_port(), move |_| Fault::Answer(answer.clone())).await;
    let client = quick_client(&proxy.url);
    let mut subscription = client.subscribe(SubscribeOptions::new()).await.unwrap();
    let mut caught_up = 0;
    assert_eq!(next_events(&mut subscription, 3, &mut caught_up).await, [1, 2, 3]);
    assert_eq!(
        next(&mut subscription).await,
        SubscriptionMessage::CaughtUp { position: 3 }
    );
    // The canned stream ends and is replayed on every reconnection: the client resumes from
    // 3 and passes over all of it, so nothing more comes.
    let more = tokio::time::timeout(Duration::from_millis(500), subscription.next()).await;
    assert!(more.is_err(), "nothing more: {more:?}");
    assert!(proxy.requests().len() >= 2);
    assert!(
        proxy.requests()[1]
            .to_ascii_lowercase()
            .contains("last-event-id: 3")
    );
}

#[tokio::test]
async fn a_stream_the_server_ends_with_an_error_is_resumed() {
    // The first connection delivers event 1, then the server reports a failed read and ends
    // (anything after that on the connection is not trusted); the second continues after 1.
    let sse = |body: String| {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    };
    let event = |position: u64, n: u64| {
        format!(
            "event: event\nid: {position}\ndata: {{\"event_id\":\"0192f3c4-5e6a-7b8c-9d0e-{position:012}\",\"position\":{position},\"aggregate_id\":\"a\",\"aggregate_type\":\"A\",\"version\":{position},\"event_type\":\"E\",\"event_version\":1,\"event_data\":{{\"n\":{n}}},\"created_at\":\"2024-01-15T10:00:00.000000Z\",\"recorded_at\":\"2024-01-15T10:00:00.000000Z\",\"created_by\":null,\"metadata\":null}}\n\n"
        )
    };
    let first = sse(format!(
        "{}event: error\ndata: {{\"code\":\"internal\",\"message\":\"read failed\"}}\n\n{}",
        event(1, 1),
        event(2, 666)
    ));
    let second = sse(format!(
        "{}event: caught_up\nid: 2\ndata: {{\"position\":2}}\n\n",
        event(2, 2)
    ));
    let proxy = Proxy::start(closed_port(), move |n| {
        Fault::Answer(if n == 0 { first.clone() } else { second.clone() })
    })
    .await;
    let client = quick_client(&proxy.url);
    let mut subscription = client.subscribe(SubscribeOptions::new()).await.unwrap();
    let mut data = Vec::new();
    for _ in 0..2 {
        match next(&mut subscription).await {
            SubscriptionMessage::Event(event) => data.push(event.event_data.to_value()["n"].clone()),
            other => panic!("expected an event, got {other:?}"),
        }
    }
    assert_eq!(data, [json!(1), json!(2)]);
    assert_eq!(
        next(&mut subscription).await,
        SubscriptionMessage::CaughtUp { position: 2 }
    );
    assert!(
        proxy.requests()[1]
            .to_ascii_lowercase()
            .contains("last-event-id: 1")
    );
}

#[tokio::test]
async fn a_refused_subscription_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let client = quick_client(&server.url);
    let too_long = "x".repeat(300);
    let error = client
        .subscribe(SubscribeOptions::new().filter(EventFilter::new().created_by(too_long)))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("invalid_request"), "{error:?}");

    // With nothing listening, a bounded number of attempts and then a transport error.
    let client = quick_client(&format!("http://{}", closed_port()));
    assert!(matches!(
        client.subscribe(SubscribeOptions::new()).await,
        Err(Error::Transport(_))
    ));
    server.stop().await;
}

#[tokio::test]
async fn reconnection_gives_up_when_told_to() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let client = Client::builder(&server.url)
        .reconnect(
            ReconnectPolicy::default()
                .max_attempts(3)
                .backoff(Duration::from_millis(10), Duration::from_millis(20)),
        )
        .build()
        .unwrap();
    let mut subscription = client.subscribe(SubscribeOptions::new()).await.unwrap();
    assert_eq!(
        next(&mut subscription).await,
        SubscriptionMessage::CaughtUp { position: 0 }
    );
    server.stop().await;
    // The server is gone for good: after three failed reconnections, the error, then the end.
    let last = tokio::time::timeout(Duration::from_secs(10), subscription.next())
        .await
        .unwrap();
    assert!(matches!(last, Some(Err(Error::Transport(_)))), "{last:?}");
    assert!(subscription.next().await.is_none());
}
