//! `factstore serve` as operators run it, end to end on the real binary: HTTPS, the refusal
//! to listen openly without auth, limits from flags and the environment, startup errors, and
//! a SIGTERM during concurrent appends.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_factstore");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `factstore serve`, its stderr going to a file.
struct Server {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Server {
    /// Starts the server on 127.0.0.1 with `args` added.
    fn start(dir: &Path, args: &[&str]) -> Server {
        let port = free_port();
        Server::start_on(dir, &format!("127.0.0.1:{port}"), port, args, &[])
    }

    fn start_on(dir: &Path, listen: &str, port: u16, args: &[&str], env: &[(&str, &str)]) -> Server {
        let log = dir.join(format!("serve-{port}.log"));
        let child = Command::new(BIN)
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--listen", listen])
            .args(args)
            .envs(env.iter().copied())
            .env("FACTSTORE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Server { child, port, log }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn wait_ready(&mut self, client: &reqwest::Client, base: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(r) = client.get(format!("{base}/health")).send().await
                && r.status().is_success()
            {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the server exited ({status}):\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the server did not become ready:\n{}", self.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit, within `limit`.
    fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the server did not exit within {limit:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(mut self) {
        self.terminate();
        let status = self.wait_exit(Duration::from_secs(20));
        assert!(status.success(), "{status}:\n{}", self.log());
    }
}

/// Runs `factstore serve` expecting it to refuse to start; returns its stderr.
fn refused(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let output = Command::new(BIN)
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "it started: {stderr}");
    stderr
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn one_event() -> Value {
    json!({"events": [{"aggregate_type": "A", "event_type": "E", "event_data": {"n": 1}}]})
}

#[tokio::test]
async fn https_with_a_self_signed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let mut server = Server::start(
        dir.path(),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let https = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(certified.cert.pem().as_bytes()).unwrap()])
        .resolve("localhost", ([127, 0, 0, 1], server.port).into())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let base = format!("https://localhost:{}", server.port);
    server.wait_ready(&https, &base).await;
    assert!(
        server
            .log()
            .contains(&format!("listening on https://127.0.0.1:{}", server.port))
    );

    let answer = https
        .post(format!("{base}/v1/aggregates/tls:1/events"))
        .json(&one_event())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 201);
    let page: Value = https
        .get(format!("{base}/v1/aggregates/tls:1/events"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["events"][0]["event_data"], json!({"n": 1}));
    // Plain HTTP to the TLS port gets no HTTP answer.
    assert!(
        client()
            .get(format!("{}/health", server.url()))
            .send()
            .await
            .is_err()
    );
    // A client that does not trust the certificate refuses the server.
    let untrusting = reqwest::Client::builder()
        .resolve("localhost", ([127, 0, 0, 1], server.port).into())
        .tls_certs_only([])
        .build()
        .unwrap();
    assert!(untrusting.get(format!("{base}/health")).send().await.is_err());
    server.stop();
}

#[tokio::test]
async fn a_non_loopback_address_needs_auth_or_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("0.0.0.0:{port}");
    let stderr = refused(dir.path(), &["--listen", &listen], &[]);
    assert!(stderr.contains("refusing to listen on 0.0.0.0"), "{stderr}");
    assert!(
        stderr.contains("--auth") && stderr.contains("--insecure"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "the store was opened before the check"
    );

    let auth = dir.path().join("auth.toml");
    std::fs::write(
        &auth,
        "[[token]]\ntoken = \"e2e-reader-token-0123456789\"\nrole = \"reader\"\n",
    )
    .unwrap();
    let mut server = Server::start_on(
        dir.path(),
        &listen,
        port,
        &["--auth", auth.to_str().unwrap()],
        &[],
    );
    let client = client();
    server.wait_ready(&client, &server.url()).await;
    let answer = client
        .get(format!("{}/v1/head", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 401);
    let answer = client
        .get(format!("{}/v1/head", server.url()))
        .bearer_auth("e2e-reader-token-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let log = server.log();
    assert!(
        log.contains("clear text"),
        "no warning about tokens without TLS: {log}"
    );
    assert!(!log.contains("e2e-reader-token"), "the log shows a token: {log}");
    server.stop();

    let port = free_port();
    let listen = format!("0.0.0.0:{port}");
    let mut server = Server::start_on(dir.path(), &listen, port, &[], &[("FACTSTORE_INSECURE", "true")]);
    server.wait_ready(&client, &server.url()).await;
    server.stop();
}

#[tokio::test]
async fn limits_come_from_flags_and_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_on(
        dir.path(),
        "127.0.0.1:0",
        0,
        &[],
        &[("FACTSTORE_MAX_AGGREGATE_ID_BYTES", "8")],
    );
    // Port 0: read the address from the log line.
    let deadline = Instant::now() + Duration::from_secs(30);
    let port = loop {
        let log = server.log();
        if let Some(rest) = log.split("listening on http://127.0.0.1:").nth(1) {
            break rest
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse::<u16>()
                .unwrap();
        }
        assert!(Instant::now() < deadline, "no listening line: {log}");
        std::thread::sleep(Duration::from_millis(20));
    };
    server.port = port;
    let client = client();
    server.wait_ready(&client, &server.url()).await;
    let answer = client
        .post(format!("{}/v1/aggregates/123456789/events", server.url()))
        .json(&one_event())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);
    server.stop();

    let mut server = Server::start(
        dir.path(),
        &[
            "--max-events-per-request",
            "2",
            "--max-request-bytes",
            "1KiB",
            "--max-page-events",
            "3",
        ],
    );
    server.wait_ready(&client, &server.url()).await;
    let url = format!("{}/v1/aggregates/lim:1/events", server.url());
    let event = json!({"aggregate_type": "A", "event_type": "E", "event_data": {}});
    let answer = client
        .post(&url)
        .json(&json!({"events": [event, event, event]}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 413);
    let answer: Value = answer.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "payload_too_large");
    let big = json!({"events": [{"aggregate_type": "A", "event_type": "E", "event_data": {"x": "y".repeat(1100)}}]});
    let answer = client.post(&url).json(&big).send().await.unwrap();
    assert_eq!(answer.status(), 413);
    let answer = client
        .post(&url)
        .json(&json!({"events": [event, event]}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 201);
    let answer = client
        .get(format!("{}/v1/events?limit=4", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);
    server.stop();
}

#[test]
fn bad_options_stop_the_start_with_a_message_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = refused(dir.path(), &["--max-page-events", "0"], &[]);
    assert!(
        stderr.contains("--max-page-events must be between 1 and 100000"),
        "{stderr}"
    );
    let stderr = refused(dir.path(), &[], &[("FACTSTORE_MAX_AGGREGATE_TYPE_BYTES", "300")]);
    assert!(
        stderr.contains("--max-aggregate-type-bytes must be between 1 and 255"),
        "{stderr}"
    );
    let stderr = refused(dir.path(), &["--max-request-bytes", "lots"], &[]);
    assert!(stderr.contains("not a size"), "{stderr}");

    let auth = dir.path().join("auth.toml");
    std::fs::write(
        &auth,
        "[[token]]\ntoken = \"first-token-0123456789\"\nrole = \"reader\"\n\
         [[token]]\ntoken = \"second-token-0123456789\"\nrole = \"superuser\"\n",
    )
    .unwrap();
    let stderr = refused(dir.path(), &["--auth", auth.to_str().unwrap()], &[]);
    assert!(
        stderr.contains("auth.toml") && stderr.contains("token entry 2"),
        "{stderr}"
    );
    assert!(
        stderr.contains("unknown role (expected reader, writer or admin)"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("superuser"),
        "the value is not repeated: {stderr}"
    );
    assert!(!stderr.contains("second-token"), "{stderr}");
    let stderr = refused(dir.path(), &["--auth", "/no/such/auth.toml"], &[]);
    assert!(
        stderr.contains("cannot read the auth file /no/such/auth.toml"),
        "{stderr}"
    );

    let stderr = refused(
        dir.path(),
        &["--tls-cert", "/no/cert.pem", "--tls-key", "/no/key.pem"],
        &[],
    );
    assert!(stderr.contains("/no/cert.pem"), "{stderr}");
    let stderr = refused(dir.path(), &["--tls-cert", "/no/cert.pem"], &[]);
    assert!(stderr.contains("--tls-key"), "{stderr}");
    assert!(
        !dir.path().join("data").exists(),
        "the store was opened before the checks"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_concurrent_appends_acknowledges_only_what_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &["--log-format", "json", "--shutdown-timeout", "10"]);
    let client = client();
    server.wait_ready(&client, &server.url()).await;
    let acked: Arc<Mutex<HashMap<Uuid, u64>>> = Arc::default();
    let writers: Vec<_> = (0..8)
        .map(|worker| {
            let (client, url, acked) = (client.clone(), server.url(), acked.clone());
            tokio::spawn(async move {
                let mut sent = 0u64;
                // Until the server stops answering; bounded in count all the same.
                while sent < 100_000 {
                    sent += 1;
                    let ids: Vec<Uuid> = (0..2).map(|_| Uuid::now_v7()).collect();
                    let events: Vec<Value> = ids
                        .iter()
                        .map(|id| {
                            json!({"event_id": id, "aggregate_type": "T", "event_type": "Tick",
                                         "event_data": {"worker": worker}})
                        })
                        .collect();
                    let response = client
                        .post(format!("{url}/v1/aggregates/term:{worker}/events"))
                        .json(&json!({"events": events}))
                        .send()
                        .await;
                    let Ok(response) = response else { return };
                    if response.status() != 201 {
                        return;
                    }
                    let Ok(body) = response.json::<Value>().await else {
                        return;
                    };
                    let mut acked = acked.lock().unwrap();
                    for event in body["events"].as_array().unwrap() {
                        let id: Uuid = event["event_id"].as_str().unwrap().parse().unwrap();
                        acked.insert(id, event["position"].as_u64().unwrap());
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let signalled = Instant::now();
    server.terminate();
    let status = tokio::task::block_in_place(|| server.wait_exit(Duration::from_secs(15)));
    assert_eq!(status.code(), Some(0), "{}", server.log());
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "{:?}",
        signalled.elapsed()
    );
    for writer in writers {
        writer.await.unwrap();
    }
    let log = server.log();
    let lines: Vec<Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let messages: Vec<&str> = lines
        .iter()
        .filter_map(|line| line["fields"]["message"].as_str())
        .collect();
    assert!(messages.iter().any(|m| m.starts_with("shutting down")), "{log}");
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("factstore stopped: every request")),
        "{log}"
    );
    // New connections are refused once it is gone.
    assert!(
        client
            .get(format!("{}/health", server.url()))
            .send()
            .await
            .is_err()
    );

    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 20,
        "the writers got acknowledgements: {}",
        acked.len()
    );
    let mut server = Server::start(dir.path(), &[]);
    server.wait_ready(&client, &server.url()).await;
    let page: Value = client
        .get(format!("{}/v1/events?limit=10000", server.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let stored: HashMap<Uuid, u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["event_id"].as_str().unwrap().parse().unwrap(),
                e["position"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(stored.len() < 10_000, "one page holds everything");
    for (id, position) in &acked {
        assert_eq!(
            stored.get(id),
            Some(position),
            "acknowledged event {id} lost or moved"
        );
    }
    server.stop();
}
