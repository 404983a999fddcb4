//! `bench seed`: fill the store quickly (1000-event appends from a few clients), so that the
//! read workloads have something to read. `read-all --seed N` and `subscribe --seed N` do the
//! same with the defaults below before they measure.

use std::sync::Arc;

use super::append::{self, AppendPlan, EventShape, Schedule};
use super::control::Control;
use super::report::Params;
use super::stats::PartReport;
use super::{Bench, Finished};

#[derive(Debug, Clone, clap::Args)]
pub struct SeedArgs {
    /// Events to append in all.
    #[arg(long)]
    pub events: u64,
    /// Clients appending at once.
    #[arg(long, short = 'c', default_value_t = 4)]
    pub concurrency: usize,
    /// Events per request (at most 1000).
    #[arg(long, short = 'b', default_value_t = 1000)]
    pub batch: usize,
    /// Aggregates the events are spread over (request after request, in turn): ids
    /// <PREFIX>0 to <PREFIX>(N-1).
    #[arg(long, default_value_t = 100)]
    pub aggregates: u64,
    /// The prefix of the aggregate ids.
    #[arg(long, default_value = "bench:")]
    pub prefix: String,
    #[command(flatten)]
    pub shape: EventShape,
}

impl SeedArgs {
    /// What `--seed N` of the read workloads does.
    pub fn defaults(events: u64) -> SeedArgs {
        SeedArgs {
            events,
            concurrency: 4,
            batch: append::BATCH_MAX,
            aggregates: 100,
            prefix: "bench:".to_owned(),
            shape: EventShape {
                payload_bytes: 200,
                server_ids: false,
            },
        }
    }

    fn describe(&self, params: &mut Params) {
        params.push(("events", self.events.into()));
        params.push(("concurrency", self.concurrency.into()));
        params.push(("batch", self.batch.into()));
        params.push(("aggregates", self.aggregates.into()));
        params.push(("prefix", self.prefix.clone().into()));
        self.shape.describe(params);
    }
}

pub async fn run(bench: &Bench, args: &SeedArgs) -> anyhow::Result<Finished> {
    let mut params = Vec::new();
    args.describe(&mut params);
    let part = fill(bench, args).await?;
    Ok(Finished {
        params,
        parts: vec![("seed", part)],
    })
}

/// Appends exactly `args.events` events and reports how fast.
pub async fn fill(bench: &Bench, args: &SeedArgs) -> anyhow::Result<PartReport> {
    let plan = AppendPlan {
        concurrency: args.concurrency,
        batch: args.batch,
        shape: args.shape.clone(),
        aggregates: append::aggregate_ids(&args.prefix, args.aggregates),
        schedule: Schedule::Total(args.events),
        expected_version: false,
    };
    let tickets = plan.tickets().unwrap_or(0);
    let prepared = plan.prepare(bench.target.clone()).await?;
    let control = Arc::new(Control::counted(std::time::Duration::ZERO, tickets));
    let stats = append::collect(prepared.spawn(control.clone())).await?;
    Ok(stats.summary(stats.elapsed_since(control.measure_from())))
}

/// Runs `--seed N` of a read workload if it was given: the part to report, and whether it
/// failed (then there is no point in measuring reads).
pub async fn seed_option(bench: &Bench, events: Option<u64>) -> anyhow::Result<Option<PartReport>> {
    let Some(events) = events else {
        return Ok(None);
    };
    let part = fill(bench, &SeedArgs::defaults(events)).await?;
    if part.errors > 0 {
        anyhow::bail!(
            "seeding failed ({} of its requests failed), e.g. {}",
            part.errors,
            part.error_samples.first().map(String::as_str).unwrap_or("?")
        );
    }
    Ok(Some(part))
}
