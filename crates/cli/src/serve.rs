//! `factstore serve`: check the options, open the store, bind the listener, serve until SIGTERM
//! or Ctrl-C, drain, close the store.
//!
//! Everything that can be wrong in the options (the auth file, the TLS files, the limits, a
//! non-loopback address without auth) is found before the store is opened, and reported as
//! one line naming the flag or the file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use factstore_core::Limits;
use factstore_engine::store::EmbeddedStore;
use factstore_engine::{Engine, EngineOptions};
use factstore_projections::{JournalStorage, Projections, ProjectionsOptions};
use factstore_schemas::{JournalStorage as SchemaJournal, SchemaRegistry};
use factstore_server::{AppState, Auth, Drain, ServeOptions, ServerConfig};
use factstore_subscriptions::{FileStorage, Options as SubscriptionOptions, Subscriptions};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The embedded engine's data folder, created if missing.
    #[arg(long, env = "FACTSTORE_DATA_DIR", default_value = "./factstore-data")]
    pub data_dir: PathBuf,
    /// Run on PostgreSQL instead of the embedded engine: postgres://user@host:port/database,
    /// with sslmode (disable, prefer, require, verify-ca, verify-full) and sslrootcert=FILE as
    /// libpq reads them (the tables are created or migrated at start).
    #[arg(long, env = "FACTSTORE_STORAGE", value_name = "URL")]
    pub storage: Option<String>,
    /// With --storage postgres://: the schema of factstore's tables (created if missing; the
    /// tables of a version that kept them in public are moved there).
    #[arg(long, env = "FACTSTORE_PG_SCHEMA", value_name = "NAME", default_value = factstore_postgres::DEFAULT_SCHEMA)]
    pub pg_schema: String,
    /// The address to listen on.
    #[arg(long, env = "FACTSTORE_LISTEN", default_value = "127.0.0.1:6180")]
    pub listen: SocketAddr,
    /// A TOML file of bearer tokens with their roles (reader, writer, admin) and optional
    /// aggregate id prefixes; without it, every request is allowed.
    #[arg(long, env = "FACTSTORE_AUTH", value_name = "FILE")]
    pub auth: Option<PathBuf>,
    /// Serve HTTPS with this PEM certificate chain (needs --tls-key).
    #[arg(long, env = "FACTSTORE_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "FACTSTORE_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Listen on a non-loopback address without --auth.
    #[arg(long, env = "FACTSTORE_INSECURE")]
    pub insecure: bool,
    /// On SIGTERM or Ctrl-C, how long to wait for requests in flight before dropping their
    /// connections, in seconds.
    #[arg(long, env = "FACTSTORE_SHUTDOWN_TIMEOUT", value_name = "SECONDS", default_value_t = 30.0,
          value_parser = parse_seconds)]
    pub shutdown_timeout: f64,
    /// How long a client may take to send a request's body once its head arrived, in seconds;
    /// a connection whose body is still incomplete then is closed without an answer.
    #[arg(long, env = "FACTSTORE_BODY_READ_TIMEOUT", value_name = "SECONDS", default_value_t = 30.0,
          value_parser = parse_seconds)]
    pub body_read_timeout: f64,
    /// The most connections served at once. Beyond it a few more are accepted to answer
    /// /health and 503 (Retry-After) for anything else. Lowered, with a warning, to what the
    /// file descriptor limit allows (the soft limit is raised towards the hard one first).
    #[arg(
        long,
        env = "FACTSTORE_MAX_CONNECTIONS",
        value_name = "N",
        default_value_t = 4096
    )]
    pub max_connections: usize,
    /// The most live subscriptions (GET /v1/subscribe) at once; more are answered 503
    /// store_unavailable with Retry-After until one ends.
    #[arg(
        long,
        env = "FACTSTORE_MAX_SUBSCRIBERS",
        value_name = "N",
        default_value_t = 1000
    )]
    pub max_subscribers: usize,
    /// Memory for the live feed: the newest events with their JSON rendered once, shared by
    /// every subscription and by reads of the tail. Older events are read from the store.
    #[arg(long, env = "FACTSTORE_LIVE_FEED_BYTES", value_name = "BYTES", default_value = "64MiB",
          value_parser = parse_size)]
    pub live_feed_bytes: usize,
    /// Projections keyed by aggregate_id snapshot a key's state every N of its events, so that
    /// time travel and source=event_store reads do not fold from the first event; 0 never.
    #[arg(
        long,
        env = "FACTSTORE_SNAPSHOT_EVERY",
        value_name = "N",
        default_value_t = 1000
    )]
    pub snapshot_every: u64,
    /// Cold storage for archiving (`POST /v1/admin/archive`, `factstore archive`):
    /// `s3://bucket/prefix` (credentials, region and AWS_ENDPOINT_URL from the usual AWS
    /// environment variables) or `file:///path`. A store that has archived events needs it to
    /// open.
    #[arg(long, env = "FACTSTORE_ARCHIVE_URL", value_name = "URL")]
    pub archive_url: Option<String>,
    /// With --storage postgres://: the URL at which the other servers on the database reach
    /// this one, to forward requests for projections and persistent subscriptions while it
    /// leads. By default http(s)://<the address it listens on>.
    #[arg(long, env = "FACTSTORE_ADVERTISE_URL", value_name = "URL")]
    pub advertise_url: Option<String>,
    /// Bytes of archived segments kept in <data-dir>/archive-cache for reads (default 4GiB);
    /// with --storage postgres://, bytes of archived chunks kept in memory (default 256MiB).
    #[arg(long, env = "FACTSTORE_ARCHIVE_CACHE_BYTES", value_name = "BYTES", value_parser = parse_size)]
    pub archive_cache_bytes: Option<usize>,
    /// The size at which a log segment is sealed and a new one started (the unit of archiving).
    #[arg(long, env = "FACTSTORE_SEGMENT_BYTES", value_name = "BYTES", default_value = "256MiB",
          value_parser = parse_size, hide = true)]
    pub segment_bytes: usize,
    /// Events indexed in memory before they are written to an index run (the index checkpoint).
    #[arg(long, env = "FACTSTORE_MEMTABLE_EVENTS", value_name = "N", default_value_t = 256 * 1024, hide = true)]
    pub memtable_events: usize,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// The limits of the API contract. Sizes take a plain number of bytes or a KiB/MiB/GiB suffix.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Limits")]
pub struct LimitArgs {
    /// Longest aggregate_id, in bytes (at most 65535).
    #[arg(long, env = "FACTSTORE_MAX_AGGREGATE_ID_BYTES", value_name = "BYTES", default_value = "255",
          value_parser = parse_size)]
    pub max_aggregate_id_bytes: usize,
    /// Longest aggregate_type, in bytes (at most 255).
    #[arg(long, env = "FACTSTORE_MAX_AGGREGATE_TYPE_BYTES", value_name = "BYTES", default_value = "50",
          value_parser = parse_size)]
    pub max_aggregate_type_bytes: usize,
    /// Longest event_type, in bytes (at most 255).
    #[arg(long, env = "FACTSTORE_MAX_EVENT_TYPE_BYTES", value_name = "BYTES", default_value = "100",
          value_parser = parse_size)]
    pub max_event_type_bytes: usize,
    /// Longest created_by, in bytes (at most 255).
    #[arg(long, env = "FACTSTORE_MAX_CREATED_BY_BYTES", value_name = "BYTES", default_value = "255",
          value_parser = parse_size)]
    pub max_created_by_bytes: usize,
    /// Longest metadata.correlation_id or causation_id, in bytes (at most 255).
    #[arg(long, env = "FACTSTORE_MAX_LINK_ID_BYTES", value_name = "BYTES", default_value = "255",
          value_parser = parse_size)]
    pub max_link_id_bytes: usize,
    /// Largest event_data plus metadata of one event (at most 64MiB).
    #[arg(long, env = "FACTSTORE_MAX_EVENT_PAYLOAD_BYTES", value_name = "BYTES", default_value = "1MiB",
          value_parser = parse_size)]
    pub max_event_payload_bytes: usize,
    /// Most events in one append request (at most 100000).
    #[arg(
        long,
        env = "FACTSTORE_MAX_EVENTS_PER_REQUEST",
        value_name = "N",
        default_value = "1000"
    )]
    pub max_events_per_request: usize,
    /// Largest request body (at most 256MiB).
    #[arg(long, env = "FACTSTORE_MAX_REQUEST_BYTES", value_name = "BYTES", default_value = "16MiB",
          value_parser = parse_size)]
    pub max_request_bytes: usize,
    /// Most events in one page of a read: the largest `limit` (at most 100000).
    #[arg(
        long,
        env = "FACTSTORE_MAX_PAGE_EVENTS",
        value_name = "N",
        default_value = "10000"
    )]
    pub max_page_events: usize,
}

impl LimitArgs {
    /// The limits, each checked against its ceiling with an error naming the flag.
    pub fn limits(&self) -> anyhow::Result<Limits> {
        let limits = Limits {
            aggregate_id_bytes_max: self.max_aggregate_id_bytes,
            aggregate_type_bytes_max: self.max_aggregate_type_bytes,
            event_type_bytes_max: self.max_event_type_bytes,
            created_by_bytes_max: self.max_created_by_bytes,
            link_id_bytes_max: self.max_link_id_bytes,
            event_payload_bytes_max: self.max_event_payload_bytes,
            events_per_request_max: self.max_events_per_request,
            request_bytes_max: self.max_request_bytes,
            page_events_max: self.max_page_events,
        };
        let ceiling = Limits::CEILING;
        let flags = [
            (
                "--max-aggregate-id-bytes",
                limits.aggregate_id_bytes_max,
                ceiling.aggregate_id_bytes_max,
            ),
            (
                "--max-aggregate-type-bytes",
                limits.aggregate_type_bytes_max,
                ceiling.aggregate_type_bytes_max,
            ),
            (
                "--max-event-type-bytes",
                limits.event_type_bytes_max,
                ceiling.event_type_bytes_max,
            ),
            (
                "--max-created-by-bytes",
                limits.created_by_bytes_max,
                ceiling.created_by_bytes_max,
            ),
            (
                "--max-link-id-bytes",
                limits.link_id_bytes_max,
                ceiling.link_id_bytes_max,
            ),
            (
                "--max-event-payload-bytes",
                limits.event_payload_bytes_max,
                ceiling.event_payload_bytes_max,
            ),
            (
                "--max-events-per-request",
                limits.events_per_request_max,
                ceiling.events_per_request_max,
            ),
            (
                "--max-request-bytes",
                limits.request_bytes_max,
                ceiling.request_bytes_max,
            ),
            (
                "--max-page-events",
                limits.page_events_max,
                ceiling.page_events_max,
            ),
        ];
        for (flag, value, max) in flags {
            if value == 0 || value > max {
                bail!("{flag} must be between 1 and {max}, not {value}");
            }
        }
        // The flags above cover every limit; this keeps them honest if a limit is added.
        limits.check().map_err(anyhow::Error::msg)?;
        Ok(limits)
    }
}

/// A size: digits, optionally followed by KiB, MiB or GiB (any case).
fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let lower = text.to_ascii_lowercase();
    let (digits, unit) = [("kib", 1usize << 10), ("mib", 1 << 20), ("gib", 1 << 30)]
        .into_iter()
        .find_map(|(suffix, unit)| lower.strip_suffix(suffix).map(|d| (d.trim(), unit)))
        .unwrap_or((lower.as_str(), 1));
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "'{text}' is not a size (a whole number, optionally with KiB, MiB or GiB)"
        ));
    }
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| format!("'{text}' is too large"))
}

fn parse_seconds(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && (0.0..=86_400.0).contains(&seconds) => Ok(seconds),
        _ => Err(format!("'{text}' is not a number of seconds from 0 to 86400")),
    }
}

/// Threads of the runtime's blocking pool (see `run`): four per core, at least 16.
fn blocking_threads_max() -> usize {
    std::thread::available_parallelism().map_or(16, |cores| (4 * cores.get()).max(16))
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let limits = args.limits.limits()?;
    if args.body_read_timeout <= 0.0 {
        bail!("--body-read-timeout must be more than 0 seconds");
    }
    for (flag, value) in [
        ("--max-connections", args.max_connections),
        ("--max-subscribers", args.max_subscribers),
    ] {
        if value == 0 {
            bail!("{flag} must be at least 1");
        }
    }
    let auth = match &args.auth {
        Some(path) => {
            let auth = Auth::load(path)?;
            warn_if_readable_by_others(path);
            Some(auth)
        }
        None => None,
    };
    if !args.listen.ip().is_loopback() && auth.is_none() && !args.insecure {
        bail!(
            "refusing to listen on {} without authentication: give --auth FILE, or --insecure to do it anyway",
            args.listen
        );
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(factstore_server::tls::load(cert, key)?),
        _ => None,
    };
    if !args.listen.ip().is_loopback() && auth.is_some() && tls.is_none() {
        tracing::warn!(
            "listening on {} with tokens but without TLS: tokens cross the network in clear text",
            args.listen
        );
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    let auth_tokens = auth.as_ref().map(Auth::len);
    let archive = match &args.archive_url {
        Some(url) => {
            let store = factstore_engine::archive::ObjectColdStore::from_url(url)
                .with_context(|| format!("cannot use the archive URL {url}"))?;
            let mut options = factstore_engine::archive::ArchiveOptions::new(Arc::new(store));
            options.cache_bytes_max = args.archive_cache_bytes.map_or(4 << 30, |b| b as u64);
            Some(options)
        }
        None => None,
    };
    // PostgreSQL keeps archived chunks in a cache in memory: a smaller default.
    let pg_archive = factstore_postgres::archive::ArchiveOptions {
        cold: archive.as_ref().map(|a| a.store.clone()),
        cache_bytes_max: args.archive_cache_bytes.map_or(256 << 20, |b| b as u64),
        ..factstore_postgres::archive::ArchiveOptions::default()
    };
    let options = EngineOptions {
        limits: limits.clone(),
        segment_bytes_max: args.segment_bytes as u64,
        memtable_events_max: args.memtable_events.max(1),
        archive,
        ..EngineOptions::default()
    };
    let fs = options.fs.clone();
    // The address is taken before the store is opened, so that a taken port leaves no data
    // folder behind; it is listened on once the store is open (until then connections are
    // refused, not left waiting).
    let socket = reserve(args.listen).with_context(|| format!("cannot listen on {}", args.listen))?;
    // The embedded engine opens before the runtime starts (it holds the data folder's lock);
    // PostgreSQL inside it, and needs no folder: everything it keeps is in the database.
    let (engine, store_location) = match &args.storage {
        Some(url) => {
            let url = crate::postgres::storage_url(url)?;
            (
                None,
                format!("{} (schema {})", crate::postgres::redact(url), args.pg_schema),
            )
        }
        None => {
            let engine = Engine::open(&args.data_dir, options)
                .with_context(|| format!("cannot open the store in {}", args.data_dir.display()))?;
            (Some(Arc::new(engine)), args.data_dir.display().to_string())
        }
    };
    // The embedded engine reads on the blocking pool, and the events it returns are slices of
    // read buffers that the request's thread frees. The allocator gives such memory back only
    // when the thread that allocated it runs again, so every idle pool thread keeps the buffers
    // of its last reads: with tokio's default of 512 threads kept 10 s, a thousand concurrent
    // readers held 1.5 GB, and 64 threads still 390 MB. A few threads per core keep the disk
    // and the cores busy; idle ones leave after a second, and their memory with them.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(blocking_threads_max())
        .thread_keep_alive(Duration::from_secs(1))
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let drain = runtime.block_on(async {
        let mut config = ServerConfig::default();
        config.feed_bytes_max = args.live_feed_bytes;
        config.subscribers_max = args.max_subscribers;
        if let Some(auth) = auth {
            config = config.with_auth(auth);
        }
        let projections_options = ProjectionsOptions {
            snapshot_every: args.snapshot_every,
            ..ProjectionsOptions::default()
        };
        let (state, cluster) = match (&engine, &args.storage) {
            (Some(engine), _) => {
                let state = open_embedded(&args, engine, fs, config, projections_options).await?;
                (state, None)
            }
            (None, Some(url)) => {
                let advertise = advertise_url(args.advertise_url.as_deref(), scheme, args.listen)?;
                let (state, cluster) = crate::postgres::open_shared(
                    url,
                    &args.pg_schema,
                    advertise,
                    limits,
                    pg_archive,
                    config,
                    projections_options,
                )
                .await?;
                (state, Some(cluster))
            }
            (None, None) => bail!("no store to serve"),
        };
        let shutdown = state.shutdown.clone();
        let app = factstore_server::app_with_state(state.clone());
        // Listening once the store is open: a client that can connect is answered.
        let listener = socket
            .listen(LISTEN_BACKLOG)
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let local = listener.local_addr().context("no local address")?;
        let serve_options = ServeOptions {
            tls,
            drain_timeout: Duration::from_secs_f64(args.shutdown_timeout),
            body_read_timeout: Duration::from_secs_f64(args.body_read_timeout),
            max_connections: crate::fdlimit::connections_allowed(
                args.max_connections,
                factstore_server::serve::OVERFLOW_CONNECTIONS,
            ),
            ..ServeOptions::default()
        };
        tracing::info!(
            address = %local,
            storage = %store_location,
            auth_tokens,
            "factstore listening on {scheme}://{local}"
        );
        let signal = async move {
            shutdown_signal().await;
            // Subscriptions end when this token is cancelled; the drain waits for them.
            shutdown.cancel();
        };
        let drain = factstore_server::serve_with(listener, app, serve_options, signal)
            .await
            .context("server failed");
        // After the drain: no request uses them any more. Each fold task ends after its batch
        // and writes the checkpoint that lags in memory; the groups write their last deliveries.
        // A server sharing a database stops competing for leadership first, and gives it up
        // (its session ends) once its own are stopped, so the next leader takes over at once.
        if let Some(cluster) = &cluster {
            cluster.stop_following();
        }
        crate::postgres::stop(state.services()).await;
        drop(cluster);
        drain
    })?;
    // Every connection has finished or been dropped; stop the runtime too (a blocking read
    // still running gets a moment), so nothing uses the store when it closes.
    runtime.shutdown_timeout(Duration::from_secs(5));
    if let Some(engine) = engine {
        engine.close();
    }
    match drain {
        Drain::Complete => tracing::info!("factstore stopped: every request in flight was answered"),
        Drain::TimedOut { dropped } => tracing::warn!(
            dropped,
            "factstore stopped: {dropped} connection(s) were dropped at the shutdown timeout"
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// Connections the kernel queues for the accept loop (tokio's own default).
const LISTEN_BACKLOG: u32 = 1024;

/// A socket bound to `address` and not yet listening. SO_REUSEADDR as for any listener: a
/// restarted server may bind while its predecessor's connections are in TIME_WAIT.
fn reserve(address: SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
    let socket = match address {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    Ok(socket)
}

/// The URL other servers forward to: the one given, or this server's own address.
fn advertise_url(given: Option<&str>, scheme: &str, local: SocketAddr) -> anyhow::Result<String> {
    match given {
        Some(url) => {
            let parsed: Option<hyper::Uri> = url.parse().ok();
            let usable = parsed.as_ref().is_some_and(|uri| {
                matches!(uri.scheme_str(), Some("http" | "https"))
                    && uri.host().is_some_and(|host| !host.is_empty())
                    && uri
                        .path_and_query()
                        .is_none_or(|p| p.as_str() == "/" || p.as_str().is_empty())
            });
            if !usable {
                bail!(
                    "--advertise-url must be an http:// or https:// URL with a host and no path \
                     (as http://10.0.0.5:6180), not '{url}'"
                );
            }
            Ok(url.trim_end_matches('/').to_owned())
        }
        None if local.ip().is_unspecified() || local.port() == 0 => bail!(
            "--listen {local} is not an address other servers can connect to: give --advertise-url \
             (the URL at which they reach this server)"
        ),
        None => Ok(format!("{scheme}://{local}")),
    }
}

/// The embedded engine's schema registry, projections and groups, in its data folder beside
/// the event log. They read through the schema layer, so they see upcast events like every
/// other reader.
async fn open_embedded(
    args: &ServeArgs,
    engine: &Arc<Engine>,
    fs: Arc<dyn factstore_engine::io::FileSystem>,
    config: ServerConfig,
    projections_options: ProjectionsOptions,
) -> anyhow::Result<AppState> {
    let schemas_dir = args.data_dir.join("schemas");
    let schemas = SchemaJournal::open(fs.clone(), &schemas_dir)
        .and_then(|storage| SchemaRegistry::open(Box::new(storage)))
        .with_context(|| format!("cannot open the schema registry in {}", schemas_dir.display()))?;
    let store: Arc<dyn factstore_core::EventStore> = Arc::new(EmbeddedStore::new(engine.clone()));
    let state = AppState::with_schemas(store, Arc::new(schemas), config);
    let projections_dir = args.data_dir.join("projections");
    let storage = JournalStorage::open(fs.clone(), &projections_dir)
        .with_context(|| format!("cannot open the projections in {}", projections_dir.display()))?;
    let projections = Projections::open(state.store.clone(), Arc::new(storage), projections_options)
        .await
        .with_context(|| format!("cannot open the projections in {}", projections_dir.display()))?;
    let subscriptions_dir = args.data_dir.join("subscriptions");
    let storage = FileStorage::open(fs, &subscriptions_dir)
        .with_context(|| format!("cannot open {}", subscriptions_dir.display()))?;
    let subscriptions = Subscriptions::open(
        state.store.clone(),
        Arc::new(storage),
        SubscriptionOptions::default(),
    )
    .await
    .with_context(|| {
        format!(
            "cannot load the subscription groups in {}",
            subscriptions_dir.display()
        )
    })?;
    let backup = crate::backup::EmbeddedBackup {
        engine: engine.clone(),
        projections: projections.clone(),
        subscriptions: subscriptions.clone(),
        schemas: state.schemas.clone(),
    };
    Ok(state
        .with_subscriptions(subscriptions)
        .with_projections(projections)
        .with_backup(Arc::new(backup)))
}

/// Tokens are secrets: say so when the file is readable by anyone but its owner.
fn warn_if_readable_by_others(path: &std::path::Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                "the auth file {} may be read by other users (mode {:o}); chmod 600 it",
                path.display(),
                meta.permissions().mode() & 0o777
            );
        }
    }
    #[cfg(not(unix))]
    let _ = path;
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
    tracing::info!("shutting down: refusing new connections, finishing requests in flight");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("16 mib"), Ok(16 << 20));
        assert_eq!(parse_size("2KiB"), Ok(2048));
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("1.5MiB").is_err());
        assert!(parse_size("1MB").is_err());
    }

    #[test]
    fn the_advertised_url_is_one_other_servers_can_reach() {
        let any: SocketAddr = "0.0.0.0:6180".parse().expect("address");
        let local: SocketAddr = "10.0.0.5:6180".parse().expect("address");
        assert_eq!(
            advertise_url(Some("http://10.0.0.5:6180"), "http", any).expect("given"),
            "http://10.0.0.5:6180"
        );
        assert_eq!(
            advertise_url(Some("https://node-1.internal:6180/"), "https", any).expect("given"),
            "https://node-1.internal:6180"
        );
        assert_eq!(
            advertise_url(None, "http", local).expect("own address"),
            "http://10.0.0.5:6180"
        );
        for bad in [
            "10.0.0.5:6180",
            "ftp://10.0.0.5",
            "http://",
            "http://10.0.0.5:6180/v1",
            "not a url",
        ] {
            let error = advertise_url(Some(bad), "http", any).expect_err(bad).to_string();
            assert!(
                error.contains("--advertise-url") && error.contains(bad),
                "{error}"
            );
        }
        let error = advertise_url(None, "http", any)
            .expect_err("unspecified")
            .to_string();
        assert!(error.contains("give --advertise-url"), "{error}");
        let error = advertise_url(None, "http", "10.0.0.5:0".parse().expect("address"))
            .expect_err("port 0")
            .to_string();
        assert!(error.contains("give --advertise-url"), "{error}");
    }
}
