//! The SDK: the given/when/then harness on its own, and the repository against a real server
//! (embedded engine, in-process, on a free port): loading with snapshots, conflict retries
//! with concurrent writers, atomic multi-aggregate saves, and client-side upcasting.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use factstore_client::sdk::{
    Aggregate, AggregateTest, Batch, CommandContext, DomainEvent, Repository, RepositoryError, Upcasters,
    retry_on_conflict,
};
use factstore_client::{
    AppendRequest, Client, Error, EventFilter, ExpectedVersion, NewEvent, PutSnapshotRequest,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use support::Server;

struct Account;

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct AccountState {
    open: bool,
    balance: i64,
    currency: String,
}

/// A hook run inside `handle` on the first decision only: it lets a test make another writer
/// win between the load and the save, deterministically.
#[derive(Clone, Default)]
struct Interfere(Option<Arc<dyn Fn() + Send + Sync>>);

#[derive(Clone)]
enum Command {
    Open { owner: String },
    Deposit { amount: i64, interfere: Interfere },
    Withdraw { amount: i64 },
}

fn deposit(amount: i64) -> Command {
    Command::Deposit {
        amount,
        interfere: Interfere::default(),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event_type", content = "event_data")]
enum Event {
    AccountOpened { owner: String },
    MoneyDeposited { amount: i64, currency: String },
    MoneyWithdrawn { amount: i64 },
    AccountFrozen,
}

impl DomainEvent for Event {
    fn event_version(&self) -> u32 {
        match self {
            Event::MoneyDeposited { .. } => 2,
            _ => 1,
        }
    }
}

#[derive(Debug, PartialEq, thiserror::Error)]
enum Refused {
    #[error("the account is already open")]
    AlreadyOpen,
    #[error("no such account")]
    NotOpen,
    #[error("amounts must be positive")]
    NotPositive,
    #[error("insufficient funds: balance {balance}, asked {asked}")]
    InsufficientFunds { balance: i64, asked: i64 },
}

impl Aggregate for Account {
    const AGGREGATE_TYPE: &'static str = "Account";
    type State = AccountState;
    type Command = Command;
    type Event = Event;
    type Error = Refused;

    fn apply(state: &mut AccountState, event: &Event) {
        match event {
            Event::AccountOpened { .. } => {
                state.open = true;
                state.currency = "USD".into();
            }
            Event::MoneyDeposited { amount, .. } => state.balance += amount,
            Event::MoneyWithdrawn { amount } => state.balance -= amount,
            Event::AccountFrozen => {}
        }
    }

    fn handle(state: &AccountState, command: Command) -> Result<Vec<Event>, Refused> {
        match command {
            Command::Open { .. } if state.open => Err(Refused::AlreadyOpen),
            Command::Open { owner } => Ok(vec![Event::AccountOpened { owner }]),
            _ if !state.open => Err(Refused::NotOpen),
            Command::Deposit { amount, .. } | Command::Withdraw { amount } if amount <= 0 => {
                Err(Refused::NotPositive)
            }
            Command::Deposit { amount, interfere } => {
                if let Some(hook) = interfere.0 {
                    hook();
                }
                Ok(vec![Event::MoneyDeposited {
                    amount,
                    currency: state.currency.clone(),
                }])
            }
            Command::Withdraw { amount } if amount > state.balance => Err(Refused::InsufficientFunds {
                balance: state.balance,
                asked: amount,
            }),
            Command::Withdraw { amount } => Ok(vec![Event::MoneyWithdrawn { amount }]),
        }
    }
}

fn opened() -> Event {
    Event::AccountOpened { owner: "Ada".into() }
}

fn usd(amount: i64) -> Event {
    Event::MoneyDeposited {
        amount,
        currency: "USD".into(),
    }
}

/// v1 deposits had no currency; v2 added it, USD for every old event.
fn upcasters() -> Upcasters {
    Upcasters::new().register("MoneyDeposited", 1, |mut data| {
        data["currency"] = json!("USD");
        Ok(data)
    })
}

#[test]
fn the_harness_checks_events_errors_and_state() {
    AggregateTest::<Account>::new()
        .when(Command::Open { owner: "Ada".into() })
        .then_events([opened()]);
    AggregateTest::<Account>::given([opened(), usd(100)])
        .when(Command::Withdraw { amount: 30 })
        .then_events([Event::MoneyWithdrawn { amount: 30 }])
        .then_state(|state| assert_eq!(state.balance, 70));
    AggregateTest::<Account>::given([opened(), usd(100)])
        .when(Command::Withdraw { amount: 130 })
        .then_error(Refused::InsufficientFunds {
            balance: 100,
            asked: 130,
        })
        .then_state(|state| assert_eq!(state.balance, 100, "a refusal changes nothing"));
    AggregateTest::<Account>::new()
        .when(deposit(5))
        .then_error(Refused::NotOpen);
    AggregateTest::<Account>::given([opened()])
        .when(deposit(0))
        .then_error_matches(|e| e.to_string().contains("positive"));
    // A unit variant is stored with `{}` as its data and reads back.
    AggregateTest::<Account>::given([opened(), Event::AccountFrozen])
        .when(deposit(1))
        .then_events([usd(1)]);
    // An old stored event goes through the upcasters before `apply`.
    AggregateTest::<Account>::given_with(upcasters(), [opened()])
        .given_stored("MoneyDeposited", 1, json!({"amount": 40}))
        .when(Command::Withdraw { amount: 40 })
        .then_events([Event::MoneyWithdrawn { amount: 40 }]);
}

#[test]
fn the_harness_fails_on_the_wrong_outcome() {
    let wrong_events = std::panic::catch_unwind(|| {
        AggregateTest::<Account>::given([opened()])
            .when(deposit(5))
            .then_events([usd(6)]);
    });
    let message = *wrong_events.unwrap_err().downcast::<String>().unwrap();
    assert!(
        message.contains("expected") && message.contains("amount: 6"),
        "{message}"
    );

    let refused_instead = std::panic::catch_unwind(|| {
        AggregateTest::<Account>::new()
            .when(deposit(5))
            .then_events([usd(5)]);
    });
    let message = *refused_instead.unwrap_err().downcast::<String>().unwrap();
    assert!(message.contains("refused (no such account)"), "{message}");

    let accepted_instead = std::panic::catch_unwind(|| {
        AggregateTest::<Account>::given([opened()])
            .when(deposit(5))
            .then_error(Refused::NotOpen);
    });
    assert!(accepted_instead.is_err());

    // Without the upcaster, an old deposit (no currency) does not read: the harness says so.
    let no_upcaster = std::panic::catch_unwind(|| {
        AggregateTest::<Account>::new().given_stored("MoneyDeposited", 1, json!({"amount": 40}));
    });
    let message = *no_upcaster.unwrap_err().downcast::<String>().unwrap();
    assert!(message.contains("currency"), "{message}");
}

async fn open(accounts: &Repository<Account>, id: &str) {
    accounts
        .execute(id, Command::Open { owner: "Ada".into() })
        .await
        .unwrap();
}

#[tokio::test]
async fn execute_saves_at_the_expected_version_and_refusals_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let client = Client::new(&server.url).unwrap();
    let accounts = Repository::<Account>::new(client.clone());

    let fresh = accounts.load("account:1").await.unwrap();
    assert_eq!((fresh.version, fresh.state.open), (0, false));

    let done = accounts
        .execute_with(
            "account:1",
            Command::Open { owner: "Ada".into() },
            &CommandContext::new()
                .created_by("user:123")
                .correlation_id("corr-1"),
        )
        .await
        .unwrap();
    assert_eq!((done.version, done.position, done.attempts), (1, Some(1), 1));
    let done = accounts.execute("account:1", deposit(500)).await.unwrap();
    assert_eq!((done.version, done.state.balance), (2, 500));
    assert_eq!(done.appended.len(), 1);

    let stored = client.get_event(done.appended[0].event_id).await.unwrap();
    assert_eq!(
        (stored.event_type.as_str(), stored.event_version),
        ("MoneyDeposited", 2)
    );
    assert_eq!(
        stored.data::<serde_json::Value>().unwrap(),
        json!({"amount": 500, "currency": "USD"})
    );
    let first = client
        .read_aggregate("account:1", &Default::default())
        .await
        .unwrap()
        .events
        .remove(0);
    assert_eq!(first.created_by.as_deref(), Some("user:123"));
    assert_eq!(first.correlation_id().as_deref(), Some("corr-1"));

    match accounts
        .execute("account:1", Command::Withdraw { amount: 501 })
        .await
    {
        Err(RepositoryError::Domain(Refused::InsufficientFunds {
            balance: 500,
            asked: 501,
        })) => {}
        other => panic!("unexpected {other:?}"),
    }
    match accounts.execute("account:2", deposit(1)).await {
        Err(RepositoryError::Domain(Refused::NotOpen)) => {}
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(client.head().await.unwrap().position, 2, "refusals wrote nothing");
    server.stop().await;
}

#[tokio::test]
async fn loads_start_from_the_latest_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let client = Client::new(&server.url).unwrap();
    let accounts = Repository::<Account>::new(client.clone()).snapshot_every(3);

    open(&accounts, "account:1").await;
    let mut snapshots_taken = Vec::new();
    for amount in 1..=7 {
        let done = accounts.execute("account:1", deposit(amount)).await.unwrap();
        snapshots_taken.extend(done.snapshot);
    }
    assert_eq!(
        snapshots_taken,
        vec![3, 6],
        "every time the version crosses a multiple of 3"
    );
    let listed: Vec<u64> = client
        .list_snapshots("account:1")
        .await
        .unwrap()
        .iter()
        .map(|s| s.version)
        .collect();
    assert_eq!(listed, vec![3, 6]);

    let loaded = accounts.load("account:1").await.unwrap();
    assert_eq!(loaded.version, 8);
    assert_eq!(loaded.state.balance, 28);
    assert_eq!((loaded.snapshot_version, loaded.events_applied), (Some(6), 2));

    // The state in the snapshot is what is used (the events before it are not read again):
    // a doctored snapshot shows through.
    let doctored = AccountState {
        open: true,
        balance: 1000,
        currency: "USD".into(),
    };
    client
        .put_snapshot(
            "account:1",
            PutSnapshotRequest::new(8, "Account", serde_json::to_value(&doctored).unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(accounts.load("account:1").await.unwrap().state.balance, 1000);

    // A snapshot of another schema version is ignored: the state is folded from version 1.
    client
        .put_snapshot(
            "account:1",
            PutSnapshotRequest::new(8, "Account", json!({"total_cents": 1})).snapshot_version(2),
        )
        .await
        .unwrap();
    let loaded = accounts.load("account:1").await.unwrap();
    assert_eq!(
        (
            loaded.state.balance,
            loaded.snapshot_version,
            loaded.events_applied
        ),
        (28, None, 8)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_conflict_reruns_load_decide_save_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let client = Client::new(&server.url).unwrap();
    open(&Repository::new(client.clone()), "account:1").await;

    // Another writer deposits 1000 between this command's load and its save, once.
    let url = server.url.clone();
    let fired = Arc::new(AtomicBool::new(false));
    let interfere = {
        let fired = fired.clone();
        Interfere(Some(Arc::new(move || {
            if fired.swap(true, Ordering::SeqCst) {
                return;
            }
            let url = url.clone();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    let other = Repository::<Account>::new(Client::new(&url).unwrap());
                    other.execute("account:1", deposit(1000)).await.unwrap();
                });
            })
            .join()
            .unwrap();
        })))
    };
    let command = Command::Deposit {
        amount: 5,
        interfere: interfere.clone(),
    };

    let no_retry = Repository::<Account>::new(client.clone());
    match no_retry.execute("account:1", command.clone()).await {
        Err(RepositoryError::Client(Error::WrongExpectedVersion {
            expected_version: ExpectedVersion::Exact(1),
            current_version: 2,
            ..
        })) => {}
        other => panic!("unexpected {other:?}"),
    }

    fired.store(false, Ordering::SeqCst);
    let retrying = Repository::<Account>::new(client.clone()).conflict_attempts(3);
    let done = retrying.execute("account:1", command).await.unwrap();
    assert_eq!(done.attempts, 2);
    assert_eq!(
        (done.version, done.state.balance),
        (4, 2005),
        "decided again on the fresh state"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_all_land_with_retries() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let client = Client::new(&server.url).unwrap();
    let accounts = Repository::<Account>::new(client.clone()).conflict_attempts(100);
    open(&accounts, "account:1").await;

    let writers: Vec<_> = (1..=16)
        .map(|amount| {
            let accounts = accounts.clone();
            tokio::spawn(async move { accounts.execute("account:1", deposit(amount)).await.unwrap() })
        })
        .collect();
    let mut versions = Vec::new();
    for writer in writers {
        versions.push(writer.await.unwrap().version);
    }
    versions.sort_unstable();
    assert_eq!(
        versions,
        (2..=17).collect::<Vec<u64>>(),
        "each deposit at its own version"
    );
    let loaded = accounts.load("account:1").await.unwrap();
    assert_eq!(
        (loaded.version, loaded.state.balance),
        (17, (1..=16).sum::<i64>())
    );
    server.stop().await;
}

#[tokio::test]
async fn several_aggregates_commit_together_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let client = Client::new(&server.url).unwrap();
    let accounts = Repository::<Account>::new(client.clone()).snapshot_every(3);
    for id in ["account:A", "account:B"] {
        open(&accounts, id).await;
    }
    accounts.execute("account:A", deposit(100)).await.unwrap();

    // A transfer: withdraw from A, deposit into B, one commit.
    let transfer = |amount: i64| {
        let accounts = accounts.clone();
        async move {
            let from = accounts.load("account:A").await?;
            let to = accounts.load("account:B").await?;
            let out = Account::handle(&from.state, Command::Withdraw { amount })
                .map_err(RepositoryError::Domain)?;
            let into = Account::handle(&to.state, deposit(amount)).map_err(RepositoryError::Domain)?;
            let context = CommandContext::new().correlation_id("transfer-1");
            Batch::new()
                .with(accounts.stage(&from, &out, &context)?)
                .with(accounts.stage(&to, &into, &context)?)
                .commit(accounts.client())
                .await
                .map_err(RepositoryError::from)
        }
    };
    let outcome = transfer(60).await.unwrap().unwrap();
    let versions: Vec<(String, u64)> = outcome
        .appends
        .iter()
        .map(|a| (a.aggregate_id.clone(), a.version))
        .collect();
    assert_eq!(versions, vec![("account:A".into(), 3), ("account:B".into(), 2)]);
    assert_eq!(accounts.load("account:A").await.unwrap().state.balance, 40);
    assert_eq!(accounts.load("account:B").await.unwrap().state.balance, 60);
    // A crossed version 3: its snapshot was stored after the commit.
    assert_eq!(client.list_snapshots("account:A").await.unwrap().len(), 1);

    // A refusal on one side stops the whole transfer before anything is sent.
    assert!(matches!(
        transfer(41).await,
        Err(RepositoryError::Domain(Refused::InsufficientFunds {
            balance: 40,
            asked: 41
        }))
    ));

    // B moves between the load and the commit: nothing of the commit is written.
    let from = accounts.load("account:A").await.unwrap();
    let to = accounts.load("account:B").await.unwrap();
    accounts.execute("account:B", deposit(1)).await.unwrap();
    let head = client.head().await.unwrap().position;
    let stale = Batch::new()
        .with(
            accounts
                .stage(
                    &from,
                    &[Event::MoneyWithdrawn { amount: 10 }],
                    &CommandContext::new(),
                )
                .unwrap(),
        )
        .with(accounts.stage(&to, &[usd(10)], &CommandContext::new()).unwrap())
        .commit(&client)
        .await;
    assert!(
        matches!(&stale, Err(Error::WrongExpectedVersion { aggregate_id, .. }) if aggregate_id == "account:B"),
        "{stale:?}"
    );
    assert_eq!(client.head().await.unwrap().position, head, "all or nothing");
    assert_eq!(accounts.load("account:A").await.unwrap().version, 3);

    // retry_on_conflict decides again on fresh state: the first attempt uses the stale load.
    accounts.execute("account:A", deposit(1)).await.unwrap();
    let attempts = std::sync::atomic::AtomicU32::new(0);
    retry_on_conflict(3, |n| {
        attempts.store(n, Ordering::SeqCst);
        let accounts = accounts.clone();
        let from = from.clone();
        async move {
            let current = if n == 1 {
                from
            } else {
                accounts.load("account:A").await?
            };
            Batch::new()
                .with(accounts.stage(
                    &current,
                    &[Event::MoneyWithdrawn { amount: 1 }],
                    &CommandContext::new(),
                )?)
                .commit(accounts.client())
                .await?;
            Ok::<_, RepositoryError<Refused>>(())
        }
    })
    .await
    .unwrap();
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    assert_eq!(accounts.load("account:A").await.unwrap().state.balance, 40);

    // A condition: fails when a matching event appeared after the position.
    let known = client.head().await.unwrap().position;
    accounts.execute("account:B", deposit(2)).await.unwrap();
    let a = accounts.load("account:A").await.unwrap();
    let conditioned = Batch::new()
        .with(accounts.stage(&a, &[usd(1)], &CommandContext::new()).unwrap())
        .condition(EventFilter::new().aggregate_id("account:B"), known)
        .commit(&client)
        .await;
    assert!(
        matches!(conditioned, Err(Error::ConditionFailed { .. })),
        "{conditioned:?}"
    );
    // Nothing to commit: nothing is sent.
    assert!(
        Batch::new()
            .with(accounts.stage(&a, &[], &CommandContext::new()).unwrap())
            .commit(&client)
            .await
            .unwrap()
            .is_none()
    );
    server.stop().await;
}

#[tokio::test]
async fn old_events_are_upcast_before_apply() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let client = Client::new(&server.url).unwrap();
    // Written by an older version of the application: deposits without a currency.
    client
        .append(
            "account:old",
            AppendRequest::new([
                NewEvent::new("Account", "AccountOpened", json!({"owner": "Bob"})),
                NewEvent::new("Account", "MoneyDeposited", json!({"amount": 70})),
            ]),
        )
        .await
        .unwrap();

    let without = Repository::<Account>::new(client.clone());
    match without.load("account:old").await {
        Err(RepositoryError::Codec(e)) => assert!(e.message.contains("MoneyDeposited"), "{e}"),
        other => panic!("unexpected {other:?}"),
    }
    let with = Repository::<Account>::new(client.clone()).upcasters(upcasters());
    assert_eq!(with.load("account:old").await.unwrap().state.balance, 70);
    let done = with
        .execute("account:old", Command::Withdraw { amount: 70 })
        .await
        .unwrap();
    assert_eq!((done.version, done.state.balance), (3, 0));

    // An aggregate of another type is not silently read as an account.
    client
        .append(
            "order:1",
            AppendRequest::new([NewEvent::new("Order", "AccountOpened", json!({"owner": "x"}))]),
        )
        .await
        .unwrap();
    match with.load("order:1").await {
        Err(RepositoryError::Codec(e)) => assert!(e.message.contains("type Order"), "{e}"),
        other => panic!("unexpected {other:?}"),
    }
    server.stop().await;
}
