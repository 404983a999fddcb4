//! A server that does not lead the projections and persistent subscriptions (several servers on
//! one database): what it answers for the leader's routes when no leader is known, when the
//! leader cannot be reached, and when it is itself sent a forwarded request. Each is a 503
//! `store_unavailable` with `Retry-After`, the request not carried out, and the routes every
//! server serves keep working.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::StatusCode;
use common::{Call, assert_error};
use factstore_server::{AppState, Cluster, Leadership, Placement, ServerConfig, app_with_state};
use factstore_testkit::model::ModelStore;
use serde_json::json;

#[derive(Debug)]
struct Fixed(Mutex<Placement>);

impl Leadership for Fixed {
    fn placement(&self) -> Placement {
        self.0.lock().unwrap().clone()
    }
}

fn follower(placement: Placement) -> (Router, Arc<Fixed>) {
    let leadership = Arc::new(Fixed(Mutex::new(placement)));
    let state = AppState::new(Arc::new(ModelStore::new()), ServerConfig::default())
        .with_cluster(Cluster::new(leadership.clone()));
    (app_with_state(state), leadership)
}

/// An address nothing listens on: bound, then let go.
fn unreachable_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{address}")
}

#[tokio::test]
async fn a_follower_whose_leader_cannot_be_reached_answers_503_and_serves_the_rest() {
    let leader = unreachable_url();
    let (router, _) = follower(Placement::At(leader.clone()));

    for call in [
        Call::get("/v1/projections"),
        Call::get("/v1/subscriptions"),
        Call::put(
            "/v1/projections/balances",
            &json!({"filter": {}, "key": "aggregate_id", "initial": {"n": 0}, "on": {"*": [{"inc": "/n"}]}}),
        ),
    ] {
        let answer = call.send(&router).await;
        assert_error(&answer, StatusCode::SERVICE_UNAVAILABLE, "store_unavailable");
        assert_eq!(answer.header("retry-after"), Some("1"));
        assert!(
            answer.text().contains(&leader),
            "the answer names the leader: {}",
            answer.text()
        );
    }

    // Appends and reads are this server's own.
    let appended = Call::post(
        "/v1/aggregates/account:1/events",
        &json!({"events": [{"aggregate_type": "Account", "event_type": "Opened", "event_data": {}}]}),
    )
    .send(&router)
    .await;
    assert_eq!(appended.status, StatusCode::CREATED, "{}", appended.text());
    let read = Call::get("/v1/events").send(&router).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.body["events"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn a_follower_with_no_leader_known_or_sent_a_forwarded_request_answers_503() {
    let (router, leadership) = follower(Placement::Unknown);
    let answer = Call::get("/v1/projections").send(&router).await;
    assert_error(&answer, StatusCode::SERVICE_UNAVAILABLE, "store_unavailable");
    assert_eq!(answer.header("retry-after"), Some("1"));

    // A request another server forwarded is never forwarded again (a stale view of who leads
    // cannot make two followers pass it back and forth).
    *leadership.0.lock().unwrap() = Placement::At(unreachable_url());
    let answer = Call::get("/v1/subscriptions")
        .header(factstore_server::cluster::FORWARDED, "1")
        .send(&router)
        .await;
    assert_error(&answer, StatusCode::SERVICE_UNAVAILABLE, "store_unavailable");
    assert!(answer.text().contains("does not lead"), "{}", answer.text());
}
