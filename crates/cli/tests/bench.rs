//! `factstore bench` against a real `factstore serve`, with tiny parameters: each workload
//! reports exactly what it did (requests, events, positions), `--verify` finds nothing wrong
//! with a correct server, and failures are counted and shown. The head and the versions are
//! checked with requests of the test's own, not only through the bench's report.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{BIN, ServeProcess};

struct Server {
    process: ServeProcess,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Server {
    type Target = ServeProcess;
    fn deref(&self) -> &ServeProcess {
        &self.process
    }
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let server = Server {
            process: ServeProcess::start(dir.path(), &[]),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while server.get("/health").is_none() {
            assert!(Instant::now() < deadline, "the server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// A GET of the test's own (plain HTTP/1.1 on a socket): the JSON body of a 200.
    fn get(&self, path: &str) -> Option<Value> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        if !head.starts_with("HTTP/1.1 200") {
            return None;
        }
        serde_json::from_str(body).ok()
    }

    fn head(&self) -> u64 {
        self.get("/v1/head").unwrap()["position"].as_u64().unwrap()
    }

    fn version(&self, aggregate_id: &str) -> u64 {
        self.get(&format!(
            "/v1/aggregates/{aggregate_id}/events?direction=backward&limit=1"
        ))
        .map_or(0, |page| page["version"].as_u64().unwrap())
    }

    /// `factstore bench --json <args>`: the exit status and the report.
    fn bench(&self, args: &[&str]) -> (Output, Value) {
        let output = Command::new(BIN)
            .args(["bench", "--url", &self.url, "--json"])
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let report = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "bench {args:?} printed no JSON report ({e}):\n{stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
        (output, report)
    }

    /// Like [`Server::bench`], and the run must have succeeded.
    fn bench_ok(&self, args: &[&str]) -> Value {
        let (output, report) = self.bench(args);
        assert!(
            output.status.success() && report["failed"] == false,
            "bench {args:?} failed: {report:#}"
        );
        report
    }
}

fn assert_verified(part: &Value, events: u64) {
    assert_eq!(part["verify"]["problems"], 0, "{part:#}");
    assert_eq!(part["verify"]["checked_events"], events, "{part:#}");
}

#[test]
fn append_writes_exactly_requests_times_batch() {
    let server = Server::start();
    let report = server.bench_ok(&[
        "append",
        "--requests",
        "40",
        "--batch",
        "5",
        "--concurrency",
        "2",
        "--aggregates",
        "4",
    ]);
    let append = &report["append"];
    assert_eq!(
        (append["requests"].as_u64(), append["ok"].as_u64()),
        (Some(40), Some(40))
    );
    assert_eq!(append["events"], 200);
    assert_eq!(append["errors"], 0);
    assert_eq!(append["latency_ms"]["samples"], 40);
    assert_eq!(report["head_position"]["before"], 0);
    assert_eq!(report["head_position"]["after"], 200);
    assert_eq!(server.head(), 200);
    // Round-robin over four aggregates: the two clients share the 40 requests as they finish
    // them, so the split between aggregates may be uneven, but every request lands whole.
    let versions: Vec<u64> = (0..4).map(|i| server.version(&format!("bench:{i}"))).collect();
    assert_eq!(versions.iter().sum::<u64>(), 200, "{versions:?}");
    assert!(versions.iter().all(|v| *v > 0 && v % 5 == 0), "{versions:?}");
    assert_eq!(report["parameters"]["batch"], 5);
    assert_eq!(report["parameters"]["concurrency"], 2);
}

#[test]
fn exact_expected_versions_start_from_each_aggregates_version() {
    let server = Server::start();
    let args = [
        "append",
        "--expected-version",
        "--prefix",
        "ev:",
        "--requests",
        "20",
        "--batch",
        "3",
        "--concurrency",
        "2",
        "--aggregates",
        "4",
    ];
    // The second run must read the versions the first left, or every append would conflict.
    for run in 1..=2u64 {
        let report = server.bench_ok(&args);
        let append = &report["append"];
        assert_eq!(append["conflicts"], 0, "{append:#}");
        assert_eq!(append["ok"], 20);
        assert_eq!(append["events"], 60);
        assert_eq!(server.head(), 60 * run);
    }
    let versions: u64 = (0..4).map(|i| server.version(&format!("ev:{i}"))).sum();
    assert_eq!(versions, 120);
}

#[test]
fn competing_exact_versions_are_conflicts_not_failures() {
    let server = Server::start();
    let args = [
        "append",
        "--expected-version",
        "--requests",
        "150",
        "--concurrency",
        "1",
        "--aggregates",
        "1",
    ];
    let spawn = || {
        Command::new(BIN)
            .args(["bench", "--url", &server.url, "--json"])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let mut written = 0;
    let mut conflicts = 0;
    for child in [a, b] {
        let output = child.wait_with_output().unwrap();
        let report: Value = serde_json::from_slice(&output.stdout).unwrap();
        let append = &report["append"];
        assert!(output.status.success(), "{report:#}");
        assert_eq!(append["errors"], 0, "{append:#}");
        assert_eq!(
            append["ok"].as_u64().unwrap() + append["conflicts"].as_u64().unwrap(),
            150,
            "{append:#}"
        );
        written += append["ok"].as_u64().unwrap();
        conflicts += append["conflicts"].as_u64().unwrap();
    }
    // Each conflict was followed by the right version: every success is in the store.
    assert_eq!(server.head(), written);
    assert_eq!(server.version("bench:0"), written);
    eprintln!("{conflicts} conflicts between the two runs");
}

#[test]
fn read_all_reads_exactly_the_head() {
    let server = Server::start();
    let seeded = server.bench_ok(&["seed", "--events", "2345"]);
    assert_eq!(seeded["seed"]["events"], 2345);
    assert_eq!(seeded["seed"]["requests"], 3);
    assert_eq!(server.head(), 2345);

    let report = server.bench_ok(&["read-all", "--page-size", "1000", "--verify"]);
    let read = &report["read_all"];
    assert_eq!(read["events"], 2345);
    assert_eq!(read["pages"], 3);
    assert_eq!(read["head_position"], 2345);
    assert_verified(read, 2345);

    let report = server.bench_ok(&["read-all", "--concurrency", "2", "--page-size", "700"]);
    assert_eq!(report["read_all"]["events"], 2 * 2345);
    assert_eq!(report["read_all"]["pages"], 2 * 4);

    let report = server.bench_ok(&["read-all", "--after", "2000", "--passes", "2", "--verify"]);
    assert_eq!(report["read_all"]["events"], 2 * 345);
    assert_verified(&report["read_all"], 2 * 345);

    // A filter: seeded events went to bench:0 (1000), bench:1 (1000) and bench:2 (345).
    let report = server.bench_ok(&[
        "read-all",
        "--query",
        "aggregate_id=bench:2",
        "--page-size",
        "100",
        "--verify",
    ]);
    assert_eq!(report["read_all"]["events"], 345);
    assert_verified(&report["read_all"], 345);
}

#[test]
fn read_all_seeds_first_when_asked() {
    let server = Server::start();
    let report = server.bench_ok(&["read-all", "--seed", "1200", "--verify"]);
    assert_eq!(report["seed"]["events"], 1200);
    assert_eq!(report["read_all"]["events"], 1200);
    assert_verified(&report["read_all"], 1200);
    assert_eq!(report["head_position"]["after"], 1200);
}

#[test]
fn subscribe_counts_exactly_the_head() {
    let server = Server::start();
    server.bench_ok(&["seed", "--events", "1500", "--batch", "300"]);
    let report = server.bench_ok(&["subscribe", "--concurrency", "2", "--verify"]);
    let subscribe = &report["subscribe"];
    assert_eq!(subscribe["events"], 3000);
    assert_eq!(subscribe["caught_up_position"], 1500);
    assert_eq!(subscribe["ok"], 2);
    assert_verified(subscribe, 3000);

    let report = server.bench_ok(&["subscribe", "--after", "1000"]);
    assert_eq!(report["subscribe"]["events"], 500);
    assert_eq!(report["subscribe"]["caught_up_position"], 1500);

    let report = server.bench_ok(&["subscribe", "--query", "aggregate_id=bench:1", "--verify"]);
    assert_eq!(report["subscribe"]["events"], 300);
    assert_verified(&report["subscribe"], 300);
}

#[test]
fn consume_acks_exactly_the_head_and_deletes_its_group() {
    let server = Server::start();
    let report = server.bench_ok(&["consume", "--seed", "2500", "--consumers", "3", "--max", "200"]);
    assert_eq!(report["ack"]["acked"], 2500);
    assert_eq!(report["ack"]["events"], 2500);
    assert_eq!(report["poll"]["events"], 2500, "nothing delivered twice");
    let report = server.bench_ok(&["consume", "--ordering", "per_aggregate", "--max", "50"]);
    assert_eq!(report["ack"]["acked"], 2500);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let url = format!("{}/v1/subscriptions", server.url);
    let groups: Value = runtime
        .block_on(async { reqwest::get(url).await?.json().await })
        .expect("list");
    assert_eq!(groups["subscriptions"], serde_json::json!([]));
}

#[test]
fn read_aggregate_reads_whole_seeded_aggregates() {
    let server = Server::start();
    let report = server.bench_ok(&[
        "read-aggregate",
        "--prefix",
        "ra:",
        "--aggregates",
        "3",
        "--seed-events",
        "25",
        "--limit",
        "10",
        "--requests",
        "12",
        "--concurrency",
        "2",
    ]);
    assert_eq!(report["seed"]["events"], 75);
    let read = &report["read_aggregate"];
    assert_eq!(read["aggregates_read"], 12);
    assert_eq!(read["events"], 12 * 25);
    // 25 events, 10 a page: three pages per aggregate.
    assert_eq!(read["pages"], 36);
    assert_eq!(read["errors"], 0);
    for i in 0..3 {
        assert_eq!(server.version(&format!("ra:{i}")), 25);
    }
}

#[test]
fn reading_aggregates_that_do_not_exist_fails() {
    let server = Server::start();
    let (output, report) = server.bench(&["read-aggregate", "--prefix", "none:", "--requests", "3"]);
    assert!(!output.status.success());
    let read = &report["read_aggregate"];
    assert_eq!(read["errors_by_kind"]["404 aggregate_not_found"], 3, "{read:#}");
    assert_eq!(report["failed"], true);
}

#[test]
fn mixed_subscriber_receives_every_append() {
    let server = Server::start();
    let report = server.bench_ok(&[
        "mixed",
        "--appenders",
        "2",
        "--readers",
        "2",
        "--subscriber",
        "--requests",
        "30",
        "--batch",
        "2",
        "--aggregates",
        "5",
    ]);
    assert_eq!(report["append"]["events"], 60);
    assert_eq!(report["read"]["errors"], 0);
    assert!(report["read"]["ok"].as_u64().unwrap() > 0);
    let subscribe = &report["subscribe"];
    assert_eq!(subscribe["events"], 60);
    assert_eq!(subscribe["missed"], 0);
    assert_eq!(subscribe["from_position"], 0);
    assert_eq!(subscribe["to_position"], 60);
    assert_verified(subscribe, 60);
    assert!(subscribe["latency_ms"]["samples"].as_u64().unwrap() == 60);
    assert_eq!(server.head(), 60);
}

#[test]
fn failures_are_counted_and_shown() {
    let server = Server::start();
    // Over the server's 1 MiB limit per event.
    let (output, report) = server.bench(&[
        "append",
        "--requests",
        "3",
        "--concurrency",
        "1",
        "--payload-bytes",
        "1100000",
    ]);
    assert!(!output.status.success());
    let append = &report["append"];
    assert_eq!(append["errors_by_kind"]["413 payload_too_large"], 3, "{append:#}");
    assert_eq!(append["ok"], 0);
    let sample = append["error_samples"][0].as_str().unwrap();
    assert!(sample.contains("413 payload_too_large"), "{sample}");
    assert_eq!(server.head(), 0);
}

#[test]
fn the_text_report_describes_the_run() {
    let server = Server::start();
    let output = Command::new(BIN)
        .args(["bench", "--url", &server.url, "append", "--requests", "5"])
        .args(["--batch", "2", "--concurrency", "1"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    for expected in [
        "factstore bench append",
        "concurrency",
        "payload_bytes",
        "head position          0 -> 10",
        "latency ms",
        "p99.9",
    ] {
        assert!(text.contains(expected), "no '{expected}' in:\n{text}");
    }
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("events") && l.contains(" 10 ")),
        "{text}"
    );
}

#[test]
fn an_unreachable_server_is_an_error() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let output = Command::new(BIN)
        .args(["bench", "--url", &format!("http://127.0.0.1:{port}"), "read-all"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot reach the server"), "{stderr}");
}

/// `bench reserve` with a guard: every attempt is a win or a conflict of the guard's kind,
/// each commit writes one event per aggregate, and the store holds exactly one reservation
/// of every seat won.
fn reserve_with_guard(guard: &str, conflict_kind: &str, other_kind: &str) {
    let server = Server::start();
    let report = server.bench_ok(&[
        "reserve",
        "--guard",
        guard,
        "--requests",
        "200",
        "--concurrency",
        "8",
        "--seats",
        "5",
        "--aggregates-per-commit",
        "3",
    ]);
    let part = &report["reserve"];
    let (ok, conflicts) = (part["ok"].as_u64().unwrap(), part["conflicts"].as_u64().unwrap());
    assert_eq!(part["requests"], 200, "{part:#}");
    assert_eq!(part["errors"], 0, "{part:#}");
    assert_eq!(ok + conflicts, 200, "{part:#}");
    assert!(
        conflicts > 0,
        "eight clients racing for five seats lose some races: {part:#}"
    );
    assert_eq!(part["conflicts_by_kind"][conflict_kind], conflicts, "{part:#}");
    assert_eq!(part["conflicts_by_kind"][other_kind], 0, "{part:#}");
    assert_eq!(part["events"], ok * 3, "{part:#}");
    assert_eq!(part["latency_ms"]["samples"], ok, "{part:#}");
    assert_eq!(report["head_position"]["after"], ok * 3);
    assert_eq!(server.head(), ok * 3);
    let page = server
        .get("/v1/events?event_type=SeatReserved&limit=10000")
        .unwrap();
    let mut reservations: std::collections::HashMap<String, u64> = Default::default();
    for event in page["events"].as_array().unwrap() {
        let seat = event["event_data"]["seat"].as_str().unwrap().to_owned();
        *reservations.entry(seat).or_default() += 1;
    }
    assert_eq!(reservations.len() as u64, ok, "one seat per won reservation");
    assert!(
        reservations.values().all(|&n| n == 1),
        "a seat reserved twice: {reservations:?}"
    );
    let share = part["conflict_share"].as_f64().unwrap();
    assert!((share - conflicts as f64 / 200.0).abs() < 1e-9, "{part:#}");
}

#[test]
fn reserve_with_a_condition_has_one_winner_per_seat() {
    reserve_with_guard("condition", "condition_failed", "wrong_expected_version");
}

#[test]
fn reserve_with_expected_versions_has_one_winner_per_seat() {
    reserve_with_guard("expected-version", "wrong_expected_version", "condition_failed");
}

#[test]
fn reserve_plain_writes_every_commit() {
    let server = Server::start();
    let report = server.bench_ok(&[
        "reserve",
        "--plain",
        "--requests",
        "50",
        "--concurrency",
        "4",
        "--seats",
        "3",
    ]);
    let part = &report["reserve"];
    assert_eq!(report["parameters"]["guard"], "none");
    assert_eq!(
        (part["ok"].as_u64(), part["conflicts"].as_u64()),
        (Some(50), Some(0))
    );
    assert_eq!(part["events"], 100);
    assert_eq!(server.head(), 100);
    assert!(part["commits_per_s"].as_f64().unwrap() > 0.0, "{part:#}");
}
