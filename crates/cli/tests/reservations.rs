//! Lost updates: many clients of a real `factstore serve` race to reserve the same seats with
//! `POST /v1/events`, each reservation a commit to two aggregates (the reservation or the seat,
//! and the customer). Exactly one reservation of each seat may ever be stored, the losers get
//! 409, and a kill -9 in the middle never leaves half a commit.
//!
//! Two ways of guarding a seat, both tested:
//! - a **condition**: the reservation goes to a fresh aggregate `reservation:<seat>:<client>:<n>`
//!   and the commit requires that no `SeatReserved` event under `reservation:<seat>:` exists
//!   after the position up to which the client read the seat's state (409 `condition_failed`);
//! - an **expected version**: the reservation goes to the aggregate `seat:<seat>` with
//!   `expected_version` 0 (409 `wrong_expected_version`).
//!
//! `FACTSTORE_CRASH_CYCLES` sets the number of kill -9 cycles (6 by default).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use rand::seq::IndexedRandom;
use serde_json::{Value, json};
use tokio::sync::Barrier;
use tokio::task::JoinSet;
use uuid::Uuid;

mod common;
use common::kill::KillWindow;
use common::{ServeProcess, assert_verify_ok};
const CLIENTS: usize = 32;
const SEATS: usize = 20;
/// Seats opened by each kill -9 cycle: enough that the kill lands while commits are in flight.
const SEATS_PER_CYCLE: usize = 150;

struct Server {
    process: ServeProcess,
}

impl std::ops::Deref for Server {
    type Target = ServeProcess;
    fn deref(&self) -> &ServeProcess {
        &self.process
    }
}

impl Server {
    async fn start(data_dir: &Path, http: &reqwest::Client) -> Server {
        let server = Server {
            process: ServeProcess::start(data_dir, &[]),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http.get(format!("{}/health", server.url)).send().await
                && r.status().is_success()
            {
                return server;
            }
            assert!(Instant::now() < deadline, "the server did not become ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: no chance to flush or clean up.
    fn kill(self) {
        self.process.kill();
    }
}

/// How a seat is guarded against a second reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Guard {
    Condition,
    ExpectedVersion,
}

impl Guard {
    /// The 409 code a losing reservation gets.
    fn conflict_code(self) -> &'static str {
        match self {
            Guard::Condition => "condition_failed",
            Guard::ExpectedVersion => "wrong_expected_version",
        }
    }
}

/// What became of one attempt.
#[derive(Debug)]
enum Attempt {
    /// The client's read showed the seat reserved already; nothing was sent.
    Taken,
    /// 201: the reservation was stored with its two events at these positions.
    Won { commit: Uuid, positions: (u64, u64) },
    /// 409 with the code of the guard.
    Lost { commit: Uuid },
    /// The server went away while the client read the seat (only expected while it is being
    /// killed); nothing was sent.
    Unreachable,
    /// The server went away after the commit was sent; it may or may not have been stored.
    Unknown { commit: Uuid },
}

/// Reads the seat's state, then tries to reserve it for `customer`. Panics on any answer but
/// 201 and the guard's 409 (connection errors are `Unknown`).
async fn attempt(
    http: &reqwest::Client,
    url: &str,
    guard: Guard,
    seat: &str,
    customer: usize,
    n: usize,
    gate: Option<&Barrier>,
) -> Attempt {
    let commit = Uuid::now_v7();
    let Ok(read) = read_seat(http, url, guard, seat).await else {
        if let Some(gate) = gate {
            gate.wait().await;
        }
        return Attempt::Unreachable;
    };
    // Every client reads before any commits: the barrier guarantees a contested round.
    if let Some(gate) = gate {
        gate.wait().await;
    }
    let known_up_to = match read {
        SeatState::Taken => return Attempt::Taken,
        SeatState::Free { known_up_to } => known_up_to,
    };
    let reservation = json!({
        "aggregate_type": "Reservation", "event_type": "SeatReserved",
        "event_data": {"seat": seat, "customer": customer, "commit": commit},
    });
    let booking = json!({
        "aggregate_type": "Customer", "event_type": "ReservationMade",
        "event_data": {"seat": seat, "commit": commit},
    });
    let body = match guard {
        Guard::Condition => json!({
            "appends": [
                {"aggregate_id": format!("reservation:{seat}:{customer}:{n}"), "expected_version": 0,
                 "events": [reservation]},
                {"aggregate_id": format!("customer:{customer}"), "events": [booking]},
            ],
            "condition": {
                "filter": {"event_types": ["SeatReserved"], "aggregate_id_prefix": format!("reservation:{seat}:")},
                "after_position": known_up_to,
            },
        }),
        Guard::ExpectedVersion => json!({
            "appends": [
                {"aggregate_id": format!("seat:{seat}"), "expected_version": 0, "events": [reservation]},
                {"aggregate_id": format!("customer:{customer}"), "events": [booking]},
            ],
        }),
    };
    let Ok(response) = http.post(format!("{url}/v1/events")).json(&body).send().await else {
        return Attempt::Unknown { commit };
    };
    let status = response.status().as_u16();
    let Ok(answer) = response.json::<Value>().await else {
        return Attempt::Unknown { commit };
    };
    match status {
        201 => {
            let appends = answer["appends"].as_array().expect("appends");
            let position = |i: usize| appends[i]["events"][0]["position"].as_u64().expect("position");
            assert_eq!(answer["position"].as_u64(), Some(position(1)), "{answer}");
            Attempt::Won {
                commit,
                positions: (position(0), position(1)),
            }
        }
        409 => {
            assert_eq!(
                answer["error"]["code"],
                guard.conflict_code(),
                "a lost reservation of {seat} ({guard:?}): {answer}"
            );
            Attempt::Lost { commit }
        }
        _ => panic!("reserving {seat} ({guard:?}): unexpected {status}: {answer}"),
    }
}

enum SeatState {
    Taken,
    /// Free as of every position up to `known_up_to`.
    Free {
        known_up_to: u64,
    },
}

async fn get_json(http: &reqwest::Client, url: String) -> Result<(u16, Value), reqwest::Error> {
    let response = http.get(url).send().await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await?))
}

async fn read_seat(
    http: &reqwest::Client,
    url: &str,
    guard: Guard,
    seat: &str,
) -> Result<SeatState, reqwest::Error> {
    match guard {
        Guard::Condition => {
            // The head first, then the seat's reservations up to it: the client then knows the
            // seat's state exactly up to that position, the `after_position` of its condition.
            let (status, head) = get_json(http, format!("{url}/v1/head")).await?;
            assert_eq!(status, 200, "{head}");
            let head = head["position"].as_u64().expect("head position");
            let (status, page) = get_json(
                http,
                format!(
                    "{url}/v1/events?event_type=SeatReserved&aggregate_id_prefix=reservation:{seat}:&to_position={head}&limit=1"
                ),
            )
            .await?;
            assert_eq!(status, 200, "{page}");
            Ok(if page["events"].as_array().expect("events").is_empty() {
                SeatState::Free { known_up_to: head }
            } else {
                SeatState::Taken
            })
        }
        Guard::ExpectedVersion => {
            let (status, page) = get_json(
                http,
                format!("{url}/v1/aggregates/seat:{seat}/events?direction=backward&limit=1"),
            )
            .await?;
            match status {
                404 => Ok(SeatState::Free { known_up_to: 0 }),
                200 => Ok(SeatState::Taken),
                _ => panic!("reading seat:{seat}: {status} {page}"),
            }
        }
    }
}

/// Every event of the store, in position order.
async fn read_all(http: &reqwest::Client, url: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after = 0u64;
    loop {
        let (status, page) = get_json(
            http,
            format!("{url}/v1/events?after_position={after}&limit=10000"),
        )
        .await
        .expect("read");
        assert_eq!(status, 200, "{page}");
        let events = page["events"].as_array().expect("events").clone();
        let next = page["next_after_position"].as_u64().expect("next");
        let done = events.is_empty() || next >= page["head_position"].as_u64().expect("head");
        all.extend(events);
        if done {
            return all;
        }
        after = next;
    }
}

/// What the clients sent and heard.
#[derive(Default)]
struct Ledger {
    /// Acknowledged reservations: commit id → (seat, customer, positions).
    won: HashMap<Uuid, (String, usize, (u64, u64))>,
    /// Commits refused with the guard's 409.
    lost: HashSet<Uuid>,
    /// Commits whose outcome the client never heard.
    unknown: HashSet<Uuid>,
}

impl Ledger {
    fn record(&mut self, seat: &str, customer: usize, outcome: Attempt) {
        match outcome {
            Attempt::Taken | Attempt::Unreachable => {}
            Attempt::Won { commit, positions } => {
                self.won.insert(commit, (seat.to_owned(), customer, positions));
            }
            Attempt::Lost { commit } => {
                self.lost.insert(commit);
            }
            Attempt::Unknown { commit } => {
                self.unknown.insert(commit);
            }
        }
    }
}

/// Checks the stored events against the ledger: every commit whole (its reservation and its
/// customer event at consecutive positions) or absent; acknowledged commits present where
/// they were acknowledged; refused ones absent; no seat reserved twice. Returns the number of
/// reservations of each seat.
fn check(all: &[Value], ledger: &Ledger, when: &str) -> BTreeMap<String, usize> {
    let mut commits: HashMap<Uuid, Vec<(u64, &str, &str)>> = HashMap::new();
    let mut reservations: BTreeMap<String, Vec<Uuid>> = BTreeMap::new();
    for (i, event) in all.iter().enumerate() {
        let position = event["position"].as_u64().expect("position");
        assert_eq!(position, i as u64 + 1, "{when}: positions are dense");
        let commit: Uuid = event["event_data"]["commit"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("every event names its commit");
        let event_type = event["event_type"].as_str().expect("event_type");
        let aggregate_id = event["aggregate_id"].as_str().expect("aggregate_id");
        commits
            .entry(commit)
            .or_default()
            .push((position, event_type, aggregate_id));
        if event_type == "SeatReserved" {
            let seat = event["event_data"]["seat"].as_str().expect("seat");
            reservations.entry(seat.to_owned()).or_default().push(commit);
        }
    }
    for (commit, events) in &commits {
        let shape: Vec<(&str, u64)> = events.iter().map(|(p, t, _)| (*t, *p)).collect();
        assert!(
            matches!(shape.as_slice(), [("SeatReserved", p), ("ReservationMade", q)] if *q == p + 1),
            "{when}: commit {commit} is not whole at consecutive positions: {events:?}"
        );
        assert!(
            !ledger.lost.contains(commit),
            "{when}: commit {commit} was refused with 409 but is stored: {events:?}"
        );
    }
    for (commit, (seat, customer, positions)) in &ledger.won {
        let stored = commits
            .get(commit)
            .unwrap_or_else(|| panic!("{when}: acknowledged reservation {commit} of {seat} is lost"));
        assert_eq!(
            (stored[0].0, stored[1].0),
            *positions,
            "{when}: reservation {commit} moved"
        );
        assert_eq!(
            stored[1].2,
            format!("customer:{customer}"),
            "{when}: reservation {commit}"
        );
    }
    for (seat, winners) in &reservations {
        assert_eq!(
            winners.len(),
            1,
            "{when}: seat {seat} reserved more than once: {winners:?}"
        );
    }
    reservations
        .into_iter()
        .map(|(seat, w)| (seat, w.len()))
        .collect()
}

/// Every seat of `seats`, and no other, is reserved exactly once.
fn assert_all_reserved<'a>(reservations: &BTreeMap<String, usize>, seats: impl IntoIterator<Item = &'a str>) {
    let expected: BTreeMap<String, usize> = seats.into_iter().map(|s| (s.to_owned(), 1)).collect();
    assert_eq!(
        *reservations, expected,
        "every seat reserved exactly once, and only those"
    );
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// Rounds of `CLIENTS` clients, each picking a free seat at random; every client reads before
/// any commits, so each round is contested. Returns the ledger once every seat is taken.
async fn contested_rounds(url: &str, guard: Guard, seats: &[String]) -> Ledger {
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let reserved = Arc::new(Mutex::new(HashSet::<String>::new()));
    let read_gate = Arc::new(Barrier::new(CLIENTS));
    let round_end = Arc::new(Barrier::new(CLIENTS));
    let seats = Arc::new(seats.to_vec());
    let mut tasks = JoinSet::new();
    for customer in 0..CLIENTS {
        let (url, ledger, reserved, seats) =
            (url.to_owned(), ledger.clone(), reserved.clone(), seats.clone());
        let (read_gate, round_end) = (read_gate.clone(), round_end.clone());
        tasks.spawn(async move {
            let http = http_client();
            for n in 0..3 * SEATS {
                let seat = {
                    let reserved = reserved.lock().expect("lock");
                    let free: Vec<&String> = seats.iter().filter(|s| !reserved.contains(*s)).collect();
                    free.choose(&mut rand::rng()).map(|s| (*s).clone())
                };
                let Some(seat) = seat else {
                    // Every client sees the same set after `round_end`: all leave together.
                    return;
                };
                let outcome = attempt(&http, &url, guard, &seat, customer, n, Some(&read_gate)).await;
                if matches!(outcome, Attempt::Unknown { .. } | Attempt::Unreachable) {
                    panic!("reserving {seat}: no answer from a server that runs");
                }
                if matches!(outcome, Attempt::Won { .. } | Attempt::Taken) {
                    reserved.lock().expect("lock").insert(seat.clone());
                }
                ledger.lock().expect("lock").record(&seat, customer, outcome);
                round_end.wait().await;
            }
            panic!("the seats were not all reserved after {} rounds", 3 * SEATS);
        });
    }
    // The first panic ends the test at once (the others would wait at a barrier forever).
    while let Some(done) = tasks.join_next().await {
        done.expect("a client failed");
    }
    Arc::into_inner(ledger)
        .expect("the clients are done")
        .into_inner()
        .expect("lock")
}

async fn one_winner_per_seat(guard: Guard) {
    let dir = tempfile::tempdir().expect("tempdir");
    let http = http_client();
    let server = Server::start(dir.path(), &http).await;
    let seats: Vec<String> = (0..SEATS).map(|i| format!("s{i}")).collect();
    let ledger = contested_rounds(&server.url, guard, &seats).await;
    assert_eq!(ledger.won.len(), SEATS, "one acknowledged winner per seat");
    assert!(
        ledger.lost.len() >= CLIENTS - SEATS,
        "the first round alone has {} more clients than seats, and they must lose: {} lost",
        CLIENTS - SEATS,
        ledger.lost.len()
    );
    let all = read_all(&http, &server.url).await;
    let reservations = check(&all, &ledger, "after the load");
    assert_all_reserved(&reservations, seats.iter().map(String::as_str));
    assert_eq!(all.len(), 2 * SEATS, "losers write nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_winner_per_seat_with_a_condition() {
    one_winner_per_seat(Guard::Condition).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_winner_per_seat_with_expected_versions() {
    one_winner_per_seat(Guard::ExpectedVersion).await;
}

/// Clients reserving seats of both guards with no pause, each picking at random a seat that
/// none of them knows to be taken, until every seat is known taken or `stop` passes; each
/// stops when the server goes away under it.
async fn free_for_all(
    url: String,
    seats: Arc<Vec<(String, Guard)>>,
    ledger: Arc<Mutex<Ledger>>,
    window: Arc<KillWindow>,
    stop: Instant,
) {
    let taken = Arc::new(Mutex::new(HashSet::<usize>::new()));
    let mut tasks = JoinSet::new();
    for customer in 0..CLIENTS {
        let (url, seats, ledger, taken, window) = (
            url.clone(),
            seats.clone(),
            ledger.clone(),
            taken.clone(),
            window.clone(),
        );
        tasks.spawn(async move {
            let http = http_client();
            let mut n = 0;
            while Instant::now() < stop {
                let pick = {
                    let taken = taken.lock().expect("lock");
                    let free: Vec<usize> = (0..seats.len()).filter(|i| !taken.contains(i)).collect();
                    match free.choose(&mut rand::rng()) {
                        Some(pick) => *pick,
                        None => return,
                    }
                };
                let (seat, guard) = &seats[pick];
                n += 1;
                let outcome = attempt(&http, &url, *guard, seat, customer, n, None).await;
                let gone = matches!(outcome, Attempt::Unknown { .. } | Attempt::Unreachable);
                if matches!(outcome, Attempt::Won { .. } | Attempt::Lost { .. }) {
                    window.acked();
                }
                ledger.lock().expect("lock").record(seat, customer, outcome);
                if gone {
                    if let Err(failure) = window.cut_by_kill(&format!("customer {customer} on {seat}")) {
                        panic!("{failure}");
                    }
                    return;
                }
                taken.lock().expect("lock").insert(pick);
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("a client failed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_never_leaves_half_a_reservation() {
    let cycles: usize = std::env::var("FACTSTORE_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let dir = tempfile::tempdir().expect("tempdir");
    let http = http_client();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut seats: Vec<(String, Guard)> = Vec::new();
    let mut rng = rand::rng();
    for cycle in 0..cycles {
        let server = Server::start(dir.path(), &http).await;
        check(
            &read_all(&http, &server.url).await,
            &ledger.lock().expect("lock"),
            &format!("restart {cycle}"),
        );
        // Every cycle opens a new show of seats, half of each guard; the seats of earlier
        // shows that are still free stay on offer.
        for i in 0..SEATS_PER_CYCLE {
            let guard = if i % 2 == 0 {
                Guard::Condition
            } else {
                Guard::ExpectedVersion
            };
            seats.push((format!("c{cycle}s{i}"), guard));
        }
        let window = Arc::new(KillWindow::default());
        let load = tokio::spawn(free_for_all(
            server.url.clone(),
            Arc::new(seats.clone()),
            ledger.clone(),
            window.clone(),
            Instant::now() + Duration::from_secs(10),
        ));
        // The kill comes at a random moment after this cycle's first answered commit.
        let load = [load];
        window.first_ack(&load, cycle).await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..100))).await;
        window.kill();
        server.kill();
        let [load] = load;
        if let Err(panicked) = load.await {
            std::panic::resume_unwind(panicked.into_panic());
        }
        window.assert_cut(cycle);
    }
    // A last run without a kill reserves whatever is still free.
    let server = Server::start(dir.path(), &http).await;
    free_for_all(
        server.url.clone(),
        Arc::new(seats.clone()),
        ledger.clone(),
        Arc::new(KillWindow::default()), // never killed: a request that fails fails the test
        Instant::now() + Duration::from_secs(30),
    )
    .await;
    let all = read_all(&http, &server.url).await;
    let ledger = ledger.lock().expect("lock");
    let reservations = check(&all, &ledger, "after the kills");
    assert_all_reserved(&reservations, seats.iter().map(|(seat, _)| seat.as_str()));
    assert!(!ledger.won.is_empty(), "some reservations were acknowledged");
    eprintln!(
        "{cycles} kills: {} seats, {} reservations acknowledged, {} refused, {} commits unanswered",
        seats.len(),
        ledger.won.len(),
        ledger.lost.len(),
        ledger.unknown.len()
    );
    server.kill();
    assert_verify_ok(dir.path());
}
