//! The client commands of the `factstore` binary against a real `factstore serve` on a free
//! port and a temporary folder: what they print, how they fail, `tail` following live events,
//! and export → import → export keeping every event as it was.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;
use common::{BIN, ServeProcess, free_port};

/// A `factstore serve`, killed when dropped.
struct Server {
    process: ServeProcess,
    /// Sent with every command, when the server needs one.
    token: Option<&'static str>,
}

impl std::ops::Deref for Server {
    type Target = ServeProcess;
    fn deref(&self) -> &ServeProcess {
        &self.process
    }
}

impl Server {
    fn start(data_dir: &Path) -> Server {
        Server::start_with(data_dir, &[], None)
    }

    /// A server started with `extra` arguments, whose commands send `token`.
    fn start_with(data_dir: &Path, extra: &[&str], token: Option<&'static str>) -> Server {
        let server = Server {
            process: ServeProcess::start(data_dir, extra),
            token,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !server.run(&["head"]).status.success() {
            assert!(Instant::now() < deadline, "the server did not become ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .env("FACTSTORE_URL", &self.url)
            .env_remove("FACTSTORE_TOKEN");
        if let Some(token) = self.token {
            command.env("FACTSTORE_TOKEN", token);
        }
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run factstore")
    }

    fn run_with_stdin(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    }

    /// Runs a command that must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn append_read_get_head_and_query() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    assert_eq!(server.ok(&["head"]), "position 0 (the store is empty)\n");
    assert_eq!(
        json_lines(&server.ok(&["head", "--json"])),
        [json!({"position": 0, "recorded_at": null})]
    );

    let id = "0192f3c4-5e6a-7b8c-9d0e-1f2a3b4c5d6e";
    let out = server.ok(&[
        "append",
        "account:1",
        "--aggregate-type",
        "Account",
        "--type",
        "AccountOpened",
        "--data",
        r#"{"owner": "Ada"}"#,
        "--expected-version",
        "0",
        "--event-id",
        id,
        "--metadata",
        r#"{"correlation_id": "corr-1"}"#,
        "--created-by",
        "user:1",
        "--created-at",
        "2024-01-15T11:00:00+01:00",
        "--event-version",
        "2",
    ]);
    assert_eq!(out, "appended 1 event to account:1: version 1, position 1\n");

    let lines = "{\"aggregate_type\":\"Account\",\"event_type\":\"MoneyDeposited\",\"event_data\":{\"amount\":5}}\n\
                 {\"aggregate_type\":\"Account\",\"event_type\":\"MoneyDeposited\",\"event_data\":{\"amount\":7}}\n";
    let output = server.run_with_stdin(
        &[
            "append",
            "account:1",
            "--stdin",
            "--expected-version",
            "1",
            "--json",
        ],
        lines,
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let outcome = &json_lines(&String::from_utf8(output.stdout).unwrap())[0];
    assert_eq!(
        (outcome["version"].as_u64(), outcome["position"].as_u64()),
        (Some(3), Some(3))
    );
    assert_eq!(outcome["replayed"], false);
    assert_eq!(outcome["events"].as_array().unwrap().len(), 2);
    server.ok(&[
        "append",
        "order:1",
        "--aggregate-type",
        "Order",
        "--type",
        "OrderPlaced",
        "--data",
        "{}",
    ]);

    // read: a header and a line per event for people, with the event's schema version (v2
    // here); the events as the server gives them for scripts.
    let text = server.ok(&["read", "account:1"]);
    let text: Vec<&str> = text.lines().collect();
    assert_eq!(text[0], "account:1 (Account), version 3");
    assert_eq!(text.len(), 4);
    assert!(
        text[1].contains("account:1@1  AccountOpened v2  {\"owner\":\"Ada\"}"),
        "{}",
        text[1]
    );
    assert!(text[1].contains("2024-01-15T10:00:00.000000Z"), "{}", text[1]);
    let events = json_lines(&server.ok(&["read", "account:1", "--json"]));
    assert_eq!(events.len(), 3);
    assert_eq!(events[0]["event_id"], id);
    assert_eq!(events[0]["event_version"], 2);
    assert_eq!(events[0]["created_by"], "user:1");
    assert_eq!(events[0]["metadata"], json!({"correlation_id": "corr-1"}));
    assert_eq!(events[2]["event_data"], json!({"amount": 7}));
    let newest = json_lines(&server.ok(&["read", "account:1", "--json", "--backward", "--limit", "1"]));
    assert_eq!(newest.len(), 1);
    assert_eq!(newest[0]["version"], 3);
    let middle = json_lines(&server.ok(&[
        "read",
        "account:1",
        "--json",
        "--from-version",
        "2",
        "--to-version",
        "2",
    ]));
    assert_eq!(middle.len(), 1);
    assert_eq!(middle[0]["version"], 2);

    // get: every field; --json: the same event as read gave.
    let details = server.ok(&["get", id]);
    for expected in [
        "event_id        0192f3c4",
        "event_version   2",
        "created_by      user:1",
        "\"owner\": \"Ada\"",
    ] {
        assert!(details.contains(expected), "{expected:?} missing from\n{details}");
    }
    assert_eq!(json_lines(&server.ok(&["get", id, "--json"]))[0], events[0]);

    assert!(
        server
            .ok(&["head"])
            .starts_with("position 4 (last event recorded ")
    );

    // query: filters, position bounds, limit.
    let positions = |text: &str| {
        json_lines(text)
            .iter()
            .map(|e| e["position"].as_u64().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(positions(&server.ok(&["query", "--json"])), [1, 2, 3, 4]);
    assert_eq!(
        positions(&server.ok(&["query", "--json", "--event-type", "MoneyDeposited,OrderPlaced"])),
        [2, 3, 4]
    );
    assert_eq!(
        positions(&server.ok(&["query", "--json", "--aggregate-type", "Order"])),
        [4]
    );
    assert_eq!(
        positions(&server.ok(&["query", "--json", "--correlation-id", "corr-1"])),
        [1]
    );
    assert_eq!(
        positions(&server.ok(&["query", "--json", "--after-position", "1", "--limit", "2"])),
        [2, 3]
    );
    assert_eq!(
        positions(&server.ok(&["query", "--json", "--to-position", "2"])),
        [1, 2]
    );
    assert_eq!(
        positions(&server.ok(&["query", "--json", "--to", "2024-01-15"])),
        [1]
    );
    let text = server.ok(&["query", "--aggregate-id", "order:1"]);
    assert_eq!(text.lines().count(), 1);
    assert!(text.contains("order:1@1  OrderPlaced v1  {}"), "{text}");
}

#[test]
fn errors_are_one_line_and_the_exit_code_says_what_failed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let append = |expected: &str, aggregate_type: &str| {
        server.run(&[
            "append",
            "account:1",
            "--aggregate-type",
            aggregate_type,
            "--type",
            "Opened",
            "--data",
            "{}",
            "--expected-version",
            expected,
        ])
    };
    assert!(append("0", "Account").status.success());

    let conflict = append("0", "Account");
    assert_eq!(conflict.status.code(), Some(3));
    assert_eq!(
        stderr(&conflict),
        "error: wrong expected version for account:1: expected 0, current 1\n"
    );
    let conflict = append("exists", "Other");
    assert_eq!(conflict.status.code(), Some(3));
    assert!(stderr(&conflict).contains("type"), "{}", stderr(&conflict));

    let missing = server.run(&["read", "account:404"]);
    assert_eq!(missing.status.code(), Some(4));
    assert_eq!(stderr(&missing), "error: aggregate account:404 not found\n");
    let missing = server.run(&["get", "0192f3c4-5e6a-7b8c-9d0e-1f2a3b4c5d6e"]);
    assert_eq!(missing.status.code(), Some(4));

    let bad = server.run(&["read", "account:1", "--from-version", "0"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        stderr(&bad).starts_with("error: from_version must be at least 1"),
        "{}",
        stderr(&bad)
    );
    let bad = server.run(&[
        "append",
        "account:1",
        "--aggregate-type",
        "A",
        "--type",
        "T",
        "--data",
        "{nope",
    ]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        stderr(&bad).starts_with("error: --data is not valid JSON"),
        "{}",
        stderr(&bad)
    );
    let usage = server.run(&["append", "account:1", "--type", "T"]);
    assert_eq!(usage.status.code(), Some(2));

    let port = free_port();
    let unreachable = Command::new(BIN)
        .args(["head", "--url", &format!("http://127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert_eq!(unreachable.status.code(), Some(5));
    let message = stderr(&unreachable);
    assert!(
        message.starts_with("error: cannot connect to http://127.0.0.1:"),
        "{message}"
    );
    assert_eq!(message.lines().count(), 1, "{message}");
}

#[test]
fn tail_prints_live_events_and_ends_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.ok(&[
        "append",
        "clock:0",
        "--aggregate-type",
        "Clock",
        "--type",
        "Ping",
        "--data",
        "{\"n\":0}",
    ]);

    // From the head: the event already there is not shown; new ones matching the filter are.
    let mut tail = Reaped(
        server
            .command(&["tail", "--json", "--event-type", "Ping", "--count", "1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    let status = loop {
        if let Some(status) = tail.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "tail printed nothing");
        n += 1;
        let data = format!("{{\"n\":{n}}}");
        server.ok(&[
            "append",
            "clock:1",
            "--aggregate-type",
            "Clock",
            "--type",
            "Other",
            "--data",
            &data,
        ]);
        server.ok(&[
            "append",
            "clock:1",
            "--aggregate-type",
            "Clock",
            "--type",
            "Ping",
            "--data",
            &data,
        ]);
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success());
    let printed = json_lines(&std::io::read_to_string(tail.0.stdout.take().unwrap()).unwrap());
    assert_eq!(printed.len(), 1);
    assert_eq!(printed[0]["event_type"], "Ping");
    assert_eq!(printed[0]["aggregate_id"], "clock:1");

    // Ctrl-C ends a tail cleanly, after it printed the history it was asked for.
    let mut tail = Reaped(
        server
            .command(&["tail", "--after-position", "0", "--aggregate-id", "clock:0"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = tail.0.stdout.take().unwrap();
    let (line_tx, line_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut first = String::new();
        let _ = BufReader::new(stdout).read_line(&mut first);
        let _ = line_tx.send(first);
    });
    let first = line_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("tail printed its history within 20 s");
    assert!(first.contains("clock:0@1  Ping v1  {\"n\":0}"), "{first}");
    let interrupted = Command::new("kill")
        .args(["-INT", &tail.0.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    assert!(tail.0.wait().unwrap().success());
}

/// A child process killed when dropped: a failed assertion must not leave a `tail` running,
/// holding the test run open on its pipes.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Builds a store with what an export must keep: several aggregates interleaved, metadata,
/// created_by, an explicit created_at, a schema version, keys in the client's order, a
/// number beyond f64, escapes and non-ASCII text.
fn fill(server: &Server) {
    let lines = [
        (
            "account:1",
            r#"{"event_id":"0192f3c4-5e6a-7b8c-9d0e-000000000001","aggregate_type":"Account","event_type":"Opened","event_data":{"z":1,"a":12345678901234567890123,"f":1.50},"created_by":"user:\"q\"","metadata":{"correlation_id":"c-1","ip":"10.0.0.7"},"created_at":"2020-02-29T23:59:59.999999Z","event_version":3}"#,
        ),
        (
            "order:1",
            r#"{"aggregate_type":"Order","event_type":"Placed","event_data":{"text":"naïve\nline\t\u0001 ✓"}}"#,
        ),
        (
            "account:1",
            r#"{"aggregate_type":"Account","event_type":"Deposited","event_data":{"amount":5}}"#,
        ),
        (
            "account:2",
            r#"{"aggregate_type":"Account","event_type":"Opened","event_data":{}}"#,
        ),
        (
            "account:1",
            r#"{"aggregate_type":"Account","event_type":"Deposited","event_data":{"amount":6}}"#,
        ),
        (
            "order:1",
            r#"{"aggregate_type":"Order","event_type":"Shipped","event_data":{},"metadata":{"causation_id":"c-1"}}"#,
        ),
    ];
    for (aggregate, line) in lines {
        let output = server.run_with_stdin(&["append", aggregate, "--stdin"], line);
        assert!(output.status.success(), "{}", stderr(&output));
    }
    // A batch of several events, and more of the same aggregates.
    let batch: String = (0..5)
        .map(|i| format!("{{\"aggregate_type\":\"Account\",\"event_type\":\"Deposited\",\"event_data\":{{\"amount\":{i}}}}}\n"))
        .collect();
    let output = server.run_with_stdin(&["append", "account:2", "--stdin"], &batch);
    assert!(output.status.success(), "{}", stderr(&output));
    server.ok(&[
        "append",
        "order:2",
        "--aggregate-type",
        "Order",
        "--type",
        "Placed",
        "--data",
        "{}",
    ]);
}

/// An export's lines without `recorded_at` (which the importing store sets).
fn without_recorded_at(export: &str) -> Vec<String> {
    export
        .lines()
        .map(|line| {
            let start = line.find(",\"recorded_at\":\"").unwrap();
            let end = start + line[start + 1..].find(",\"").unwrap() + 1;
            format!("{}{}", &line[..start], &line[end..])
        })
        .collect()
}

#[test]
fn export_then_import_into_an_empty_store_keeps_every_event() {
    let dir = tempfile::tempdir().unwrap();
    let source = Server::start(&dir.path().join("source"));
    fill(&source);
    let file = dir.path().join("export.jsonl");
    let output = source.run(&["export", "--output", file.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        stderr(&output),
        format!("exported 12 events (positions 1-12) to {}\n", file.display())
    );
    let exported = std::fs::read_to_string(&file).unwrap();
    assert_eq!(exported.lines().count(), 12);
    // To stdout too, the same bytes.
    assert_eq!(source.ok(&["export"]), exported);

    let target = Server::start(&dir.path().join("target"));
    let output = target.run(&["import", file.to_str().unwrap(), "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        json_lines(&String::from_utf8(output.stdout).unwrap())[0],
        json!({"events": 12, "written": 12, "already_present": 0, "moved": 0})
    );
    let again = target.ok(&["export"]);
    // Every field but recorded_at, byte for byte: ids, positions, versions, data as written.
    assert_eq!(without_recorded_at(&again), without_recorded_at(&exported));
    let (before, after) = (json_lines(&exported), json_lines(&again));
    for (before, after) in before.iter().zip(&after) {
        for field in [
            "event_id",
            "position",
            "aggregate_id",
            "aggregate_type",
            "version",
            "event_type",
            "event_version",
            "event_data",
            "created_at",
            "created_by",
            "metadata",
        ] {
            assert_eq!(before[field], after[field], "{field} of {before}");
        }
    }

    // Importing again writes nothing.
    let output = target.run(&["import", file.to_str().unwrap(), "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        json_lines(&String::from_utf8(output.stdout).unwrap())[0],
        json!({"events": 12, "written": 0, "already_present": 12, "moved": 0})
    );
    assert_eq!(target.ok(&["export"]), again);
}

#[test]
fn an_interrupted_import_run_again_completes_without_writing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let source = Server::start(&dir.path().join("source"));
    fill(&source);
    let exported = source.ok(&["export"]);
    let lines: Vec<&str> = exported.lines().collect();

    // The first run stopped after 8 of 12 lines, committed in batches of 3: the second run
    // (batches of 5, from stdin) has a commit that is partly stored already.
    let target = Server::start(&dir.path().join("target"));
    let prefix: String = lines[..8].iter().map(|l| format!("{l}\n")).collect();
    let output = target.run_with_stdin(&["import", "--batch-events", "3", "--json"], &prefix);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        json_lines(&String::from_utf8(output.stdout).unwrap())[0]["written"],
        8
    );

    let output = target.run_with_stdin(&["import", "--batch-events", "5", "--json"], &exported);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        json_lines(&String::from_utf8(output.stdout).unwrap())[0],
        json!({"events": 12, "written": 4, "already_present": 8, "moved": 0})
    );
    assert_eq!(
        without_recorded_at(&target.ok(&["export"])),
        without_recorded_at(&exported)
    );

    // An event id already stored with other content is a conflict, named by its line.
    let tampered = lines[1].replace("naïve", "naive");
    let output = target.run_with_stdin(&["import", "--batch-events", "1"], &format!("{tampered}\n"));
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).starts_with("error: line 1: event ")
            && stderr(&output).contains("another event_data"),
        "{}",
        stderr(&output)
    );
}

/// Importing after other events would put the file's events at other positions: refused
/// before anything is written, unless --renumber says so.
#[test]
fn an_import_into_a_store_that_is_not_empty_needs_renumber() {
    let dir = tempfile::tempdir().unwrap();
    let source = Server::start(&dir.path().join("source"));
    fill(&source);
    let exported = source.ok(&["export"]);
    let target = Server::start(&dir.path().join("target"));
    target.ok(&[
        "append",
        "other:1",
        "--aggregate-type",
        "Other",
        "--type",
        "Happened",
        "--data",
        "{}",
    ]);
    let output = target.run_with_stdin(&["import"], &exported);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("the store is not empty (its head is at 1)")
            && stderr(&output).contains("--renumber"),
        "{}",
        stderr(&output)
    );
    assert_eq!(target.ok(&["export"]).lines().count(), 1, "nothing was written");

    let output = target.run_with_stdin(&["import", "--renumber", "--json"], &exported);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        json_lines(&String::from_utf8(output.stdout).unwrap())[0],
        json!({"events": 12, "written": 12, "already_present": 0, "moved": 12})
    );
    // The same import again is recognised by its first event, without the flag.
    let output = target.run_with_stdin(&["import", "--json"], &exported);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        json_lines(&String::from_utf8(output.stdout).unwrap())[0]["already_present"],
        12
    );
}

/// A 401 names the option that gives the token: missing, or refused.
#[test]
fn a_refused_request_names_the_token_option() {
    const ADMIN: &str = "admin-token-0123456789abcdef";
    let dir = tempfile::tempdir().unwrap();
    let auth = dir.path().join("auth.toml");
    std::fs::write(
        &auth,
        format!("[[token]]\ntoken = \"{ADMIN}\"\nrole = \"admin\"\n"),
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&auth, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let server = Server {
        process: ServeProcess::start(&dir.path().join("data"), &["--auth", auth.to_str().unwrap()]),
        token: None,
    };
    let missing = server.run(&["head"]);
    assert_eq!(missing.status.code(), Some(6));
    assert_eq!(
        stderr(&missing),
        "error: the server requires a token: pass --token or set FACTSTORE_TOKEN (the server \
         said: this server needs a token: send Authorization: Bearer <token>)\n"
    );
    let refused = server.run(&["query", "--token", "not-the-token-0123456789"]);
    assert_eq!(refused.status.code(), Some(6));
    assert_eq!(
        stderr(&refused),
        "error: the server refused the token: check --token or FACTSTORE_TOKEN (the server \
         said: the token is not valid)\n"
    );
    let admitted = server.run(&["head", "--token", ADMIN]);
    assert!(admitted.status.success(), "{}", stderr(&admitted));
}

/// A token limited to aggregate prefixes exports the events it may see, in position order (the
/// export used to stop at the first position it could not see); imported into an empty store,
/// they keep their ids, order and versions and take consecutive positions.
#[test]
fn an_export_by_a_token_limited_to_prefixes_holds_its_aggregates_and_imports() {
    const ADMIN: &str = "admin-token-0123456789abcdef";
    const ACCOUNTS: &str = "accounts-token-0123456789abc";
    let dir = tempfile::tempdir().unwrap();
    let auth = dir.path().join("auth.toml");
    std::fs::write(
        &auth,
        format!(
            "[[token]]\ntoken = \"{ADMIN}\"\nrole = \"admin\"\n\
             [[token]]\ntoken = \"{ACCOUNTS}\"\nrole = \"reader\"\naggregate_id_prefixes = [\"account:\"]\n"
        ),
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&auth, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let auth = auth.to_str().unwrap();
    let source = Server::start_with(&dir.path().join("source"), &["--auth", auth], Some(ADMIN));
    fill(&source);
    let everything = json_lines(&source.ok(&["export"]));
    assert_eq!(everything.len(), 12);
    let visible: Vec<&Value> = everything
        .iter()
        .filter(|e| e["aggregate_id"].as_str().unwrap().starts_with("account:"))
        .collect();
    assert_eq!(visible.len(), 9);

    let file = dir.path().join("accounts.jsonl");
    let output = source
        .command(&["export", "--output", file.to_str().unwrap()])
        .env("FACTSTORE_TOKEN", ACCOUNTS)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        stderr(&output),
        format!(
            "exported 9 events (of positions 1-12; the other 3 are events outside this token's \
             aggregate prefixes) to {}\n",
            file.display()
        )
    );
    let exported = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        json_lines(&exported).iter().collect::<Vec<_>>(),
        visible,
        "its events, in position order"
    );

    let target = Server::start(&dir.path().join("target"));
    let output = target.run(&["import", file.to_str().unwrap(), "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("the file leaves positions out"),
        "{}",
        stderr(&output)
    );
    assert_eq!(
        json_lines(&String::from_utf8(output.stdout).unwrap())[0],
        json!({"events": 9, "written": 9, "already_present": 0, "moved": 8})
    );
    let imported = json_lines(&target.ok(&["export"]));
    assert_eq!(imported.len(), 9);
    for (position, (before, after)) in (1..).zip(visible.iter().zip(&imported)) {
        assert_eq!(after["position"], position, "positions close up");
        for field in [
            "event_id",
            "aggregate_id",
            "version",
            "event_type",
            "event_data",
            "created_at",
        ] {
            assert_eq!(before[field], after[field], "{field} of {before}");
        }
    }
    // Running the import again writes nothing.
    let output = target.run(&["import", file.to_str().unwrap(), "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        json_lines(&String::from_utf8(output.stdout).unwrap())[0]["already_present"],
        9
    );
}
