//! Event sourcing on top of the client: aggregates that decide with plain functions, a
//! repository that loads, decides and saves them (with snapshots, conflict retries, upcasting
//! and atomic multi-aggregate commits), a given/when/then harness to test aggregates without
//! a server, and a projector that runs a handler over a persistent subscription.
//!
//! ```
//! use factstore_client::sdk::{Aggregate, DomainEvent};
//! use serde::{Deserialize, Serialize};
//!
//! /// A bank account: opened, then deposits and withdrawals, never overdrawn.
//! struct Account;
//!
//! #[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
//! struct Balance { open: bool, balance: i64 }
//!
//! enum Command { Open { owner: String }, Deposit { amount: i64 }, Withdraw { amount: i64 } }
//!
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
//! #[serde(tag = "event_type", content = "event_data")]
//! enum Event {
//!     AccountOpened { owner: String },
//!     MoneyDeposited { amount: i64 },
//!     MoneyWithdrawn { amount: i64 },
//! }
//! impl DomainEvent for Event {}
//!
//! #[derive(Debug, PartialEq, thiserror::Error)]
//! enum Refused {
//!     #[error("the account is already open")] AlreadyOpen,
//!     #[error("no such account")] NotOpen,
//!     #[error("insufficient funds: balance {balance}, asked {asked}")] InsufficientFunds { balance: i64, asked: i64 },
//! }
//!
//! impl Aggregate for Account {
//!     const AGGREGATE_TYPE: &'static str = "Account";
//!     type State = Balance;
//!     type Command = Command;
//!     type Event = Event;
//!     type Error = Refused;
//!
//!     fn apply(state: &mut Balance, event: &Event) {
//!         match event {
//!             Event::AccountOpened { .. } => state.open = true,
//!             Event::MoneyDeposited { amount } => state.balance += amount,
//!             Event::MoneyWithdrawn { amount } => state.balance -= amount,
//!         }
//!     }
//!
//!     fn handle(state: &Balance, command: Command) -> Result<Vec<Event>, Refused> {
//!         match command {
//!             Command::Open { .. } if state.open => Err(Refused::AlreadyOpen),
//!             Command::Open { owner } => Ok(vec![Event::AccountOpened { owner }]),
//!             _ if !state.open => Err(Refused::NotOpen),
//!             Command::Deposit { amount } => Ok(vec![Event::MoneyDeposited { amount }]),
//!             Command::Withdraw { amount } if amount > state.balance => {
//!                 Err(Refused::InsufficientFunds { balance: state.balance, asked: amount })
//!             }
//!             Command::Withdraw { amount } => Ok(vec![Event::MoneyWithdrawn { amount }]),
//!         }
//!     }
//! }
//!
//! // Tested without a server:
//! use factstore_client::sdk::AggregateTest;
//! AggregateTest::<Account>::given([Event::AccountOpened { owner: "Ada".into() }, Event::MoneyDeposited { amount: 50 }])
//!     .when(Command::Withdraw { amount: 80 })
//!     .then_error(Refused::InsufficientFunds { balance: 50, asked: 80 });
//! ```
//!
//! # Layout
//! - [`Aggregate`] and [`DomainEvent`]: the application's model, and how its events become
//!   `event_type` + `event_data` + `event_version` and back.
//! - [`Upcasters`]: client-side functions that rewrite old `event_data` to the next version
//!   before `apply` sees it.
//! - [`Repository`]: [`load`](Repository::load) (latest snapshot + the events after it, one
//!   round trip), [`execute`](Repository::execute) (load, handle, save at the expected
//!   version, retried on a conflict when asked), snapshots every N events, and
//!   [`stage`](Repository::stage) + [`Batch`] to save several aggregates in one atomic commit.
//! - [`AggregateTest`]: given events, when a command, then events or an error.
//! - [`Projector`]: poll a persistent subscription, run a handler, ack or nack.

mod aggregate;
mod projector;
mod repository;
mod testing;
mod upcast;

pub use aggregate::{Aggregate, CodecError, DomainEvent};
pub use projector::{Projector, ProjectorStats};
pub use repository::{
    Batch, CommandContext, Executed, Loaded, Repository, RepositoryError, Staged, retry_on_conflict,
};
pub use testing::{AggregateOutcome, AggregateTest};
pub use upcast::Upcasters;
