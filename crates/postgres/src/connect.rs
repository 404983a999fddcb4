//! [`Connector`]: how every connection of a store is made. The connection string with its TLS
//! parameters read here (see [`crate::tls`]), the schema as `search_path`, and the driver task
//! of each connection, which logs PostgreSQL's notices at debug.
//!
//! Notices are PostgreSQL's remarks on statements that did what was asked ("schema … already
//! exists, skipping"); tokio-postgres logs them at info when it drives a connection itself,
//! which puts one server's routine start in every other server's log.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures::StreamExt;
use futures::future::BoxFuture;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client, Socket};

use crate::PgError;
use crate::conninfo::take_tls_params;
use crate::store::PgOptions;
use crate::tls::{MakeRustls, RootCert, RustlsStream, SslMode};

/// A connection whose messages (notifications, notices) its owner reads.
pub type PgConnection = tokio_postgres::Connection<Socket, RustlsStream<Socket>>;

/// The settings and the TLS connector of one store's connections. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Connector {
    config: tokio_postgres::Config,
    tls: MakeRustls,
    schema: String,
}

impl Connector {
    /// The connector for `options`: parses the URL, reads the CA certificates its `sslmode`
    /// and `sslrootcert` ask for, and sets `search_path` to the schema. A URL that sets
    /// `search_path` itself is refused: the schema is [`PgOptions::schema`].
    pub fn new(options: &PgOptions) -> Result<Connector, PgError> {
        check_schema_name(&options.schema)?;
        let info = take_tls_params(&options.url)?;
        let mut config: tokio_postgres::Config = info
            .rest
            .parse()
            .map_err(|e| PgError::Config(format!("bad PostgreSQL URL: {}", crate::describe(&e))))?;
        let mode = match &info.sslmode {
            Some(mode) => SslMode::parse(mode)?,
            None => SslMode::Prefer,
        };
        let tls = MakeRustls::new(mode, &RootCert::parse(info.sslrootcert.as_deref()))?;
        config.ssl_mode(mode.driver_mode());
        let mut extra = config.get_options().unwrap_or_default().to_owned();
        let lower = extra.to_ascii_lowercase();
        if lower.contains("search_path") || lower.contains("search-path") {
            return Err(PgError::Config(format!(
                "the PostgreSQL URL sets search_path (options={extra}): name factstore's schema with \
                 --pg-schema (FACTSTORE_PG_SCHEMA) instead (now '{}')",
                options.schema
            )));
        }
        if !extra.is_empty() {
            extra.push(' ');
        }
        extra.push_str(&format!("-c search_path={}", options.schema));
        config.options(extra);
        if config.get_application_name().is_none() {
            config.application_name("factstore");
        }
        config.connect_timeout(Duration::from_secs(10));
        Ok(Connector {
            config,
            tls,
            schema: options.schema.clone(),
        })
    }

    /// The schema every table is in (and `search_path` of every connection).
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The parsed settings (with the schema as `search_path`).
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// A connection whose driver runs on its own task; the driver ends when the client is
    /// dropped.
    pub async fn connect(&self) -> Result<Client, PgError> {
        let (client, _) = self.connect_with_driver().await?;
        Ok(client)
    }

    /// [`Connector::connect`], with the driver's task: aborting it closes the connection at
    /// once, where dropping the client lets the driver say goodbye first.
    pub async fn connect_with_driver(&self) -> Result<(Client, JoinHandle<()>), tokio_postgres::Error> {
        let (client, connection) = self.connect_raw().await?;
        Ok((client, tokio::spawn(drive(connection))))
    }

    /// A connection and its driver, for a caller that reads its messages (LISTEN).
    pub async fn connect_raw(&self) -> Result<(Client, PgConnection), tokio_postgres::Error> {
        self.config.connect(self.tls.clone()).await
    }

    /// A pool of at most `size` connections, made as [`Connector::connect`] makes them.
    pub fn pool(&self, size: usize) -> Result<Pool, PgError> {
        let manager = Manager::from_connect(
            self.config.clone(),
            self.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        Pool::builder(manager)
            .max_size(size.max(1))
            .build()
            .map_err(|e| PgError::Config(format!("connection pool: {e}")))
    }
}

impl deadpool_postgres::Connect for Connector {
    fn connect(
        &self,
        _config: &tokio_postgres::Config,
    ) -> BoxFuture<'_, Result<(Client, JoinHandle<()>), tokio_postgres::Error>> {
        Box::pin(self.connect_with_driver())
    }
}

/// Drives a connection to its end: notices go to the log at debug, notifications nowhere
/// (nobody listens on these), a broken connection at warn.
async fn drive(mut connection: PgConnection) {
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    while let Some(message) = messages.next().await {
        match message {
            Ok(AsyncMessage::Notice(notice)) => tracing::debug!(
                severity = notice.severity(),
                code = notice.code().code(),
                "PostgreSQL: {}",
                notice.message()
            ),
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(error = %crate::describe(&error), "PostgreSQL connection closed");
                return;
            }
        }
    }
}

/// Schema names are identifiers written into SQL and `search_path` unquoted: lower-case
/// letters, digits and '_', not starting with a digit, at most 63 bytes.
fn check_schema_name(schema: &str) -> Result<(), PgError> {
    let valid = !schema.is_empty()
        && schema.len() <= 63
        && !schema.starts_with(|c: char| c.is_ascii_digit())
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(PgError::Config(format!(
            "schema '{schema}': use lower-case letters, digits and '_' (not first), at most 63 of them"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        for good in ["factstore", "fs_test_1", "_x", "a1"] {
            assert!(check_schema_name(good).is_ok(), "{good}");
        }
        for bad in ["", "1a", "Factstore", "a-b", "a b", "a;drop", &"x".repeat(64)] {
            assert!(check_schema_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_schema_is_the_search_path_and_the_url_may_not_set_another() {
        let mut options = PgOptions::new("postgres://u@h/db?options=-c%20statement_timeout%3D5s");
        options.schema = "mine".into();
        let connector = Connector::new(&options).expect("a connector");
        assert_eq!(
            connector.config().get_options(),
            Some("-c statement_timeout=5s -c search_path=mine")
        );
        let options = PgOptions::new("postgres://u@h/db?options=-c%20search_path%3Dother");
        let error = Connector::new(&options)
            .expect_err("search_path in the URL")
            .to_string();
        assert!(error.contains("--pg-schema"), "{error}");
    }

    #[test]
    fn sslmode_reaches_the_driver_as_it_understands_it() {
        use tokio_postgres::config::SslMode as Driver;
        for (mode, driver) in [
            ("", Driver::Prefer),
            ("?sslmode=disable", Driver::Disable),
            ("?sslmode=prefer", Driver::Prefer),
            ("?sslmode=require", Driver::Require),
            ("?sslmode=verify-ca", Driver::Require),
            ("?sslmode=verify-full", Driver::Require),
        ] {
            let options = PgOptions::new(&format!("postgres://u@h/db{mode}"));
            let connector = Connector::new(&options).expect(mode);
            assert_eq!(connector.config().get_ssl_mode(), driver, "{mode}");
        }
        let error = Connector::new(&PgOptions::new("postgres://u@h/db?sslmode=allow"))
            .expect_err("allow")
            .to_string();
        assert!(error.contains("sslmode=allow is not supported"), "{error}");
        let error = Connector::new(&PgOptions::new(
            "postgres://u@h/db?sslmode=require&sslrootcert=system",
        ))
        .expect_err("system roots without the name")
        .to_string();
        assert!(error.contains("use sslmode=verify-full"), "{error}");
        let error = Connector::new(&PgOptions::new(
            "postgres://u@h/db?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem",
        ))
        .expect_err("a missing root file")
        .to_string();
        assert!(error.contains("sslrootcert /nonexistent/ca.pem"), "{error}");
    }
}
