//! A PostgreSQL server of a test's own, with TLS: `initdb` into a temporary folder, a CA and a
//! server certificate made for it, `postgres` started on a free loopback port, stopped (and
//! the folder removed) on drop.
//!
//! PostgreSQL refuses to run as root: as root (CI runs so), initdb and postgres run as the
//! `postgres` user. The binaries are the newest under /usr/lib/postgresql/*/bin, or those of
//! `FACTSTORE_PG_BINDIR`. When they cannot run here the test says why and returns, unless
//! `FACTSTORE_REQUIRE_PG=1`, which makes it fail.

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// The host name the server's certificate is made for (and only it).
pub const SERVER_NAME: &str = "db.factstore.test";

/// A running server of the test's own.
#[derive(Debug)]
pub struct Cluster {
    child: Child,
    dir: tempfile::TempDir,
    pub port: u16,
    /// The CA that signed the server's certificate (PEM).
    pub ca: PathBuf,
    /// A CA that signed nothing the server has (PEM).
    pub other_ca: PathBuf,
}

/// How the server is set up.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    /// `ssl = on`, with the certificate of [`SERVER_NAME`].
    pub ssl: bool,
    /// Only TLS connections are let in (`hostssl` lines alone in pg_hba.conf).
    pub tls_only: bool,
}

impl Cluster {
    /// Starts a server, or returns `None` having said why it cannot run here.
    pub fn start(setup: Setup) -> Option<Cluster> {
        let runner = match Runner::find() {
            Ok(runner) => runner,
            Err(why) => {
                if std::env::var("FACTSTORE_REQUIRE_PG").is_ok_and(|v| v == "1") {
                    panic!(
                        "a PostgreSQL server of the test's own is required (FACTSTORE_REQUIRE_PG=1): {why}"
                    );
                }
                let _ = writeln!(
                    std::io::stderr(),
                    "skipped: cannot run a PostgreSQL server here: {why}"
                );
                return None;
            }
        };
        let dir = tempfile::tempdir().expect("a temporary folder");
        runner.own(dir.path());
        let data = dir.path().join("data");
        runner.run(
            Command::new(runner.bin.join("initdb"))
                .arg("-D")
                .arg(&data)
                .args([
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ]),
            dir.path(),
        );

        let (ca, other_ca) = (dir.path().join("ca.pem"), dir.path().join("other-ca.pem"));
        let (ca_params, ca_key) = authority("factstore test CA");
        let (other_params, other_key) = authority("some other CA");
        std::fs::write(&ca, ca_params.self_signed(&ca_key).expect("the CA").pem()).expect("write");
        std::fs::write(
            &other_ca,
            other_params.self_signed(&other_key).expect("a CA").pem(),
        )
        .expect("write");
        let server_key = KeyPair::generate().expect("a key");
        let mut server = CertificateParams::new(vec![SERVER_NAME.to_owned()]).expect("params");
        server.distinguished_name.push(DnType::CommonName, SERVER_NAME);
        let issuer = Issuer::new(ca_params, ca_key);
        let server_cert = server
            .signed_by(&server_key, &issuer)
            .expect("the server's certificate");
        let (cert_file, key_file) = (data.join("server.crt"), data.join("server.key"));
        std::fs::write(&cert_file, server_cert.pem()).expect("write");
        std::fs::write(&key_file, server_key.serialize_pem()).expect("write");
        set_mode(&key_file, 0o600);
        runner.own(&cert_file);
        runner.own(&key_file);

        let hba = if setup.tls_only {
            "hostssl all all 127.0.0.1/32 trust\n"
        } else {
            "host all all 127.0.0.1/32 trust\n"
        };
        std::fs::write(data.join("pg_hba.conf"), format!("local all all trust\n{hba}")).expect("write");

        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let log = std::fs::File::create(dir.path().join("postgres.log")).expect("a log");
        runner.own(&dir.path().join("postgres.log"));
        let mut command = Command::new(runner.bin.join("postgres"));
        command
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", dir.path().display()))
            .args(["-c", &format!("ssl={}", if setup.ssl { "on" } else { "off" })])
            .args([
                "-c",
                "fsync=off",
                "-c",
                "max_connections=50",
                "-c",
                "shared_buffers=16MB",
            ])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        runner.as_owner(&mut command);
        let child = command.spawn().expect("start postgres");
        let mut cluster = Cluster {
            child,
            dir,
            port,
            ca,
            other_ca,
        };
        cluster.wait_ready(&runner.bin);
        Some(cluster)
    }

    fn wait_ready(&mut self, bin: &Path) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = Command::new(bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string(), "-t", "1"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("postgres exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not accept connections within 60 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What the server logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// A URL of this server's `postgres` database, with `params` (`sslmode=…&…`).
    pub fn url(&self, host: &str, params: &str) -> String {
        format!("postgres://postgres@{host}:{}/postgres?{params}", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SIGINT: PostgreSQL's fast shutdown (sessions ended, no checkpoint wait).
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA's parameters and key.
fn authority(name: &str) -> (CertificateParams, KeyPair) {
    let key = KeyPair::generate().expect("a key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    (params, key)
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Who runs PostgreSQL's programs, and where they are.
struct Runner {
    bin: PathBuf,
    /// The user and group to run as (`postgres`), when this process is root.
    owner: Option<(u32, u32)>,
}

impl Runner {
    fn find() -> Result<Runner, String> {
        let bin = match std::env::var_os("FACTSTORE_PG_BINDIR") {
            Some(dir) => PathBuf::from(dir),
            None => newest_bindir()?,
        };
        for program in ["initdb", "postgres", "pg_isready"] {
            if !bin.join(program).is_file() {
                return Err(format!("no {program} in {}", bin.display()));
            }
        }
        let owner = if id(&[])? == 0 {
            let uid =
                id(&["-u", "postgres"]).map_err(|e| format!("running as root, and no postgres user: {e}"))?;
            let gid = id(&["-g", "postgres"])?;
            Some((uid, gid))
        } else {
            None
        };
        Ok(Runner { bin, owner })
    }

    /// Gives `path` to the user PostgreSQL runs as.
    fn own(&self, path: &Path) {
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to postgres");
        }
    }

    fn as_owner(&self, command: &mut Command) {
        if let Some((uid, gid)) = self.owner {
            command.uid(uid).gid(gid).env("HOME", "/tmp");
        }
    }

    fn run(&self, command: &mut Command, cwd: &Path) {
        command.current_dir(cwd);
        self.as_owner(command);
        let output = command.output().expect("run a PostgreSQL program");
        assert!(
            output.status.success(),
            "{command:?} failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

fn newest_bindir() -> Result<PathBuf, String> {
    let versions = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| format!("no PostgreSQL under /usr/lib/postgresql ({e}); set FACTSTORE_PG_BINDIR"))?;
    versions
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .max()
        .map(|(_, bin)| bin)
        .ok_or_else(|| "no PostgreSQL version under /usr/lib/postgresql; set FACTSTORE_PG_BINDIR".to_owned())
}

/// `id` with `args`: a user or group id.
fn id(args: &[&str]) -> Result<u32, String> {
    let args = if args.is_empty() { &["-u"][..] } else { args };
    let output = Command::new("id")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run id: {e}"))?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).trim().to_owned());
    }
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .map_err(|e| format!("id printed no number: {e}"))
}
