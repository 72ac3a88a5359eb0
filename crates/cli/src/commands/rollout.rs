//! `rouse services rollback|deploy|promote|set-traffic` and `rouse
//! revisions describe`: which revisions answer a service's questions.

use rouse_proto as pb;
use rouse_proto::rollouts_client::RolloutsClient;
use serde::Serialize;

use super::services::ProjectArg;
use super::status;
use crate::args::{ClientArgs, Format};
use crate::exit::CliError;
use crate::output::{self, View, timestamp};

#[derive(Debug, clap::Subcommand)]
pub enum RolloutCommand {
    /// Make an earlier revision serve again (all traffic).
    Rollback {
        name: String,
        #[command(flatten)]
        project: ProjectArg,
        #[arg(long)]
        to_revision: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        #[command(flatten)]
        client: ClientArgs,
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
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Make the revision under TAG serve untagged questions.
    Promote {
        name: String,
        #[command(flatten)]
        project: ProjectArg,
        #[arg(long)]
        tag: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Split untagged questions between revisions: --traffic REV1=90,REV2=10.
    SetTraffic {
        name: String,
        #[command(flatten)]
        project: ProjectArg,
        #[arg(long, value_delimiter = ',', required = true)]
        traffic: Vec<String>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        #[command(flatten)]
        client: ClientArgs,
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

#[derive(Debug, Serialize)]
pub struct RevisionDetailView {
    pub name: String,
    pub project: String,
    pub service: String,
    pub serving: bool,
    pub state: String,
    pub runtime: String,
    pub source: String,
    pub mode: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub commit: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub branch: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub trigger: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub build: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub image_id: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    pub traffic_percent: u32,
    pub create_time: String,
}

impl View for RevisionDetailView {
    const COLUMNS: &'static [&'static str] = &["NAME", "SERVING", "STATE", "COMMIT"];
    const NONE: &'static str = "no revision";

    fn row(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            self.serving.to_string(),
            self.state.clone(),
            self.commit.clone(),
        ]
    }

    fn describe(&self) -> Vec<(&'static str, String)> {
        vec![
            ("name", self.name.clone()),
            ("service", format!("{}/{}", self.project, self.service)),
            ("serving", self.serving.to_string()),
            ("state", self.state.clone()),
            ("runtime", self.runtime.clone()),
            ("source", self.source.clone()),
            ("mode", self.mode.clone()),
            ("commit", self.commit.clone()),
            ("branch", self.branch.clone()),
            ("trigger", self.trigger.clone()),
            ("build", self.build.clone()),
            ("image id", self.image_id.clone()),
            ("tags", self.tags.join(", ")),
            ("traffic", format!("{}%", self.traffic_percent)),
            ("created", self.create_time.clone()),
        ]
    }
}

/// `rouse revisions describe REV`.
pub async fn describe_revision(
    revision: String,
    service: String,
    project: ProjectArg,
    format: Format,
    client: ClientArgs,
) -> Result<(), CliError> {
    let mut api = RolloutsClient::new(super::connect(&client).await?);
    let r = api
        .describe_revision(pb::DescribeRevisionRequest {
            project: project.project,
            service,
            revision,
        })
        .await
        .map_err(status(&client.endpoint))?
        .into_inner();
    let view = RevisionDetailView {
        name: r.name,
        project: r.project,
        service: r.service,
        serving: r.serving,
        state: r.state,
        runtime: r.runtime,
        source: r.image,
        mode: r.mode,
        commit: r.commit,
        branch: r.branch,
        trigger: r.trigger,
        build: r.build,
        image_id: r.image_id,
        tags: r.tags,
        traffic_percent: r.traffic_percent,
        create_time: timestamp(r.create_time.as_ref()),
    };
    output::print_one(&view, format)
}

pub async fn run(cmd: RolloutCommand) -> Result<(), CliError> {
    let (routing, format) = match cmd {
        RolloutCommand::Rollback {
            name,
            project,
            to_revision,
            format,
            client,
        } => {
            let mut api = RolloutsClient::new(super::connect(&client).await?);
            let r = api
                .rollback(pb::RollbackRequest {
                    project: project.project,
                    service: name,
                    to_revision,
                })
                .await
                .map_err(status(&client.endpoint))?;
            (r.into_inner(), format)
        }
        RolloutCommand::Deploy {
            name,
            project,
            revision,
            tag,
            format,
            client,
        } => {
            let mut api = RolloutsClient::new(super::connect(&client).await?);
            let r = api
                .deploy_tagged(pb::DeployTaggedRequest {
                    project: project.project,
                    service: name,
                    revision,
                    tag,
                })
                .await
                .map_err(status(&client.endpoint))?;
            (r.into_inner(), format)
        }
        RolloutCommand::Promote {
            name,
            project,
            tag,
            format,
            client,
        } => {
            let mut api = RolloutsClient::new(super::connect(&client).await?);
            let r = api
                .promote(pb::PromoteRequest {
                    project: project.project,
                    service: name,
                    tag,
                })
                .await
                .map_err(status(&client.endpoint))?;
            (r.into_inner(), format)
        }
        RolloutCommand::SetTraffic {
            name,
            project,
            traffic,
            format,
            client,
        } => {
            let targets = parse_traffic(&traffic).map_err(CliError::usage)?;
            let mut api = RolloutsClient::new(super::connect(&client).await?);
            let r = api
                .set_traffic(pb::SetTrafficRequest {
                    project: project.project,
                    service: name,
                    targets,
                })
                .await
                .map_err(status(&client.endpoint))?;
            (r.into_inner(), format)
        }
    };
    output::print_one(&RoutingView::from(&routing), format)
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
