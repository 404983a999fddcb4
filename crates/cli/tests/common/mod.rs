//! A `factstore serve` process for the tests that run the binary.
#![allow(dead_code)] // each test binary uses a part of it

pub mod kill;
pub mod pg;

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_factstore");

/// `factstore serve` on a free loopback port, killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct ServeProcess {
    pub child: Child,
    pub port: u16,
    pub url: String,
}

impl ServeProcess {
    /// Starts the server over `data_dir` with `extra` arguments and waits until it accepts
    /// connections (it binds its listener only once the store is open).
    pub fn start(data_dir: &Path, extra: &[&str]) -> ServeProcess {
        ServeProcess::start_with_env(data_dir, extra, &[])
    }

    /// [`ServeProcess::start`] with variables added to the server's environment.
    pub fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(String, String)]) -> ServeProcess {
        let port = free_port();
        let child = Command::new(BIN)
            .args(["serve", "--data-dir"])
            .arg(data_dir)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("FACTSTORE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start factstore serve");
        let server = ServeProcess {
            child,
            port,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the server did not start within 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `factstore verify` on a stopped store's folder and fails the test on any problem.
pub fn assert_verify_ok(data_dir: &Path) {
    let verify = Command::new(BIN)
        .args(["verify", "--data-dir"])
        .arg(data_dir)
        .output()
        .expect("run factstore verify");
    assert!(
        verify.status.success(),
        "factstore verify found problems:\n{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

/// A loopback port nothing listens on (at the moment of asking).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}
