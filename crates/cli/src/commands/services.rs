//! `rouse services …`: create, list, describe, update and delete services,
//! and read and change who may use them (their IAM policy).

use std::time::Duration;

use rouse_proto as pb;
use rouse_proto::builds_client::BuildsClient;
use rouse_proto::services_client::ServicesClient;

use super::policy::{self, BindingArgs, RemoveBindingArgs, SetPolicyArgs, Target};
use crate::context::Context;
use crate::exit::CliError;
use crate::output::{ServiceView, View};

#[derive(Debug, clap::Subcommand)]
pub enum ServicesCommand {
    /// Create a service: allocates its uuid, topic `octue.services.<uuid>` and dispatcher subscription.
    Create {
        name: String,
        #[command(flatten)]
        project: ProjectArg,
        /// Where its HTTP requests may come from: `all`, or `internal` (the
        /// internal networks only) [default: all].
        #[arg(long, value_parser = ["all", "internal"])]
        ingress: Option<String>,
        /// Let anyone call it without a token: grants `roles/invoker` to
        /// `allUsers` on it (as gcloud's flag does).
        #[arg(long)]
        allow_unauthenticated: bool,
    },
    /// List services, of one project or of all.
    List {
        /// Only this project's services.
        #[arg(long, env = "ROUSE_PROJECT")]
        project: Option<String>,
    },
    /// Show everything Rouse records about a service.
    Describe {
        name: String,
        #[command(flatten)]
        project: ProjectArg,
    },
    /// Change scaling settings and environment variables.
    Update(UpdateArgs),
    /// Credentials for `docker login` to the service's image repository
    /// (`<registry>/<project>-<service>`): good for that repository alone,
    /// for an hour; needs `services.deploy` on the service.
    DockerCredentials {
        name: String,
        #[command(flatten)]
        project: ProjectArg,
    },
    /// Delete a service with its topic and subscription.
    Delete {
        name: String,
        #[command(flatten)]
        project: ProjectArg,
    },
    /// Grant a role to a member on a service, e.g. `--role=roles/serviceUser` to let it ask.
    AddIamPolicyBinding {
        name: String,
        #[command(flatten)]
        project: ProjectArg,
        #[command(flatten)]
        args: BindingArgs,
    },
    /// Take a role away from a member on a service.
    RemoveIamPolicyBinding {
        name: String,
        #[command(flatten)]
        project: ProjectArg,
        #[command(flatten)]
        args: RemoveBindingArgs,
    },
    /// Print a service's IAM policy (YAML or JSON, with its etag).
    GetIamPolicy {
        name: String,
        #[command(flatten)]
        project: ProjectArg,
    },
    /// Replace a service's IAM policy with the one in FILE.
    SetIamPolicy {
        name: String,
        #[command(flatten)]
        project: ProjectArg,
        #[command(flatten)]
        args: SetPolicyArgs,
    },
    #[command(flatten)]
    Rollout(super::rollout::RolloutCommand),
}

#[derive(Debug, Clone, clap::Args)]
pub struct ProjectArg {
    /// The service's project.
    #[arg(long, env = "ROUSE_PROJECT")]
    pub project: String,
}

#[derive(Debug, clap::Args)]
pub struct UpdateArgs {
    name: String,
    #[command(flatten)]
    project: ProjectArg,
    /// Instances kept running with nothing to do (0 = scale to zero).
    #[arg(long)]
    min_instances: Option<u32>,
    /// Most instances running at once.
    #[arg(long)]
    max_instances: Option<u32>,
    /// Questions one instance handles at once.
    #[arg(long)]
    concurrency: Option<u32>,
    /// How long an idle instance lives, e.g. 60s, 5m.
    #[arg(long, value_parser = humantime::parse_duration)]
    idle_timeout: Option<Duration>,
    /// How long a waking instance may take to become ready.
    #[arg(long, value_parser = humantime::parse_duration)]
    wake_timeout: Option<Duration>,
    /// How long one question may run.
    #[arg(long, value_parser = humantime::parse_duration)]
    request_timeout: Option<Duration>,
    /// `on`: an instance idle for the idle timeout is frozen (paused, no
    /// CPU) and thawed by the next question in milliseconds, instead of
    /// stopped; `off`: stopped (scale to zero) [default: off].
    #[arg(long, value_parser = ["on", "off"])]
    freeze: Option<String>,
    /// How long a frozen instance is kept before it is stopped, e.g. 15m.
    #[arg(long, value_parser = humantime::parse_duration)]
    frozen_timeout: Option<Duration>,
    /// Run a question again, up to N times, when the platform failed it
    /// (its instance did not wake, crashed or could not be reached), after
    /// 1 s, 2 s, 4 s … (at most 60 s) [default: 0].
    #[arg(long, value_name = "N")]
    max_retries: Option<u32>,
    /// Publish a question, as received, to this Pub/Sub topic (an id in
    /// the platform's project) once its last attempt failed that way.
    #[arg(long, value_name = "TOPIC")]
    dead_letter_topic: Option<String>,
    /// Publish failed questions nowhere again.
    #[arg(long, conflicts_with = "dead_letter_topic")]
    clear_dead_letter_topic: bool,
    /// Set an environment variable (repeatable): KEY=VALUE.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Remove an environment variable (repeatable).
    #[arg(long = "remove-env", value_name = "KEY")]
    remove_env: Vec<String>,
    /// Remove every environment variable first.
    #[arg(long)]
    clear_env: bool,
    /// Place image instances only on nodes with this label (repeatable,
    /// all must match; replaces the selector): KEY=VALUE.
    #[arg(long = "node-selector", value_name = "KEY=VALUE", value_parser = parse_env)]
    node_selector: Vec<(String, String)>,
    /// Any engine will do again.
    #[arg(long, conflicts_with = "node_selector")]
    clear_node_selector: bool,
    /// Where its HTTP requests may come from: `all`, or `internal` (the
    /// internal networks only).
    #[arg(long, value_parser = ["all", "internal"])]
    ingress: Option<String>,
    /// Let anyone call it without a token (`roles/invoker` for `allUsers`).
    #[arg(long, conflicts_with = "no_allow_unauthenticated")]
    allow_unauthenticated: bool,
    /// Require a caller with `services.ask` again (removes the `allUsers`
    /// grant of `roles/invoker`).
    #[arg(long)]
    no_allow_unauthenticated: bool,
    /// Deploy this image: a tag of the service's repository (e.g. `v1`,
    /// pushed with `docker-credentials`) or a whole reference. It is pulled
    /// and rolled out like a build, serving once an instance passed its
    /// trial; the build's log is followed to its end.
    #[arg(long, value_name = "TAG")]
    image: Option<String>,
    /// With --image: print the build's id and return at once.
    #[arg(long = "async", requires = "image")]
    no_wait: bool,
}

/// `docker-credentials`' answer.
#[derive(Debug, serde::Serialize)]
struct DockerCredentialsView {
    registry: String,
    repository: String,
    username: String,
    password: String,
    expires: String,
}

impl View for DockerCredentialsView {
    const COLUMNS: &'static [&'static str] = &["REGISTRY", "REPOSITORY", "USERNAME", "EXPIRES"];
    const NONE: &'static str = "no credentials";

    fn row(&self) -> Vec<String> {
        vec![
            self.registry.clone(),
            self.repository.clone(),
            self.username.clone(),
            self.expires.clone(),
        ]
    }

    fn describe(&self) -> Vec<(&'static str, String)> {
        vec![
            ("registry", self.registry.clone()),
            ("repository", self.repository.clone()),
            ("username", self.username.clone()),
            ("password", self.password.clone()),
            ("expires", self.expires.clone()),
        ]
    }
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("`{s}` must have the form KEY=VALUE")),
    }
}

pub async fn run(ctx: &Context, cmd: ServicesCommand) -> Result<(), CliError> {
    match cmd {
        ServicesCommand::Create {
            name,
            project,
            ingress,
            allow_unauthenticated,
        } => {
            let mut api = ctx.client(ServicesClient::new).await?;
            let mut s = ctx
                .call(api.create_service(pb::CreateServiceRequest {
                    project: project.project.clone(),
                    name: name.clone(),
                }))
                .await?;
            if let Some(ingress) = ingress {
                s = ctx
                    .call(api.update_service(pb::UpdateServiceRequest {
                        project: project.project.clone(),
                        name: name.clone(),
                        ingress,
                        ..Default::default()
                    }))
                    .await?;
            }
            if allow_unauthenticated {
                let target = Target::service(&project.project, &name)?;
                policy::set_public(ctx, &target, true).await?;
                ctx.note(format_args!(
                    "anyone may call {} (roles/invoker for allUsers)",
                    target.what
                ));
            }
            ctx.print_one(&ServiceView::from(&s))
        }
        ServicesCommand::List { project } => {
            let mut api = ctx.client(ServicesClient::new).await?;
            let list = ctx
                .call(api.list_services(pb::ListServicesRequest {
                    project: project.unwrap_or_default(),
                }))
                .await?;
            let views: Vec<_> = list.services.iter().map(ServiceView::from).collect();
            ctx.print_list(&views)
        }
        ServicesCommand::Describe { name, project } => {
            let mut api = ctx.client(ServicesClient::new).await?;
            let s = ctx
                .call(api.get_service(pb::GetServiceRequest {
                    project: project.project,
                    name,
                }))
                .await?;
            ctx.print_one(&ServiceView::from(&s))
        }
        ServicesCommand::Update(args) => update(ctx, args).await,
        ServicesCommand::DockerCredentials { name, project } => {
            let mut api = ctx.client(ServicesClient::new).await?;
            let c = ctx
                .call(
                    api.issue_docker_credentials(pb::IssueDockerCredentialsRequest {
                        project: project.project,
                        name,
                    }),
                )
                .await?;
            ctx.note(format_args!(
                "log in with: docker login {} --username {} --password-stdin",
                c.registry, c.username
            ));
            ctx.print_one(&DockerCredentialsView {
                registry: c.registry,
                repository: c.repository,
                username: c.username,
                password: c.password,
                expires: c
                    .expire_time
                    .and_then(|t| std::time::SystemTime::try_from(t).ok())
                    .map(|t| humantime::format_rfc3339_seconds(t).to_string())
                    .unwrap_or_default(),
            })
        }
        ServicesCommand::Rollout(cmd) => super::rollout::run(ctx, cmd).await,
        ServicesCommand::Delete { name, project } => {
            let mut api = ctx.client(ServicesClient::new).await?;
            let project = project.project;
            let gone = ctx
                .call(api.delete_service(pb::DeleteServiceRequest {
                    project: project.clone(),
                    name: name.clone(),
                }))
                .await?;
            ctx.note(format_args!(
                "deleted service `{name}` of project `{project}` (uuid {})",
                gone.uuid
            ));
            Ok(())
        }
        ServicesCommand::AddIamPolicyBinding {
            name,
            project,
            args,
        } => policy::add_binding(ctx, &Target::service(&project.project, &name)?, args).await,
        ServicesCommand::RemoveIamPolicyBinding {
            name,
            project,
            args,
        } => policy::remove_binding(ctx, &Target::service(&project.project, &name)?, args).await,
        ServicesCommand::GetIamPolicy { name, project } => {
            policy::get(ctx, &Target::service(&project.project, &name)?).await
        }
        ServicesCommand::SetIamPolicy {
            name,
            project,
            args,
        } => policy::set(ctx, &Target::service(&project.project, &name)?, args).await,
    }
}

async fn update(ctx: &Context, args: UpdateArgs) -> Result<(), CliError> {
    let UpdateArgs {
        name,
        project,
        min_instances,
        max_instances,
        concurrency,
        idle_timeout,
        wake_timeout,
        request_timeout,
        freeze,
        frozen_timeout,
        max_retries,
        dead_letter_topic,
        clear_dead_letter_topic,
        env,
        remove_env,
        clear_env,
        node_selector,
        clear_node_selector,
        ingress,
        allow_unauthenticated,
        no_allow_unauthenticated,
        image,
        no_wait,
    } = args;
    let nothing = min_instances.is_none()
        && max_instances.is_none()
        && concurrency.is_none()
        && idle_timeout.is_none()
        && wake_timeout.is_none()
        && request_timeout.is_none()
        && freeze.is_none()
        && frozen_timeout.is_none()
        && max_retries.is_none()
        && dead_letter_topic.is_none()
        && !clear_dead_letter_topic
        && env.is_empty()
        && remove_env.is_empty()
        && !clear_env
        && node_selector.is_empty()
        && !clear_node_selector
        && ingress.is_none();
    if nothing && !allow_unauthenticated && !no_allow_unauthenticated && image.is_none() {
        return Err(CliError::usage(
            "nothing to update: pass at least one of --image, --min-instances, --max-instances, --concurrency, --idle-timeout, --wake-timeout, --request-timeout, --freeze, --frozen-timeout, --max-retries, --dead-letter-topic, --clear-dead-letter-topic, --env, --remove-env, --clear-env, --node-selector, --clear-node-selector, --ingress, --allow-unauthenticated, --no-allow-unauthenticated",
        ));
    }
    if allow_unauthenticated || no_allow_unauthenticated {
        let target = Target::service(&project.project, &name)?;
        let changed = policy::set_public(ctx, &target, allow_unauthenticated).await?;
        let what = match (allow_unauthenticated, changed) {
            (true, true) => "anyone may call it now (roles/invoker for allUsers)",
            (true, false) => "anyone could call it already; nothing changed",
            (false, true) => "callers need services.ask again (allUsers' roles/invoker removed)",
            (false, false) => "allUsers had no unconditional roles/invoker on it; nothing changed",
        };
        ctx.note(format_args!("{}: {what}", target.what));
    }
    let mut api = ctx.client(ServicesClient::new).await?;
    if nothing && image.is_some() {
        return deploy_image(ctx, project.project, name, image, no_wait).await;
    }
    if nothing {
        let s = ctx
            .call(api.get_service(pb::GetServiceRequest {
                project: project.project,
                name,
            }))
            .await?;
        return ctx.print_one(&ServiceView::from(&s));
    }
    let s = ctx
        .call(api.update_service(pb::UpdateServiceRequest {
            project: project.project.clone(),
            name: name.clone(),
            ingress: ingress.unwrap_or_default(),
            min_instances,
            max_instances,
            concurrency,
            idle_timeout: idle_timeout.map(rouse_proto::duration_to_pb),
            wake_timeout: wake_timeout.map(rouse_proto::duration_to_pb),
            request_timeout: request_timeout.map(rouse_proto::duration_to_pb),
            freeze: freeze.map(|f| f == "on"),
            frozen_timeout: frozen_timeout.map(rouse_proto::duration_to_pb),
            max_retries,
            dead_letter_topic: match clear_dead_letter_topic {
                true => Some(String::new()),
                false => dead_letter_topic,
            },
            set_env: env.into_iter().collect(),
            remove_env,
            clear_env,
            node_selector: node_selector.into_iter().collect(),
            clear_node_selector,
        }))
        .await?;
    if image.is_some() {
        return deploy_image(ctx, project.project, name, image, no_wait).await;
    }
    ctx.print_one(&ServiceView::from(&s))
}

/// `services update --image`: a build that pulls the image and rolls it
/// out; its log followed unless `no_wait`.
async fn deploy_image(
    ctx: &Context,
    project: String,
    name: String,
    image: Option<String>,
    no_wait: bool,
) -> Result<(), CliError> {
    let mut builds = ctx.client(BuildsClient::new).await?;
    let build = ctx
        .call(builds.deploy_image(pb::DeployImageRequest {
            project: project.clone(),
            service: name.clone(),
            image: image.unwrap_or_default(),
        }))
        .await?;
    if no_wait {
        println!("{}", build.id);
        return Ok(());
    }
    super::builds::logs(ctx, build.id.clone(), true).await?;
    ctx.note(format_args!(
        "{project}/{name} serves the image (build {}); `rouse services describe {name} --project {project}` shows its revision",
        build.id
    ));
    Ok(())
}
