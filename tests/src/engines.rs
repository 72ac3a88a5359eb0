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
    tcp: Option<String>,
    /// Its own bridge interface, deleted on drop.
    bridge: String,
}

impl DockerNode {
    /// Starts the engine and waits until it answers. Needs root (as the
    /// machine's own engine does).
    pub fn start() -> Self {
        Self::launch(false)
    }

    /// [`DockerNode::start`], the engine also listening for its API on a
    /// loopback TCP port, unencrypted ([`DockerNode::tcp_host`]).
    pub fn start_with_tcp() -> Self {
        Self::launch(true)
    }

    /// `tcp://127.0.0.1:<port>`, for an engine started with TCP.
    pub fn tcp_host(&self) -> Option<&str> {
        self.tcp.as_deref()
    }

    fn launch(tcp: bool) -> Self {
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
        // A bridge of its own: with `"bridge": "none"` dockerd deletes the
        // machine's `docker0`, the main engine's default network.
        let bridge = format!("rn{}", &name[name.len().saturating_sub(12)..])
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect::<String>();
        let made = Command::new("ip")
            .args(["link", "add", &bridge, "type", "bridge"])
            .status()
            .expect("ip (iproute2)");
        assert!(made.success(), "cannot make the node's bridge {bridge}");
        std::fs::write(
            &config,
            format!(
                r#"{{"bridge": "{bridge}", "iptables": false, "ip-masq": false, "ip-forward": false}}"#
            ),
        )
        .expect("daemon.json");
        let log = std::fs::File::create(dir.path().join("dockerd.log")).expect("dockerd.log");
        let tcp = tcp.then(|| format!("tcp://127.0.0.1:{}", free_port()));
        let mut command = Command::new("dockerd");
        if let Some(tcp) = &tcp {
            // Unencrypted on loopback: newer engines want that said.
            command.arg("--host").arg(tcp).arg("--tls=false");
        }
        let child = command
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
            tcp,
            bridge,
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

    /// The `rouse.port` labels of Rouse's containers on this engine,
    /// running or not ("" for one without).
    pub fn rouse_ports(&self) -> Vec<String> {
        let out = self.docker(&[
            "ps",
            "-a",
            "--filter",
            "label=managed-by=rouse",
            "--format",
            "{{.Label \"rouse.port\"}}",
        ]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
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
        let _ = Command::new("ip")
            .args(["link", "delete", &self.bridge])
            .status();
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
    /// A registry without authentication, on a port of its own.
    pub fn start() -> Self {
        Self::start_at(format!("127.0.0.1:{}", free_port()), None)
    }

    /// A registry at `addr` whose token server is Rouse: `realm` its
    /// `/v2/token` URL, `cert` the certificate Rouse keeps for it.
    pub fn start_with_token_auth(addr: String, realm: &str, cert: &Path) -> Self {
        Self::start_at(addr, Some((realm, cert)))
    }

    fn start_at(addr: String, token_auth: Option<(&str, &Path)>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("rouse-registry-")
            .tempdir()
            .expect("registry dir");
        let config = dir.path().join("config.yml");
        let auth = token_auth.map_or_else(String::new, |(realm, cert)| {
            format!(
                "auth:\n  token:\n    realm: {realm}\n    service: rouse-registry\n    issuer: rouse\n    rootcertbundle: {}\n",
                cert.display()
            )
        });
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n{auth}",
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

/// An OpenSSH server of the test's own on a loopback port (Debian's
/// `openssh-server`; the system's sshd is never used), letting in one key
/// made for it, with `DOCKER_HOST` set for its sessions so that `docker`
/// there (as `ssh … docker system dial-stdio` runs it) reaches `engine`.
/// Stopped by pid on drop.
pub struct Sshd {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Sshd {
    pub fn start(engine: &DockerNode) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("rouse-sshd-")
            .tempdir()
            .expect("sshd dir");
        for key in ["host_key", "client_key"] {
            let made = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(dir.path().join(key))
                .output()
                .expect("ssh-keygen (`.ci/setup` installs openssh-client)");
            assert!(made.status.success(), "{made:?}");
        }
        std::fs::copy(
            dir.path().join("client_key.pub"),
            dir.path().join("authorized_keys"),
        )
        .expect("authorized_keys");
        // Privilege separation wants its directory (systemd makes it).
        let _ = std::fs::create_dir_all("/run/sshd");
        let port = free_port();
        let config = dir.path().join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nPidFile {pid}\n\
                 AuthorizedKeysFile {keys}\nStrictModes no\nUsePAM no\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\nSetEnv DOCKER_HOST={engine}\n",
                host_key = dir.path().join("host_key").display(),
                pid = dir.path().join("sshd.pid").display(),
                keys = dir.path().join("authorized_keys").display(),
                engine = engine.docker_host(),
            ),
        )
        .expect("sshd_config");
        let log = std::fs::File::create(dir.path().join("sshd.log")).expect("sshd.log");
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("/usr/sbin/sshd (`.ci/setup` installs openssh-server)");
        let sshd = Self { child, port, dir };
        let deadline = Instant::now() + READY;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "sshd did not listen within {READY:?}:\n{}",
                sshd.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        sshd
    }

    /// `ssh://<user>@127.0.0.1:<port>`.
    pub fn docker_host(&self) -> String {
        let user = std::env::var("USER")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| {
                let out = Command::new("id").arg("-un").output().expect("id -un");
                String::from_utf8_lossy(&out.stdout).trim().to_owned()
            });
        format!("ssh://{user}@127.0.0.1:{}", self.port)
    }

    /// The `ROUSE_SSH_COMMAND` that logs in with the test's key and keeps
    /// the host key in the test's own file (never ~/.ssh).
    pub fn ssh_command(&self) -> String {
        format!(
            "ssh -F /dev/null -i {} -o IdentitiesOnly=yes -o UserKnownHostsFile={} -o StrictHostKeyChecking=accept-new",
            self.dir.path().join("client_key").display(),
            self.dir.path().join("known_hosts").display()
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        signal(self.child.id(), "TERM", false);
        if wait_for(&mut self.child, STOP_GRACE).is_none() {
            signal(self.child.id(), "KILL", false);
            let _ = self.child.wait();
        }
    }
}

/// Debian's `pebble` (Let's Encrypt's ACME test server) on loopback ports,
/// with `pebble-challtestsrv` as its DNS server: every name resolves to
/// 127.0.0.1, so the CA fetches HTTP-01 challenges from `http_port` there.
/// Both are stopped by pid on drop.
pub struct Pebble {
    pebble: Child,
    dns: Child,
    directory: String,
    management: u16,
    dir: tempfile::TempDir,
}

impl Pebble {
    /// Starts both; pebble serves its directory over HTTPS with `cert` and
    /// `key` (a certificate for 127.0.0.1 signed by a test CA of the
    /// caller's) and validates challenges on `http_port`.
    pub fn start(cert: &Path, key: &Path, http_port: u16) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("rouse-pebble-")
            .tempdir()
            .expect("pebble dir");
        let (dns_port, dns_management) = (free_port(), free_port());
        let dns_log = std::fs::File::create(dir.path().join("dns.log")).expect("dns.log");
        let dns = Command::new("pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-management", &format!("127.0.0.1:{dns_management}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdin(Stdio::null())
            .stdout(dns_log.try_clone().expect("log"))
            .stderr(dns_log)
            .spawn()
            .expect("pebble-challtestsrv (`.ci/setup` installs Debian's pebble)");
        let (port, management) = (free_port(), free_port());
        let config = dir.path().join("pebble.json");
        let json = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{port}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": cert,
            "privateKey": key,
            "httpPort": http_port,
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        std::fs::write(&config, json.to_string()).expect("pebble.json");
        let log = std::fs::File::create(dir.path().join("pebble.log")).expect("pebble.log");
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(&config)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            // No random sleep before validating, no nonces refused on purpose.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("pebble (`.ci/setup` installs Debian's pebble)");
        let pebble = Self {
            pebble,
            dns,
            directory: format!("https://127.0.0.1:{port}/dir"),
            management,
            dir,
        };
        let deadline = Instant::now() + READY;
        // The DNS server's management port stands for its DNS port (UDP).
        for port in [port, management, dns_management] {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "pebble did not listen within {READY:?}:\n{}",
                    pebble.log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        pebble
    }

    /// The ACME directory URL.
    pub fn directory(&self) -> &str {
        &self.directory
    }

    /// The management interface (`/roots/0`: the root the issued
    /// certificates chain to), over HTTPS with the caller's certificate.
    pub fn management(&self) -> String {
        format!("https://127.0.0.1:{}", self.management)
    }

    /// What pebble and its DNS server logged.
    pub fn log(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!(
            "pebble:\n{}\nchalltestsrv:\n{}",
            read("pebble.log"),
            read("dns.log")
        )
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in [&mut self.pebble, &mut self.dns] {
            signal(child.id(), "TERM", false);
            if wait_for(child, STOP_GRACE).is_none() {
                signal(child.id(), "KILL", false);
                let _ = child.wait();
            }
        }
    }
}
