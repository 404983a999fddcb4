//! `factstore bench`: a load generator against a running factstore server, in the manner of
//! pgbench or redis-benchmark.
//!
//! # Layout
//! - One module per workload: [`append`], [`read_aggregate`], [`read_all`], [`subscribe`],
//!   [`mixed`], [`reserve`], [`seed`], [`consume`] (persistent subscriptions with ACK),
//!   [`projection`] (a projection's catch-up, rebuild and read-your-writes).
//! - Shared parts: [`http`] (one hyper connection per client), [`control`] (warm-up, duration
//!   or request count), [`stats`] (per-client measurements, merged at the end), [`scan`]
//!   (counting events in bodies without parsing them), [`verify`] (`--verify`), [`report`]
//!   (text and JSON).
//!
//! # Why it is built this way
//! The generator usually runs on the same machine as the server, often on the same two cores,
//! so its own CPU per request is taken straight from the server being measured. Hence: hyper
//! without a pool, one connection per client, bodies built from templates, responses counted
//! with `memchr` rather than parsed, per-client statistics without locks, and a small runtime
//! (`--threads 1` by default: a current-thread runtime, no work stealing, no cross-thread
//! wake-ups).

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::Value;

pub mod append;
pub mod consume;
pub mod control;
pub mod http;
pub mod mixed;
pub mod projection;
pub mod read_aggregate;
pub mod read_all;
pub mod report;
pub mod reserve;
pub mod scan;
pub mod seed;
pub mod stats;
pub mod subscribe;
pub mod verify;

use http::{Client, Target, describe_failure};
use report::{Params, Report};
use stats::PartReport;

const EXAMPLES: &str = "\
Examples (each prints its parameters with its results; add --json for one JSON object):
  factstore bench append --concurrency 64 --duration 30s             one event per append
  factstore bench append --batch 1000 --concurrency 4 --duration 30s 1000 events per append
  factstore bench append --expected-version --aggregates 1000        exact expected versions
  factstore bench seed --events 1000000                              data for the reads below
  factstore bench read-all --verify                                  every event, checked
  factstore bench subscribe --concurrency 4                          catch-up rate
  factstore bench mixed --appenders 16 --readers 4 --subscriber      all at once
  factstore bench reserve --concurrency 32 --seats 20                seats under a condition
  factstore bench reserve --concurrency 32 --seats 20 --plain        the same commits, no guard
  factstore bench consume --seed 1000000 --consumers 4 --max 500      delivery with ACK
  factstore bench projection --rebuild --ryw-clients 4               catch-up, rebuild, read-your-writes";

#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct BenchArgs {
    /// The server's base address (plain http).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "FACTSTORE_URL",
        default_value = "http://127.0.0.1:6180"
    )]
    pub url: String,
    /// A bearer token sent with every request (for a server run with --auth).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "FACTSTORE_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Threads of the generator's runtime. 1 (the default) when the server runs on the same
    /// two cores: the generator then never takes more than one core from it, and a
    /// current-thread runtime has no work stealing or cross-thread wake-ups. Use 2 or more
    /// only when the server runs elsewhere or the generator itself shows 100% CPU.
    #[arg(long, global = true, help_heading = "Global options", default_value_t = 1)]
    pub threads: usize,
    /// Print the report as one JSON object instead of text.
    #[arg(long, global = true, help_heading = "Global options")]
    pub json: bool,
    #[command(subcommand)]
    pub workload: Workload,
}

#[derive(Debug, Subcommand)]
pub enum Workload {
    /// Clients appending events (latency per request).
    Append(append::AppendArgs),
    /// Clients reading whole aggregates chosen at random (latency per page).
    ReadAggregate(read_aggregate::ReadAggregateArgs),
    /// Readers paging through every event with GET /v1/events (latency per page).
    ReadAll(read_all::ReadAllArgs),
    /// Subscribers catching up through GET /v1/subscribe (latency: time to caught_up).
    Subscribe(subscribe::SubscribeArgs),
    /// Appenders and readers at once, optionally with a live subscriber; each part reported.
    Mixed(mixed::MixedArgs),
    /// Clients racing to reserve seats with conditional multi-aggregate commits (conflicts
    /// counted apart from failures).
    Reserve(reserve::ReserveArgs),
    /// Fill the store quickly with 1000-event appends, for the read workloads.
    Seed(seed::SeedArgs),
    /// Consumers of a persistent-subscription group polling and acking every event
    /// (events delivered and acked per second, poll and ack latency).
    Consume(consume::ConsumeArgs),
    /// A server-side projection: its catch-up over the store, a rebuild, and read-your-writes
    /// latency (append, then read the state with `min_position`).
    Projection(projection::ProjectionArgs),
}

impl Workload {
    fn name(&self) -> &'static str {
        match self {
            Workload::Append(_) => "append",
            Workload::ReadAggregate(_) => "read-aggregate",
            Workload::ReadAll(_) => "read-all",
            Workload::Subscribe(_) => "subscribe",
            Workload::Mixed(_) => "mixed",
            Workload::Reserve(_) => "reserve",
            Workload::Seed(_) => "seed",
            Workload::Consume(_) => "consume",
            Workload::Projection(_) => "projection",
        }
    }
}

/// What every workload gets.
#[derive(Debug)]
pub struct Bench {
    pub target: Arc<Target>,
}

/// What a workload hands back: its parameters and its parts.
#[derive(Debug)]
pub struct Finished {
    pub params: Params,
    pub parts: Vec<(&'static str, PartReport)>,
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if args.threads == 0 {
        bail!("--threads must be at least 1");
    }
    let runtime = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    }
    .context("cannot start the async runtime")?;
    let report = runtime.block_on(run_async(&args))?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    Ok(if report.failed() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn run_async(args: &BenchArgs) -> anyhow::Result<Report> {
    let target = Arc::new(Target::resolve(&args.url, args.token.as_deref()).await?);
    let bench = Bench { target };
    let head_before = head(&bench.target)
        .await
        .with_context(|| format!("cannot reach the server at {}", bench.target.url))?;
    let finished = match &args.workload {
        Workload::Append(a) => append::run(&bench, a).await?,
        Workload::ReadAggregate(a) => read_aggregate::run(&bench, a).await?,
        Workload::ReadAll(a) => read_all::run(&bench, a).await?,
        Workload::Subscribe(a) => subscribe::run(&bench, a).await?,
        Workload::Mixed(a) => mixed::run(&bench, a).await?,
        Workload::Reserve(a) => reserve::run(&bench, a).await?,
        Workload::Seed(a) => seed::run(&bench, a).await?,
        Workload::Consume(a) => consume::run(&bench, a).await?,
        Workload::Projection(a) => projection::run(&bench, a).await?,
    };
    let head_after = head(&bench.target).await?;
    Ok(Report {
        workload: args.workload.name(),
        url: bench.target.url.clone(),
        threads: args.threads,
        parameters: finished.params,
        head_before,
        head_after,
        parts: finished.parts,
    })
}

/// The store's head position (`GET /v1/head`).
pub async fn head(target: &Arc<Target>) -> anyhow::Result<u64> {
    let mut client = Client::new(target.clone());
    let (status, body) = client
        .fetch(target.get("/v1/head")?)
        .await
        .map_err(anyhow::Error::msg)?;
    if !status.is_success() {
        let (key, message) = describe_failure(status, &body);
        bail!("GET /v1/head answered {key}: {message}");
    }
    let value: Value = serde_json::from_slice(&body).context("GET /v1/head did not answer JSON")?;
    value
        .get("position")
        .and_then(Value::as_u64)
        .context("GET /v1/head answered no position")
}

/// `&k=v…` to append to a query string, from a user's `--query`.
fn extra_query(query: Option<&str>) -> String {
    match query.map(|q| q.trim_start_matches(['?', '&'])) {
        Some(q) if !q.is_empty() => format!("&{q}"),
        _ => String::new(),
    }
}
