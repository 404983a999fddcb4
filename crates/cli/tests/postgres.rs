//! Several `factstore serve --storage postgres://…` processes on one database: an append on
//! one reaches subscribers on the other, and kill -9 of one leaves the other working.
//!
//! Runs in a schema of its own in `FACTSTORE_TEST_PG` (default
//! `postgres://postgres@127.0.0.1:5432/test`); when PostgreSQL is not reachable the test says
//! so and returns, unless `FACTSTORE_REQUIRE_PG=1` (CI), which makes it fail.

use std::process::Command;
use std::time::Duration;

use factstore_client::{AppendRequest, Client, NewEvent, SubscribeOptions, SubscriptionMessage};
use futures::StreamExt;
use serde_json::json;

mod common;
use common::pg::{PgDatabase, PgSchema};
use common::{BIN, ServeProcess};

fn event(i: u64) -> NewEvent {
    NewEvent::new("Account", "Deposited", json!({"amount": i}))
}

/// Waits for the next event of a subscription.
async fn next_event(subscription: &mut factstore_client::Subscription) -> factstore_client::Event {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), subscription.next())
            .await
            .expect("an event within 10 s")
            .expect("the subscription goes on")
            .expect("no subscription error");
        if let SubscriptionMessage::Event(event) = message {
            return *event;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_on_one_database_share_appends_and_survive_each_others_crash() {
    let Some(schema) = PgSchema::create("the two-server test").await else {
        return;
    };
    let args = schema.args();
    let storage: Vec<&str> = args.iter().map(String::as_str).collect();

    let migrate = Command::new(BIN)
        .arg("migrate")
        .args(&storage)
        .output()
        .expect("run factstore migrate");
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );
    let newest = factstore_postgres::migrate::MIGRATIONS
        .last()
        .map_or(0, |m| m.version);
    assert!(
        String::from_utf8_lossy(&migrate.stdout)
            .contains(&format!("schema {} is at migration {newest}", schema.name)),
        "{}",
        String::from_utf8_lossy(&migrate.stdout)
    );

    // A server on PostgreSQL keeps nothing in --data-dir; the folders are given to show it.
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let a = ServeProcess::start(dir_a.path(), &storage);
    let b = ServeProcess::start(dir_b.path(), &storage);
    let client_a = Client::new(a.url.clone()).expect("client a");
    let client_b = Client::new(b.url.clone()).expect("client b");

    let mut on_b = client_b
        .subscribe(SubscribeOptions::new())
        .await
        .expect("subscribe on b");
    for i in 1..=3 {
        let outcome = client_a
            .append("account:1", AppendRequest::new([event(i)]))
            .await
            .expect("append on a");
        assert_eq!(outcome.position, i);
    }
    for i in 1..=3 {
        let event = next_event(&mut on_b).await;
        assert_eq!(event.position, i, "B's subscriber gets A's appends in order");
    }

    // Both append at once: positions stay dense and each server's subscriber sees all of them.
    let mut on_a = client_a
        .subscribe(SubscribeOptions::new())
        .await
        .expect("subscribe on a");
    let writes = (0..20).map(|i| {
        let client = if i % 2 == 0 {
            client_a.clone()
        } else {
            client_b.clone()
        };
        async move {
            client
                .append(&format!("account:{}", i % 4), AppendRequest::new([event(i)]))
                .await
                .expect("append")
        }
    });
    futures::future::join_all(writes).await;
    // A's subscriber started from the beginning; B's has had positions 1 to 3 already.
    for (subscription, first) in [(&mut on_a, 1u64), (&mut on_b, 4)] {
        for position in first..=23 {
            assert_eq!(
                next_event(subscription).await.position,
                position,
                "every subscriber sees dense positions in order"
            );
        }
    }

    // kill -9 of A: B goes on appending and serving.
    a.kill();
    let outcome = client_b
        .append("account:9", AppendRequest::new([event(99)]))
        .await
        .expect("append on b after a died");
    assert_eq!(outcome.position, 24);
    assert_eq!(next_event(&mut on_b).await.position, 24);
    let head = client_b.head().await.expect("head");
    assert_eq!(head.position, 24);

    drop(on_b);
    drop(b);
    for dir in [&dir_a, &dir_b] {
        let left: Vec<_> = std::fs::read_dir(dir.path()).expect("list").collect();
        assert!(
            left.is_empty(),
            "a server on PostgreSQL wrote to its --data-dir: {left:?}"
        );
    }
    schema.drop_schema().await;
}

/// Runs a client command of the binary against `server`; its standard output.
fn run(server: &ServeProcess, args: &[&str]) -> String {
    let output = Command::new(BIN)
        .args(args)
        .env("FACTSTORE_URL", &server.url)
        .env_remove("FACTSTORE_TOKEN")
        .output()
        .expect("run factstore");
    assert!(
        output.status.success(),
        "factstore {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archiving_on_postgres_reads_the_same_and_needs_the_archive_url_to_start() {
    let Some(schema) = PgSchema::create("the PostgreSQL archive test").await else {
        return;
    };
    let args = schema.args();
    let storage: Vec<&str> = args.iter().map(String::as_str).collect();
    let (dir, cold) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let cold_url = format!("file://{}", cold.path().display());
    let serve_args = [&storage[..], &["--archive-url", cold_url.as_str()]].concat();
    let server = ServeProcess::start(dir.path(), &serve_args);
    let client = Client::new(server.url.clone()).expect("client");
    for i in 1..=40 {
        client
            .append(&format!("account:{}", i % 4), AppendRequest::new([event(i)]))
            .await
            .expect("append");
    }
    let exported = run(&server, &["export"]);
    assert_eq!(exported.lines().count(), 40);

    let outcome: serde_json::Value =
        serde_json::from_str(&run(&server, &["archive", "--before", "2999-01-01", "--json"])).expect("JSON");
    assert_eq!(outcome["archived_events"], 40, "{outcome}");
    let stats: serde_json::Value = serde_json::from_str(&run(&server, &["storage", "--json"])).expect("JSON");
    assert_eq!(
        (stats["events"].as_u64(), stats["archived_events"].as_u64()),
        (Some(40), Some(40))
    );
    assert!(stats["cold_bytes"].as_u64() > Some(0), "{stats}");
    assert_eq!(
        run(&server, &["export"]),
        exported,
        "archived events read the same"
    );
    server.kill();

    // Without the archive URL the server refuses to start, and says why.
    let mut refused = Command::new(BIN)
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .args(["--listen", &format!("127.0.0.1:{}", common::free_port())])
        .args(&storage)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start factstore serve");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while refused.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = refused.kill();
            panic!("a server without --archive-url started on an archived store");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = refused.wait_with_output().expect("output");
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--archive-url"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let server = ServeProcess::start(dir.path(), &serve_args);
    assert_eq!(
        run(&server, &["export"]),
        exported,
        "after a restart, from cold storage"
    );
    server.kill();
    schema.drop_schema().await;
}

/// Two servers started at the same moment on a database factstore has never seen: one creates
/// the schema `factstore` and its tables while the other waits on the migrations' lock, and
/// both come up. Neither log carries PostgreSQL's "already exists" notices (or any notice) at
/// the default level, and nothing is left in `public`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_starting_at_once_on_a_fresh_database_both_come_up_quietly() {
    let Some(db) = PgDatabase::create("the fresh-database start test").await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut servers: Vec<(std::process::Child, u16, std::path::PathBuf)> = (0..2)
        .map(|i| {
            let port = common::free_port();
            let log = dir.path().join(format!("serve-{i}.log"));
            let child = Command::new(BIN)
                .arg("serve")
                .arg("--data-dir")
                .arg(dir.path().join(format!("data-{i}")))
                .args(["--listen", &format!("127.0.0.1:{port}"), "--storage", &db.url])
                .env("FACTSTORE_LOG", "info")
                .env_remove("FACTSTORE_PG_SCHEMA")
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(&log).expect("log"))
                .spawn()
                .expect("start factstore serve");
            (child, port, log)
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for (child, port, log) in &mut servers {
        while std::net::TcpStream::connect(("127.0.0.1", *port)).is_err() {
            let exited = child.try_wait().expect("try_wait");
            assert!(
                exited.is_none() && std::time::Instant::now() < deadline,
                "a server did not come up ({exited:?}):\n{}",
                std::fs::read_to_string(&*log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let client = Client::new(format!("http://127.0.0.1:{port}")).expect("client");
        client
            .append("account:1", AppendRequest::new([event(*port as u64)]))
            .await
            .expect("append");
    }
    for (child, _, log) in &mut servers {
        let _ = child.kill();
        let _ = child.wait();
        let text = std::fs::read_to_string(&*log).expect("log");
        assert!(
            !text.contains("already exists") && !text.contains("NOTICE"),
            "a notice in a server's log:\n{text}"
        );
    }
    let client = db.connect().await;
    let in_public: i64 = client
        .query_one("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(in_public, 0, "tables were made in public");
    let events: i64 = client
        .query_one("SELECT count(*) FROM factstore.events", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(events, 2);
}
