//! A PostgreSQL server of the test's own: a fresh cluster (`initdb`) in a
//! temporary directory, `postgres` on a free loopback port, stopped by its
//! process id when dropped. Run as root, the server runs as the `postgres`
//! user (it refuses root), which owns the directory.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, signal, wait_for};

const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_GRACE: Duration = Duration::from_secs(10);

/// A running PostgreSQL server.
pub struct Postgres {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    durable: bool,
}

/// Where PostgreSQL's server programs are: `ROUSE_PG_BINDIR`, else the newest
/// `/usr/lib/postgresql/<version>/bin` (Debian's layout), else `PATH`.
pub fn bindir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("ROUSE_PG_BINDIR") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// The uid and gid to run the server as: ours, unless we are root.
fn run_as() -> Option<(u32, u32)> {
    if rustix::process::geteuid().is_root() {
        let passwd = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd");
        let entry = passwd
            .lines()
            .find(|l| l.starts_with("postgres:"))
            .expect("running as root, PostgreSQL needs the `postgres` user (Debian's `postgresql` package makes it; `.ci/setup` installs it)");
        let fields: Vec<&str> = entry.split(':').collect();
        Some((
            fields[2].parse().expect("postgres uid"),
            fields[3].parse().expect("postgres gid"),
        ))
    } else {
        None
    }
}

fn command(bin: &Path, program: &str, user: Option<(u32, u32)>) -> Command {
    let mut cmd = Command::new(bin.join(program));
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// `postgres` on `port` over the cluster in `dir/data`, its log appended to
/// `dir/postgres.log`.
fn spawn(bin: &Path, user: Option<(u32, u32)>, dir: &Path, port: u16, durable: bool) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("postgres.log"))
        .expect("postgres log");
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(dir.join("postgres.log"), Some(uid), Some(gid))
            .expect("chown log");
    }
    let mut cmd = command(bin, "postgres", user);
    cmd.arg("-D")
        .arg(dir.join("data"))
        .args(["-p", &port.to_string(), "-k"])
        .arg(dir)
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "max_connections=200",
        ]);
    if !durable {
        cmd.args(["-c", "fsync=off", "-c", "synchronous_commit=off"]);
    }
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .process_group(0)
        .spawn()
        .expect("run postgres")
}

impl Postgres {
    /// A new cluster, started and ready. `durable`: fsync as in production
    /// (the benchmark); the tests run without it.
    pub fn start(durable: bool) -> Self {
        let bin = bindir().expect(
            "PostgreSQL's server programs were not found under /usr/lib/postgresql (install Debian's `postgresql`; `.ci/setup` does it) or ROUSE_PG_BINDIR",
        );
        let user = run_as();
        let dir = tempfile::Builder::new()
            .prefix("rouse-pg-")
            .tempdir()
            .expect("postgres dir");
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown postgres dir");
        }
        let data = dir.path().join("data");
        let init = command(&bin, "initdb", user)
            .args(["-D"])
            .arg(&data)
            .args([
                "-U",
                "rouse",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run initdb");
        assert!(
            init.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let port = free_port();
        let mut server = Self {
            child: spawn(&bin, user, dir.path(), port, durable),
            port,
            dir,
            durable,
        };
        server.wait_ready(&bin, user);
        server
    }

    /// Stops the server (a fast shutdown: clients are disconnected) and
    /// starts it again on the same data and port, as a database restart or
    /// failover does to its clients.
    pub fn restart(&mut self) {
        self.shutdown();
        let bin = bindir().expect("PostgreSQL's programs");
        let user = run_as();
        self.child = spawn(&bin, user, self.dir.path(), self.port, self.durable);
        self.wait_ready(&bin, user);
    }

    fn wait_ready(&mut self, bin: &Path, user: Option<(u32, u32)>) {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("postgres exited at start ({status}):\n{}", self.log());
            }
            let ready = command(bin, "pg_isready", user)
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "postgres did not accept connections on port {} within {START_TIMEOUT:?}:\n{}",
            self.port,
            self.log()
        );
    }

    /// The URL of the cluster's `postgres` database.
    pub fn url(&self) -> String {
        self.database_url("postgres")
    }

    /// The URL of database `name` (see [`Postgres::create_database`]).
    pub fn database_url(&self, name: &str) -> String {
        format!("postgres://rouse@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates database `name` and returns its URL.
    pub async fn create_database(&self, name: &str) -> String {
        let (client, connection) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .expect("connect to the test postgres");
        let task = tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("create database");
        drop(client);
        let _ = task.await;
        self.database_url(name)
    }

    /// The URL of a database of `data_dir`'s own, created the first time
    /// (with `createdb`, so that it works inside or outside a runtime).
    pub fn database_for(&self, data_dir: &Path) -> String {
        use std::hash::{Hash as _, Hasher as _};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        data_dir.hash(&mut hasher);
        let name = format!("rouse_{:016x}", hasher.finish());
        let bin = bindir().expect("PostgreSQL's programs");
        let out = Command::new(bin.join("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "rouse",
                &name,
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run createdb");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() || stderr.contains("already exists"),
            "createdb {name} failed: {stderr}"
        );
        self.database_url(&name)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    fn shutdown(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = self.child.id();
        // SIGINT: PostgreSQL's fast shutdown (clients disconnected).
        signal(pid, "INT", false);
        if wait_for(&mut self.child, STOP_GRACE).is_none() {
            signal(pid, "KILL", true);
            let _ = self.child.wait();
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.shutdown();
    }
}
