//! Nodes: Docker engines besides the dispatcher's own that instances are
//! placed on (seed `003`'s nodes). [`Placement`] is a [`Runtime`] over the
//! local engine and every node: each instance goes to the healthy,
//! undrained engine with room that runs the fewest instances of its service,
//! then the fewest instances overall (a service's instances spread apart).
//! Health and counts are read from the engines at each placement (one
//! container listing each, milliseconds), so several dispatchers placing on
//! one node see each other's instances, and an engine that stopped
//! answering is passed over at once; its instances are reported ended once
//! contact is lost (see [`DockerRuntime`]), and their services start new
//! ones elsewhere.
//!
//! A node's engine is reached at its docker host ([`DockerHost`]):
//!
//! - `unix:///path/docker.sock`: an engine on this machine (or one whose
//!   socket and ports are forwarded here); its instances listen on free
//!   ports of 127.0.0.1, as the local engine's do.
//! - `tcp://host:port`: the engine's unencrypted API (keep it on a private
//!   network); `ssh://[user@]host[:port]`: through SSH, as the Docker CLI
//!   does ([`crate::ssh`]). Instances there listen on the host's network at
//!   `host`, on ports of [`crate::NODE_PORTS`] no other instance on the
//!   node has (see [`DockerRuntime::connect_host`]).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::ssh::SshTarget;
use crate::{DockerRuntime, Instance, InstanceSpec, Runtime, RuntimeError};

/// A node as the placement sees it.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: String,
    pub docker_host: String,
    pub capacity: u32,
    pub labels: BTreeMap<String, String>,
    pub draining: bool,
}

/// Where a Docker engine listens, as `DOCKER_HOST` and `docker -H` write it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerHost {
    /// `unix:///path`: the socket's path.
    Unix(String),
    /// `tcp://host[:port]` (port 2375 when left out).
    Tcp { host: String, port: u16 },
    /// `ssh://[user@]host[:port]`.
    Ssh(SshTarget),
}

/// Docker's port for an engine's plain (unencrypted) TCP API.
const DOCKER_TCP_PORT: u16 = 2375;

impl std::fmt::Display for DockerHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix://{path}"),
            Self::Tcp { host, port } => match host.contains(':') {
                true => write!(f, "tcp://[{host}]:{port}"),
                false => write!(f, "tcp://{host}:{port}"),
            },
            Self::Ssh(target) => {
                write!(f, "ssh://{}", target.destination)?;
                match target.port {
                    Some(port) => write!(f, ":{port}"),
                    None => Ok(()),
                }
            }
        }
    }
}

const EXAMPLES: &str =
    "unix:///var/run/docker.sock, tcp://10.0.0.5:2375 or ssh://rouse@node-b.internal";

/// Reads a docker host; a clear error naming the form otherwise.
pub fn parse_docker_host(docker_host: &str) -> Result<DockerHost, String> {
    let bad = |why: &str| format!("`{docker_host}`: {why}; e.g. {EXAMPLES}");
    let Some((scheme, rest)) = docker_host.split_once("://") else {
        return Err(bad("not a Docker host (no scheme)"));
    };
    match scheme {
        "unix" if rest.starts_with('/') => Ok(DockerHost::Unix(rest.to_owned())),
        "unix" => Err(bad("give the socket's absolute path")),
        "tcp" => {
            let (host, port) = host_port(rest).map_err(|why| bad(&why))?;
            Ok(DockerHost::Tcp {
                host,
                port: port.unwrap_or(DOCKER_TCP_PORT),
            })
        }
        "ssh" => {
            let (user, at) = match rest.rsplit_once('@') {
                Some((user, at)) => (Some(user), at),
                None => (None, rest),
            };
            if let Some(user) = user
                && (user.is_empty()
                    || !user
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)))
            {
                return Err(bad(&format!("`{user}` is not a user name")));
            }
            let (host, port) = host_port(at).map_err(|why| bad(&why))?;
            let destination = match user {
                Some(user) => format!("{user}@{host}"),
                None => host.clone(),
            };
            Ok(DockerHost::Ssh(SshTarget {
                destination,
                host,
                port,
            }))
        }
        "http" | "https" | "tcps" => Err(bad(&format!(
            "{scheme}:// is not supported (TLS to the engine is not either); use tcp:// on a private network, or ssh://"
        ))),
        _ => Err(bad(&format!("unknown scheme `{scheme}`"))),
    }
}

/// `host[:port]` or `[v6]:port`, with nothing after it.
fn host_port(text: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(v6) = text.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("`{text}`: an unclosed `[`"))?;
        match after {
            "" => (host, None),
            _ => (
                host,
                Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| format!("`{after}` after the address"))?,
                ),
            ),
        }
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    if host.contains('/') || port.is_some_and(|p| p.contains('/')) {
        return Err("a path after the host is not allowed".into());
    }
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || ".-_:".contains(c))
        || host.starts_with('-')
    {
        return Err(format!("`{host}` is not a host name or address"));
    }
    let port = match port {
        None => None,
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("`{p}` is not a port"))?,
        ),
    };
    Ok((host.to_owned(), port))
}

/// What a look at a node's engine found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeHealth {
    /// `None`: it answered; else why not.
    pub problem: Option<String>,
    /// Rouse's instances (running containers) on it, by instance id.
    pub instances: Vec<String>,
}

/// Connects to a node's engine and lists Rouse's running containers there.
pub async fn probe(docker_host: &str) -> NodeHealth {
    match connect(docker_host).await {
        Ok(engine) => look(&engine).await,
        Err(problem) => NodeHealth {
            problem: Some(problem),
            instances: Vec::new(),
        },
    }
}

async fn connect(docker_host: &str) -> Result<DockerRuntime, String> {
    let host = parse_docker_host(docker_host)?;
    DockerRuntime::connect_host(&host)
        .await
        .map_err(|e| e.to_string())
}

async fn look(engine: &DockerRuntime) -> NodeHealth {
    match engine.running_instances().await {
        Ok(instances) => NodeHealth {
            problem: None,
            instances,
        },
        Err(e) => NodeHealth {
            problem: Some(e.to_string()),
            instances: Vec::new(),
        },
    }
}

/// The service an instance id belongs to: `<qualified-name>-<8 hex>`.
fn service_of(instance_id: &str) -> &str {
    instance_id.rsplit_once('-').map_or(instance_id, |(s, _)| s)
}

/// Whether a node with `labels` may take an instance whose service has
/// `selector`: it carries every pair (an empty selector takes any node).
pub fn matches_selector(
    labels: &BTreeMap<String, String>,
    selector: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The local engine's name in placements and logs.
pub const LOCAL: &str = "local";

/// One engine instances may go to.
struct Engine {
    name: String,
    capacity: Option<u32>,
    draining: bool,
    labels: BTreeMap<String, String>,
    runtime: Option<DockerRuntime>,
    docker_host: String,
}

/// Places instances over the local engine and the nodes.
pub struct Placement {
    local: Option<DockerRuntime>,
    owner: Option<String>,
    nodes: RwLock<Vec<Arc<tokio::sync::Mutex<Engine>>>>,
    /// Instances placed and still starting (not listed by their engine
    /// yet), by engine: the service of each. Placements are decided one at
    /// a time under this lock, so a burst of starts spreads too.
    starting: tokio::sync::Mutex<Vec<(String, String)>>,
}

impl Placement {
    /// Over the local engine (if any); `owner` labels what it starts, as
    /// [`DockerRuntime::with_owner`].
    pub fn new(local: Option<DockerRuntime>, owner: Option<String>) -> Self {
        Self {
            local,
            owner,
            nodes: RwLock::default(),
            starting: tokio::sync::Mutex::default(),
        }
    }

    /// Replaces the nodes (as the store has them now), keeping connections
    /// to the ones that stay.
    pub async fn set_nodes(&self, specs: Vec<NodeSpec>) {
        let old: Vec<_> = self.nodes.read().map(|n| n.clone()).unwrap_or_default();
        let mut next = Vec::with_capacity(specs.len());
        for spec in specs {
            let mut kept = None;
            for engine in &old {
                let e = engine.lock().await;
                if e.name == spec.name && e.docker_host == spec.docker_host {
                    kept = Some(engine.clone());
                }
            }
            let engine = match kept {
                Some(engine) => {
                    let mut e = engine.lock().await;
                    e.capacity = Some(spec.capacity);
                    e.draining = spec.draining;
                    e.labels = spec.labels;
                    drop(e);
                    engine
                }
                None => Arc::new(tokio::sync::Mutex::new(Engine {
                    name: spec.name,
                    capacity: Some(spec.capacity),
                    draining: spec.draining,
                    labels: spec.labels,
                    runtime: None,
                    docker_host: spec.docker_host,
                })),
            };
            next.push(engine);
        }
        if let Ok(mut nodes) = self.nodes.write() {
            *nodes = next;
        }
    }

    /// Whether any node is known (else only the local engine runs images).
    pub fn has_nodes(&self) -> bool {
        self.nodes.read().is_ok_and(|n| !n.is_empty())
    }
}

#[async_trait::async_trait]
impl Runtime for Placement {
    fn kind(&self) -> &'static str {
        "docker"
    }

    async fn start(&self, spec: InstanceSpec) -> Result<Instance, RuntimeError> {
        let service = service_of(&spec.instance_id).to_owned();
        let mut starting = self.starting.lock().await;
        // An engine's instances of this service and in all, listed or
        // still starting there.
        let counts = |engine: &str, listed: &[String], starting: &[(String, String)]| {
            let pending: Vec<_> = starting.iter().filter(|(e, _)| e == engine).collect();
            let mine = listed.iter().filter(|i| service_of(i) == service).count()
                + pending.iter().filter(|(_, s)| *s == service).count();
            (mine, listed.len() + pending.len())
        };
        let nodes: Vec<_> = self.nodes.read().map(|n| n.clone()).unwrap_or_default();
        // (instances of this service, instances, index): -1 is the local engine.
        let mut best: Option<((usize, usize, i64), DockerRuntime, String)> = None;
        let mut passed_over = Vec::new();
        let selector = &spec.node_selector;
        if !selector.is_empty() {
            passed_over.push(format!("{LOCAL}: carries no labels"));
        } else if let Some(local) = &self.local {
            let health = look(local).await;
            if health.problem.is_none() {
                let (mine, all) = counts(LOCAL, &health.instances, &starting);
                best = Some(((mine, all, -1), local.clone(), LOCAL.into()));
            }
        }
        for (i, engine) in nodes.iter().enumerate() {
            let mut e = engine.lock().await;
            if e.draining {
                continue;
            }
            if !matches_selector(&e.labels, selector) {
                passed_over.push(format!("{}: lacks a label", e.name));
                continue;
            }
            if e.runtime.is_none() {
                match connect(&e.docker_host).await {
                    Ok(runtime) => {
                        e.runtime = Some(match &self.owner {
                            Some(owner) => runtime.with_owner(owner.clone()),
                            None => runtime,
                        });
                    }
                    Err(problem) => {
                        passed_over.push(format!("{}: {problem}", e.name));
                        continue;
                    }
                }
            }
            let Some(runtime) = e.runtime.clone() else {
                continue;
            };
            let health = look(&runtime).await;
            if let Some(problem) = health.problem {
                // Reconnect next time: the engine may have restarted.
                e.runtime = None;
                passed_over.push(format!("{}: {problem}", e.name));
                continue;
            }
            let (mine, all) = counts(&e.name, &health.instances, &starting);
            if e.capacity.is_some_and(|c| all >= c as usize) {
                passed_over.push(format!("{}: full", e.name));
                continue;
            }
            let score = (mine, all, i64::try_from(i).unwrap_or(i64::MAX));
            if best.as_ref().is_none_or(|(b, _, _)| score < *b) {
                best = Some((score, runtime, e.name.clone()));
            }
        }
        let Some((_, runtime, name)) = best else {
            let wanted = match selector.is_empty() {
                true => String::new(),
                false => format!(
                    " with the service's node selector {}",
                    selector
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            };
            return Err(RuntimeError::NoNode {
                why: if passed_over.is_empty() {
                    format!("no Docker engine here and no node{wanted}")
                } else {
                    format!("none{wanted} ({})", passed_over.join("; "))
                },
            });
        };
        tracing::debug!(instance = %spec.instance_id, node = %name, "placed an instance");
        let placed = (name, service);
        starting.push(placed.clone());
        drop(starting);
        let started = runtime.start(spec).await;
        if let Ok(instance) = &started {
            instance.placed_on(&placed.0);
        }
        let mut starting = self.starting.lock().await;
        if let Some(at) = starting.iter().position(|p| *p == placed) {
            starting.remove(at);
        }
        started
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn docker_hosts_are_read_as_docker_writes_them() {
        assert_eq!(
            parse_docker_host("unix:///var/run/docker.sock"),
            Ok(DockerHost::Unix("/var/run/docker.sock".into()))
        );
        assert_eq!(
            parse_docker_host("tcp://10.0.0.5"),
            Ok(DockerHost::Tcp {
                host: "10.0.0.5".into(),
                port: 2375
            })
        );
        assert_eq!(
            parse_docker_host("tcp://[fd00::5]:2376").map(|h| h.to_string()),
            Ok("tcp://[fd00::5]:2376".into())
        );
        assert_eq!(
            parse_docker_host("ssh://rouse@node-b.internal:2222"),
            Ok(DockerHost::Ssh(SshTarget {
                destination: "rouse@node-b.internal".into(),
                host: "node-b.internal".into(),
                port: Some(2222),
            }))
        );
        assert_eq!(
            parse_docker_host("ssh://node-b").map(|h| h.to_string()),
            Ok("ssh://node-b".into())
        );
        for (bad, says) in [
            ("unix://docker.sock", "absolute path"),
            ("/var/run/docker.sock", "no scheme"),
            ("tcp://h:99999", "`99999` is not a port"),
            ("tcp://:2375", "no host"),
            ("ssh://u@h/var/run/docker.sock", "path after the host"),
            ("ssh://-oProxyCommand=x", "not a host name"),
            ("ssh://a b@h", "not a user name"),
            ("https://h:2376", "not supported"),
            ("npipe:////./pipe/docker", "unknown scheme"),
        ] {
            let e = parse_docker_host(bad).expect_err(bad);
            assert!(e.contains(says) && e.contains(bad), "{bad}: {e}");
            assert!(e.contains("e.g. unix://"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_selector_takes_nodes_carrying_all_its_labels() {
        let labels = map(&[("zone", "b"), ("gpu", "yes")]);
        assert!(matches_selector(&labels, &map(&[])));
        assert!(matches_selector(&labels, &map(&[("zone", "b")])));
        assert!(matches_selector(
            &labels,
            &map(&[("zone", "b"), ("gpu", "yes")])
        ));
        assert!(!matches_selector(&labels, &map(&[("zone", "c")])));
        assert!(!matches_selector(
            &labels,
            &map(&[("zone", "b"), ("ssd", "yes")])
        ));
        assert!(!matches_selector(&map(&[]), &map(&[("zone", "b")])));
    }
}
