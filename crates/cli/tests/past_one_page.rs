//! Inputs and outputs larger than one request or one page, against a real `factstore serve`:
//! `append --stdin` splits thousands of event lines into requests under the server's limits
//! (and says so), but never a request line; every listing command prints all that matches,
//! page after page, unless `--limit` cuts it, and then says on stderr where to continue.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;
use common::{BIN, ServeProcess};

fn command(url: &str, args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env("FACTSTORE_URL", url)
        .env_remove("FACTSTORE_TOKEN");
    command
}

fn run(url: &str, args: &[&str]) -> Output {
    command(url, args).output().expect("run factstore")
}

fn run_with_stdin(url: &str, args: &[&str], stdin: &str) -> Output {
    let mut child = command(url, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Written from a thread: a child answering while it reads must not block on a full pipe.
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_owned();
    let writer = std::thread::spawn(move || input.write_all(stdin.as_bytes()));
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    output
}

/// A command that must succeed: its stdout and stderr.
fn ok(output: Output, what: &str) -> (String, String) {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{what} failed: {stderr}");
    (String::from_utf8(output.stdout).unwrap(), stderr)
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// `count` event lines of one account, `n` numbering them from 0 and `k` cycling through
/// `keys` values.
fn event_lines(count: usize, keys: usize) -> String {
    (0..count)
        .map(|n| {
            json!({
                "aggregate_type": "Account",
                "event_type": "MoneyDeposited",
                "event_data": {"n": n, "k": (n % keys).to_string()}
            })
            .to_string()
                + "\n"
        })
        .collect()
}

fn head(url: &str) -> u64 {
    let (out, _) = ok(run(url, &["head", "--json"]), "head");
    json_lines(&out)[0]["position"].as_u64().unwrap()
}

#[test]
fn append_stdin_splits_thousands_of_event_lines_but_never_a_request_line() {
    let data = tempfile::tempdir().unwrap();
    let server = ServeProcess::start(data.path(), &[]);
    let url = server.url.as_str();

    // 5000 events: five requests of the server's 1000, in order, each expecting the version
    // the one before reached.
    let (out, err) = ok(
        run_with_stdin(
            url,
            &["append", "account:big", "--stdin", "--expected-version", "0"],
            &event_lines(5000, 1),
        ),
        "append of 5000 lines",
    );
    let outcomes: Vec<&str> = out.lines().collect();
    assert_eq!(
        outcomes,
        (0..5)
            .map(|i| format!(
                "appended 1000 events to account:big: version {}-{}, position {}-{}",
                i * 1000 + 1,
                i * 1000 + 1000,
                i * 1000 + 1,
                i * 1000 + 1000
            ))
            .collect::<Vec<_>>()
    );
    assert!(err.contains("appended 5000 events in 5 requests"), "{err}");
    assert!(err.contains("the whole input is not"), "{err}");
    let (events, _) = ok(run(url, &["read", "account:big", "--json"]), "read");
    let events = json_lines(&events);
    assert_eq!(events.len(), 5000);
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event["version"], i as u64 + 1);
        assert_eq!(event["event_data"]["n"], i as u64, "the lines' order is kept");
    }

    // --batch-bytes packs by size too: 300 events of about 120 bytes in requests of 8 KiB.
    let (out, err) = ok(
        run_with_stdin(
            url,
            &[
                "append",
                "account:bytes",
                "--stdin",
                "--batch-bytes",
                "8192",
                "--json",
            ],
            &event_lines(300, 1),
        ),
        "append by size",
    );
    let outcomes = json_lines(&out);
    assert!(outcomes.len() >= 5, "{} requests", outcomes.len());
    let sizes: usize = outcomes
        .iter()
        .map(|o| o["events"].as_array().unwrap().len())
        .sum();
    assert_eq!(sizes, 300);
    assert!(
        err.contains(&format!("300 events in {} requests", outcomes.len())),
        "{err}"
    );

    // A split input is not atomic: when a request fails after others, the error says what
    // was appended (here the second event's type does not match the aggregate's).
    let mismatch = "{\"aggregate_type\":\"Account\",\"event_type\":\"Opened\",\"event_data\":{}}\n\
                    {\"aggregate_type\":\"Other\",\"event_type\":\"Opened\",\"event_data\":{}}\n";
    let failed = run_with_stdin(
        url,
        &["append", "account:mixed", "--stdin", "--batch-events", "1"],
        mismatch,
    );
    let message = String::from_utf8_lossy(&failed.stderr).into_owned();
    assert_eq!(failed.status.code(), Some(3), "{message}");
    assert!(
        message.starts_with("error: line 2 (1 event, about ")
            && message.contains(" bytes) not appended; line 1 appended, up to version 1 of account:mixed: "),
        "{message}"
    );

    // A request line is one atomic append: one over the limit is refused whole, and the
    // error says why it was not split.
    let events: Vec<Value> = (0..1001)
        .map(|n| json!({"aggregate_type": "Account", "event_type": "MoneyDeposited", "event_data": {"n": n}}))
        .collect();
    let request = json!({"expected_version": 0, "events": events}).to_string() + "\n";
    let before = head(url);
    let refused = run_with_stdin(url, &["append", "account:request", "--stdin"], &request);
    let message = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert_eq!(refused.status.code(), Some(1), "{message}");
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(message.contains("line 1 was not appended"), "{message}");
    assert!(
        message.contains(
            "it is an append request ({\"expected_version\": ..., \"events\": [...]}) of 1001 events"
        ),
        "{message}"
    );
    assert!(message.contains("never split"), "{message}");
    assert!(message.contains("at most 1000 events"), "{message}");
    assert!(message.contains("--batch-events"), "{message}");
    assert_eq!(head(url), before, "nothing of the refused request was written");
}

#[test]
fn listings_print_every_page_and_a_limit_says_where_to_continue() {
    let data = tempfile::tempdir().unwrap();
    let server = ServeProcess::start(data.path(), &[]);
    let url = server.url.as_str();

    // 150 keys and 150 parked events: past the first page (100) of states and of parked
    // events; 2500 events: past the first pages (1000) of query and read.
    let definition = data.path().join("by-k.json");
    std::fs::write(
        &definition,
        json!({
            "filter": {"aggregate_type": "Account"},
            "key": "/event_data/k",
            "initial": {"count": 0},
            "on": {"MoneyDeposited": [{"op": "inc", "path": "/count"}]}
        })
        .to_string(),
    )
    .unwrap();
    ok(
        run(
            url,
            &[
                "projections",
                "put",
                "by-k",
                "--file",
                definition.to_str().unwrap(),
            ],
        ),
        "projections put",
    );
    ok(
        run(
            url,
            &["subscriptions", "create", "audit", "--aggregate-type", "Account"],
        ),
        "subscriptions create",
    );
    ok(
        run_with_stdin(url, &["append", "account:1", "--stdin"], &event_lines(2500, 150)),
        "append",
    );

    // query: every event, in order, with nothing said; --limit cuts and says where to go on.
    let (out, err) = ok(run(url, &["query", "--json"]), "query");
    let positions: Vec<u64> = json_lines(&out)
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions, (1..=2500).collect::<Vec<_>>());
    assert_eq!(err, "");
    let (out, err) = ok(run(url, &["query", "--limit", "1200"]), "query --limit");
    assert_eq!(out.lines().count(), 1200);
    assert_eq!(
        err,
        "stopped at --limit 1200; more events match: continue with --after-position 1200\n"
    );
    let (out, _) = ok(
        run(url, &["query", "--json", "--after-position", "1200"]),
        "query --after-position",
    );
    assert_eq!(json_lines(&out)[0]["position"], 1201);
    assert_eq!(out.lines().count(), 1300);
    let (out, err) = ok(run(url, &["query", "--limit", "2500"]), "query --limit all");
    assert_eq!((out.lines().count(), err.as_str()), (2500, ""));

    // read: every version, in both directions.
    let (out, err) = ok(run(url, &["read", "account:1"]), "read");
    assert_eq!(out.lines().count(), 2501, "a header and every event");
    assert_eq!(err, "");
    let (out, err) = ok(
        run(url, &["read", "account:1", "--json", "--limit", "1001"]),
        "read --limit",
    );
    assert_eq!(json_lines(&out).last().unwrap()["version"], 1001);
    assert_eq!(
        err,
        "stopped at --limit 1001; there are more events: continue with --from-version 1002\n"
    );
    let (out, err) = ok(
        run(
            url,
            &["read", "account:1", "--json", "--backward", "--limit", "10"],
        ),
        "read --backward --limit",
    );
    assert_eq!(json_lines(&out).last().unwrap()["version"], 2491);
    assert!(err.ends_with("continue with --from-version 2490\n"), "{err}");

    // projections state: every key, past the server's page of 100.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (out, _) = ok(run(url, &["projections", "show", "by-k", "--json"]), "show");
        if json_lines(&out)[0]["position"] == 2500 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the projection did not catch up: {out}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let keys = |out: &str| -> Vec<String> {
        json_lines(out)
            .iter()
            .map(|s| s["key"].as_str().unwrap().to_owned())
            .collect()
    };
    let (out, err) = ok(run(url, &["projections", "state", "by-k", "--json"]), "states");
    let all = keys(&out);
    assert_eq!(
        all.iter().cloned().collect::<BTreeSet<_>>(),
        (0..150).map(|k| k.to_string()).collect::<BTreeSet<_>>()
    );
    assert_eq!((all.len(), err.as_str()), (150, ""));
    let (out, err) = ok(
        run(url, &["projections", "state", "by-k", "--json", "--limit", "120"]),
        "states --limit",
    );
    let first = keys(&out);
    assert_eq!(first, all[..120]);
    assert_eq!(
        err,
        format!(
            "stopped at --limit 120; there are more states: continue with --after-key {}\n",
            all[119]
        )
    );
    let (out, _) = ok(
        run(
            url,
            &["projections", "state", "by-k", "--json", "--after-key", &all[119]],
        ),
        "states --after-key",
    );
    assert_eq!(keys(&out), all[120..]);

    // subscriptions parked: 150 events parked by a worker, every one listed.
    let client = factstore_client::Client::new(url).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // The group hands out what it has read so far: poll until 150 are leased.
        let mut positions = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while positions.len() < 150 {
            assert!(Instant::now() < deadline, "only {} leased", positions.len());
            let request = factstore_client::PollRequest::new("w")
                .max(150 - positions.len() as u32)
                .wait_ms(1000);
            let polled = client.poll("audit", &request).await.unwrap();
            positions.extend(polled.iter().map(|d| d.event.position));
        }
        client.nack("audit", &positions, true).await.unwrap();
    });
    let parked_positions = |out: &str| -> Vec<u64> {
        json_lines(out)
            .iter()
            .map(|e| e["position"].as_u64().unwrap())
            .collect()
    };
    let (out, err) = ok(
        run(url, &["subscriptions", "parked", "audit", "--json"]),
        "parked",
    );
    assert_eq!(parked_positions(&out), (1..=150).collect::<Vec<_>>());
    assert_eq!(err, "");
    let (out, err) = ok(
        run(
            url,
            &["subscriptions", "parked", "audit", "--json", "--limit", "120"],
        ),
        "parked --limit",
    );
    assert_eq!(parked_positions(&out), (1..=120).collect::<Vec<_>>());
    assert_eq!(
        err,
        "stopped at --limit 120; more events are parked: continue with --after-position 120\n"
    );
    let (out, _) = ok(
        run(
            url,
            &[
                "subscriptions",
                "parked",
                "audit",
                "--json",
                "--after-position",
                "120",
            ],
        ),
        "parked --after-position",
    );
    assert_eq!(parked_positions(&out), (121..=150).collect::<Vec<_>>());
}
