//! Request ids and the request log.
//!
//! One test: it installs the process's global log subscriber, and tracing caches per call site
//! whether anyone listens, so tests running beside it without a subscriber would make its
//! capture flaky.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use common::{Call, events};
use factstore_server::{AppState, Auth, ServerConfig, app_with_state};
use factstore_testkit::model::ModelStore;
use serde_json::json;

const TOKEN: &str = "log-test-writer-token-0123456789";

/// A `MakeWriter` that appends every log line to a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

#[tokio::test]
async fn request_ids_are_echoed_and_logged_and_secrets_never_are() {
    let captured = Captured::default();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(captured.clone())
        .with_ansi(false)
        .init();
    let auth = Auth::parse(
        &format!("[[token]]\ntoken = \"{TOKEN}\"\nrole = \"writer\"\naggregate_id_prefixes = [\"acc:\"]\n"),
        "log.toml",
    )
    .unwrap();
    let router = app_with_state(AppState::new(
        Arc::new(ModelStore::new()),
        ServerConfig::default().with_auth(auth),
    ));

    // The client's id is echoed; without one, a fresh UUID each time.
    let answer = Call::get("/health")
        .header("x-request-id", "client-id-7")
        .send(&router)
        .await;
    assert_eq!(answer.header("x-request-id"), Some("client-id-7"));
    let first = Call::get("/health").send(&router).await;
    let second = Call::get("/health").send(&router).await;
    let generated: Vec<uuid::Uuid> = [&first, &second]
        .iter()
        .map(|a| a.header("x-request-id").unwrap().parse().unwrap())
        .collect();
    assert_ne!(generated[0], generated[1]);
    // An id too long or not printable is replaced, not echoed into logs and responses.
    for bad in ["x".repeat(200), "two words".to_owned(), String::new()] {
        let answer = Call::get("/health")
            .header("x-request-id", &bad)
            .send(&router)
            .await;
        let echoed = answer.header("x-request-id").unwrap();
        assert!(echoed.parse::<uuid::Uuid>().is_ok(), "{bad:?} became {echoed:?}");
    }
    // Errors carry it too, including the 401 of the auth middleware.
    let answer = Call::get("/v1/head")
        .header("x-request-id", "denied-1")
        .send(&router)
        .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.header("x-request-id"), Some("denied-1"));

    let body = json!({"events": [{"aggregate_type": "A", "event_type": "E",
                                  "event_data": {"secret_payload": "do-not-log-me"}}]});
    let answer = Call::post("/v1/aggregates/acc:1/events", &body)
        .token(TOKEN)
        .header("x-request-id", "trace-me-42")
        .send(&router)
        .await;
    assert_eq!(answer.status, StatusCode::CREATED);
    assert_eq!(answer.header("x-request-id"), Some("trace-me-42"));
    let answer = Call::post(
        "/v1/aggregates/acc:2/events?secret_query=do-not-log-query",
        &events(1),
    )
    .token(TOKEN)
    .send(&router)
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    let answer = Call::get("/v1/head")
        .token("wrong-token-secret")
        .send(&router)
        .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);

    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let line = log
        .lines()
        .find(|line| line.contains("trace-me-42") && line.contains("answered"))
        .unwrap_or_else(|| panic!("no access line for the request: {log}"));
    assert!(
        line.contains(r#"route="/v1/aggregates/{aggregate_id}/events""#),
        "{line}"
    );
    assert!(
        line.contains("method=POST") && line.contains("status=201"),
        "{line}"
    );
    assert!(line.contains("latency_us="), "{line}");
    assert!(log.contains("denied-1") && log.contains("status=401"), "{log}");
    for secret in [
        TOKEN,
        "wrong-token-secret",
        "do-not-log-me",
        "do-not-log-query",
        "acc:1",
    ] {
        assert!(!log.contains(secret), "the log shows {secret}: {log}");
    }
}
