//! factstore on PostgreSQL: an [`EventStore`](factstore_core::EventStore) whose events live in
//! a PostgreSQL (15 or newer) database, shared by any number of servers.
//!
//! # Layout
//! - [`store`]: [`PgStore`] and [`PgOptions`]: opening (migrations, the pool, the writer, the
//!   head listener), reads, snapshots.
//! - `writer`: group commit. Writer tasks take groups of waiting commits; each group is
//!   planned behind the groups in flight and inserted while they insert, and holds the head
//!   row's lock only to move the head and commit (or, when another server interferes, from its
//!   lookups to its commit).
//! - `chain`: the groups a store has planned and not seen commit, which later plans count on.
//! - `read_ahead`: the next pages of a reader paging through the store, read while the page it
//!   asked for is sent.
//! - `sql`: the read queries (filters to SQL) and the decoding of rows into [`Event`]s.
//! - [`lease`]: leadership among the servers on one database (a session advisory lock and an
//!   epoch that fences state writes): the leader runs projections and persistent subscriptions.
//! - [`archive`]: archiving the payloads of the oldest events to cold storage, and filling
//!   them back in on reads.
//! - [`migrate`]: the versioned schema migrations embedded in the binary, and the move of an
//!   older version's tables out of `public`.
//! - [`connect`]: how connections are made: the URL, TLS ([`tls`]: libpq's `sslmode` and
//!   `sslrootcert` on rustls), the schema as `search_path`, notices logged at debug.
//! - [`state`]: the schema registry, projections and persistent-subscription groups in
//!   tables, shared by the servers; projection and group writes fenced by the leader epoch.
//! - `types`: `timestamptz` and `json` in PostgreSQL's binary formats.
//!
//! # Invariants (see `docs/postgres.md`)
//! - A transaction commits events only while moving the head row from the position just
//!   before them to the last of them (checked by the update itself), and the row lock that
//!   update takes lasts until it commits. So commits follow each other in position order, each
//!   one after the last committed position, and a transaction that rolls back leaves no gap:
//!   its head was never visible.
//! - A group's answers are given only after its `COMMIT`, and a plan counts only groups that
//!   commit before it: a group planned behind one that failed is planned again.
//! - A page is read with the head in one statement, so one snapshot: a commit moves the head
//!   in the transaction that inserts its events, so the events a reader sees are exactly
//!   those at or below the head it sees, and a reader that sees position P sees every
//!   position below P.
//! - A page read ahead is served only when it is full and ends below the head it was read at:
//!   then it is what a fresh read returns (but for the head, raised to the server's). The last
//!   page of a reader's pass is always read at its request.
//! - `recorded_at` of a commit is `max(now, recorded_at of the head, recorded_at of the group
//!   planned before it)`: it never decreases along positions, even across servers whose
//!   clocks disagree.
//!
//! [`Event`]: factstore_core::Event

pub mod archive;
mod chain;
pub mod connect;
mod conninfo;
pub mod lease;
pub mod migrate;
mod read_ahead;
mod sql;
pub mod state;
pub mod store;
pub mod tls;
mod types;
mod writer;

pub use connect::Connector;
pub use store::{DEFAULT_SCHEMA, PgOptions, PgStore};

/// What can go wrong talking to PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("PostgreSQL: {}", describe(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("PostgreSQL connection pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("{0}")]
    Config(String),
    /// A row that does not make an event (edited by hand, or a bug).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// Cold storage cannot give an archived chunk (or take a new one).
    #[error("archive: {0}")]
    Archive(String),
}

impl From<PgError> for factstore_core::StoreError {
    fn from(error: PgError) -> factstore_core::StoreError {
        match error {
            PgError::Corrupt(_) => factstore_core::StoreError::Internal(error.to_string()),
            other => factstore_core::StoreError::Unavailable(other.to_string()),
        }
    }
}

/// A database error with its code and message, or the driver's error with its causes.
pub(crate) fn describe(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return format!("{} {}: {}", db.severity(), db.code().code(), db.message());
    }
    chain_text(error)
}

/// An error and its causes, joined by ": ", each text once: an error that says its cause in
/// its own text and also gives it as its source (as [`PgError::Db`] does) would otherwise
/// have it said twice, so a cause whose text is already there is left out.
pub fn chain_text(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}
