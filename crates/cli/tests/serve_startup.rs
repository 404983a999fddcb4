//! What `factstore serve` leaves behind and writes when it starts, on the real binary: log
//! lines without colour codes when stderr is not a terminal, each error's text once, and no
//! data folder after a start that failed on a taken port.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{BIN, free_port};

/// `factstore serve` expected to fail; its stderr.
fn failed_start(data_dir: &Path, args: &[&str]) -> String {
    let output: Output = Command::new(BIN)
        .arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env("FACTSTORE_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .expect("run factstore serve");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "it started:\n{stderr}");
    stderr
}

#[test]
fn logs_written_to_a_file_carry_no_colour_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("serve.log");
    let port = free_port();
    let mut child = Command::new(BIN)
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("FACTSTORE_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("the log file"))
        .spawn()
        .expect("start factstore serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("factstore listening") {
            break text;
        }
        if Instant::now() > deadline || child.try_wait().is_ok_and(|s| s.is_some()) {
            let _ = child.kill();
            panic!("the server did not say it listens:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(!text.contains('\u{1b}'), "escape codes in a log file:\n{text:?}");
    assert!(text.contains(" INFO "), "{text}");
}

#[test]
fn a_data_folder_in_use_is_said_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let _first = common::ServeProcess::start(&data, &[]);
    let stderr = failed_start(&data, &["--listen", &format!("127.0.0.1:{}", free_port())]);
    assert_eq!(
        stderr.matches("in use by another factstore process").count(),
        1,
        "{stderr}"
    );
}

#[test]
fn an_unreachable_postgres_is_said_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Nothing listens on a free port: the connection is refused at once.
    let url = format!("postgres://postgres@127.0.0.1:{}/none", free_port());
    let stderr = failed_start(
        &dir.path().join("data"),
        &[
            "--storage",
            &url,
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
        ],
    );
    assert!(stderr.contains("cannot open the store on PostgreSQL"), "{stderr}");
    assert_eq!(stderr.matches("Connection refused").count(), 1, "{stderr}");
    assert_eq!(
        stderr.matches("error connecting to server").count(),
        1,
        "{stderr}"
    );
}

#[test]
fn a_taken_port_leaves_no_data_folder_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = taken.local_addr().expect("address").to_string();
    let data = dir.path().join("data");
    let stderr = failed_start(&data, &["--listen", &address]);
    assert!(
        stderr.contains(&format!("cannot listen on {address}")),
        "{stderr}"
    );
    assert!(!data.exists(), "the failed start left {} behind", data.display());
    drop(taken);
}
