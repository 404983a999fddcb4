//! `bank-receipts`: the receipts worker. Creates the `bank_receipts` persistent subscription
//! if needed and appends a receipt line per deposit and withdrawal to `--out` (stdout when
//! absent) until Ctrl-C or SIGTERM (the batch in hand is finished and acked first). Run several with different `--consumer` names to share the work.

use anyhow::Context;
use clap::Parser;
use factstore_client::Client;
use factstore_example_bank::receipts;

#[derive(Debug, Parser)]
#[command(about = "Writes a receipt for every deposit and withdrawal (a persistent subscription consumer)")]
struct Args {
    /// The factstore server.
    #[arg(long, env = "FACTSTORE_URL", default_value = factstore_client::DEFAULT_URL)]
    factstore_url: String,
    /// A factstore token (admin to create the group; a reader may poll and ack).
    #[arg(long, env = "FACTSTORE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// This worker's name in the group.
    #[arg(long, default_value = "receipts-1")]
    consumer: String,
    /// Append receipts to this file.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let args = Args::parse();
    let mut builder = Client::builder(&args.factstore_url);
    if let Some(token) = &args.token {
        builder = builder.token(token);
    }
    let client = builder.build()?;
    receipts::install(&client)
        .await
        .context("cannot create the receipts group")?;
    let stop = shutdown_signal();
    let stats = match &args.out {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            receipts::run(client, &args.consumer, file, stop).await?
        }
        None => receipts::run(client, &args.consumer, std::io::stdout(), stop).await?,
    };
    eprintln!(
        "stopped: {} receipts written, {} failures nacked",
        stats.acked, stats.nacked
    );
    Ok(())
}

/// Ctrl-C or SIGTERM (what a process manager sends).
async fn shutdown_signal() {
    #[cfg(unix)]
    if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        return;
    }
    let _ = tokio::signal::ctrl_c().await;
}
