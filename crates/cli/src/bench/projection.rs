//! `bench projection`: a server-side projection catching up, rebuilding, and serving
//! read-your-writes.
//!
//! 1. Catch-up: creates the projection (deleting one of the same name first) over every event
//!    in the store and polls its status until it has passed the head it started from: events
//!    folded per second in the server.
//! 2. Rebuild (`--rebuild`): `POST …/rebuild`, then the same wait until the rebuilt generation
//!    has replaced the old one.
//! 3. Read-your-writes (`--ryw-clients N`): each client appends one event to its own aggregate
//!    and at once reads that aggregate's state with `min_position` set to the append's
//!    position, for `--ryw-duration`: the latency of the read (how long until the write is
//!    visible in the read model) and of the append and read together.
//!
//! The default definition counts `BenchEvent`s (what `bench seed` and `bench append` write) per
//! aggregate and keeps the highest position; `--definition FILE` takes another.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use hyper::Method;
use serde_json::Value;
use tokio::task::JoinSet;

use super::control::{format_duration, parse_duration};
use super::http::{Client, Target, call, describe_failure, encode_segment};
use super::stats::Stats;
use super::{Bench, Finished, head, seed};

const DEFAULT_DEFINITION: &str = r#"{"filter":{"event_types":["BenchEvent"]},"key":"aggregate_id","initial":{"count":0},"on":{"BenchEvent":[{"op":"inc","path":"/count"},{"op":"max","path":"/last","from":"/position"}]}}"#;

#[derive(Debug, Clone, clap::Args)]
pub struct ProjectionArgs {
    /// The projection to create (one of that name is deleted first).
    #[arg(long, default_value = "bench")]
    pub name: String,
    /// A projection definition (JSON, as `PUT /v1/projections/{name}` takes it) instead of the
    /// default count per aggregate.
    #[arg(long)]
    pub definition: Option<std::path::PathBuf>,
    /// Then rebuild it and measure the rebuild.
    #[arg(long)]
    pub rebuild: bool,
    /// Then measure read-your-writes with this many clients (0: skip).
    #[arg(long, default_value_t = 0)]
    pub ryw_clients: usize,
    /// How long the read-your-writes clients run.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub ryw_duration: Duration,
    /// How often the catch-up and rebuild are checked, in milliseconds.
    #[arg(long, default_value_t = 10)]
    pub poll_ms: u64,
    /// Leave the projection in place at the end (it is deleted by default).
    #[arg(long)]
    pub keep: bool,
    /// Give up when the projection has not caught up after this long.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// First append this many events (1000 per request; as `bench seed` with its defaults).
    #[arg(long)]
    pub seed: Option<u64>,
}

pub async fn run(bench: &Bench, args: &ProjectionArgs) -> anyhow::Result<Finished> {
    let definition = match &args.definition {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?
        }
        None => DEFAULT_DEFINITION.to_owned(),
    };
    serde_json::from_str::<Value>(&definition).context("the definition is not JSON")?;
    let params = vec![
        ("name", args.name.clone().into()),
        (
            "definition",
            args.definition
                .as_ref()
                .map_or(Value::from("count per aggregate"), |p| {
                    p.display().to_string().into()
                }),
        ),
        ("rebuild", args.rebuild.into()),
        ("ryw_clients", args.ryw_clients.into()),
        ("ryw_duration", format_duration(args.ryw_duration).into()),
        ("seed", args.seed.map_or(Value::Null, Value::from)),
    ];
    let mut parts = Vec::new();
    if let Some(seeded) = seed::seed_option(bench, args.seed).await? {
        parts.push(("seed", seeded));
    }
    let target = bench.target.clone();
    let base = format!("/v1/projections/{}", encode_segment(&args.name));
    let mut admin = Client::new(target.clone());
    let (status, body) = call(&mut admin, &target, Method::DELETE, &base, Bytes::new()).await?;
    if !status.is_success() && status.as_u16() != 404 {
        let (key, message) = describe_failure(status, &body);
        bail!("DELETE {base} answered {key}: {message}");
    }

    let events = head(&target).await?;
    let start = Instant::now();
    let (status, body) = call(&mut admin, &target, Method::PUT, &base, Bytes::from(definition)).await?;
    if status.as_u16() != 201 {
        let (key, message) = describe_failure(status, &body);
        bail!("PUT {base} answered {key}: {message}");
    }
    wait_caught_up(&mut admin, &target, &base, events, args, start).await?;
    parts.push(("catch_up", folded(start.elapsed(), events)));

    if args.rebuild {
        let start = Instant::now();
        let path = format!("{base}/rebuild");
        let (status, body) = call(&mut admin, &target, Method::POST, &path, Bytes::new()).await?;
        if !status.is_success() {
            let (key, message) = describe_failure(status, &body);
            bail!("POST {path} answered {key}: {message}");
        }
        wait_caught_up(&mut admin, &target, &base, events, args, start).await?;
        parts.push(("rebuild", folded(start.elapsed(), events)));
    }

    if args.ryw_clients > 0 {
        let deadline = Instant::now() + args.ryw_duration;
        let mut tasks = JoinSet::new();
        for i in 0..args.ryw_clients {
            let mut client = Client::new(target.clone());
            client.connect().await.map_err(anyhow::Error::msg)?;
            tasks.spawn(read_your_writes(
                client,
                target.clone(),
                base.clone(),
                i,
                deadline,
            ));
        }
        let (mut reads, mut rounds) = (Stats::new(), Stats::new());
        let start = Instant::now();
        while let Some(done) = tasks.join_next().await {
            let (r, w) = done?;
            reads.merge(&r);
            rounds.merge(&w);
        }
        let elapsed = reads.elapsed_since(start);
        parts.push(("ryw_read", reads.summary(elapsed)));
        parts.push(("ryw_append_and_read", rounds.summary(elapsed)));
    }
    if !args.keep {
        let _ = call(&mut admin, &target, Method::DELETE, &base, Bytes::new()).await;
    }
    Ok(Finished { params, parts })
}

/// One measurement: `events` folded in `elapsed`.
fn folded(elapsed: Duration, events: u64) -> super::stats::PartReport {
    let mut stats = Stats::new();
    stats.ok(elapsed, events);
    stats.summary(elapsed)
}

/// Polls the projection until it is running (not rebuilding) at or past `events`.
async fn wait_caught_up(
    client: &mut Client,
    target: &Target,
    base: &str,
    events: u64,
    args: &ProjectionArgs,
    start: Instant,
) -> anyhow::Result<()> {
    loop {
        let (status, body) = call(client, target, Method::GET, base, Bytes::new()).await?;
        if !status.is_success() {
            let (key, message) = describe_failure(status, &body);
            bail!("GET {base} answered {key}: {message}");
        }
        let state: Value = serde_json::from_slice(&body).context("GET {base} did not answer JSON")?;
        match state["status"].as_str() {
            Some("failed") => bail!("the projection failed: {}", state["error"]),
            Some("running") if state["position"].as_u64().unwrap_or(0) >= events => return Ok(()),
            _ => {}
        }
        if start.elapsed() > args.timeout {
            bail!(
                "the projection had not caught up after {}: {state}",
                format_duration(args.timeout)
            );
        }
        tokio::time::sleep(Duration::from_millis(args.poll_ms)).await;
    }
}

async fn read_your_writes(
    mut client: Client,
    target: std::sync::Arc<Target>,
    base: String,
    index: usize,
    deadline: Instant,
) -> (Stats, Stats) {
    let (mut reads, mut rounds) = (Stats::new(), Stats::new());
    let aggregate = format!("bench-ryw:{index}");
    let append_path = format!("/v1/aggregates/{}/events", encode_segment(&aggregate));
    let body = Bytes::from_static(
        br#"{"events":[{"aggregate_type":"Bench","event_type":"BenchEvent","event_data":{"pad":"read-your-writes"}}]}"#,
    );
    while Instant::now() < deadline {
        let started = Instant::now();
        let (status, answer) =
            match call(&mut client, &target, Method::POST, &append_path, body.clone()).await {
                Ok(answer) => answer,
                Err(e) => {
                    rounds.failed("connection".to_owned(), || format!("{e:#}"));
                    continue;
                }
            };
        if !status.is_success() {
            let (key, message) = describe_failure(status, &answer);
            rounds.failed(key, || format!("POST {append_path}: {message}"));
            continue;
        }
        let Some(position) = serde_json::from_slice::<Value>(&answer)
            .ok()
            .and_then(|v| v["position"].as_u64())
        else {
            rounds.failed("no_position".to_owned(), || {
                "the append answered no position".to_owned()
            });
            continue;
        };
        let read_path = format!(
            "{base}/state/{}?min_position={position}&wait_ms=5000",
            encode_segment(&aggregate)
        );
        let read_started = Instant::now();
        match call(&mut client, &target, Method::GET, &read_path, Bytes::new()).await {
            Ok((status, _)) if status.is_success() => {
                reads.ok(read_started.elapsed(), 1);
                rounds.ok(started.elapsed(), 1);
            }
            Ok((status, answer)) => {
                let (key, message) = describe_failure(status, &answer);
                reads.failed(key, || format!("GET {read_path}: {message}"));
            }
            Err(e) => reads.failed("connection".to_owned(), || format!("{e:#}")),
        }
    }
    (reads, rounds)
}
