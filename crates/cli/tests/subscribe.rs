//! Subscriptions on a real server: readers that stop reading must not grow the server's
//! memory, and a thousand idle subscribers must cost little and all hear a new event.
//!
//! The subscribers here are raw TCP connections, so that a test controls exactly when (and
//! whether) a subscriber reads.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

mod common;
use common::ServeProcess;

/// The server process, with what these tests ask of it.
struct Server(ServeProcess);

impl std::ops::Deref for Server {
    type Target = ServeProcess;
    fn deref(&self) -> &ServeProcess {
        &self.0
    }
}

impl Server {
    async fn start(data_dir: &Path) -> Server {
        Server(ServeProcess::start(data_dir, &[]))
    }

    /// Resident memory of the server process, in bytes.
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    }

    /// Appends `batches` requests of `per_batch` events with `payload_bytes` of data each.
    async fn append(&self, batches: usize, per_batch: usize, payload_bytes: usize) {
        let client = reqwest::Client::new();
        let pad = "p".repeat(payload_bytes);
        for b in 0..batches {
            let events: Vec<Value> = (0..per_batch)
                .map(|i| json!({"aggregate_type": "Load", "event_type": "Filled", "event_data": {"i": i, "pad": pad}}))
                .collect();
            let response = client
                .post(format!(
                    "http://127.0.0.1:{}/v1/aggregates/load-{}/events",
                    self.port,
                    b % 10
                ))
                .json(&json!({ "events": events }))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), 201);
        }
    }
}

/// A subscription over a raw connection with a small receive buffer.
struct Subscriber {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Subscriber {
    async fn open(port: u16, query: &str) -> Subscriber {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(16 * 1024).unwrap();
        let mut stream = socket.connect(([127, 0, 0, 1], port).into()).await.unwrap();
        let request = format!("GET /v1/subscribe{query} HTTP/1.1\r\nHost: test\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        Subscriber {
            stream,
            buffer: Vec::new(),
        }
    }

    /// Reads until `needle` has arrived, returning everything read so far.
    async fn read_until(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut chunk = vec![0u8; 64 * 1024];
        let mut scanned: usize = 0;
        loop {
            // Look only at what arrived since the last look (and a needle's length before it).
            let from = scanned.saturating_sub(needle.len());
            if memchr::memmem::find(&self.buffer[from..], needle.as_bytes()).is_some() {
                break;
            }
            scanned = self.buffer.len();
            let left = deadline.saturating_duration_since(Instant::now());
            let n = tokio::time::timeout(left, self.stream.read(&mut chunk))
                .await
                .unwrap_or_else(|_| panic!("no {needle:?} within 60 s"))
                .unwrap();
            assert!(n > 0, "the server closed the subscription");
            self.buffer.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8_lossy(&self.buffer).into_owned()
    }
}

/// The positions of the events in a stream's text, in order.
fn event_positions(text: &str) -> Vec<u64> {
    text.split("event: event\nid: ")
        .skip(1)
        .map(|rest| rest.split('\n').next().unwrap().trim().parse().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_that_stop_reading_do_not_grow_the_servers_memory() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    // Twenty subscribers that catch up on an empty store, then stop reading.
    let mut stuck = Vec::new();
    for _ in 0..20 {
        let mut subscriber = Subscriber::open(server.port, "").await;
        subscriber.read_until("event: caught_up").await;
        stuck.push(subscriber);
    }
    let before = server.rss();
    // About 48 MB of event JSON: buffered for every stuck subscriber, it would be ~1 GB.
    server.append(40, 1000, 1000).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let growth = server.rss().saturating_sub(before);
    eprintln!("server memory grew by {} MiB", growth >> 20);
    assert!(
        growth < 300 << 20,
        "the server grew by {} MiB while 20 subscribers did not read",
        growth >> 20
    );

    // A stuck subscriber that reads again gets every event once, in order.
    let mut subscriber = stuck.pop().unwrap();
    let text = subscriber.read_until("id: 40000\n").await;
    assert_eq!(event_positions(&text), (1..=40_000).collect::<Vec<u64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_subscribers_cost_little_and_all_hear_a_new_event() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    server.append(1, 10, 100).await;
    let before = server.rss();
    let mut subscribers = Vec::new();
    for i in 0..1000 {
        // Half of them filter, so both kinds of subscription are idle here.
        let query = if i % 2 == 0 {
            ""
        } else {
            "?event_type=Filled,Other"
        };
        let mut subscriber = Subscriber::open(server.port, query).await;
        subscriber.read_until("event: caught_up").await;
        subscribers.push(subscriber);
    }
    let per_subscriber = server.rss().saturating_sub(before) / 1000;
    eprintln!("idle subscriber cost: {per_subscriber} bytes of server memory each");
    assert!(
        per_subscriber < 64 * 1024,
        "an idle subscriber costs {per_subscriber} bytes"
    );

    server.append(1, 1, 100).await;
    for subscriber in &mut subscribers {
        let text = subscriber.read_until("id: 11\n").await;
        assert_eq!(event_positions(&text), (1..=11).collect::<Vec<u64>>());
    }
}
