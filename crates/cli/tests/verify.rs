//! `factstore verify` on the folder of a running server: refused, since what it would check
//! changes under it; once the server is gone the same command checks the folder.

use std::process::Command;

mod common;
use common::{BIN, ServeProcess, assert_verify_ok};

#[test]
fn verify_refuses_a_folder_a_running_server_holds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServeProcess::start(dir.path(), &[]);
    let output = Command::new(BIN)
        .args(["verify", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("run factstore verify");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("in use by a running factstore server") && stderr.contains("stop it first"),
        "{stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains("ok"),
        "nothing is reported as checked"
    );
    server.kill();
    assert_verify_ok(dir.path());
}
