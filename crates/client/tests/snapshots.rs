//! The client's snapshot methods against a real server (embedded engine, in-process, on a free
//! port): put, replace, latest, list, load, their errors, a put retried after a lost answer, and
//! snapshots surviving a server restart.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use factstore_client::{
    AppendRequest, Client, Error, NewEvent, PutSnapshotRequest, RawJson, RetryPolicy, StatusCode,
};
use serde_json::json;
use support::{Fault, Proxy, Server};

async fn deposits(client: &Client, aggregate_id: &str, n: usize) {
    let events: Vec<NewEvent> = (0..n)
        .map(|i| NewEvent::new("Account", "MoneyDeposited", json!({"amount": i})))
        .collect();
    client
        .append(aggregate_id, AppendRequest::new(events))
        .await
        .unwrap();
}

#[tokio::test]
async fn put_latest_list_and_load() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let client = Client::new(&server.url).unwrap();
    deposits(&client, "account:1", 5).await;

    let put = client
        .put_snapshot(
            "account:1",
            PutSnapshotRequest::new(2, "Account", json!({"balance": 1})).snapshot_version(3),
        )
        .await
        .unwrap();
    assert_eq!(
        (
            put.aggregate_id.as_str(),
            put.version,
            put.snapshot_type.as_str(),
            put.snapshot_version
        ),
        ("account:1", 2, "Account", 3)
    );
    assert!(!put.replaced);
    // Key order of the state is kept as sent.
    let state = RawJson::from_string(r#"{"z":1,"balance":4}"#.into()).unwrap();
    let again = client
        .put_snapshot("account:1", PutSnapshotRequest::new(4, "Account", state))
        .await
        .unwrap();
    assert_eq!(again.snapshot_version, 1, "the server's default");
    let replaced = client
        .put_snapshot(
            "account:1",
            PutSnapshotRequest::new(2, "Account", json!({"balance": 2})),
        )
        .await
        .unwrap();
    assert!(replaced.replaced);

    let latest = client.latest_snapshot("account:1", None).await.unwrap();
    assert_eq!(latest.version, 4);
    assert_eq!(latest.state.as_str(), r#"{"z":1,"balance":4}"#);
    assert_eq!(latest.created_at, again.created_at);
    let below = client.latest_snapshot("account:1", Some(3)).await.unwrap();
    assert_eq!(below.state::<serde_json::Value>().unwrap(), json!({"balance": 2}));

    let list = client.list_snapshots("account:1").await.unwrap();
    let versions: Vec<u64> = list.iter().map(|s| s.version).collect();
    assert_eq!(versions, [2, 4]);
    assert!(client.list_snapshots("account:none").await.unwrap().is_empty());

    let loaded = client.load("account:1").await.unwrap();
    assert_eq!((loaded.aggregate_id.as_str(), loaded.version), ("account:1", 5));
    assert_eq!(loaded.snapshot.as_ref().unwrap().version, 4);
    assert_eq!(loaded.events.len(), 1);
    assert_eq!(loaded.events[0].version, 5);
    deposits(&client, "account:2", 2).await;
    let loaded = client.load("account:2").await.unwrap();
    assert!(loaded.snapshot.is_none());
    assert_eq!(loaded.events.len(), 2);
    server.stop().await;

    // After a restart, the snapshots are still there.
    let server = Server::start(dir.path()).await;
    let client = Client::new(&server.url).unwrap();
    assert_eq!(client.latest_snapshot("account:1", None).await.unwrap(), latest);
    assert_eq!(client.list_snapshots("account:1").await.unwrap(), list);
    server.stop().await;
}

#[tokio::test]
async fn errors_become_their_variants() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let client = Client::new(&server.url).unwrap();
    deposits(&client, "account:1", 2).await;

    let error = client
        .put_snapshot("account:1", PutSnapshotRequest::new(3, "Account", json!({})))
        .await
        .unwrap_err();
    match &error {
        Error::InvalidSnapshot {
            aggregate_id,
            version,
            current_version,
        } => assert_eq!(
            (aggregate_id.as_str(), *version, *current_version),
            ("account:1", 3, 2)
        ),
        other => panic!("expected InvalidSnapshot, got {other:?}"),
    }
    assert_eq!(error.status(), Some(StatusCode::UNPROCESSABLE_ENTITY));
    assert_eq!(error.code(), Some("invalid_snapshot"));
    assert!(!error.is_retryable());

    let error = client.latest_snapshot("account:1", Some(2)).await.unwrap_err();
    match &error {
        Error::SnapshotNotFound {
            aggregate_id,
            max_version,
        } => assert_eq!((aggregate_id.as_str(), *max_version), ("account:1", Some(2))),
        other => panic!("expected SnapshotNotFound, got {other:?}"),
    }
    assert!(error.is_not_found());
    assert_eq!(error.code(), Some("snapshot_not_found"));

    let error = client.load("account:none").await.unwrap_err();
    assert!(matches!(error, Error::AggregateNotFound { ref aggregate_id } if aggregate_id == "account:none"));

    let error = client
        .put_snapshot("account:1", PutSnapshotRequest::new(1, "Account", json!([1])))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("invalid_request"));
    let error = client.latest_snapshot("account:1", Some(0)).await.unwrap_err();
    assert_eq!(error.code(), Some("invalid_request"));
    server.stop().await;
}

#[tokio::test]
async fn a_put_whose_answer_is_lost_is_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let direct = Client::new(&server.url).unwrap();
    deposits(&direct, "account:1", 3).await;
    let proxy = Proxy::start(server.addr, |n| {
        if n == 0 { Fault::DropAnswer } else { Fault::Forward }
    })
    .await;
    let client = Client::builder(&proxy.url)
        .retry(RetryPolicy::default().backoff(Duration::from_millis(10), Duration::from_millis(50)))
        .build()
        .unwrap();
    let put = client
        .put_snapshot(
            "account:1",
            PutSnapshotRequest::new(3, "Account", json!({"n": 3})),
        )
        .await
        .unwrap();
    // The first attempt was stored; the second replaced it with the same snapshot.
    assert!(put.replaced);
    assert_eq!(proxy.requests().len(), 2);
    assert_eq!(direct.list_snapshots("account:1").await.unwrap().len(), 1);
    server.stop().await;
}
