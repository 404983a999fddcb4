//! `bench append`: clients appending batches of events to aggregates, and the append engine
//! that `seed`, `mixed` and `read-aggregate --seed-events` reuse.
//!
//! Bodies are templated: one event's JSON is rendered once, and a request copies it `batch`
//! times, writing a fresh UUIDv7 into each copy's `event_id` slot. That is a memcpy and 36
//! hex digits per event, so the generator's cost stays far below the server's.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use bytes::Bytes;
use hyper::{Method, StatusCode, Uri};
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::Value;
use tokio::task::JoinSet;

use super::control::{Control, RunLength, Turn};
use super::http::{Client, Target, describe_failure, encode_segment};
use super::report::Params;
use super::stats::Stats;
use super::{Bench, Finished};

/// The most events the server accepts in one request.
pub const BATCH_MAX: usize = 1000;

/// The events every writing workload sends.
#[derive(Debug, Clone, clap::Args)]
pub struct EventShape {
    /// Size of each event's `event_data` in bytes (a JSON object padded to this size; at
    /// least 2, `{}`).
    #[arg(long, default_value_t = 200)]
    pub payload_bytes: usize,
    /// Let the server assign event ids, instead of sending a fresh UUIDv7 per event (the
    /// server then has no client id to check for an idempotent retry).
    #[arg(long)]
    pub server_ids: bool,
}

impl EventShape {
    pub fn describe(&self, params: &mut Params) {
        params.push(("payload_bytes", self.payload_bytes.into()));
        params.push((
            "event_ids",
            if self.server_ids { "server" } else { "client" }.into(),
        ));
    }
}

/// How each request chooses its aggregate among the client's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Pick {
    /// Each client cycles through its aggregates, starting at a different one.
    RoundRobin,
    /// Each request picks one of the client's aggregates at random.
    Random,
}

impl Pick {
    pub fn name(self) -> &'static str {
        match self {
            Pick::RoundRobin => "round-robin",
            Pick::Random => "random",
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct AppendArgs {
    /// Clients appending at once, each on its own connection.
    #[arg(long, short = 'c', default_value_t = 64)]
    pub concurrency: usize,
    /// Events per request (1 to 1000, the server's limit).
    #[arg(long, short = 'b', default_value_t = 1)]
    pub batch: usize,
    #[command(flatten)]
    pub shape: EventShape,
    /// Distinct aggregates written to: ids are <PREFIX>0 to <PREFIX>(N-1).
    #[arg(long, default_value_t = 1000)]
    pub aggregates: u64,
    /// The prefix of the aggregate ids.
    #[arg(long, default_value = "bench:")]
    pub prefix: String,
    /// How each request chooses an aggregate.
    #[arg(long, value_enum, default_value_t = Pick::RoundRobin)]
    pub pick: Pick,
    /// Send each aggregate's exact current version as `expected_version` (instead of
    /// "any"). Each client then owns its own aggregates (so --aggregates must be at least
    /// --concurrency), reads their versions before the run and tracks them; a refusal with
    /// `wrong_expected_version` is counted as a conflict, not a failure.
    #[arg(long)]
    pub expected_version: bool,
    #[command(flatten)]
    pub length: RunLength,
}

pub async fn run(bench: &Bench, args: &AppendArgs) -> anyhow::Result<Finished> {
    let plan = AppendPlan {
        concurrency: args.concurrency,
        batch: args.batch,
        shape: args.shape.clone(),
        aggregates: aggregate_ids(&args.prefix, args.aggregates),
        schedule: Schedule::Pick(args.pick),
        expected_version: args.expected_version,
    };
    plan.check()?;
    let mut params = vec![
        ("concurrency", args.concurrency.into()),
        ("batch", args.batch.into()),
        ("aggregates", args.aggregates.into()),
        ("prefix", args.prefix.clone().into()),
        ("pick", args.pick.name().into()),
        ("expected_version", args.expected_version.into()),
    ];
    args.shape.describe(&mut params);
    args.length.describe(&mut params);
    let prepared = plan.prepare(bench.target.clone()).await?;
    let control = Arc::new(Control::start(&args.length));
    let stats = collect(prepared.spawn(control.clone())).await?;
    let elapsed = stats.elapsed_since(control.measure_from());
    Ok(Finished {
        params,
        parts: vec![("append", stats.summary(elapsed))],
    })
}

/// `<prefix>0` … `<prefix>(count-1)`.
pub fn aggregate_ids(prefix: &str, count: u64) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}{i}")).collect()
}

/// The path of an aggregate's events.
pub fn aggregate_path(aggregate_id: &str) -> String {
    format!("/v1/aggregates/{}/events", encode_segment(aggregate_id))
}

/// Which aggregate each request goes to, and with how many events.
#[derive(Debug, Clone, Copy)]
pub enum Schedule {
    /// `batch` events per request, aggregates chosen by each client; the run's [`Control`]
    /// decides when to stop.
    Pick(Pick),
    /// Exactly this many events in all: ticket `t` writes to aggregate `t mod A`.
    Total(u64),
    /// Exactly this many events in every aggregate.
    PerAggregate(u64),
}

/// What the appending clients do.
#[derive(Debug, Clone)]
pub struct AppendPlan {
    pub concurrency: usize,
    pub batch: usize,
    pub shape: EventShape,
    pub aggregates: Vec<String>,
    pub schedule: Schedule,
    pub expected_version: bool,
}

impl AppendPlan {
    pub fn check(&self) -> anyhow::Result<()> {
        if self.concurrency == 0 {
            bail!("--concurrency must be at least 1");
        }
        if !(1..=BATCH_MAX).contains(&self.batch) {
            bail!("--batch must be from 1 to {BATCH_MAX} (the server's limit per request)");
        }
        if self.aggregates.is_empty() {
            bail!("--aggregates must be at least 1");
        }
        if self.expected_version {
            if !matches!(self.schedule, Schedule::Pick(_)) {
                bail!("exact expected versions are for the timed append workload only");
            }
            if (self.aggregates.len() as u64) < self.concurrency as u64 {
                bail!(
                    "--expected-version gives each client its own aggregates: --aggregates ({}) must be at least --concurrency ({})",
                    self.aggregates.len(),
                    self.concurrency
                );
            }
        }
        Ok(())
    }

    /// The number of requests a fixed schedule takes (`None` for a timed one).
    pub fn tickets(&self) -> Option<u64> {
        let batch = self.batch as u64;
        let aggregates = self.aggregates.len() as u64;
        match self.schedule {
            Schedule::Pick(_) => None,
            Schedule::Total(events) => Some(events.div_ceil(batch)),
            Schedule::PerAggregate(events) => Some(events.div_ceil(batch) * aggregates),
        }
    }

    /// The aggregate (an index) and the number of events of ticket `ticket` of a fixed
    /// schedule.
    fn assignment(&self, ticket: u64) -> (usize, usize) {
        let batch = self.batch as u64;
        let aggregates = self.aggregates.len() as u64;
        let (aggregate, remaining) = match self.schedule {
            Schedule::Pick(_) => (0, batch),
            Schedule::Total(events) => (ticket % aggregates, events.saturating_sub(ticket * batch)),
            Schedule::PerAggregate(events) => (
                ticket % aggregates,
                events.saturating_sub((ticket / aggregates) * batch),
            ),
        };
        (aggregate as usize, remaining.min(batch) as usize)
    }

    /// Connects every client and, with exact expected versions, reads the current version of
    /// each client's aggregates: all before the clock starts.
    pub async fn prepare(self, target: Arc<Target>) -> anyhow::Result<PreparedAppends> {
        self.check()?;
        let plan = Arc::new(self);
        let uris: Arc<Vec<Uri>> = Arc::new(
            plan.aggregates
                .iter()
                .map(|id| {
                    aggregate_path(id)
                        .parse()
                        .with_context(|| format!("the aggregate id '{id}' cannot be used in a path"))
                })
                .collect::<anyhow::Result<_>>()?,
        );
        let template = Arc::new(EventTemplate::new(
            plan.shape.payload_bytes,
            !plan.shape.server_ids,
        ));
        let mut setups = JoinSet::new();
        for worker in 0..plan.concurrency {
            let own: Vec<usize> = if plan.expected_version {
                (worker..plan.aggregates.len())
                    .step_by(plan.concurrency)
                    .collect()
            } else {
                // Every client may write to every aggregate; round-robin starts at a different
                // one per client so that they spread.
                let n = plan.aggregates.len();
                (0..n).map(|i| (i + worker) % n).collect()
            };
            let mut client = Client::new(target.clone());
            let plan = plan.clone();
            setups.spawn(async move {
                client.connect().await.map_err(anyhow::Error::msg)?;
                let mut versions = vec![0; own.len()];
                if plan.expected_version {
                    for (slot, &aggregate) in own.iter().enumerate() {
                        versions[slot] = current_version(&mut client, &plan.aggregates[aggregate]).await?;
                    }
                }
                anyhow::Ok(AppendWorker {
                    client,
                    own,
                    versions,
                    next: 0,
                    rng: SmallRng::from_os_rng(),
                })
            });
        }
        let mut workers = Vec::with_capacity(plan.concurrency);
        while let Some(setup) = setups.join_next().await {
            workers.push(setup.context("a client's setup panicked")??);
        }
        Ok(PreparedAppends {
            plan,
            uris,
            template,
            workers,
        })
    }
}

/// The current version of an aggregate (0 if it has no events).
pub async fn current_version(client: &mut Client, aggregate_id: &str) -> anyhow::Result<u64> {
    let path = format!("{}?direction=backward&limit=1", aggregate_path(aggregate_id));
    let request = client.target().get(&path)?;
    let (status, body) = client.fetch(request).await.map_err(anyhow::Error::msg)?;
    if status == StatusCode::NOT_FOUND {
        return Ok(0);
    }
    if !status.is_success() {
        let (key, message) = describe_failure(status, &body);
        bail!("reading the version of {aggregate_id}: {key}: {message}");
    }
    let value: Value = serde_json::from_slice(&body).context("an aggregate page is not JSON")?;
    value
        .get("version")
        .and_then(Value::as_u64)
        .with_context(|| format!("the page of {aggregate_id} has no version"))
}

/// Clients connected and ready to start.
#[derive(Debug)]
pub struct PreparedAppends {
    plan: Arc<AppendPlan>,
    uris: Arc<Vec<Uri>>,
    template: Arc<EventTemplate>,
    workers: Vec<AppendWorker>,
}

impl PreparedAppends {
    /// Starts every client under `control`; each task returns its stats.
    pub fn spawn(self, control: Arc<Control>) -> JoinSet<Stats> {
        let mut tasks = JoinSet::new();
        for worker in self.workers {
            tasks.spawn(worker.run(
                self.plan.clone(),
                self.uris.clone(),
                self.template.clone(),
                control.clone(),
            ));
        }
        tasks
    }
}

/// Waits for every task and merges their stats.
pub async fn collect(mut tasks: JoinSet<Stats>) -> anyhow::Result<Stats> {
    let mut total = Stats::new();
    while let Some(stats) = tasks.join_next().await {
        total.merge(&stats.context("a client panicked")?);
    }
    Ok(total)
}

#[derive(Debug)]
struct AppendWorker {
    client: Client,
    /// The aggregates this client writes to (indexes into the plan's list).
    own: Vec<usize>,
    /// With exact expected versions: the version of each of `own`.
    versions: Vec<u64>,
    next: usize,
    rng: SmallRng,
}

impl AppendWorker {
    async fn run(
        mut self,
        plan: Arc<AppendPlan>,
        uris: Arc<Vec<Uri>>,
        template: Arc<EventTemplate>,
        control: Arc<Control>,
    ) -> Stats {
        let mut stats = Stats::new();
        let mut failures_in_a_row = 0u32;
        loop {
            let (measured, ticket) = match control.next() {
                Turn::Stop => break,
                Turn::Warmup => (false, 0),
                Turn::Measured(ticket) => (true, ticket),
            };
            let (aggregate, slot, events) = match plan.schedule {
                Schedule::Pick(pick) => {
                    let slot = match pick {
                        Pick::RoundRobin => {
                            let slot = self.next % self.own.len();
                            self.next = self.next.wrapping_add(1);
                            slot
                        }
                        Pick::Random => self.rng.random_range(0..self.own.len()),
                    };
                    (self.own[slot], Some(slot), plan.batch)
                }
                Schedule::Total(_) | Schedule::PerAggregate(_) => {
                    let (aggregate, events) = plan.assignment(ticket);
                    (aggregate, None, events)
                }
            };
            if events == 0 {
                break;
            }
            let expected = match slot {
                Some(slot) if plan.expected_version => Some(self.versions[slot]),
                _ => None,
            };
            let body = template.body(events, expected, &mut self.rng);
            let request = self
                .client
                .target()
                .request(Method::POST, uris[aggregate].clone(), body);
            let started = Instant::now();
            let (status, body) = match self.client.fetch(request).await {
                Ok(answer) => answer,
                Err(error) => {
                    if measured {
                        stats.error("connection".to_owned(), || error);
                    }
                    // A server that is gone would otherwise be hammered in a tight loop.
                    failures_in_a_row += 1;
                    if failures_in_a_row > 3 {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                    continue;
                }
            };
            failures_in_a_row = 0;
            let latency = started.elapsed();
            if status.is_success() {
                if let Some(slot) = slot {
                    self.versions[slot] += events as u64;
                }
                if measured {
                    stats.ok(latency, events as u64);
                }
                continue;
            }
            let (key, message) = describe_failure(status, &body);
            if plan.expected_version && key == "409 wrong_expected_version" {
                // Someone else wrote to this aggregate: take its version and go on.
                if let Some(slot) = slot {
                    self.versions[slot] = conflict_version(&body).unwrap_or(self.versions[slot]);
                }
                if measured {
                    stats.conflict();
                }
                continue;
            }
            if measured {
                let id = &plan.aggregates[aggregate];
                stats.failed(key.clone(), || {
                    format!("POST {}: {key}: {message}", aggregate_path(id))
                });
            }
        }
        stats
    }
}

/// `current_version` from a `wrong_expected_version` error.
fn conflict_version(body: &[u8]) -> Option<u64> {
    let value: Value = serde_json::from_slice(body).ok()?;
    value.get("error")?.get("current_version")?.as_u64()
}

/// One event's JSON, rendered once, with a slot for its id.
#[derive(Debug)]
pub struct EventTemplate {
    event: Vec<u8>,
    /// Where the 36 characters of the event id go, if the client sends ids.
    id_at: Option<usize>,
}

/// The length of a hyphenated UUID.
const UUID_LEN: usize = 36;

impl EventTemplate {
    pub fn new(payload_bytes: usize, client_ids: bool) -> EventTemplate {
        let mut event = Vec::with_capacity(payload_bytes + 160);
        event.push(b'{');
        let id_at = client_ids.then(|| {
            event.extend_from_slice(br#""event_id":""#);
            let at = event.len();
            event.extend_from_slice(&[b'0'; UUID_LEN]);
            event.extend_from_slice(br#"","#);
            at
        });
        event.extend_from_slice(br#""aggregate_type":"Bench","event_type":"BenchEvent","event_data":"#);
        event.extend_from_slice(&event_data(payload_bytes));
        event.push(b'}');
        EventTemplate { event, id_at }
    }

    /// An append body of `events` events, each with a fresh UUIDv7.
    pub fn body(&self, events: usize, expected_version: Option<u64>, rng: &mut SmallRng) -> Bytes {
        let mut body = Vec::with_capacity(events * (self.event.len() + 1) + 48);
        match expected_version {
            Some(version) => {
                body.extend_from_slice(br#"{"expected_version":"#);
                body.extend_from_slice(version.to_string().as_bytes());
                body.extend_from_slice(br#","events":["#);
            }
            None => body.extend_from_slice(br#"{"events":["#),
        }
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        for i in 0..events {
            if i > 0 {
                body.push(b',');
            }
            let start = body.len();
            body.extend_from_slice(&self.event);
            if let Some(at) = self.id_at {
                let mut random = [0u8; 10];
                rng.fill_bytes(&mut random);
                let id = uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid();
                id.hyphenated()
                    .encode_lower(&mut body[start + at..start + at + UUID_LEN]);
            }
        }
        body.extend_from_slice(b"]}");
        Bytes::from(body)
    }
}

/// A JSON object of exactly `bytes` bytes (`{}` below 10).
fn event_data(bytes: usize) -> Vec<u8> {
    const FRAME: usize = r#"{"pad":""}"#.len();
    if bytes < FRAME {
        return b"{}".to_vec();
    }
    let mut data = Vec::with_capacity(bytes);
    data.extend_from_slice(br#"{"pad":""#);
    data.extend(std::iter::repeat_n(b'x', bytes - FRAME));
    data.extend_from_slice(br#""}"#);
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_valid_appends_with_fresh_ids() {
        let template = EventTemplate::new(200, true);
        let mut rng = SmallRng::seed_from_u64(7);
        let body = template.body(3, Some(41), &mut rng);
        let value: Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(value["expected_version"], 41);
        let events = value["events"].as_array().expect("events");
        assert_eq!(events.len(), 3);
        let ids: Vec<uuid::Uuid> = events
            .iter()
            .map(|e| e["event_id"].as_str().expect("id").parse().expect("uuid"))
            .collect();
        assert!(ids.iter().all(|id| id.get_version_num() == 7));
        assert!(ids[0] != ids[1] && ids[1] != ids[2]);
        assert_eq!(
            serde_json::to_vec(&events[0]["event_data"]).expect("json").len(),
            200
        );
        assert_eq!(events[0]["aggregate_type"], "Bench");
    }

    #[test]
    fn server_ids_and_tiny_payloads() {
        let template = EventTemplate::new(3, false);
        let body = template.body(1, None, &mut SmallRng::seed_from_u64(1));
        let value: Value = serde_json::from_slice(&body).expect("JSON");
        assert!(value.get("expected_version").is_none());
        assert!(value["events"][0].get("event_id").is_none());
        assert_eq!(value["events"][0]["event_data"], serde_json::json!({}));
    }

    fn plan(schedule: Schedule, batch: usize, aggregates: u64) -> AppendPlan {
        AppendPlan {
            concurrency: 2,
            batch,
            shape: EventShape {
                payload_bytes: 10,
                server_ids: false,
            },
            aggregates: aggregate_ids("a:", aggregates),
            schedule,
            expected_version: false,
        }
    }

    #[test]
    fn fixed_schedules_write_exactly_what_they_promise() {
        let total = plan(Schedule::Total(2500), 1000, 3);
        assert_eq!(total.tickets(), Some(3));
        let events: Vec<(usize, usize)> = (0..3).map(|t| total.assignment(t)).collect();
        assert_eq!(events, [(0, 1000), (1, 1000), (2, 500)]);

        let per = plan(Schedule::PerAggregate(25), 10, 2);
        assert_eq!(per.tickets(), Some(6));
        let mut written = [0usize; 2];
        for t in 0..6 {
            let (aggregate, events) = per.assignment(t);
            written[aggregate] += events;
        }
        assert_eq!(written, [25, 25]);
    }

    #[test]
    fn exact_versions_need_an_aggregate_per_client() {
        let mut p = plan(Schedule::Pick(Pick::RoundRobin), 1, 1);
        p.expected_version = true;
        assert!(p.check().is_err());
        p.aggregates = aggregate_ids("a:", 2);
        assert!(p.check().is_ok());
        p.batch = 1001;
        assert!(p.check().is_err());
    }
}
