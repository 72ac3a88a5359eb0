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
//! A node is reached through a `unix://` socket, and its instances (host
//! network) at 127.0.0.1: an engine on this machine, or a remote one whose
//! socket and ports are forwarded here. `tcp://` and `ssh://` engines are
//! refused with that advice.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

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

/// The socket path of a `unix://` docker host; a clear error for others.
pub fn socket_of(docker_host: &str) -> Result<String, String> {
    match docker_host.split_once("://") {
        Some(("unix", path)) if path.starts_with('/') => Ok(path.to_owned()),
        Some(("unix", _)) => Err(format!(
            "`{docker_host}`: give the socket's absolute path, e.g. unix:///var/run/docker.sock"
        )),
        Some((scheme @ ("tcp" | "ssh" | "http" | "https"), _)) => Err(format!(
            "`{docker_host}`: {scheme}:// engines are not supported yet; forward the engine's socket to this machine (e.g. `ssh -nNT -L /run/rouse/node.sock:/var/run/docker.sock HOST`) and give unix:///run/rouse/node.sock"
        )),
        _ => Err(format!(
            "`{docker_host}` is not a Docker host; give unix:///path/to/docker.sock"
        )),
    }
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
    let socket = socket_of(docker_host)?;
    tokio::task::spawn_blocking(move || DockerRuntime::connect_to(&socket))
        .await
        .map_err(|e| e.to_string())?
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
const LOCAL: &str = "local";

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
