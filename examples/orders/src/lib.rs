//! An order's lifecycle (created, paid, shipped, delivered) as an HTTP
//! service on factstore. Writes go through the SDK's repository; every read model is a
//! declarative projection the server maintains ([`projections`]).
//!
//! # Layout
//! - [`order`]: the aggregate (commands, events, rules).
//! - [`projections`]: order status, shipping per day, demand per SKU.
//! - [`app`]: the routes; [`ApiError`]: every refusal as a 4xx with a JSON body.

pub mod order;
pub mod projections;

use std::str::FromStr;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use factstore_client::sdk::{CommandContext, Repository, RepositoryError};
use factstore_client::{AggregateQuery, Client, StateQuery, StateSource, TimeBound};
use futures::TryStreamExt;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use uuid::Uuid;

use order::{Item, Order, OrderCommand, Refused, aggregate_id};

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    pub client: Client,
    pub orders: Repository<Order>,
}

impl AppState {
    pub fn new(client: Client) -> AppState {
        let orders = Repository::new(client.clone()).conflict_attempts(5);
        AppState { client, orders }
    }
}

/// The service's routes.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/orders", post(create))
        .route("/orders/{order_id}", get(status))
        .route("/orders/{order_id}/items", post(add_item))
        .route("/orders/{order_id}/payments", post(pay))
        .route("/orders/{order_id}/shipments", post(ship))
        .route("/orders/{order_id}/delivery", post(deliver))
        .route("/orders/{order_id}/history", get(history))
        .route("/shipping", get(shipping_all))
        .route("/shipping/{day}", get(shipping_day))
        .route("/skus/{sku}", get(sku))
        .route("/events/{event_id}/status", get(event_status))
        .with_state(state)
}

/// A refusal or a failure, as `{"error": {"code", "message", ...}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<Duration>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    fn order_not_found(order_id: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "order_not_found",
            format!("order {order_id} does not exist"),
        )
    }

    fn refused(order_id: &str, refused: Refused) -> ApiError {
        let message = format!("order {order_id}: {refused}");
        match refused {
            Refused::AlreadyExists => ApiError::new(StatusCode::CONFLICT, "order_exists", message),
            Refused::NotFound => ApiError::order_not_found(order_id),
            Refused::NoItems | Refused::BadItem { .. } | Refused::NoTracking => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_order", message)
            }
            Refused::WrongStage { .. } | Refused::NotYet { .. } => {
                ApiError::new(StatusCode::CONFLICT, "wrong_stage", message)
            }
            Refused::WrongAmount { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "wrong_amount", message)
            }
        }
    }

    fn store(error: factstore_client::Error) -> ApiError {
        use factstore_client::Error;
        match error {
            Error::WrongExpectedVersion { .. } => ApiError::new(
                StatusCode::CONFLICT,
                "concurrent_modification",
                "the order kept changing while the command was decided; try again",
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
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut response = (self.status, Json(body)).into_response();
        if let Some(after) = self.retry_after
            && let Ok(value) = HeaderValue::from_str(&after.as_secs().max(1).to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request(format!("the body is not valid: {e}")))
}

/// `X-User-Id` becomes `created_by`, `X-Correlation-Id` (or a new id) `metadata.correlation_id`.
fn context(headers: &HeaderMap) -> CommandContext {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let mut context = CommandContext::new();
    if let Some(user) = header("x-user-id") {
        context = context.created_by(format!("user:{user}"));
    }
    context.correlation_id(header("x-correlation-id").unwrap_or_else(|| format!("corr-{}", Uuid::now_v7())))
}

fn check_id(what: &str, id: &str) -> Result<(), ApiError> {
    let valid = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{what} '{id}' must be 1 to 64 letters, digits, '-' or '_'"
        )))
    }
}

async fn execute(
    state: &AppState,
    order_id: &str,
    command: OrderCommand,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    check_id("order_id", order_id)?;
    let done = state
        .orders
        .execute_with(&aggregate_id(order_id), command, &context(headers))
        .await
        .map_err(|e| match e {
            RepositoryError::Domain(refused) => ApiError::refused(order_id, refused),
            RepositoryError::Client(error) => ApiError::store(error),
            RepositoryError::Codec(error) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "unreadable_event",
                error.to_string(),
            ),
        })?;
    let last = done
        .appended
        .last()
        .ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "nothing_written", "no event"))?;
    let events: Vec<Value> = done
        .appended
        .iter()
        .zip(&done.events)
        .map(|(a, e)| {
            let event_type = serde_json::to_value(e)
                .ok()
                .and_then(|v| v.get("event_type").cloned())
                .unwrap_or(Value::Null);
            json!({"event_id": a.event_id, "event_type": event_type, "version": a.version, "position": a.position})
        })
        .collect();
    let body = json!({
        "order_id": order_id,
        "event_id": last.event_id,
        "position": last.position,
        "version": last.version,
        "events": events,
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    order_id: String,
    customer: String,
    #[serde(default)]
    customer_email: Option<String>,
    items: Vec<Item>,
}

/// `POST /orders` `{"order_id", "customer", "customer_email", "items": [{"sku", "quantity", "price"}]}`:
/// `OrderCreated` and one `ItemAdded` per item, appended together.
async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let CreateBody {
        order_id,
        customer,
        customer_email,
        items,
    } = body(&bytes)?;
    let command = OrderCommand::Create {
        customer,
        customer_email,
        items,
    };
    execute(&state, &order_id, command, &headers).await
}

/// `POST /orders/{order_id}/items` `{"sku", "quantity", "price"}` (before payment).
async fn add_item(
    State(state): State<AppState>,
    Path(order_id): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let item: Item = body(&bytes)?;
    execute(&state, &order_id, OrderCommand::AddItem(item), &headers).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PayBody {
    amount: i64,
}

/// `POST /orders/{order_id}/payments` `{"amount"}`: the order's total, once.
async fn pay(
    State(state): State<AppState>,
    Path(order_id): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let PayBody { amount } = body(&bytes)?;
    execute(&state, &order_id, OrderCommand::Pay { amount }, &headers).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShipBody {
    tracking: String,
    #[serde(default)]
    carrier: Option<String>,
}

/// `POST /orders/{order_id}/shipments` `{"tracking", "carrier"}`: once paid.
async fn ship(
    State(state): State<AppState>,
    Path(order_id): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let ShipBody { tracking, carrier } = body(&bytes)?;
    execute(
        &state,
        &order_id,
        OrderCommand::Ship { tracking, carrier },
        &headers,
    )
    .await
}

/// `POST /orders/{order_id}/delivery`: once shipped.
async fn deliver(
    State(state): State<AppState>,
    Path(order_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    execute(&state, &order_id, OrderCommand::Deliver, &headers).await
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusParams {
    source: Option<String>,
    min_position: Option<u64>,
    wait_ms: Option<u64>,
}

/// `GET /orders/{order_id}[?source=event_store|?min_position=P]`: the order status read model.
async fn status(
    State(state): State<AppState>,
    Path(order_id): Path<String>,
    params: Result<Query<StatusParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    check_id("order_id", &order_id)?;
    let mut query = StateQuery::new();
    match params.source.as_deref() {
        None | Some("read_model") => {}
        Some("event_store") => query = query.source(StateSource::EventStore),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "source must be read_model or event_store, not '{other}'"
            )));
        }
    }
    query.min_position = params.min_position;
    query.wait_ms = params.wait_ms;
    match state
        .client
        .projection_state(projections::ORDER_STATUS, &aggregate_id(&order_id), &query)
        .await
    {
        Ok(read) => {
            let mut body = json!({"order_id": order_id, "position": read.position});
            if let (Some(object), Value::Object(model)) = (body.as_object_mut(), read.state.to_value()) {
                object.extend(model);
            }
            Ok(Json(body).into_response())
        }
        Err(factstore_client::Error::KeyNotFound { .. }) => Err(ApiError::order_not_found(&order_id)),
        Err(error) => Err(ApiError::store(error)),
    }
}

/// `GET /orders/{order_id}/history`: exactly what happened, when, by whom.
async fn history(State(state): State<AppState>, Path(order_id): Path<String>) -> Result<Response, ApiError> {
    check_id("order_id", &order_id)?;
    let events = state
        .client
        .aggregate_stream(&aggregate_id(&order_id), AggregateQuery::new());
    let events: Vec<factstore_client::Event> = match events.try_collect().await {
        Ok(events) => events,
        Err(factstore_client::Error::AggregateNotFound { .. }) => {
            return Err(ApiError::order_not_found(&order_id));
        }
        Err(error) => return Err(ApiError::store(error)),
    };
    let entries: Vec<Value> = events
        .iter()
        .map(|e| {
            json!({
                "version": e.version,
                "position": e.position,
                "event_type": e.event_type,
                "event_data": e.event_data.to_value(),
                "created_at": factstore_client::time::format_timestamp(e.created_at),
                "created_by": e.created_by,
                "correlation_id": e.correlation_id(),
            })
        })
        .collect();
    Ok(Json(json!({"order_id": order_id, "events": entries})).into_response())
}

/// `GET /shipping/{day}`: orders shipped and delivered that UTC day.
async fn shipping_day(State(state): State<AppState>, Path(day): Path<String>) -> Result<Response, ApiError> {
    if !matches!(TimeBound::from_str(&day), Ok(TimeBound::Day(_))) {
        return Err(ApiError::bad_request(format!(
            "'{day}' is not a day (YYYY-MM-DD)"
        )));
    }
    match state
        .client
        .projection_state(projections::SHIPPING_DAILY, &day, &StateQuery::new())
        .await
    {
        Ok(read) => Ok(Json(json!({"day": day, "shipping": read.state.to_value()})).into_response()),
        Err(factstore_client::Error::KeyNotFound { .. }) => {
            Ok(Json(json!({"day": day, "shipping": {"shipped": 0, "delivered": 0}})).into_response())
        }
        Err(error) => Err(ApiError::store(error)),
    }
}

/// `GET /shipping`: every day's shipping counts.
async fn shipping_all(State(state): State<AppState>) -> Result<Response, ApiError> {
    let states = state
        .client
        .all_projection_states(projections::SHIPPING_DAILY)
        .await
        .map_err(ApiError::store)?;
    let days: Vec<Value> = states
        .iter()
        .map(|s| json!({"day": s.key, "shipping": s.state.to_value()}))
        .collect();
    Ok(Json(json!({ "days": days })).into_response())
}

/// `GET /skus/{sku}`: units ordered of one SKU.
async fn sku(State(state): State<AppState>, Path(sku): Path<String>) -> Result<Response, ApiError> {
    match state
        .client
        .projection_state(projections::SKU_DEMAND, &sku, &StateQuery::new())
        .await
    {
        Ok(read) => Ok(Json(json!({"sku": sku, "demand": read.state.to_value()})).into_response()),
        Err(factstore_client::Error::KeyNotFound { .. }) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "sku_not_found",
            format!("no order line for {sku}"),
        )),
        Err(error) => Err(ApiError::store(error)),
    }
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
