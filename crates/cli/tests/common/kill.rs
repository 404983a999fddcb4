//! Writers under a server that is about to be killed: telling the kill's failures from real
//! ones, and proving that a cycle did something before its kill.
//!
//! A crash test that cannot fail when nothing happened proves nothing, so every cycle must
//! see acknowledgements of its own, and the kill must cut requests in flight. A writer that
//! meets an unexpected answer, or a failed connection before the kill, fails the test; so does
//! a writer that panics.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::task::JoinHandle;

/// How long a cycle may take to see its first acknowledgement, and at most to run.
pub const CYCLE_DEADLINE: Duration = Duration::from_secs(30);

/// What one cycle's writers share with the test that kills the server.
#[derive(Debug, Default)]
pub struct KillWindow {
    killed: AtomicBool,
    acks: AtomicU64,
    /// Requests whose answer never came because the server died under them.
    cut: AtomicU64,
}

impl KillWindow {
    /// Sends `request`, which must be answered `expected`. `Ok(Some(body))` is that answer;
    /// `Ok(None)` a request the kill cut (the writer should stop); `Err` another answer, or a
    /// failure before the kill, which fails the test. `what` names the request in errors.
    pub async fn send(
        &self,
        request: reqwest::RequestBuilder,
        expected: u16,
        what: &str,
    ) -> Result<Option<Bytes>, String> {
        let failed = |error: reqwest::Error| self.cut_by_kill(&format!("{what}: {error}")).map(|()| None);
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => return failed(error),
        };
        let status = response.status();
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(error) => return failed(error),
        };
        if status.as_u16() != expected {
            return Err(format!(
                "{what} answered {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        Ok(Some(body))
    }

    /// A request that failed without an answer: `Ok` (counted) when the kill explains it, an
    /// error naming `what` when it came before the kill.
    pub fn cut_by_kill(&self, what: &str) -> Result<(), String> {
        // The kill is recorded before it is sent, so a failure seen after it is the kill's.
        if self.killed.load(Ordering::SeqCst) {
            self.cut.fetch_add(1, Ordering::SeqCst);
            Ok(())
        } else {
            Err(format!("failed before the kill: {what}"))
        }
    }

    /// Counts an answered request.
    pub fn acked(&self) {
        self.acks.fetch_add(1, Ordering::SeqCst);
    }

    /// Whether the writers should go on: not killed yet, or failing after `CYCLE_DEADLINE`.
    pub fn check_deadline(&self, started: Instant) -> Result<(), String> {
        if started.elapsed() > CYCLE_DEADLINE {
            return Err(format!("the server was not killed within {CYCLE_DEADLINE:?}"));
        }
        Ok(())
    }

    /// Waits until the cycle's first acknowledgement, failing the test after the deadline or
    /// when every writer stopped.
    pub async fn first_ack<T>(&self, writers: &[JoinHandle<T>], cycle: usize) {
        let deadline = Instant::now() + CYCLE_DEADLINE;
        while self.acks.load(Ordering::SeqCst) == 0 {
            assert!(
                Instant::now() < deadline,
                "cycle {cycle}: no append was acknowledged within {CYCLE_DEADLINE:?}"
            );
            assert!(
                !writers.iter().all(JoinHandle::is_finished),
                "cycle {cycle}: every writer stopped before the first acknowledgement"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Records the kill; call right before sending SIGKILL.
    pub fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
    }

    /// After the kill: joins the writers (their failures and panics fail the test) and requires
    /// that the kill cut at least one request in flight.
    pub async fn join(&self, writers: Vec<JoinHandle<Result<(), String>>>, cycle: usize) {
        assert!(self.killed.load(Ordering::SeqCst), "join before the kill");
        for writer in writers {
            match writer.await {
                Ok(Ok(())) => {}
                Ok(Err(failure)) => panic!("cycle {cycle}: {failure}"),
                Err(panicked) => std::panic::resume_unwind(panicked.into_panic()),
            }
        }
        self.assert_cut(cycle);
    }

    /// Requires that the kill cut at least one request in flight.
    pub fn assert_cut(&self, cycle: usize) {
        assert!(
            self.cut.load(Ordering::SeqCst) > 0,
            "cycle {cycle}: the kill landed while no request was in flight"
        );
    }
}
