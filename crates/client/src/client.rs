//! [`Client`] and [`ClientBuilder`]: the requests, their retries, and the paging helpers.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{self, Stream, TryStreamExt};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::append::{AppendOutcome, AppendRequest, CommitOutcome, CommitRequest};
use crate::error::{Context, Error, Result, parse_retry_after};
use crate::event::Event;
use crate::query::{AggregatePage, AggregateQuery, EventPage, EventQuery, Head, Health, Params};
use crate::retry::{ReconnectPolicy, RetryPolicy};
use crate::snapshot::{
    LoadedAggregate, PutSnapshotRequest, Snapshot, SnapshotInfo, SnapshotList, SnapshotPut,
};
use crate::subscribe::{SubscribeOptions, Subscription};

/// The address `factstore serve` listens on by default.
pub const DEFAULT_URL: &str = "http://127.0.0.1:6180";

/// A client of one factstore server. Cheap to clone (one reference count); clones share the
/// connection pool.
///
/// ```no_run
/// # async fn example() -> Result<(), factstore_client::Error> {
/// use factstore_client::{AppendRequest, Client, ExpectedVersion, NewEvent};
/// use serde_json::json;
///
/// let client = Client::new("http://127.0.0.1:6180")?;
/// let outcome = client
///     .append(
///         "account:ACC-001",
///         AppendRequest::new([NewEvent::new("Account", "MoneyDeposited", json!({"amount": 500}))])
///             .expect(ExpectedVersion::Exact(2)),
///     )
///     .await?;
/// println!("now at version {} (position {})", outcome.version, outcome.position);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) http: reqwest::Client,
    /// Always ends without a `/` segment of its own; paths are appended segment by segment.
    pub(crate) base: Url,
    pub(crate) token: Option<HeaderValue>,
    /// The whole of one attempt of an ordinary request (not a subscription).
    pub(crate) timeout: Duration,
    pub(crate) retry: RetryPolicy,
    pub(crate) reconnect: ReconnectPolicy,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.inner.base.as_str())
            .field("token", &self.inner.token.as_ref().map(|_| "<set>"))
            .field("timeout", &self.inner.timeout)
            .field("retry", &self.inner.retry)
            .field("reconnect", &self.inner.reconnect)
            .finish()
    }
}

/// Settings of a [`Client`].
///
/// ```no_run
/// # fn example() -> Result<(), factstore_client::Error> {
/// use std::time::Duration;
/// use factstore_client::{Client, RetryPolicy};
///
/// let ca = std::fs::read("ca.pem").expect("read ca.pem");
/// let client = Client::builder("https://events.internal:6180")
///     .token("a-long-random-secret")
///     .timeout(Duration::from_secs(10))
///     .retry(RetryPolicy::default().max_attempts(5))
///     .add_root_certificate_pem(&ca)
///     .build()?;
/// # let _ = client;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ClientBuilder {
    url: String,
    token: Option<String>,
    timeout: Duration,
    connect_timeout: Duration,
    read_timeout: Duration,
    retry: RetryPolicy,
    reconnect: ReconnectPolicy,
    root_certificates_pem: Vec<Vec<u8>>,
    user_agent: String,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("retry", &self.retry)
            .field("reconnect", &self.reconnect)
            .field("root_certificates", &self.root_certificates_pem.len())
            .finish()
    }
}

impl ClientBuilder {
    fn new(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            url: url.into(),
            token: None,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(45),
            retry: RetryPolicy::default(),
            reconnect: ReconnectPolicy::default(),
            root_certificates_pem: Vec::new(),
            user_agent: concat!("factstore-client/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }

    /// Sends `Authorization: Bearer <token>` with every request.
    pub fn token(mut self, token: impl Into<String>) -> ClientBuilder {
        self.token = Some(token.into());
        self
    }

    /// The longest one attempt of an ordinary request may take, answer included (default
    /// 30 s). Subscriptions are endless and use [`ClientBuilder::read_timeout`] instead.
    pub fn timeout(mut self, timeout: Duration) -> ClientBuilder {
        self.timeout = timeout;
        self
    }

    /// The longest a connection may take to open (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> ClientBuilder {
        self.connect_timeout = timeout;
        self
    }

    /// The longest silence tolerated while waiting for bytes from the server (default 45 s).
    /// A subscription receives a keep-alive at least every 15 s, so a silence this long means
    /// the connection is dead, and the subscription reconnects.
    pub fn read_timeout(mut self, timeout: Duration) -> ClientBuilder {
        self.read_timeout = timeout;
        self
    }

    /// How requests are retried after a transport failure or a 502/503/504.
    pub fn retry(mut self, retry: RetryPolicy) -> ClientBuilder {
        self.retry = retry;
        self
    }

    /// How a subscription reconnects after losing its connection.
    pub fn reconnect(mut self, reconnect: ReconnectPolicy) -> ClientBuilder {
        self.reconnect = reconnect;
        self
    }

    /// Trusts the certificate authorities in `pem` (one or more PEM certificates) besides
    /// the system's, e.g. for a server with a self-signed certificate. An invalid PEM is
    /// reported by [`ClientBuilder::build`].
    pub fn add_root_certificate_pem(mut self, pem: &[u8]) -> ClientBuilder {
        self.root_certificates_pem.push(pem.to_vec());
        self
    }

    /// The `User-Agent` header (default `factstore-client/<version>`).
    pub fn user_agent(mut self, user_agent: impl Into<String>) -> ClientBuilder {
        self.user_agent = user_agent.into();
        self
    }

    pub fn build(self) -> Result<Client> {
        let mut base =
            Url::parse(&self.url).map_err(|e| Error::Config(format!("'{}' is not a URL: {e}", self.url)))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(Error::Config(format!(
                "'{}' is not an http:// or https:// URL",
                self.url
            )));
        }
        if base.cannot_be_a_base() || base.host().is_none() {
            return Err(Error::Config(format!("'{}' has no host", self.url)));
        }
        base.set_query(None);
        base.set_fragment(None);
        // A base such as `https://host/factstore/` keeps its path as a prefix.
        if let Ok(mut segments) = base.path_segments_mut() {
            segments.pop_if_empty();
        }
        let token = match self.token {
            Some(token) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                    Error::Config("the token contains characters not allowed in a header".to_owned())
                })?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let mut http = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .read_timeout(self.read_timeout)
            .tcp_nodelay(true)
            .user_agent(self.user_agent);
        let mut certificates = Vec::new();
        for pem in &self.root_certificates_pem {
            let bundle = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| Error::Config(format!("invalid PEM certificate: {e}")))?;
            if bundle.is_empty() {
                return Err(Error::Config("no certificate in the PEM given".to_owned()));
            }
            certificates.extend(bundle);
        }
        if !certificates.is_empty() {
            http = http.tls_certs_merge(certificates);
        }
        let http = http
            .build()
            .map_err(|e| Error::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                base,
                token,
                timeout: self.timeout,
                retry: self.retry,
                reconnect: self.reconnect,
            }),
        })
    }
}

impl Client {
    /// A client of the server at `url` (such as `http://127.0.0.1:6180`) with the default
    /// settings: no token, 30 s per attempt, up to 4 attempts.
    pub fn new(url: impl Into<String>) -> Result<Client> {
        ClientBuilder::new(url).build()
    }

    /// A builder for a client of the server at `url`.
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(url)
    }

    /// The server's base URL.
    pub fn url(&self) -> &Url {
        &self.inner.base
    }

    /// `GET /health`: whether the server is up (needs no token).
    pub async fn health(&self) -> Result<Health> {
        let url = self.endpoint(&["health"], &Params::default())?;
        self.get_json(url).await
    }

    /// `GET /v1/head`: the last committed position.
    pub async fn head(&self) -> Result<Head> {
        let url = self.endpoint(&["v1", "head"], &Params::default())?;
        self.get_json(url).await
    }

    /// `POST /v1/aggregates/{aggregate_id}/events`: appends events to one aggregate,
    /// atomically.
    ///
    /// Every event without an `event_id` gets a UUIDv7 before the first attempt, so when an
    /// attempt gets no answer (or a 502/503/504) and the client sends the request again, the
    /// server recognises the repeat: it answers with the original outcome
    /// ([`AppendOutcome::replayed`]) and writes nothing twice, even if the aggregate has moved
    /// on since. A conflict (`Error::WrongExpectedVersion`, …) is never retried.
    ///
    /// ```no_run
    /// # async fn example(client: factstore_client::Client) -> Result<(), factstore_client::Error> {
    /// use factstore_client::{AppendRequest, Error, ExpectedVersion, NewEvent};
    /// use serde_json::json;
    ///
    /// let request = AppendRequest::new([NewEvent::new("Account", "AccountOpened", json!({"owner": "Ada"}))])
    ///     .expect(ExpectedVersion::Exact(0)); // must not exist yet
    /// match client.append("account:ACC-002", request).await {
    ///     Ok(outcome) => println!("opened at position {}", outcome.position),
    ///     Err(Error::WrongExpectedVersion { current_version, .. }) => {
    ///         println!("already open, at version {current_version}")
    ///     }
    ///     Err(other) => return Err(other),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn append(&self, aggregate_id: &str, mut request: AppendRequest) -> Result<AppendOutcome> {
        for event in &mut request.events {
            event.event_id.get_or_insert_with(Uuid::now_v7);
        }
        let url = self.endpoint(&["v1", "aggregates", aggregate_id, "events"], &Params::default())?;
        let (status, body) = self.send(Method::POST, url, Some(to_body(&request)?)).await?;
        let mut outcome: AppendOutcome = decode(&body, "the append outcome")?;
        outcome.replayed = status == StatusCode::OK;
        Ok(outcome)
    }

    /// `POST /v1/events`: one atomic commit across aggregates, optionally under a condition.
    /// Retried as safely as [`Client::append`].
    ///
    /// ```no_run
    /// # async fn example(client: factstore_client::Client) -> Result<(), factstore_client::Error> {
    /// use factstore_client::{AggregateAppend, CommitRequest, EventFilter, ExpectedVersion, NewEvent};
    /// use serde_json::json;
    ///
    /// let commit = CommitRequest::new([
    ///     AggregateAppend::new("order:ORD-1", ExpectedVersion::Exact(0),
    ///         [NewEvent::new("Order", "OrderPlaced", json!({"sku": "SKU-123"}))]),
    ///     AggregateAppend::new("inventory:SKU-123", ExpectedVersion::Exact(7),
    ///         [NewEvent::new("Inventory", "StockReserved", json!({"order": "ORD-1"}))]),
    /// ])
    /// .condition(EventFilter::new().event_type("StockRecalled"), 1200);
    /// let outcome = client.commit(commit).await?;
    /// println!("committed up to position {}", outcome.position);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # A consistency boundary that is not one aggregate
    /// A seat may be reserved once, whichever booking reserves it. Read the seat's
    /// reservations up to a known position, decide, and commit under a condition that no
    /// reservation of the seat appeared after that position. The server checks the condition
    /// inside the commit, so two clients can never both win; the loser gets
    /// [`Error::ConditionFailed`](crate::Error::ConditionFailed) and nothing of its commit is
    /// written.
    ///
    /// ```no_run
    /// # async fn example(client: factstore_client::Client) -> Result<(), factstore_client::Error> {
    /// use factstore_client::{AggregateAppend, CommitRequest, Error, EventFilter, EventQuery, ExpectedVersion, NewEvent};
    /// use serde_json::json;
    ///
    /// let seat = "A12";
    /// // The trailing ':' keeps seat A1 from matching the reservations of A12.
    /// let reservations = EventFilter::new()
    ///     .event_type("SeatReserved")
    ///     .aggregate_id_prefix(format!("reservation:{seat}:"));
    ///
    /// // What the store knew up to `known`: is the seat free?
    /// let known = client.head().await?.position;
    /// let page = client
    ///     .read_events(&EventQuery::new().filter(reservations.clone()).to_position(known).limit(1))
    ///     .await?;
    /// if !page.events.is_empty() {
    ///     println!("{seat} is taken");
    ///     return Ok(());
    /// }
    ///
    /// let booking = "booking:B-881";
    /// let commit = CommitRequest::new([
    ///     AggregateAppend::new(format!("reservation:{seat}:{booking}"), ExpectedVersion::Exact(0),
    ///         [NewEvent::new("Reservation", "SeatReserved", json!({"seat": seat, "booking": booking}))]),
    ///     AggregateAppend::new(booking, ExpectedVersion::Any,
    ///         [NewEvent::new("Booking", "SeatAssigned", json!({"seat": seat}))]),
    /// ])
    /// .condition(reservations, known);
    ///
    /// match client.commit(commit).await {
    ///     Ok(outcome) => println!("{seat} is yours (position {})", outcome.position),
    ///     // Another booking reserved the seat after `known`: read again and pick another.
    ///     Err(Error::ConditionFailed { conflicting_position, .. }) => {
    ///         println!("{seat} was taken at position {conflicting_position:?}");
    ///     }
    ///     Err(other) => return Err(other),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn commit(&self, mut request: CommitRequest) -> Result<CommitOutcome> {
        for event in request.events_mut() {
            event.event_id.get_or_insert_with(Uuid::now_v7);
        }
        let url = self.endpoint(&["v1", "events"], &Params::default())?;
        let (status, body) = self.send(Method::POST, url, Some(to_body(&request)?)).await?;
        let mut outcome: CommitOutcome = decode(&body, "the commit outcome")?;
        outcome.replayed = status == StatusCode::OK;
        Ok(outcome)
    }

    /// `GET /v1/aggregates/{aggregate_id}/events`: one page of an aggregate's events.
    /// [`Error::AggregateNotFound`] when it has none.
    ///
    /// ```no_run
    /// # async fn example(client: factstore_client::Client) -> Result<(), factstore_client::Error> {
    /// use factstore_client::AggregateQuery;
    ///
    /// let page = client.read_aggregate("account:ACC-001", &AggregateQuery::new().backward().limit(10)).await?;
    /// println!("{} is at version {}", page.aggregate_id, page.version);
    /// for event in &page.events {
    ///     println!("v{} {} {}", event.version, event.event_type, event.event_data);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn read_aggregate(&self, aggregate_id: &str, query: &AggregateQuery) -> Result<AggregatePage> {
        let url = self.endpoint(&["v1", "aggregates", aggregate_id, "events"], &query.params())?;
        self.get_json(url).await
    }

    /// Every event of an aggregate that `query` selects, page after page (each page of
    /// `query.limit` events, or the server's default). Ends with the last version that
    /// existed when its page was read.
    pub fn aggregate_stream(
        &self,
        aggregate_id: &str,
        query: AggregateQuery,
    ) -> impl Stream<Item = Result<Event>> + Send + 'static {
        let client = self.clone();
        let aggregate_id = aggregate_id.to_owned();
        let pages = stream::try_unfold(Some(query), move |next| {
            let client = client.clone();
            let aggregate_id = aggregate_id.clone();
            async move {
                let Some(query) = next else { return Ok(None) };
                let page = client.read_aggregate(&aggregate_id, &query).await?;
                let next = match page.next_from_version {
                    // A next page must move on, or paging would never end.
                    Some(from) if Some(from) != query.from_version => Some(AggregateQuery {
                        from_version: Some(from),
                        ..query
                    }),
                    _ => None,
                };
                Ok(Some((page.events, next)))
            }
        });
        pages
            .map_ok(|events| stream::iter(events.into_iter().map(Ok)))
            .try_flatten()
    }

    /// `GET /v1/events`: one page of all events in position order, filtered.
    ///
    /// ```no_run
    /// # async fn example(client: factstore_client::Client) -> Result<(), factstore_client::Error> {
    /// use factstore_client::{EventFilter, EventQuery};
    ///
    /// let mut query = EventQuery::new().filter(EventFilter::new().aggregate_type("Account")).limit(100);
    /// loop {
    ///     let page = client.read_events(&query).await?;
    ///     for event in &page.events {
    ///         println!("{} {} {}", event.position, event.aggregate_id, event.event_type);
    ///     }
    ///     if page.next_after_position >= page.head_position {
    ///         break;
    ///     }
    ///     query.after_position = page.next_after_position;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn read_events(&self, query: &EventQuery) -> Result<EventPage> {
        let url = self.endpoint(&["v1", "events"], &query.params())?;
        self.get_json(url).await
    }

    /// Every event `query` selects, page after page, in position order, up to the head (as
    /// each page finds it) or `query.to_position`.
    ///
    /// ```no_run
    /// # async fn example(client: factstore_client::Client) -> Result<(), factstore_client::Error> {
    /// use factstore_client::{EventFilter, EventQuery};
    /// use futures::TryStreamExt;
    ///
    /// let query = EventQuery::new().filter(EventFilter::new().event_type("MoneyDeposited"));
    /// let mut events = std::pin::pin!(client.events_stream(query));
    /// let mut total = 0i64;
    /// while let Some(event) = events.try_next().await? {
    ///     total += event.event_data.to_value()["amount"].as_i64().unwrap_or(0);
    /// }
    /// println!("deposited {total}");
    /// # Ok(())
    /// # }
    /// ```
    pub fn events_stream(&self, query: EventQuery) -> impl Stream<Item = Result<Event>> + Send + 'static {
        let client = self.clone();
        let pages = stream::try_unfold(Some(query), move |next| {
            let client = client.clone();
            async move {
                let Some(query) = next else { return Ok(None) };
                let page = client.read_events(&query).await?;
                let end = query
                    .to_position
                    .map_or(page.head_position, |to| to.min(page.head_position));
                let next = (page.next_after_position > query.after_position
                    && page.next_after_position < end)
                    .then_some(EventQuery {
                        after_position: page.next_after_position,
                        ..query
                    });
                Ok(Some((page.events, next)))
            }
        });
        pages
            .map_ok(|events| stream::iter(events.into_iter().map(Ok)))
            .try_flatten()
    }

    /// `GET /v1/events/{event_id}`: one event. [`Error::EventNotFound`] when there is none.
    pub async fn get_event(&self, event_id: Uuid) -> Result<Event> {
        let id = event_id.hyphenated().to_string();
        let url = self.endpoint(&["v1", "events", &id], &Params::default())?;
        self.get_json(url).await
    }

    /// `PUT /v1/aggregates/{aggregate_id}/snapshots`: stores the aggregate's state at a
    /// version it has ([`Error::InvalidSnapshot`] otherwise), replacing a snapshot at the same
    /// version ([`SnapshotPut::replaced`]). A put is safe to repeat, so it is retried like
    /// an append.
    pub async fn put_snapshot(&self, aggregate_id: &str, request: PutSnapshotRequest) -> Result<SnapshotPut> {
        let url = self.endpoint(
            &["v1", "aggregates", aggregate_id, "snapshots"],
            &Params::default(),
        )?;
        let (status, body) = self.send(Method::PUT, url, Some(to_body(&request)?)).await?;
        let mut put: SnapshotPut = decode(&body, "the snapshot put")?;
        put.replaced = status == StatusCode::OK;
        Ok(put)
    }

    /// `GET /v1/aggregates/{aggregate_id}/snapshots/latest`: the snapshot with the highest
    /// version, at or below `max_version` when given. [`Error::SnapshotNotFound`] when none.
    pub async fn latest_snapshot(&self, aggregate_id: &str, max_version: Option<u64>) -> Result<Snapshot> {
        let mut params = Params::default();
        params.push_opt("max_version", max_version);
        let url = self.endpoint(
            &["v1", "aggregates", aggregate_id, "snapshots", "latest"],
            &params,
        )?;
        self.get_json(url).await
    }

    /// `GET /v1/aggregates/{aggregate_id}/snapshots`: every snapshot, by increasing version,
    /// without states; empty when there are none.
    pub async fn list_snapshots(&self, aggregate_id: &str) -> Result<Vec<SnapshotInfo>> {
        let url = self.endpoint(
            &["v1", "aggregates", aggregate_id, "snapshots"],
            &Params::default(),
        )?;
        let list: SnapshotList = self.get_json(url).await?;
        Ok(list.snapshots)
    }

    /// `GET /v1/aggregates/{aggregate_id}/load`: the latest snapshot and every event after it,
    /// in one round trip. [`Error::AggregateNotFound`] for an aggregate without events.
    pub async fn load(&self, aggregate_id: &str) -> Result<LoadedAggregate> {
        let url = self.endpoint(&["v1", "aggregates", aggregate_id, "load"], &Params::default())?;
        self.get_json(url).await
    }

    /// `GET /v1/subscribe`: the events `options` selects, history first and then live, as a
    /// stream that survives dropped connections and server restarts.
    ///
    /// The first connection is made here, so a bad filter or a refused token is an error of
    /// this call. After that the stream resumes by itself, from the last position it saw,
    /// with no gap and no duplicate (see [`Subscription`]).
    ///
    /// ```no_run
    /// # async fn example(client: factstore_client::Client) -> Result<(), factstore_client::Error> {
    /// use factstore_client::{EventFilter, SubscribeOptions, SubscriptionMessage};
    /// use futures::TryStreamExt;
    ///
    /// let options = SubscribeOptions::new().filter(EventFilter::new().aggregate_type("Account"));
    /// let mut subscription = client.subscribe(options).await?;
    /// while let Some(message) = subscription.try_next().await? {
    ///     match message {
    ///         SubscriptionMessage::Event(event) => println!("{} {}", event.position, event.event_type),
    ///         SubscriptionMessage::CaughtUp { position } => println!("live from {position}"),
    ///         SubscriptionMessage::Checkpoint { .. } => {}
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn subscribe(&self, options: SubscribeOptions) -> Result<Subscription> {
        Subscription::open(self.clone(), options).await
    }

    /// The URL of `segments` under the base, each segment percent-encoded, with `params`.
    pub(crate) fn endpoint(&self, segments: &[&str], params: &Params) -> Result<Url> {
        let mut url = self.inner.base.clone();
        url.path_segments_mut()
            .map_err(|_| Error::Config(format!("'{}' cannot be a base URL", self.inner.base)))?
            .extend(segments);
        if !params.0.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(params.0.iter().map(|(k, v)| (*k, v.as_str())));
        }
        Ok(url)
    }

    /// A request with the client's headers.
    pub(crate) fn request(&self, method: Method, url: Url) -> reqwest::RequestBuilder {
        let mut request = self.inner.http.request(method, url);
        if let Some(token) = &self.inner.token {
            request = request.header(AUTHORIZATION, token.clone());
        }
        request
    }

    pub(crate) async fn get_json<T: DeserializeOwned>(&self, url: Url) -> Result<T> {
        let (_, body) = self.send(Method::GET, url, None).await?;
        decode(&body, "the response")
    }

    /// Sends a request, retrying what [`Error::is_retryable`] allows under the retry policy.
    /// Returns the status and body of a success.
    async fn send(&self, method: Method, url: Url, body: Option<Bytes>) -> Result<(StatusCode, Bytes)> {
        self.send_about(method, url, body, &Context::default()).await
    }

    /// [`Client::send`] for a request about `context` (a projection, a key, a group), which
    /// the not-found errors name.
    pub(crate) async fn send_about(
        &self,
        method: Method,
        url: Url,
        body: Option<Bytes>,
        context: &Context,
    ) -> Result<(StatusCode, Bytes)> {
        let policy = &self.inner.retry;
        let mut attempt = 1;
        loop {
            let error = match self.send_once(method.clone(), url.clone(), body.clone()).await {
                Ok((status, _, bytes)) if status.is_success() => return Ok((status, bytes)),
                Ok((status, retry_after, bytes)) => Error::from_answer(status, retry_after, &bytes, context),
                Err(error) => error,
            };
            if !error.is_retryable() || attempt >= policy.max_attempts {
                return Err(error);
            }
            let delay = policy.delay(attempt);
            tracing::debug!(%method, path = url.path(), attempt, ?delay, %error, "retrying");
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// One attempt only, for requests whose repeat would not help (a poll: what a lost answer
    /// leased comes back after the ack timeout anyway).
    pub(crate) async fn send_no_retry(
        &self,
        method: Method,
        url: Url,
        body: Option<Bytes>,
        context: &Context,
    ) -> Result<(StatusCode, Bytes)> {
        match self.send_once(method, url, body).await? {
            (status, _, bytes) if status.is_success() => Ok((status, bytes)),
            (status, retry_after, bytes) => Err(Error::from_answer(status, retry_after, &bytes, context)),
        }
    }

    async fn send_once(
        &self,
        method: Method,
        url: Url,
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Option<Duration>, Bytes)> {
        let mut request = self
            .request(method, url)
            .timeout(self.inner.timeout)
            .header(ACCEPT, "application/json");
        if let Some(body) = body {
            request = request.header(CONTENT_TYPE, "application/json").body(body);
        }
        let response = request.send().await.map_err(Error::Transport)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let bytes = response.bytes().await.map_err(Error::Transport)?;
        Ok((status, retry_after, bytes))
    }
}

pub(crate) fn to_body<T: Serialize>(value: &T) -> Result<Bytes> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| Error::Config(format!("the request cannot be serialised: {e}")))
}

pub(crate) fn decode<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(body)
        .map_err(|e| Error::decode(format!("{what} is not what the API describes: {e}"), e))
}
