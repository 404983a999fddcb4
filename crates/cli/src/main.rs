//! The `factstore` binary: `serve` runs the server; the other commands are tools.
//!
//! This crate is not a library; it wires the crates together and turns errors into one line
//! and a non-zero exit.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use factstore_engine::io::StdFileSystem;
use factstore_engine::store::EmbeddedStore;
use factstore_engine::{Engine, EngineOptions};

// The store allocates and frees on different threads (requests on the runtime's workers, their
// events dropped by the writer); mimalloc handles that far better than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "factstore",
    version,
    about = "An event store: durable, append-only facts over HTTP/JSON"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Check every record and index entry of a data folder (offline: stop the server first).
    Verify {
        #[arg(long, env = "FACTSTORE_DATA_DIR", default_value = "./factstore-data")]
        data_dir: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// The embedded engine's data folder, created if missing.
    #[arg(long, env = "FACTSTORE_DATA_DIR", default_value = "./factstore-data")]
    data_dir: PathBuf,
    /// The address to listen on.
    #[arg(long, env = "FACTSTORE_LISTEN", default_value = "127.0.0.1:6180")]
    listen: SocketAddr,
    /// Listen on a non-loopback address without authentication.
    #[arg(long, env = "FACTSTORE_INSECURE")]
    insecure: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FACTSTORE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Verify { data_dir } => verify(&data_dir),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
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
        let app = factstore_server::app(store);
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let local = listener.local_addr().context("no local address")?;
        tracing::info!(address = %local, data_dir = %args.data_dir.display(), "factstore listening on {local}");
        factstore_server::serve(listener, app, shutdown_signal()).await.context("server failed")?;
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

fn verify(data_dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    if !data_dir.join("log").exists() {
        bail!(
            "{} is not a factstore data folder (no log/ inside)",
            data_dir.display()
        );
    }
    let report = factstore_engine::verify::verify(&StdFileSystem, data_dir)
        .with_context(|| format!("cannot verify {}", data_dir.display()))?;
    println!(
        "{} segments, {} frames, {} events, {} aggregates, {} index runs with {} entries",
        report.segments, report.frames, report.events, report.aggregates, report.runs, report.index_entries
    );
    if report.is_ok() {
        println!("ok: no problems found");
        Ok(ExitCode::SUCCESS)
    } else {
        for problem in &report.problems {
            println!("problem: {problem}");
        }
        println!("{} problems found", report.problems.len());
        Ok(ExitCode::FAILURE)
    }
}
