//! `bench read-all`: readers paging through every event with `GET /v1/events`, from position 0
//! (or `--after`) to the head. Each page is counted as it streams in (see [`super::scan`]); with
//! `--verify` it is also parsed in full and its positions checked.

use std::time::Instant;

use anyhow::bail;
use serde_json::Value;
use tokio::task::JoinSet;

use super::http::{Client, Target, describe_failure, next_chunk};
use super::scan::PageScan;
use super::stats::Stats;
use super::verify::Verifier;
use super::{Bench, Finished, extra_query, seed};

#[derive(Debug, Clone, clap::Args)]
pub struct ReadAllArgs {
    /// Readers, each reading every event on its own connection.
    #[arg(long, short = 'c', default_value_t = 1)]
    pub concurrency: usize,
    /// Events per page (`limit`; the server allows at most 10000).
    #[arg(long, default_value_t = 10_000)]
    pub page_size: u64,
    /// Start after this position.
    #[arg(long, default_value_t = 0)]
    pub after: u64,
    /// Filter parameters added to every page, e.g. `event_type=BenchEvent` or
    /// `aggregate_id_prefix=bench:1` (as in GET /v1/events).
    #[arg(long)]
    pub query: Option<String>,
    /// Times each reader reads everything.
    #[arg(long, default_value_t = 1)]
    pub passes: u32,
    /// Parse every page in full and check that positions follow each other with no gap
    /// (strictly increase, with --query); much slower than the counting path.
    #[arg(long)]
    pub verify: bool,
    /// First append this many events (1000 per request; as `bench seed` with its defaults).
    #[arg(long)]
    pub seed: Option<u64>,
}

pub async fn run(bench: &Bench, args: &ReadAllArgs) -> anyhow::Result<Finished> {
    if args.concurrency == 0 || args.passes == 0 || args.page_size == 0 {
        bail!("--concurrency, --passes and --page-size must be at least 1");
    }
    let params = vec![
        ("concurrency", args.concurrency.into()),
        ("page_size", args.page_size.into()),
        ("after", args.after.into()),
        ("query", args.query.clone().map_or(Value::Null, Value::from)),
        ("passes", args.passes.into()),
        ("verify", args.verify.into()),
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
        tasks.spawn(read_everything(client, args.clone()));
    }
    let mut stats = Stats::new();
    let mut verifier = Verifier::new(args.after, args.query.is_none());
    let (mut bytes, mut head) = (0u64, 0u64);
    while let Some(done) = tasks.join_next().await {
        let done = done?;
        stats.merge(&done.stats);
        verifier.merge(&done.verifier);
        bytes += done.bytes;
        head = head.max(done.head);
    }
    let elapsed = stats.elapsed_since(start);
    let mut part = stats
        .summary(elapsed)
        .with("readers", args.concurrency)
        .with("pages", stats.ok)
        .with("head_position", head)
        .with("bytes", bytes)
        .with("mb_per_s", per_second(bytes as f64 / 1e6, elapsed.as_secs_f64()));
    if args.verify {
        part = part.with("verify", verifier.to_json());
    }
    parts.push(("read_all", part));
    Ok(Finished { params, parts })
}

fn per_second(amount: f64, seconds: f64) -> f64 {
    if seconds > 0.0 { amount / seconds } else { 0.0 }
}

struct ReaderDone {
    stats: Stats,
    verifier: Verifier,
    bytes: u64,
    head: u64,
}

async fn read_everything(mut client: Client, args: ReadAllArgs) -> ReaderDone {
    let mut done = ReaderDone {
        stats: Stats::new(),
        verifier: Verifier::new(args.after, args.query.is_none()),
        bytes: 0,
        head: 0,
    };
    let query = extra_query(args.query.as_deref());
    for _ in 0..args.passes {
        let mut verifier = Verifier::new(args.after, args.query.is_none());
        let mut after = args.after;
        loop {
            let path = format!(
                "/v1/events?after_position={after}&limit={}{query}",
                args.page_size
            );
            let page = match read_page(&mut client, &path, args.verify.then_some(&mut verifier)).await {
                Ok(page) => page,
                Err((key, sample)) => {
                    done.stats.error(key, || sample);
                    break;
                }
            };
            done.bytes += page.bytes;
            done.head = done.head.max(page.head);
            done.stats.ok(page.latency, page.events);
            if page.next >= page.head {
                break;
            }
            if page.next <= after {
                done.stats.error("no progress".to_owned(), || {
                    format!(
                        "GET {path}: next_after_position {} does not move past {after}",
                        page.next
                    )
                });
                break;
            }
            after = page.next;
        }
        done.verifier.merge(&verifier);
    }
    done
}

pub struct Page {
    pub latency: std::time::Duration,
    pub events: u64,
    pub bytes: u64,
    pub next: u64,
    pub head: u64,
}

/// Reads one page of `GET /v1/events`, counting its events as they stream in; with a
/// verifier, also keeps the body and checks it. A failure is `(error key, description)`.
pub async fn read_page(
    client: &mut Client,
    path: &str,
    verifier: Option<&mut Verifier>,
) -> Result<Page, (String, String)> {
    let target: &Target = client.target();
    let request = target
        .get(path)
        .map_err(|e| ("bad request".to_owned(), format!("{e:#}")))?;
    let started = Instant::now();
    let connection_error = |e: String| ("connection".to_owned(), format!("GET {path}: {e}"));
    let response = client.send(request).await.map_err(connection_error)?;
    let status = response.status();
    let mut body = response.into_body();
    if !status.is_success() {
        let body = client.read_body(body).await.map_err(connection_error)?;
        let (key, message) = describe_failure(status, &body);
        return Err((key.clone(), format!("GET {path}: {key}: {message}")));
    }
    let mut scan = PageScan::new();
    let mut kept = verifier.as_ref().map(|_| Vec::new());
    loop {
        match next_chunk(&mut body).await {
            Ok(Some(chunk)) => {
                scan.feed(&chunk);
                if let Some(kept) = kept.as_mut() {
                    kept.extend_from_slice(&chunk);
                }
            }
            Ok(None) => break,
            Err(e) => {
                client.disconnect();
                return Err(connection_error(e));
            }
        }
    }
    let latency = started.elapsed();
    let (Some(Some(next)), Some(Some(head))) = (
        scan.tail_field("next_after_position"),
        scan.tail_field("head_position"),
    ) else {
        return Err((
            "bad page".to_owned(),
            format!("GET {path}: the page does not end with next_after_position and head_position"),
        ));
    };
    if let (Some(verifier), Some(kept)) = (verifier, kept) {
        verifier.events_page(&kept, scan.count);
    }
    Ok(Page {
        latency,
        events: scan.count,
        bytes: scan.bytes,
        next,
        head,
    })
}
