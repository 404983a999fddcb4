//! `bench reserve`: conditional appends under contention. Clients race to reserve seats, each
//! reservation one `POST /v1/events` commit to several aggregates, guarded so that a seat is
//! reserved once: by a condition (the default), by `expected_version` 0 on the seat's
//! aggregate, or not at all (`--plain`, the same commits without a guard, for comparison).
//!
//! # The seats
//! Seats come in shows of `--seats` seats. The clients share an in-process seat map (what a
//! booking service would read from a projection): each picks a seat at random among those not
//! yet known to be taken, and marks it taken when it wins or loses it. Once every seat of a
//! show is marked, the next show opens. So a conflict is a real race (two clients picked the
//! same free seat before either heard back), and `--concurrency` against `--seats` sets how
//! often that happens.
//!
//! # The guard
//! - `condition`: the reservation goes to a new aggregate `<prefix><run>:r:<seat>:<client>:<n>`
//!   and the commit requires that no `SeatReserved` event exists under
//!   `<prefix><run>:r:<seat>:` at all (`after_position` 0: the seat's whole history, so no
//!   read is needed before an attempt). A loser gets 409 `condition_failed`.
//! - `expected-version`: the reservation goes to `<prefix><run>:seat:<seat>` with
//!   `expected_version` 0. A loser gets 409 `wrong_expected_version`.
//! - `none` (`--plain`): the commit of `condition` without its condition; every attempt wins.
//!
//! The other aggregates of a commit are the client's customer aggregate and, with
//! `--aggregates-per-commit` above 2, ledger aggregates of the client; they expect "any".
//! `<run>` is new on every run, so runs against the same server never meet.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use hyper::{Method, Uri};
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::json;
use tokio::task::JoinSet;
use uuid::Uuid;

use super::control::{Control, RunLength, Turn};
use super::http::{Client, describe_failure};
use super::report::Params;
use super::stats::Stats;
use super::{Bench, Finished};

/// How a seat is kept from being reserved twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Guard {
    /// A condition over the seat's reservations (409 condition_failed for the losers).
    Condition,
    /// `expected_version` 0 on the seat's own aggregate (409 wrong_expected_version).
    ExpectedVersion,
    /// No guard: the same commits, all accepted (seats may be reserved twice).
    None,
}

impl Guard {
    fn name(self) -> &'static str {
        match self {
            Guard::Condition => "condition",
            Guard::ExpectedVersion => "expected-version",
            Guard::None => "none",
        }
    }

    /// The error code of a lost race under this guard.
    fn conflict_code(self) -> Option<&'static str> {
        match self {
            Guard::Condition => Some("condition_failed"),
            Guard::ExpectedVersion => Some("wrong_expected_version"),
            Guard::None => None,
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct ReserveArgs {
    /// Clients reserving at once, each on its own connection.
    #[arg(long, short = 'c', default_value_t = 32)]
    pub concurrency: usize,
    /// Seats per show: fewer seats per client, more races.
    #[arg(long, default_value_t = 100)]
    pub seats: u64,
    /// Aggregates written by each commit (at least 2): the reservation (or the seat), the
    /// customer, and ledger aggregates of the client for the rest. One event each.
    #[arg(long, default_value_t = 2)]
    pub aggregates_per_commit: usize,
    /// How a seat is guarded.
    #[arg(long, value_enum, default_value_t = Guard::Condition)]
    pub guard: Guard,
    /// The same commits without any guard (`--guard none`): plain multi-aggregate appends to
    /// compare with.
    #[arg(long, conflicts_with = "guard")]
    pub plain: bool,
    /// The prefix of every aggregate id (a fresh run tag follows it).
    #[arg(long, default_value = "bench-reserve:")]
    pub prefix: String,
    #[command(flatten)]
    pub length: RunLength,
}

impl ReserveArgs {
    fn guard(&self) -> Guard {
        if self.plain { Guard::None } else { self.guard }
    }
}

pub async fn run(bench: &Bench, args: &ReserveArgs) -> anyhow::Result<Finished> {
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    if args.seats == 0 {
        bail!("--seats must be at least 1");
    }
    if !(2..=super::append::BATCH_MAX).contains(&args.aggregates_per_commit) {
        bail!(
            "--aggregates-per-commit must be from 2 to {}",
            super::append::BATCH_MAX
        );
    }
    let guard = args.guard();
    // Eight hex digits of a UUIDv7's random part: unique enough per server, short in ids.
    let run_tag = Uuid::now_v7().simple().to_string()[24..].to_owned();
    let plan = Arc::new(Plan {
        guard,
        aggregates_per_commit: args.aggregates_per_commit,
        base: format!("{}{run_tag}:", args.prefix),
        uri: "/v1/events".parse().context("the path of POST /v1/events")?,
    });
    let mut params: Params = vec![
        ("concurrency", args.concurrency.into()),
        ("seats", args.seats.into()),
        ("aggregates_per_commit", args.aggregates_per_commit.into()),
        ("guard", guard.name().into()),
        ("prefix", args.prefix.clone().into()),
        ("run", run_tag.into()),
    ];
    args.length.describe(&mut params);

    let map = Arc::new(SeatMap::new(args.seats));
    let mut setups = JoinSet::new();
    for client_index in 0..args.concurrency {
        let mut client = Client::new(bench.target.clone());
        setups.spawn(async move {
            client.connect().await.map_err(anyhow::Error::msg)?;
            anyhow::Ok(Reserver {
                client,
                index: client_index,
                attempts: 0,
                rng: SmallRng::from_os_rng(),
            })
        });
    }
    let mut reservers = Vec::with_capacity(args.concurrency);
    while let Some(setup) = setups.join_next().await {
        reservers.push(setup.context("a client's setup panicked")??);
    }

    let control = Arc::new(Control::start(&args.length));
    let mut tasks = JoinSet::new();
    for reserver in reservers {
        tasks.spawn(reserver.run(plan.clone(), map.clone(), control.clone()));
    }
    let mut stats = Stats::new();
    let mut conflicts = Conflicts::default();
    while let Some(done) = tasks.join_next().await {
        let (s, c) = done.context("a client panicked")?;
        stats.merge(&s);
        conflicts.condition_failed += c.condition_failed;
        conflicts.wrong_expected_version += c.wrong_expected_version;
    }
    let elapsed = stats.elapsed_since(control.measure_from());
    let seconds = elapsed.as_secs_f64();
    let share = if stats.answered > 0 {
        stats.conflicts as f64 / stats.answered as f64
    } else {
        0.0
    };
    let part = stats
        .summary(elapsed)
        .with(
            "commits_per_s",
            if seconds > 0.0 {
                stats.ok as f64 / seconds
            } else {
                0.0
            },
        )
        .with("conflict_share", share)
        .with(
            "conflicts_by_kind",
            json!({
                "condition_failed": conflicts.condition_failed,
                "wrong_expected_version": conflicts.wrong_expected_version,
            }),
        )
        .with("shows_opened", map.shows_opened());
    Ok(Finished {
        params,
        parts: vec![("reserve", part)],
    })
}

#[derive(Debug)]
struct Plan {
    guard: Guard,
    aggregates_per_commit: usize,
    /// `<prefix><run>:`
    base: String,
    uri: Uri,
}

/// Conflicts by error code (their sum is `Stats::conflicts`).
#[derive(Debug, Default, Clone, Copy)]
struct Conflicts {
    condition_failed: u64,
    wrong_expected_version: u64,
}

/// The clients' shared view of which seats are taken. `taken[i]` is 1 + the last show in
/// which seat `i` was marked (0: never); `marked` counts the marks, so the open show is
/// `marked / seats`.
#[derive(Debug)]
struct SeatMap {
    taken: Vec<AtomicU64>,
    marked: AtomicU64,
}

impl SeatMap {
    fn new(seats: u64) -> SeatMap {
        SeatMap {
            taken: (0..seats).map(|_| AtomicU64::new(0)).collect(),
            marked: AtomicU64::new(0),
        }
    }

    fn seats(&self) -> u64 {
        self.taken.len() as u64
    }

    /// A free seat of the open show, chosen at random: (show, seat).
    fn pick(&self, rng: &mut SmallRng) -> (u64, u64) {
        loop {
            let show = self.marked.load(Ordering::Acquire) / self.seats();
            let start = rng.random_range(0..self.seats());
            for step in 0..self.seats() {
                let seat = (start + step) % self.seats();
                if self.taken[seat as usize].load(Ordering::Acquire) <= show {
                    return (show, seat);
                }
            }
            // Every seat was marked while we looked: the next show is open now.
        }
    }

    /// Marks a seat of `show` taken; the last mark of a show opens the next one.
    fn mark(&self, show: u64, seat: u64) {
        let before = self.taken[seat as usize].fetch_max(show + 1, Ordering::AcqRel);
        if before <= show {
            self.marked.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn shows_opened(&self) -> u64 {
        self.marked.load(Ordering::Acquire) / self.seats() + 1
    }
}

#[derive(Debug)]
struct Reserver {
    client: Client,
    index: usize,
    attempts: u64,
    rng: SmallRng,
}

impl Reserver {
    async fn run(mut self, plan: Arc<Plan>, map: Arc<SeatMap>, control: Arc<Control>) -> (Stats, Conflicts) {
        let mut stats = Stats::new();
        let mut conflicts = Conflicts::default();
        let mut failures_in_a_row = 0u32;
        let events = plan.aggregates_per_commit as u64;
        loop {
            let measured = match control.next() {
                Turn::Stop => break,
                Turn::Warmup => false,
                Turn::Measured(_) => true,
            };
            let (show, seat) = map.pick(&mut self.rng);
            self.attempts += 1;
            let body = commit_body(&plan, self.index, self.attempts, &mut self.rng, show, seat);
            let request = self.client.target().request(Method::POST, plan.uri.clone(), body);
            let started = Instant::now();
            let (status, body) = match self.client.fetch(request).await {
                Ok(answer) => answer,
                Err(error) => {
                    if measured {
                        stats.error("connection".to_owned(), || error);
                    }
                    failures_in_a_row += 1;
                    if failures_in_a_row > 3 {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    continue;
                }
            };
            failures_in_a_row = 0;
            let latency = started.elapsed();
            if status.is_success() {
                map.mark(show, seat);
                if measured {
                    stats.ok(latency, events);
                }
                continue;
            }
            let (key, message) = describe_failure(status, &body);
            let code = key.strip_prefix("409 ");
            if code.is_some() && code == plan.guard.conflict_code() {
                // Another client won this seat: it is taken.
                map.mark(show, seat);
                if measured {
                    stats.conflict();
                    match plan.guard {
                        Guard::Condition => conflicts.condition_failed += 1,
                        Guard::ExpectedVersion => conflicts.wrong_expected_version += 1,
                        Guard::None => {}
                    }
                }
                continue;
            }
            if measured {
                stats.failed(key.clone(), || format!("POST /v1/events: {key}: {message}"));
            }
        }
        (stats, conflicts)
    }
}

/// The commit of attempt `attempt` of client `client` to reserve a seat.
fn commit_body(plan: &Plan, client: usize, attempt: u64, rng: &mut SmallRng, show: u64, seat: u64) -> Bytes {
    let base = &plan.base;
    let seat_id = format!("{show}-{seat}");
    let mut body = String::with_capacity(300 * plan.aggregates_per_commit + 200);
    body.push_str(r#"{"appends":["#);
    let (first, first_type) = match plan.guard {
        Guard::ExpectedVersion => (format!("{base}seat:{seat_id}"), "Seat"),
        Guard::Condition | Guard::None => (format!("{base}r:{seat_id}:{client}:{}", attempt), "Reservation"),
    };
    let _ = write!(
        body,
        r#"{{"aggregate_id":"{first}","expected_version":0,"events":[{}]}}"#,
        event(
            rng,
            first_type,
            "SeatReserved",
            &format!(r#"{{"seat":"{base}{seat_id}","client":{client}}}"#)
        )
    );
    let _ = write!(
        body,
        r#",{{"aggregate_id":"{base}customer:{client}","events":[{}]}}"#,
        event(
            rng,
            "Customer",
            "ReservationMade",
            &format!(r#"{{"seat":"{base}{seat_id}"}}"#)
        )
    );
    for ledger in 2..plan.aggregates_per_commit {
        let _ = write!(
            body,
            r#",{{"aggregate_id":"{base}ledger:{client}:{ledger}","events":[{}]}}"#,
            event(
                rng,
                "Ledger",
                "SeatHeld",
                &format!(r#"{{"seat":"{base}{seat_id}"}}"#)
            )
        );
    }
    body.push(']');
    if plan.guard == Guard::Condition {
        let _ = write!(
            body,
            r#","condition":{{"filter":{{"event_types":["SeatReserved"],"aggregate_id_prefix":"{base}r:{seat_id}:"}},"after_position":0}}"#
        );
    }
    body.push('}');
    Bytes::from(body)
}

/// One event with a fresh client id.
fn event(rng: &mut SmallRng, aggregate_type: &str, event_type: &str, data: &str) -> String {
    let mut random = [0u8; 10];
    rng.fill_bytes(&mut random);
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let id = uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid();
    format!(
        r#"{{"event_id":"{id}","aggregate_type":"{aggregate_type}","event_type":"{event_type}","event_data":{data}}}"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn plan(guard: Guard, aggregates_per_commit: usize) -> Plan {
        Plan {
            guard,
            aggregates_per_commit,
            base: "b:run:".to_owned(),
            uri: Uri::from_static("/v1/events"),
        }
    }

    #[test]
    fn bodies_are_valid_commits_for_each_guard() {
        let mut rng = SmallRng::seed_from_u64(1);
        let body: Value =
            serde_json::from_slice(&commit_body(&plan(Guard::Condition, 3), 3, 1, &mut rng, 2, 1))
                .expect("JSON");
        let appends = body["appends"].as_array().expect("appends");
        assert_eq!(appends.len(), 3);
        assert_eq!(appends[0]["aggregate_id"], "b:run:r:2-1:3:1");
        assert_eq!(appends[0]["expected_version"], 0);
        assert_eq!(appends[0]["events"][0]["event_data"]["seat"], "b:run:2-1");
        assert_eq!(appends[1]["aggregate_id"], "b:run:customer:3");
        assert_eq!(appends[2]["aggregate_id"], "b:run:ledger:3:2");
        assert_eq!(
            body["condition"],
            json!({"filter": {"event_types": ["SeatReserved"], "aggregate_id_prefix": "b:run:r:2-1:"},
                   "after_position": 0})
        );
        let ids: Vec<&str> = appends
            .iter()
            .map(|a| a["events"][0]["event_id"].as_str().expect("id"))
            .collect();
        assert!(ids[0] != ids[1] && ids[1] != ids[2]);

        let body: Value = serde_json::from_slice(&commit_body(
            &plan(Guard::ExpectedVersion, 2),
            3,
            2,
            &mut rng,
            0,
            3,
        ))
        .expect("JSON");
        assert_eq!(body["appends"][0]["aggregate_id"], "b:run:seat:0-3");
        assert_eq!(body["appends"][0]["events"][0]["aggregate_type"], "Seat");
        assert!(body.get("condition").is_none());

        let body: Value =
            serde_json::from_slice(&commit_body(&plan(Guard::None, 2), 3, 3, &mut rng, 0, 0)).expect("JSON");
        assert_eq!(body["appends"][0]["aggregate_id"], "b:run:r:0-0:3:3");
        assert!(body.get("condition").is_none());
    }

    #[test]
    fn the_last_mark_of_a_show_opens_the_next() {
        let map = SeatMap::new(3);
        let mut rng = SmallRng::seed_from_u64(9);
        let mut picked = Vec::new();
        for _ in 0..3 {
            let (show, seat) = map.pick(&mut rng);
            assert_eq!(show, 0);
            assert!(!picked.contains(&seat), "a marked seat is not picked again");
            picked.push(seat);
            map.mark(show, seat);
            // A second mark of the same seat (a loser) counts once.
            map.mark(show, seat);
        }
        assert_eq!(map.shows_opened(), 2);
        let (show, _) = map.pick(&mut rng);
        assert_eq!(show, 1);
        // A late mark for the closed show changes nothing.
        map.mark(0, picked[0]);
        assert_eq!(map.shows_opened(), 2);
    }
}
