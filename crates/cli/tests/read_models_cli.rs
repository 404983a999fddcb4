//! `factstore projections` and `factstore subscriptions` against a real `factstore serve`:
//! the options checked before any request, then each command family end to end.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Value, json};

mod common;
use common::{BIN, ServeProcess};

fn factstore(url: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("FACTSTORE_URL", url)
        .env_remove("FACTSTORE_TOKEN")
        .output()
        .expect("run factstore")
}

fn ok(url: &str, args: &[&str]) -> String {
    let output = factstore(url, args);
    assert!(
        output.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn failure(url: &str, args: &[&str]) -> (i32, String) {
    let output = factstore(url, args);
    assert!(!output.status.success(), "{args:?} succeeded");
    (
        output.status.code().unwrap(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn write(dir: &Path, name: &str, value: &Value) -> String {
    let path = dir.join(name);
    std::fs::write(&path, value.to_string()).unwrap();
    path.to_str().unwrap().to_owned()
}

fn balances() -> Value {
    json!({
        "filter": {"aggregate_type": "Account"},
        "key": "aggregate_id",
        "initial": {"balance": 0},
        "on": {"MoneyDeposited": [{"op": "add", "path": "/balance", "from": "/event_data/amount"}]}
    })
}

#[test]
fn bad_definitions_and_options_are_refused_before_any_request() {
    // Nothing listens there: an error naming the input proves no request was needed.
    let url = format!("http://127.0.0.1:{}", common::free_port());
    let dir = tempfile::tempdir().unwrap();
    let bad_key = write(dir.path(), "bad.json", &json!({"key": "sku", "on": {}}));
    let (code, message) = failure(&url, &["projections", "put", "p", "--file", &bad_key]);
    assert_eq!(code, 1);
    assert!(
        message.contains("JSON Pointer") && message.contains("bad.json"),
        "{message}"
    );
    let (code, message) = failure(&url, &["projections", "put", "p", "--file", "/no/such/file.json"]);
    assert_eq!(code, 1);
    assert!(message.contains("/no/such/file.json"), "{message}");
    let (_, message) = failure(&url, &["projections", "state", "p", "--min-position", "3"]);
    assert!(message.contains("need a KEY"), "{message}");
    let (_, message) = failure(
        &url,
        &[
            "subscriptions",
            "create",
            "g",
            "--filter-json",
            r#"{"event_type": "X"}"#,
        ],
    );
    assert!(message.contains("not a filter object"), "{message}");
    let (_, message) = failure(
        &url,
        &[
            "subscriptions",
            "create",
            "g",
            "--filter-json",
            "{}",
            "--aggregate-type",
            "A",
        ],
    );
    assert!(message.contains("not both"), "{message}");
    let (code, message) = failure(&url, &["subscriptions", "create", "g", "--start", "soon"]);
    assert_eq!(code, 2, "a bad command line is clap's exit code");
    assert!(message.contains("soon"), "{message}");
    // A valid definition does go to the server, which is not there: exit 5.
    let good = write(dir.path(), "good.json", &balances());
    let (code, _) = failure(&url, &["projections", "put", "p", "--file", &good]);
    assert_eq!(code, 5);
}

#[test]
fn projections_put_list_show_state_rebuild_and_delete() {
    let data = tempfile::tempdir().unwrap();
    let server = ServeProcess::start(data.path(), &[]);
    let url = server.url.as_str();
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "balances.json", &balances());
    assert_eq!(
        ok(url, &["projections", "put", "balances", "--file", &file]).trim(),
        "created projection balances"
    );
    assert_eq!(
        ok(url, &["projections", "put", "balances", "--file", &file]).trim(),
        "replaced projection balances"
    );
    for amount in [500, 300] {
        ok(
            url,
            &[
                "append",
                "account:1",
                "--aggregate-type",
                "Account",
                "--type",
                "MoneyDeposited",
                "--data",
                &format!(r#"{{"amount": {amount}}}"#),
            ],
        );
    }
    let state: Value = serde_json::from_str(&ok(
        url,
        &[
            "projections",
            "state",
            "balances",
            "account:1",
            "--min-position",
            "2",
            "--json",
        ],
    ))
    .unwrap();
    assert_eq!(state["state"]["balance"], 800);
    let text = ok(
        url,
        &[
            "projections",
            "state",
            "balances",
            "account:1",
            "--source",
            "event-store",
        ],
    );
    assert!(text.contains("\"balance\": 800"), "{text}");
    assert_eq!(
        ok(url, &["projections", "state", "balances"]).trim(),
        r#"account:1  {"balance":800}"#
    );

    let list = ok(url, &["projections", "list"]);
    assert!(list.lines().nth(1).unwrap().starts_with("balances"), "{list}");
    let show = ok(url, &["projections", "show", "balances"]);
    assert!(
        show.contains("status         running") && show.contains("keys           1"),
        "{show}"
    );

    let rebuilt = ok(url, &["projections", "rebuild", "balances", "--wait"]);
    assert!(
        rebuilt.contains("status         running") && rebuilt.contains("lag            0"),
        "{rebuilt}"
    );

    let (code, message) = failure(url, &["projections", "state", "balances", "account:404"]);
    assert_eq!(code, 4, "{message}");
    assert!(message.contains("account:404"), "{message}");
    let (code, _) = failure(
        url,
        &[
            "projections",
            "state",
            "balances",
            "account:1",
            "--min-position",
            "99",
            "--wait-ms",
            "10",
        ],
    );
    assert_eq!(code, 1);
    assert_eq!(
        ok(url, &["projections", "delete", "balances"]).trim(),
        "deleted projection balances"
    );
    let (code, message) = failure(url, &["projections", "show", "balances"]);
    assert_eq!(code, 4);
    assert!(message.contains("projection balances not found"), "{message}");
}

#[test]
fn subscriptions_create_list_show_parked_replay_and_delete() {
    let data = tempfile::tempdir().unwrap();
    let server = ServeProcess::start(data.path(), &[]);
    let url = server.url.as_str();
    ok(
        url,
        &[
            "append",
            "order:1",
            "--aggregate-type",
            "Order",
            "--type",
            "OrderCreated",
            "--data",
            "{}",
        ],
    );
    assert_eq!(
        ok(
            url,
            &[
                "subscriptions",
                "create",
                "shipping",
                "--filter-json",
                r#"{"aggregate_type": "Order"}"#,
                "--start",
                "beginning",
                "--ordering",
                "per-aggregate",
                "--max-deliveries",
                "1",
            ],
        )
        .trim(),
        "created subscription group shipping"
    );
    let list = ok(url, &["subscriptions", "list"]);
    assert!(list.lines().nth(1).unwrap().starts_with("shipping"), "{list}");

    // A consumer parks the event (through the client library, as a worker would).
    let client = factstore_client::Client::new(url).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let polled = client
            .poll("shipping", &factstore_client::PollRequest::new("w").wait_ms(1000))
            .await
            .unwrap();
        assert_eq!(polled.len(), 1);
        client
            .nack("shipping", &[polled[0].event.position], true)
            .await
            .unwrap();
    });
    let show = ok(url, &["subscriptions", "show", "shipping"]);
    assert!(
        show.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["parked", "1"]),
        "{show}"
    );
    let parked = ok(url, &["subscriptions", "parked", "shipping"]);
    assert!(parked.contains("order:1@1  OrderCreated"), "{parked}");
    ok(url, &["subscriptions", "replay", "shipping"]);
    runtime.block_on(async {
        let polled = client
            .poll("shipping", &factstore_client::PollRequest::new("w").wait_ms(1000))
            .await
            .unwrap();
        assert_eq!(polled.len(), 1, "the parked event is delivered again");
    });
    ok(url, &["subscriptions", "delete", "shipping"]);
    let (code, message) = failure(url, &["subscriptions", "show", "shipping"]);
    assert_eq!(code, 4);
    assert!(
        message.contains("subscription group shipping not found"),
        "{message}"
    );
}

/// Every delivery `poll` gives `group` within 10 s until `count` are leased (the group hands
/// out what it has read so far), as JSON.
fn poll_json(url: &str, group: &str, count: usize) -> Vec<Value> {
    let mut deliveries = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while deliveries.len() < count {
        assert!(
            std::time::Instant::now() < deadline,
            "only {deliveries:?} delivered"
        );
        let out = ok(
            url,
            &["subscriptions", "poll", group, "--json", "--wait-ms", "1000"],
        );
        deliveries.extend(out.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()));
    }
    assert_eq!(deliveries.len(), count, "{deliveries:?}");
    deliveries
}

fn positions(deliveries: &[Value]) -> Vec<u64> {
    deliveries
        .iter()
        .map(|d| d["position"].as_u64().unwrap())
        .collect()
}

#[test]
fn subscriptions_poll_ack_and_nack_consume_a_group_from_the_shell() {
    let data = tempfile::tempdir().unwrap();
    let server = ServeProcess::start(data.path(), &[]);
    let url = server.url.as_str();
    let append = |aggregate: &str| {
        ok(
            url,
            &[
                "append",
                aggregate,
                "--aggregate-type",
                "Order",
                "--type",
                "OrderCreated",
                "--data",
                "{}",
            ],
        )
    };
    ok(
        url,
        &["subscriptions", "create", "work", "--aggregate-type", "Order"],
    );
    append("order:1");
    append("order:2");

    // Polled, acked: never delivered again.
    let first = poll_json(url, "work", 2);
    assert_eq!(positions(&first), [1, 2]);
    assert!(first.iter().all(|d| d["attempt"] == 1), "{first:?}");
    assert_eq!(first[0]["aggregate_id"], "order:1");
    assert_eq!(
        ok(url, &["subscriptions", "ack", "work", "1", "2"]).trim(),
        "acked 2 events of work"
    );
    assert_eq!(
        ok(url, &["subscriptions", "poll", "work", "--wait-ms", "300"]).trim(),
        "no events to deliver in work"
    );
    assert_eq!(
        ok(
            url,
            &["subscriptions", "poll", "work", "--json", "--wait-ms", "300"]
        ),
        ""
    );

    // Nacked: delivered again, as a second attempt; the text names it and how to settle it.
    append("order:3");
    assert_eq!(positions(&poll_json(url, "work", 1)), [3]);
    assert_eq!(
        ok(url, &["subscriptions", "nack", "work", "3"]).trim(),
        "nacked 1 event of work: they will be delivered again"
    );
    let output = factstore(url, &["subscriptions", "poll", "work", "--wait-ms", "5000"]);
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.contains("order:3@1  OrderCreated v1  {}  (attempt 2)"),
        "{text}"
    );
    let hint = String::from_utf8(output.stderr).unwrap();
    assert!(
        hint.contains("leased 1 event to consumer factstore-cli")
            && hint.contains("factstore subscriptions ack work POSITION"),
        "{hint}"
    );

    // Nacked with --park: parked, listed, and not delivered again.
    assert_eq!(
        ok(url, &["subscriptions", "nack", "work", "3", "--park"]).trim(),
        "parked 1 event of work"
    );
    let parked = ok(url, &["subscriptions", "parked", "work", "--json"]);
    let parked: Vec<Value> = parked.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(positions(&parked), [3]);
    assert_eq!(
        ok(
            url,
            &["subscriptions", "poll", "work", "--json", "--wait-ms", "300"]
        ),
        ""
    );
    let show = ok(url, &["subscriptions", "show", "work", "--json"]);
    let show: Value = serde_json::from_str(show.trim()).unwrap();
    assert_eq!(
        (show["checkpoint"].as_u64(), show["in_flight"].as_u64()),
        (Some(3), Some(0))
    );

    // Settling needs positions; an unknown group is not found.
    let (code, _) = failure(url, &["subscriptions", "ack", "work"]);
    assert_eq!(code, 2);
    let (code, message) = failure(url, &["subscriptions", "poll", "nowhere"]);
    assert_eq!(code, 4);
    assert!(
        message.contains("subscription group nowhere not found"),
        "{message}"
    );
}

#[test]
fn a_min_position_beyond_the_head_is_named_as_such() {
    let data = tempfile::tempdir().unwrap();
    let server = ServeProcess::start(data.path(), &[]);
    let url = server.url.as_str();
    let definition = write(data.path(), "balances.json", &balances());
    ok(url, &["projections", "put", "balances", "--file", &definition]);
    ok(
        url,
        &[
            "append",
            "account:1",
            "--aggregate-type",
            "Account",
            "--type",
            "MoneyDeposited",
            "--data",
            r#"{"amount": 5}"#,
        ],
    );
    // Within the head: read-your-writes waits and answers.
    let state = ok(
        url,
        &[
            "projections",
            "state",
            "balances",
            "account:1",
            "--min-position",
            "1",
            "--json",
        ],
    );
    assert_eq!(
        serde_json::from_str::<Value>(state.trim()).unwrap()["state"]["balance"],
        5
    );
    // Beyond it: no waiting can help, and the error says the head is below.
    let (code, message) = failure(
        url,
        &[
            "projections",
            "state",
            "balances",
            "account:1",
            "--min-position",
            "1000",
            "--wait-ms",
            "200",
        ],
    );
    assert_eq!(code, 1);
    assert!(
        message.starts_with(
            "error: the store's head is at position 1, below --min-position 1000: no event has that position yet"
        ),
        "{message}"
    );
    assert_eq!(message.lines().count(), 1, "{message}");
}
