//! `factstore tail`: follow a subscription and print each event as it arrives.
//!
//! By default it starts at the current head (only new events); `--after-position N` starts
//! after N (0: the whole history first). The subscription survives server restarts and
//! dropped connections (it resumes where it stood). Ctrl-C ends it; so does `--count N`.

use std::process::ExitCode;

use factstore_client::{SubscribeOptions, SubscriptionMessage};
use futures::StreamExt;

use super::output::Printer;
use super::{ClientArgs, FilterArgs, TimeArgs};

#[derive(Debug, clap::Args)]
pub struct TailArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Start after this position (0: from the beginning); default: the current head.
    #[arg(long, value_name = "N")]
    pub after_position: Option<u64>,
    /// Exit after printing this many events.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    #[command(flatten)]
    pub time: TimeArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub fn run(args: TailArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let mut printer = Printer::new(args.client.json);
    super::block_on(async move {
        let after_position = match args.after_position {
            Some(position) => position,
            None => client.head().await?.position,
        };
        let options = SubscribeOptions {
            filter: args.filter.filter(),
            after_position,
            from: args.time.from,
            to: args.time.to,
            as_of: args.time.as_of,
            raw: args.time.raw,
        };
        // Listening for Ctrl-C starts before the first event is printed: a Ctrl-C at any
        // moment after that ends the tail cleanly.
        let mut interrupted = std::pin::pin!(interrupt()?);
        let mut subscription = client.subscribe(options).await?;
        let mut printed = 0u64;
        while args.count.is_none_or(|count| printed < count) {
            let message = tokio::select! {
                message = subscription.next() => message,
                _ = &mut interrupted => break,
            };
            match message.transpose()? {
                Some(SubscriptionMessage::Event(event)) => {
                    printer.event(&event)?;
                    // Each event shows as it arrives, also through a pipe.
                    printer.flush()?;
                    printed += 1;
                }
                Some(SubscriptionMessage::CaughtUp { .. } | SubscriptionMessage::Checkpoint { .. }) => {}
                None => break,
            }
        }
        printer.flush()?;
        Ok(ExitCode::SUCCESS)
    })
}

/// A future that completes on Ctrl-C (SIGINT), listening from the moment this returns (unlike
/// `tokio::signal::ctrl_c`, which starts listening when first polled).
#[cfg(unix)]
fn interrupt() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut signal = signal(SignalKind::interrupt())?;
    Ok(async move {
        signal.recv().await;
    })
}

#[cfg(not(unix))]
fn interrupt() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
