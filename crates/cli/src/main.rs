//! The `factstore` binary: `serve` runs the server; `verify` checks a data folder; `restore`
//! copies a backup into one; the client
//! commands (`append`, `read`, `query`, `get`, `head`, `tail`, `export`, `import`,
//! `projections`, `subscriptions`, `backup`) talk to a
//! running server through `factstore-client`.
//!
//! This crate is not a library; it wires the crates together and turns errors into one line
//! and a non-zero exit. Each command lives in its own module (the client commands under
//! `client_cmds`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod backup;
mod bench;
mod client_cmds;
mod fdlimit;
mod postgres;
mod restore;
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
    about = "An event store: durable, append-only facts over HTTP/JSON",
    after_help = "Exit codes: 0 success, 1 error, 2 bad command line, 3 conflict (wrong expected version, \
                  failed condition, duplicate event id, aggregate type mismatch), 4 not found, \
                  5 no answer from the server, 6 token refused."
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
    /// Create or upgrade the PostgreSQL schema (`serve --storage` also does it at start).
    Migrate(postgres::MigrateArgs),
    /// Check every record, index entry and snapshot of a data folder (offline: stop the server first).
    Verify {
        #[arg(long, env = "FACTSTORE_DATA_DIR", default_value = "./factstore-data")]
        data_dir: PathBuf,
        /// The cold storage of archived segments (as given to serve): they are downloaded and
        /// checked too. Without it only the archive manifest is checked.
        #[arg(long, env = "FACTSTORE_ARCHIVE_URL", value_name = "URL")]
        archive_url: Option<String>,
    },
    /// Append events to one aggregate (from flags, or JSON lines on stdin).
    #[command(long_about = APPEND_HELP)]
    Append(client_cmds::append::AppendArgs),
    /// Read one aggregate's events by version.
    Read(client_cmds::read::ReadArgs),
    /// Query all events in position order, filtered.
    Query(client_cmds::query::QueryArgs),
    /// Show one event by id.
    Get(client_cmds::get::GetArgs),
    /// Show the last committed position.
    Head(client_cmds::head::HeadArgs),
    /// Follow new events as they are committed (Ctrl-C ends it).
    Tail(client_cmds::tail::TailArgs),
    /// Write every event, in position order, as JSON lines in the stored form.
    Export(client_cmds::export::ExportArgs),
    /// Append the events of an export, keeping ids, order, positions and versions.
    #[command(long_about = IMPORT_HELP)]
    Import(client_cmds::import::ImportArgs),
    /// Move the events recorded before a time to cold storage (needs serve --archive-url and
    /// an admin token); waits until done, with a progress bar.
    Archive(client_cmds::archive::ArchiveArgs),
    /// Show where the store's bytes are: hot (local disk) and cold (archived).
    Storage(client_cmds::archive::StorageArgs),
    /// Copy the whole store, while the server goes on serving, into a folder of the server's
    /// machine (needs an admin token); waits until the backup is complete.
    Backup(client_cmds::backup::BackupArgs),
    /// Copy a backup into a new or empty data folder (offline: no server), then check it as
    /// `verify` does.
    Restore {
        /// The backup folder (made by `factstore backup`).
        #[arg(long, value_name = "BACKUP")]
        from: PathBuf,
        /// The data folder to create: it must not exist or be empty.
        #[arg(long, env = "FACTSTORE_DATA_DIR")]
        data_dir: PathBuf,
        /// The cold storage of archived segments (as given to serve): they are downloaded and
        /// checked too.
        #[arg(long, env = "FACTSTORE_ARCHIVE_URL", value_name = "URL")]
        archive_url: Option<String>,
    },
    /// Manage projections (read models): list, put, show, state, rebuild, delete.
    Projections(client_cmds::projections::ProjectionsArgs),
    /// Persistent subscription groups: list, create, show, parked, replay, delete; poll, ack
    /// and nack to consume from the shell.
    Subscriptions(client_cmds::subscriptions::SubscriptionsArgs),
    /// The schema registry: put, get, list JSON Schemas per event type and version.
    Schemas(client_cmds::schemas::SchemasArgs),
    /// Upcasters between schema versions: put, list.
    Upcasters(client_cmds::schemas::UpcastersArgs),
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FACTSTORE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal: a file or a log collector would keep the
    // escape codes as text. NO_COLOR (no-color.org) turns them off there too.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
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

const APPEND_HELP: &str = "Append events to one aggregate.

From flags: factstore append account:1 --aggregate-type Account --type MoneyDeposited \
--data '{\"amount\": 500}' --expected-version 3

With --stdin, each non-blank line is either an event object
  {\"aggregate_type\": \"Account\", \"event_type\": \"MoneyDeposited\", \"event_data\": {\"amount\": 500}}
(optional: event_id, event_version, created_by, created_at, metadata); or a whole append request
  {\"expected_version\": 3, \"events\": [ ...event objects... ]}
One input holds one kind of line; every line is checked before anything is sent.

Event lines are appended in order, packed into requests under the server's limits (at most \
--batch-events, default 1000, and about --batch-bytes, default 4 MiB, per request): one request \
when they fit, atomic under --expected-version. More go in several requests, the first under \
--expected-version and, when it is given, each next one expecting the version the one before \
reached, so that nothing else lands between them; each request is atomic, the whole input is \
not, and stderr says how it was split. A request line is sent as it is, one \
atomic append, in order, never split: one over the server's limits is refused.

Events get their ids before the first attempt, so retries never append twice.";

const IMPORT_HELP: &str = "Append the events of an export (JSON lines, as `factstore export` writes them), keeping \
event_id, aggregate_type, event_type, event_version, event_data, created_at, created_by and \
metadata, in the file's order. Into an empty store, every event lands at the position and \
version the file gives. Running the same import again (after an interruption, or after it \
finished) writes nothing twice: every commit it repeats is recognised by its event ids.";

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Migrate(args) => postgres::migrate(args),
        Command::Verify {
            data_dir,
            archive_url,
        } => verify::run(&data_dir, archive_url.as_deref()),
        Command::Append(args) => client_cmds::append::run(args),
        Command::Read(args) => client_cmds::read::run(args),
        Command::Query(args) => client_cmds::query::run(args),
        Command::Get(args) => client_cmds::get::run(args),
        Command::Head(args) => client_cmds::head::run(args),
        Command::Tail(args) => client_cmds::tail::run(args),
        Command::Export(args) => client_cmds::export::run(args),
        Command::Import(args) => client_cmds::import::run(args),
        Command::Archive(args) => client_cmds::archive::run_archive(args),
        Command::Storage(args) => client_cmds::archive::run_storage(args),
        Command::Backup(args) => client_cmds::backup::run(args),
        Command::Restore {
            from,
            data_dir,
            archive_url,
        } => restore::run(&from, &data_dir, archive_url.as_deref()),
        Command::Projections(args) => client_cmds::projections::run(args),
        Command::Subscriptions(args) => client_cmds::subscriptions::run(args),
        Command::Schemas(args) => client_cmds::schemas::run_schemas(args),
        Command::Upcasters(args) => client_cmds::schemas::run_upcasters(args),
    };
    match result {
        Ok(code) => code,
        // `factstore query | head`: the reader is done, and so are we.
        Err(error) if client_cmds::is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", client_cmds::one_line(&error));
            client_cmds::exit_code(&error)
        }
    }
}
