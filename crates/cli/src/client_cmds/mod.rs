//! The commands that talk to a running server through `factstore-client`: one module each.
//!
//! They share the connection options ([`ClientArgs`]: `--url`, `--token`, `--ca-cert`,
//! `--json`), the filter options ([`FilterArgs`]), and the output conventions of [`output`]:
//! text for people by default (one line per event), JSON for scripts with `--json` (one
//! event per line, one object for the other answers). Errors are one line on stderr and an
//! exit code that tells the kind of failure ([`exit_code`]).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use factstore_client::{Client, EventFilter, TimeBound};

pub mod append;
pub mod archive;
pub mod backup;
pub mod export;
pub mod get;
pub mod head;
pub mod import;
pub mod output;
pub mod projections;
pub mod query;
pub mod read;
pub mod schemas;
pub mod subscriptions;
pub mod tail;

/// How to reach the server, and how to print.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// The server's address.
    #[arg(long, env = "FACTSTORE_URL", default_value = factstore_client::DEFAULT_URL)]
    pub url: String,
    /// A bearer token for a server started with --auth.
    #[arg(long, env = "FACTSTORE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A PEM file of a certificate authority to trust (a server with a self-signed
    /// certificate).
    #[arg(long, env = "FACTSTORE_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Print JSON for scripts: one event per line, one object for other answers.
    #[arg(long)]
    pub json: bool,
}

impl ClientArgs {
    pub fn client(&self) -> anyhow::Result<Client> {
        let mut builder = Client::builder(&self.url);
        if let Some(token) = &self.token {
            builder = builder.token(token);
        }
        if let Some(path) = &self.ca_cert {
            let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            builder = builder.add_root_certificate_pem(&pem);
        }
        Ok(builder.build()?)
    }
}

/// The filters of `GET /v1/events` and subscriptions. Every filter given must match.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FilterArgs {
    /// Events of this type (repeat it, or give a comma list: any of them matches).
    #[arg(long = "event-type", value_name = "TYPE", value_delimiter = ',')]
    pub event_types: Vec<String>,
    /// Events of aggregates of this type.
    #[arg(long)]
    pub aggregate_type: Option<String>,
    /// Events of this aggregate.
    #[arg(long)]
    pub aggregate_id: Option<String>,
    /// Events of aggregates whose id starts with this.
    #[arg(long)]
    pub aggregate_id_prefix: Option<String>,
    /// Events with this metadata.correlation_id.
    #[arg(long)]
    pub correlation_id: Option<String>,
    /// Events with this metadata.causation_id.
    #[arg(long)]
    pub causation_id: Option<String>,
    /// Events with this created_by.
    #[arg(long)]
    pub created_by: Option<String>,
}

impl FilterArgs {
    pub fn filter(&self) -> EventFilter {
        EventFilter {
            event_types: self.event_types.clone(),
            aggregate_type: self.aggregate_type.clone(),
            aggregate_id: self.aggregate_id.clone(),
            aggregate_id_prefix: self.aggregate_id_prefix.clone(),
            correlation_id: self.correlation_id.clone(),
            causation_id: self.causation_id.clone(),
            created_by: self.created_by.clone(),
        }
    }
}

/// Time bounds: RFC 3339 times or dates (a date as `--from` is the start of that day, as
/// `--to` its end).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TimeArgs {
    /// Events created at or after this time (RFC 3339, or a date YYYY-MM-DD).
    #[arg(long, value_name = "TIME")]
    pub from: Option<TimeBound>,
    /// Events created at or before this time (RFC 3339, or a date YYYY-MM-DD).
    #[arg(long, value_name = "TIME")]
    pub to: Option<TimeBound>,
    /// The store as it was at this time (on recorded_at).
    #[arg(long, value_name = "TIME")]
    pub as_of: Option<TimeBound>,
    /// Events exactly as stored, not upcast to the newest schema version.
    #[arg(long)]
    pub raw: bool,
}

/// A single-threaded runtime for one command: the commands do one thing at a time.
pub fn block_on<F: std::future::Future<Output = anyhow::Result<ExitCode>>>(
    future: F,
) -> anyhow::Result<ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(future)
}

/// The exit code of a failed command, by what failed:
/// 1 anything else, 3 a conflict (wrong expected version, failed condition, duplicate event
/// id, aggregate type mismatch), 4 not found, 5 no answer from the server, 6 a token refused.
/// (2 is clap's, for a wrong command line.)
pub fn exit_code(error: &anyhow::Error) -> ExitCode {
    let Some(error) = error
        .chain()
        .find_map(|e| e.downcast_ref::<factstore_client::Error>())
    else {
        return ExitCode::FAILURE;
    };
    use factstore_client::Error;
    match error {
        _ if error.is_conflict() => ExitCode::from(3),
        _ if error.is_not_found() => ExitCode::from(4),
        Error::Transport(_) => ExitCode::from(5),
        Error::Unauthorized { .. } | Error::Forbidden { .. } => ExitCode::from(6),
        _ => ExitCode::FAILURE,
    }
}

/// Whether the error is only that stdout was closed (`factstore query | head`): not a failure.
pub fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .any(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

/// The error as one line: the contexts and causes joined with ": ", stopping at a client
/// error (its message already says everything, and its sources repeat it).
pub fn one_line(error: &anyhow::Error) -> String {
    let mut parts = Vec::new();
    for cause in error.chain() {
        parts.push(cause.to_string());
        if cause.is::<factstore_client::Error>() {
            break;
        }
    }
    parts.join(": ")
}
