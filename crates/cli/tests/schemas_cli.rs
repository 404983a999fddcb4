//! `factstore schemas`, `factstore upcasters` and `export --upcast` against a real server: the
//! registry survives a restart, a refused append exits as a failure naming the field, and an
//! export keeps the stored form unless asked to upcast.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;
use common::pg::PgSchema;
use common::{BIN, ServeProcess};

fn start(data_dir: &Path, args: &[&str]) -> ServeProcess {
    let server = ServeProcess::start(data_dir, args);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !run(&server, &["head"]).status.success() {
        assert!(Instant::now() < deadline, "the server did not become ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

fn run(server: &ServeProcess, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("FACTSTORE_URL", &server.url)
        .env_remove("FACTSTORE_TOKEN")
        .output()
        .unwrap()
}

fn ok(server: &ServeProcess, args: &[&str]) -> String {
    let output = run(server, args);
    assert!(
        output.status.success(),
        "factstore {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn lines(text: &str) -> Vec<Value> {
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn the_registry_from_the_shell_survives_a_restart_and_export_keeps_the_stored_form() {
    registry_survives_a_restart(&[]);
}

#[test]
fn on_postgres_the_registry_from_the_shell_survives_a_restart_and_export_keeps_the_stored_form() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let Some(schema) = runtime.block_on(PgSchema::create("the schema registry test on PostgreSQL")) else {
        return;
    };
    let args = schema.args();
    registry_survives_a_restart(&args.iter().map(String::as_str).collect::<Vec<_>>());
    runtime.block_on(schema.drop_schema());
}

fn registry_survives_a_restart(args: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let files = dir.path();
    let v1 = files.join("v1.json");
    std::fs::write(
        &v1,
        json!({"type": "object", "properties": {"amt": {"type": "number"}}, "required": ["amt"]}).to_string(),
    )
    .unwrap();
    let upcaster = files.join("up.json");
    std::fs::write(
        &upcaster,
        json!({"to_version": 2, "ops": [{"op": "rename", "from": "/amt", "path": "/amount"}]}).to_string(),
    )
    .unwrap();

    let server = start(&data, args);
    let v1_path = v1.to_str().unwrap();
    // Version 2 before version 1: refused, saying which version to register first.
    let early = run(
        &server,
        &["schemas", "put", "MoneyDeposited", "2", "--file", v1_path],
    );
    assert!(!early.status.success());
    let message = String::from_utf8_lossy(&early.stderr);
    assert!(message.contains("needs version 1 registered first"), "{message}");
    assert!(
        ok(
            &server,
            &["schemas", "put", "MoneyDeposited", "1", "--file", v1_path]
        )
        .contains("registered version 1")
    );
    assert!(
        ok(
            &server,
            &["schemas", "put", "MoneyDeposited", "1", "--file", v1_path]
        )
        .contains("registered already")
    );
    ok(
        &server,
        &[
            "append",
            "account:1",
            "--aggregate-type",
            "Account",
            "--type",
            "MoneyDeposited",
            "--data",
            r#"{"amt": 5}"#,
        ],
    );
    // A violation: refused, with the field named, and nothing written.
    let refused = run(
        &server,
        &[
            "append",
            "account:1",
            "--aggregate-type",
            "Account",
            "--type",
            "MoneyDeposited",
            "--data",
            r#"{"amt": "x"}"#,
        ],
    );
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("/amt"), "{message}");
    ok(
        &server,
        &[
            "upcasters",
            "put",
            "MoneyDeposited",
            "1",
            "--file",
            upcaster.to_str().unwrap(),
        ],
    );
    server.kill();

    let server = start(&data, args);
    let listed = ok(&server, &["schemas", "list"]);
    assert!(
        listed.contains("MoneyDeposited") && listed.contains("versions 1"),
        "{listed}"
    );
    let schemas: Value =
        serde_json::from_str(&ok(&server, &["schemas", "get", "MoneyDeposited", "--json"])).unwrap();
    assert_eq!(schemas["versions"][0]["schema"]["required"], json!(["amt"]));
    let upcasters = lines(&ok(&server, &["upcasters", "list", "--json"]));
    assert_eq!(upcasters.len(), 1);
    assert_eq!(upcasters[0]["to_version"], 2);

    let stored = lines(&ok(&server, &["export"]));
    assert_eq!(stored.len(), 1);
    assert_eq!(
        (
            stored[0]["event_version"].clone(),
            stored[0]["event_data"].clone()
        ),
        (json!(1), json!({"amt": 5}))
    );
    let upcast = lines(&ok(&server, &["export", "--upcast"]));
    assert_eq!(
        (
            upcast[0]["event_version"].clone(),
            upcast[0]["event_data"].clone()
        ),
        (json!(2), json!({"amount": 5}))
    );
    let missing = run(&server, &["schemas", "get", "Nope"]);
    assert_eq!(missing.status.code(), Some(4), "not found exits 4");
}
