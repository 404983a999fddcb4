//! Hostile JSON payloads against a real server, on the embedded engine and on PostgreSQL: every
//! payload is either refused with a 4xx, or stored and read back, as the same JSON value,
//! through every read path (the event by id, as stored and upcast; a page of the log; the
//! aggregate; `/load`; a subscription; a persistent group; a projection folded from the store;
//! `factstore export`).
//!
//! The payloads are JSON-ish text built from the pieces that break parsers (escaped lone
//! surrogates, numbers beyond a double, repeated names, control characters, invalid UTF-8,
//! deep nesting, stray bytes). A schema and an upcaster are registered for the event type, so
//! appends and reads go through the server's own parser, as they do in a store with schemas; a
//! payload that the server stores but cannot parse back fails here.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Value, json};

mod common;
use common::pg::Backend;
use common::{BIN, ServeProcess};

/// Cases per backend: each costs about ten requests to a local server.
const CASES: u32 = 192;

#[test]
fn hostile_payloads_are_refused_or_read_back_identically_on_the_embedded_engine() {
    run(|runtime| runtime.block_on(async { Some(Backend::Embedded) }));
}

#[test]
fn hostile_payloads_are_refused_or_read_back_identically_on_postgres() {
    run(|runtime| runtime.block_on(Backend::postgres("the hostile JSON test on PostgreSQL")));
}

fn run(backend: impl FnOnce(&tokio::runtime::Runtime) -> Option<Backend>) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let Some(backend) = backend(&runtime) else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let args = backend.args();
    let server = ServeProcess::start(data.path(), &args.iter().map(String::as_str).collect::<Vec<_>>());
    let probe = Probe {
        http: reqwest::Client::new(),
        url: server.url.clone(),
    };
    runtime.block_on(async {
        backend.ready(&server.url).await;
        probe.set_up().await;
    });
    let stored = std::cell::RefCell::new(Vec::new());
    let case = std::cell::Cell::new(0u64);
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    let outcome = runner.run(
        &(payload(), proptest::option::of(payload())),
        |(data, metadata)| {
            case.set(case.get() + 1);
            let kept = runtime.block_on(probe.check(case.get(), &data, metadata.as_deref()))?;
            stored.borrow_mut().extend(kept);
            Ok(())
        },
    );
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
    // The export (stored form) holds every accepted event, each as the value sent.
    let export = Command::new(BIN)
        .args(["export", "--url", &server.url])
        .output()
        .unwrap();
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    let exported: Vec<Value> = String::from_utf8(export.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let stored = stored.into_inner();
    assert!(
        !stored.is_empty(),
        "no generated payload was accepted: the generator is broken"
    );
    assert!(
        stored.len() < CASES as usize,
        "every generated payload was accepted: the generator makes nothing hostile"
    );
    for (aggregate_id, data) in &stored {
        let line = exported
            .iter()
            .find(|e| e["aggregate_id"] == *aggregate_id.as_str())
            .unwrap_or_else(|| panic!("{aggregate_id} is not in the export"));
        assert_eq!(&line["event_data"], data, "export of {aggregate_id}");
    }
    drop(server);
    runtime.block_on(backend.finish(data.path()));
}

struct Probe {
    http: reqwest::Client,
    url: String,
}

impl Probe {
    /// A schema (any object: it makes appends parse the payload), an upcaster (a no-op on
    /// these payloads, but it makes reads parse them), a projection that copies `event_data`
    /// into its state, and a persistent group over the cases.
    async fn set_up(&self) {
        let schema = json!({"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object"});
        self.put("/v1/schemas/Hostile/versions/1", &schema).await;
        let upcaster =
            json!({"to_version": 2, "ops": [{"op": "rename", "from": "/never", "path": "/never_either"}]});
        self.put("/v1/upcasters/Hostile/1", &upcaster).await;
        let projection = json!({
            "filter": {"aggregate_id_prefix": "case-"},
            "key": "aggregate_id",
            "initial": {},
            "on": {"*": [{"op": "set", "path": "/data", "from": "/event_data"}]}
        });
        self.put("/v1/projections/echo", &projection).await;
        let group = json!({"filter": {"aggregate_id_prefix": "case-"}, "start": "beginning"});
        self.put("/v1/subscriptions/cases", &group).await;
    }

    async fn put(&self, path: &str, body: &Value) {
        let response = self
            .http
            .put(format!("{}{path}", self.url))
            .json(body)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "PUT {path}: {}",
            response.status()
        );
    }

    async fn get(&self, path: &str) -> Value {
        let response = self.http.get(format!("{}{path}", self.url)).send().await.unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        assert!(status.is_success(), "GET {path}: {status} {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path} is not JSON ({e}): {body}"))
    }

    /// One payload: refused, or read back through every path. Returns the aggregate and
    /// value of a stored event.
    async fn check(
        &self,
        case: u64,
        data: &[u8],
        metadata: Option<&[u8]>,
    ) -> Result<Option<(String, Value)>, TestCaseError> {
        let aggregate_id = format!("case-{case}");
        let mut body =
            br#"{"events": [{"aggregate_type": "Case", "event_type": "Hostile", "event_data": "#.to_vec();
        body.extend_from_slice(data);
        if let Some(metadata) = metadata {
            body.extend_from_slice(br#", "metadata": "#);
            body.extend_from_slice(metadata);
        }
        body.extend_from_slice(b"}]}");
        let response = self
            .http
            .post(format!("{}/v1/aggregates/{aggregate_id}/events", self.url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let answer: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap_or(Value::Null);
        if matches!(status, 400 | 413) {
            prop_assert!(
                answer["error"]["code"] == "invalid_request"
                    || answer["error"]["code"] == "payload_too_large",
                "{status} {answer}"
            );
            return Ok(None);
        }
        prop_assert_eq!(status, 201, "{}", answer);
        // What a strict reader makes of what was sent: the store took it, so it must parse.
        let sent: Value = serde_json::from_slice(data).map_err(|e| {
            TestCaseError::fail(format!(
                "stored, but not JSON a reader can parse ({e}): {}",
                String::from_utf8_lossy(data)
            ))
        })?;
        if let Some(metadata) = metadata {
            let sent_metadata: Result<Value, _> = serde_json::from_slice(metadata);
            prop_assert!(
                sent_metadata.is_ok(),
                "metadata stored but not parseable: {:?}",
                sent_metadata
            );
        }
        let event_id = answer["events"][0]["event_id"].as_str().unwrap().to_owned();
        let position = answer["events"][0]["position"].as_u64().unwrap();
        let after = position - 1;
        let paths = [
            format!("/v1/events/{event_id}"),
            format!("/v1/events/{event_id}?raw=true"),
        ];
        for path in &paths {
            prop_assert_eq!(&self.get(path).await["event_data"], &sent, "{}", path);
        }
        let page = self
            .get(&format!("/v1/events?after_position={after}&limit=1"))
            .await;
        prop_assert_eq!(&page["events"][0]["event_data"], &sent, "a page of the log");
        let aggregate = self.get(&format!("/v1/aggregates/{aggregate_id}/events")).await;
        prop_assert_eq!(&aggregate["events"][0]["event_data"], &sent, "the aggregate");
        let loaded = self.get(&format!("/v1/aggregates/{aggregate_id}/load")).await;
        prop_assert_eq!(&loaded["events"][0]["event_data"], &sent, "load");
        let state = self
            .get(&format!(
                "/v1/projections/echo/state/{aggregate_id}?source=event_store"
            ))
            .await;
        prop_assert_eq!(&state["state"]["data"], &sent, "the projection");
        prop_assert_eq!(
            &self.subscribed(after).await["event_data"],
            &sent,
            "a subscription"
        );
        prop_assert_eq!(
            &self.polled(position).await["event_data"],
            &sent,
            "the persistent group"
        );
        Ok(Some((aggregate_id, sent)))
    }

    /// The first event of a subscription after `after`.
    async fn subscribed(&self, after: u64) -> Value {
        let mut response = self
            .http
            .get(format!("{}/v1/subscribe?after_position={after}", self.url))
            .send()
            .await
            .unwrap();
        let mut text = String::new();
        loop {
            let chunk = tokio::time::timeout(Duration::from_secs(10), response.chunk())
                .await
                .expect("the subscription went quiet")
                .unwrap()
                .expect("the subscription ended");
            text.push_str(std::str::from_utf8(&chunk).unwrap());
            if let Some(event) = text
                .split("\n\n")
                .find(|block| block.starts_with("event: event\n"))
            {
                let data = event.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
                return serde_json::from_str(data).unwrap();
            }
            assert!(!text.contains("event: error"), "{text}");
        }
    }

    /// The group's next event, which must be at `position`; acked.
    async fn polled(&self, position: u64) -> Value {
        let response = self
            .http
            .post(format!("{}/v1/subscriptions/cases/poll", self.url))
            .json(&json!({"consumer": "c", "max": 1, "wait_ms": 5000}))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "poll: {}", response.status());
        let polled: Value = response.json().await.unwrap();
        let event = polled["events"][0].clone();
        assert_eq!(event["position"], position, "{polled}");
        let acked = self
            .http
            .post(format!("{}/v1/subscriptions/cases/ack", self.url))
            .json(&json!({"positions": [position]}))
            .send()
            .await
            .unwrap();
        assert!(acked.status().is_success(), "ack: {}", acked.status());
        event
    }
}

/// A JSON-ish object: mostly well-formed, built from the pieces that break parsers, now and
/// then with a byte changed.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    let object = proptest::collection::vec((name(), value()), 0..5).prop_map(|members| {
        let members: Vec<String> = members.into_iter().map(|(k, v)| format!("{k}: {v}")).collect();
        format!("{{{}}}", members.join(", "))
    });
    (
        object,
        proptest::option::weighted(0.15, (any::<prop::sample::Index>(), any::<u8>())),
    )
        .prop_map(|(text, stray)| {
            let mut bytes = text.into_bytes();
            if let Some((at, byte)) = stray {
                let at = at.index(bytes.len() + 1);
                bytes.insert(at, byte);
            }
            bytes
        })
}

/// Member names from a small pool, so that objects repeat them.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(r#""a""#.to_owned()),
        Just(r#""b""#.to_owned()),
        Just(r#""\u0061""#.to_owned()),
        string(),
    ]
}

fn value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        number(),
        string(),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(|items| format!("[{}]", items.join(","))),
            proptest::collection::vec((name(), inner), 0..4).prop_map(|members| {
                let members: Vec<String> = members.into_iter().map(|(k, v)| format!("{k}:{v}")).collect();
                format!("{{{}}}", members.join(","))
            }),
            (1usize..200).prop_map(|depth| format!("{}{}", "[".repeat(depth), "]".repeat(depth))),
        ]
    })
}

fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:e}")),
        (-500i32..500).prop_map(|e| format!("1.5e{e}")),
        prop::sample::select(vec![
            "-0",
            "0.0",
            "1e400",
            "-1e400",
            "1e-400",
            "18446744073709551616",
            "-9223372036854775809",
            "123456789012345678901234567890",
            "1E+2",
            "01",
            "1.",
            ".5",
            "NaN",
            "Infinity",
            "-",
        ])
        .prop_map(str::to_owned),
    ]
}

fn string() -> impl Strategy<Value = String> {
    let piece = prop::sample::select(vec![
        "a",
        " ",
        "é",
        "😀",
        r#"\""#,
        r"\\",
        r"\/",
        r"\n",
        r"\u0000",
        r"\u001f",
        r"\u00e9",
        r"\ud800",
        r"\udc00",
        r"\udbff",
        r"\ud83d\ude00",
        r"\ud83d",
        r"\ude00",
        r"\x",
        r"\u12",
        "\u{1}",
        "\t",
        "\u{7f}",
    ]);
    proptest::collection::vec(piece, 0..6).prop_map(|pieces| format!("\"{}\"", pieces.concat()))
}
