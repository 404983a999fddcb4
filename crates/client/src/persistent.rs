//! Persistent subscriptions: consumer groups whose checkpoint the server keeps. Consumers
//! poll for leased events, ack what they handled and nack what they could not (or park it);
//! an event nacked or timed out is delivered again, and parked after `max_deliveries`.

use futures::stream::{self, Stream, TryStreamExt};
use reqwest::{Method, StatusCode};
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::client::{Client, decode, to_body};
use crate::error::{Context, Error, Result};
use crate::event::Event;
use crate::query::{EventFilter, Params};

/// Where a new group starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SubscriptionStart {
    /// Every matching event ever appended (the default).
    #[default]
    Beginning,
    /// Only what is appended after the group exists.
    End,
    /// From the position after this one.
    After(u64),
}

impl Serialize for SubscriptionStart {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            SubscriptionStart::Beginning => serializer.serialize_str("beginning"),
            SubscriptionStart::End => serializer.serialize_str("end"),
            SubscriptionStart::After(position) => serializer.serialize_u64(*position),
        }
    }
}

impl<'de> Deserialize<'de> for SubscriptionStart {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        match Value::deserialize(deserializer)? {
            Value::String(s) if s == "beginning" => Ok(SubscriptionStart::Beginning),
            Value::String(s) if s == "end" => Ok(SubscriptionStart::End),
            Value::Number(n) if n.as_u64().is_some() => {
                Ok(SubscriptionStart::After(n.as_u64().unwrap_or_default()))
            }
            other => Err(de::Error::custom(format!(
                "start must be \"beginning\", \"end\" or a position, not {other}"
            ))),
        }
    }
}

impl std::str::FromStr for SubscriptionStart {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<SubscriptionStart, String> {
        match text {
            "beginning" => Ok(SubscriptionStart::Beginning),
            "end" => Ok(SubscriptionStart::End),
            digits => digits
                .parse()
                .map(SubscriptionStart::After)
                .map_err(|_| format!("a start is 'beginning', 'end' or a position (a number), not '{text}'")),
        }
    }
}

/// In what order a group hands out events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryOrdering {
    /// Any order, as many in flight as consumers ask for (the default).
    #[default]
    None,
    /// No two events of one aggregate in flight at once, each aggregate's in version order.
    PerAggregate,
}

/// The body of `PUT /v1/subscriptions/{group}`. Unset fields take the server's defaults
/// (ack timeout 30 s, 5 deliveries, no ordering).
///
/// ```
/// use factstore_client::{DeliveryOrdering, EventFilter, SubscriptionGroup, SubscriptionStart};
///
/// let group = SubscriptionGroup::new(EventFilter::new().aggregate_type("Order"))
///     .start(SubscriptionStart::End)
///     .ordering(DeliveryOrdering::PerAggregate)
///     .max_deliveries(3);
/// assert_eq!(
///     serde_json::to_string(&group).unwrap(),
///     r#"{"filter":{"aggregate_type":"Order"},"start":"end","max_deliveries":3,"ordering":"per_aggregate"}"#
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionGroup {
    #[serde(default)]
    pub filter: EventFilter,
    #[serde(default)]
    pub start: SubscriptionStart,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_deliveries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering: Option<DeliveryOrdering>,
}

impl SubscriptionGroup {
    pub fn new(filter: EventFilter) -> SubscriptionGroup {
        SubscriptionGroup {
            filter,
            ..SubscriptionGroup::default()
        }
    }

    pub fn start(mut self, start: SubscriptionStart) -> SubscriptionGroup {
        self.start = start;
        self
    }

    /// How long a consumer has to ack or nack a delivery before it is delivered again.
    pub fn ack_timeout_ms(mut self, ack_timeout_ms: u64) -> SubscriptionGroup {
        self.ack_timeout_ms = Some(ack_timeout_ms);
        self
    }

    /// Deliveries of one event before it is parked.
    pub fn max_deliveries(mut self, max_deliveries: u32) -> SubscriptionGroup {
        self.max_deliveries = Some(max_deliveries);
        self
    }

    pub fn ordering(mut self, ordering: DeliveryOrdering) -> SubscriptionGroup {
        self.ordering = Some(ordering);
        self
    }
}

/// `GET /v1/subscriptions/{group}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionGroupStatus {
    /// Every position up to it is acked, parked or passed over by the filter.
    pub checkpoint: u64,
    /// Events leased to consumers now.
    #[serde(default, deserialize_with = "count_or_len")]
    pub in_flight: u64,
    /// Events parked (dead-lettered).
    #[serde(default, deserialize_with = "count_or_len")]
    pub parked: u64,
    /// `head position − checkpoint`.
    #[serde(default)]
    pub lag: u64,
    /// Every other field the server sent (the group's name, its definition, …).
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

impl SubscriptionGroupStatus {
    /// The group's name, when the server sent it (`group` or `name`).
    pub fn group(&self) -> Option<&str> {
        self.other
            .get("group")
            .or_else(|| self.other.get("name"))
            .and_then(Value::as_str)
    }
}

/// A number, or a list whose length is the number (the contract names these fields without
/// fixing which).
fn count_or_len<'de, D: Deserializer<'de>>(deserializer: D) -> std::result::Result<u64, D::Error> {
    match Value::deserialize(deserializer)? {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| de::Error::custom(format!("expected a count, got {n}"))),
        Value::Array(items) => Ok(items.len() as u64),
        Value::Null => Ok(0),
        other => Err(de::Error::custom(format!("expected a count, got {other}"))),
    }
}

#[derive(Debug, Deserialize)]
struct GroupList {
    subscriptions: Vec<SubscriptionGroupStatus>,
}

/// The body of `POST /v1/subscriptions/{group}/poll`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PollRequest {
    /// Who is polling; leases are per consumer.
    pub consumer: String,
    /// At most this many events (the server's default when unset).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
    /// How long the server waits for an event when none is ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
}

impl PollRequest {
    pub fn new(consumer: impl Into<String>) -> PollRequest {
        PollRequest {
            consumer: consumer.into(),
            max: None,
            wait_ms: None,
        }
    }

    pub fn max(mut self, max: u32) -> PollRequest {
        self.max = Some(max);
        self
    }

    pub fn wait_ms(mut self, wait_ms: u64) -> PollRequest {
        self.wait_ms = Some(wait_ms);
        self
    }
}

/// One leased event: ack or nack it by its position before the ack timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub event: Event,
    /// 1 for the first delivery, 2 for the next, …; `0` when the server did not say (a
    /// parked event listed without it).
    pub attempt: u32,
}

impl<'de> Deserialize<'de> for Delivery {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        // The event and `attempt` share one object; the event keeps its raw JSON fields, which
        // `#[serde(flatten)]` cannot hand out, so the object is read twice from its text.
        #[derive(Deserialize)]
        struct Attempt {
            #[serde(default, alias = "deliveries")]
            attempt: u32,
        }
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        let event: Event = serde_json::from_str(raw.get()).map_err(de::Error::custom)?;
        let Attempt { attempt } = serde_json::from_str(raw.get()).map_err(de::Error::custom)?;
        Ok(Delivery { event, attempt })
    }
}

#[derive(Debug, Deserialize)]
struct PollAnswer {
    events: Vec<Delivery>,
}

/// One page of parked events and where the next starts (`next_after_position`; `None` at the
/// end). The contract names the endpoint without fixing its body: `{"events": [...]}` or
/// `{"parked": [...]}`, or the list itself (one page) are all read.
fn parse_parked_page(body: &[u8]) -> Result<(Vec<Delivery>, Option<u64>)> {
    #[derive(Debug, Deserialize)]
    struct Wrapped {
        #[serde(default)]
        events: Option<Vec<Delivery>>,
        #[serde(default)]
        parked: Option<Vec<Delivery>>,
        #[serde(default)]
        next_after_position: Option<u64>,
    }
    if body.trim_ascii_start().starts_with(b"[") {
        return Ok((decode(body, "the parked events")?, None));
    }
    let wrapped: Wrapped = decode(body, "the parked events")?;
    let events = wrapped.events.or(wrapped.parked).ok_or_else(|| Error::Decode {
        message: "the parked events answer has neither \"events\" nor \"parked\"".to_owned(),
        source: None,
    })?;
    Ok((events, wrapped.next_after_position))
}

/// A page of `GET /v1/subscriptions/{group}/parked`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedPage {
    pub events: Vec<Delivery>,
    /// Where the next page starts (`after_position`); `None` at the end.
    pub next_after_position: Option<u64>,
}

/// The answer to a replay of parked events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub struct ReplayOutcome {
    /// Events put back into delivery, when the server said.
    #[serde(default)]
    pub replayed: Option<u64>,
    /// Events still parked, when the server said.
    #[serde(default)]
    pub parked: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Positions<'a> {
    positions: &'a [u64],
    #[serde(skip_serializing_if = "Option::is_none")]
    park: Option<bool>,
}

impl Client {
    /// `PUT /v1/subscriptions/{group}`: creates a group (true) or replaces its definition
    /// (false).
    pub async fn put_subscription(&self, group: &str, definition: &SubscriptionGroup) -> Result<bool> {
        let url = self.endpoint(&["v1", "subscriptions", group], &Params::default())?;
        let (status, _) = self
            .send_about(
                Method::PUT,
                url,
                Some(to_body(definition)?),
                &Context::group(group),
            )
            .await?;
        Ok(status == StatusCode::CREATED)
    }

    /// `GET /v1/subscriptions/{group}`: its checkpoint, events in flight and parked, and lag.
    pub async fn get_subscription(&self, group: &str) -> Result<SubscriptionGroupStatus> {
        let url = self.endpoint(&["v1", "subscriptions", group], &Params::default())?;
        let (_, body) = self
            .send_about(Method::GET, url, None, &Context::group(group))
            .await?;
        decode(&body, "the subscription group")
    }

    /// `GET /v1/subscriptions`: every group.
    pub async fn list_subscriptions(&self) -> Result<Vec<SubscriptionGroupStatus>> {
        let url = self.endpoint(&["v1", "subscriptions"], &Params::default())?;
        let list: GroupList = self.get_json(url).await?;
        Ok(list.subscriptions)
    }

    /// `DELETE /v1/subscriptions/{group}`.
    pub async fn delete_subscription(&self, group: &str) -> Result<()> {
        let url = self.endpoint(&["v1", "subscriptions", group], &Params::default())?;
        self.send_about(Method::DELETE, url, None, &Context::group(group))
            .await?;
        Ok(())
    }

    /// `POST /v1/subscriptions/{group}/poll`: events leased to `request.consumer` until acked,
    /// nacked or timed out. Empty when nothing arrived within `wait_ms`.
    ///
    /// A poll is not retried after a lost answer: the events it leased come back after the
    /// ack timeout, so retrying would only make that consumer wait for them.
    pub async fn poll(&self, group: &str, request: &PollRequest) -> Result<Vec<Delivery>> {
        let url = self.endpoint(&["v1", "subscriptions", group, "poll"], &Params::default())?;
        let (_, body) = self
            .send_no_retry(Method::POST, url, Some(to_body(request)?), &Context::group(group))
            .await?;
        let answer: PollAnswer = decode(&body, "the poll answer")?;
        Ok(answer.events)
    }

    /// `POST /v1/subscriptions/{group}/ack`: these deliveries are handled; durable before the
    /// answer, so they are never delivered again. Repeating an ack is harmless.
    pub async fn ack(&self, group: &str, positions: &[u64]) -> Result<()> {
        let url = self.endpoint(&["v1", "subscriptions", group, "ack"], &Params::default())?;
        let body = Positions {
            positions,
            park: None,
        };
        self.send_about(Method::POST, url, Some(to_body(&body)?), &Context::group(group))
            .await?;
        Ok(())
    }

    /// `POST /v1/subscriptions/{group}/nack`: these deliveries failed: deliver them again
    /// (`park` false), or park them now (`park` true).
    pub async fn nack(&self, group: &str, positions: &[u64], park: bool) -> Result<()> {
        let url = self.endpoint(&["v1", "subscriptions", group, "nack"], &Params::default())?;
        let body = Positions {
            positions,
            park: Some(park),
        };
        self.send_about(Method::POST, url, Some(to_body(&body)?), &Context::group(group))
            .await?;
        Ok(())
    }

    /// `GET /v1/subscriptions/{group}/parked`: one page of parked (dead-lettered) events by
    /// position, after `after_position` (from the first when `None`), of `limit` events or
    /// the server's default.
    pub async fn parked_page(
        &self,
        group: &str,
        after_position: Option<u64>,
        limit: Option<u32>,
    ) -> Result<ParkedPage> {
        let mut params = Params::default();
        params.push_opt("after_position", after_position);
        params.push_opt("limit", limit);
        let url = self.endpoint(&["v1", "subscriptions", group, "parked"], &params)?;
        let (_, body) = self
            .send_about(Method::GET, url, None, &Context::group(group))
            .await?;
        let (events, next_after_position) = parse_parked_page(&body)?;
        Ok(ParkedPage {
            events,
            next_after_position,
        })
    }

    /// The parked events after `after_position`, by position, page after page (pages of
    /// `page_limit` events, or the server's default), one page held at a time.
    pub fn parked_stream(
        &self,
        group: &str,
        after_position: Option<u64>,
        page_limit: Option<u32>,
    ) -> impl Stream<Item = Result<Delivery>> + Send + 'static {
        let client = self.clone();
        let group = group.to_owned();
        let pages = stream::try_unfold(Some(after_position), move |next| {
            let client = client.clone();
            let group = group.clone();
            async move {
                let Some(after) = next else { return Ok(None) };
                let page = client.parked_page(&group, after, page_limit).await?;
                let next = match page.next_after_position {
                    // A next page must move on, or paging would never end.
                    Some(next) if Some(next) > after => Some(Some(next)),
                    _ => None,
                };
                Ok(Some((page.events, next)))
            }
        });
        pages
            .map_ok(|events| stream::iter(events.into_iter().map(Ok)))
            .try_flatten()
    }

    /// Every parked (dead-lettered) event of the group, page after page, by position.
    pub async fn parked(&self, group: &str) -> Result<Vec<Delivery>> {
        self.parked_stream(group, None, None).try_collect().await
    }

    /// `POST /v1/subscriptions/{group}/parked/replay`: delivers the parked events again.
    pub async fn replay_parked(&self, group: &str) -> Result<ReplayOutcome> {
        let url = self.endpoint(
            &["v1", "subscriptions", group, "parked", "replay"],
            &Params::default(),
        )?;
        let (_, body) = self
            .send_about(Method::POST, url, None, &Context::group(group))
            .await?;
        // The contract does not fix the body; an empty or other one is an outcome unknown.
        Ok(serde_json::from_slice(&body).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const EVENT: &str = r#"{"event_id":"0192f3c4-5e6a-7b8c-9d0e-1f2a3b4c5d6e","position":42,"aggregate_id":"order:1","aggregate_type":"Order","version":1,"event_type":"OrderCreated","event_version":1,"event_data":{"z":1,"a":2},"created_at":"2024-01-15T10:00:00.000000Z","recorded_at":"2026-11-27T18:00:00.123456Z","created_by":null,"metadata":null"#;

    #[test]
    fn deliveries_keep_the_event_and_its_attempt() {
        let body = format!(r#"{{"events":[{EVENT},"attempt":2}}]}}"#);
        let answer: PollAnswer = serde_json::from_str(&body).unwrap();
        let delivery = &answer.events[0];
        assert_eq!((delivery.event.position, delivery.attempt), (42, 2));
        assert_eq!(delivery.event.event_data.as_str(), r#"{"z":1,"a":2}"#);

        let list = format!(r#"{{"parked":[{EVENT}}}]}}"#);
        assert_eq!(parse_parked_page(list.as_bytes()).unwrap().0[0].attempt, 0);
        let bare = format!(r#"[{EVENT},"attempt":5}}]"#);
        assert_eq!(parse_parked_page(bare.as_bytes()).unwrap().0[0].attempt, 5);
        let paged = format!(r#"{{"events":[{EVENT},"attempt":3}}],"next_after_position":42}}"#);
        let (events, next) = parse_parked_page(paged.as_bytes()).unwrap();
        assert_eq!((events[0].attempt, next), (3, Some(42)));
        assert!(parse_parked_page(b"{}").is_err());
    }

    #[test]
    fn group_statuses_take_counts_or_lists() {
        let status: SubscriptionGroupStatus = serde_json::from_str(
            r#"{"group":"billing","checkpoint":9,"in_flight":[10,11],"parked":1,"lag":3,"ordering":"none"}"#,
        )
        .unwrap();
        assert_eq!((status.in_flight, status.parked, status.lag), (2, 1, 3));
        assert_eq!(status.group(), Some("billing"));
        assert_eq!(status.other.get("ordering"), Some(&Value::from("none")));
    }

    #[test]
    fn starts_parse_and_serialise() {
        assert_eq!("end".parse::<SubscriptionStart>(), Ok(SubscriptionStart::End));
        assert_eq!(
            "12".parse::<SubscriptionStart>(),
            Ok(SubscriptionStart::After(12))
        );
        assert!("soon".parse::<SubscriptionStart>().unwrap_err().contains("soon"));
        assert_eq!(serde_json::to_string(&SubscriptionStart::After(5)).unwrap(), "5");
        let group: SubscriptionGroup = serde_json::from_str(r#"{"start": 7}"#).unwrap();
        assert_eq!(group.start, SubscriptionStart::After(7));
    }
}
