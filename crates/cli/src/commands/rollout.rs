//! `rouse services rollback|deploy|promote|set-traffic`: which revisions
//! answer a service's questions.

use rouse_proto as pb;
use rouse_proto::rollouts_client::RolloutsClient;
use serde::Serialize;

use super::services::ProjectArg;
use crate::context::Context;
use crate::exit::CliError;
use crate::output::View;

#[derive(Debug, clap::Subcommand)]
pub enum RolloutCommand {
    /// Make an earlier revision serve again (all traffic).
    Rollback {
        name: String,
        #[command(flatten)]
        project: ProjectArg,
        #[arg(long)]
        to_revision: String,
    },
    /// Make a revision reachable under a tag (questions to `namespace/name:TAG`) without changing what serves.
    Deploy {
        name: String,
        #[command(flatten)]
        project: ProjectArg,
        #[arg(long)]
        revision: String,
        #[arg(long)]
        tag: String,
    },
    /// Make the revision under TAG serve untagged questions.
    Promote {
        name: String,
        #[command(flatten)]
        project: ProjectArg,
        #[arg(long)]
        tag: String,
    },
    /// Split untagged questions between revisions: --traffic REV1=90,REV2=10.
    SetTraffic {
        name: String,
        #[command(flatten)]
        project: ProjectArg,
        #[arg(long, value_delimiter = ',', required = true)]
        traffic: Vec<String>,
    },
}

/// `REV=PCT` pairs.
pub fn parse_traffic(items: &[String]) -> Result<Vec<pb::TrafficTarget>, String> {
    items
        .iter()
        .map(|item| {
            let (rev, pct) = item.split_once('=').ok_or_else(|| {
                format!("--traffic `{item}` must be REVISION=PERCENT, e.g. echo-00002=90")
            })?;
            let percent = pct
                .trim()
                .trim_end_matches('%')
                .parse::<u32>()
                .map_err(|_| {
                    format!("--traffic `{item}`: `{pct}` is not a whole percentage (0-100)")
                })?;
            if percent > 100 {
                return Err(format!("--traffic `{item}`: {percent} is more than 100"));
            }
            Ok(pb::TrafficTarget {
                revision: rev.trim().to_owned(),
                percent,
            })
        })
        .collect()
}

#[derive(Debug, Serialize)]
pub struct RoutingView {
    pub project: String,
    pub service: String,
    pub serving: String,
    pub tags: Vec<String>,
    pub traffic: Vec<String>,
}

impl From<&pb::RoutingStatus> for RoutingView {
    fn from(r: &pb::RoutingStatus) -> Self {
        Self {
            project: r.project.clone(),
            service: r.service.clone(),
            serving: r.serving.clone(),
            tags: r
                .tags
                .iter()
                .map(|t| format!("{}={}", t.tag, t.revision))
                .collect(),
            traffic: r
                .traffic
                .iter()
                .map(|t| format!("{}={}", t.revision, t.percent))
                .collect(),
        }
    }
}

impl View for RoutingView {
    const COLUMNS: &'static [&'static str] = &["SERVICE", "SERVING", "TAGS", "TRAFFIC"];
    const NONE: &'static str = "no routing";

    fn row(&self) -> Vec<String> {
        vec![
            self.service.clone(),
            self.serving.clone(),
            self.tags.join(","),
            self.traffic.join(","),
        ]
    }

    fn describe(&self) -> Vec<(&'static str, String)> {
        vec![
            ("service", format!("{}/{}", self.project, self.service)),
            ("serving", self.serving.clone()),
            ("tags", self.tags.join(", ")),
            (
                "traffic",
                if self.traffic.is_empty() {
                    "100% to the serving revision".into()
                } else {
                    self.traffic.join(", ")
                },
            ),
        ]
    }
}

pub async fn run(ctx: &Context, cmd: RolloutCommand) -> Result<(), CliError> {
    let routing = match cmd {
        RolloutCommand::Rollback {
            name,
            project,
            to_revision,
        } => {
            let mut api = ctx.client(RolloutsClient::new).await?;
            ctx.call(api.rollback(pb::RollbackRequest {
                project: project.project,
                service: name,
                to_revision,
            }))
            .await?
        }
        RolloutCommand::Deploy {
            name,
            project,
            revision,
            tag,
        } => {
            let mut api = ctx.client(RolloutsClient::new).await?;
            ctx.call(api.deploy_tagged(pb::DeployTaggedRequest {
                project: project.project,
                service: name,
                revision,
                tag,
            }))
            .await?
        }
        RolloutCommand::Promote { name, project, tag } => {
            let mut api = ctx.client(RolloutsClient::new).await?;
            ctx.call(api.promote(pb::PromoteRequest {
                project: project.project,
                service: name,
                tag,
            }))
            .await?
        }
        RolloutCommand::SetTraffic {
            name,
            project,
            traffic,
        } => {
            let targets = parse_traffic(&traffic).map_err(CliError::usage)?;
            let mut api = ctx.client(RolloutsClient::new).await?;
            ctx.call(api.set_traffic(pb::SetTrafficRequest {
                project: project.project,
                service: name,
                targets,
            }))
            .await?
        }
    };
    ctx.print_one(&RoutingView::from(&routing))
}

#[cfg(test)]
mod tests {
    use super::parse_traffic;

    #[test]
    fn traffic_pairs_name_the_bad_item() {
        let ok = parse_traffic(&["a=90".into(), "b=10%".into()]).expect("valid");
        assert_eq!(ok[1].percent, 10);
        let err = parse_traffic(&["a".into()]).expect_err("no =");
        assert!(err.contains("`a`"), "{err}");
        let err = parse_traffic(&["a=x".into()]).expect_err("not a number");
        assert!(err.contains("`x`"), "{err}");
        let err = parse_traffic(&["a=101".into()]).expect_err("too much");
        assert!(err.contains("101"), "{err}");
    }
}
