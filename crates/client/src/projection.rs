//! Projections (read models): declarative definitions the server folds into one JSON state
//! per key, their status, their states (maintained, current, or as of a time), and whether an
//! event has been materialized in them yet (read-your-writes).

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use futures::stream::{self, Stream, TryStreamExt};
use reqwest::{Method, StatusCode};
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;
use uuid::Uuid;

use crate::client::{Client, decode, to_body};
use crate::error::{Context, Error, Result};
use crate::json::RawJson;
use crate::query::{EventFilter, Params};
use crate::time::TimeBound;

/// What a projection keys its states by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ProjectionKey {
    /// One state per aggregate.
    AggregateId,
    /// One state per UTC day of `created_at` (`YYYY-MM-DD`).
    Day,
    /// One state for everything, under the key `all`.
    All,
    /// A JSON Pointer into the event (`/event_data/sku`); events without it are passed over
    /// and counted as `unkeyed`.
    Pointer(String),
}

impl ProjectionKey {
    /// The wire form: `aggregate_id`, `day`, `all` or the pointer.
    pub fn as_str(&self) -> &str {
        match self {
            ProjectionKey::AggregateId => "aggregate_id",
            ProjectionKey::Day => "day",
            ProjectionKey::All => "all",
            ProjectionKey::Pointer(pointer) => pointer,
        }
    }
}

impl fmt::Display for ProjectionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ProjectionKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ProjectionKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        match text.as_str() {
            "aggregate_id" => Ok(ProjectionKey::AggregateId),
            "day" => Ok(ProjectionKey::Day),
            "all" => Ok(ProjectionKey::All),
            pointer if pointer.starts_with('/') => Ok(ProjectionKey::Pointer(text)),
            other => Err(de::Error::custom(format!(
                "key must be \"aggregate_id\", \"day\", \"all\" or a JSON Pointer such as \"/event_data/sku\", not \"{other}\""
            ))),
        }
    }
}

/// The kind of one [`Operation`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    Set,
    Add,
    Sub,
    Inc,
    Min,
    Max,
    Append,
    Unset,
}

/// One operation of a projection on the state: `path` is a JSON Pointer into the state; the
/// operand comes from `from` (a JSON Pointer into the event) or `value` (a literal).
///
/// ```
/// use factstore_client::Operation;
/// use serde_json::json;
///
/// let ops = [
///     Operation::add("/balance").from("/event_data/amount"),
///     Operation::inc("/transactions"),
///     Operation::set("/currency").from("/event_data/currency").optional(),
///     Operation::set("/status").value(json!("open")),
/// ];
/// assert_eq!(
///     serde_json::to_value(&ops[2]).unwrap(),
///     json!({"op": "set", "path": "/currency", "from": "/event_data/currency", "optional": true})
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operation {
    pub op: OpKind,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// A `from` missing in the event makes the operation do nothing instead of failing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
}

impl Operation {
    /// An operation of `op` on `path`, with no operand yet.
    pub fn new(op: OpKind, path: impl Into<String>) -> Operation {
        Operation {
            op,
            path: path.into(),
            from: None,
            value: None,
            optional: false,
        }
    }

    pub fn set(path: impl Into<String>) -> Operation {
        Operation::new(OpKind::Set, path)
    }

    pub fn add(path: impl Into<String>) -> Operation {
        Operation::new(OpKind::Add, path)
    }

    pub fn sub(path: impl Into<String>) -> Operation {
        Operation::new(OpKind::Sub, path)
    }

    /// Adds `value` (1 when not given).
    pub fn inc(path: impl Into<String>) -> Operation {
        Operation::new(OpKind::Inc, path)
    }

    pub fn min(path: impl Into<String>) -> Operation {
        Operation::new(OpKind::Min, path)
    }

    pub fn max(path: impl Into<String>) -> Operation {
        Operation::new(OpKind::Max, path)
    }

    /// Appends to an array.
    pub fn append(path: impl Into<String>) -> Operation {
        Operation::new(OpKind::Append, path)
    }

    pub fn unset(path: impl Into<String>) -> Operation {
        Operation::new(OpKind::Unset, path)
    }

    /// The operand is the value at this JSON Pointer in the event (`/event_data/amount`,
    /// `/event_type`, `/created_at`).
    pub fn from(mut self, pointer: impl Into<String>) -> Operation {
        self.from = Some(pointer.into());
        self
    }

    /// The operand is this literal.
    pub fn value(mut self, value: impl Into<Value>) -> Operation {
        self.value = Some(value.into());
        self
    }

    /// A `from` missing in the event makes the operation do nothing.
    pub fn optional(mut self) -> Operation {
        self.optional = true;
        self
    }
}

/// The body of `PUT /v1/projections/{name}`: which events, keyed how, folded how.
///
/// ```
/// use factstore_client::{EventFilter, Operation, ProjectionDefinition, ProjectionKey};
/// use serde_json::json;
///
/// let balances = ProjectionDefinition::new(
///     EventFilter::new().aggregate_type("Account"),
///     ProjectionKey::AggregateId,
/// )
/// .initial(json!({"balance": 0, "transactions": 0}))
/// .on("MoneyDeposited", [Operation::add("/balance").from("/event_data/amount"), Operation::inc("/transactions")])
/// .on("MoneyWithdrawn", [Operation::sub("/balance").from("/event_data/amount"), Operation::inc("/transactions")]);
/// assert_eq!(serde_json::to_value(&balances).unwrap()["key"], "aggregate_id");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectionDefinition {
    #[serde(default)]
    pub filter: EventFilter,
    pub key: ProjectionKey,
    /// The state of a key before its first event (a JSON object); `{}` when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial: Option<Value>,
    /// Per event type (and `"*"` for every matching event), the operations in order.
    #[serde(default)]
    pub on: BTreeMap<String, Vec<Operation>>,
}

impl ProjectionDefinition {
    pub fn new(filter: EventFilter, key: ProjectionKey) -> ProjectionDefinition {
        ProjectionDefinition {
            filter,
            key,
            initial: None,
            on: BTreeMap::new(),
        }
    }

    /// The state of a key before its first event.
    pub fn initial(mut self, initial: Value) -> ProjectionDefinition {
        self.initial = Some(initial);
        self
    }

    /// Adds operations for events of `event_type` (`"*"`: every matching event, after the
    /// type's own operations).
    pub fn on(
        mut self,
        event_type: impl Into<String>,
        operations: impl IntoIterator<Item = Operation>,
    ) -> ProjectionDefinition {
        self.on.entry(event_type.into()).or_default().extend(operations);
        self
    }
}

/// Whether a projection is keeping up, rebuilding, or stopped on an event it cannot fold.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProjectionRunStatus {
    Running,
    /// A rebuild is catching up; the old state serves until it swaps in.
    Rebuilding,
    /// An operation failed on an event; `error` names its position.
    Failed,
    /// A status this client does not know.
    #[serde(other)]
    Unknown,
}

impl ProjectionRunStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            ProjectionRunStatus::Running => "running",
            ProjectionRunStatus::Rebuilding => "rebuilding",
            ProjectionRunStatus::Failed => "failed",
            ProjectionRunStatus::Unknown => "unknown",
        }
    }
}

/// `GET /v1/projections/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProjectionStatus {
    pub name: String,
    pub status: ProjectionRunStatus,
    /// The last global position the projection has considered (events its filter passes over
    /// count as considered).
    pub position: u64,
    #[serde(default)]
    pub head_position: u64,
    /// `head_position − position`.
    #[serde(default)]
    pub lag: u64,
    /// How many keys have a state.
    #[serde(default)]
    pub keys: u64,
    /// Events passed over because they had no key.
    #[serde(default)]
    pub unkeyed: u64,
    /// Why the projection failed (with the event's position), when it did.
    #[serde(default)]
    pub error: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct ProjectionList {
    projections: Vec<ProjectionStatus>,
}

/// The answer to a put.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectionPut {
    /// True for a new projection (201); false when it replaced one (200), which rebuilds it if
    /// the definition changed.
    pub created: bool,
    /// The projection's status, when the server sent it.
    pub status: Option<ProjectionStatus>,
}

/// Where a state is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum StateSource {
    /// The maintained state, as of the projection's position (the default).
    #[default]
    ReadModel,
    /// Folded straight from the events up to the head: always current, slower.
    EventStore,
}

/// How to read one key's state (`GET /v1/projections/{name}/state/{key}`).
///
/// ```
/// use factstore_client::{StateQuery, TimeBound};
///
/// // Read-your-writes: wait up to 2 s for the projection to pass position 1042.
/// let fresh = StateQuery::new().min_position(1042).wait_ms(2000);
/// // Time travel: the balance from the events that happened up to 14:00.
/// let then = StateQuery::new().until("2024-01-15T14:00:00Z".parse::<TimeBound>().unwrap());
/// # let _ = (fresh, then);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StateQuery {
    pub source: StateSource,
    /// Wait until the projection has passed this position (read-your-writes).
    pub min_position: Option<u64>,
    /// How long the server waits for `min_position` (its default: 5000 ms).
    pub wait_ms: Option<u64>,
    /// Only events with `created_at ≤ until`.
    pub until: Option<TimeBound>,
    /// Only events with `recorded_at ≤ as_of` (the store as it was then).
    pub as_of: Option<TimeBound>,
}

impl StateQuery {
    pub fn new() -> StateQuery {
        StateQuery::default()
    }

    pub fn source(mut self, source: StateSource) -> StateQuery {
        self.source = source;
        self
    }

    pub fn min_position(mut self, position: u64) -> StateQuery {
        self.min_position = Some(position);
        self
    }

    pub fn wait_ms(mut self, wait_ms: u64) -> StateQuery {
        self.wait_ms = Some(wait_ms);
        self
    }

    pub fn until(mut self, until: impl Into<TimeBound>) -> StateQuery {
        self.until = Some(until.into());
        self
    }

    pub fn as_of(mut self, as_of: impl Into<TimeBound>) -> StateQuery {
        self.as_of = Some(as_of.into());
        self
    }

    pub(crate) fn params(&self) -> Params {
        let mut params = Params::default();
        if self.source == StateSource::EventStore {
            params.push("source", "event_store".to_owned());
        }
        params.push_opt("min_position", self.min_position);
        params.push_opt("wait_ms", self.wait_ms);
        params.push_opt("until", self.until.as_ref().map(TimeBound::to_param));
        params.push_opt("as_of", self.as_of.as_ref().map(TimeBound::to_param));
        params
    }
}

/// One key's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectionState {
    pub key: String,
    /// A JSON value, as the server sent it.
    pub state: RawJson,
    /// The position the state is as of.
    #[serde(default)]
    pub position: u64,
}

impl ProjectionState {
    /// `state` deserialised into `T`.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> std::result::Result<T, serde_json::Error> {
        self.state.parse()
    }
}

/// One key's state in a page of states.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyedState {
    pub key: String,
    pub state: RawJson,
}

/// A page of `GET /v1/projections/{name}/state`, in key order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatesPage {
    pub states: Vec<KeyedState>,
    /// Where the next page starts (`after_key`); `None` at the end.
    #[serde(default)]
    pub next_after_key: Option<String>,
}

/// `GET /v1/events/{event_id}/status`: whether the projections that take an event have
/// processed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventStatus {
    pub event_id: Uuid,
    pub position: u64,
    /// True when every projection whose filter matches the event has processed it.
    pub materialized: bool,
    /// Per projection whose filter matches the event: whether it has processed it.
    #[serde(default)]
    pub projections: BTreeMap<String, bool>,
}

impl Client {
    /// `PUT /v1/projections/{name}`: creates or replaces a projection; a changed definition
    /// rebuilds it (the old state serves until the new one has caught up).
    /// [`Error::InvalidProjection`] names what the server refused.
    pub async fn put_projection(
        &self,
        name: &str,
        definition: &ProjectionDefinition,
    ) -> Result<ProjectionPut> {
        let url = self.endpoint(&["v1", "projections", name], &Params::default())?;
        let (status, body) = self
            .send_about(
                Method::PUT,
                url,
                Some(to_body(definition)?),
                &Context::projection(name),
            )
            .await?;
        Ok(ProjectionPut {
            created: status == StatusCode::CREATED,
            // The contract does not fix the body of a put; take the status when it is one.
            status: serde_json::from_slice(&body).ok(),
        })
    }

    /// `GET /v1/projections/{name}`: its status, position and lag.
    pub async fn get_projection(&self, name: &str) -> Result<ProjectionStatus> {
        let url = self.endpoint(&["v1", "projections", name], &Params::default())?;
        let (_, body) = self
            .send_about(Method::GET, url, None, &Context::projection(name))
            .await?;
        decode(&body, "the projection")
    }

    /// `GET /v1/projections`: every projection's status.
    pub async fn list_projections(&self) -> Result<Vec<ProjectionStatus>> {
        let url = self.endpoint(&["v1", "projections"], &Params::default())?;
        let list: ProjectionList = self.get_json(url).await?;
        Ok(list.projections)
    }

    /// `DELETE /v1/projections/{name}`: the projection and its states.
    pub async fn delete_projection(&self, name: &str) -> Result<()> {
        let url = self.endpoint(&["v1", "projections", name], &Params::default())?;
        self.send_about(Method::DELETE, url, None, &Context::projection(name))
            .await?;
        Ok(())
    }

    /// `POST /v1/projections/{name}/rebuild`: folds every event again; the old state keeps
    /// serving until the rebuilt one has caught up. Answers once the rebuild has started
    /// (202); [`Client::get_projection`] shows `rebuilding` until it is done.
    pub async fn rebuild_projection(&self, name: &str) -> Result<()> {
        let url = self.endpoint(&["v1", "projections", name, "rebuild"], &Params::default())?;
        self.send_about(Method::POST, url, None, &Context::projection(name))
            .await?;
        Ok(())
    }

    /// `GET /v1/projections/{name}/state/{key}`: one key's state, read as `query` says.
    ///
    /// [`Error::KeyNotFound`] when the key has no state; [`Error::NotYetMaterialized`] when
    /// `min_position` was not reached within the wait.
    ///
    /// ```no_run
    /// # async fn example(client: factstore_client::Client) -> Result<(), factstore_client::Error> {
    /// use factstore_client::{StateQuery, StateSource};
    ///
    /// let maintained = client.projection_state("balances", "account:ACC-001", &StateQuery::new()).await?;
    /// let current = client
    ///     .projection_state("balances", "account:ACC-001", &StateQuery::new().source(StateSource::EventStore))
    ///     .await?;
    /// println!("{} (as of {}) / {}", maintained.state, maintained.position, current.state);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn projection_state(
        &self,
        name: &str,
        key: &str,
        query: &StateQuery,
    ) -> Result<ProjectionState> {
        let url = self.endpoint(&["v1", "projections", name, "state", key], &query.params())?;
        let (_, body) = self
            .send_about(Method::GET, url, None, &Context::key(name, key))
            .await?;
        decode(&body, "the projection state")
    }

    /// `GET /v1/projections/{name}/state`: one page of states in key order, after `after_key`.
    pub async fn projection_states(
        &self,
        name: &str,
        after_key: Option<&str>,
        limit: Option<u32>,
    ) -> Result<StatesPage> {
        let mut params = Params::default();
        params.push_opt("after_key", after_key);
        params.push_opt("limit", limit);
        let url = self.endpoint(&["v1", "projections", name, "state"], &params)?;
        let (_, body) = self
            .send_about(Method::GET, url, None, &Context::projection(name))
            .await?;
        decode(&body, "the projection states")
    }

    /// Every state of a projection, page after page, in key order.
    pub async fn all_projection_states(&self, name: &str) -> Result<Vec<KeyedState>> {
        self.projection_states_stream(name, None, None)
            .try_collect()
            .await
    }

    /// The states of a projection after `after_key` (from the first when `None`), in key
    /// order, page after page (pages of `page_limit` states, or the server's default), one
    /// page held at a time.
    pub fn projection_states_stream(
        &self,
        name: &str,
        after_key: Option<String>,
        page_limit: Option<u32>,
    ) -> impl Stream<Item = Result<KeyedState>> + Send + 'static {
        let client = self.clone();
        let name = name.to_owned();
        let pages = stream::try_unfold(Some(after_key), move |next| {
            let client = client.clone();
            let name = name.clone();
            async move {
                let Some(after) = next else { return Ok(None) };
                let page = client
                    .projection_states(&name, after.as_deref(), page_limit)
                    .await?;
                let next = match page.next_after_key {
                    // A next page must move on, or paging would never end.
                    Some(key) if Some(&key) != after.as_ref() => Some(Some(key)),
                    _ => None,
                };
                Ok(Some((page.states, next)))
            }
        });
        pages
            .map_ok(|states| stream::iter(states.into_iter().map(Ok)))
            .try_flatten()
    }

    /// `GET /v1/events/{event_id}/status`: whether every projection that takes the event has
    /// processed it. [`Error::EventNotFound`] for an unknown event.
    pub async fn event_status(&self, event_id: Uuid) -> Result<EventStatus> {
        let id = event_id.hyphenated().to_string();
        let url = self.endpoint(&["v1", "events", &id, "status"], &Params::default())?;
        self.get_json(url).await
    }

    /// Polls [`Client::event_status`] until the event is materialized or `timeout` has passed
    /// (then [`Error::NotYetMaterialized`]). For read-your-writes after a write that answered
    /// with the event's id.
    pub async fn wait_materialized(&self, event_id: Uuid, timeout: Duration) -> Result<EventStatus> {
        let started = Instant::now();
        let mut delay = Duration::from_millis(10);
        loop {
            let status = self.event_status(event_id).await?;
            if status.materialized {
                return Ok(status);
            }
            let elapsed = started.elapsed();
            if elapsed >= timeout {
                let pending: Vec<&str> = status
                    .projections
                    .iter()
                    .filter(|(_, done)| !**done)
                    .map(|(name, _)| name.as_str())
                    .collect();
                return Err(Error::NotYetMaterialized {
                    message: format!(
                        "event {event_id} (position {}) not yet processed by {} after {} ms",
                        status.position,
                        pending.join(", "),
                        timeout.as_millis()
                    ),
                    retry_after: None,
                    position: None,
                });
            }
            tokio::time::sleep(delay.min(timeout - elapsed)).await;
            delay = (delay * 2).min(Duration::from_millis(200));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn the_contracts_example_definition_round_trips() {
        let text = json!({
          "filter": {"event_types": ["AccountCreated", "MoneyDeposited", "MoneyWithdrawn"],
                     "aggregate_type": "Account"},
          "key": "aggregate_id",
          "initial": {"balance": 0, "transactions": 0},
          "on": {
            "AccountCreated": [{"op": "set", "path": "/balance", "from": "/event_data/initial"}],
            "MoneyDeposited": [{"op": "add", "path": "/balance", "from": "/event_data/amount"},
                               {"op": "inc", "path": "/transactions"}],
            "MoneyWithdrawn": [{"op": "sub", "path": "/balance", "from": "/event_data/amount"},
                               {"op": "inc", "path": "/transactions"}],
            "*": [{"op": "set", "path": "/last_event", "from": "/event_type"}]
          }
        });
        let definition: ProjectionDefinition = serde_json::from_value(text.clone()).unwrap();
        assert_eq!(definition.key, ProjectionKey::AggregateId);
        assert_eq!(serde_json::to_value(&definition).unwrap(), text);

        let built = ProjectionDefinition::new(
            EventFilter::new()
                .event_type("AccountCreated")
                .event_type("MoneyDeposited")
                .event_type("MoneyWithdrawn")
                .aggregate_type("Account"),
            ProjectionKey::AggregateId,
        )
        .initial(json!({"balance": 0, "transactions": 0}))
        .on(
            "AccountCreated",
            [Operation::set("/balance").from("/event_data/initial")],
        )
        .on(
            "MoneyDeposited",
            [
                Operation::add("/balance").from("/event_data/amount"),
                Operation::inc("/transactions"),
            ],
        )
        .on(
            "MoneyWithdrawn",
            [
                Operation::sub("/balance").from("/event_data/amount"),
                Operation::inc("/transactions"),
            ],
        )
        .on("*", [Operation::set("/last_event").from("/event_type")]);
        assert_eq!(built, definition);
    }

    #[test]
    fn bad_definitions_are_refused_with_the_reason() {
        let error = serde_json::from_value::<ProjectionDefinition>(json!({"key": "sku", "on": {}}))
            .unwrap_err()
            .to_string();
        assert!(error.contains("JSON Pointer"), "{error}");
        let error = serde_json::from_value::<ProjectionDefinition>(
            json!({"key": "day", "on": {"X": [{"op": "mul", "path": "/a"}]}}),
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("mul"), "{error}");
        let pointer: ProjectionDefinition =
            serde_json::from_value(json!({"key": "/event_data/sku"})).unwrap();
        assert_eq!(pointer.key, ProjectionKey::Pointer("/event_data/sku".into()));
    }

    #[test]
    fn state_queries_become_parameters() {
        let query = StateQuery::new()
            .source(StateSource::EventStore)
            .min_position(7)
            .wait_ms(100)
            .until("2024-01-15".parse::<TimeBound>().unwrap());
        let params: Vec<(&str, String)> = query.params().0;
        assert_eq!(
            params,
            vec![
                ("source", "event_store".to_owned()),
                ("min_position", "7".to_owned()),
                ("wait_ms", "100".to_owned()),
                ("until", "2024-01-15".to_owned()),
            ]
        );
        assert!(StateQuery::new().params().0.is_empty());
    }

    #[test]
    fn statuses_read_unknown_states() {
        let status: ProjectionStatus = serde_json::from_str(
            r#"{"name":"b","status":"paused","position":3,"head_position":5,"lag":2,"keys":1,"unkeyed":0,"error":null}"#,
        )
        .unwrap();
        assert_eq!((status.status, status.lag), (ProjectionRunStatus::Unknown, 2));
    }
}
