//! `bench read-aggregate`: clients loading whole aggregates (every page of
//! `GET /v1/aggregates/{id}/events`), chosen at random among `<prefix>0 … <prefix>(N-1)`.
//! `--seed-events` writes that many events to each of them first. `mixed` reuses the reader
//! with one page per request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::task::JoinSet;

use super::append::{self, AppendPlan, BATCH_MAX, EventShape, Schedule};
use super::control::{Control, RunLength, Turn};
use super::http::{Client, describe_failure, next_chunk};
use super::scan::PageScan;
use super::stats::Stats;
use super::{Bench, Finished};

#[derive(Debug, Clone, clap::Args)]
pub struct ReadAggregateArgs {
    /// Clients reading at once, each on its own connection.
    #[arg(long, short = 'c', default_value_t = 16)]
    pub concurrency: usize,
    /// Aggregates read from, at random: ids <PREFIX>0 to <PREFIX>(N-1).
    #[arg(long, default_value_t = 1000)]
    pub aggregates: u64,
    /// The prefix of the aggregate ids.
    #[arg(long, default_value = "bench:")]
    pub prefix: String,
    /// Events per page (`limit`; the server allows at most 10000).
    #[arg(long, default_value_t = 1000)]
    pub limit: u64,
    /// First append this many events to every aggregate (an aggregate that does not exist
    /// answers 404, which counts as an error).
    #[arg(long)]
    pub seed_events: Option<u64>,
    #[command(flatten)]
    pub shape: EventShape,
    // With --requests, the number of aggregates read (each may take several pages).
    #[command(flatten)]
    pub length: RunLength,
}

pub async fn run(bench: &Bench, args: &ReadAggregateArgs) -> anyhow::Result<Finished> {
    if args.concurrency == 0 || args.aggregates == 0 || args.limit == 0 {
        bail!("--concurrency, --aggregates and --limit must be at least 1");
    }
    let mut params = vec![
        ("concurrency", args.concurrency.into()),
        ("aggregates", args.aggregates.into()),
        ("prefix", args.prefix.clone().into()),
        ("limit", args.limit.into()),
        ("seed_events", args.seed_events.map_or(Value::Null, Value::from)),
    ];
    if args.seed_events.is_some() {
        args.shape.describe(&mut params);
    }
    args.length.describe(&mut params);
    let ids = append::aggregate_ids(&args.prefix, args.aggregates);
    let mut parts = Vec::new();
    if let Some(events) = args.seed_events.filter(|&n| n > 0) {
        let plan = AppendPlan {
            concurrency: args.concurrency.min(4),
            batch: (events as usize).min(BATCH_MAX),
            shape: args.shape.clone(),
            aggregates: ids.clone(),
            schedule: Schedule::PerAggregate(events),
            expected_version: false,
        };
        let tickets = plan.tickets().unwrap_or(0);
        let prepared = plan.prepare(bench.target.clone()).await?;
        let control = Arc::new(Control::counted(Duration::ZERO, tickets));
        let stats = append::collect(prepared.spawn(control.clone())).await?;
        let part = stats.summary(stats.elapsed_since(control.measure_from()));
        if part.errors > 0 {
            bail!(
                "seeding the aggregates failed, e.g. {}",
                part.error_samples.first().map(String::as_str).unwrap_or("?")
            );
        }
        parts.push(("seed", part));
    }
    let readers = AggregateReaders::connect(bench, ids, args.concurrency, args.limit, true, false).await?;
    let control = Arc::new(Control::start(&args.length));
    let done = readers.run(control.clone()).await?;
    let elapsed = done.stats.elapsed_since(control.measure_from());
    let part = done
        .stats
        .summary(elapsed)
        .with("aggregates_read", done.reads)
        .with("pages", done.stats.ok);
    parts.push(("read_aggregate", part));
    Ok(Finished { params, parts })
}

/// Connected clients that read aggregates.
#[derive(Debug)]
pub struct AggregateReaders {
    clients: Vec<Client>,
    paths: Arc<Vec<String>>,
    limit: u64,
    /// Read every page of an aggregate (else only the first).
    whole: bool,
    /// An aggregate that does not exist yet is an empty read, not an error (mixed: readers
    /// may pick an aggregate before the first append to it).
    missing_is_empty: bool,
}

/// What the readers did.
#[derive(Debug, Default)]
pub struct ReadsDone {
    pub stats: Stats,
    /// Aggregates read (to the end, or their first page).
    pub reads: u64,
    /// Reads of aggregates that did not exist (only where that is not an error).
    pub not_found: u64,
}

impl AggregateReaders {
    pub async fn connect(
        bench: &Bench,
        ids: Vec<String>,
        concurrency: usize,
        limit: u64,
        whole: bool,
        missing_is_empty: bool,
    ) -> anyhow::Result<AggregateReaders> {
        let mut clients = Vec::with_capacity(concurrency);
        for _ in 0..concurrency {
            let mut client = Client::new(bench.target.clone());
            client.connect().await.map_err(anyhow::Error::msg)?;
            clients.push(client);
        }
        Ok(AggregateReaders {
            clients,
            paths: Arc::new(ids.iter().map(|id| append::aggregate_path(id)).collect()),
            limit,
            whole,
            missing_is_empty,
        })
    }

    /// Starts every reader under `control`.
    pub fn spawn(self, control: Arc<Control>) -> JoinSet<ReadsDone> {
        let mut tasks = JoinSet::new();
        let setup = Arc::new(ReaderSetup {
            paths: self.paths,
            limit: self.limit,
            whole: self.whole,
            missing_is_empty: self.missing_is_empty,
        });
        for client in self.clients {
            tasks.spawn(reader(client, setup.clone(), control.clone()));
        }
        tasks
    }

    pub async fn run(self, control: Arc<Control>) -> anyhow::Result<ReadsDone> {
        collect(self.spawn(control)).await
    }
}

pub async fn collect(mut tasks: JoinSet<ReadsDone>) -> anyhow::Result<ReadsDone> {
    let mut total = ReadsDone::default();
    while let Some(done) = tasks.join_next().await {
        let done = done?;
        total.stats.merge(&done.stats);
        total.reads += done.reads;
        total.not_found += done.not_found;
    }
    Ok(total)
}

#[derive(Debug)]
struct ReaderSetup {
    paths: Arc<Vec<String>>,
    limit: u64,
    whole: bool,
    missing_is_empty: bool,
}

async fn reader(mut client: Client, setup: Arc<ReaderSetup>, control: Arc<Control>) -> ReadsDone {
    let mut done = ReadsDone::default();
    let mut rng = SmallRng::from_os_rng();
    // A scratch stats for warm-up requests, thrown away.
    let mut warmup = ReadsDone::default();
    loop {
        let target = match control.next() {
            Turn::Stop => break,
            Turn::Warmup => &mut warmup,
            Turn::Measured(_) => &mut done,
        };
        let path = &setup.paths[rng.random_range(0..setup.paths.len())];
        if read_aggregate(&mut client, path, &setup, target).await.is_err() {
            // A server that is gone would otherwise be hammered in a tight loop.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    done
}

/// Reads one aggregate (all its pages, or the first); the outcome goes into `done`.
async fn read_aggregate(
    client: &mut Client,
    path: &str,
    setup: &ReaderSetup,
    done: &mut ReadsDone,
) -> Result<(), ()> {
    let mut from_version: Option<u64> = None;
    loop {
        let uri = match from_version {
            Some(version) => format!("{path}?limit={}&from_version={version}", setup.limit),
            None => format!("{path}?limit={}", setup.limit),
        };
        let request = match client.target().get(&uri) {
            Ok(request) => request,
            Err(e) => {
                done.stats.error("bad request".to_owned(), || format!("{e:#}"));
                return Err(());
            }
        };
        let started = Instant::now();
        let response = match client.send(request).await {
            Ok(response) => response,
            Err(e) => {
                done.stats
                    .error("connection".to_owned(), || format!("GET {uri}: {e}"));
                return Err(());
            }
        };
        let status = response.status();
        let mut body = response.into_body();
        if !status.is_success() {
            let body = match client.read_body(body).await {
                Ok(body) => body,
                Err(e) => {
                    done.stats
                        .error("connection".to_owned(), || format!("GET {uri}: {e}"));
                    return Err(());
                }
            };
            let (key, message) = describe_failure(status, &body);
            if setup.missing_is_empty && key == "404 aggregate_not_found" {
                done.stats.ok(started.elapsed(), 0);
                done.not_found += 1;
                done.reads += 1;
                return Ok(());
            }
            done.stats
                .failed(key.clone(), || format!("GET {uri}: {key}: {message}"));
            return Ok(());
        }
        let mut scan = PageScan::new();
        loop {
            match next_chunk(&mut body).await {
                Ok(Some(chunk)) => scan.feed(&chunk),
                Ok(None) => break,
                Err(e) => {
                    client.disconnect();
                    done.stats
                        .error("connection".to_owned(), || format!("GET {uri}: {e}"));
                    return Err(());
                }
            }
        }
        done.stats.ok(started.elapsed(), scan.count);
        match scan.tail_field("next_from_version") {
            Some(Some(next)) if setup.whole => from_version = Some(next),
            Some(_) => {
                done.reads += 1;
                return Ok(());
            }
            None => {
                done.stats.error("bad page".to_owned(), || {
                    format!("GET {uri}: the page does not end with next_from_version")
                });
                return Ok(());
            }
        }
    }
}
