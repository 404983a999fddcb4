//! Persistent subscriptions against a real server: groups leasing, acking, nacking, parking
//! and replaying through the client, and the SDK's Projector acking what its handler did and
//! nacking what failed.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use factstore_client::sdk::Projector;
use factstore_client::{
    AppendRequest, Client, DeliveryOrdering, Error, EventFilter, NewEvent, PollRequest, SubscriptionGroup,
    SubscriptionStart,
};
use serde_json::json;
use support::Server;

async fn append(client: &Client, id: &str, events: Vec<NewEvent>) -> factstore_client::AppendOutcome {
    client.append(id, AppendRequest::new(events)).await.unwrap()
}

fn deposit(amount: i64) -> NewEvent {
    NewEvent::new("Account", "MoneyDeposited", json!({"amount": amount}))
}

#[tokio::test]
async fn groups_lease_ack_nack_park_and_replay() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let client = Client::new(&server.url).unwrap();
    for i in 1..=3 {
        append(&client, &format!("account:{i}"), vec![deposit(i)]).await;
    }
    let group = SubscriptionGroup::new(EventFilter::new().aggregate_type("Account"))
        .start(SubscriptionStart::Beginning)
        .max_deliveries(2)
        .ordering(DeliveryOrdering::PerAggregate);
    assert!(client.put_subscription("billing", &group).await.unwrap());

    let polled = client
        .poll("billing", &PollRequest::new("w1").max(10).wait_ms(1000))
        .await
        .unwrap();
    let positions: Vec<u64> = polled.iter().map(|d| d.event.position).collect();
    assert_eq!(positions, vec![1, 2, 3]);
    assert!(polled.iter().all(|d| d.attempt == 1));
    client.ack("billing", &[1]).await.unwrap();
    client.nack("billing", &[2], false).await.unwrap();
    client.nack("billing", &[3], true).await.unwrap();

    let again = client
        .poll("billing", &PollRequest::new("w2").max(10).wait_ms(1000))
        .await
        .unwrap();
    assert_eq!(
        again
            .iter()
            .map(|d| (d.event.position, d.attempt))
            .collect::<Vec<_>>(),
        vec![(2, 2)]
    );
    client.ack("billing", &[2]).await.unwrap();

    let status = client.get_subscription("billing").await.unwrap();
    assert_eq!((status.checkpoint, status.in_flight, status.parked), (3, 0, 1));
    let parked = client.parked("billing").await.unwrap();
    assert_eq!(
        parked.iter().map(|d| d.event.position).collect::<Vec<_>>(),
        vec![3]
    );
    client.replay_parked("billing").await.unwrap();
    let replayed = client
        .poll("billing", &PollRequest::new("w1").wait_ms(1000))
        .await
        .unwrap();
    assert_eq!(
        replayed.iter().map(|d| d.event.position).collect::<Vec<_>>(),
        vec![3]
    );

    assert_eq!(client.list_subscriptions().await.unwrap().len(), 1);
    client.delete_subscription("billing").await.unwrap();
    match client.get_subscription("billing").await {
        Err(Error::SubscriptionNotFound { group }) => assert_eq!(group, "billing"),
        other => panic!("unexpected {other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn a_projector_acks_what_its_handler_did_and_nacks_what_failed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let client = Client::new(&server.url).unwrap();
    client
        .put_subscription(
            "receipts",
            &SubscriptionGroup::new(EventFilter::new()).max_deliveries(2),
        )
        .await
        .unwrap();
    for amount in [10, 13, 20] {
        append(&client, "account:1", vec![deposit(amount)]).await;
    }

    // The handler refuses odd amounts: those are nacked, delivered again, then parked.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let projector = Projector::new(client.clone(), "receipts", "worker-1").wait_ms(100);
    let run = {
        let seen = seen.clone();
        tokio::spawn(async move {
            projector
                .run(
                    move |delivery| {
                        let seen = seen.clone();
                        async move {
                            let amount = delivery.event.event_data.to_value()["amount"].as_i64().unwrap();
                            seen.lock().unwrap().push((amount, delivery.attempt));
                            if amount % 2 == 1 {
                                Err(format!("cannot handle {amount}"))
                            } else {
                                Ok(())
                            }
                        }
                    },
                    async {
                        stop_rx.await.ok();
                    },
                )
                .await
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = client.get_subscription("receipts").await.unwrap();
        if status.checkpoint == 3 && status.parked == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not done: {status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_tx.send(()).unwrap();
    let stats = run.await.unwrap().unwrap();
    assert_eq!((stats.acked, stats.nacked), (2, 2));
    let mut seen = seen.lock().unwrap().clone();
    seen.sort_unstable();
    assert_eq!(seen, vec![(10, 1), (13, 1), (13, 2), (20, 1)]);
    server.stop().await;
}

#[tokio::test]
async fn a_projector_of_an_unknown_group_stops_with_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let client = Client::new(&server.url).unwrap();
    let result = Projector::new(client, "nope", "w")
        .run(|_| async { Ok::<(), String>(()) }, std::future::pending())
        .await;
    assert!(result.unwrap_err().is_not_found());
    server.stop().await;
}

#[tokio::test]
async fn a_projector_stops_at_once_even_in_a_long_poll() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let client = Client::new(&server.url).unwrap();
    client
        .put_subscription("idle", &SubscriptionGroup::new(EventFilter::new()))
        .await
        .unwrap();
    let projector = Projector::new(client.clone(), "idle", "w").wait_ms(30_000);
    let started = std::time::Instant::now();
    let stats = projector
        .run(
            |_| async { Ok::<(), String>(()) },
            tokio::time::sleep(Duration::from_millis(200)),
        )
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!((stats.acked, stats.nacked), (0, 0));
    server.stop().await;
}
