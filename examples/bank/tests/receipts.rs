//! The receipts worker against a real server: the write workflow (command →
//! rules → append → 201; the event bus delivers to a projector, which acks).
#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use factstore_client::Client;
use factstore_example_bank::{AppState, app, receipts};
use support::{Factstore, call};

/// A `Write` the test can read afterwards.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn every_deposit_and_withdrawal_gets_one_receipt_and_is_acked() {
    let factstore = Factstore::start().await;
    let client = Client::new(&factstore.url).unwrap();
    let app = app(AppState::new(client.clone()));
    let opened = call(
        &app,
        "POST",
        "/accounts",
        Some(r#"{"account_id": "ACC-001", "owner": "Ada"}"#),
        &[],
    )
    .await;
    assert_eq!(opened.0, StatusCode::CREATED);
    // The group starts at the end: what happened before it exists gets no receipt.
    call(
        &app,
        "POST",
        "/accounts/ACC-001/deposits",
        Some(r#"{"amount": 1}"#),
        &[],
    )
    .await;
    receipts::install(&client).await.unwrap();
    receipts::install(&client).await.unwrap();

    let out = Shared::default();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(receipts::run(client.clone(), "worker-1", out.clone(), async {
        stop_rx.await.ok();
    }));
    let mut ids = Vec::new();
    for (path, body) in [
        ("/accounts/ACC-001/deposits", r#"{"amount": 500}"#),
        ("/accounts/ACC-001/withdrawals", r#"{"amount": 200}"#),
        ("/accounts/ACC-001/deposits", r#"{"amount": 50}"#),
    ] {
        let (status, written) = call(&app, "POST", path, Some(body), &[]).await;
        assert_eq!(status, StatusCode::CREATED);
        ids.push(written["event_id"].as_str().unwrap().to_owned());
    }
    let head = client.head().await.unwrap().position;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = client.get_subscription(receipts::GROUP).await.unwrap();
        if status.checkpoint == head && status.in_flight == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "not all acked: {status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_tx.send(()).unwrap();
    let stats = worker.await.unwrap().unwrap();
    assert_eq!((stats.acked, stats.nacked), (3, 0));

    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    for ((line, id), what) in lines
        .iter()
        .zip(&ids)
        .zip(["deposited 500", "withdrew 200", "deposited 50"])
    {
        assert!(
            line.starts_with(&format!("RECEIPT {id} account:ACC-001 {what} USD ")),
            "{line}"
        );
    }
    factstore.stop().await;
}
