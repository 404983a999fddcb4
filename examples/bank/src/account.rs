//! The bank account: its commands, events and rules, as an SDK [`Aggregate`].
//!
//! Rules: an account is opened once; amounts are positive; a withdrawal never takes the
//! balance below zero; nothing happens to an account that was never opened.

use factstore_client::sdk::{Aggregate, DomainEvent, Upcasters};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The aggregate id of account `account_id` (`ACC-001` → `account:ACC-001`).
pub fn aggregate_id(account_id: &str) -> String {
    format!("account:{account_id}")
}

/// The bank account aggregate.
#[derive(Debug)]
pub struct Account;

/// What the write side needs to decide: whether the account exists, and its balance.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountState {
    pub open: bool,
    pub owner: String,
    pub balance: i64,
}

/// What a client asks of an account.
#[derive(Debug, Clone, PartialEq)]
pub enum AccountCommand {
    Open {
        owner: String,
        initial: i64,
    },
    Deposit {
        amount: i64,
        description: Option<String>,
    },
    Withdraw {
        amount: i64,
        description: Option<String>,
    },
}

/// The facts. `MoneyDeposited` and `MoneyWithdrawn` are at schema version 2 (they gained
/// `currency`); version 1 events are upcast by [`upcasters`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event_type", content = "event_data")]
pub enum AccountEvent {
    AccountCreated {
        owner: String,
        initial: i64,
    },
    MoneyDeposited {
        amount: i64,
        currency: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<String>,
    },
    MoneyWithdrawn {
        amount: i64,
        currency: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<String>,
    },
}

impl DomainEvent for AccountEvent {
    fn event_version(&self) -> u32 {
        match self {
            AccountEvent::AccountCreated { .. } => 1,
            AccountEvent::MoneyDeposited { .. } | AccountEvent::MoneyWithdrawn { .. } => 2,
        }
    }
}

/// Version 1 of the money events had no currency: every account was in USD then.
pub fn upcasters() -> Upcasters {
    let add_usd = |mut data: serde_json::Value| {
        if data.get("currency").is_none() {
            data["currency"] = json!("USD");
        }
        Ok(data)
    };
    Upcasters::new()
        .register("MoneyDeposited", 1, add_usd)
        .register("MoneyWithdrawn", 1, add_usd)
}

/// Why a command is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the account already exists")]
    AlreadyOpen,
    #[error("the account does not exist")]
    NotOpen,
    #[error("the amount must be positive, not {0}")]
    NotPositive(i64),
    #[error("the initial balance must not be negative, not {0}")]
    NegativeInitial(i64),
    #[error("insufficient funds: the balance is {balance}, the withdrawal {requested}")]
    InsufficientFunds { balance: i64, requested: i64 },
}

/// Every account is in this currency.
pub const CURRENCY: &str = "USD";

impl Aggregate for Account {
    const AGGREGATE_TYPE: &'static str = "Account";
    type State = AccountState;
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = Refused;

    fn apply(state: &mut AccountState, event: &AccountEvent) {
        match event {
            AccountEvent::AccountCreated { owner, initial } => {
                state.open = true;
                state.owner = owner.clone();
                state.balance = *initial;
            }
            AccountEvent::MoneyDeposited { amount, .. } => state.balance += amount,
            AccountEvent::MoneyWithdrawn { amount, .. } => state.balance -= amount,
        }
    }

    fn handle(state: &AccountState, command: AccountCommand) -> Result<Vec<AccountEvent>, Refused> {
        match command {
            AccountCommand::Open { .. } if state.open => Err(Refused::AlreadyOpen),
            AccountCommand::Open { initial, .. } if initial < 0 => Err(Refused::NegativeInitial(initial)),
            AccountCommand::Open { owner, initial } => {
                Ok(vec![AccountEvent::AccountCreated { owner, initial }])
            }
            AccountCommand::Deposit { amount, .. } | AccountCommand::Withdraw { amount, .. }
                if amount <= 0 =>
            {
                Err(Refused::NotPositive(amount))
            }
            _ if !state.open => Err(Refused::NotOpen),
            AccountCommand::Deposit { amount, description } => Ok(vec![AccountEvent::MoneyDeposited {
                amount,
                currency: CURRENCY.to_owned(),
                description,
            }]),
            AccountCommand::Withdraw { amount, .. } if amount > state.balance => {
                Err(Refused::InsufficientFunds {
                    balance: state.balance,
                    requested: amount,
                })
            }
            AccountCommand::Withdraw { amount, description } => Ok(vec![AccountEvent::MoneyWithdrawn {
                amount,
                currency: CURRENCY.to_owned(),
                description,
            }]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use factstore_client::sdk::AggregateTest;

    fn created(initial: i64) -> AccountEvent {
        AccountEvent::AccountCreated {
            owner: "Ada".into(),
            initial,
        }
    }

    fn deposited(amount: i64) -> AccountEvent {
        AccountEvent::MoneyDeposited {
            amount,
            currency: "USD".into(),
            description: None,
        }
    }

    #[test]
    fn an_account_opens_once() {
        AggregateTest::<Account>::new()
            .when(AccountCommand::Open {
                owner: "Ada".into(),
                initial: 0,
            })
            .then_events([created(0)]);
        AggregateTest::<Account>::given([created(0)])
            .when(AccountCommand::Open {
                owner: "Bob".into(),
                initial: 0,
            })
            .then_error(Refused::AlreadyOpen);
        AggregateTest::<Account>::new()
            .when(AccountCommand::Open {
                owner: "Ada".into(),
                initial: -1,
            })
            .then_error(Refused::NegativeInitial(-1));
    }

    #[test]
    fn deposits_and_withdrawals_follow_the_rules() {
        AggregateTest::<Account>::given([created(0), deposited(500), deposited(500)])
            .when(AccountCommand::Withdraw {
                amount: 200,
                description: Some("rent".into()),
            })
            .then_events([AccountEvent::MoneyWithdrawn {
                amount: 200,
                currency: "USD".into(),
                description: Some("rent".into()),
            }])
            .then_state(|s| assert_eq!(s.balance, 800));
        AggregateTest::<Account>::given([created(100)])
            .when(AccountCommand::Withdraw {
                amount: 101,
                description: None,
            })
            .then_error(Refused::InsufficientFunds {
                balance: 100,
                requested: 101,
            });
        AggregateTest::<Account>::given([created(100)])
            .when(AccountCommand::Deposit {
                amount: 0,
                description: None,
            })
            .then_error(Refused::NotPositive(0));
        AggregateTest::<Account>::new()
            .when(AccountCommand::Deposit {
                amount: 5,
                description: None,
            })
            .then_error(Refused::NotOpen);
    }

    #[test]
    fn version_1_deposits_read_as_usd() {
        AggregateTest::<Account>::given_with(upcasters(), [created(0)])
            .given_stored("MoneyDeposited", 1, json!({"amount": 300}))
            .when(AccountCommand::Withdraw {
                amount: 300,
                description: None,
            })
            .then_state(|s| assert_eq!(s.balance, 0))
            .then_events([AccountEvent::MoneyWithdrawn {
                amount: 300,
                currency: "USD".into(),
                description: None,
            }]);
    }
}
