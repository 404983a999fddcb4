//! `bench subscribe`: the catch-up rate of `GET /v1/subscribe`. Each subscriber opens the
//! stream from position 0 (or `--after`), counts `event: event` messages until
//! `event: caught_up` and hangs up. With `--verify` every message is also parsed and its
//! position checked.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::Value;
use tokio::task::JoinSet;

use super::control::{format_duration, parse_duration};
use super::http::{Client, describe_failure, next_chunk};
use super::scan::{CatchUp, CatchUpScan, SseParser};
use super::stats::Stats;
use super::verify::Verifier;
use super::{Bench, Finished, extra_query, seed};

#[derive(Debug, Clone, clap::Args)]
pub struct SubscribeArgs {
    /// Subscribers, each catching up on its own connection.
    #[arg(long, short = 'c', default_value_t = 1)]
    pub concurrency: usize,
    /// Subscribe from after this position.
    #[arg(long, default_value_t = 0)]
    pub after: u64,
    /// Filter parameters of the subscription, e.g. `event_type=BenchEvent` (as in
    /// GET /v1/subscribe).
    #[arg(long)]
    pub query: Option<String>,
    /// Parse every message in full and check that positions follow each other with no gap
    /// (strictly increase, with --query) and that caught_up names the last one.
    #[arg(long)]
    pub verify: bool,
    /// Give up on a subscriber that has not caught up after this long.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// First append this many events (1000 per request; as `bench seed` with its defaults).
    #[arg(long)]
    pub seed: Option<u64>,
}

pub async fn run(bench: &Bench, args: &SubscribeArgs) -> anyhow::Result<Finished> {
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let params = vec![
        ("concurrency", args.concurrency.into()),
        ("after", args.after.into()),
        ("query", args.query.clone().map_or(Value::Null, Value::from)),
        ("verify", args.verify.into()),
        ("timeout", format_duration(args.timeout).into()),
        ("seed", args.seed.map_or(Value::Null, Value::from)),
    ];
    let mut parts = Vec::new();
    if let Some(seeded) = seed::seed_option(bench, args.seed).await? {
        parts.push(("seed", seeded));
    }
    let mut clients = Vec::with_capacity(args.concurrency);
    for _ in 0..args.concurrency {
        let mut client = Client::new(bench.target.clone());
        client.connect().await.map_err(anyhow::Error::msg)?;
        clients.push(client);
    }
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for client in clients {
        tasks.spawn(catch_up(client, Arc::new(args.clone())));
    }
    let mut stats = Stats::new();
    let mut verifier = Verifier::new(args.after, args.query.is_none());
    let mut positions = Vec::new();
    let mut bytes = 0;
    while let Some(done) = tasks.join_next().await {
        let done = done?;
        stats.merge(&done.stats);
        verifier.merge(&done.verifier);
        bytes += done.bytes;
        positions.extend(done.caught_up);
    }
    let elapsed = stats.elapsed_since(start);
    let mut part = stats
        .summary(elapsed)
        .with("subscribers", args.concurrency)
        .with("bytes", bytes)
        .with(
            "caught_up_position",
            positions.iter().max().copied().map_or(Value::Null, Value::from),
        );
    if args.verify {
        part = part.with("verify", verifier.to_json());
    }
    parts.push(("subscribe", part));
    Ok(Finished { params, parts })
}

struct SubscriberDone {
    stats: Stats,
    verifier: Verifier,
    bytes: u64,
    caught_up: Option<u64>,
}

async fn catch_up(mut client: Client, args: Arc<SubscribeArgs>) -> SubscriberDone {
    let dense = args.query.is_none();
    let mut done = SubscriberDone {
        stats: Stats::new(),
        verifier: Verifier::new(args.after, dense),
        bytes: 0,
        caught_up: None,
    };
    let path = format!(
        "/v1/subscribe?after_position={}{}",
        args.after,
        extra_query(args.query.as_deref())
    );
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + args.timeout;
    let result = tokio::time::timeout_at(deadline, follow(&mut client, &path, &args, &mut done)).await;
    client.disconnect();
    match result {
        Ok(Ok(events)) => done.stats.ok(started.elapsed(), events),
        Ok(Err((key, sample))) => done.stats.error(key, || format!("GET {path}: {sample}")),
        Err(_) => done.stats.error("timeout".to_owned(), || {
            format!(
                "GET {path}: not caught up after {}",
                format_duration(args.timeout)
            )
        }),
    }
    done
}

/// Reads the stream until `caught_up`; the number of events before it.
async fn follow(
    client: &mut Client,
    path: &str,
    args: &SubscribeArgs,
    done: &mut SubscriberDone,
) -> Result<u64, (String, String)> {
    let request = client
        .target()
        .get_stream(path)
        .map_err(|e| ("bad request".to_owned(), format!("{e:#}")))?;
    let response = client
        .send(request)
        .await
        .map_err(|e| ("connection".to_owned(), e))?;
    let status = response.status();
    let mut body = response.into_body();
    if !status.is_success() {
        let body = client
            .read_body(body)
            .await
            .map_err(|e| ("connection".to_owned(), e))?;
        let (key, message) = describe_failure(status, &body);
        return Err((key.clone(), format!("{key}: {message}")));
    }
    let mut scan = CatchUpScan::new();
    let mut parser = args.verify.then(SseParser::default);
    let mut parsed_events = 0u64;
    let mut parsed_caught_up = None;
    loop {
        let chunk = match next_chunk(&mut body).await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => {
                return Err((
                    "stream ended".to_owned(),
                    "the stream ended before caught_up (--verify shows why)".to_owned(),
                ));
            }
            Err(e) => return Err(("connection".to_owned(), e)),
        };
        done.bytes += chunk.len() as u64;
        let outcome = scan.feed(&chunk);
        if let Some(parser) = parser.as_mut() {
            parser.feed(&chunk);
            while parsed_caught_up.is_none() {
                let message = match parser.next_message() {
                    Ok(Some(message)) => message,
                    Ok(None) => break,
                    Err(e) => {
                        done.verifier.problem(|| e);
                        break;
                    }
                };
                match message.event.as_str() {
                    "event" => {
                        parsed_events += 1;
                        done.verifier.sse_event(message.id.as_deref(), &message.data);
                    }
                    "caught_up" => {
                        parsed_caught_up = Some(
                            serde_json::from_str::<Value>(&message.data)
                                .ok()
                                .and_then(|v| v.get("position").and_then(Value::as_u64)),
                        );
                    }
                    "shutdown" => {
                        return Err((
                            "shutdown".to_owned(),
                            format!("the server is shutting down: {}", message.data),
                        ));
                    }
                    "error" => {
                        return Err((
                            "stream error".to_owned(),
                            format!("the server sent an error: {}", message.data),
                        ));
                    }
                    _ => {}
                }
            }
        }
        if let CatchUp::Done(position) = outcome {
            done.caught_up = position;
            if args.verify {
                check_caught_up(done, args, scan.count, parsed_events, position, parsed_caught_up);
            }
            return Ok(scan.count);
        }
    }
}

/// The fast scan and the full parse must agree, and `caught_up` must name the last position
/// delivered (unfiltered, where every position is delivered).
fn check_caught_up(
    done: &mut SubscriberDone,
    args: &SubscribeArgs,
    counted: u64,
    parsed: u64,
    position: Option<u64>,
    parsed_position: Option<Option<u64>>,
) {
    let verifier = &mut done.verifier;
    if counted != parsed {
        verifier.problem(|| format!("the fast count found {counted} events where {parsed} were parsed"));
    }
    match (position, parsed_position) {
        (Some(position), Some(Some(parsed))) if position == parsed => {
            let last = verifier.last_position();
            if args.query.is_none() && position != last {
                verifier.problem(|| format!("caught_up at {position}, but the last event was at {last}"));
            } else if position < last {
                verifier.problem(|| format!("caught_up at {position}, before the last event at {last}"));
            }
        }
        other => verifier.problem(|| format!("caught_up carries no readable position: {other:?}")),
    }
}
