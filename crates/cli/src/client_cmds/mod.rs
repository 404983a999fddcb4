//! The commands that talk to a running server through `factstore-client`: one module each.
//!
//! They share the connection options ([`ClientArgs`]: `--url`, `--token`, `--ca-cert`,
//! `--json`), the filter options ([`FilterArgs`]), and the output conventions of [`output`]:
//! text for people by default (one line per event), JSON for scripts with `--json` (one
//! event per line, one object for the other answers). Errors are one line on stderr and an
//! exit code that tells the kind of failure ([`exit_code`]).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

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

/// Whether the command sends a token: a 401 then means a token refused, not one missing.
static TOKEN_GIVEN: AtomicBool = AtomicBool::new(false);

impl ClientArgs {
    pub fn client(&self) -> anyhow::Result<Client> {
        let mut builder = Client::builder(&self.url);
        if let Some(token) = &self.token {
            builder = builder.token(token);
            TOKEN_GIVEN.store(true, Ordering::Relaxed);
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
/// error (its message already says everything, and its sources repeat it). A cause whose text
/// the line already holds is left out: many errors say their causes in their own text ("I/O
/// error on data: data is in use by another factstore process") and give them as their
/// sources too. A 401 names the option that gives the token.
pub fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let client_error = cause.downcast_ref::<factstore_client::Error>();
        let text = match client_error {
            Some(factstore_client::Error::Unauthorized { message }) => {
                unauthorized(message, TOKEN_GIVEN.load(Ordering::Relaxed))
            }
            _ => cause.to_string(),
        };
        if line.is_empty() {
            line = text;
        } else if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        if client_error.is_some() {
            break;
        }
    }
    line
}

/// A 401 in words that say what to do: give a token, or check the one given.
fn unauthorized(message: &str, token_given: bool) -> String {
    if token_given {
        format!("the server refused the token: check --token or FACTSTORE_TOKEN (the server said: {message})")
    } else {
        format!(
            "the server requires a token: pass --token or set FACTSTORE_TOKEN (the server said: {message})"
        )
    }
}

/// Tells on stderr that a listing stopped at `--limit` while more was there, and how to go on
/// (`more`: "more events match: continue with --after-position 42"). Stdout is flushed
/// first, so that the note follows what was printed.
pub fn stopped_at_limit(printer: &mut output::Printer, limit: u64, more: &str) -> std::io::Result<()> {
    printer.flush()?;
    eprintln!("stopped at --limit {limit}; {more}");
    Ok(())
}

/// `text` as one shell word: as it is when it has only characters no shell treats
/// specially, in single quotes otherwise (for a key in a hint to copy).
pub fn shell_word(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:/@%+=,".contains(c));
    if plain {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// How appends are split into requests under the server's limits (a server takes at most 1000
/// events and 16 MiB per request unless started with other `--max-events-per-request` and
/// `--max-request-bytes`).
#[derive(Debug, Clone, clap::Args)]
pub struct BatchArgs {
    /// At most this many events per request (the server's limit is 1000 unless it was started
    /// with another --max-events-per-request).
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_events: u64,
    /// At most about this many bytes of JSON per request; an event larger than that goes
    /// alone (the server's limit is 16 MiB unless it was started with another
    /// --max-request-bytes).
    #[arg(long, value_name = "BYTES", default_value_t = 4 << 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_401_names_the_token_option() {
        let missing = unauthorized("this server needs a token", false);
        assert!(
            missing.contains("pass --token or set FACTSTORE_TOKEN"),
            "{missing}"
        );
        let refused = unauthorized("the token is not valid", true);
        assert!(refused.contains("refused the token"), "{refused}");
        assert!(refused.contains("the token is not valid"), "{refused}");
    }

    #[test]
    fn shell_words_are_quoted_when_needed() {
        assert_eq!(shell_word("account:ACC-1"), "account:ACC-1");
        assert_eq!(shell_word("a b"), "'a b'");
        assert_eq!(shell_word("it's"), "'it'\\''s'");
        assert_eq!(shell_word(""), "''");
    }
}
