//! [`Projector`]: a handler run over a persistent subscription: poll, handle each event, ack
//! what succeeded, nack what failed (the server delivers it again, and parks it after the
//! group's `max_deliveries`), until told to stop.

use std::fmt::Display;
use std::future::Future;

use crate::client::Client;
use crate::error::Error;
use crate::persistent::{Delivery, PollRequest};
use crate::retry::ReconnectPolicy;

/// Counts of a [`Projector::run`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProjectorStats {
    /// Events handled and acked.
    pub acked: u64,
    /// Events whose handler failed, nacked.
    pub nacked: u64,
    /// Polls made.
    pub polls: u64,
}

/// Runs a handler over the events of one persistent subscription group, as one consumer.
/// Several projectors (processes, machines) with different consumer names share the work.
///
/// ```no_run
/// # async fn example(client: factstore_client::Client) -> Result<(), factstore_client::Error> {
/// use factstore_client::sdk::Projector;
///
/// let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
/// let projector = Projector::new(client, "email-receipts", "worker-1").batch(50);
/// let stats = projector
///     .run(
///         |delivery| async move {
///             println!("send a receipt for {}", delivery.event.aggregate_id);
///             Ok::<(), std::io::Error>(())
///         },
///         async { stop_rx.await.ok(); },
///     )
///     .await?;
/// println!("acked {}", stats.acked);
/// # let _ = stop_tx;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Projector {
    client: Client,
    group: String,
    consumer: String,
    batch: u32,
    wait_ms: u64,
    reconnect: ReconnectPolicy,
}

impl Projector {
    /// A projector of `group` polling as `consumer`, 100 events a poll, waiting up to 1 s.
    pub fn new(client: Client, group: impl Into<String>, consumer: impl Into<String>) -> Projector {
        Projector {
            client,
            group: group.into(),
            consumer: consumer.into(),
            batch: 100,
            wait_ms: 1000,
            reconnect: ReconnectPolicy::default(),
        }
    }

    /// At most this many events a poll (at least 1).
    pub fn batch(mut self, batch: u32) -> Projector {
        self.batch = batch.max(1);
        self
    }

    /// How long a poll waits on the server when no event is ready (default 1000 ms). `stop`
    /// is noticed at once whatever this is.
    pub fn wait_ms(mut self, wait_ms: u64) -> Projector {
        self.wait_ms = wait_ms;
        self
    }

    /// How long to wait before polling again after the server could not be reached.
    pub fn reconnect(mut self, reconnect: ReconnectPolicy) -> Projector {
        self.reconnect = reconnect;
        self
    }

    /// Polls and handles events until `stop` completes. Each event's handler runs in turn, in
    /// the order delivered; successes are acked together after the batch, each failure is
    /// nacked (logged with its error). A batch in progress when `stop` completes is finished
    /// and acked first, so no handled event is left unacked.
    ///
    /// Failing to reach the server is retried with backoff; any other error of the server (an
    /// unknown group, a refused token) ends the run with it.
    pub async fn run<H, Fut, E>(
        &self,
        mut handler: H,
        stop: impl Future<Output = ()>,
    ) -> Result<ProjectorStats, Error>
    where
        H: FnMut(Delivery) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: Display,
    {
        let mut stats = ProjectorStats::default();
        let mut stop = std::pin::pin!(stop);
        let mut failures = 0u32;
        let request = PollRequest::new(&self.consumer)
            .max(self.batch)
            .wait_ms(self.wait_ms);
        loop {
            let deliveries = tokio::select! {
                biased;
                () = &mut stop => return Ok(stats),
                polled = self.client.poll(&self.group, &request) => polled,
            };
            stats.polls += 1;
            let deliveries = match deliveries {
                Ok(deliveries) => {
                    failures = 0;
                    deliveries
                }
                Err(error) if error.is_retryable() => {
                    failures += 1;
                    let delay = self.reconnect.delay(failures);
                    tracing::warn!(group = self.group, %error, ?delay, "poll failed; polling again");
                    tokio::select! {
                        biased;
                        () = &mut stop => return Ok(stats),
                        () = tokio::time::sleep(delay) => continue,
                    }
                }
                Err(error) => return Err(error),
            };
            let mut acks = Vec::with_capacity(deliveries.len());
            for delivery in deliveries {
                let position = delivery.event.position;
                let attempt = delivery.attempt;
                match handler(delivery).await {
                    Ok(()) => acks.push(position),
                    Err(error) => {
                        tracing::warn!(group = self.group, position, attempt, %error, "handler failed; nacking");
                        self.client.nack(&self.group, &[position], false).await?;
                        stats.nacked += 1;
                    }
                }
            }
            if !acks.is_empty() {
                self.client.ack(&self.group, &acks).await?;
                stats.acked += acks.len() as u64;
            }
        }
    }
}
