//! The connection loop on real sockets: graceful shutdown and its bound, TLS.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use factstore_core::{
    AggregatePage, AggregateQuery, CommitOutcome, Event, EventPage, EventQuery, EventStore, Head, Limits,
    PreparedCommit, PutSnapshot, Snapshot, SnapshotInfo, SnapshotStored, StoreError,
};
use factstore_server::{Drain, ServeOptions, app};
use factstore_testkit::model::ModelStore;
use factstore_testkit::wait::{until, within};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore, oneshot};
use tokio::task::JoinHandle;
use uuid::Uuid;

/// A store whose commits wait until released: requests that stay in flight on demand.
#[derive(Debug)]
struct Gated {
    inner: ModelStore,
    entered: Notify,
    release: Semaphore,
}

impl Gated {
    fn new() -> Arc<Gated> {
        Arc::new(Gated {
            inner: ModelStore::new(),
            entered: Notify::new(),
            release: Semaphore::new(0),
        })
    }
}

#[async_trait]
impl EventStore for Gated {
    fn limits(&self) -> &Limits {
        self.inner.limits()
    }

    async fn commit_prepared(&self, commit: PreparedCommit) -> Result<CommitOutcome, StoreError> {
        self.entered.notify_one();
        let permit = self.release.acquire().await.unwrap();
        permit.forget();
        self.inner.commit_prepared(commit).await
    }

    async fn read_aggregate(&self, query: AggregateQuery) -> Result<AggregatePage, StoreError> {
        self.inner.read_aggregate(query).await
    }

    async fn read_events(&self, query: EventQuery) -> Result<EventPage, StoreError> {
        self.inner.read_events(query).await
    }

    async fn get_event(&self, event_id: Uuid) -> Result<Event, StoreError> {
        self.inner.get_event(event_id).await
    }

    async fn head(&self) -> Result<Head, StoreError> {
        self.inner.head().await
    }

    async fn put_snapshot(&self, put: PutSnapshot) -> Result<SnapshotStored, StoreError> {
        self.inner.put_snapshot(put).await
    }

    async fn latest_snapshot(&self, aggregate_id: &str, max: Option<u64>) -> Result<Snapshot, StoreError> {
        self.inner.latest_snapshot(aggregate_id, max).await
    }

    async fn list_snapshots(&self, aggregate_id: &str) -> Result<Vec<SnapshotInfo>, StoreError> {
        self.inner.list_snapshots(aggregate_id).await
    }

    fn watch_head(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.watch_head()
    }
}

struct Running {
    address: SocketAddr,
    stop: oneshot::Sender<()>,
    server: JoinHandle<std::io::Result<Drain>>,
}

async fn start(store: Arc<dyn EventStore>, options: ServeOptions) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(factstore_server::serve_with(
        listener,
        app(store),
        options,
        async move {
            let _ = stopped.await;
        },
    ));
    Running {
        address,
        stop,
        server,
    }
}

const APPEND: &str = r#"{"events":[{"aggregate_type":"A","event_type":"E","event_data":{}}]}"#;

fn append_request() -> String {
    format!(
        "POST /v1/aggregates/a/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{APPEND}",
        APPEND.len()
    )
}

/// Reads from `stream` until the peer closes, within 10 s.
async fn read_to_close(stream: &mut (impl AsyncRead + Unpin)) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
        .await
        .expect("the peer closed in time")
        .ok();
    String::from_utf8_lossy(&out).into_owned()
}

/// Waits until connecting to `address` is refused.
async fn wait_refused(address: SocketAddr) {
    until(
        "connections to be refused after shutdown",
        Duration::from_secs(5),
        || async { TcpStream::connect(address).await.is_err() },
    )
    .await;
}

#[tokio::test]
async fn shutdown_answers_requests_in_flight_and_refuses_new_connections() {
    let store = Gated::new();
    let running = start(store.clone(), ServeOptions::default()).await;
    let mut client = TcpStream::connect(running.address).await.unwrap();
    client.write_all(append_request().as_bytes()).await.unwrap();
    within(
        "the append to reach the store",
        Duration::from_secs(10),
        store.entered.notified(),
    )
    .await;

    running.stop.send(()).unwrap();
    wait_refused(running.address).await;
    assert!(
        !running.server.is_finished(),
        "the drain waits for the append in flight"
    );

    store.release.add_permits(1);
    let response = read_to_close(&mut client).await;
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    assert!(response.contains(r#""position":1"#), "{response}");
    let drained = tokio::time::timeout(Duration::from_secs(5), running.server)
        .await
        .expect("serve returned")
        .unwrap()
        .unwrap();
    assert_eq!(drained, Drain::Complete);
    assert_eq!(store.inner.head().await.unwrap().position, 1);
}

#[tokio::test]
async fn a_stuck_request_cannot_hold_the_drain_past_its_bound() {
    let store = Gated::new();
    let options = ServeOptions {
        drain_timeout: Duration::from_millis(300),
        ..ServeOptions::default()
    };
    let running = start(store.clone(), options).await;
    let mut client = TcpStream::connect(running.address).await.unwrap();
    client.write_all(append_request().as_bytes()).await.unwrap();
    within(
        "the append to reach the store",
        Duration::from_secs(10),
        store.entered.notified(),
    )
    .await;
    let stopping = Instant::now();
    running.stop.send(()).unwrap();
    let drained = tokio::time::timeout(Duration::from_secs(5), running.server)
        .await
        .expect("serve returned despite the stuck request")
        .unwrap()
        .unwrap();
    assert_eq!(drained, Drain::TimedOut { dropped: 1 });
    assert!(stopping.elapsed() >= Duration::from_millis(300));
    // The connection was dropped without an answer: the append was never acknowledged.
    assert_eq!(read_to_close(&mut client).await, "");
}

#[tokio::test]
async fn idle_connections_close_at_shutdown_and_half_sent_requests_are_answered() {
    let running = start(Arc::new(ModelStore::new()), ServeOptions::default()).await;
    let mut idle = TcpStream::connect(running.address).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buffer = [0u8; 1024];
    let n = idle.read(&mut buffer).await.unwrap();
    assert!(String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 200"));
    // A request whose head is half sent when shutdown begins is in flight: it is answered.
    let mut half = TcpStream::connect(running.address).await.unwrap();
    half.write_all(b"GET /health HTTP/1.1\r\n").await.unwrap();
    // The server takes connections in the order they were made and reads each as it takes
    // it: once a connection made after this one is answered, the half-sent head was read.
    let mut later = TcpStream::connect(running.address).await.unwrap();
    let answer = exchange(
        &mut later,
        "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let stopping = Instant::now();
    running.stop.send(()).unwrap();
    assert_eq!(
        read_to_close(&mut idle).await,
        "",
        "the idle connection was closed"
    );
    assert!(
        stopping.elapsed() < Duration::from_secs(2),
        "{:?}",
        stopping.elapsed()
    );
    assert!(!running.server.is_finished());
    half.write_all(b"Host: x\r\n\r\n").await.unwrap();
    let response = read_to_close(&mut half).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let drained = tokio::time::timeout(Duration::from_secs(5), running.server)
        .await
        .expect("serve returned")
        .unwrap()
        .unwrap();
    assert_eq!(drained, Drain::Complete);
}

/// A self-signed certificate for localhost: (certificate PEM, key PEM, certificate DER).
fn self_signed() -> (String, String, rustls_pki_types::CertificateDer<'static>) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    (
        certified.cert.pem(),
        certified.signing_key.serialize_pem(),
        certified.cert.der().clone(),
    )
}

async fn tls_connect(
    address: SocketAddr,
    trusted: rustls_pki_types::CertificateDer<'static>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(address).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await
}

async fn exchange(stream: &mut (impl AsyncRead + AsyncWrite + Unpin), request: &str) -> String {
    stream.write_all(request.as_bytes()).await.unwrap();
    read_to_close(stream).await
}

#[tokio::test]
async fn https_serves_the_api_and_plain_http_gets_no_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_pem, key_pem, cert_der) = self_signed();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, cert_pem).unwrap();
    std::fs::write(&key, key_pem).unwrap();
    let options = ServeOptions {
        tls: Some(factstore_server::tls::load(&cert, &key).unwrap()),
        ..ServeOptions::default()
    };
    let running = start(Arc::new(ModelStore::new()), options).await;

    let mut tls = tls_connect(running.address, cert_der.clone()).await.unwrap();
    let append = append_request().replace("HTTP/1.1\r\n", "HTTP/1.1\r\nConnection: close\r\n");
    let response = exchange(&mut tls, &append).await;
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    let mut tls = tls_connect(running.address, cert_der.clone()).await.unwrap();
    let response = exchange(
        &mut tls,
        "GET /v1/head HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(response.contains(r#""position":1"#), "{response}");

    let mut plain = TcpStream::connect(running.address).await.unwrap();
    let response = exchange(
        &mut plain,
        "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(!response.contains("HTTP/1.1 200"), "{response}");
    // A client that does not trust the certificate fails its handshake.
    let (_, _, other) = self_signed();
    assert!(tls_connect(running.address, other).await.is_err());

    // Shutdown works over TLS too, and the failed handshakes did not break the server.
    let mut tls = tls_connect(running.address, cert_der).await.unwrap();
    let response = exchange(
        &mut tls,
        "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    running.stop.send(()).unwrap();
    let drained = tokio::time::timeout(Duration::from_secs(5), running.server)
        .await
        .expect("serve returned")
        .unwrap()
        .unwrap();
    assert_eq!(drained, Drain::Complete);
}

#[test]
fn tls_files_are_checked_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_pem, key_pem, _) = self_signed();
    let (_, other_key_pem, _) = self_signed();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let cert = write("cert.pem", &cert_pem);
    let key = write("key.pem", &key_pem);
    let other_key = write("other-key.pem", &other_key_pem);
    let garbage = write("garbage.pem", "not a PEM file at all\n");
    let missing = dir.path().join("missing.pem");
    assert!(factstore_server::tls::load(&cert, &key).is_ok());
    let error = |cert: &std::path::Path, key: &std::path::Path| {
        factstore_server::tls::load(cert, key).unwrap_err().to_string()
    };
    let message = error(&missing, &key);
    assert!(
        message.contains("certificate file") && message.contains("missing.pem"),
        "{message}"
    );
    let message = error(&cert, &missing);
    assert!(
        message.contains("private key file") && message.contains("missing.pem"),
        "{message}"
    );
    let message = error(&garbage, &key);
    assert!(
        message.contains("no PEM certificate") && message.contains("garbage.pem"),
        "{message}"
    );
    let message = error(&cert, &garbage);
    assert!(
        message.contains("no usable PEM private key") && message.contains("garbage.pem"),
        "{message}"
    );
    // The certificate given as the key, and a key that is not the certificate's.
    let message = error(&cert, &cert);
    assert!(message.contains("private key"), "{message}");
    let message = error(&cert, &other_key);
    assert!(message.contains("cannot use the TLS certificate"), "{message}");
}
