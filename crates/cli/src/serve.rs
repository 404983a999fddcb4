//! `factstore serve`: open the store, bind the listener, serve until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use factstore_engine::store::EmbeddedStore;
use factstore_engine::{Engine, EngineOptions};
use factstore_server::{AppState, ServerConfig};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The embedded engine's data folder, created if missing.
    #[arg(long, env = "FACTSTORE_DATA_DIR", default_value = "./factstore-data")]
    pub data_dir: PathBuf,
    /// The address to listen on.
    #[arg(long, env = "FACTSTORE_LISTEN", default_value = "127.0.0.1:6180")]
    pub listen: SocketAddr,
    /// Listen on a non-loopback address without authentication.
    #[arg(long, env = "FACTSTORE_INSECURE")]
    pub insecure: bool,
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    if !args.listen.ip().is_loopback() && !args.insecure {
        bail!(
            "refusing to listen on {} without authentication; pass --insecure to do it anyway",
            args.listen
        );
    }
    let engine = Engine::open(&args.data_dir, EngineOptions::default())
        .with_context(|| format!("cannot open the store in {}", args.data_dir.display()))?;
    let engine = Arc::new(engine);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let store = Arc::new(EmbeddedStore::new(engine.clone()));
        let state = AppState::new(store, ServerConfig::default());
        let shutdown = state.shutdown.clone();
        let app = factstore_server::app_with_state(state);
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let local = listener.local_addr().context("no local address")?;
        tracing::info!(address = %local, data_dir = %args.data_dir.display(), "factstore listening on {local}");
        let signal = async move {
            shutdown_signal().await;
            // Subscriptions end when this token is cancelled; the drain below waits for them.
            shutdown.cancel();
        };
        factstore_server::serve(listener, app, signal).await.context("server failed")?;
        anyhow::Ok(())
    })?;
    engine.close();
    tracing::info!("factstore stopped");
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}
