//! A bank account as an HTTP service on factstore.
//!
//! Writes go through the SDK: each command loads the account (snapshot + later events),
//! checks the rules in [`account::Account::handle`], and appends at the expected version,
//! deciding again if another writer got there first. A transfer changes two accounts in one
//! atomic commit. Reads come from the server's projections ([`projections`]): the maintained
//! read model by default, `?source=event_store` for a read that is always current, `?at=` for
//! the balance as it was, and `?min_position=` to read your own write.
//!
//! # Layout
//! - [`account`]: the aggregate (commands, events, rules, upcasters).
//! - [`projections`]: the read models' definitions.
//! - [`receipts`]: a worker on a persistent subscription (the binary `bank-receipts`).
//! - [`app`]: the routes; [`ApiError`]: every refusal as a 4xx with a JSON body.

pub mod account;
pub mod projections;
pub mod receipts;

use std::str::FromStr;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use factstore_client::sdk::{
    Aggregate, Batch, CommandContext, Repository, RepositoryError, retry_on_conflict,
};
use factstore_client::{AggregateQuery, Client, StateQuery, StateSource, TimeBound};
use futures::TryStreamExt;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use uuid::Uuid;

use account::{Account, AccountCommand, Refused, aggregate_id};

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    pub client: Client,
    pub accounts: Repository<Account>,
}

impl AppState {
    /// Accounts are snapshotted every 100 events and a command is decided up to 5 times when
    /// concurrent writers collide.
    pub fn new(client: Client) -> AppState {
        let accounts = Repository::new(client.clone())
            .snapshot_every(100)
            .conflict_attempts(5)
            .upcasters(account::upcasters());
        AppState { client, accounts }
    }
}

/// The service's routes.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/accounts", post(open_account))
        .route("/accounts/{account_id}/deposits", post(deposit))
        .route("/accounts/{account_id}/withdrawals", post(withdraw))
        .route("/transfers", post(transfer))
        .route("/accounts/{account_id}/balance", get(balance))
        .route("/accounts/{account_id}/history", get(history))
        .route("/events/{event_id}/status", get(event_status))
        .route("/summary", get(summaries))
        .route("/summary/{day}", get(summary))
        .with_state(state)
}

/// A refusal or a failure, as `{"error": {"code", "message", ...}}` with a 4xx or 5xx.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    details: Value,
    retry_after: Option<Duration>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: json!({}),
            retry_after: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    fn details(mut self, details: Value) -> ApiError {
        self.details = details;
        self
    }

    fn account_not_found(account_id: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "account_not_found",
            format!("account {account_id} does not exist"),
        )
        .details(json!({"account_id": account_id}))
    }

    fn refused(account_id: &str, refused: Refused) -> ApiError {
        let message = format!("account {account_id}: {refused}");
        match refused {
            Refused::AlreadyOpen => ApiError::new(StatusCode::CONFLICT, "account_exists", message),
            Refused::NotOpen => ApiError::account_not_found(account_id),
            Refused::NotPositive(amount) => ApiError::new(StatusCode::BAD_REQUEST, "invalid_amount", message)
                .details(json!({"amount": amount})),
            Refused::NegativeInitial(initial) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_amount", message)
                    .details(json!({"initial": initial}))
            }
            Refused::InsufficientFunds { balance, requested } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "insufficient_funds", message)
                    .details(json!({"balance": balance, "requested": requested}))
            }
        }
        .with_account(account_id)
    }

    fn with_account(mut self, account_id: &str) -> ApiError {
        if let Some(object) = self.details.as_object_mut() {
            object.insert("account_id".into(), account_id.into());
        }
        self
    }

    fn store(error: factstore_client::Error) -> ApiError {
        use factstore_client::Error;
        match error {
            Error::WrongExpectedVersion { .. } | Error::ConditionFailed { .. } => ApiError::new(
                StatusCode::CONFLICT,
                "concurrent_modification",
                "the account kept changing while the command was decided; try again",
            ),
            Error::NotYetMaterialized {
                message, retry_after, ..
            } => {
                let mut error =
                    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_yet_materialized", message);
                error.retry_after = retry_after.or(Some(Duration::from_secs(1)));
                error
            }
            Error::EventNotFound { event_id } => ApiError::new(
                StatusCode::NOT_FOUND,
                "event_not_found",
                format!("no event {event_id}"),
            ),
            Error::Transport(_) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "store_unreachable", error.to_string())
            }
            other => ApiError::new(StatusCode::BAD_GATEWAY, "store_error", other.to_string()),
        }
    }

    fn from_repository(account_id: &str, error: RepositoryError<Refused>) -> ApiError {
        match error {
            RepositoryError::Domain(refused) => ApiError::refused(account_id, refused),
            RepositoryError::Client(error) => ApiError::store(error),
            RepositoryError::Codec(error) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "unreadable_event",
                error.to_string(),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({"code": self.code, "message": self.message});
        if let (Some(object), Value::Object(details)) = (error.as_object_mut(), self.details) {
            object.extend(details);
        }
        let mut response = (self.status, Json(json!({ "error": error }))).into_response();
        if let Some(after) = self.retry_after
            && let Ok(value) = HeaderValue::from_str(&after.as_secs().max(1).to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

/// A JSON body, or a 400 naming what is wrong with it.
fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request(format!("the body is not valid: {e}")))
}

/// `X-User-Id` becomes `created_by` (`user:<id>`), `X-Correlation-Id` the events'
/// `metadata.correlation_id` (a new one when absent, so every write can be traced).
fn context(headers: &HeaderMap) -> CommandContext {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let mut context = CommandContext::new();
    if let Some(user) = header("x-user-id") {
        context = context.created_by(format!("user:{user}"));
    }
    let correlation = header("x-correlation-id").unwrap_or_else(|| format!("corr-{}", Uuid::now_v7()));
    context.correlation_id(correlation)
}

fn check_account_id(account_id: &str) -> Result<(), ApiError> {
    let valid = !account_id.is_empty()
        && account_id.len() <= 64
        && account_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "account_id '{account_id}' must be 1 to 64 letters, digits, '-' or '_'"
        )))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenBody {
    account_id: String,
    owner: String,
    #[serde(default)]
    initial: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AmountBody {
    amount: i64,
    #[serde(default)]
    description: Option<String>,
}

async fn execute(
    state: &AppState,
    account_id: &str,
    command: AccountCommand,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    check_account_id(account_id)?;
    let done = state
        .accounts
        .execute_with(&aggregate_id(account_id), command, &context(headers))
        .await
        .map_err(|e| ApiError::from_repository(account_id, e))?;
    let last = done
        .appended
        .last()
        .ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "nothing_written", "no event"))?;
    let body = json!({
        "account_id": account_id,
        "event_id": last.event_id,
        "position": last.position,
        "version": last.version,
        "balance": done.state.balance,
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `POST /accounts` `{"account_id", "owner", "initial"}`.
async fn open_account(
    State(state): State<AppState>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let OpenBody {
        account_id,
        owner,
        initial,
    } = body(&bytes)?;
    if owner.trim().is_empty() {
        return Err(ApiError::bad_request("owner must not be empty"));
    }
    execute(
        &state,
        &account_id,
        AccountCommand::Open { owner, initial },
        &headers,
    )
    .await
}

/// `POST /accounts/{account_id}/deposits` `{"amount", "description"}`.
async fn deposit(
    State(state): State<AppState>,
    Path(account_id): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let AmountBody { amount, description } = body(&bytes)?;
    execute(
        &state,
        &account_id,
        AccountCommand::Deposit { amount, description },
        &headers,
    )
    .await
}

/// `POST /accounts/{account_id}/withdrawals` `{"amount", "description"}`.
async fn withdraw(
    State(state): State<AppState>,
    Path(account_id): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let AmountBody { amount, description } = body(&bytes)?;
    execute(
        &state,
        &account_id,
        AccountCommand::Withdraw { amount, description },
        &headers,
    )
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferBody {
    from: String,
    to: String,
    amount: i64,
}

/// `POST /transfers` `{"from", "to", "amount"}`: a withdrawal and a deposit in one atomic
/// commit, both with the same correlation id.
async fn transfer(
    State(state): State<AppState>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let TransferBody { from, to, amount } = body(&bytes)?;
    check_account_id(&from)?;
    check_account_id(&to)?;
    if from == to {
        return Err(ApiError::bad_request("a transfer needs two different accounts"));
    }
    let context = context(&headers);
    let description = Some(format!("transfer {from} -> {to}"));
    let accounts = &state.accounts;
    // A refusal names the account it concerns; load and stage never refuse.
    type TransferError = RepositoryError<(String, Refused)>;
    let outcome = retry_on_conflict(5, |_| {
        let (from, to, context, description) = (&from, &to, &context, description.clone());
        async move {
            let source = accounts.load(&aggregate_id(from)).await.map_err(relabel)?;
            let target = accounts.load(&aggregate_id(to)).await.map_err(relabel)?;
            let withdraw = AccountCommand::Withdraw {
                amount,
                description: description.clone(),
            };
            let out = Account::handle(&source.state, withdraw)
                .map_err(|e| TransferError::Domain((from.clone(), e)))?;
            let into = Account::handle(&target.state, AccountCommand::Deposit { amount, description })
                .map_err(|e| TransferError::Domain((to.clone(), e)))?;
            let batch = Batch::new()
                .with(accounts.stage(&source, &out, context).map_err(relabel)?)
                .with(accounts.stage(&target, &into, context).map_err(relabel)?);
            Ok::<_, TransferError>(batch.commit(accounts.client()).await?)
        }
    })
    .await
    .map_err(|e| match e {
        RepositoryError::Domain((who, refused)) => ApiError::refused(&who, refused),
        RepositoryError::Client(error) => ApiError::store(error),
        RepositoryError::Codec(error) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "unreadable_event",
            error.to_string(),
        ),
    })?;
    let outcome = outcome
        .ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "nothing_written", "no event"))?;
    let events: Vec<Value> = outcome
        .appends
        .iter()
        .flat_map(|a| {
            a.events
                .iter()
                .map(|e| json!({"aggregate_id": a.aggregate_id, "event_id": e.event_id, "version": e.version, "position": e.position}))
        })
        .collect();
    let body = json!({"position": outcome.position, "events": events, "correlation_id": context_correlation(&context)});
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

fn relabel(error: RepositoryError<Refused>) -> RepositoryError<(String, Refused)> {
    match error {
        RepositoryError::Domain(refused) => RepositoryError::Domain((String::new(), refused)),
        RepositoryError::Client(error) => RepositoryError::Client(error),
        RepositoryError::Codec(error) => RepositoryError::Codec(error),
    }
}

fn context_correlation(context: &CommandContext) -> Value {
    context
        .metadata
        .as_ref()
        .and_then(|m| m.get("correlation_id"))
        .cloned()
        .unwrap_or(Value::Null)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BalanceParams {
    /// `read_model` (default) or `event_store`.
    source: Option<String>,
    /// The balance from the events that happened up to this time.
    at: Option<String>,
    /// Read your write: wait until the read model has passed this position.
    min_position: Option<u64>,
    wait_ms: Option<u64>,
}

fn time_param(name: &str, text: &str) -> Result<TimeBound, ApiError> {
    TimeBound::from_str(text).map_err(|e| ApiError::bad_request(format!("{name}: {e}")))
}

/// `GET /accounts/{account_id}/balance[?source=event_store|?at=TIME|?min_position=P]`.
async fn balance(
    State(state): State<AppState>,
    Path(account_id): Path<String>,
    params: Result<Query<BalanceParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    check_account_id(&account_id)?;
    let mut query = StateQuery::new();
    let source = match params.source.as_deref() {
        None | Some("read_model") => "read_model",
        Some("event_store") => {
            query = query.source(StateSource::EventStore);
            "event_store"
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "source must be read_model or event_store, not '{other}'"
            )));
        }
    };
    if let Some(at) = &params.at {
        query = query.until(time_param("at", at)?);
    }
    query.min_position = params.min_position;
    query.wait_ms = params.wait_ms;
    let read = state
        .client
        .projection_state(projections::BALANCES, &aggregate_id(&account_id), &query)
        .await;
    let read = match read {
        Ok(read) => read,
        Err(factstore_client::Error::KeyNotFound { .. }) => {
            return Err(ApiError::account_not_found(&account_id));
        }
        Err(error) => return Err(ApiError::store(error)),
    };
    let model = read.state.to_value();
    let body = json!({
        "account_id": account_id,
        "balance": model["balance"],
        "transactions": model["transactions"],
        "owner": model["owner"],
        "currency": account::CURRENCY,
        "source": source,
        "at": params.at,
        "position": read.position,
    });
    Ok(Json(body).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryParams {
    from: Option<String>,
    to: Option<String>,
}

/// `GET /accounts/{account_id}/history[?from=&to=]`: every event of the account whose
/// `created_at` is in the range, with who did it and when: the audit trail.
async fn history(
    State(state): State<AppState>,
    Path(account_id): Path<String>,
    params: Result<Query<HistoryParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    check_account_id(&account_id)?;
    let mut query = AggregateQuery::new();
    if let Some(from) = &params.from {
        query = query.from(time_param("from", from)?);
    }
    if let Some(to) = &params.to {
        query = query.to(time_param("to", to)?);
    }
    let events = state.client.aggregate_stream(&aggregate_id(&account_id), query);
    let events: Vec<factstore_client::Event> = match events.try_collect().await {
        Ok(events) => events,
        Err(factstore_client::Error::AggregateNotFound { .. }) => {
            return Err(ApiError::account_not_found(&account_id));
        }
        Err(error) => return Err(ApiError::store(error)),
    };
    let entries: Vec<Value> = events
        .iter()
        .map(|e| {
            json!({
                "version": e.version,
                "position": e.position,
                "event_id": e.event_id,
                "event_type": e.event_type,
                "event_version": e.event_version,
                "event_data": e.event_data.to_value(),
                "created_at": factstore_client::time::format_timestamp(e.created_at),
                "created_by": e.created_by,
                "correlation_id": e.correlation_id(),
            })
        })
        .collect();
    Ok(
        Json(json!({"account_id": account_id, "from": params.from, "to": params.to, "events": entries}))
            .into_response(),
    )
}

/// `GET /events/{event_id}/status`: whether the read models have processed a write yet.
async fn event_status(
    State(state): State<AppState>,
    Path(event_id): Path<String>,
) -> Result<Response, ApiError> {
    let event_id = Uuid::try_parse(&event_id)
        .map_err(|_| ApiError::bad_request(format!("'{event_id}' is not an event id")))?;
    let status = state
        .client
        .event_status(event_id)
        .await
        .map_err(ApiError::store)?;
    Ok(Json(status).into_response())
}

/// `GET /summary/{day}`: deposits and withdrawals of one UTC day (`YYYY-MM-DD`).
async fn summary(State(state): State<AppState>, Path(day): Path<String>) -> Result<Response, ApiError> {
    if !matches!(TimeBound::from_str(&day), Ok(TimeBound::Day(_))) {
        return Err(ApiError::bad_request(format!(
            "'{day}' is not a day (YYYY-MM-DD)"
        )));
    }
    let read = state
        .client
        .projection_state(projections::DAILY_SUMMARY, &day, &StateQuery::new())
        .await;
    match read {
        Ok(read) => Ok(Json(
            json!({"day": day, "summary": read.state.to_value(), "position": read.position}),
        )
        .into_response()),
        Err(factstore_client::Error::KeyNotFound { .. }) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_activity",
            format!("no deposit or withdrawal on {day}"),
        )),
        Err(error) => Err(ApiError::store(error)),
    }
}

/// `GET /summary`: every day's summary.
async fn summaries(State(state): State<AppState>) -> Result<Response, ApiError> {
    let states = state
        .client
        .all_projection_states(projections::DAILY_SUMMARY)
        .await
        .map_err(ApiError::store)?;
    let days: Vec<Value> = states
        .iter()
        .map(|s| json!({"day": s.key, "summary": s.state.to_value()}))
        .collect();
    Ok(Json(json!({ "days": days })).into_response())
}
