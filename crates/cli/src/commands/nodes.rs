//! `rouse nodes …`: the Docker engines instances may be placed on (seed
//! `003`'s `deploy.py node list|create|destroy`).

use std::collections::BTreeMap;

use rouse_proto as pb;
use rouse_proto::nodes_client::NodesClient;
use serde::Serialize;

use crate::context::Context;
use crate::exit::CliError;
use crate::output::{View, timestamp};

#[derive(Debug, clap::Subcommand)]
pub enum NodesCommand {
    /// Add a Docker engine instances may be placed on.
    Add {
        /// The node's name: lowercase letters, digits and `-`.
        name: String,
        /// Its engine, as for `docker -H`: unix:///path/to/docker.sock (on
        /// this machine), tcp://HOST[:PORT] (plain API, private networks
        /// only) or ssh://[USER@]HOST[:PORT] (`docker system dial-stdio`
        /// over the system's ssh; ROUSE_SSH_COMMAND replaces `ssh`).
        #[arg(long)]
        docker_host: String,
        /// Most instances placed on it [default: 10].
        #[arg(long)]
        capacity: Option<u32>,
        /// A label a service's node selector can match (repeatable): KEY=VALUE.
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
    },
    /// Every node: its engine, health, capacity and instances now.
    List,
    /// Place no new instance on a node; those on it run on until idle.
    Drain { name: String },
    /// Forget a drained node once no instance runs on it.
    Remove { name: String },
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("`{s}` must have the form KEY=VALUE, e.g. zone=a")),
    }
}

#[derive(Debug, Serialize)]
pub struct NodeView {
    pub name: String,
    pub docker_host: String,
    pub capacity: u32,
    pub instances: u32,
    pub healthy: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub health_detail: String,
    pub draining: bool,
    pub labels: BTreeMap<String, String>,
    pub create_time: String,
}

impl From<&pb::Node> for NodeView {
    fn from(n: &pb::Node) -> Self {
        Self {
            name: n.name.clone(),
            docker_host: n.docker_host.clone(),
            capacity: n.capacity,
            instances: n.instances,
            healthy: n.healthy,
            health_detail: n.health_detail.clone(),
            draining: n.draining,
            labels: n.labels.clone().into_iter().collect(),
            create_time: timestamp(n.create_time.as_ref()),
        }
    }
}

impl NodeView {
    fn status(&self) -> String {
        match (self.healthy, self.draining) {
            (false, _) => "unhealthy".into(),
            (true, true) => "draining".into(),
            (true, false) => "ready".into(),
        }
    }

    fn labels_text(&self) -> String {
        self.labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl View for NodeView {
    const COLUMNS: &'static [&'static str] = &[
        "NAME",
        "DOCKER HOST",
        "STATUS",
        "INSTANCES",
        "CAPACITY",
        "LABELS",
    ];
    const NONE: &'static str = "no nodes (instances run on the dispatcher's own engine)";

    fn row(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            self.docker_host.clone(),
            self.status(),
            self.instances.to_string(),
            self.capacity.to_string(),
            self.labels_text(),
        ]
    }

    fn describe(&self) -> Vec<(&'static str, String)> {
        let mut rows = vec![
            ("name", self.name.clone()),
            ("docker host", self.docker_host.clone()),
            ("status", self.status()),
            ("instances", self.instances.to_string()),
            ("capacity", self.capacity.to_string()),
            ("labels", self.labels_text()),
            ("created", self.create_time.clone()),
        ];
        if !self.health_detail.is_empty() {
            rows.push(("health", self.health_detail.clone()));
        }
        rows
    }
}

pub async fn run(ctx: &Context, cmd: NodesCommand) -> Result<(), CliError> {
    let mut api = ctx.client(NodesClient::new).await?;
    match cmd {
        NodesCommand::Add {
            name,
            docker_host,
            capacity,
            labels,
        } => {
            let node = ctx
                .call(api.add_node(pb::AddNodeRequest {
                    name,
                    docker_host,
                    capacity: capacity.unwrap_or(0),
                    labels: labels.into_iter().collect(),
                }))
                .await?;
            ctx.print_one(&NodeView::from(&node))
        }
        NodesCommand::List => {
            let list = ctx.call(api.list_nodes(pb::ListNodesRequest {})).await?;
            let views: Vec<_> = list.nodes.iter().map(NodeView::from).collect();
            ctx.print_list(&views)
        }
        NodesCommand::Drain { name } => {
            let node = ctx
                .call(api.drain_node(pb::DrainNodeRequest { name }))
                .await?;
            ctx.print_one(&NodeView::from(&node))
        }
        NodesCommand::Remove { name } => {
            ctx.call(api.remove_node(pb::RemoveNodeRequest { name: name.clone() }))
                .await?;
            ctx.note(format_args!("removed node {name}"));
            Ok(())
        }
    }
}
