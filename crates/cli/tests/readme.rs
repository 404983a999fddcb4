//! The READMEs as a user meets them: every ```sh block of `README.md`,
//! `examples/bank/README.md` and `examples/orders/README.md` runs, in document order, with
//! `bash -euo pipefail`, against real servers on free ports (`localhost:6180`,
//! `127.0.0.1:6180` and the example's own port are replaced in the text, and `FACTSTORE_URL`
//! points at the server). The blocks of one README share one server, one working folder (a
//! temporary one) and what earlier blocks left there, so a later block may rely on an earlier
//! one, as a reader going from top to bottom does.
//!
//! `factstore` is on the `PATH` (the binary this package builds), and so, first, is a `curl`
//! that runs the real one with `--fail-with-body`: an HTTP error fails the block. The working
//! folder has `target/release/` with the binaries the READMEs start from there (the debug
//! builds of this workspace under those names).
//!
//! Markers, HTML comments right before a fence (a rendered page does not show them), say what
//! else the test must know:
//! - `<!-- readme-test: skip: WHY -->`: not run, for the reason given (it builds, installs,
//!   runs until Ctrl-C, or needs a machine the test does not have).
//! - `<!-- readme-test: expect-stdout-contains: TEXT -->`: the block's standard output holds
//!   TEXT (one marker per text).
//! - `<!-- readme-test: expect-http-errors -->`: the block shows refusals on purpose: its curl
//!   commands do not fail on an HTTP error, and its expectations say which errors came.
//! - `<!-- readme-test: starts-servers -->`: the block starts the README's servers in the
//!   background; the test then waits until they accept connections.
//!
//! The examples' services are the binaries `bank`, `bank-receipts` and `orders` beside the
//! `factstore` binary in the target folder: `cargo test --workspace` builds every package's
//! binaries before it runs a test. When they are missing, or older than their sources (only
//! this package was built), the test fails and names the command that builds them.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::{BIN, ServeProcess, free_port};

/// How long one block may run (the longest makes over a hundred requests through an example
/// service, on a shared machine).
const BLOCK_DEADLINE: Duration = Duration::from_secs(180);

/// How long servers started by a block get to accept connections.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// One ```sh block and its markers.
#[derive(Debug, Default, PartialEq)]
struct Block {
    /// The line of its opening fence (1-based).
    line: usize,
    code: String,
    skip: Option<String>,
    expect_stdout: Vec<String>,
    http_errors: bool,
    starts_servers: bool,
}

const MARKER_START: &str = "<!-- readme-test:";

/// The ```sh blocks of a Markdown text with their markers. A marker anywhere but right before a
/// ```sh fence, an unknown marker, a skip without a reason, or an unclosed fence is an error:
/// a marker that is not applied would make the test pass on something it did not check.
fn blocks(markdown: &str) -> Result<Vec<Block>, String> {
    let mut out = Vec::new();
    let mut pending: Option<Block> = None;
    let mut lines = markdown.lines().enumerate();
    while let Some((index, line)) = lines.next() {
        let number = index + 1;
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix(MARKER_START) {
            let body = rest
                .strip_suffix("-->")
                .ok_or_else(|| format!("line {number}: a marker is one line ending with -->"))?
                .trim();
            let block = pending.get_or_insert_with(Block::default);
            apply_marker(block, body).map_err(|e| format!("line {number}: {e}"))?;
            continue;
        }
        if let Some(info) = trimmed.strip_prefix("```") {
            let is_sh = info.trim() == "sh";
            if pending.is_some() && !is_sh {
                return Err(format!(
                    "line {number}: a readme-test marker before a fence that is not ```sh"
                ));
            }
            let mut code = String::new();
            let mut closed = false;
            for (_, inner) in lines.by_ref() {
                if inner.trim() == "```" {
                    closed = true;
                    break;
                }
                code.push_str(inner);
                code.push('\n');
            }
            if !closed {
                return Err(format!("line {number}: the fence is not closed"));
            }
            if is_sh {
                let mut block = pending.take().unwrap_or_default();
                block.line = number;
                block.code = code;
                if block.http_errors && block.expect_stdout.is_empty() {
                    return Err(format!(
                        "line {number}: expect-http-errors needs expect-stdout-contains markers saying which errors"
                    ));
                }
                out.push(block);
            }
            continue;
        }
        if pending.is_some() {
            return Err(format!(
                "line {number}: a readme-test marker must stand right before a ```sh fence"
            ));
        }
    }
    if pending.is_some() {
        return Err("a readme-test marker at the end, before no fence".to_owned());
    }
    Ok(out)
}

fn apply_marker(block: &mut Block, body: &str) -> Result<(), String> {
    let (kind, value) = match body.split_once(':') {
        Some((kind, value)) => (kind.trim(), Some(value.trim())),
        None => (body, None),
    };
    match (kind, value) {
        ("skip", Some(reason)) if !reason.is_empty() => block.skip = Some(reason.to_owned()),
        ("skip", _) => return Err("skip needs a reason: <!-- readme-test: skip: WHY -->".to_owned()),
        ("expect-stdout-contains", Some(text)) if !text.is_empty() => {
            block.expect_stdout.push(text.to_owned())
        }
        ("expect-http-errors", None) => block.http_errors = true,
        ("starts-servers", None) => block.starts_servers = true,
        _ => return Err(format!("unknown readme-test marker '{body}'")),
    }
    Ok(())
}

/// The workspace's root folder.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The newest modification time of the files under `path`.
fn newest(path: &Path) -> SystemTime {
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if !meta.is_dir() {
        return meta.modified().unwrap();
    }
    std::fs::read_dir(path)
        .unwrap()
        .map(|entry| newest(&entry.unwrap().path()))
        .max()
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The binary `name` of the example package `package` (in `examples/<folder>`), built beside
/// `factstore`, and not older than the sources it is built from.
fn example_binary(name: &str, package: &str, folder: &str) -> PathBuf {
    let binary = Path::new(BIN).with_file_name(name);
    let build = format!("cargo build -p {package} (cargo test --workspace builds it too)");
    let built = std::fs::metadata(&binary)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| panic!("{} is missing: {build}", binary.display()));
    let sources = [
        root().join("examples").join(folder).join("src"),
        root().join("examples").join(folder).join("Cargo.toml"),
        root().join("crates/client/src"),
    ];
    for source in sources {
        assert!(
            newest(&source) <= built,
            "{} is older than {}: {build}",
            binary.display(),
            source.display()
        );
    }
    binary
}

/// The first `name` on the `PATH`.
fn on_path(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("the READMEs need {name} on the PATH"))
}

/// What a README needs besides its text.
struct Readme {
    /// Relative to the workspace's root.
    path: &'static str,
    /// Ports of the text and what they become.
    ports: Vec<(u16, u16)>,
    /// Environment variables of every block.
    env: Vec<(String, String)>,
    /// `target/release/<name>` in the working folder, and what it runs.
    binaries: Vec<(&'static str, PathBuf)>,
    /// Whether a block starts the servers (else the test did).
    started_by_a_block: bool,
    /// How many blocks run at least.
    runnable: usize,
}

/// One README's run: its folders, and the process groups of its blocks, killed at the end
/// (a block may leave a server or a worker running in the background for later blocks).
struct Session {
    dir: tempfile::TempDir,
    groups: Vec<rustix::process::Pid>,
}

impl Drop for Session {
    fn drop(&mut self) {
        for group in &self.groups {
            // Gone already is fine: nothing was left running.
            let _ = rustix::process::kill_process_group(*group, rustix::process::Signal::KILL);
        }
    }
}

impl Session {
    fn new() -> Session {
        Session {
            dir: tempfile::tempdir().unwrap(),
            groups: Vec::new(),
        }
    }

    fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    /// Runs every block of `readme` that is not skipped, in order.
    fn run(&mut self, readme: &Readme) {
        let text = std::fs::read_to_string(root().join(readme.path)).unwrap();
        let blocks = blocks(&text).unwrap_or_else(|e| panic!("{}: {e}", readme.path));
        let work = self.work();
        let bin = self.dir.path().join("bin");
        let tmp = self.dir.path().join("tmp");
        let release = work.join("target/release");
        for dir in [&work, &bin, &tmp, &release] {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::os::unix::fs::symlink(BIN, bin.join("factstore")).unwrap();
        std::os::unix::fs::symlink(BIN, release.join("factstore")).unwrap();
        for (name, target) in &readme.binaries {
            std::os::unix::fs::symlink(target, release.join(name)).unwrap();
        }
        let curl = on_path("curl");
        let shim = bin.join("curl");
        std::fs::write(
            &shim,
            format!(
                "#!/bin/sh\n\
                 # curl that fails on an HTTP error and still prints the answer, unless the block\n\
                 # shows refusals on purpose or fails on its own (-f, which curl will not take\n\
                 # with --fail-with-body).\n\
                 if [ \"${{README_TEST_HTTP_ERRORS:-0}}\" = 1 ]; then exec '{curl}' \"$@\"; fi\n\
                 for arg in \"$@\"; do\n\
                 \x20 case \"$arg\" in\n\
                 \x20   --fail|--fail-with-body) exec '{curl}' \"$@\" ;;\n\
                 \x20   --*) ;;\n\
                 \x20   -*f*) exec '{curl}' \"$@\" ;;\n\
                 \x20 esac\n\
                 done\n\
                 exec '{curl}' --fail-with-body \"$@\"\n",
                curl = curl.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&shim, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let path = std::env::join_paths(std::iter::once(bin.clone()).chain(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        )))
        .unwrap();

        let (mut ran, mut skipped) = (0, 0);
        let mut servers_up = !readme.started_by_a_block;
        for (index, block) in blocks.iter().enumerate() {
            let at = format!("{}:{}", readme.path, block.line);
            if let Some(reason) = &block.skip {
                eprintln!("{at}: skipped ({reason})");
                skipped += 1;
                continue;
            }
            assert!(
                servers_up || block.starts_servers,
                "{at}: runs before any block marked starts-servers started the servers"
            );
            let mut code = block.code.clone();
            for (from, to) in &readme.ports {
                for host in ["localhost", "127.0.0.1"] {
                    code = code.replace(&format!("{host}:{from}"), &format!("127.0.0.1:{to}"));
                }
            }
            let script = self.dir.path().join(format!("block-{index}.sh"));
            std::fs::write(&script, &code).unwrap();
            let stdout_path = self.dir.path().join(format!("block-{index}.out"));
            let stderr_path = self.dir.path().join(format!("block-{index}.err"));
            let mut command = Command::new("bash");
            command
                .args(["-euo", "pipefail"])
                .arg(&script)
                .current_dir(&work)
                .stdin(Stdio::null())
                .stdout(File::create(&stdout_path).unwrap())
                .stderr(File::create(&stderr_path).unwrap())
                // Its own group, so that whatever it leaves running is killed with it.
                .process_group(0);
            for (key, _) in std::env::vars_os() {
                if key.to_string_lossy().starts_with("FACTSTORE_") {
                    command.env_remove(key);
                }
            }
            command
                .env("PATH", &path)
                .env("TMPDIR", &tmp)
                .env("NO_COLOR", "1")
                .env("FACTSTORE_LOG", "warn")
                .env(
                    "README_TEST_HTTP_ERRORS",
                    if block.http_errors { "1" } else { "0" },
                )
                .envs(readme.env.iter().map(|(k, v)| (k, v)));
            let mut child = command.spawn().unwrap();
            self.groups.push(rustix::process::Pid::from_child(&child));
            let deadline = Instant::now() + BLOCK_DEADLINE;
            let status = loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break Some(status);
                }
                if Instant::now() > deadline {
                    break None;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
            let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            let report = |what: &str| {
                format!(
                    "{at}: {what}\n--- the block as run:\n{code}--- stdout:\n{stdout}\n--- stderr:\n{stderr}"
                )
            };
            match status {
                None => panic!("{}", report(&format!("still running after {BLOCK_DEADLINE:?}"))),
                Some(status) if !status.success() => panic!("{}", report(&format!("failed: {status}"))),
                Some(_) => {}
            }
            for expected in &block.expect_stdout {
                assert!(
                    stdout.contains(expected.as_str()),
                    "{}",
                    report(&format!("the output does not contain {expected}"))
                );
            }
            if block.starts_servers {
                for (_, port) in &readme.ports {
                    wait_for_port(*port, &report);
                }
                servers_up = true;
            }
            ran += 1;
        }
        assert!(servers_up, "{}: no block started the servers", readme.path);
        eprintln!("{}: {ran} blocks ran, {skipped} skipped", readme.path);
        // A block that stops running (marked skip, or no longer ```sh) should be a decision.
        assert!(
            ran >= readme.runnable,
            "{}: only {ran} blocks ran, {} are expected to: was a block marked skip?",
            readme.path,
            readme.runnable
        );
    }
}

fn wait_for_port(port: u16, report: &dyn Fn(&str) -> String) {
    let deadline = Instant::now() + START_DEADLINE;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{}",
            report(&format!(
                "nothing listens on port {port} after {START_DEADLINE:?}"
            ))
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_readme_runs_top_to_bottom() {
    let session_dir = tempfile::tempdir().unwrap();
    let cold = session_dir.path().join("cold");
    std::fs::create_dir_all(&cold).unwrap();
    // The quick start's `cargo run -- serve`, on a free port, and with cold storage, which the
    // archiving command of "From the shell" needs (as its text says).
    let server = ServeProcess::start(
        &session_dir.path().join("data"),
        &["--archive-url", &format!("file://{}", cold.display())],
    );
    let readme = Readme {
        path: "README.md",
        ports: vec![(6180, server.port)],
        env: vec![("FACTSTORE_URL".into(), server.url.clone())],
        binaries: Vec::new(),
        started_by_a_block: false,
        runnable: 5,
    };
    Session::new().run(&readme);
    drop(server);
}

/// An example README: its "Run it" block starts `factstore serve` and the service.
fn example(
    path: &'static str,
    runnable: usize,
    service_port: u16,
    listen_env: &str,
    binaries: Vec<(&'static str, PathBuf)>,
) {
    let (factstore, service) = (free_port(), free_port());
    let readme = Readme {
        path,
        ports: vec![(6180, factstore), (service_port, service)],
        env: vec![
            ("FACTSTORE_URL".into(), format!("http://127.0.0.1:{factstore}")),
            ("FACTSTORE_LISTEN".into(), format!("127.0.0.1:{factstore}")),
            (listen_env.into(), format!("127.0.0.1:{service}")),
        ],
        binaries,
        started_by_a_block: true,
        runnable,
    };
    Session::new().run(&readme);
}

#[test]
fn the_bank_example_readme_runs_top_to_bottom() {
    example(
        "examples/bank/README.md",
        18,
        8080,
        "BANK_LISTEN",
        vec![
            ("bank", example_binary("bank", "factstore-example-bank", "bank")),
            (
                "bank-receipts",
                example_binary("bank-receipts", "factstore-example-bank", "bank"),
            ),
        ],
    );
}

#[test]
fn the_orders_example_readme_runs_top_to_bottom() {
    example(
        "examples/orders/README.md",
        8,
        8081,
        "ORDERS_LISTEN",
        vec![(
            "orders",
            example_binary("orders", "factstore-example-orders", "orders"),
        )],
    );
}

#[test]
fn markers_apply_to_the_next_sh_block_and_nothing_else() {
    let text = "intro\n\
                <!-- readme-test: skip: builds -->\n\
                ```sh\ncargo build\n```\n\
                ```toml\n<!-- readme-test: skip: inside a fence is text -->\n```\n\
                <!-- readme-test: expect-http-errors -->\n\
                <!-- readme-test: expect-stdout-contains: \"code\":\"x\" -->\n\
                ```sh\ncurl a\ncurl b\n```\n\
                ```sh\necho\n```\n";
    let parsed = blocks(text).unwrap();
    let summary: Vec<_> = parsed
        .iter()
        .map(|b| {
            (
                b.line,
                b.code.as_str(),
                b.skip.as_deref(),
                b.expect_stdout.clone(),
                b.http_errors,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (3, "cargo build\n", Some("builds"), vec![], false),
            (
                11,
                "curl a\ncurl b\n",
                None,
                vec!["\"code\":\"x\"".to_owned()],
                true
            ),
            (15, "echo\n", None, vec![], false),
        ]
    );
    let errors: BTreeMap<&str, &str> = [
        (
            "<!-- readme-test: skip: x -->\ntext\n```sh\nx\n```\n",
            "right before",
        ),
        ("<!-- readme-test: skip: x -->\n```toml\nx\n```\n", "not ```sh"),
        ("<!-- readme-test: skip -->\n```sh\nx\n```\n", "needs a reason"),
        ("<!-- readme-test: run-twice -->\n```sh\nx\n```\n", "unknown"),
        (
            "<!-- readme-test: expect-http-errors -->\n```sh\nx\n```\n",
            "which errors",
        ),
        ("```sh\nx\n", "not closed"),
        ("<!-- readme-test: skip: x -->\n", "at the end"),
    ]
    .into_iter()
    .collect();
    for (text, expected) in errors {
        let error = blocks(text).expect_err(text);
        assert!(error.contains(expected), "{text}: {error}");
    }
}
