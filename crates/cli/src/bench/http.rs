//! The HTTP client of the load generator: one HTTP/1.1 connection per worker, straight on hyper.
//!
//! The generator shares its CPU with the server it measures, so every microsecond it spends per
//! request is taken from the server. A pooled general-purpose client would cost a lock, a pool
//! lookup and usually a second task hop per request; here each worker owns exactly one
//! connection (`hyper::client::conn::http1`) over a `TcpStream` with `TCP_NODELAY`, and requests
//! are built from pre-parsed URIs and header values.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// The server under test: where to connect and the headers every request carries.
#[derive(Debug)]
pub struct Target {
    /// The base URL as the user gave it, for reports.
    pub url: String,
    addr: SocketAddr,
    host: HeaderValue,
    authorization: Option<HeaderValue>,
}

impl Target {
    /// Parses `http://host:port` and resolves the host once, so workers never look it up.
    pub async fn resolve(url: &str, token: Option<&str>) -> anyhow::Result<Target> {
        let uri: Uri = url.parse().with_context(|| format!("'{url}' is not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => {
                bail!("the bench speaks plain http only, not {other}: measure the server without TLS")
            }
            None => bail!("'{url}' has no scheme; write it as http://host:port"),
        }
        if uri.path() != "/" && !uri.path().is_empty() {
            bail!("'{url}' has a path; give the server's base address (http://host:port)");
        }
        let authority = uri.authority().context("the URL has no host")?;
        let port = authority.port_u16().unwrap_or(80);
        let addr = tokio::net::lookup_host((authority.host(), port))
            .await
            .with_context(|| format!("cannot resolve {}", authority.host()))?
            .next()
            .with_context(|| format!("{} resolves to no address", authority.host()))?;
        let host = HeaderValue::from_str(authority.as_str()).context("the host is not a valid header")?;
        let authorization = token
            .map(|token| HeaderValue::from_str(&format!("Bearer {token}")))
            .transpose()
            .context("the token is not a valid header value")?;
        Ok(Target {
            url: url.trim_end_matches('/').to_owned(),
            addr,
            host,
            authorization,
        })
    }

    /// A request with the host and authorization headers (and a JSON content type when there
    /// is a body). `uri` is origin-form: the path and query only.
    pub fn request(&self, method: Method, uri: Uri, body: Bytes) -> Request<Full<Bytes>> {
        let has_body = !body.is_empty();
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        headers.insert(HOST, self.host.clone());
        if has_body {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        if let Some(authorization) = &self.authorization {
            headers.insert(AUTHORIZATION, authorization.clone());
        }
        request
    }

    /// A GET of `path_and_query`.
    pub fn get(&self, path_and_query: &str) -> anyhow::Result<Request<Full<Bytes>>> {
        let uri = path_and_query
            .parse()
            .with_context(|| format!("'{path_and_query}' is not a valid request path"))?;
        Ok(self.request(Method::GET, uri, Bytes::new()))
    }

    /// A GET of a server-sent event stream.
    pub fn get_stream(&self, path_and_query: &str) -> anyhow::Result<Request<Full<Bytes>>> {
        let mut request = self.get(path_and_query)?;
        request
            .headers_mut()
            .insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
        Ok(request)
    }
}

/// One open connection. Its driver runs as its own task; dropping the connection ends it, so
/// an abandoned stream (a subscription read until `caught_up`) does not linger.
struct Connection {
    sender: SendRequest<Full<Bytes>>,
    driver: JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// A worker's client: one connection, opened on first use and again after it fails.
pub struct Client {
    target: Arc<Target>,
    connection: Option<Connection>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("target", &self.target.url)
            .field("connected", &self.connection.is_some())
            .finish()
    }
}

impl Client {
    pub fn new(target: Arc<Target>) -> Client {
        Client {
            target,
            connection: None,
        }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Opens the connection now (outside any timed section).
    pub async fn connect(&mut self) -> Result<(), String> {
        if self.connection.is_none() {
            self.connection = Some(self.open().await?);
        }
        Ok(())
    }

    async fn open(&self) -> Result<Connection, String> {
        let stream = TcpStream::connect(self.target.addr)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", self.target.addr))?;
        // Requests and responses are small and written whole: without TCP_NODELAY, Nagle's
        // algorithm and delayed ACKs can hold each one back for tens of milliseconds.
        stream
            .set_nodelay(true)
            .map_err(|e| format!("cannot set TCP_NODELAY: {e}"))?;
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake failed: {e}"))?;
        let driver = tokio::spawn(async move {
            // A failed connection shows up as an error of the next request on it.
            let _ = connection.await;
        });
        Ok(Connection { sender, driver })
    }

    /// Sends one request and returns the response head; the body is still to be read. On a
    /// transport failure the connection is dropped and the next request opens a new one.
    pub async fn send(&mut self, request: Request<Full<Bytes>>) -> Result<Response<Incoming>, String> {
        self.connect().await?;
        let Some(connection) = self.connection.as_mut() else {
            return Err("not connected".to_owned());
        };
        let result = match connection.sender.ready().await {
            Ok(()) => connection.sender.send_request(request).await,
            Err(e) => Err(e),
        };
        result.map_err(|e| {
            self.connection = None;
            format!("request failed: {e}")
        })
    }

    /// Sends a request and reads its whole body.
    pub async fn fetch(&mut self, request: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), String> {
        let response = self.send(request).await?;
        let status = response.status();
        let body = self.read_body(response.into_body()).await?;
        Ok((status, body))
    }

    /// Reads a body to its end. A body cut short drops the connection.
    pub async fn read_body(&mut self, body: Incoming) -> Result<Bytes, String> {
        match body.collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) => {
                self.connection = None;
                Err(format!("reading the response failed: {e}"))
            }
        }
    }

    /// Closes the connection, e.g. after leaving a stream unfinished.
    pub fn disconnect(&mut self) {
        self.connection = None;
    }
}

/// The next piece of a streamed body; `None` at its end.
pub async fn next_chunk(body: &mut Incoming) -> Result<Option<Bytes>, String> {
    loop {
        match body.frame().await {
            None => return Ok(None),
            Some(Err(e)) => return Err(format!("reading the response failed: {e}")),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    return Ok(Some(data));
                }
            }
        }
    }
}

/// The error key (`"409 wrong_expected_version"`) and a one-line description of a non-2xx
/// answer, from the API's error shape when the body has it.
pub fn describe_failure(status: StatusCode, body: &[u8]) -> (String, String) {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let code = error
        .and_then(|e| e.get("code"))
        .and_then(|c| c.as_str())
        .unwrap_or("-");
    let message = match error.and_then(|e| e.get("message")).and_then(|m| m.as_str()) {
        Some(message) => message.to_owned(),
        None => String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
    };
    (format!("{} {code}", status.as_u16()), message)
}

/// Percent-encodes an aggregate id for a path segment (`:` and the other sub-delimiters stay,
/// as the API accepts them raw).
pub fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        let keep = byte.is_ascii_alphanumeric() || b"-._~:@!$&'()*+,;=".contains(&byte);
        if keep {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// One request of `method` on `path` (a path and query) with `body`, on `client`'s connection:
/// the status and the body, or why no answer came.
pub async fn call(
    client: &mut Client,
    target: &Target,
    method: Method,
    path: &str,
    body: Bytes,
) -> anyhow::Result<(hyper::StatusCode, Bytes)> {
    let uri = path
        .parse()
        .with_context(|| format!("'{path}' is not a valid path"))?;
    client
        .fetch(target.request(method, uri, body))
        .await
        .map_err(anyhow::Error::msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_keyed_by_status_and_code() {
        let body = br#"{"error":{"code":"wrong_expected_version","message":"expected 2, found 3"}}"#;
        let (key, message) = describe_failure(StatusCode::CONFLICT, body);
        assert_eq!(key, "409 wrong_expected_version");
        assert_eq!(message, "expected 2, found 3");
        let (key, message) = describe_failure(StatusCode::BAD_GATEWAY, b"upstream down");
        assert_eq!(key, "502 -");
        assert_eq!(message, "upstream down");
    }

    #[test]
    fn segments_are_encoded_for_paths() {
        assert_eq!(encode_segment("bench:12"), "bench:12");
        assert_eq!(encode_segment("a b/c%"), "a%20b%2Fc%25");
    }
}
