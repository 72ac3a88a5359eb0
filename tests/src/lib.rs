//! Test harness shared by Rouse's integration and end-to-end tests.
//!
//! - [`Emulator`]: a Pub/Sub endpoint on a free port, in its own process
//!   group, stopped by its process id when dropped (even when the test
//!   panics): Rouse's own broker (`rouse broker`) by default, the official
//!   emulator (`gcloud beta emulators pubsub start`) with
//!   `ROUSE_TEST_PUBSUB=emulator` or through [`Emulator::official`].
//! - [`Server`]: the real `rouse server` binary against an emulator, with its
//!   log captured; [`rouse`] runs a client command of the same binary.
//! - [`wait_until`]: tests wait for a state with a deadline, never sleep and
//!   then look.
//!
//! The binary is found next to the test executable (`target/<profile>/rouse`);
//! the Justfile's `test` recipe builds it before running the tests.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};

use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the emulator may take to answer after it was started (it takes
/// about 2 s on these machines; CI runners are slower and busy compiling).
const EMULATOR_START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `rouse server` may take to log that it is ready.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopped process may take to exit before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

fn signal(pid: u32, sig: &str, group: bool) {
    let target = if group {
        format!("-{pid}")
    } else {
        pid.to_string()
    };
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), "--", &target])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Waits for `child` to exit, up to `timeout`.
fn wait_for(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A Pub/Sub endpoint (Rouse's broker or the official emulator), running
/// until dropped.
pub struct Emulator {
    child: Child,
    host: String,
    official: bool,
    _dir: tempfile::TempDir,
    /// With `ROUSE_TEST_STORE=postgres`: the PostgreSQL server the test's
    /// `rouse server`s keep their state in (a database per data dir),
    /// stopped with the emulator at the end of the test.
    postgres: Option<postgres::Postgres>,
}

impl Emulator {
    /// Starts the Pub/Sub the tests run on (see the module documentation)
    /// and waits until it answers.
    pub fn start() -> Self {
        Self::start_keeping(None)
    }

    /// Like [`Emulator::start`], the state kept in `store` (what
    /// [`Emulator::stop`] handed back) when there is one: a Pub/Sub restart
    /// that the platform's own state outlives.
    pub fn start_keeping(store: Option<postgres::Postgres>) -> Self {
        let mut started = match std::env::var("ROUSE_TEST_PUBSUB").as_deref() {
            Ok("emulator") => Self::official(),
            Ok("broker") | Ok("") | Err(_) => Self::broker(),
            Ok(other) => panic!(
                "ROUSE_TEST_PUBSUB=`{other}`: use `broker` (Rouse's, the default) or `emulator` (the official one)"
            ),
        };
        if store.is_some() {
            started.postgres = store;
            return started;
        }
        started.postgres = match std::env::var("ROUSE_TEST_STORE").as_deref() {
            Ok("postgres") => Some(postgres::Postgres::start(false)),
            Ok("sqlite") | Ok("") | Err(_) => None,
            Ok(other) => panic!(
                "ROUSE_TEST_STORE=`{other}`: use `sqlite` (the default) or `postgres` (a PostgreSQL server of the test's own)"
            ),
        };
        started
    }

    /// The `--store` flag for a server with its state in `data_dir`: none
    /// (the SQLite file in the data dir), or a PostgreSQL database of the
    /// data dir's own, so servers sharing a data dir share the database.
    pub fn store_args(&self, data_dir: &Path) -> Vec<String> {
        match &self.postgres {
            Some(pg) => vec!["--store".into(), pg.database_for(data_dir)],
            None => Vec::new(),
        }
    }

    /// Whether servers started against this keep their state in PostgreSQL.
    pub fn on_postgres(&self) -> bool {
        self.postgres.is_some()
    }

    /// Rouse's broker (`rouse broker`), its store in a temporary directory.
    pub fn broker() -> Self {
        let dir = tempfile::tempdir().expect("broker data dir");
        let host = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.path().join("emulator.log")).expect("broker log");
        let child = Command::new(rouse_bin())
            .args([
                "broker",
                "--listen",
                &host,
                "--store",
                &dir.path().join("broker.db").display().to_string(),
            ])
            .env("RUST_LOG", "warn,rouse_broker=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run `rouse broker` ({e}); build the workspace first")
            });
        let mut broker = Self {
            child,
            host,
            official: false,
            _dir: dir,
            postgres: None,
        };
        broker.wait_ready();
        broker
    }

    /// Whether this is the official emulator (which ignores subscription
    /// filters and keeps nothing across a restart).
    pub fn is_official(&self) -> bool {
        self.official
    }

    /// The official emulator on a free port.
    pub fn official() -> Self {
        let dir = tempfile::tempdir().expect("emulator data dir");
        let port = free_port();
        let host = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("emulator.log")).expect("emulator log");
        let child = std::process::Command::new("gcloud")
            .args([
                "beta",
                "emulators",
                "pubsub",
                "start",
                &format!("--host-port={host}"),
                &format!("--data-dir={}", dir.path().display()),
                "--quiet",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            // Its own process group: gcloud runs the Java emulator as a child,
            // and stopping the group stops both.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run `gcloud beta emulators pubsub start` ({e}); the Google Cloud SDK with the Pub/Sub emulator must be installed (`.ci/setup` does it)")
            });
        let mut emulator = Self {
            child,
            host,
            official: true,
            _dir: dir,
            postgres: None,
        };
        emulator.wait_ready();
        emulator
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + EMULATOR_START_TIMEOUT;
        let addr: SocketAddr = self.host.parse().expect("socket address");
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the emulator exited at start ({status}):\n{}", self.log());
            }
            if answers_pubsub(&addr) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "the emulator did not listen on {} within {EMULATOR_START_TIMEOUT:?}:\n{}",
            self.host,
            self.log()
        );
    }

    /// The process id of `gcloud`, which leads the emulator's process group.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `HOST:PORT`, the value of `PUBSUB_EMULATOR_HOST`.
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("emulator.log")).unwrap_or_default()
    }

    /// Stops the Pub/Sub endpoint (the official emulator keeps no state:
    /// everything on it is lost). The platform's PostgreSQL, if the test
    /// runs on one, is handed back: keep it while servers still use it, and
    /// give it to [`Emulator::start_keeping`].
    #[must_use = "dropping the returned PostgreSQL stops it"]
    pub fn stop(mut self) -> Option<postgres::Postgres> {
        self.shutdown();
        self.postgres.take()
    }

    fn shutdown(&mut self) {
        let pid = self.child.id();
        signal(pid, "TERM", true);
        if wait_for(&mut self.child, STOP_GRACE).is_none() {
            signal(pid, "KILL", true);
            let _ = self.child.wait();
        }
        // The Java child may outlive gcloud by a moment; make sure it is gone.
        signal(pid, "KILL", true);
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// True when `addr` answers a Pub/Sub REST call with 200: listening alone is
/// not enough (the emulator binds its port before it serves, and a free port
/// may have been taken by another test's process meanwhile).
fn answers_pubsub(addr: &SocketAddr) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut stream) = TcpStream::connect_timeout(addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!(
        "GET /v1/projects/rouse-ready/topics?pageSize=1 HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

/// The `rouse` binary built for this test run.
pub fn rouse_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ROUSE_BIN") {
        return PathBuf::from(p);
    }
    // Test executables live in target/<profile>/deps, the binaries one level
    // up; the bench binary lives beside them.
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("target directory");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("target directory");
    }
    let bin = dir.join("rouse");
    assert!(
        bin.exists(),
        "{} does not exist: build it first with `cargo build -p rouse-cli` (`just test` does)",
        bin.display()
    );
    bin
}

/// What a finished `rouse` command printed.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Asserts success and returns stdout.
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "rouse failed: {}", self.stderr);
        &self.stdout
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.ok())
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{}", self.stdout))
    }
}

/// Runs `rouse ARGS` against `endpoint` with no stdin, no credentials (an
/// anonymous caller) and a clean environment for Rouse's own variables.
pub fn rouse(endpoint: &str, args: &[&str]) -> Output {
    rouse_as(endpoint, None, args)
}

/// Where no CLI configuration is: so that tests never read or write the
/// user's real `~/.config/rouse`.
const NO_CONFIG_HOME: &str = "/nonexistent/rouse-tests-config";

/// Runs `rouse ARGS` against `endpoint` with the key file `credentials`
/// (`None`: anonymous).
pub fn rouse_as(endpoint: &str, credentials: Option<&Path>, args: &[&str]) -> Output {
    let mut command = Command::new(rouse_bin());
    match credentials {
        Some(path) => command.env("ROUSE_CREDENTIALS", path),
        None => command.env_remove("ROUSE_CREDENTIALS"),
    };
    let out = command
        .args(args)
        .env("ROUSE_ENDPOINT", endpoint)
        .env("XDG_CONFIG_HOME", NO_CONFIG_HOME)
        .env_remove("ROUSE_PROJECT")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run rouse");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A running `rouse server`.
pub struct Server {
    child: Child,
    endpoint: String,
    webhooks: Option<String>,
    ingress: Option<String>,
    log: Arc<Mutex<String>>,
    owner_key: PathBuf,
}

impl Server {
    /// Starts `rouse server` on a free port with its state in `data_dir`,
    /// talking to `emulator`, and waits for its ready line. `extra` adds flags.
    pub fn start(emulator: &Emulator, data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_with_env(emulator, data_dir, extra, &[])
    }

    /// Like [`Self::start`], with `env` added to the server's environment.
    pub fn start_with_env(
        emulator: &Emulator,
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let store = match extra.contains(&"--store") {
            true => Vec::new(),
            false => emulator.store_args(data_dir),
        };
        let mut args: Vec<&str> = extra.to_vec();
        args.extend(store.iter().map(String::as_str));
        let server = Self::try_start_with_env(emulator.host(), data_dir, &args, env)
            .unwrap_or_else(|log| {
                panic!("rouse server did not become ready:\n{log}");
            });
        if !store.is_empty() {
            let log = server.log();
            assert!(
                log.contains("store=postgres://"),
                "the server was to keep its state in PostgreSQL:\n{log}"
            );
        }
        server
    }

    /// `rouse services create <name> --project <project>`: the new
    /// service (its `topic` among the rest).
    pub fn create_service(&self, project: &str, name: &str) -> serde_json::Value {
        self.rouse(&[
            "services",
            "create",
            name,
            "--project",
            project,
            "--format",
            "json",
        ])
        .json()
    }

    /// Creates service account `<name>@<project>.rouse` with a key written
    /// to `dir`; the key file.
    pub fn service_account(&self, dir: &Path, project: &str, name: &str) -> PathBuf {
        self.rouse(&[
            "iam",
            "service-accounts",
            "create",
            name,
            "--project",
            project,
        ])
        .ok();
        let file = dir.join(format!("{name}.json"));
        self.rouse(&[
            "iam",
            "service-accounts",
            "keys",
            "create",
            file.to_str().expect("utf-8 path"),
            &format!("--iam-account={name}@{project}.rouse"),
        ])
        .ok();
        file
    }

    /// Service `<project>/<name>` with the service settings `settings` (flags
    /// of `services update`) and a revision running the echo example with
    /// the process runtime (plus the revision flags `revision`); the
    /// service as created.
    pub fn echo_service(
        &self,
        project: &str,
        name: &str,
        settings: &[&str],
        revision: &[&str],
    ) -> serde_json::Value {
        let created = self.create_service(project, name);
        if !settings.is_empty() {
            let mut args = vec!["services", "update", name, "--project", project];
            args.extend_from_slice(settings);
            self.rouse(&args).ok();
        }
        self.echo_revision(project, name, revision);
        created
    }

    /// A new revision of `<project>/<name>` running the echo example with
    /// the process runtime (plus the revision flags `flags`); it serves.
    pub fn echo_revision(&self, project: &str, name: &str, flags: &[&str]) {
        let echo = workspace_bin("echo");
        let mut args = vec![
            "revisions",
            "create",
            name,
            "--project",
            project,
            "--command",
            echo.to_str().expect("utf-8 path"),
            "--workdir",
            "/tmp",
        ];
        args.extend_from_slice(flags);
        self.rouse(&args).ok();
    }

    /// `rouse executions get ID` as JSON.
    pub fn execution(&self, id: &str) -> serde_json::Value {
        self.rouse(&["executions", "get", id, "--format", "json"])
            .json()
    }

    /// [`Self::execution`] once it ended (succeeded, failed or cancelled),
    /// within 60 s.
    pub fn finished_execution(&self, id: &str) -> serde_json::Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let execution = self.execution(id);
            if matches!(
                execution["status"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            ) {
                return execution;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "execution {id} did not end: {execution}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Service `<project>/<name>` with a revision of `image` (and the
    /// revision flags `flags`, e.g. `--mode job`); its topic.
    pub fn image_service(&self, project: &str, name: &str, image: &str, flags: &[&str]) -> String {
        let service = self.create_service(project, name);
        let mut args = vec![
            "revisions",
            "create",
            name,
            "--project",
            project,
            "--image",
            image,
        ];
        args.extend_from_slice(flags);
        self.rouse(&args).ok();
        service["topic"].as_str().expect("topic").to_owned()
    }

    /// Like [`Self::start`]; on failure returns the server's log.
    pub fn try_start(pubsub_host: &str, data_dir: &Path, extra: &[&str]) -> Result<Self, String> {
        Self::try_start_with_env(pubsub_host, data_dir, extra, &[])
    }

    /// Like [`Self::try_start`], with `env` added to the server's environment.
    pub fn try_start_with_env(
        pubsub_host: &str,
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self, String> {
        // Each server its own webhook port, so that servers run side by side.
        let webhooks: &[&str] = if extra.iter().any(|a| a.starts_with("--webhook-listen")) {
            &[]
        } else {
            &["--webhook-listen", "127.0.0.1:0"]
        };
        let ingress: &[&str] = if extra.iter().any(|a| a.starts_with("--ingress-listen")) {
            &[]
        } else {
            &["--ingress-listen", "127.0.0.1:0"]
        };
        let mut child = Command::new(rouse_bin())
            .arg("server")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--api-listen", "127.0.0.1:0"])
            .args(webhooks)
            .args(ingress)
            .args(extra)
            .env("PUBSUB_EMULATOR_HOST", pubsub_host)
            // The owner's credentials go next to the data, not to the
            // user's real ~/.config/rouse.
            .env("XDG_CONFIG_HOME", data_dir.join("config"))
            .env("RUST_LOG", "warn,rouse=debug")
            .env_remove("ROUSE_LOG_FORMAT")
            .env_remove("ROUSE_CONFIG")
            .env_remove("GOOGLE_CLOUD_PROJECT")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn rouse server");
        let log = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // Logged first, so that the ready line is in the log when
                // the server is handed over.
                {
                    let mut l = sink.lock().expect("log lock");
                    l.push_str(&line);
                    l.push('\n');
                }
                if let Some(addr) = line
                    .contains("rouse server ready")
                    .then(|| field(&line, "api="))
                    .flatten()
                {
                    let _ =
                        ready_tx.send((addr, field(&line, "webhooks="), field(&line, "ingress=")));
                }
            }
        });
        let deadline = Instant::now() + SERVER_START_TIMEOUT;
        loop {
            match ready_rx.recv_timeout(Duration::from_millis(50)) {
                Ok((addr, webhooks, ingress)) => {
                    return Ok(Self {
                        child,
                        endpoint: format!("http://{addr}"),
                        webhooks: webhooks.filter(|w| w != "-").map(|w| format!("http://{w}")),
                        ingress: ingress.filter(|w| w != "-").map(|w| format!("http://{w}")),
                        log,
                        owner_key: data_dir.join("owner-key.json"),
                    });
                }
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                    if let Ok(Some(status)) = child.try_wait() {
                        std::thread::sleep(Duration::from_millis(100));
                        let log = log.lock().expect("log lock").clone();
                        return Err(format!("exited with {status}:\n{log}"));
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = log.lock().expect("log lock").clone();
                    return Err(format!(
                        "no ready line within {SERVER_START_TIMEOUT:?}:\n{log}"
                    ));
                }
            }
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Base URL of the builder's webhook server (`http://127.0.0.1:PORT`).
    /// `http://<ingress address>` (ingress role).
    pub fn ingress(&self) -> &str {
        self.ingress
            .as_deref()
            .unwrap_or_else(|| panic!("this server runs no ingress:\n{}", self.log()))
    }

    pub fn webhooks(&self) -> &str {
        self.webhooks
            .as_deref()
            .unwrap_or_else(|| panic!("this server runs no webhook server:\n{}", self.log()))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs a client command against this server as its owner (the key
    /// the server bootstrapped on its first start).
    pub fn rouse(&self, args: &[&str]) -> Output {
        rouse_as(&self.endpoint, Some(&self.owner_key), args)
    }

    /// Runs a client command as whoever `credentials` names (`None`: anonymous).
    pub fn rouse_as(&self, credentials: Option<&Path>, args: &[&str]) -> Output {
        rouse_as(&self.endpoint, credentials, args)
    }

    /// `rouse auth print-access-token` as the holder of `key` (`None`: the
    /// owner): a bearer token for HTTP calls.
    pub fn access_token(&self, key: Option<&Path>) -> String {
        let out = match key {
            Some(key) => self.rouse_as(Some(key), &["auth", "print-access-token"]),
            None => self.rouse(&["auth", "print-access-token"]),
        };
        assert_eq!(out.code, 0, "{out:?}");
        out.stdout.trim().to_owned()
    }

    /// The name of the revision serving `service` of `project` ("" if none).
    pub fn serving(&self, service: &str, project: &str) -> String {
        let list = self
            .rouse(&[
                "revisions",
                "list",
                service,
                "--project",
                project,
                "--format",
                "json",
            ])
            .json();
        list.as_array()
            .expect("a list")
            .iter()
            .find(|r| r["serving"] == true)
            .and_then(|r| r["name"].as_str())
            .unwrap_or_default()
            .to_owned()
    }

    /// The owner's key file.
    pub fn owner_key(&self) -> &Path {
        &self.owner_key
    }

    /// Lets askers without a token (stock Octue clients, the test asker) ask
    /// every service of `project`: `allUsers` gets `roles/serviceUser`.
    pub fn allow_anonymous_askers(&self, project: &str) {
        self.rouse(&[
            "projects",
            "add-iam-policy-binding",
            project,
            "--member=allUsers",
            "--role=roles/serviceUser",
        ])
        .ok();
    }

    /// Build `id` as `rouse builds describe` shows it.
    pub fn build(&self, id: &str) -> serde_json::Value {
        self.rouse(&["builds", "describe", id, "--format", "json"])
            .json()
    }

    /// Waits until build `id`'s status is one of `statuses` ([`BUILD_ENDED`]:
    /// any final one) and returns its record. After [`BUILD_TIMEOUT`] it
    /// panics with the status it was in and the logs of this server and of
    /// `others` (the other roles).
    pub fn wait_build(&self, id: &str, statuses: &[&str], others: &[&Server]) -> serde_json::Value {
        let begun = Instant::now();
        loop {
            let b = self.build(id);
            if statuses.contains(&b["status"].as_str().unwrap_or_default()) {
                return b;
            }
            if begun.elapsed() > BUILD_TIMEOUT {
                let logs: Vec<String> = std::iter::once(self)
                    .chain(others.iter().copied())
                    .map(Server::log)
                    .collect();
                panic!(
                    "build {id} still {} after {BUILD_TIMEOUT:?}, awaiting {statuses:?}:\n{}",
                    b["status"],
                    logs.join("\n---\n")
                );
            }
            std::thread::sleep(WAIT_POLL);
        }
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }

    /// SIGTERM, and waits for a clean exit.
    pub fn stop(mut self) -> ExitStatus {
        signal(self.child.id(), "TERM", false);
        let status = wait_for(&mut self.child, STOP_GRACE);
        status.unwrap_or_else(|| panic!("rouse server ignored SIGTERM:\n{}", self.log()))
    }

    /// SIGKILL: a crash, with no chance to clean up. Returns what the
    /// server logged until then.
    pub fn kill9(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.log()
    }
}

impl Drop for Server {
    /// A graceful stop, so that the server stops its instances; SIGKILL
    /// only if it does not exit in time.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal(self.child.id(), "TERM", false);
            if wait_for(&mut self.child, STOP_GRACE).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        remove_containers_of(self.child.id());
    }
}

/// Removes the local engine's containers that the server process `pid`
/// started (their `rouse.process` label is `host:pid:start`), for a server
/// that was killed or failed a test before stopping its instances; other
/// tests' containers are left alone.
fn remove_containers_of(pid: u32) {
    let pid = pid.to_string();
    echo_image::remove_containers(
        "label=managed-by=rouse",
        "{{.Label \"rouse.process\"}}",
        |process| process.rsplit(':').nth(1) == Some(pid.as_str()),
    );
}

/// The value of `key` (e.g. `api=`) in a log line, up to the next space.
fn field(line: &str, key: &str) -> Option<String> {
    let start = line.find(key)? + key.len();
    let rest = &line[start..];
    Some(rest.split_whitespace().next()?.to_owned())
}

/// The statuses a build ends in.
pub const BUILD_ENDED: &[&str] = &["succeeded", "failed", "cancelled", "superseded"];
/// How long a test build may take (a cold `docker build` on a busy 2-core
/// machine can take a minute).
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(240);

/// How often [`wait_until`] looks again: often enough not to add much to a
/// test, rarely enough that a check running a `rouse` command (~20 ms) does
/// not keep a core busy.
const WAIT_POLL: Duration = Duration::from_millis(100);

/// Waits for a state instead of sleeping and then looking: runs `check` until
/// it returns `Ok`, every [`WAIT_POLL`], and returns its value. After
/// `timeout` it panics with `what` and the last `Err` (what `check` saw), so
/// a failure says what was awaited and what was there instead.
pub async fn wait_until<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match check() {
            Ok(value) => return value,
            Err(seen) if tokio::time::Instant::now() >= deadline => {
                panic!("{what}: not within {timeout:?}; last seen: {seen}")
            }
            Err(_) => tokio::time::sleep(WAIT_POLL).await,
        }
    }
}

/// `promtool check metrics` (Debian's `prometheus`, which `.ci/setup`
/// installs) finds nothing wrong with `text`.
pub fn promtool_accepts(text: &str) {
    use std::io::Write as _;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (`.ci/setup` installs Debian's prometheus)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A binary of the workspace built for this test run (`echo`, …).
pub fn workspace_bin(name: &str) -> PathBuf {
    let bin = rouse_bin().with_file_name(name);
    assert!(
        bin.exists(),
        "{} does not exist: build the workspace first with `cargo build --workspace --all-targets` (`just test` does)",
        bin.display()
    );
    bin
}

pub mod asker;
pub mod cloud_run;
pub mod echo_image;
pub mod engines;
pub mod image_registry;
pub mod octue;
pub mod platform;
pub mod postgres;
pub mod pushes;

/// The main process of container `rouse-<instance>`.
pub fn container_pid(instance: &str) -> Result<u32, String> {
    let out = Command::new("docker")
        .args(["inspect", "--format", "{{.State.Pid}}"])
        .arg(format!("rouse-{instance}"))
        .output()
        .map_err(|e| format!("docker inspect: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|e| format!("docker inspect gave no pid for rouse-{instance}: {e}"))
}

/// Whether process `pid` is stopped (SIGSTOP) or in a frozen cgroup.
pub fn is_frozen(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let frozen_cgroup = cgroup.lines().any(|l| {
        let path = l.rsplit(':').next().unwrap_or_default();
        std::fs::read_to_string(format!("/sys/fs/cgroup{path}/cgroup.freeze"))
            .is_ok_and(|v| v.trim() == "1")
            || std::fs::read_to_string(format!("/sys/fs/cgroup/freezer{path}/freezer.state"))
                .is_ok_and(|v| v.trim() == "FROZEN")
    });
    state == Some(Some('T')) || frozen_cgroup
}
