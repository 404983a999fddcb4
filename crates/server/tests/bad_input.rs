//! Hostile input the API tests do not already cover: deep nesting, raw bytes that are not
//! UTF-8 in the request line, bodies announced larger than the limit. Each must get its error
//! and leave the server serving the next request.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use common::{Call, assert_error};
use factstore_testkit::model::ModelStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

#[tokio::test]
async fn json_nested_deeper_than_serde_json_parses_is_400() {
    let router = factstore_server::app(Arc::new(ModelStore::new()));
    let uri = "/v1/aggregates/a/events";
    let depth = 100_000;
    let bodies = [
        (uri, nested(depth)),
        (uri, format!(r#"{{"events": {}}}"#, nested(depth))),
        // event_data and metadata are kept as raw text, which serde_json does not limit.
        (
            uri,
            format!(
                r#"{{"events": [{{"aggregate_type": "A", "event_type": "E", "event_data": {{"x": {}}}}}]}}"#,
                nested(depth)
            ),
        ),
        (
            uri,
            format!(
                r#"{{"events": [{{"aggregate_type": "A", "event_type": "E", "event_data": {{}}, "metadata": {{"x": {}}}}}]}}"#,
                nested(200)
            ),
        ),
        (
            "/v1/events",
            format!(
                r#"{{"appends": [], "condition": {{"filter": {}}}}}"#,
                "{\"a\":".repeat(depth)
            ),
        ),
    ];
    for (i, (target, body)) in bodies.into_iter().enumerate() {
        let answer = Call::post_raw(target, body).send(&router).await;
        assert_error(&answer, StatusCode::BAD_REQUEST, "invalid_request");
        // Where the nesting is the first thing wrong (event_data and metadata, kept as raw
        // text), the message names it; elsewhere the body's shape is wrong first.
        if i == 2 || i == 3 {
            assert!(answer.text().contains("64 levels"), "{}", answer.text());
        }
    }
    assert_eq!(Call::get("/v1/head").send(&router).await.body["position"], 0);
    // Brackets inside strings are text, not nesting.
    let body = format!(
        r#"{{"events": [{{"aggregate_type": "A", "event_type": "E", "event_data": {{"x": "{}"}}}}]}}"#,
        "[".repeat(1000)
    );
    let answer = Call::post_raw(uri, body).send(&router).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());
    // Nesting within the stored limit (64 levels, event_data's own object included) is fine
    // inside event_data; a page holding it nests 67, within every serde_json reader's 128.
    let body = format!(
        r#"{{"events": [{{"aggregate_type": "A", "event_type": "E", "event_data": {{"x": {}}}}}]}}"#,
        nested(63)
    );
    let answer = Call::post_raw(uri, body).send(&router).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());
    let page = Call::get("/v1/events").send(&router).await;
    assert_eq!(page.status, StatusCode::OK);
    let parsed: Result<serde_json::Value, _> = serde_json::from_str(&page.text());
    assert!(
        parsed.is_ok(),
        "a page holding the deepest payload parses: {parsed:?}"
    );
}

async fn start() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(factstore_server::serve(
        listener,
        factstore_server::app(Arc::new(ModelStore::new())),
        std::future::pending(),
    ));
    address
}

/// Sends raw bytes on a new connection and reads the answer until the server closes.
async fn raw(address: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
        .await
        .expect("the server answered and closed")
        .ok();
    String::from_utf8_lossy(&out).into_owned()
}

async fn assert_serving(address: SocketAddr) {
    let response = raw(
        address,
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}

fn status_of(response: &str) -> &str {
    response.get(9..12).unwrap_or(response)
}

#[tokio::test]
async fn bad_bytes_in_the_request_line_are_400_and_the_server_keeps_serving() {
    let address = start().await;
    let cases: [&[u8]; 6] = [
        // Raw bytes that are not UTF-8 (nor ASCII) in the path and in the query.
        b"GET /v1/aggregates/a\xff\xfe/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /v1/events?event_type=\xff HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        // Percent-encoded bytes that are not UTF-8, and broken percent-encoding.
        b"GET /v1/aggregates/a%C3%28/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /v1/events?event_type=%E2%82 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /v1/events?aggregate_id=a%g1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /v1/events/%zz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ];
    for request in cases {
        let response = raw(address, request).await;
        assert_eq!(
            status_of(&response),
            "400",
            "{}: {response}",
            String::from_utf8_lossy(request)
        );
        assert_serving(address).await;
    }
}

#[tokio::test]
async fn a_body_announced_over_the_limit_is_413_before_it_is_sent() {
    let address = start().await;
    let head = format!(
        "POST /v1/aggregates/a/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        (16 << 20) + 1
    );
    // Only the head is sent: the answer must not wait for 16 MiB that never come.
    let response = raw(address, head.as_bytes()).await;
    assert_eq!(status_of(&response), "413", "{response}");
    assert!(response.contains("payload_too_large"), "{response}");
    assert_serving(address).await;
}
