//! `bench consume`: persistent-subscription delivery with ACK. Creates a group from the
//! beginning (deleting one of the same name first), then `--consumers` clients each poll up
//! to `--max` events and ack them in one request, until every event up to the head when it
//! started has been acked. Reports the events delivered and acked per second and the poll and
//! ack latencies; with `--ordering per_aggregate` the same under per-aggregate order.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::Bytes;
use hyper::Method;
use serde_json::Value;
use tokio::task::JoinSet;

use super::control::{format_duration, parse_duration};
use super::http::{Client, Target, call, describe_failure, encode_segment};
use super::stats::Stats;
use super::{Bench, Finished, head, seed};

#[derive(Debug, Clone, clap::Args)]
pub struct ConsumeArgs {
    /// The group to create (one of that name is deleted first).
    #[arg(long, default_value = "bench")]
    pub group: String,
    /// Consumers polling and acking at once, each on its own connection.
    #[arg(long, default_value_t = 4)]
    pub consumers: usize,
    /// Most events per poll (1 to 10000).
    #[arg(long, default_value_t = 500)]
    pub max: usize,
    /// How long a poll waits for events when none is ready, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub wait_ms: u64,
    /// The group's ordering: none or per_aggregate.
    #[arg(long, default_value = "none")]
    pub ordering: String,
    /// Leave the group in place at the end (it is deleted by default).
    #[arg(long)]
    pub keep: bool,
    /// Give up when not every event is acked after this long.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// First append this many events (1000 per request; as `bench seed` with its defaults).
    #[arg(long)]
    pub seed: Option<u64>,
}

pub async fn run(bench: &Bench, args: &ConsumeArgs) -> anyhow::Result<Finished> {
    if args.consumers == 0 {
        bail!("--consumers must be at least 1");
    }
    if !(1..=10_000).contains(&args.max) {
        bail!("--max must be between 1 and 10000");
    }
    if !["none", "per_aggregate"].contains(&args.ordering.as_str()) {
        bail!("--ordering must be none or per_aggregate");
    }
    let params = vec![
        ("group", args.group.clone().into()),
        ("consumers", args.consumers.into()),
        ("max", args.max.into()),
        ("wait_ms", args.wait_ms.into()),
        ("ordering", args.ordering.clone().into()),
        ("timeout", format_duration(args.timeout).into()),
        ("seed", args.seed.map_or(Value::Null, Value::from)),
    ];
    let mut parts = Vec::new();
    if let Some(seeded) = seed::seed_option(bench, args.seed).await? {
        parts.push(("seed", seeded));
    }
    let target = bench.target.clone();
    let base = format!("/v1/subscriptions/{}", encode_segment(&args.group));
    let events = head(&target).await?;
    let mut admin = Client::new(target.clone());
    let (status, body) = call(&mut admin, &target, Method::DELETE, &base, Bytes::new()).await?;
    if !status.is_success() && status.as_u16() != 404 {
        let (key, message) = describe_failure(status, &body);
        bail!("DELETE {base} answered {key}: {message}");
    }
    let definition = format!(r#"{{"start":"beginning","ordering":"{}"}}"#, args.ordering);
    let (status, body) = call(&mut admin, &target, Method::PUT, &base, Bytes::from(definition)).await?;
    if status.as_u16() != 201 {
        let (key, message) = describe_failure(status, &body);
        bail!("PUT {base} answered {key}: {message}");
    }

    let acked = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + args.timeout;
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..args.consumers {
        let mut client = Client::new(target.clone());
        client.connect().await.map_err(anyhow::Error::msg)?;
        tasks.spawn(consume(
            client,
            target.clone(),
            base.clone(),
            format!("bench-{i}"),
            args.max,
            args.wait_ms,
            events,
            acked.clone(),
            deadline,
        ));
    }
    let mut polls = Stats::new();
    let mut acks = Stats::new();
    while let Some(done) = tasks.join_next().await {
        let (p, a) = done?;
        polls.merge(&p);
        acks.merge(&a);
    }
    let elapsed = acks.elapsed_since(start);
    parts.push(("poll", polls.summary(elapsed)));
    parts.push((
        "ack",
        acks.summary(elapsed)
            .with("events_to_ack", events)
            .with("acked", acked.load(Ordering::Relaxed)),
    ));
    if !args.keep {
        let _ = call(&mut admin, &target, Method::DELETE, &base, Bytes::new()).await;
    }
    Ok(Finished { params, parts })
}

/// The positions of a poll's events: each event object begins `{"event_id":"<uuid>",
/// "position":`, so they are found without parsing the bodies.
fn positions(body: &[u8]) -> Vec<u64> {
    const START: &[u8] = b"{\"event_id\":\"";
    const AFTER_ID: &[u8] = b"\",\"position\":";
    let mut out = Vec::new();
    for at in memchr::memmem::find_iter(body, START) {
        let from = at + START.len() + 36;
        if body.get(from..from + AFTER_ID.len()) != Some(AFTER_ID) {
            continue;
        }
        let digits = &body[from + AFTER_ID.len()..];
        let end = digits
            .iter()
            .position(|b| !b.is_ascii_digit())
            .unwrap_or(digits.len());
        if let Some(p) = std::str::from_utf8(&digits[..end])
            .ok()
            .and_then(|t| t.parse().ok())
        {
            out.push(p);
        }
    }
    out
}

#[expect(
    clippy::too_many_arguments,
    reason = "one consumer's whole setup, passed once"
)]
async fn consume(
    mut client: Client,
    target: Arc<Target>,
    base: String,
    consumer: String,
    max: usize,
    wait_ms: u64,
    events: u64,
    acked: Arc<AtomicU64>,
    deadline: Instant,
) -> (Stats, Stats) {
    let mut polls = Stats::new();
    let mut acks = Stats::new();
    let poll_path = format!("{base}/poll");
    let ack_path = format!("{base}/ack");
    let poll_body = Bytes::from(format!(
        r#"{{"consumer":"{consumer}","max":{max},"wait_ms":{wait_ms}}}"#
    ));
    let mut ack_body = Vec::with_capacity(16 + max * 12);
    while acked.load(Ordering::Relaxed) < events && Instant::now() < deadline {
        let started = Instant::now();
        let (status, body) =
            match call(&mut client, &target, Method::POST, &poll_path, poll_body.clone()).await {
                Ok(answer) => answer,
                Err(e) => {
                    polls.failed("connection".to_owned(), || format!("{e:#}"));
                    continue;
                }
            };
        if !status.is_success() {
            let (key, message) = describe_failure(status, &body);
            polls.failed(key, || format!("POST {poll_path}: {message}"));
            continue;
        }
        let got = positions(&body);
        polls.ok(started.elapsed(), got.len() as u64);
        if got.is_empty() {
            continue;
        }
        ack_body.clear();
        ack_body.extend_from_slice(b"{\"positions\":[");
        let mut numbers = itoa::Buffer::new();
        for (i, p) in got.iter().enumerate() {
            if i > 0 {
                ack_body.push(b',');
            }
            ack_body.extend_from_slice(numbers.format(*p).as_bytes());
        }
        ack_body.extend_from_slice(b"]}");
        let started = Instant::now();
        match call(
            &mut client,
            &target,
            Method::POST,
            &ack_path,
            Bytes::from(ack_body.clone()),
        )
        .await
        {
            Ok((status, _)) if status.as_u16() == 204 => {
                acks.ok(started.elapsed(), got.len() as u64);
                acked.fetch_add(got.len() as u64, Ordering::Relaxed);
            }
            Ok((status, body)) => {
                let (key, message) = describe_failure(status, &body);
                acks.failed(key, || format!("POST {ack_path}: {message}"));
            }
            Err(e) => acks.failed("connection".to_owned(), || format!("{e:#}")),
        }
    }
    (polls, acks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_found_in_a_poll_body() {
        let body = br#"{"events":[{"event_id":"0192f3c4-5e6a-7b8c-9d0e-1f2a3b4c5d6e","position":42,"event_data":{"x":"{\"event_id\":\""},"attempt":1},{"event_id":"0192f3c4-5e6a-7b8c-9d0e-1f2a3b4c5d6f","position":43,"attempt":2}]}"#;
        assert_eq!(positions(body), [42, 43]);
    }
}
