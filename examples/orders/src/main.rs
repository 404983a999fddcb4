//! `orders`: the order service. Puts its projections on the factstore server, then
//! serves the routes of `factstore_example_orders::app`.

use anyhow::Context;
use clap::Parser;
use factstore_client::Client;
use factstore_example_orders::{AppState, app, projections};

#[derive(Debug, Parser)]
#[command(about = "The order example service on factstore")]
struct Args {
    /// Where this service listens.
    #[arg(long, env = "ORDERS_LISTEN", default_value = "127.0.0.1:8081")]
    listen: String,
    /// The factstore server.
    #[arg(long, env = "FACTSTORE_URL", default_value = factstore_client::DEFAULT_URL)]
    factstore_url: String,
    /// A factstore token (an admin token: the service puts its projections at start).
    #[arg(long, env = "FACTSTORE_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ORDERS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let mut builder = Client::builder(&args.factstore_url);
    if let Some(token) = &args.token {
        builder = builder.token(token);
    }
    let client = builder.build()?;
    projections::install(&client)
        .await
        .with_context(|| format!("cannot put the projections on {}", args.factstore_url))?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(listen = %listener.local_addr()?, factstore = %args.factstore_url, "order service ready");
    axum::serve(listener, app(AppState::new(client)))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
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
