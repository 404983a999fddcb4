//! The client's projection methods against a real server: put, get, list, states (read
//! model, event store, read-your-writes), paging, event status, rebuild, delete, and their
//! errors.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use factstore_client::{
    AppendRequest, Client, Error, EventFilter, NewEvent, Operation, ProjectionDefinition, ProjectionKey,
    ProjectionRunStatus, StateQuery, StateSource,
};
use serde_json::json;
use support::Server;

fn balances() -> ProjectionDefinition {
    ProjectionDefinition::new(
        EventFilter::new().aggregate_type("Account"),
        ProjectionKey::AggregateId,
    )
    .initial(json!({"balance": 0, "transactions": 0}))
    .on(
        "MoneyDeposited",
        [
            Operation::add("/balance").from("/event_data/amount"),
            Operation::inc("/transactions"),
        ],
    )
    .on(
        "MoneyWithdrawn",
        [
            Operation::sub("/balance").from("/event_data/amount"),
            Operation::inc("/transactions"),
        ],
    )
}

async fn append(client: &Client, id: &str, events: Vec<NewEvent>) -> factstore_client::AppendOutcome {
    client.append(id, AppendRequest::new(events)).await.unwrap()
}

fn deposit(amount: i64) -> NewEvent {
    NewEvent::new("Account", "MoneyDeposited", json!({"amount": amount}))
}

#[tokio::test]
async fn projections_are_put_read_listed_rebuilt_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let client = Client::new(&server.url).unwrap();

    let put = client.put_projection("balances", &balances()).await.unwrap();
    assert!(put.created);
    assert!(
        !client
            .put_projection("balances", &balances())
            .await
            .unwrap()
            .created
    );

    let outcome = append(&client, "account:1", vec![deposit(500), deposit(500)]).await;
    append(
        &client,
        "account:1",
        vec![NewEvent::new("Account", "MoneyWithdrawn", json!({"amount": 200}))],
    )
    .await;
    let read = client
        .projection_state(
            "balances",
            "account:1",
            &StateQuery::new().min_position(outcome.position + 1).wait_ms(5000),
        )
        .await
        .unwrap();
    assert_eq!(read.state.to_value(), json!({"balance": 800, "transactions": 3}));
    assert!(read.position >= 3);

    let current = client
        .projection_state(
            "balances",
            "account:1",
            &StateQuery::new().source(StateSource::EventStore),
        )
        .await
        .unwrap();
    assert_eq!(current.state.to_value()["balance"], 800);

    // Read-your-writes that cannot be met in time.
    match client
        .projection_state(
            "balances",
            "account:1",
            &StateQuery::new().min_position(1_000).wait_ms(50),
        )
        .await
    {
        Err(Error::NotYetMaterialized { .. }) => {}
        other => panic!("unexpected {other:?}"),
    }
    match client
        .projection_state("balances", "account:404", &StateQuery::new())
        .await
    {
        Err(Error::KeyNotFound { projection, key }) => {
            assert_eq!((projection.as_str(), key.as_str()), ("balances", "account:404"))
        }
        other => panic!("unexpected {other:?}"),
    }
    match client.get_projection("nope").await {
        Err(Error::ProjectionNotFound { name }) => assert_eq!(name, "nope"),
        other => panic!("unexpected {other:?}"),
    }
    let bad = ProjectionDefinition::new(EventFilter::new(), ProjectionKey::All)
        .on("X", [Operation::add("balance")]);
    assert!(matches!(
        client.put_projection("bad", &bad).await,
        Err(Error::InvalidProjection { .. })
    ));

    let status = client.get_projection("balances").await.unwrap();
    assert_eq!((status.status, status.keys), (ProjectionRunStatus::Running, 1));
    let listed = client.list_projections().await.unwrap();
    assert_eq!(
        listed.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        vec!["balances"]
    );

    append(&client, "account:2", vec![deposit(1)]).await;
    let event = append(&client, "account:3", vec![deposit(2)]).await.events[0].event_id;
    let status = client
        .wait_materialized(event, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(status.materialized && status.projections.get("balances") == Some(&true));
    let page = client.projection_states("balances", None, Some(2)).await.unwrap();
    assert_eq!(page.states.len(), 2);
    assert_eq!(page.next_after_key.as_deref(), Some("account:2"));
    let all = client.all_projection_states("balances").await.unwrap();
    assert_eq!(
        all.iter().map(|s| s.key.as_str()).collect::<Vec<_>>(),
        vec!["account:1", "account:2", "account:3"]
    );

    client.rebuild_projection("balances").await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = client.get_projection("balances").await.unwrap();
        if status.status == ProjectionRunStatus::Running && status.lag == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the rebuild did not finish: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        client
            .projection_state("balances", "account:1", &StateQuery::new())
            .await
            .unwrap()
            .state
            .to_value()["balance"],
        800
    );
    client.delete_projection("balances").await.unwrap();
    assert!(matches!(
        client.get_projection("balances").await,
        Err(Error::ProjectionNotFound { .. })
    ));
    server.stop().await;
}
