//! Leadership: which of the servers sharing one database runs the projections and the
//! persistent subscriptions.
//!
//! Those keep state that one process folds and hands out (checkpoints, leases of events to
//! consumers), so exactly one server may run them at a time. A server leads while it holds a
//! session advisory lock (keyed by the schema) on a connection of its own: PostgreSQL frees
//! the lock the moment that session ends, when the process dies (kill -9 closes its sockets)
//! or its connection is lost, and the next server that asks takes it.
//!
//! # Invariants
//! - On taking the lock, the new leader bumps `factstore_leader.epoch` and records its node id
//!   and URL in the same statement, before it reads any state. State writes are fenced by the
//!   epoch they were made under (see [`crate::state`]): they hold the leader row `FOR SHARE`,
//!   so the bump waits for writes in flight and every later write of the old leader is refused.
//!   A server that lost its session without noticing can therefore never overwrite what the
//!   new leader has read.
//! - A leader checks its session every `check_every`; when the check fails it says so at once
//!   ([`Role::Follower`] with no leader known) and starts over, competing again.
//! - Followers learn the leader's URL from `factstore_leader`, to forward requests to it.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio_postgres::Client;

use crate::PgError;
use crate::connect::Connector;

/// What this server is, as far as leadership goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// This server leads under `epoch`: it runs the projections and the groups, and writes
    /// their state fenced by `epoch`.
    Leader { epoch: i64 },
    /// Another server leads (`leader`), or none is known yet (`None`: at start, or while the
    /// lock is changing hands).
    Follower { leader: Option<LeaderInfo> },
}

/// The leader, as its row in `factstore_leader` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderInfo {
    pub epoch: i64,
    pub node: String,
    /// Where the leader serves the API, for forwarding (`--advertise-url`).
    pub url: Option<String>,
}

/// How a server competes for leadership.
#[derive(Debug, Clone)]
pub struct LeaseOptions {
    /// This server's id, unique among the servers on the database.
    pub node: String,
    /// The URL other servers forward to while this one leads.
    pub url: Option<String>,
    /// How often a follower tries for the lock (and re-reads who leads).
    pub retry_every: Duration,
    /// How often a leader checks that its session (and so its lock) is alive.
    pub check_every: Duration,
}

impl LeaseOptions {
    /// Checks and retries every 500 ms: well inside [`SESSION_IDLE_MAX`].
    pub fn new(node: &str, url: Option<String>) -> LeaseOptions {
        LeaseOptions {
            node: node.to_owned(),
            url,
            retry_every: Duration::from_millis(500),
            check_every: Duration::from_millis(500),
        }
    }
}

/// The competition for leadership, running in a task until dropped.
#[derive(Debug)]
pub struct Lease {
    role: watch::Receiver<Role>,
    task: AbortHandle,
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Ends the session, which frees the lock for the next server.
        self.task.abort();
    }
}

impl Lease {
    /// Starts competing. Must run inside a Tokio runtime. The role starts as a follower that
    /// knows no leader.
    pub fn start(connector: Connector, options: LeaseOptions) -> Lease {
        let (sender, role) = watch::channel(Role::Follower { leader: None });
        let task = tokio::spawn(compete(connector, options, sender)).abort_handle();
        Lease { role, task }
    }

    /// The role now.
    pub fn role(&self) -> Role {
        self.role.borrow().clone()
    }

    /// A receiver that sees every change of role.
    pub fn watch(&self) -> watch::Receiver<Role> {
        self.role.clone()
    }
}

/// How long the lease's session may stay silent before PostgreSQL ends it (and so frees the
/// lock): well above `check_every` and `retry_every`, which must stay below it.
pub const SESSION_IDLE_MAX: Duration = Duration::from_secs(5);

/// The key of the advisory lock: one per schema, so stores in different schemas of one
/// database each have their own leader.
const LOCK_KEY: &str = "hashtextextended('factstore.leader.' || current_schema(), 0)";

async fn compete(connector: Connector, options: LeaseOptions, role: watch::Sender<Role>) {
    let mut backoff = options.retry_every;
    loop {
        match session(&connector, &options, &role).await {
            Ok(()) => backoff = options.retry_every,
            Err(error) => {
                tracing::warn!(%error, "leadership session ended");
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
        // Whatever happened, this server no longer knows it leads.
        role.send_if_modified(|r| {
            let changed = !matches!(r, Role::Follower { leader: None });
            *r = Role::Follower { leader: None };
            changed
        });
        tokio::time::sleep(backoff).await;
    }
}

/// One session: connect, then follow until the lock is taken, then lead until the session
/// fails. Returns only with an error (or never).
async fn session(
    connector: &Connector,
    options: &LeaseOptions,
    role: &watch::Sender<Role>,
) -> Result<(), PgError> {
    let (client, connection) = connector.connect_with_driver().await?;
    let _end = AbortOnDrop(connection.abort_handle());
    // A leader whose host vanishes sends no FIN: PostgreSQL would keep its session, and so the
    // lock, until the operating system's keepalive gives up (hours by default); probing the
    // session every few seconds bounds that to about 11 s. A leader that hangs (paused,
    // stuck) keeps its socket open and answers probes from its kernel: PostgreSQL ends a
    // session idle for 5 s, and a live one speaks every `check_every`.
    timed(client.batch_execute(&format!(
        "SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 2; SET tcp_keepalives_count = 3; \
         SET idle_session_timeout = '{}ms'",
        SESSION_IDLE_MAX.as_millis()
    )))
    .await?;
    let taken = client
        .prepare(&format!("SELECT pg_try_advisory_lock({LOCK_KEY})"))
        .await?;
    loop {
        let got: bool = timed(client.query_one(&taken, &[])).await?.get(0);
        if got {
            break;
        }
        let leader = read_leader(&client).await?;
        role.send_if_modified(|r| {
            let next = Role::Follower {
                leader: leader.clone(),
            };
            let changed = *r != next;
            *r = next;
            changed
        });
        tokio::time::sleep(options.retry_every).await;
    }
    let row = timed(client.query_one(
        "UPDATE factstore_leader SET epoch = epoch + 1, node = $1, url = $2, since = now() \
         WHERE id = 1 RETURNING epoch",
        &[&options.node, &options.url],
    ))
    .await?;
    let epoch: i64 = row.get(0);
    tracing::info!(epoch, node = %options.node, "this server now leads the projections and persistent subscriptions");
    role.send_replace(Role::Leader { epoch });
    loop {
        tokio::time::sleep(options.check_every).await;
        if let Err(error) = timed(client.query_one("SELECT 1", &[])).await {
            tracing::error!(%error, epoch, "lost the leadership session: stepping down");
            return Err(error);
        }
    }
}

async fn read_leader(client: &Client) -> Result<Option<LeaderInfo>, PgError> {
    let row =
        timed(client.query_one("SELECT epoch, node, url FROM factstore_leader WHERE id = 1", &[])).await?;
    let node: Option<String> = row.get(1);
    Ok(node.map(|node| LeaderInfo {
        epoch: row.get(0),
        node,
        url: row.get(2),
    }))
}

/// A statement of the lease's session, bounded: a session that cannot answer in time is as
/// good as lost.
async fn timed<T>(
    query: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, PgError> {
    match tokio::time::timeout(Duration::from_secs(5), query).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(PgError::Config(
            "the leadership session did not answer within 5 s".into(),
        )),
    }
}

struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
