//! Real parts for nodes: a second Docker engine of the test's own (its own
//! config file, socket, data root and exec root, no bridge or iptables of
//! its own: instances use the host network), and Debian's `docker-registry`
//! on a loopback port. Both are stopped by pid on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, signal, wait_for};

const READY: Duration = Duration::from_secs(30);
const STOP_GRACE: Duration = Duration::from_secs(20);

/// A second `dockerd`.
pub struct DockerNode {
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl DockerNode {
    /// Starts the engine and waits until it answers. Needs root (as the
    /// machine's own engine does).
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("rouse-node-")
            .tempdir()
            .expect("node dir");
        let name = dir
            .path()
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("rouse-node")
            .to_owned();
        let config = dir.path().join("daemon.json");
        std::fs::write(
            &config,
            r#"{"bridge": "none", "iptables": false, "ip-masq": false, "ip-forward": false}"#,
        )
        .expect("daemon.json");
        let log = std::fs::File::create(dir.path().join("dockerd.log")).expect("dockerd.log");
        let child = Command::new("dockerd")
            .arg("--config-file")
            .arg(&config)
            .arg("--host")
            .arg(format!(
                "unix://{}",
                dir.path().join("docker.sock").display()
            ))
            .arg("--data-root")
            .arg(dir.path().join("data"))
            .arg("--exec-root")
            .arg(dir.path().join("exec"))
            .arg("--pidfile")
            .arg(dir.path().join("docker.pid"))
            // Its own containerd namespaces: the machine's engine may share
            // the system containerd.
            .args(["--containerd-namespace", &name])
            .args(["--containerd-plugins-namespace", &format!("{name}-plugins")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("dockerd (Debian's docker.io) is needed for the nodes tests");
        let node = Self {
            child: Some(child),
            dir,
        };
        let deadline = Instant::now() + READY;
        while !node.answers() {
            assert!(
                Instant::now() < deadline,
                "the second dockerd did not answer within {READY:?}:\n{}",
                node.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        node
    }

    /// `unix:///…/docker.sock`.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("docker.sock")
    }

    /// `docker` against this engine.
    pub fn docker(&self, args: &[&str]) -> std::process::Output {
        Command::new("docker")
            .arg("-H")
            .arg(self.docker_host())
            .args(args)
            .output()
            .expect("docker CLI")
    }

    fn answers(&self) -> bool {
        self.socket().exists() && self.docker(&["version"]).status.success()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// Rouse's containers running on this engine.
    pub fn rouse_containers(&self) -> usize {
        let out = self.docker(&["ps", "-q", "--filter", "label=managed-by=rouse"]);
        String::from_utf8_lossy(&out.stdout).lines().count()
    }

    /// Stops the engine (SIGTERM, as `systemctl stop docker` does; it
    /// stops its containers), waits for it, and unmounts what it left
    /// under its roots (network namespaces, overlays).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        signal(child.id(), "TERM", false);
        if wait_for(&mut child, STOP_GRACE).is_none() {
            signal(child.id(), "KILL", false);
            let _ = child.wait();
        }
        unmount_under(self.dir.path());
    }
}

impl Drop for DockerNode {
    fn drop(&mut self) {
        if self.child.is_some() {
            // Containers first, so that nothing outlives the test.
            let listed = self.docker(&["ps", "-aq"]);
            let listed = String::from_utf8_lossy(&listed.stdout).to_string();
            let ids: Vec<&str> = listed.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids);
                let _ = self.docker(&args);
            }
        }
        self.stop();
    }
}

/// Unmounts every mount under `root`, deepest first.
fn unmount_under(root: &Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    let root = root.to_string_lossy().into_owned();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|p| p.starts_with(&root))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in points {
        let _ = Command::new("umount").arg("-l").arg(point).output();
    }
}

/// Debian's `docker-registry` on a loopback port (HTTP: engines treat
/// 127.0.0.0/8 registries as insecure by default, so no TLS is needed).
pub struct Registry {
    child: Child,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("rouse-registry-")
            .tempdir()
            .expect("registry dir");
        let addr = format!("127.0.0.1:{}", free_port());
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.path().join("data").display()
            ),
        )
        .expect("config.yml");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("Debian's docker-registry is needed (`.ci/setup` installs it)");
        let registry = Self {
            child,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + READY;
        while std::net::TcpStream::connect(&registry.addr).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        signal(self.child.id(), "TERM", false);
        if wait_for(&mut self.child, STOP_GRACE).is_none() {
            signal(self.child.id(), "KILL", false);
            let _ = self.child.wait();
        }
    }
}
