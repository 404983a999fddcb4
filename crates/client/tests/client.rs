//! The client against a real server (embedded engine, in-process, on a free port): every
//! method, every error variant, and the retries that make appends safe.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use factstore_client::{
    AggregateAppend, AggregateQuery, AppendRequest, Client, CommitRequest, Error, Event, EventFilter,
    EventQuery, ExpectedVersion, NewEvent, RawJson, RetryPolicy, StatusCode,
};
use futures::TryStreamExt;
use serde_json::json;
use support::{Fault, Proxy, Server, closed_port, json_answer};
use time::macros::datetime;
use uuid::Uuid;

fn deposit(amount: i64) -> NewEvent {
    NewEvent::new(
        "Account",
        "MoneyDeposited",
        json!({"amount": amount, "currency": "USD"}),
    )
}

/// A client that retries quickly, so tests of retries take milliseconds.
fn quick_client(url: &str) -> Client {
    Client::builder(url)
        .retry(RetryPolicy::default().backoff(Duration::from_millis(10), Duration::from_millis(50)))
        .build()
        .unwrap()
}

async fn all_events(client: &Client) -> Vec<Event> {
    client
        .events_stream(EventQuery::new())
        .try_collect()
        .await
        .unwrap()
}

#[tokio::test]
async fn health_and_head() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let client = Client::new(&server.url).unwrap();

    assert_eq!(client.health().await.unwrap().status, "ok");
    let head = client.head().await.unwrap();
    assert_eq!((head.position, head.recorded_at), (0, None));

    let outcome = client
        .append("account:1", AppendRequest::new([deposit(1)]))
        .await
        .unwrap();
    let head = client.head().await.unwrap();
    assert_eq!(head.position, 1);
    assert_eq!(head.recorded_at, Some(outcome.events[0].recorded_at));
    server.stop().await;
}

#[tokio::test]
async fn append_then_read_every_field_back() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let client = Client::new(&server.url).unwrap();

    let given_id = Uuid::now_v7();
    let request = AppendRequest::new([
        // As text, so that the order of the keys is the client's.
        NewEvent::new(
            "Account",
            "AccountOpened",
            RawJson::from_string(r#"{"owner":"Ada","z":1,"a":2}"#.into()).unwrap(),
        )
        .with_id(given_id)
        .with_created_by("user:123")
        .with_created_at(datetime!(2024-01-15 10:00:00.5 UTC))
        .with_metadata(json!({"correlation_id": "corr-1", "causation_id": "cmd-1"})),
        NewEvent::from_data("Account", "MoneyDeposited", &json!({"amount": 500}))
            .unwrap()
            .with_event_version(2),
    ])
    .expect(ExpectedVersion::Exact(0));
    let outcome = client.append("account:ACC-001", request).await.unwrap();
    assert!(!outcome.replayed);
    assert_eq!((outcome.version, outcome.position), (2, 2));
    assert_eq!(outcome.events[0].event_id, given_id);
    // The client gave the second event an id itself, a UUIDv7, before sending.
    assert_eq!(outcome.events[1].event_id.get_version_num(), 7);
    assert_eq!(
        outcome
            .events
            .iter()
            .map(|e| (e.version, e.position))
            .collect::<Vec<_>>(),
        [(1, 1), (2, 2)]
    );

    let page = client
        .read_aggregate("account:ACC-001", &AggregateQuery::new())
        .await
        .unwrap();
    assert_eq!(
        (
            page.aggregate_id.as_str(),
            page.aggregate_type.as_str(),
            page.version
        ),
        ("account:ACC-001", "Account", 2)
    );
    assert_eq!(page.next_from_version, None);
    let opened = &page.events[0];
    assert_eq!(opened.event_id, given_id);
    assert_eq!((opened.position, opened.version, opened.event_version), (1, 1, 1));
    assert_eq!(opened.event_type, "AccountOpened");
    // The data comes back as it was sent, keys in the order given.
    assert_eq!(opened.event_data.as_str(), r#"{"owner":"Ada","z":1,"a":2}"#);
    assert_eq!(opened.created_at, datetime!(2024-01-15 10:00:00.5 UTC));
    assert_eq!(opened.recorded_at, outcome.events[0].recorded_at);
    assert_eq!(opened.created_by.as_deref(), Some("user:123"));
    assert_eq!(opened.correlation_id().as_deref(), Some("corr-1"));
    assert_eq!(opened.causation_id().as_deref(), Some("cmd-1"));
    let deposited = &page.events[1];
    assert_eq!(deposited.event_version, 2);
    assert_eq!(
        deposited.data::<serde_json::Value>().unwrap(),
        json!({"amount": 500})
    );
    assert_eq!(
        (deposited.created_by.as_ref(), deposited.metadata.as_ref()),
        (None, None)
    );

    // One event by id: the same event.
    assert_eq!(&client.get_event(given_id).await.unwrap(), opened);
    server.stop().await;
}

#[tokio::test]
async fn aggregate_ids_are_percent_encoded_in_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let client = Client::new(&server.url).unwrap();
    let id = "odd id/with?all#the%chars:é";
    client.append(id, AppendRequest::new([deposit(1)])).await.unwrap();
    let page = client.read_aggregate(id, &AggregateQuery::new()).await.unwrap();
    assert_eq!(page.aggregate_id, id);
    assert_eq!(page.events[0].aggregate_id, id);
    server.stop().await;
}

#[tokio::test]
async fn aggregate_reads_by_version_direction_and_page() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let client = Client::new(&server.url).unwrap();
    let events: Vec<NewEvent> = (1..=5).map(deposit).collect();
    client
        .append("account:1", AppendRequest::new(events))
        .await
        .unwrap();
    let versions = |events: &[Event]| events.iter().map(|e| e.version).collect::<Vec<_>>();

    let page = client
        .read_aggregate("account:1", &AggregateQuery::new().backward().limit(2))
        .await
        .unwrap();
    assert_eq!(versions(&page.events), [5, 4]);
    assert_eq!(page.next_from_version, Some(3));

    let page = client
        .read_aggregate("account:1", &AggregateQuery::new().from_version(2).to_version(4))
        .await
        .unwrap();
    assert_eq!(versions(&page.events), [2, 3, 4]);

    // The paging helper follows next_from_version to the end, both ways.
    let all: Vec<Event> = client
        .aggregate_stream("account:1", AggregateQuery::new().limit(2))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(versions(&all), [1, 2, 3, 4, 5]);
    let all: Vec<Event> = client
        .aggregate_stream("account:1", AggregateQuery::new().backward().limit(2))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(versions(&all), [5, 4, 3, 2, 1]);

    // Time bounds reach the server: nothing was created before 2000.
    let page = client
        .read_aggregate(
            "account:1",
            &AggregateQuery::new().to(datetime!(2000-01-01 0:00 UTC).date()),
        )
        .await
        .unwrap();
    assert!(page.events.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn event_queries_filter_and_page() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let client = Client::new(&server.url).unwrap();
    for i in 0..10 {
        let event = if i % 2 == 0 {
            deposit(i).with_metadata(json!({"correlation_id": format!("c{}", i % 4)}))
        } else {
            NewEvent::new("Order", "OrderPlaced", json!({"n": i}))
        };
        let id = if i % 2 == 0 {
            format!("account:{i}")
        } else {
            format!("order:{i}")
        };
        client.append(&id, AppendRequest::new([event])).await.unwrap();
    }
    let positions = |events: &[Event]| events.iter().map(|e| e.position).collect::<Vec<_>>();

    let page = client
        .read_events(&EventQuery::new().after_position(3).limit(4))
        .await
        .unwrap();
    assert_eq!(positions(&page.events), [4, 5, 6, 7]);
    assert_eq!((page.next_after_position, page.head_position), (7, 10));

    let accounts = EventFilter::new().aggregate_id_prefix("account:");
    let page = client
        .read_events(&EventQuery::new().filter(accounts.clone()))
        .await
        .unwrap();
    assert_eq!(positions(&page.events), [1, 3, 5, 7, 9]);
    let page = client
        .read_events(&EventQuery::new().filter(EventFilter::new().correlation_id("c0")))
        .await
        .unwrap();
    assert_eq!(positions(&page.events), [1, 5, 9]);
    let page = client
        .read_events(
            &EventQuery::new().filter(EventFilter::new().event_type("OrderPlaced").event_type("Nope")),
        )
        .await
        .unwrap();
    assert_eq!(positions(&page.events), [2, 4, 6, 8, 10]);

    // The stream follows pages of 2 to the head, or to to_position.
    let all: Vec<Event> = client
        .events_stream(EventQuery::new().limit(2))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(positions(&all), (1..=10).collect::<Vec<_>>());
    let some: Vec<Event> = client
        .events_stream(EventQuery::new().filter(accounts).limit(2).to_position(6))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(positions(&some), [1, 3, 5]);
    server.stop().await;
}

#[tokio::test]
async fn a_commit_spans_aggregates_and_honours_its_condition() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let client = Client::new(&server.url).unwrap();

    let seats = EventFilter::new()
        .event_type("SeatReserved")
        .aggregate_id_prefix("seat:");
    let commit = CommitRequest::new([
        AggregateAppend::new(
            "order:1",
            ExpectedVersion::Exact(0),
            [NewEvent::new("Order", "OrderPlaced", json!({}))],
        ),
        AggregateAppend::new(
            "seat:A1",
            ExpectedVersion::Any,
            [NewEvent::new("Seat", "SeatReserved", json!({"order": 1}))],
        ),
    ])
    .condition(seats.clone(), 0);
    let outcome = client.commit(commit).await.unwrap();
    assert!(!outcome.replayed);
    assert_eq!(outcome.position, 2);
    assert_eq!(
        outcome
            .appends
            .iter()
            .map(|a| (a.aggregate_id.as_str(), a.version, a.events[0].position))
            .collect::<Vec<_>>(),
        [("order:1", 1, 1), ("seat:A1", 1, 2)]
    );

    // Someone reserved a seat after position 0: the same condition now fails.
    let again = CommitRequest::new([AggregateAppend::new(
        "seat:A2",
        ExpectedVersion::Any,
        [NewEvent::new("Seat", "SeatReserved", json!({"order": 2}))],
    )])
    .condition(seats, 0);
    match client.commit(again).await {
        Err(Error::ConditionFailed {
            after_position,
            conflicting_position,
            ..
        }) => assert_eq!((after_position, conflicting_position), (Some(0), Some(2))),
        other => panic!("expected condition_failed, got {other:?}"),
    }
    assert_eq!(client.head().await.unwrap().position, 2);
    server.stop().await;
}

#[tokio::test]
async fn the_same_request_twice_is_a_replay() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let client = Client::new(&server.url).unwrap();
    let request = AppendRequest::new([
        deposit(1).with_id(Uuid::now_v7()),
        deposit(2).with_id(Uuid::now_v7()),
    ])
    .expect(ExpectedVersion::Exact(0));

    let first = client.append("account:1", request.clone()).await.unwrap();
    // The aggregate moves on; the repeat still succeeds, with the original outcome.
    client
        .append("account:1", AppendRequest::new([deposit(3)]))
        .await
        .unwrap();
    let second = client.append("account:1", request).await.unwrap();
    assert!(!first.replayed && second.replayed);
    assert_eq!(
        (second.version, second.position, &second.events),
        (2, 2, &first.events)
    );
    assert_eq!(all_events(&client).await.len(), 3);

    let commit = CommitRequest::new([AggregateAppend::new(
        "order:1",
        ExpectedVersion::Exact(0),
        [NewEvent::new("Order", "OrderPlaced", json!({})).with_id(Uuid::now_v7())],
    )]);
    let first = client.commit(commit.clone()).await.unwrap();
    let second = client.commit(commit).await.unwrap();
    assert!(!first.replayed && second.replayed);
    assert_eq!(first.appends, second.appends);
    assert_eq!(all_events(&client).await.len(), 4);
    server.stop().await;
}

#[tokio::test]
async fn an_append_whose_answer_is_lost_is_retried_without_writing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    // The first request reaches the server and commits, but its answer never comes back.
    let proxy = Proxy::start(server.addr, |n| {
        if n == 0 { Fault::DropAnswer } else { Fault::Forward }
    })
    .await;
    let client = quick_client(&proxy.url);

    // No event ids given: the client assigns them before the first attempt.
    let outcome = client
        .append(
            "account:1",
            AppendRequest::new([deposit(1), deposit(2)]).expect(ExpectedVersion::Exact(0)),
        )
        .await
        .unwrap();
    assert_eq!(proxy.requests().len(), 2, "one retry");
    assert!(outcome.replayed, "the retry is recognised as a repeat");
    assert_eq!((outcome.version, outcome.position), (2, 2));
    let stored = all_events(&Client::new(&server.url).unwrap()).await;
    assert_eq!(stored.len(), 2, "written once");
    assert_eq!(
        stored.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        outcome.events.iter().map(|e| e.event_id).collect::<Vec<_>>()
    );

    // The same through a commit across aggregates.
    let proxy = Proxy::start(server.addr, |n| {
        if n == 0 { Fault::DropAnswer } else { Fault::Forward }
    })
    .await;
    let client = quick_client(&proxy.url);
    let outcome = client
        .commit(CommitRequest::new([AggregateAppend::new(
            "order:1",
            ExpectedVersion::Exact(0),
            [NewEvent::new("Order", "OrderPlaced", json!({}))],
        )]))
        .await
        .unwrap();
    assert!(outcome.replayed);
    assert_eq!(outcome.position, 3);
    assert_eq!(
        Client::new(&server.url).unwrap().head().await.unwrap().position,
        3
    );
    server.stop().await;
}

#[tokio::test]
async fn a_503_is_retried_and_a_4xx_never_is() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let unavailable = json_answer(
        503,
        "Service Unavailable",
        r#"{"error":{"code":"store_unavailable","message":"the store cannot write safely"}}"#,
    );

    // 503 twice, then the server itself: the third attempt writes.
    let answer = unavailable.clone();
    let proxy = Proxy::start(server.addr, move |n| {
        if n < 2 {
            Fault::Answer(answer.clone())
        } else {
            Fault::Forward
        }
    })
    .await;
    let client = quick_client(&proxy.url);
    let outcome = client
        .append("account:1", AppendRequest::new([deposit(1)]))
        .await
        .unwrap();
    assert!(!outcome.replayed);
    assert_eq!(proxy.requests().len(), 3);

    // Always 503: bounded attempts, then the server's error.
    let answer = unavailable.clone();
    let proxy = Proxy::start(server.addr, move |_| Fault::Answer(answer.clone())).await;
    let client = Client::builder(&proxy.url)
        .retry(
            RetryPolicy::default()
                .max_attempts(3)
                .backoff(Duration::from_millis(5), Duration::from_millis(5)),
        )
        .build()
        .unwrap();
    match client.append("account:1", AppendRequest::new([deposit(2)])).await {
        Err(error @ Error::Api { .. }) => {
            assert_eq!(error.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
            assert_eq!(error.code(), Some("store_unavailable"));
            assert!(error.is_retryable());
        }
        other => panic!("expected store_unavailable, got {other:?}"),
    }
    assert_eq!(proxy.requests().len(), 3);

    // A conflict goes through once and comes back as it is.
    let proxy = Proxy::start(server.addr, |_| Fault::Forward).await;
    let client = quick_client(&proxy.url);
    let conflict = client
        .append(
            "account:1",
            AppendRequest::new([deposit(3)]).expect(ExpectedVersion::Exact(0)),
        )
        .await;
    assert!(
        matches!(conflict, Err(Error::WrongExpectedVersion { .. })),
        "{conflict:?}"
    );
    assert_eq!(proxy.requests().len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn conflicts_and_not_found_are_their_own_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let client = Client::new(&server.url).unwrap();
    let id = Uuid::now_v7();
    client
        .append(
            "account:1",
            AppendRequest::new([deposit(1).with_id(id), deposit(2), deposit(3)]),
        )
        .await
        .unwrap();

    let error = client
        .append(
            "account:1",
            AppendRequest::new([deposit(4)]).expect(ExpectedVersion::Exact(1)),
        )
        .await
        .unwrap_err();
    match &error {
        Error::WrongExpectedVersion {
            aggregate_id,
            expected_version,
            current_version,
        } => {
            assert_eq!(
                (aggregate_id.as_str(), *expected_version, *current_version),
                ("account:1", ExpectedVersion::Exact(1), 3)
            );
        }
        other => panic!("expected wrong_expected_version, got {other:?}"),
    }
    assert_eq!(
        error.to_string(),
        "wrong expected version for account:1: expected 1, current 3"
    );
    assert!(error.is_conflict() && !error.is_retryable());
    let error = client
        .append(
            "account:2",
            AppendRequest::new([deposit(1)]).expect(ExpectedVersion::Exists),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            &error,
            Error::WrongExpectedVersion {
                expected_version: ExpectedVersion::Exists,
                current_version: 0,
                ..
            }
        ),
        "{error:?}"
    );

    // The same id with other content: not a repeat, a duplicate.
    match client
        .append("account:1", AppendRequest::new([deposit(99).with_id(id)]))
        .await
    {
        Err(Error::DuplicateEventId { event_id, .. }) => assert_eq!(event_id, Some(id)),
        other => panic!("expected duplicate_event_id, got {other:?}"),
    }

    match client
        .read_aggregate("account:none", &AggregateQuery::new())
        .await
    {
        Err(error @ Error::AggregateNotFound { .. }) => {
            assert!(error.is_not_found());
            assert_eq!(error.to_string(), "aggregate account:none not found");
        }
        other => panic!("expected aggregate_not_found, got {other:?}"),
    }
    let missing = Uuid::now_v7();
    match client.get_event(missing).await {
        Err(Error::EventNotFound { event_id }) => assert_eq!(event_id, missing.to_string()),
        other => panic!("expected event_not_found, got {other:?}"),
    }

    // Everything else: the code, the message and the details, as the server gave them.
    match client
        .append(
            "account:1",
            AppendRequest::new([NewEvent::new("Order", "X", json!({}))]),
        )
        .await
    {
        Err(Error::Api {
            status,
            code,
            details,
            ..
        }) => {
            assert_eq!(
                (status, code.as_str()),
                (StatusCode::CONFLICT, "aggregate_type_mismatch")
            );
            assert_eq!(details["existing"], "Account");
            assert_eq!(details["given"], "Order");
        }
        other => panic!("expected aggregate_type_mismatch, got {other:?}"),
    }
    match client.read_events(&EventQuery::new().limit(0)).await {
        Err(error @ Error::Api { .. }) => {
            assert_eq!(error.status(), Some(StatusCode::BAD_REQUEST));
            assert_eq!(error.code(), Some("invalid_request"));
            assert!(error.to_string().contains("limit"), "{error}");
        }
        other => panic!("expected invalid_request, got {other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn no_answer_is_a_transport_error_not_a_conflict() {
    // Nothing listens on the port: connection refused, retried, then reported as such.
    let url = format!("http://{}", closed_port());
    let client = quick_client(&url);
    let started = Instant::now();
    match client.append("account:1", AppendRequest::new([deposit(1)])).await {
        Err(error @ Error::Transport(_)) => {
            assert!(error.is_retryable() && !error.is_conflict() && error.status().is_none());
            assert!(error.to_string().starts_with("cannot connect to"), "{error}");
        }
        other => panic!("expected a transport error, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));

    // A server that never answers: a timeout.
    let proxy = Proxy::start(closed_port(), |_| Fault::Stall).await;
    let client = Client::builder(&proxy.url)
        .timeout(Duration::from_millis(200))
        .retry(RetryPolicy::none())
        .build()
        .unwrap();
    match client.head().await {
        Err(Error::Transport(error)) => assert!(error.is_timeout(), "{error}"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(proxy.requests().len(), 1);
}

#[tokio::test]
async fn refused_tokens_and_unreadable_answers() {
    let answers = [
        (
            json_answer(
                401,
                "Unauthorized",
                r#"{"error":{"code":"unauthorized","message":"a token is required"}}"#,
            ),
            "unauthorized",
        ),
        (
            json_answer(
                403,
                "Forbidden",
                r#"{"error":{"code":"forbidden","message":"outside the prefixes"}}"#,
            ),
            "forbidden",
        ),
        (json_answer(200, "OK", "<html>not JSON</html>"), "decode"),
        (json_answer(502, "Bad Gateway", "upstream down"), "http_502"),
    ];
    for (answer, expected) in answers {
        let proxy = Proxy::start(closed_port(), move |_| Fault::Answer(answer.clone())).await;
        let client = Client::builder(&proxy.url)
            .token("secret-token")
            .retry(RetryPolicy::none())
            .build()
            .unwrap();
        let error = client.head().await.unwrap_err();
        match (expected, &error) {
            ("unauthorized", Error::Unauthorized { message }) => assert_eq!(message, "a token is required"),
            ("forbidden", Error::Forbidden { message }) => assert_eq!(message, "outside the prefixes"),
            ("decode", Error::Decode { .. }) => {}
            ("http_502", Error::Api { code, message, .. }) => {
                assert_eq!((code.as_str(), message.as_str()), ("http_502", "upstream down"));
            }
            _ => panic!("expected {expected}, got {error:?}"),
        }
        // The token went out as a bearer token.
        assert!(
            proxy.requests()[0]
                .lines()
                .any(|l| l.eq_ignore_ascii_case("authorization: Bearer secret-token")),
            "{:?}",
            proxy.requests()
        );
    }
}

#[test]
fn bad_settings_are_refused_when_building() {
    assert!(matches!(Client::new("not a url"), Err(Error::Config(_))));
    assert!(matches!(Client::new("ftp://host"), Err(Error::Config(_))));
    let bad_pem = Client::builder("https://localhost")
        .add_root_certificate_pem(b"not a certificate")
        .build();
    assert!(matches!(bad_pem, Err(Error::Config(_))), "{bad_pem:?}");
    // A base path is kept as a prefix.
    let client = Client::new("http://127.0.0.1:6180/factstore/").unwrap();
    assert_eq!(client.url().as_str(), "http://127.0.0.1:6180/factstore");
}
