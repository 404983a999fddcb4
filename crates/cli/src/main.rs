//! The `factstore` binary: `serve` runs the server; the other commands are tools.
//!
//! This crate is not a library; it wires the crates together and turns errors into one line
//! and a non-zero exit. Each command lives in its own module.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod serve;
mod verify;

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
    /// How log lines are written to stderr: text for people, json (one object a line, with
    /// the request span's fields) for log collectors. FACTSTORE_LOG sets the filter.
    #[arg(long, global = true, env = "FACTSTORE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    Serve(serve::ServeArgs),
    /// Load a running server and report throughput and latency (a load generator).
    ///
    /// Every workload prints its parameters with its results, and the head position before and
    /// after, so that a saved result describes itself. Exits with status 1 if a request failed
    /// or --verify found a problem (conflicts of --expected-version are not failures). On a
    /// shared machine the generator takes CPU from the server it measures, which is why it is
    /// built to need little; see docs/benchmarks.md.
    Bench(bench::BenchArgs),
    /// Check every record and index entry of a data folder (offline: stop the server first).
    Verify {
        #[arg(long, env = "FACTSTORE_DATA_DIR", default_value = "./factstore-data")]
        data_dir: PathBuf,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FACTSTORE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        // The current span's fields (the request id, method, route) on every line; the list of
        // enclosing spans would only repeat them.
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Verify { data_dir } => verify::run(&data_dir),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
