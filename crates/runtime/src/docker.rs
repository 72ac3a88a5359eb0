//! [`DockerRuntime`]: instances as containers in the local Docker engine.
//!
//! A container is named `rouse-<instance id>` and labelled
//! `managed-by=rouse` and `rouse.instance=<id>` (plus `rouse.owner=<owner>`
//! when the runtime has one), so that [`DockerRuntime::remove_stale`] can
//! clean up after a crash. It runs with Docker's init (`--init`) as PID 1,
//! so that `docker stop`'s SIGTERM reaches servers that install no signal
//! handler (PID 1 ignores unhandled signals) and zombies are reaped. Images
//! are never pulled: they are built or loaded locally.
//!
//! # Networking: the host's
//!
//! Containers run in the host's network namespace (`--network host`), as
//! host processes of the process runtime do, and for the same reasons:
//!
//! - **Everything local is reachable.** Instances are told
//!   `PUBSUB_EMULATOR_HOST=127.0.0.1:<port>`; in a bridge network that is
//!   the container itself, and the host's bridge address does not help
//!   either, since the emulator listens on loopback only. With the host's
//!   network, an Octue service in a container publishes its own events.
//! - **Readiness is exact and cold starts are short.** A listening instance
//!   gets `PORT=<p>`, a port found free on `127.0.0.1` just before the start
//!   (the instance binds it itself; another process taking it in between
//!   makes the start fail, visibly), and [`Instance::addr`] is
//!   `127.0.0.1:<p>`. Nothing is published: no userland proxy accepts
//!   connections for a server that is not listening yet, so a plain connect
//!   (or HTTP GET) is the readiness probe, and starting needs no inspection
//!   of the container to learn its port. No bridge endpoint or NAT rules are
//!   set up either, which was about half of a container's start-to-ready.
//!
//! The price is isolation: an instance sees every port on the host, and one
//! that listens on `0.0.0.0` (as most servers do) is reachable from other
//! machines unless a firewall says otherwise: as with the process runtime.
//! Host networking needs an engine that shares the platform's network
//! namespace: a rootful engine on the same Linux host. Rootless engines and
//! Docker Desktop run containers in another namespace (a user-mode network
//! or a VM), where `127.0.0.1` is not the platform's loopback; instances
//! there never become ready.
//!
//! Output is followed through the engine's log API into the log file; a wait
//! on the container yields its exit; stopping is `docker stop` then a forced
//! removal (with its anonymous volumes).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, ListContainersOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
    WaitContainerOptionsBuilder,
};
use bollard::{ClientVersion, Docker};
use futures::StreamExt;
use tokio::sync::watch;

use crate::instance::{self, Instance, Parts};
use crate::logs::{self, LogWriter};
use crate::nodes::DockerHost;
use crate::process::signal_name;
use crate::{ExitInfo, InstanceSpec, Runtime, RuntimeError, Source, validate_instance_id};

/// The port a service image conventionally listens on when `PORT` is unset
/// (Cloud Run's default, and the echo example's). Containers share the
/// host's network, so Rouse always sets `PORT` to a free host port instead.
pub const CONTAINER_PORT: u16 = 8080;
/// Label on every container Rouse starts.
pub const MANAGED_BY_LABEL: &str = "managed-by";
/// Its value.
pub const MANAGED_BY: &str = "rouse";
/// Label carrying the instance id.
pub const INSTANCE_LABEL: &str = "rouse.instance";
/// Label carrying the runtime's owner (see [`DockerRuntime::with_owner`]).
pub const OWNER_LABEL: &str = "rouse.owner";
/// The process that started a container (`host:pid:start`, see
/// [`crate::holder`]): a restarted peer leaves a live one's containers alone.
pub const PROCESS_LABEL: &str = "rouse.process";
/// On a node reached over the network: the host port the instance listens
/// on, so that two instances (started by any dispatcher) never share one.
pub const PORT_LABEL: &str = "rouse.port";
/// The host ports instances on a node reached over the network listen on:
/// Kubernetes' NodePort range, which operators already keep free.
pub const NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;
/// Ports tried before a start on such a node gives up.
const PORT_ATTEMPTS: u32 = 8;

const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// Bound on the start-up check of the engine: a local socket answers in
/// milliseconds; a hung engine must not hang the platform's start.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on the engine's answer to one request (headers; streams such as
/// logs are not cut). Creating a container from a large image takes seconds.
const REQUEST_TIMEOUT_SECS: u64 = 120;
/// `docker stop` waits for the grace period inside one request, so the grace
/// is capped below the request timeout.
const MAX_GRACE_SECS: u64 = 100;
/// As for processes: how long the exit waits for the last output to reach
/// the log, so errors quoting it are complete.
const LOG_DRAIN_TIMEOUT: Duration = Duration::from_millis(250);
/// How long `stop` waits for the exit to be seen after the removal.
const EXIT_WAIT: Duration = Duration::from_secs(5);
/// When the wait on a container breaks off (engine restart), it is asked
/// again after this pause, and given up after this many failures in a row.
const WAIT_RETRY: Duration = Duration::from_millis(500);
const WAIT_MAX_FAILURES: u32 = 20;

/// Runs instances as containers of the local Docker engine. Runs
/// [`Source::Image`] only.
#[derive(Debug, Clone)]
pub struct DockerRuntime {
    docker: Docker,
    owner: Option<String>,
    /// For an engine on another machine (`tcp://`, `ssh://`): the address
    /// its instances are reached at. `None`: this machine's loopback.
    node_ip: Option<IpAddr>,
}

impl DockerRuntime {
    /// Connects to the local engine (`$DOCKER_HOST` if it is a `unix://`
    /// socket, else `/var/run/docker.sock`) and checks that it answers,
    /// agreeing on the API version. Blocks for at most 5 seconds: call it at
    /// start-up.
    pub fn connect() -> Result<Self, RuntimeError> {
        let socket = std::env::var("DOCKER_HOST")
            .ok()
            .and_then(|host| host.strip_prefix("unix://").map(str::to_owned))
            .unwrap_or_else(|| DEFAULT_SOCKET.to_owned());
        Self::connect_to(&socket)
    }

    /// As [`connect`](Self::connect), to the engine listening on the unix
    /// socket at `socket` (a path, or `unix://<path>`).
    pub fn connect_to(socket: &str) -> Result<Self, RuntimeError> {
        let socket = socket.strip_prefix("unix://").unwrap_or(socket).to_owned();
        let unreachable = |reason: String| RuntimeError::EngineUnreachable {
            socket: socket.clone(),
            reason,
        };
        let engine_version = engine_api_version(&socket).map_err(unreachable)?;
        let version = if engine_version < *bollard::API_DEFAULT_VERSION {
            engine_version
        } else {
            *bollard::API_DEFAULT_VERSION
        };
        let docker = Docker::connect_with_unix(&socket, REQUEST_TIMEOUT_SECS, &version)
            .map_err(|err| unreachable(err.to_string()))?;
        tracing::debug!(%socket, api = %version, "connected to the Docker engine");
        Ok(Self {
            docker,
            owner: None,
            node_ip: None,
        })
    }

    /// Connects to the engine at `host` (see [`crate::nodes::DockerHost`])
    /// and checks that it answers, agreeing on the API version. An engine
    /// on another machine (`tcp://`, `ssh://`) has its instances reached at
    /// the host's address, on ports from [`NODE_PORTS`].
    pub async fn connect_host(host: &DockerHost) -> Result<Self, RuntimeError> {
        let unreachable = |reason: String| RuntimeError::EngineUnreachable {
            socket: host.to_string(),
            reason,
        };
        let (docker, ip) = match host {
            DockerHost::Unix(path) => {
                let path = path.clone();
                return tokio::task::spawn_blocking(move || Self::connect_to(&path))
                    .await
                    .map_err(|e| unreachable(e.to_string()))?;
            }
            DockerHost::Tcp { host: name, port } => {
                let docker = Docker::connect_with_http(
                    &format!("tcp://{}:{port}", bracketed(name)),
                    REQUEST_TIMEOUT_SECS,
                    bollard::API_DEFAULT_VERSION,
                )
                .map_err(|e| unreachable(e.to_string()))?;
                let docker = tokio::time::timeout(CONNECT_TIMEOUT, docker.negotiate_version())
                    .await
                    .map_err(|_| unreachable(format!("no answer within {CONNECT_TIMEOUT:?}")))?
                    .map_err(|e| unreachable(e.to_string()))?;
                (docker, resolve(name).await.map_err(unreachable)?)
            }
            DockerHost::Ssh(target) => {
                let docker = target
                    .connect(REQUEST_TIMEOUT_SECS)
                    .await
                    .map_err(unreachable)?;
                (docker, resolve(&target.host).await.map_err(unreachable)?)
            }
        };
        tracing::debug!(engine = %host, %ip, "connected to a node's Docker engine");
        Ok(Self {
            docker,
            owner: None,
            node_ip: Some(ip),
        })
    }

    /// Labels the containers this runtime starts with `rouse.owner=<owner>`
    /// and limits [`remove_stale`](Self::remove_stale) to them, so that
    /// several platforms (or test runs) can share one engine.
    pub fn with_owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// The instance ids of Rouse's running containers on this engine,
    /// whoever started them.
    pub async fn running_instances(&self) -> Result<Vec<String>, RuntimeError> {
        let containers = self
            .containers(vec![format!("{MANAGED_BY_LABEL}={MANAGED_BY}")], false)
            .await?;
        Ok(containers
            .into_iter()
            .filter_map(|c| c.labels?.get(INSTANCE_LABEL).cloned())
            .collect())
    }

    /// The containers with every label of `labels` (`all`: stopped ones too).
    async fn containers(
        &self,
        labels: Vec<String>,
        all: bool,
    ) -> Result<Vec<bollard::models::ContainerSummary>, RuntimeError> {
        let target = labels.join(",");
        let options = ListContainersOptionsBuilder::default()
            .all(all)
            .filters(&HashMap::from([("label".to_owned(), labels)]))
            .build();
        self.docker
            .list_containers(Some(options))
            .await
            .map_err(|source| RuntimeError::Docker {
                action: "list",
                target: format!("containers labelled {target}"),
                source,
            })
    }

    /// Pulls `image` (from the registry its name starts with).
    async fn pull(&self, image: &str) -> Result<(), DockerError> {
        let (from, tag) = match image.rsplit_once(':') {
            Some((from, tag)) if !tag.contains('/') => (from, tag),
            _ => (image, "latest"),
        };
        let options = bollard::query_parameters::CreateImageOptionsBuilder::default()
            .from_image(from)
            .tag(tag)
            .build();
        let mut progress = self.docker.create_image(Some(options), None, None);
        while let Some(step) = progress.next().await {
            step?;
        }
        Ok(())
    }

    /// Creates `container`, pulling its image first where it comes from a
    /// registry and is not on this engine yet.
    async fn create(
        &self,
        container: &str,
        image: &str,
        body: ContainerCreateBody,
    ) -> Result<(), RuntimeError> {
        let options = CreateContainerOptionsBuilder::default()
            .name(container)
            .build();
        let mut created = self
            .docker
            .create_container(Some(options.clone()), body.clone())
            .await;
        if let Err(DockerError::DockerResponseServerError {
            status_code: 404, ..
        }) = &created
            && from_registry(image)
        {
            // Not here yet: the registry the builder pushes to has it.
            match self.pull(image).await {
                Ok(()) => created = self.docker.create_container(Some(options), body).await,
                Err(e) => tracing::warn!(%image, error = %e, "cannot pull the image"),
            }
        }
        match created {
            Ok(_) => Ok(()),
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => Err(RuntimeError::ImageNotFound {
                image: image.to_owned(),
            }),
            Err(DockerError::DockerResponseServerError {
                status_code: 409, ..
            }) => Err(RuntimeError::ContainerExists {
                container: container.to_owned(),
            }),
            Err(source) => Err(RuntimeError::Docker {
                action: "create",
                target: container.to_owned(),
                source,
            }),
        }
    }

    /// A port of [`NODE_PORTS`] no instance on this node has: a random
    /// place in the range, then the next port up that is free of Rouse's
    /// containers.
    async fn node_port(&self, instance_id: &str, attempt: u32) -> Result<u16, RuntimeError> {
        let used: std::collections::HashSet<u16> = self
            .containers(vec![format!("{MANAGED_BY_LABEL}={MANAGED_BY}")], true)
            .await?
            .into_iter()
            .filter_map(|c| c.labels?.get(PORT_LABEL)?.parse().ok())
            .collect();
        let span = u32::from(NODE_PORTS.end() - NODE_PORTS.start()) + 1;
        // A random place, different for each instance and attempt.
        let random = std::hash::BuildHasher::hash_one(
            &std::collections::hash_map::RandomState::new(),
            (instance_id, attempt),
        );
        let start = u32::try_from(random % u64::from(span)).unwrap_or(0);
        (0..span)
            .map(|i| {
                let offset = u16::try_from((start + i) % span).unwrap_or(0);
                NODE_PORTS.start() + offset
            })
            .find(|p| !used.contains(p))
            .ok_or_else(|| {
                RuntimeError::Port(std::io::Error::other(format!(
                    "every port of {}-{} on the node has an instance",
                    NODE_PORTS.start(),
                    NODE_PORTS.end()
                )))
            })
    }

    /// Whether another live container on this node was given `port` before
    /// `container` was (creation time to the nanosecond, then id): then it
    /// keeps the port. Every dispatcher that checks sees the same order.
    async fn port_taken(&self, container: &str, port: u16) -> Result<bool, RuntimeError> {
        let others = self
            .containers(vec![format!("{PORT_LABEL}={port}")], true)
            .await?;
        let ours = self.created(container).await?;
        for other in others {
            let Some(id) = other.id else { continue };
            if id == ours.1 {
                continue;
            }
            let ended = matches!(
                other.state,
                Some(
                    bollard::models::ContainerSummaryStateEnum::EXITED
                        | bollard::models::ContainerSummaryStateEnum::DEAD
                        | bollard::models::ContainerSummaryStateEnum::REMOVING
                )
            );
            if ended {
                continue;
            }
            match self.created(&id).await {
                Ok(theirs) if theirs < ours => return Ok(true),
                Ok(_) => {}
                // Removed since the listing: it no longer holds the port.
                Err(RuntimeError::Docker {
                    source:
                        DockerError::DockerResponseServerError {
                            status_code: 404, ..
                        },
                    ..
                }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    /// A container's creation time (nanoseconds since the epoch) and id.
    async fn created(&self, container: &str) -> Result<(u128, String), RuntimeError> {
        let inspected = self
            .docker
            .inspect_container(container, None::<InspectContainerOptions>)
            .await
            .map_err(|source| RuntimeError::Docker {
                action: "inspect",
                target: container.to_owned(),
                source,
            })?;
        let at = inspected
            .created
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339(t).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        Ok((at, inspected.id.unwrap_or_default()))
    }

    /// The name of the container of an instance.
    pub fn container_name(instance_id: &str) -> String {
        format!("rouse-{instance_id}")
    }

    /// Force-removes, running or not, every container this runtime could
    /// have started: labelled `managed-by=rouse` and with this runtime's
    /// owner (or, for a runtime without one, with no owner label). That is
    /// what a crashed platform left behind; call it at start-up, before
    /// starting anything. Containers started by another process of this
    /// machine that still runs (a peer dispatcher on the same data dir) are
    /// left alone. Returns how many were removed; tries them all before
    /// reporting the first failure.
    pub async fn remove_stale(&self) -> Result<usize, RuntimeError> {
        let mut labels = vec![format!("{MANAGED_BY_LABEL}={MANAGED_BY}")];
        if let Some(owner) = &self.owner {
            labels.push(format!("{OWNER_LABEL}={owner}"));
        }
        let target = labels.join(",");
        let containers = self.containers(labels, true).await?;
        let mut removed = 0;
        let mut first_error = None;
        for id in containers
            .into_iter()
            .filter(|c| owned_by(c.labels.as_ref(), self.owner.as_deref()))
            .filter(|c| {
                !c.labels
                    .as_ref()
                    .and_then(|l| l.get(PROCESS_LABEL))
                    .is_some_and(|p| crate::holder::other_live_process_here(p))
            })
            .filter_map(|c| c.id)
        {
            match force_remove(&self.docker, &id).await {
                Ok(()) => removed += 1,
                Err(source) => {
                    first_error.get_or_insert(RuntimeError::Docker {
                        action: "remove",
                        target: id,
                        source,
                    });
                }
            }
        }
        if removed > 0 {
            tracing::info!(removed, labels = %target, "removed stale containers");
        }
        first_error.map_or(Ok(removed), Err)
    }

    fn labels(&self, instance_id: &str) -> HashMap<String, String> {
        let mut labels = HashMap::from([
            (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
            (INSTANCE_LABEL.to_owned(), instance_id.to_owned()),
        ]);
        if let Some(owner) = &self.owner {
            labels.insert(OWNER_LABEL.to_owned(), owner.clone());
        }
        labels.insert(PROCESS_LABEL.to_owned(), crate::holder::this_process());
        labels
    }
}

#[async_trait::async_trait]
impl Runtime for DockerRuntime {
    fn kind(&self) -> &'static str {
        "docker"
    }

    async fn start(&self, spec: InstanceSpec) -> Result<Instance, RuntimeError> {
        let InstanceSpec {
            instance_id,
            source,
            env,
            extra_args,
            log_path,
            listen,
            node_selector: _,
        } = spec;
        validate_instance_id(&instance_id)?;
        let image = match source {
            Source::Image(image) => image,
            Source::Command { program, .. } => {
                return Err(RuntimeError::Unsupported {
                    runtime: "docker",
                    what: format!(
                        "host command `{program}`: it runs images; use the process runtime"
                    ),
                });
            }
        };
        let container = Self::container_name(&instance_id);
        let log = LogWriter::new(logs::open_append(&log_path).await?);
        let docker_error = |action, source| RuntimeError::Docker {
            action,
            target: container.clone(),
            source,
        };

        let mut attempt = 0;
        let port = loop {
            let port = match (listen, self.node_ip) {
                (false, _) => None,
                (true, None) => Some(free_port()?),
                (true, Some(_)) => Some(self.node_port(&instance_id, attempt).await?),
            };
            let mut env: Vec<String> = env
                .iter()
                .filter(|(name, _)| !(listen && name.as_str() == "PORT"))
                .map(|(name, value)| format!("{name}={value}"))
                .collect();
            let mut labels = self.labels(&instance_id);
            if let Some(port) = port {
                env.push(format!("PORT={port}"));
                if self.node_ip.is_some() {
                    labels.insert(PORT_LABEL.to_owned(), port.to_string());
                }
            }
            let body = ContainerCreateBody {
                image: Some(image.clone()),
                env: Some(env),
                cmd: (!extra_args.is_empty()).then(|| extra_args.clone()),
                labels: Some(labels),
                host_config: Some(HostConfig {
                    init: Some(true),
                    // See the module docs.
                    network_mode: Some("host".to_owned()),
                    ..Default::default()
                }),
                ..Default::default()
            };
            self.create(&container, &image, body).await?;
            let (Some(port), Some(_)) = (port, self.node_ip) else {
                break port;
            };
            // Another dispatcher may have chosen the same port on this
            // node at the same moment: the container created first keeps it.
            match self.port_taken(&container, port).await {
                Ok(false) => break Some(port),
                Ok(true) if attempt + 1 < PORT_ATTEMPTS => {
                    let _ = force_remove(&self.docker, &container).await;
                    attempt += 1;
                }
                Ok(true) => {
                    let _ = force_remove(&self.docker, &container).await;
                    return Err(RuntimeError::Port(std::io::Error::other(format!(
                        "{PORT_ATTEMPTS} ports of {}-{} chosen for {container} were taken by other instances on the node",
                        NODE_PORTS.start(),
                        NODE_PORTS.end()
                    ))));
                }
                Err(e) => {
                    let _ = force_remove(&self.docker, &container).await;
                    return Err(e);
                }
            }
        };
        // From here on a failure must not leave the container behind.
        if let Err(source) = self.docker.start_container(&container, None).await {
            let _ = force_remove(&self.docker, &container).await;
            return Err(docker_error("start", source));
        }
        let ip = self.node_ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let addr = port.map(|port| SocketAddr::new(ip, port));
        tracing::debug!(instance = %instance_id, %image, ?addr, "container started");

        let log_task = tokio::spawn(copy_logs(self.docker.clone(), container.clone(), log));
        let (exit_tx, exit_rx) = watch::channel(None);
        let (docker, name) = (self.docker.clone(), container.clone());
        tokio::spawn(async move {
            let exit = wait_for_exit(&docker, &name).await;
            let _ = tokio::time::timeout(LOG_DRAIN_TIMEOUT, log_task).await;
            tracing::debug!(container = %name, exit = %exit.description, "container exited");
            exit_tx.send_replace(Some(exit));
        });

        Ok(Instance::new(Parts {
            id: instance_id,
            listen,
            addr,
            log_path,
            exit: exit_rx,
            control: instance::Control::Docker(Control {
                docker: self.docker.clone(),
                container,
                freezer: std::sync::OnceLock::new(),
            }),
        }))
    }
}

/// A container's cgroup freezer, written directly.
#[derive(Debug, Clone)]
pub(crate) enum Freezer {
    /// cgroup v1: its `freezer.state` (`FROZEN`, `FREEZING`, `THAWED`).
    V1(PathBuf),
    /// cgroup v2: its `cgroup.freeze` (`1`/`0`; `cgroup.events` says when
    /// it is frozen).
    V2(PathBuf),
}

/// How long a freeze may take to settle (tasks in uninterruptible sleep
/// delay it); past it the freeze is undone and reported.
const FREEZE_SETTLE: Duration = Duration::from_secs(2);

impl Freezer {
    /// The freezer of the cgroup process `pid` is in, if that cgroup is
    /// container `id`'s (so a pid of another machine's engine that happens
    /// to exist here is never taken) and its file is there.
    fn of_process(pid: i64, id: &str) -> Option<Self> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let mut unified = None;
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if !path.contains(id) {
                continue;
            }
            if controllers.split(',').any(|c| c == "freezer") {
                let file = PathBuf::from(format!("/sys/fs/cgroup/freezer{path}/freezer.state"));
                if file.is_file() {
                    return Some(Self::V1(file));
                }
            } else if controllers.is_empty() {
                let root = if Path::new("/sys/fs/cgroup/cgroup.controllers").is_file() {
                    "/sys/fs/cgroup"
                } else {
                    "/sys/fs/cgroup/unified"
                };
                let file = PathBuf::from(format!("{root}{path}/cgroup.freeze"));
                if file.is_file() {
                    unified = Some(Self::V2(file));
                }
            }
        }
        unified
    }

    fn path(&self) -> &Path {
        match self {
            Self::V1(p) | Self::V2(p) => p,
        }
    }

    /// Freezes (returning once every task is frozen) or thaws.
    async fn set(&self, frozen: bool) -> std::io::Result<()> {
        let (file, value) = match (self, frozen) {
            (Self::V1(f), true) => (f, "FROZEN"),
            (Self::V1(f), false) => (f, "THAWED"),
            (Self::V2(f), true) => (f, "1"),
            (Self::V2(f), false) => (f, "0"),
        };
        std::fs::write(file, value)?;
        if !frozen {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + FREEZE_SETTLE;
        loop {
            let settled = match self {
                Self::V1(f) => std::fs::read_to_string(f)?.trim() == "FROZEN",
                Self::V2(f) => std::fs::read_to_string(f.with_file_name("cgroup.events"))?
                    .lines()
                    .any(|l| l.trim() == "frozen 1"),
            };
            if settled {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = Box::pin(self.set(false)).await;
                return Err(std::io::Error::other(format!(
                    "its tasks did not freeze within {FREEZE_SETTLE:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// The freezer of a running container on this machine, if there is one
/// this process can use.
async fn container_freezer(docker: &Docker, container: &str) -> Option<Freezer> {
    let inspected = docker
        .inspect_container(container, None::<InspectContainerOptions>)
        .await
        .ok()?;
    let id = inspected.id?;
    let pid = inspected.state?.pid.filter(|p| *p > 0)?;
    Freezer::of_process(pid, &id)
}

/// Whether an image name starts with a registry host (`host:port/…`,
/// `host.domain/…` or `localhost/…`), so a missing image may be pulled.
fn from_registry(image: &str) -> bool {
    image
        .split_once('/')
        .is_some_and(|(host, _)| host.contains('.') || host.contains(':') || host == "localhost")
}

/// Whether a container's labels name `owner` (`None`: no owner label).
fn owned_by(labels: Option<&HashMap<String, String>>, owner: Option<&str>) -> bool {
    labels
        .and_then(|labels| labels.get(OWNER_LABEL))
        .map(String::as_str)
        == owner
}

/// `name` as a URL's host: an IPv6 address in brackets.
fn bracketed(name: &str) -> String {
    match name.parse::<std::net::Ipv6Addr>() {
        Ok(_) => format!("[{name}]"),
        Err(_) => name.to_owned(),
    }
}

/// The address of `name` (IPv4 first), where a node's instances are reached.
async fn resolve(name: &str) -> Result<IpAddr, String> {
    if let Ok(ip) = name.parse() {
        return Ok(ip);
    }
    let found: Vec<IpAddr> = tokio::net::lookup_host((name, 0))
        .await
        .map_err(|e| format!("cannot resolve `{name}`: {e}"))?
        .map(|a| a.ip())
        .collect();
    found
        .iter()
        .find(|ip| ip.is_ipv4())
        .or(found.first())
        .copied()
        .ok_or_else(|| format!("`{name}` resolves to no address"))
}

/// A port that was free a moment ago. Another process could take it before
/// the instance binds it; the instance then fails to start, visibly.
fn free_port() -> Result<u16, RuntimeError> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(RuntimeError::Port)
}

/// Follows the container's output into its log until the container stops.
async fn copy_logs(docker: Docker, container: String, mut log: LogWriter) {
    let options = LogsOptionsBuilder::default()
        .follow(true)
        .stdout(true)
        .stderr(true)
        .build();
    let mut output = docker.logs(&container, Some(options));
    while let Some(frame) = output.next().await {
        match frame {
            Ok(frame) => log.write(&frame.into_bytes()).await,
            Err(err) => {
                tracing::debug!(%container, error = %err, "log stream ended");
                break;
            }
        }
    }
}

/// Waits for the container to stop and says how it ended. A wait that breaks
/// off (the engine restarted, the connection dropped) is resumed after
/// asking the engine directly.
async fn wait_for_exit(docker: &Docker, container: &str) -> ExitInfo {
    let mut failures = 0;
    loop {
        let options = WaitContainerOptionsBuilder::default()
            .condition("not-running")
            .build();
        let waited = docker.wait_container(container, Some(options)).next().await;
        let code = match waited {
            Some(Ok(response)) => Some(response.status_code),
            Some(Err(DockerError::DockerContainerWaitError { code, .. })) => Some(code),
            Some(Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            })) => return removed(),
            Some(Err(_)) | None => None,
        };
        if let Some(code) = code {
            return exit_info(code, out_of_memory(docker, container).await);
        }
        match docker
            .inspect_container(container, None::<InspectContainerOptions>)
            .await
        {
            Ok(info) => {
                let state = info.state.unwrap_or_default();
                if state.running != Some(true) {
                    return exit_info(
                        state.exit_code.unwrap_or(-1),
                        state.oom_killed == Some(true),
                    );
                }
                failures = 0;
            }
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => return removed(),
            Err(err) => {
                failures += 1;
                if failures >= WAIT_MAX_FAILURES {
                    return ExitInfo {
                        code: None,
                        description: format!("lost contact with the Docker engine: {err}"),
                    };
                }
            }
        }
        tokio::time::sleep(WAIT_RETRY).await;
    }
}

async fn out_of_memory(docker: &Docker, container: &str) -> bool {
    docker
        .inspect_container(container, None::<InspectContainerOptions>)
        .await
        .ok()
        .and_then(|info| info.state?.oom_killed)
        .unwrap_or(false)
}

fn exit_info(code: i64, out_of_memory: bool) -> ExitInfo {
    let mut description = format!("exited with code {code}");
    // Shells and Docker's init report death by signal N as 128 + N.
    if let Some(signal) = code
        .checked_sub(128)
        .filter(|s| (1..=64).contains(s))
        .and_then(|s| i32::try_from(s).ok())
    {
        match signal_name(signal) {
            Some(name) => description.push_str(&format!(" (killed by signal {signal}, {name})")),
            None => description.push_str(&format!(" (killed by signal {signal})")),
        }
    }
    if out_of_memory {
        description.push_str(", out of memory");
    }
    ExitInfo {
        code: Some(code),
        description,
    }
}

fn removed() -> ExitInfo {
    ExitInfo {
        code: None,
        description: "container removed".to_owned(),
    }
}

async fn force_remove(docker: &Docker, container: &str) -> Result<(), DockerError> {
    let options = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    match docker.remove_container(container, Some(options)).await {
        Ok(())
        | Err(DockerError::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(()),
        // 409: a removal is already in progress.
        Err(DockerError::DockerResponseServerError {
            status_code: 409, ..
        }) => Ok(()),
        Err(err) => Err(err),
    }
}

/// How a container instance is stopped.
pub(crate) struct Control {
    docker: Docker,
    container: String,
    /// The container's cgroup freezer, found at its first freeze: `None`
    /// inside when it is not on this machine (or not writable here).
    freezer: std::sync::OnceLock<Option<Freezer>>,
}

impl Control {
    /// Freezes or thaws the container: through its cgroup freezer directly
    /// where this process can write it (tens of microseconds, where `docker
    /// unpause` takes tens of milliseconds through dockerd, containerd and
    /// runc), else `docker pause`/`unpause`. Docker is not told of a direct
    /// freeze, so a stop thaws first ([`Instance::stop`](crate::Instance::stop))
    /// for the container to hear its SIGTERM; a forced removal (what
    /// [`DockerRuntime::remove_stale`] does after a crash) needs no thaw, as
    /// runc thaws a frozen cgroup to kill it.
    pub(crate) async fn set_paused(&self, paused: bool) -> Result<(), String> {
        if self.freezer.get().is_none() && paused {
            let found = container_freezer(&self.docker, &self.container).await;
            let _ = self.freezer.set(found);
        }
        if let Some(Some(freezer)) = self.freezer.get() {
            return freezer.set(paused).await.map_err(|e| {
                let verb = if paused { "freeze" } else { "thaw" };
                format!(
                    "cannot {verb} container {} ({}): {e}",
                    self.container,
                    freezer.path().display()
                )
            });
        }
        let done = match paused {
            true => self.docker.pause_container(&self.container).await,
            false => self.docker.unpause_container(&self.container).await,
        };
        done.map_err(|e| {
            let verb = if paused { "pause" } else { "unpause" };
            format!("docker {verb} of container {} failed: {e}", self.container)
        })
    }

    pub(crate) async fn stop(&self, instance: &Instance, grace: Duration) {
        if instance.exit().is_none() {
            let seconds = grace.as_secs_f64().ceil().min(MAX_GRACE_SECS as f64) as i32;
            let options = StopContainerOptionsBuilder::default().t(seconds).build();
            match self
                .docker
                .stop_container(&self.container, Some(options))
                .await
            {
                Ok(())
                | Err(DockerError::DockerResponseServerError {
                    status_code: 304 | 404,
                    ..
                }) => {}
                Err(err) => {
                    tracing::warn!(container = %self.container, error = %err, "docker stop failed; removing the container by force");
                }
            }
        }
        if let Err(err) = force_remove(&self.docker, &self.container).await {
            tracing::warn!(container = %self.container, error = %err, "cannot remove the container");
        }
        if tokio::time::timeout(EXIT_WAIT, instance.exited())
            .await
            .is_err()
        {
            tracing::warn!(container = %self.container, "container still not seen to exit after its removal");
        }
    }

    /// The last handle was dropped without a stop: remove the container in
    /// the background if a tokio runtime is still there to do it.
    pub(crate) fn abandon(&self, id: &str) {
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                tracing::debug!(instance = id, container = %self.container, "instance handle dropped; removing its container");
                let (docker, container) = (self.docker.clone(), self.container.clone());
                runtime.spawn(async move {
                    if let Err(err) = force_remove(&docker, &container).await {
                        tracing::warn!(%container, error = %err, "cannot remove an abandoned container");
                    }
                });
            }
            Err(_) => tracing::warn!(
                instance = id,
                container = %self.container,
                "instance handle dropped outside a tokio runtime; its container stays until DockerRuntime::remove_stale"
            ),
        }
    }
}

/// Asks the engine for its API version over a plain HTTP/1.0 request on its
/// socket: blocking, bounded, and without a tokio runtime.
fn engine_api_version(socket: &str) -> Result<ClientVersion, String> {
    let mut stream = UnixStream::connect(socket).map_err(|err| err.to_string())?;
    stream
        .set_read_timeout(Some(CONNECT_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(CONNECT_TIMEOUT)))
        .and_then(|()| stream.write_all(b"GET /version HTTP/1.0\r\nHost: docker\r\n\r\n"))
        .map_err(|err| err.to_string())?;
    let mut response = Vec::new();
    // A version document is a few hundred bytes.
    stream
        .take(1024 * 1024)
        .read_to_end(&mut response)
        .map_err(|err| format!("no answer to GET /version: {err}"))?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or("malformed answer to GET /version")?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("GET /version answered `{status}`"));
    }
    let version: serde_json::Value =
        serde_json::from_str(body).map_err(|err| format!("unreadable /version: {err}"))?;
    let api = version
        .get("ApiVersion")
        .and_then(serde_json::Value::as_str)
        .ok_or("/version has no ApiVersion")?;
    parse_api_version(api).ok_or_else(|| format!("unreadable API version `{api}`"))
}

pub(crate) fn parse_api_version(text: &str) -> Option<ClientVersion> {
    let (major, minor) = text.split_once('.')?;
    Some(ClientVersion {
        major_version: major.parse().ok()?,
        minor_version: minor.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_described() {
        assert_eq!(exit_info(0, false).description, "exited with code 0");
        assert_eq!(
            exit_info(137, true).description,
            "exited with code 137 (killed by signal 9, SIGKILL), out of memory"
        );
        assert_eq!(exit_info(3, false).code, Some(3));
    }

    #[test]
    fn runtimes_own_only_their_containers() {
        let owned = HashMap::from([(OWNER_LABEL.to_owned(), "a".to_owned())]);
        let unowned = HashMap::from([(MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned())]);
        assert!(owned_by(Some(&owned), Some("a")));
        assert!(!owned_by(Some(&owned), Some("b")));
        assert!(!owned_by(Some(&owned), None));
        assert!(owned_by(Some(&unowned), None));
        assert!(owned_by(None, None));
        assert!(!owned_by(Some(&unowned), Some("a")));
    }

    #[test]
    fn api_versions_are_parsed() {
        let version = parse_api_version("1.41").expect("a version");
        assert_eq!((version.major_version, version.minor_version), (1, 41));
        assert!(parse_api_version("1").is_none());
        assert!(parse_api_version("one.two").is_none());
    }
}
