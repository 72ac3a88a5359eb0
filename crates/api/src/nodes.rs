//! The `Nodes` API: Docker engines instances may be placed on. The store
//! keeps what an administrator said (name, engine, capacity, labels,
//! draining); health and instance counts are read from each engine when
//! listed.

use std::collections::BTreeMap;
use std::time::SystemTime;

use rouse_iam::Resource;
use rouse_store::NodeRecord;
use tonic::{Request, Response, Status};

use crate::backend::Backend;
use crate::error::ApiError;
use crate::pb;

/// Instances a node takes when `--capacity` is not given.
pub const DEFAULT_CAPACITY: u32 = 10;

#[derive(Clone)]
pub struct NodesApi {
    backend: Backend,
}

impl NodesApi {
    pub fn new(backend: Backend) -> Self {
        Self { backend }
    }

    async fn find(&self, name: &str) -> Result<NodeRecord, ApiError> {
        self.backend
            .store
            .list_nodes()
            .await?
            .into_iter()
            .find(|n| n.name == name)
            .ok_or_else(|| ApiError::NodeNotFound { name: name.into() })
    }
}

/// A node's name: what Docker and DNS accept, 1 to 63 of `[a-z0-9-]`,
/// starting with a letter.
fn node_name(value: &str) -> Result<String, ApiError> {
    let ok = (1..=63).contains(&value.len())
        && value.starts_with(|c: char| c.is_ascii_lowercase())
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(value.to_owned())
    } else {
        Err(ApiError::InvalidArgument(format!(
            "node name `{value}` is not usable: use 1 to 63 lowercase letters, digits and `-`, starting with a letter (e.g. `node-2`)"
        )))
    }
}

fn labels(given: BTreeMap<String, String>) -> Result<BTreeMap<String, String>, ApiError> {
    rouse_core::service::check_labels(&given).map_err(ApiError::InvalidArgument)?;
    Ok(given)
}

fn to_pb(node: &NodeRecord, health: Option<&rouse_runtime::nodes::NodeHealth>) -> pb::Node {
    pb::Node {
        name: node.name.clone(),
        docker_host: node.docker_host.clone(),
        capacity: node.capacity,
        labels: node.labels.clone().into_iter().collect(),
        draining: node.draining,
        healthy: health.is_some_and(|h| h.problem.is_none()),
        health_detail: health.and_then(|h| h.problem.clone()).unwrap_or_default(),
        instances: health.map_or(0, |h| u32::try_from(h.instances.len()).unwrap_or(u32::MAX)),
        create_time: Some(node.created_at.into()),
    }
}

fn describe(node: &NodeRecord) -> serde_json::Value {
    serde_json::json!({
        "name": node.name, "docker_host": node.docker_host, "capacity": node.capacity,
        "labels": node.labels, "draining": node.draining,
    })
}

#[tonic::async_trait]
impl pb::nodes_server::Nodes for NodesApi {
    async fn add_node(
        &self,
        request: Request<pb::AddNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        let permit = self.backend.permit(&request, &Resource::Root).await?;
        let req = request.into_inner();
        let name = node_name(&req.name)?;
        rouse_runtime::nodes::parse_docker_host(&req.docker_host)
            .map_err(|e| ApiError::InvalidArgument(format!("--docker-host {e}")))?;
        let health = rouse_runtime::nodes::probe(&req.docker_host).await;
        if let Some(problem) = &health.problem {
            return Err(ApiError::InvalidArgument(format!(
                "the engine of node `{name}` at {} does not answer ({problem}); start it, or check the address",
                req.docker_host
            ))
            .into());
        }
        let node = NodeRecord {
            name,
            docker_host: req.docker_host,
            capacity: if req.capacity == 0 {
                DEFAULT_CAPACITY
            } else {
                req.capacity
            },
            labels: labels(req.labels.into_iter().collect())?,
            draining: false,
            created_at: SystemTime::now(),
        };
        self.backend
            .store
            .insert_node(&node)
            .await
            .map_err(ApiError::from)?;
        self.backend
            .changed(
                &permit,
                &format!("nodes/{}", node.name),
                serde_json::Value::Null,
                describe(&node),
            )
            .await;
        Ok(Response::new(to_pb(&node, Some(&health))))
    }

    async fn list_nodes(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        self.backend.permit(&request, &Resource::Root).await?;
        let nodes = self
            .backend
            .store
            .list_nodes()
            .await
            .map_err(ApiError::from)?;
        let healths = futures::future::join_all(
            nodes
                .iter()
                .map(|n| rouse_runtime::nodes::probe(&n.docker_host)),
        )
        .await;
        Ok(Response::new(pb::ListNodesResponse {
            nodes: nodes
                .iter()
                .zip(&healths)
                .map(|(n, h)| to_pb(n, Some(h)))
                .collect(),
        }))
    }

    async fn drain_node(
        &self,
        request: Request<pb::DrainNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        let permit = self.backend.permit(&request, &Resource::Root).await?;
        let name = request.into_inner().name;
        let before = self.find(&name).await?;
        self.backend
            .store
            .set_node_draining(&name, true)
            .await
            .map_err(ApiError::from)?;
        let after = NodeRecord {
            draining: true,
            ..before.clone()
        };
        self.backend
            .changed(
                &permit,
                &format!("nodes/{name}"),
                describe(&before),
                describe(&after),
            )
            .await;
        let health = rouse_runtime::nodes::probe(&after.docker_host).await;
        Ok(Response::new(to_pb(&after, Some(&health))))
    }

    async fn remove_node(
        &self,
        request: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        let permit = self.backend.permit(&request, &Resource::Root).await?;
        let name = request.into_inner().name;
        let before = self.find(&name).await?;
        let health = rouse_runtime::nodes::probe(&before.docker_host).await;
        if !health.instances.is_empty() {
            return Err(ApiError::FailedPrecondition(format!(
                "node `{name}` still runs {} instance(s); drain it (`rouse nodes drain {name}`) and remove it once they have stopped (idle instances stop after their idle timeout)",
                health.instances.len()
            ))
            .into());
        }
        self.backend
            .store
            .delete_node(&name)
            .await
            .map_err(ApiError::from)?;
        self.backend
            .changed(
                &permit,
                &format!("nodes/{name}"),
                describe(&before),
                serde_json::Value::Null,
            )
            .await;
        Ok(Response::new(pb::RemoveNodeResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_and_labels_are_checked_and_named_in_the_error() {
        assert_eq!(node_name("node-2").ok().as_deref(), Some("node-2"));
        for bad in ["", "Node", "2node", "node_2", &"n".repeat(64)] {
            let err = node_name(bad).expect_err(bad).to_string();
            assert!(err.contains(&format!("`{bad}`")), "{err}");
        }
        let ok = BTreeMap::from([("zone".to_owned(), "a".to_owned())]);
        assert!(labels(ok).is_ok());
        let bad = BTreeMap::from([("zone one".to_owned(), "a".to_owned())]);
        let err = labels(bad).expect_err("space").to_string();
        assert!(err.contains("`zone one=a`"), "{err}");
    }
}
