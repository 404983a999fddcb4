//! Archiving with the real binary: `factstore serve --archive-url` over `file://` and over a
//! real S3-compatible server (moto, when it is installed: `.ci/run` installs it), then
//! `factstore archive` and `factstore storage`; every event reads the same after archiving,
//! after a restart, and after `kill -9` at random moments of archiving.
#![allow(clippy::unwrap_used)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;
use common::{BIN, ServeProcess, free_port};

/// Where the archive goes, and the environment the server and `verify` need to reach it.
struct Cold {
    url: String,
    env: Vec<(String, String)>,
}

/// Small segments and a small memtable, so that a few hundred events make several sealed,
/// indexed segments to archive.
fn serve(data: &Path, cold: &Cold) -> ServeProcess {
    let server = ServeProcess::start_with_env(
        data,
        &[
            "--archive-url",
            &cold.url,
            "--segment-bytes",
            "8KiB",
            "--memtable-events",
            "32",
        ],
        &cold.env,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cli(&server, &[], &["head"]).status.success() {
        assert!(Instant::now() < deadline, "the server did not become ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

fn cli(server: &ServeProcess, env: &[(String, String)], args: &[&str]) -> Output {
    cli_command(server, env, args).output().expect("run factstore")
}

fn cli_command(server: &ServeProcess, env: &[(String, String)], args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env("FACTSTORE_URL", &server.url)
        .env_remove("FACTSTORE_TOKEN")
        .envs(env.iter().map(|(k, v)| (k, v)));
    command
}

fn ok(output: &Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// Appends `commits` commits of 20 events each, as separate appends (separate frames).
fn fill(server: &ServeProcess, commits: usize, salt: usize) {
    let mut input = String::new();
    const TYPES: [&str; 2] = ["Opened", "Deposited"];
    for c in 0..commits {
        let events: Vec<Value> = (0..20)
            .map(|j| {
                json!({"aggregate_type": "Account", "event_type": TYPES[j % 2],
                       "event_data": {"c": c, "j": j, "salt": salt, "pad": "y".repeat(200)},
                       "metadata": {"correlation_id": format!("corr-{}", j % 3)}})
            })
            .collect();
        input.push_str(&json!({"expected_version": "any", "events": events}).to_string());
        input.push('\n');
    }
    let mut child = cli_command(server, &[], &["append", &format!("acct-{salt}"), "--stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("append");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    ok(&child.wait_with_output().unwrap(), "append");
}

fn export(server: &ServeProcess) -> String {
    ok(&cli(server, &[], &["export"]), "export")
}

fn storage(server: &ServeProcess) -> Value {
    serde_json::from_str(&ok(&cli(server, &[], &["storage", "--json"]), "storage")).unwrap()
}

/// Archives everything archivable; the index checkpoint trails the appends a little, so it
/// asks again until something moved.
fn archive_all(server: &ServeProcess) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = ok(
            &cli(server, &[], &["archive", "--before", "2999-01-01", "--json"]),
            "archive",
        );
        let outcome: Value = serde_json::from_str(&out).unwrap();
        if outcome["archived_events"].as_u64().unwrap() > 0 {
            return outcome;
        }
        assert!(Instant::now() < deadline, "nothing became archivable: {outcome}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn verify(data: &Path, cold: &Cold) {
    let output = Command::new(BIN)
        .args(["verify", "--data-dir"])
        .arg(data)
        .args(["--archive-url", &cold.url])
        .envs(cold.env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("verify");
    let text = ok(&output, "verify");
    assert!(text.contains("downloaded and checked"), "{text}");
}

fn round_trip(cold: &Cold) {
    let data = tempfile::tempdir().unwrap();
    let server = serve(data.path(), cold);
    fill(&server, 12, 0);
    let before = export(&server);
    let by_type = ok(
        &cli(&server, &[], &["query", "--event-type", "Deposited", "--json"]),
        "query",
    );
    let outcome = archive_all(&server);
    let stats = storage(&server);
    assert_eq!(stats["archived_events"], outcome["archived_events"]);
    assert!(stats["cold_bytes"].as_u64().unwrap() > 0, "{stats}");
    assert_eq!(stats["events"], 240);
    assert_eq!(
        export(&server),
        before,
        "every event reads the same after archiving"
    );
    assert_eq!(
        ok(
            &cli(&server, &[], &["query", "--event-type", "Deposited", "--json"]),
            "query"
        ),
        by_type
    );
    let text = ok(&cli(&server, &[], &["storage"]), "storage");
    assert!(text.contains("archived"), "{text}");

    // A restart reads the archived segments through the manifest; the cache starts empty.
    server.kill();
    let server = serve(data.path(), cold);
    assert_eq!(export(&server), before);
    fill(&server, 4, 1);
    drop(server);
    verify(data.path(), cold);

    // Without the archive URL the store refuses to start rather than serve a hole.
    let refused = Command::new(BIN)
        .args(["serve", "--data-dir"])
        .arg(data.path())
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .env_remove("FACTSTORE_ARCHIVE_URL")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--archive-url"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

#[test]
fn archive_to_file_url_reads_the_same_and_survives_restarts() {
    let cold_dir = tempfile::tempdir().unwrap();
    round_trip(&Cold {
        url: format!("file://{}", cold_dir.path().display()),
        env: Vec::new(),
    });
    assert!(cold_dir.path().join("segments").read_dir().unwrap().count() > 0);
}

#[test]
fn archive_without_archive_url_is_refused_with_its_code() {
    let data = tempfile::tempdir().unwrap();
    let server = ServeProcess::start(data.path(), &[]);
    let output = cli(&server, &[], &["archive", "--before", "2023-01-01"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("archive_not_configured") || stderr.contains("--archive-url"),
        "{stderr}"
    );
    let output = cli(&server, &[], &["archive", "--before", "next week"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--before"));
}

/// With the default segment and memtable sizes a small store is one active segment, never
/// checkpointed: archiving seals it and checkpoints the index so that every event recorded
/// before the cut moves. A cut inside a segment leaves the events before it hot, counted and
/// explained.
#[test]
fn archive_moves_every_event_recorded_before_the_cut() {
    let cold_dir = tempfile::tempdir().unwrap();
    let cold_url = format!("file://{}", cold_dir.path().display());
    let data = tempfile::tempdir().unwrap();
    let server = ServeProcess::start(data.path(), &["--archive-url", &cold_url]);
    fill(&server, 5, 0);
    std::thread::sleep(Duration::from_millis(5)); // recorded_at has microseconds: a clean cut
    let cut = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    std::thread::sleep(Duration::from_millis(5));
    fill(&server, 3, 1);
    let before = export(&server);

    // The cut falls inside the one segment: nothing moves, and the answer says why.
    let output = cli(&server, &[], &["archive", "--before", &cut, "--json"]);
    let outcome: Value = serde_json::from_str(&ok(&output, "archive")).unwrap();
    assert_eq!(outcome["archived_events"], 0, "{outcome}");
    assert_eq!(outcome["hot_before_cut"], 100, "{outcome}");
    assert_eq!(outcome["hot_reason"], "shares_segment_with_later_events");
    let output = cli(&server, &[], &["archive", "--before", &cut]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("100 events recorded before") && stderr.contains("share a log segment"),
        "{stderr}"
    );

    // A cut after every event: all of them move, though the segment was the active one.
    let output = cli(&server, &[], &["archive", "--before", "2999-01-01", "--json"]);
    let outcome: Value = serde_json::from_str(&ok(&output, "archive")).unwrap();
    assert_eq!(outcome["archived_events"], 160, "{outcome}");
    assert_eq!(outcome["hot_before_cut"], 0, "{outcome}");
    assert!(outcome.get("hot_reason").is_none(), "{outcome}");
    assert_eq!(storage(&server)["archived_events"], 160);
    assert_eq!(export(&server), before);
    fill(&server, 1, 2);
    server.kill();
    let server = ServeProcess::start(data.path(), &["--archive-url", &cold_url]);
    let after = export(&server);
    assert!(
        after.starts_with(&before),
        "the archived events read the same after a restart"
    );
    assert_eq!(after.lines().count(), 180);
    drop(server);
    verify(
        data.path(),
        &Cold {
            url: cold_url,
            env: Vec::new(),
        },
    );
}

/// What the cold folder holds: each file with its length and modification time.
fn cold_files(dir: &Path) -> std::collections::BTreeMap<PathBuf, (u64, std::time::SystemTime)> {
    let mut files = std::collections::BTreeMap::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue; // a folder the archiver is making or renaming
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                folders.push(entry.path());
            } else if let Ok(modified) = meta.modified() {
                files.insert(entry.path(), (meta.len(), modified));
            }
        }
    }
    files
}

/// Each kill must land while archiving runs: after this request put something into cold
/// storage, before it got its answer. A kill that missed (archiving had nothing to move yet,
/// or ended first) is followed by another try, with more events, after the restart.
#[test]
fn kill_9_during_archiving_loses_nothing_and_reads_nothing_twice() {
    let cold_dir = tempfile::tempdir().unwrap();
    let cold = Cold {
        url: format!("file://{}", cold_dir.path().display()),
        env: Vec::new(),
    };
    let data = tempfile::tempdir().unwrap();
    let kills: u64 = std::env::var("FACTSTORE_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .min(20);
    let tries_max = kills * 5;
    let mut rng = rand::rng();
    let mut expected = String::new();
    let mut landed = 0;
    let mut tries = 0;
    while landed < kills {
        assert!(
            tries < tries_max,
            "only {landed} of {tries} kills landed while archiving ran"
        );
        tries += 1;
        let server = serve(data.path(), &cold);
        assert_eq!(
            export(&server),
            expected,
            "try {tries}: the events after the restart"
        );
        fill(&server, 6, tries as usize);
        expected = export(&server);
        let before = cold_files(cold_dir.path());
        let mut archive: Child = cli_command(&server, &[], &["archive", "--before", "2999-01-01"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let uploading = loop {
            if cold_files(cold_dir.path()) != before {
                break true;
            }
            if archive.try_wait().unwrap().is_some() {
                break false;
            }
            assert!(Instant::now() < deadline, "archiving did not end within 30 s");
            std::thread::sleep(Duration::from_micros(100));
        };
        if uploading {
            // Somewhere in the steps of one segment or between segments.
            std::thread::sleep(Duration::from_micros(rand::Rng::random_range(&mut rng, 0..3000)));
        }
        server.kill();
        let answered = archive.wait().unwrap().success();
        if uploading && !answered {
            landed += 1;
        }
    }
    eprintln!("{landed} kills landed while archiving ran, in {tries} tries");
    let server = serve(data.path(), &cold);
    assert_eq!(export(&server), expected, "the events after the last kill");
    let lines: Vec<Value> = expected
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (i, event) in lines.iter().enumerate() {
        assert_eq!(
            event["position"],
            i as u64 + 1,
            "positions are dense and once each"
        );
    }
    archive_all(&server);
    assert_eq!(export(&server), expected);
    drop(server);
    verify(data.path(), &cold);
}

// ---------------------------------------------------------------------------------------------
// S3 (moto)
// ---------------------------------------------------------------------------------------------

/// The `moto_server` binary: `FACTSTORE_MOTO_SERVER`, the venv `.ci/run` makes, or `PATH`.
fn moto_server() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("FACTSTORE_MOTO_SERVER") {
        return Some(PathBuf::from(path));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for candidate in [
        root.join(".venv-moto/bin/moto_server"),
        PathBuf::from("/work/.venv-moto/bin/moto_server"),
    ] {
        if candidate.exists() {
            return Some(candidate);
        }
    }
    let on_path = Command::new("moto_server").arg("--help").output().ok()?;
    on_path.status.success().then(|| PathBuf::from("moto_server"))
}

/// A moto S3 server on a free port, killed when dropped.
struct Moto {
    child: Child,
    port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_moto(binary: &Path) -> Moto {
    let port = free_port();
    let child = Command::new(binary)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start moto_server");
    let moto = Moto { child, port };
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto_server did not start within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    moto
}

#[test]
fn archive_to_s3_reads_the_same_and_survives_restarts() {
    let Some(binary) = moto_server() else {
        eprintln!(
            "SKIPPED: moto_server is not installed here (python3 -m venv .venv-moto && \
             .venv-moto/bin/pip install 'moto[server]', or set FACTSTORE_MOTO_SERVER); .ci/run installs it"
        );
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the S3 test: .ci/run installs moto"
        );
        return;
    };
    let moto = start_moto(&binary);
    let endpoint = format!("http://127.0.0.1:{}", moto.port);
    // moto accepts any credentials; an unsigned PUT creates the bucket.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let response = reqwest::Client::new()
            .put(format!("{endpoint}/factstore-test"))
            .send()
            .await
            .expect("create the bucket");
        assert!(
            response.status().is_success(),
            "create bucket: {}",
            response.status()
        );
    });
    let env = [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .to_vec();
    round_trip(&Cold {
        url: "s3://factstore-test/stores/one".to_owned(),
        env,
    });
}
