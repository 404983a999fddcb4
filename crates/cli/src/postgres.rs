//! `--storage postgres://…`: the PostgreSQL backend for `serve`, and `factstore migrate`.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use factstore_core::{EventStore, Limits};
use factstore_postgres::{PgOptions, PgStore};

/// Checks a `--storage` value: only PostgreSQL URLs are storage URLs (the embedded engine is
/// the default, on `--data-dir`).
pub fn storage_url(url: &str) -> anyhow::Result<&str> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(url)
    } else {
        bail!(
            "--storage must be a postgres:// URL (postgres://user@host:port/database); leave it out to use the \
             embedded engine on --data-dir"
        )
    }
}

/// Opens the store on PostgreSQL, running the missing migrations first.
pub async fn open(url: &str, limits: Limits) -> anyhow::Result<Arc<dyn EventStore>> {
    let mut options = PgOptions::new(url);
    options.limits = limits;
    let store = PgStore::open(options)
        .await
        .with_context(|| format!("cannot open the store on PostgreSQL at {}", redact(url)))?;
    Ok(Arc::new(store))
}

/// The URL without its password, for logs and errors.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((user, host)) if user.contains(':') => {
            let name = user.split(':').next().unwrap_or("");
            format!("{scheme}://{name}:***@{host}{tail}")
        }
        _ => url.to_owned(),
    }
}

/// `factstore migrate --storage URL`: applies the missing migrations and exits.
#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// The PostgreSQL database: postgres://user@host:port/database.
    #[arg(long, env = "FACTSTORE_STORAGE", value_name = "URL")]
    pub storage: String,
}

pub fn migrate(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let url = storage_url(&args.storage)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let applied = runtime
        .block_on(factstore_postgres::store::migrate(&PgOptions::new(url)))
        .with_context(|| format!("cannot migrate {}", redact(url)))?;
    let newest = factstore_postgres::migrate::MIGRATIONS
        .last()
        .map_or(0, |m| m.version);
    if applied.is_empty() {
        println!("schema is up to date (migration {newest})");
    } else {
        let list: Vec<String> = applied.iter().map(i32::to_string).collect();
        println!(
            "applied migration(s) {}; schema is at migration {newest}",
            list.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("postgres://h/db?x=a:b@c"), "postgres://h/db?x=a:b@c");
    }

    #[test]
    fn only_postgres_urls_are_storage() {
        assert!(storage_url("postgres://u@h/db").is_ok());
        assert!(storage_url("postgresql://u@h/db").is_ok());
        assert!(storage_url("mysql://u@h/db").is_err());
        assert!(storage_url("./data").is_err());
    }
}
