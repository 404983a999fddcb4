//! What a hostile or broken client can make the server hold, on real sockets: clients that
//! never read a subscription, a long page or a poll answer; the bound on live subscriptions;
//! request bodies that never finish; more connections than the server serves.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::{Call, assert_error};
use factstore_core::{Commit, EventPage, EventQuery, EventStore, ExpectedVersion, NewEvent};
use factstore_server::budget::{CHUNK_BYTES, READ_AHEAD_BYTES, READ_AHEAD_CHUNKS, WRITE_BUFFER_BYTES};
use factstore_server::{AppState, ServeOptions, ServerConfig, app_with_state};
use factstore_testkit::model::ModelStore;
use factstore_testkit::wait::{until, until_ok};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tower::ServiceExt;

/// `n` events of about 1 KiB of `event_data` each, in commits of 1000, over 10 aggregates.
async fn history(store: &ModelStore, n: usize) {
    let padding = "x".repeat(1000);
    let mut written = 0;
    while written < n {
        let batch = (n - written).min(1000);
        let events = (0..batch)
            .map(|i| NewEvent::new("Thing", "Happened", json!({"i": written + i, "pad": padding})))
            .collect();
        let aggregate = format!("thing-{}", written / 1000 % 10);
        store
            .commit(Commit::single(&aggregate, ExpectedVersion::Any, events))
            .await
            .unwrap();
        written += batch;
    }
}

/// A server on a loopback port whose sockets have small kernel buffers, so that what a client
/// does not read stays in the server's hands rather than the kernel's.
struct Running {
    address: SocketAddr,
    state: AppState,
    _stop: oneshot::Sender<()>,
}

async fn start(state: AppState, options: ServeOptions) -> Running {
    let socket = TcpSocket::new_v4().unwrap();
    // Accepted sockets inherit the listener's buffer sizes.
    socket.set_send_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1024).unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(factstore_server::serve_with(
        listener,
        app_with_state(state.clone()),
        options,
        async move {
            let _ = stopped.await;
        },
    ));
    Running {
        address,
        state,
        _stop: stop,
    }
}

/// A client connection with a small receive buffer that sends `request` and then never reads.
async fn never_reads(address: SocketAddr, request: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(address).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

/// The most response bytes the server holds, rendered and not yet written, watched for a
/// while after they first appear.
async fn held_bytes(state: &AppState) -> usize {
    until(
        "the server to render a response",
        Duration::from_secs(10),
        || async { state.budget.bodies.pending() > 0 },
    )
    .await;
    let mut most = 0;
    let watch = Instant::now();
    // Time passes on purpose: whatever the server would pile up, it has 1.5 s to.
    while watch.elapsed() < Duration::from_millis(1500) {
        most = most.max(state.budget.bodies.pending());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    most
}

/// One chunk in the handler's hands plus hyper's write buffer, and one event and the framing
/// of slack: what a client that never reads may cost.
const HELD_MAX: usize = CHUNK_BYTES + WRITE_BUFFER_BYTES + 16 * 1024;

#[tokio::test]
async fn a_subscriber_that_never_reads_holds_one_chunk_not_a_catch_up_page() {
    let store = Arc::new(ModelStore::new());
    history(&store, 5000).await;
    let running = start(
        AppState::new(store, ServerConfig::default()),
        ServeOptions::default(),
    )
    .await;
    let _client = never_reads(running.address, "GET /v1/subscribe HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let held = held_bytes(&running.state).await;
    eprintln!("held: {held} bytes");
    assert!(
        held <= HELD_MAX,
        "a subscriber that never reads makes the server hold {held} bytes (at most {HELD_MAX})"
    );
}

#[tokio::test]
async fn a_long_page_that_is_never_read_holds_one_chunk() {
    let store = Arc::new(ModelStore::new());
    history(&store, 10_000).await;
    let running = start(
        AppState::new(store, ServerConfig::default()),
        ServeOptions::default(),
    )
    .await;
    let _client = never_reads(
        running.address,
        "GET /v1/events?limit=10000 HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    let held = held_bytes(&running.state).await;
    eprintln!("held: {held} bytes");
    assert!(
        held <= HELD_MAX,
        "a page of 10,000 events that is never read makes the server hold {held} bytes (at most {HELD_MAX})"
    );
}

#[tokio::test]
async fn a_poll_answer_that_is_never_read_holds_one_chunk() {
    let store = Arc::new(ModelStore::new());
    history(&store, 10_000).await;
    let state = AppState::new(store, ServerConfig::default());
    let router = app_with_state(state.clone());
    let created = Call::put("/v1/subscriptions/g", &json!({})).send(&router).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    // The group reads its events ahead; wait until all are there to be leased.
    until_ok(
        "the group to read every event ahead",
        Duration::from_secs(10),
        || async {
            let status = Call::get("/v1/subscriptions/g").send(&router).await;
            if status.body["pending"].as_u64() == Some(10_000) {
                Ok(())
            } else {
                Err(status.text())
            }
        },
    )
    .await;
    let running = start(state, ServeOptions::default()).await;
    let body = r#"{"consumer":"c","max":10000}"#;
    let _client = never_reads(
        running.address,
        &format!(
            "POST /v1/subscriptions/g/poll HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    let held = held_bytes(&running.state).await;
    eprintln!("held: {held} bytes");
    assert!(
        held <= HELD_MAX,
        "a poll of 10,000 events that is never read makes the server hold {held} bytes (at most {HELD_MAX})"
    );
}

async fn body_of(router: &Router, uri: &str) -> (StatusCode, Vec<u8>) {
    let response = router
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes().to_vec(),
    )
}

#[tokio::test]
async fn a_page_read_in_chunks_is_the_page_of_one_read() {
    let store = Arc::new(ModelStore::new());
    history(&store, 3000).await;
    let router = app_with_state(AppState::new(store.clone(), ServerConfig::default()));
    let cases = [
        ("limit=10000", EventQuery::all(0, 10_000)),
        ("limit=2500&after_position=17", EventQuery::all(17, 2500)),
        ("limit=500&to_position=2999", {
            let mut query = EventQuery::all(0, 500);
            query.to_position = Some(2999);
            query
        }),
        ("to_position=2222&after_position=1800", {
            let mut query = EventQuery::all(1800, 1000);
            query.to_position = Some(2222);
            query
        }),
        ("aggregate_id=thing-1&limit=700", {
            let mut query = EventQuery::all(0, 700);
            query.filter.aggregate_id = Some("thing-1".into());
            query
        }),
        ("aggregate_id=thing-2", {
            let mut query = EventQuery::all(0, 1000);
            query.filter.aggregate_id = Some("thing-2".into());
            query
        }),
        ("after_position=5000", EventQuery::all(5000, 1000)),
    ];
    for (params, query) in cases {
        let (status, body) = body_of(&router, &format!("/v1/events?{params}")).await;
        assert_eq!(status, StatusCode::OK, "{params}");
        let expected: EventPage = store.read_events(query).await.unwrap();
        let expected = factstore_server::render::event_page(&expected);
        let got: Value = serde_json::from_slice(&body).unwrap();
        let want: Value = serde_json::from_slice(&expected).unwrap();
        assert_eq!(got, want, "{params}");
    }
}

#[tokio::test]
async fn a_subscription_of_large_events_catches_up_in_order_across_chunks() {
    let store = Arc::new(ModelStore::new());
    history(&store, 3000).await;
    let router = app_with_state(AppState::new(store, ServerConfig::default()));
    let response = router
        .oneshot(Request::get("/v1/subscribe").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let mut body = response.into_body();
    let mut text = String::new();
    let mut chunks = 0;
    while !text.contains("event: caught_up") {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let data = frame.into_data().unwrap();
        assert!(
            data.len() <= CHUNK_BYTES + 2048,
            "a chunk of {} bytes",
            data.len()
        );
        chunks += 1;
        text.push_str(std::str::from_utf8(&data).unwrap());
    }
    let ids: Vec<u64> = text
        .lines()
        .filter_map(|line| line.strip_prefix("id: "))
        .map(|id| id.parse().unwrap())
        .collect();
    let expected: Vec<u64> = (1..=3000).chain([3000]).collect();
    assert_eq!(ids, expected, "every event once, in order, then caught_up");
    assert!(chunks > 30, "3 MB of events in chunks of 64 KiB, not {chunks}");
}

#[tokio::test]
async fn subscribers_beyond_the_bound_get_503_with_retry_after_until_one_leaves() {
    let mut config = ServerConfig::default();
    config.subscribers_max = 2;
    let router = app_with_state(AppState::new(Arc::new(ModelStore::new()), config));
    let subscribe = || async {
        router
            .clone()
            .oneshot(Request::get("/v1/subscribe").body(Body::empty()).unwrap())
            .await
            .unwrap()
    };
    let first = subscribe().await;
    let second = subscribe().await;
    assert_eq!(
        (first.status(), second.status()),
        (StatusCode::OK, StatusCode::OK)
    );

    let third = subscribe().await;
    assert_eq!(third.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        third
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok()),
        Some("5")
    );
    let body: Value = serde_json::from_slice(&third.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["error"]["code"], "store_unavailable", "{body}");

    // A bad request is still told what is wrong, not that the server is busy.
    let bad = Call::get("/v1/subscribe?after_position=x").send(&router).await;
    assert_error(&bad, StatusCode::BAD_REQUEST, "invalid_request");

    // The client of the first leaves: its place is free again.
    drop(first);
    let fourth = subscribe().await;
    assert_eq!(fourth.status(), StatusCode::OK);
    assert_eq!(subscribe().await.status(), StatusCode::SERVICE_UNAVAILABLE);
}

/// Reads until the server closes the connection; what it sent, or `None` if it is still open
/// after `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    match tokio::time::timeout(within, stream.read_to_end(&mut out)).await {
        Ok(_) => Some(out),
        Err(_) => None,
    }
}

#[tokio::test]
async fn a_request_body_that_stalls_has_its_connection_closed_within_the_bound() {
    let options = ServeOptions {
        body_read_timeout: Duration::from_millis(300),
        ..ServeOptions::default()
    };
    let running = start(
        AppState::new(Arc::new(ModelStore::new()), ServerConfig::default()),
        options,
    )
    .await;
    let mut stalled = TcpStream::connect(running.address).await.unwrap();
    stalled
        .write_all(
            b"POST /v1/aggregates/a/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 1000\r\n\r\n{\"events\":[",
        )
        .await
        .unwrap();
    let started = Instant::now();
    let sent = closed_within(&mut stalled, Duration::from_secs(5))
        .await
        .expect("the server closes a connection whose body stalls");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    assert!(
        sent.is_empty(),
        "nothing is answered: {}",
        String::from_utf8_lossy(&sent)
    );

    // A body that arrives in time, even in pieces, is served as usual.
    let mut slow = TcpStream::connect(running.address).await.unwrap();
    let body = r#"{"events":[{"aggregate_type":"A","event_type":"E","event_data":{}}]}"#;
    slow.write_all(
        format!(
            "POST /v1/aggregates/a/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Connection: close\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // Slow on purpose: the body comes in pieces, with pauses between them.
    tokio::time::sleep(Duration::from_millis(100)).await;
    slow.write_all(&body.as_bytes()[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    slow.write_all(&body.as_bytes()[10..]).await.unwrap();
    let answer = closed_within(&mut slow, Duration::from_secs(5)).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
}

async fn request(address: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let answer = closed_within(&mut stream, Duration::from_secs(5))
        .await
        .expect("an answer, not a hang");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn at_the_connection_cap_health_answers_the_rest_get_503_and_service_resumes() {
    let options = ServeOptions {
        max_connections: 4,
        ..ServeOptions::default()
    };
    let running = start(
        AppState::new(Arc::new(ModelStore::new()), ServerConfig::default()),
        options,
    )
    .await;
    // Four connections that send nothing take every place. The server takes connections in
    // the order they were made, and a place as it takes one: the next connection finds them
    // all taken, with nothing to wait for.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(running.address).await.unwrap());
    }

    let health = request(running.address, "/health").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.contains(r#"{"status":"ok"}"#), "{health}");
    let refused = request(running.address, "/v1/head").await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(
        refused.to_ascii_lowercase().contains("retry-after: 5"),
        "{refused}"
    );
    assert!(refused.contains("store_unavailable"), "{refused}");

    // Once they close, the API answers again.
    drop(idle);
    until_ok("the API to answer again", Duration::from_secs(5), || async {
        let head = request(running.address, "/v1/head").await;
        if head.starts_with("HTTP/1.1 200") {
            Ok(())
        } else {
            Err(head)
        }
    })
    .await;
}

#[tokio::test]
async fn beyond_the_overflow_lane_connections_are_closed_at_once_not_left_hanging() {
    let options = ServeOptions {
        max_connections: 1,
        ..ServeOptions::default()
    };
    let running = start(
        AppState::new(Arc::new(ModelStore::new()), ServerConfig::default()),
        options,
    )
    .await;
    let mut idle = Vec::new();
    // Taken in the order they were made (see above): the next finds both lanes full.
    for _ in 0..1 + factstore_server::serve::OVERFLOW_CONNECTIONS {
        idle.push(TcpStream::connect(running.address).await.unwrap());
    }
    let mut extra = TcpStream::connect(running.address).await.unwrap();
    let closed = closed_within(&mut extra, Duration::from_secs(2)).await;
    assert_eq!(
        closed.as_deref(),
        Some(&b""[..]),
        "closed at once, without an answer"
    );
    drop(idle);
}

/// The read-ahead that pages take from (16 chunks' worth per store read, 32 MiB for all
/// clients) is given back whole: when a page ends, and when a client that stopped reading
/// leaves; while it waits, a page holds at most one read's worth of it.
#[tokio::test]
async fn read_ahead_is_given_back_when_pages_end_or_their_clients_leave() {
    let store = Arc::new(ModelStore::new());
    history(&store, 10_000).await;
    let state = AppState::new(store, ServerConfig::default());
    let available = || state.budget.read_ahead.available_permits();
    let router = app_with_state(state.clone());
    for _ in 0..3 {
        let (status, body) = body_of(&router, "/v1/events?limit=10000").await;
        assert_eq!(status, StatusCode::OK);
        let page: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(page["events"].as_array().map(Vec::len), Some(10_000));
        assert_eq!(
            available(),
            READ_AHEAD_BYTES,
            "a page that ended keeps no read-ahead"
        );
    }
    let running = start(state.clone(), ServeOptions::default()).await;
    let client = never_reads(
        running.address,
        "GET /v1/events?limit=10000 HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    held_bytes(&running.state).await;
    let taken = READ_AHEAD_BYTES - available();
    assert!(
        taken <= CHUNK_BYTES * (READ_AHEAD_CHUNKS - 1),
        "a stalled page holds {taken} bytes of read-ahead"
    );
    drop(client);
    until_ok(
        "the read-ahead of a client that left",
        Duration::from_secs(10),
        || async {
            match READ_AHEAD_BYTES - available() {
                0 => Ok(()),
                held => Err(format!("{held} bytes still held")),
            }
        },
    )
    .await;
}
