//! Three `factstore serve --storage postgres://…` processes on one database: exactly one leads
//! (runs the projections and persistent subscriptions, with their state in PostgreSQL), the
//! others forward those requests to it; kill -9 of the leader hands the work to a survivor,
//! twice, down to a single server, with nothing lost and nothing counted twice.
//!
//! Runs in a schema of its own in `FACTSTORE_TEST_PG`; skipped (and says so) when PostgreSQL
//! is not reachable, unless `FACTSTORE_REQUIRE_PG=1`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;
use common::ServeProcess;
use common::pg::PgSchema;

/// `count` servers on the schema, each with a data folder it must not need.
fn start_servers(schema: &PgSchema, count: usize) -> (Vec<tempfile::TempDir>, Vec<ServeProcess>) {
    let args = schema.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let dirs: Vec<_> = (0..count)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let servers = dirs
        .iter()
        .map(|dir| ServeProcess::start(dir.path(), &args))
        .collect();
    (dirs, servers)
}

/// The leader's epoch and URL once one leads and serves its routes.
async fn leader(schema: &PgSchema, http: &reqwest::Client, newer_than: i64) -> (i64, String) {
    let db = schema.connect().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            Instant::now() < deadline,
            "no leader after epoch {newer_than} within 30 s"
        );
        let row = db
            .query_one("SELECT epoch, url FROM factstore_leader WHERE id = 1", &[])
            .await
            .expect("read the leader row");
        let (epoch, url): (i64, Option<String>) = (row.get(0), row.get(1));
        if epoch > newer_than
            && let Some(url) = url
            && http
                .get(format!("{url}/v1/projections"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        {
            return (epoch, url);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends a request until it is answered by anything but 503 (a leader being chosen) or a lost
/// connection, for up to 30 s.
async fn retry(make: impl Fn() -> reqwest::RequestBuilder) -> reqwest::Response {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match make().send().await {
            Ok(response) if response.status() != reqwest::StatusCode::SERVICE_UNAVAILABLE => return response,
            Ok(response) => {
                assert!(
                    Instant::now() < deadline,
                    "still 503 after 30 s: {}",
                    response.text().await.unwrap_or_default()
                );
            }
            Err(error) => assert!(Instant::now() < deadline, "{error}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn json_ok(response: reqwest::Response) -> Value {
    let status = response.status();
    let body = response.text().await.expect("a body");
    assert!(status.is_success(), "{status}: {body}");
    serde_json::from_str(&body).unwrap_or(Value::Null)
}

/// Appends `count` one-event commits spread over `urls`; returns the last position.
async fn append(http: &reqwest::Client, urls: &[String], from: u64, count: u64) -> u64 {
    let mut last = 0;
    for i in from..from + count {
        let url = &urls[i as usize % urls.len()];
        let body = json_ok(
            http.post(format!("{url}/v1/aggregates/acct-{}/events", i % 7))
                .json(
                    &json!({"events": [{"aggregate_type": "Account", "event_type": "Deposited",
                                           "event_data": {"amount": i}}]}),
                )
                .send()
                .await
                .expect("append"),
        )
        .await;
        last = body["position"].as_u64().expect("a position");
    }
    last
}

/// The `all` projection's count, read through `url` once it has folded up to `position`.
async fn count_through(http: &reqwest::Client, url: &str, position: u64) -> u64 {
    let body = json_ok(
        retry(|| {
            http.get(format!(
                "{url}/v1/projections/totals/state/all?min_position={position}&wait_ms=5000"
            ))
        })
        .await,
    )
    .await;
    body["state"]["events"].as_u64().expect("a count")
}

/// Polls the group through `url` and acks what it gets through `ack_url`, until `want` more
/// positions are acked or nothing comes. Returns the positions delivered.
async fn consume(http: &reqwest::Client, url: &str, ack_url: &str, want: usize) -> Vec<u64> {
    let mut got = Vec::new();
    while got.len() < want {
        let body = json_ok(
            retry(|| {
                http.post(format!("{url}/v1/subscriptions/bus/poll"))
                    .json(&json!({"consumer": "c1", "max": 25, "wait_ms": 2000}))
            })
            .await,
        )
        .await;
        let positions: Vec<u64> = body["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| e["position"].as_u64().expect("a position"))
            .collect();
        if positions.is_empty() {
            break;
        }
        let answer = retry(|| {
            http.post(format!("{ack_url}/v1/subscriptions/bus/ack"))
                .json(&json!({ "positions": positions }))
        })
        .await;
        assert_eq!(answer.status(), reqwest::StatusCode::NO_CONTENT);
        got.extend(positions);
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_among_three_servers_fails_over_without_losing_state() {
    let Some(schema) = PgSchema::create("the leader failover test").await else {
        return;
    };
    let (_dirs, mut servers) = start_servers(&schema, 3);
    let http = reqwest::Client::new();

    let (epoch, leader_url) = leader(&schema, &http, 0).await;
    let followers: Vec<String> = servers
        .iter()
        .map(|s| s.url.clone())
        .filter(|u| *u != leader_url)
        .collect();
    assert_eq!(followers.len(), 2, "the leader is one of the three");

    // Created through followers: forwarded to the leader.
    let created = http
        .put(format!("{}/v1/projections/totals", followers[0]))
        .json(&json!({"key": "all", "on": {"*": [{"op": "inc", "path": "/events"}]}}))
        .send()
        .await
        .expect("put a projection");
    assert_eq!(created.status(), reqwest::StatusCode::CREATED);
    let created = http
        .put(format!("{}/v1/subscriptions/bus", followers[1]))
        .json(&json!({"start": "beginning"}))
        .send()
        .await
        .expect("put a group");
    assert!(created.status().is_success(), "{}", created.status());

    let all: Vec<String> = servers.iter().map(|s| s.url.clone()).collect();
    let head = append(&http, &all, 0, 60).await;
    for url in &all {
        assert_eq!(count_through(&http, url, head).await, 60, "through {url}");
    }
    // 40 delivered and acked through followers (poll on one, ack on the other).
    let acked_first: BTreeSet<u64> = consume(&http, &followers[0], &followers[1], 40)
        .await
        .into_iter()
        .collect();
    assert!(acked_first.len() >= 40);

    // kill -9 of the leader: a survivor takes over with a newer epoch.
    let at = servers
        .iter()
        .position(|s| s.url == leader_url)
        .expect("the leader");
    servers.remove(at).kill();
    let (epoch2, leader2) = leader(&schema, &http, epoch).await;
    assert_ne!(leader2, leader_url);
    let survivors: Vec<String> = servers.iter().map(|s| s.url.clone()).collect();
    let head = append(&http, &survivors, 60, 30).await;
    for url in &survivors {
        assert_eq!(
            count_through(&http, url, head).await,
            90,
            "after the failover, through {url}: every event counted exactly once"
        );
    }
    let follower = survivors
        .iter()
        .find(|u| **u != leader2)
        .expect("a follower")
        .clone();
    let rest: BTreeSet<u64> = consume(&http, &follower, &leader2, usize::MAX)
        .await
        .into_iter()
        .collect();
    assert!(
        acked_first.is_disjoint(&rest),
        "acked events delivered again after the failover: {:?}",
        acked_first.intersection(&rest).collect::<Vec<_>>()
    );
    let every: BTreeSet<u64> = acked_first.union(&rest).copied().collect();
    assert_eq!(every, (1..=head).collect(), "every event delivered and acked");

    // Down to one server: it leads alone.
    let at = servers
        .iter()
        .position(|s| s.url == leader2)
        .expect("the second leader");
    servers.remove(at).kill();
    let (_, leader3) = leader(&schema, &http, epoch2).await;
    assert_eq!(leader3, servers[0].url);
    let head = append(&http, std::slice::from_ref(&leader3), 90, 10).await;
    assert_eq!(count_through(&http, &leader3, head).await, 100);
    let group = json_ok(
        http.get(format!("{leader3}/v1/subscriptions/bus"))
            .send()
            .await
            .expect("group"),
    )
    .await;
    assert_eq!(group["checkpoint"].as_u64(), Some(90), "{group}");

    drop(servers);
    schema.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_forwards_with_the_callers_token_and_never_loops() {
    let Some(schema) = PgSchema::create("the forwarding test").await else {
        return;
    };
    let (_dirs, servers) = start_servers(&schema, 2);
    let http = reqwest::Client::new();
    let (_, leader_url) = leader(&schema, &http, 0).await;
    let follower = servers.iter().find(|s| s.url != leader_url).expect("a follower");

    // The leader's answer comes back whole: status, code and body.
    let missing = http
        .get(format!("{}/v1/projections/nope", follower.url))
        .send()
        .await
        .expect("get");
    assert_eq!(missing.status(), reqwest::StatusCode::NOT_FOUND);
    let body: Value = missing.json().await.expect("json");
    assert_eq!(body["error"]["code"], "projection_not_found");

    // A request already forwarded once is not forwarded again by a server that does not lead.
    let looped = http
        .get(format!("{}/v1/projections", follower.url))
        .header("x-factstore-forwarded", "1")
        .send()
        .await
        .expect("get");
    assert_eq!(looped.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        looped.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("1")
    );

    // Schemas are every server's: registered on one, enforced by the other.
    let put = http
        .put(format!("{}/v1/schemas/Deposited/versions/1", follower.url))
        .json(
            &json!({"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
                      "required": ["amount"], "properties": {"amount": {"type": "integer"}}}),
        )
        .send()
        .await
        .expect("put a schema");
    assert_eq!(put.status(), reqwest::StatusCode::CREATED);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = http
            .post(format!("{leader_url}/v1/aggregates/a-1/events"))
            .json(
                &json!({"events": [{"aggregate_type": "Account", "event_type": "Deposited",
                                       "event_data": {"amount": "ten"}}]}),
            )
            .send()
            .await
            .expect("append");
        if answer.status() == reqwest::StatusCode::UNPROCESSABLE_ENTITY {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the other server still accepts events the schema forbids"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    drop(servers);
    schema.drop_schema().await;
}

/// Sends a signal to a server by pid (`kill -STOP` / `kill -CONT`).
fn signal(server: &ServeProcess, name: &str) {
    let status = std::process::Command::new("kill")
        .args([name, &server.child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {name}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_is_replaced_and_fenced_when_it_wakes() {
    let Some(schema) = PgSchema::create("the frozen leader test").await else {
        return;
    };
    let (_dirs, servers) = start_servers(&schema, 2);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let (epoch, leader_url) = leader(&schema, &http, 0).await;
    let (frozen, other) = if servers[0].url == leader_url {
        (&servers[0], &servers[1])
    } else {
        (&servers[1], &servers[0])
    };
    let created = http
        .put(format!("{leader_url}/v1/projections/totals"))
        .json(&json!({"key": "all", "on": {"*": [{"op": "inc", "path": "/events"}]}}))
        .send()
        .await
        .expect("put a projection");
    assert_eq!(created.status(), reqwest::StatusCode::CREATED);
    let head = append(&http, std::slice::from_ref(&other.url), 0, 20).await;
    assert_eq!(count_through(&http, &leader_url, head).await, 20);

    // Paused, its socket open: PostgreSQL ends its silent session and the other server leads.
    signal(frozen, "-STOP");
    let (_, leader2) = leader(&schema, &http, epoch).await;
    assert_eq!(leader2, other.url);
    let head = append(&http, std::slice::from_ref(&other.url), 20, 20).await;
    assert_eq!(count_through(&http, &other.url, head).await, 40);

    // Woken: whatever it was folding is refused by the fence, it steps down and forwards.
    signal(frozen, "-CONT");
    let head = append(&http, std::slice::from_ref(&frozen.url), 40, 20).await;
    for url in [&frozen.url, &other.url] {
        assert_eq!(
            count_through(&http, url, head).await,
            60,
            "through {url}: no event counted twice after the old leader woke"
        );
    }
    let db = schema.connect().await;
    let row = db
        .query_one("SELECT url FROM factstore_leader WHERE id = 1", &[])
        .await
        .expect("leader row");
    assert_eq!(row.get::<_, Option<String>>(0), Some(other.url.clone()));

    drop(servers);
    schema.drop_schema().await;
}
