//! The OpenAPI document against the real server, by schemathesis: `factstore serve` (on the
//! embedded engine, and on PostgreSQL when `FACTSTORE_TEST_PG` reaches one) with an auth file,
//! and `schemathesis run /v1/openapi.json --checks all` against it. Any 5xx, any response
//! that breaks the document, any request the document allows that is refused or that it
//! forbids that is accepted, fails the test with schemathesis's report.
//!
//! The few answers the document states in prose because JSON Schema cannot (a rule across two
//! parameters, an answer that depends on what the store holds) are listed, each matched by
//! status, code and message, in `tests/schemathesis/hooks.py`.
//!
//! schemathesis is a Python program: `FACTSTORE_SCHEMATHESIS` names it, else the venv `.ci/run`
//! makes (`.venv-schemathesis`); without it the test says so and returns, except in CI (`CI`
//! set), where it fails. `FACTSTORE_SCHEMATHESIS_EXAMPLES` sets the cases per operation (30;
//! about a minute per backend on two cores). The cases are drawn from a fixed seed, so that a
//! pass that failed fails again and CI does not pass or fail by chance;
//! `FACTSTORE_SCHEMATHESIS_SEED` draws others (run it with several seeds when the document or
//! the server changes).
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::ServeProcess;
use common::pg::Backend;

/// The admin token of the auth file the server runs with (every route is reachable; tokens
/// that are missing or wrong are what schemathesis's auth checks send).
const TOKEN: &str = "schemathesis-admin-token-0123456789abcdef";

/// The longest a pass may take before the test gives up on it.
const PASS_TIME_MAX: Duration = Duration::from_secs(600);

fn schemathesis() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("FACTSTORE_SCHEMATHESIS") {
        return Some(PathBuf::from(path));
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv-schemathesis/bin/schemathesis");
    venv.exists().then_some(venv)
}

/// The hooks and the settings of the pass, beside this file.
fn support(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/schemathesis")
        .join(file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_server_keeps_to_its_openapi_document() {
    keeps_to_its_document(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_on_postgres_keeps_to_its_openapi_document() {
    if let Some(backend) = Backend::postgres("the schemathesis pass on PostgreSQL").await {
        keeps_to_its_document(backend).await;
    }
}

async fn keeps_to_its_document(backend: Backend) {
    let Some(binary) = schemathesis() else {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: schemathesis is not installed here (python3 -m venv .venv-schemathesis && \
             .venv-schemathesis/bin/pip install schemathesis==4.32.5, or set \
             FACTSTORE_SCHEMATHESIS); .ci/run installs it"
        );
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the schemathesis pass: .ci/run installs it"
        );
        return;
    };
    let examples: u32 = std::env::var("FACTSTORE_SCHEMATHESIS_EXAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let seed = std::env::var("FACTSTORE_SCHEMATHESIS_SEED").unwrap_or_else(|_| "20261208".to_owned());
    let dir = tempfile::tempdir().unwrap();
    let auth = dir.path().join("auth.toml");
    std::fs::write(
        &auth,
        format!("[[token]]\ntoken = \"{TOKEN}\"\nrole = \"admin\"\n"),
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&auth, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let mut args = vec!["--auth".to_owned(), auth.display().to_string()];
    args.extend(backend.args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = ServeProcess::start(&dir.path().join("data"), &args);
    wait_ready(&server.url).await;

    let work = dir.path().join("schemathesis");
    std::fs::create_dir_all(&work).unwrap();
    let mut child = Command::new(&binary)
        .current_dir(&work)
        .env("SCHEMATHESIS_HOOKS", support("hooks.py"))
        // Where the backups the pass asks for go (hooks.py moves every one there).
        .env("FACTSTORE_SCHEMATHESIS_BACKUPS", dir.path().join("backups"))
        .arg("--config-file")
        .arg(support("schemathesis.toml"))
        .args(["run", &format!("{}/v1/openapi.json", server.url)])
        .args(["--checks", "all"])
        .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
        .args(["--max-examples", &examples.to_string()])
        .args(["--seed", &seed])
        .args(["--workers", "2", "--request-timeout", "20"])
        // No example database in the work tree: each pass draws its own cases.
        .args(["--generation-database", "none", "--no-color"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", binary.display()));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > PASS_TIME_MAX {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "schemathesis did not finish within {PASS_TIME_MAX:?}:\n{}",
                String::from_utf8_lossy(&output.stdout)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let output = child.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        status.success(),
        "schemathesis found the server and its OpenAPI document disagreeing ({status}):\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // A pass that tested nothing would pass too: every documented operation must be tested.
    let number_after = |label: &str| {
        report
            .lines()
            .find_map(|line| line.trim().strip_prefix(label))
            .and_then(|rest| rest.trim().split('/').next_back()?.parse::<u32>().ok())
    };
    let (selected, tested) = (number_after("Selected:"), number_after("Tested:"));
    assert!(
        selected.is_some_and(|n| n > 30) && selected == tested,
        "schemathesis did not test every operation ({tested:?} of {selected:?}):\n{report}"
    );
    let _ = writeln!(
        std::io::stderr(),
        "schemathesis: {examples} cases per operation in {:.0?}",
        started.elapsed()
    );
    drop(server);
    backend.finish(&dir.path().join("data")).await;
}

/// Waits until the server answers its document (on PostgreSQL, also until it leads, so that
/// projection and group routes are served rather than forwarded).
async fn wait_ready(url: &str) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !client
        .get(format!("{url}/v1/projections"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "{url} was not ready within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
