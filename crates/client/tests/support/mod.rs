//! Test support: a real factstore server in-process on a free port, and a small TCP proxy that
//! misbehaves on purpose (drops an answer, answers for the server, stalls, cuts streams).
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use factstore_engine::store::EmbeddedStore;
use factstore_engine::{Engine, EngineOptions};
use factstore_server::{AppState, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A factstore server over the embedded engine, served by `factstore_server::serve`.
pub struct Server {
    pub addr: SocketAddr,
    pub url: String,
    engine: Arc<Engine>,
    state: AppState,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// A server on a free port over the data folder `dir`.
    pub async fn start(dir: &Path) -> Server {
        Server::start_on(dir, "127.0.0.1:0".parse().unwrap()).await
    }

    /// A server on `addr` (to restart one where it was) over the data folder `dir`.
    pub async fn start_on(dir: &Path, addr: SocketAddr) -> Server {
        let engine = Arc::new(Engine::open(dir, EngineOptions::default()).expect("open the engine"));
        let store = Arc::new(EmbeddedStore::new(engine.clone()));
        let mut config = ServerConfig::default();
        // Short timers keep the tests quick; the protocol is the same.
        config.subscribe.checkpoint = Duration::from_millis(100);
        config.subscribe.keep_alive = Duration::from_millis(500);
        let state = AppState::new(store, config);
        let app = factstore_server::app_with_state(state.clone());
        let listener = TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let token = state.shutdown.clone();
        let task = tokio::spawn(factstore_server::serve(listener, app, async move {
            token.cancelled().await
        }));
        Server {
            addr,
            url: format!("http://{addr}"),
            engine,
            state,
            task,
        }
    }

    /// A graceful stop (subscribers are told `shutdown`), then the engine is closed.
    pub async fn stop(self) {
        self.state.shutdown.cancel();
        self.task.await.unwrap().unwrap();
        let engine = self.engine;
        tokio::task::spawn_blocking(move || engine.close()).await.unwrap();
    }
}

/// What the proxy does with one request (one connection: the proxy asks the server to close
/// after each answer, so the client never reuses a connection through it).
#[derive(Debug, Clone)]
pub enum Fault {
    /// Pass the request on and stream the answer back.
    Forward,
    /// Pass the request on, wait until the server starts answering, then close the client's
    /// connection without a byte of the answer.
    DropAnswer,
    /// Answer with these bytes instead of the server, then close.
    Answer(Vec<u8>),
    /// Read the request and never answer.
    Stall,
}

/// A proxy in front of `upstream`; `plan(n)` decides the fate of the `n`-th request (0-based).
pub struct Proxy {
    pub url: String,
    requests: Arc<Mutex<Vec<String>>>,
    streams: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr, plan: impl Fn(usize) -> Fault + Send + Sync + 'static) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let streams: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let plan = Arc::new(plan);
        let accept = {
            let requests = requests.clone();
            let streams = streams.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        return;
                    };
                    let requests = requests.clone();
                    let plan = plan.clone();
                    let task = tokio::spawn(async move {
                        let _ = handle(client, upstream, requests, plan).await;
                    });
                    streams.lock().unwrap().push(task);
                }
            })
        };
        Proxy {
            url,
            requests,
            streams,
            accept,
        }
    }

    /// The heads (request line and headers) of the requests seen so far.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// Cuts every connection in progress, as a network failure would (no shutdown message).
    pub fn cut(&self) {
        for task in self.streams.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// Reads one request: its head, and its body by `Content-Length`.
async fn read_request(client: &mut TcpStream) -> std::io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok((head, buf))
}

async fn handle(
    mut client: TcpStream,
    upstream: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
    plan: Arc<impl Fn(usize) -> Fault + Send + Sync + 'static>,
) -> std::io::Result<()> {
    let (head, request) = read_request(&mut client).await?;
    let index = {
        let mut requests = requests.lock().unwrap();
        requests.push(head);
        requests.len() - 1
    };
    match plan(index) {
        Fault::Answer(bytes) => {
            client.write_all(&bytes).await?;
            client.shutdown().await?;
        }
        Fault::Stall => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        fault @ (Fault::Forward | Fault::DropAnswer) => {
            let mut server = TcpStream::connect(upstream).await?;
            // One request per connection: the server closes after its answer, and says so.
            let text = String::from_utf8_lossy(&request);
            let first_line_end = text.find("\r\n").unwrap_or(0) + 2;
            let mut forwarded = request[..first_line_end].to_vec();
            forwarded.extend_from_slice(b"Connection: close\r\n");
            forwarded.extend_from_slice(&request[first_line_end..]);
            server.write_all(&forwarded).await?;
            if matches!(fault, Fault::DropAnswer) {
                // The answer is sent only once the write is durable: its first byte means
                // the append is committed.
                let mut byte = [0u8; 1];
                server.read_exact(&mut byte).await?;
                drop(client);
                return Ok(());
            }
            let (mut from_server, _to_server) = server.split();
            tokio::io::copy(&mut from_server, &mut client).await?;
            client.shutdown().await?;
        }
    }
    Ok(())
}

/// An HTTP/1.1 answer with a JSON body.
pub fn json_answer(status: u16, reason: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A free port with nothing listening on it.
pub fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}
