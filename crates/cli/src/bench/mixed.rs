//! `bench mixed`: appenders and aggregate readers at once, optionally with one live subscriber
//! following the head; each part is reported on its own.
//!
//! The ratio is set by the number of clients of each kind (`--appenders`, `--readers`): each
//! client sends its next request as soon as the previous one is answered. The run ends when the
//! appenders are done (`--duration` or `--requests`, which counts append requests); the
//! readers stop then. The subscriber then waits (at most 30 s) until it has received every
//! event up to the head, so it reports whether anything was missed; its latency is the delay
//! from an event's `recorded_at` to its arrival (one machine's clock, so no skew). It counts
//! every event from the start, warm-up included, over the time from the start.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use factstore_core::Timestamp;
use hyper::body::Incoming;
use serde_json::Value;
use tokio::sync::watch;

use super::append::{self, AppendPlan, EventShape, Pick, Schedule};
use super::control::{Control, RunLength};
use super::http::{Client, describe_failure, next_chunk};
use super::read_aggregate::{self, AggregateReaders};
use super::scan::SseParser;
use super::stats::{PartReport, Stats};
use super::verify::Verifier;
use super::{Bench, Finished, head};

#[derive(Debug, Clone, clap::Args)]
pub struct MixedArgs {
    /// Clients appending at once.
    #[arg(long, default_value_t = 16)]
    pub appenders: usize,
    /// Clients reading at once: each request reads the first page (--read-limit events) of a
    /// random aggregate among those written to (one not written yet counts as empty).
    #[arg(long, default_value_t = 4)]
    pub readers: usize,
    /// Also follow the head with one live subscription, and report its delivery delay.
    #[arg(long)]
    pub subscriber: bool,
    /// Events per append.
    #[arg(long, short = 'b', default_value_t = 1)]
    pub batch: usize,
    /// Events per read.
    #[arg(long, default_value_t = 100)]
    pub read_limit: u64,
    #[command(flatten)]
    pub shape: EventShape,
    /// Distinct aggregates written to and read from: ids <PREFIX>0 to <PREFIX>(N-1).
    #[arg(long, default_value_t = 1000)]
    pub aggregates: u64,
    /// The prefix of the aggregate ids.
    #[arg(long, default_value = "bench:")]
    pub prefix: String,
    /// How each append chooses an aggregate.
    #[arg(long, value_enum, default_value_t = Pick::RoundRobin)]
    pub pick: Pick,
    #[command(flatten)]
    pub length: RunLength,
}

/// How long the subscriber may take to receive the last events once the appenders are done.
const SUBSCRIBER_DRAIN_MAX: Duration = Duration::from_secs(30);

pub async fn run(bench: &Bench, args: &MixedArgs) -> anyhow::Result<Finished> {
    if args.appenders == 0 {
        bail!("--appenders must be at least 1 (to read only, use read-aggregate)");
    }
    if args.read_limit == 0 {
        bail!("--read-limit must be at least 1");
    }
    let mut params = vec![
        ("appenders", args.appenders.into()),
        ("readers", args.readers.into()),
        ("subscriber", args.subscriber.into()),
        ("batch", args.batch.into()),
        ("read_limit", args.read_limit.into()),
        ("aggregates", args.aggregates.into()),
        ("prefix", args.prefix.clone().into()),
        ("pick", args.pick.name().into()),
    ];
    args.shape.describe(&mut params);
    args.length.describe(&mut params);
    let ids = append::aggregate_ids(&args.prefix, args.aggregates);
    let plan = AppendPlan {
        concurrency: args.appenders,
        batch: args.batch,
        shape: args.shape.clone(),
        aggregates: ids.clone(),
        schedule: Schedule::Pick(args.pick),
        expected_version: false,
    };
    let appenders = plan.prepare(bench.target.clone()).await?;
    let readers = AggregateReaders::connect(bench, ids, args.readers, args.read_limit, false, true).await?;
    let (target_position, target_watch) = watch::channel(u64::MAX);
    let live = if args.subscriber {
        let from = head(&bench.target).await?;
        let live = Live::open(bench, from).await?;
        Some(tokio::spawn(live.run(target_watch)))
    } else {
        None
    };

    // The subscriber counts every event from here on, warm-up included.
    let started = Instant::now();
    let control = Arc::new(Control::start(&args.length));
    let read_control = Arc::new(Control::open(args.length.warmup));
    let append_tasks = appenders.spawn(control.clone());
    let read_tasks = readers.spawn(read_control.clone());
    let appended = append::collect(append_tasks).await?;
    read_control.stop();
    let reads = read_aggregate::collect(read_tasks).await?;

    let mut parts = vec![(
        "append",
        appended.summary(appended.elapsed_since(control.measure_from())),
    )];
    if args.readers > 0 {
        let part = reads
            .stats
            .summary(reads.stats.elapsed_since(read_control.measure_from()))
            .with("not_found", reads.not_found);
        parts.push(("read", part));
    }
    if let Some(live) = live {
        let end = head(&bench.target).await?;
        // The receiver is gone only if the subscriber already ended (with an error).
        let _ = target_position.send(end);
        let done = live.await.context("the subscriber panicked")?;
        parts.push(("subscribe", done.report(started)));
    }
    Ok(Finished { params, parts })
}

/// A subscription that has caught up and now follows the head.
struct Live {
    client: Client,
    body: Incoming,
    parser: SseParser,
    from: u64,
    stats: Stats,
    verifier: Verifier,
}

impl Live {
    async fn open(bench: &Bench, from: u64) -> anyhow::Result<Live> {
        let mut client = Client::new(bench.target.clone());
        let path = format!("/v1/subscribe?after_position={from}");
        let response = client
            .send(bench.target.get_stream(&path)?)
            .await
            .map_err(anyhow::Error::msg)?;
        let status = response.status();
        if !status.is_success() {
            let body = client
                .read_body(response.into_body())
                .await
                .map_err(anyhow::Error::msg)?;
            let (key, message) = describe_failure(status, &body);
            bail!("GET {path} answered {key}: {message}");
        }
        let mut live = Live {
            client,
            body: response.into_body(),
            parser: SseParser::default(),
            from,
            stats: Stats::new(),
            verifier: Verifier::new(from, true),
        };
        // History first: only once it is delivered does the subscription follow the head.
        let caught_up = tokio::time::timeout(SUBSCRIBER_DRAIN_MAX, async {
            loop {
                match live.step().await? {
                    Step::CaughtUp => return anyhow::Ok(()),
                    Step::Events => {}
                }
            }
        })
        .await;
        match caught_up {
            Ok(result) => result?,
            Err(_) => bail!("the subscription did not catch up within {SUBSCRIBER_DRAIN_MAX:?}"),
        }
        Ok(live)
    }

    /// Reads one chunk and handles the messages it completes.
    async fn step(&mut self) -> anyhow::Result<Step> {
        let chunk = next_chunk(&mut self.body)
            .await
            .map_err(anyhow::Error::msg)?
            .context("the subscription ended")?;
        self.parser.feed(&chunk);
        let mut step = Step::Events;
        while let Some(message) = self.parser.next_message().map_err(anyhow::Error::msg)? {
            match message.event.as_str() {
                "event" => self.event(message.id.as_deref(), &message.data),
                "caught_up" => step = Step::CaughtUp,
                "shutdown" => bail!("the server is shutting down: {}", message.data),
                "error" => bail!("the server sent an error: {}", message.data),
                _ => {}
            }
        }
        Ok(step)
    }

    /// One live event: its position (from the `id`, which the API makes the position) and the
    /// delay since the store recorded it.
    fn event(&mut self, id: Option<&str>, data: &str) {
        let now = Timestamp::now();
        match id.and_then(|id| id.parse::<u64>().ok()) {
            Some(position) => self.verifier.position(position),
            None => self
                .verifier
                .problem(|| format!("an event without a numeric id: {id:?}")),
        }
        self.stats.events += 1;
        self.stats.end = Some(Instant::now());
        if let Some(recorded) = recorded_at(data) {
            let micros = now.as_micros().saturating_sub(recorded.as_micros()).max(0);
            self.stats.record_latency(Duration::from_micros(micros as u64));
        }
    }

    async fn run(mut self, mut target: watch::Receiver<u64>) -> LiveDone {
        let mut error = None;
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let wanted = *target.borrow_and_update();
            if wanted != u64::MAX {
                if self.verifier.last_position() >= wanted {
                    break;
                }
                deadline.get_or_insert_with(|| tokio::time::Instant::now() + SUBSCRIBER_DRAIN_MAX);
            }
            let expired = async {
                match deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                step = self.step() => {
                    if let Err(e) = step {
                        error = Some(format!("{e:#}"));
                        break;
                    }
                }
                changed = target.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                () = expired => break,
            }
        }
        self.client.disconnect();
        let wanted = *target.borrow();
        LiveDone {
            stats: self.stats,
            verifier: self.verifier,
            from: self.from,
            to: (wanted != u64::MAX).then_some(wanted),
            error,
        }
    }
}

enum Step {
    Events,
    CaughtUp,
}

/// The `recorded_at` of an event's JSON, found without parsing the rest.
fn recorded_at(data: &str) -> Option<Timestamp> {
    const KEY: &str = r#""recorded_at":""#;
    let start = data.find(KEY)? + KEY.len();
    let end = start + data[start..].find('"')?;
    Timestamp::parse_rfc3339(&data[start..end]).ok()
}

struct LiveDone {
    stats: Stats,
    verifier: Verifier,
    from: u64,
    /// The head once the appenders were done: the subscriber had to reach it.
    to: Option<u64>,
    error: Option<String>,
}

impl LiveDone {
    fn report(mut self, started: Instant) -> PartReport {
        self.stats.answered = 1;
        self.stats.ok = 1;
        let received = self.stats.events;
        let missed = self
            .to
            .map(|to| to.saturating_sub(self.from).saturating_sub(received));
        if let Some(error) = self.error.take() {
            self.stats.error("subscription".to_owned(), || error);
        }
        if let Some(missed) = missed.filter(|&n| n > 0) {
            let last = self.verifier.last_position();
            self.stats.error("missed events".to_owned(), || {
                format!(
                    "{missed} events up to the head were not delivered (the last one received was at {last})"
                )
            });
        }
        let elapsed = self.stats.elapsed_since(started);
        self.stats
            .summary(elapsed)
            .with("from_position", self.from)
            .with("to_position", self.to.map_or(Value::Null, Value::from))
            .with("missed", missed.map_or(Value::Null, Value::from))
            .with("verify", self.verifier.to_json())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_at_is_found_in_an_event() {
        let data = r#"{"event_id":"x","position":3,"event_data":{"pad":"xx"},"created_at":"2024-01-15T10:00:00.000000Z","recorded_at":"2024-01-15T10:00:00.000250Z","created_by":null}"#;
        let at = recorded_at(data).expect("found");
        let created = Timestamp::parse_rfc3339("2024-01-15T10:00:00Z").expect("time");
        assert_eq!(at.as_micros() - created.as_micros(), 250);
        assert!(recorded_at(r#"{"position":3}"#).is_none());
    }
}
