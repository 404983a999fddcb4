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
