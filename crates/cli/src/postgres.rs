//! `--storage postgres://…`: the PostgreSQL backend for `serve`, and `factstore migrate`.

use std::process::ExitCode;
use std::sync::Arc;

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use factstore_core::{EventStore, Limits};
use factstore_postgres::lease::{LeaderInfo, Lease, LeaseOptions, Role};
use factstore_postgres::state::{PgGroupStorage, PgProjectionStorage, PgSchemaStorage, spawn_schema_refresh};
use factstore_postgres::{Connector, PgOptions, PgStore};
use factstore_projections::{Projections, ProjectionsOptions};
use factstore_schemas::SchemaRegistry;
use factstore_server::{AppState, Cluster, Leadership, Placement, ServerConfig, Services};
use factstore_subscriptions::{Options as SubscriptionOptions, Subscriptions};
use tokio::task::AbortHandle;

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

/// A server on a shared database: the tasks that keep its schema registry current and follow
/// the leadership.
#[derive(Debug)]
pub struct SharedCluster {
    follow: AbortHandle,
    refresh: AbortHandle,
}

impl SharedCluster {
    /// Stops taking up (or giving up) the projections and groups: at shutdown, before they
    /// are stopped for good.
    pub fn stop_following(&self) {
        self.follow.abort();
    }
}

impl Drop for SharedCluster {
    fn drop(&mut self) {
        self.follow.abort();
        self.refresh.abort();
    }
}

/// Opens the store on PostgreSQL (running the missing migrations first; refused when it has
/// archived events and `archive` names no cold store) with everything a
/// server keeps there: the schema registry, shared by every server and kept current by
/// notifications; and the projections and groups, run by whichever server leads.
/// `advertise` is the URL other servers forward the leader's requests to.
pub async fn open_shared(
    url: &str,
    schema: &str,
    advertise: String,
    limits: Limits,
    archive: factstore_postgres::archive::ArchiveOptions,
    config: ServerConfig,
    projections_options: ProjectionsOptions,
) -> anyhow::Result<(AppState, SharedCluster)> {
    let mut options = PgOptions::new(url);
    options.schema = schema.to_owned();
    options.limits = limits;
    options.archive = archive;
    let where_ = format!("{} (schema {schema})", redact(url));
    let pg = PgStore::open(options.clone())
        .await
        .with_context(|| format!("cannot open the store on PostgreSQL at {where_}"))?;
    let storage = PgSchemaStorage::open(pg.pool())
        .await
        .with_context(|| format!("cannot open the schema registry on PostgreSQL at {where_}"))?;
    let schemas = tokio::task::spawn_blocking(move || SchemaRegistry::open(Box::new(storage)))
        .await
        .context("opening the schema registry")?
        .with_context(|| format!("cannot open the schema registry on PostgreSQL at {where_}"))?;
    let schemas = Arc::new(schemas);
    let refresh = spawn_schema_refresh(schemas.clone(), pg.connector());
    let node = uuid::Uuid::new_v4().to_string();
    let leadership = Arc::new(PgLeadership::start(pg.connector().clone(), node, advertise));
    let store: Arc<dyn EventStore> = Arc::new(pg.clone());
    let state = AppState::with_schemas(store, schemas, config).with_cluster(Cluster::new(leadership.clone()));
    let pool = pg.pool();
    let upcast = state.store.clone();
    let open: OpenServices = Box::new(move |epoch| {
        let (pool, upcast, projections_options) = (pool.clone(), upcast.clone(), projections_options.clone());
        Box::pin(async move {
            let handle = tokio::runtime::Handle::current();
            let storage = PgProjectionStorage::new(pool.clone(), epoch, handle.clone());
            let projections = Projections::open(upcast.clone(), Arc::new(storage), projections_options)
                .await
                .context("cannot open the projections")?;
            let storage = PgGroupStorage::new(pool, epoch, handle);
            let subscriptions =
                Subscriptions::open(upcast, Arc::new(storage), SubscriptionOptions::default())
                    .await
                    .context("cannot load the subscription groups")?;
            Ok(Services {
                projections,
                subscriptions,
            })
        })
    });
    let follow = tokio::spawn(follow_lease(state.clone(), leadership, open)).abort_handle();
    Ok((state, SharedCluster { follow, refresh }))
}

/// This server's place among the servers sharing the database, as the lease says.
#[derive(Debug)]
pub struct PgLeadership {
    lease: Lease,
    node: String,
    /// The epoch whose projections and groups this server serves now; -1 for none. Only
    /// when it is the lease's epoch does this server answer the leader's routes.
    serving: AtomicI64,
}

impl PgLeadership {
    /// Starts competing for leadership on the store's database.
    pub fn start(connector: Connector, node: String, url: String) -> PgLeadership {
        let lease = Lease::start(connector, LeaseOptions::new(&node, Some(url)));
        PgLeadership {
            lease,
            node,
            serving: AtomicI64::new(-1),
        }
    }
}

impl Leadership for PgLeadership {
    fn placement(&self) -> Placement {
        match self.lease.role() {
            Role::Leader { epoch } if self.serving.load(Ordering::Acquire) == epoch => Placement::Here,
            Role::Follower {
                leader: Some(LeaderInfo {
                    node, url: Some(url), ..
                }),
            } if node != self.node => Placement::At(url),
            _ => Placement::Unknown,
        }
    }
}

/// Opens the projections and groups of one epoch of leadership.
pub type OpenServices =
    Box<dyn Fn(i64) -> futures::future::BoxFuture<'static, anyhow::Result<Services>> + Send + Sync>;

/// Runs for the server's life: whenever this server becomes leader, opens the projections and
/// groups from PostgreSQL under the new epoch and serves them; whenever it stops leading,
/// stops them (their writes are refused by then anyway: the epoch fences them).
pub async fn follow_lease(state: AppState, leadership: Arc<PgLeadership>, open: OpenServices) {
    let mut roles = leadership.lease.watch();
    loop {
        let role = roles.borrow_and_update().clone();
        let serving = leadership.serving.load(Ordering::Acquire);
        match role {
            Role::Leader { epoch } if serving != epoch => match open(epoch).await {
                Ok(services) => {
                    let old = state.install_services(services);
                    leadership.serving.store(epoch, Ordering::Release);
                    tracing::info!(epoch, "serving projections and persistent subscriptions");
                    stop(old).await;
                }
                Err(error) => {
                    tracing::error!(epoch, error = %crate::client_cmds::one_line(&error), "cannot open the projections and groups; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
            Role::Follower { .. } if serving != -1 => {
                leadership.serving.store(-1, Ordering::Release);
                let placeholder = Services {
                    projections: Projections::new(
                        state.store.clone(),
                        Arc::new(factstore_projections::MemoryStorage::new()),
                        ProjectionsOptions::default(),
                    ),
                    subscriptions: Subscriptions::in_memory(state.store.clone()),
                };
                let old = state.install_services(placeholder);
                tracing::warn!(
                    epoch = serving,
                    "no longer leading: stopped serving projections and persistent subscriptions"
                );
                stop(old).await;
            }
            _ => {}
        }
        if roles.changed().await.is_err() {
            return;
        }
    }
}

/// Stops projections and groups that are no longer served.
pub async fn stop(services: Services) {
    services.projections.shutdown().await;
    services.subscriptions.close().await;
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
    /// The PostgreSQL database: postgres://user@host:port/database (sslmode and sslrootcert as
    /// libpq reads them).
    #[arg(long, env = "FACTSTORE_STORAGE", value_name = "URL")]
    pub storage: String,
    /// The schema of factstore's tables, created if missing.
    #[arg(long, env = "FACTSTORE_PG_SCHEMA", value_name = "NAME", default_value = factstore_postgres::DEFAULT_SCHEMA)]
    pub pg_schema: String,
}

pub fn migrate(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let url = storage_url(&args.storage)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut options = PgOptions::new(url);
    options.schema = args.pg_schema.clone();
    let applied = runtime
        .block_on(factstore_postgres::store::migrate(&options))
        .with_context(|| format!("cannot migrate schema {} of {}", args.pg_schema, redact(url)))?;
    let newest = factstore_postgres::migrate::MIGRATIONS
        .last()
        .map_or(0, |m| m.version);
    if applied.is_empty() {
        println!("schema {} is up to date (migration {newest})", args.pg_schema);
    } else {
        let list: Vec<String> = applied.iter().map(i32::to_string).collect();
        println!(
            "applied migration(s) {}; schema {} is at migration {newest}",
            list.join(", "),
            args.pg_schema
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
