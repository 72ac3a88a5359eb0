//! `rouse projects …`: a project's settings and its IAM policy (which every
//! service of the project inherits).

use rouse_proto as pb;
use rouse_proto::iam_client::IamClient;

use super::policy::{self, BindingArgs, RemoveBindingArgs, SetPolicyArgs, Target};
use crate::context::Context;
use crate::exit::CliError;
use crate::output::ProjectView;

#[derive(Debug, clap::Subcommand)]
pub enum ProjectsCommand {
    /// Show a project's settings.
    Describe { project: String },
    /// Change a project's settings.
    Update(UpdateArgs),
    /// Grant a role to a member on a project (and so on each of its services).
    AddIamPolicyBinding {
        project: String,
        #[command(flatten)]
        args: BindingArgs,
    },
    /// Take a role away from a member on a project.
    RemoveIamPolicyBinding {
        project: String,
        #[command(flatten)]
        args: RemoveBindingArgs,
    },
    /// Print a project's IAM policy (YAML or JSON, with its etag).
    GetIamPolicy { project: String },
    /// Replace a project's IAM policy with the one in FILE.
    SetIamPolicy {
        project: String,
        #[command(flatten)]
        args: SetPolicyArgs,
    },
}

#[derive(Debug, clap::Args)]
#[command(group(
    clap::ArgGroup::new("setting")
        .required(true)
        .args(["trust_sender_attribute", "no_trust_sender_attribute"])
))]
pub struct UpdateArgs {
    project: String,
    /// Ask questions that carry no token as `service:NAMESPACE/NAME` of their
    /// `sender` attribute instead of anonymously. For local development, or
    /// where Pub/Sub topic publisher rights are the gate.
    #[arg(long)]
    trust_sender_attribute: bool,
    /// Questions without a token are anonymous (match only `allUsers`).
    #[arg(long)]
    no_trust_sender_attribute: bool,
}

pub async fn run(ctx: &Context, cmd: ProjectsCommand) -> Result<(), CliError> {
    match cmd {
        ProjectsCommand::Describe { project } => {
            Target::project(&project)?;
            let mut api = ctx.client(IamClient::new).await?;
            let p = ctx
                .call(api.get_project(pb::GetProjectRequest { project }))
                .await?;
            ctx.print_one(&ProjectView::from(&p))
        }
        ProjectsCommand::Update(UpdateArgs {
            project,
            trust_sender_attribute,
            no_trust_sender_attribute,
        }) => {
            Target::project(&project)?;
            // The argument group makes exactly one of the two flags present.
            let trust = trust_sender_attribute && !no_trust_sender_attribute;
            let mut api = ctx.client(IamClient::new).await?;
            let p = ctx
                .call(api.update_project(pb::UpdateProjectRequest {
                    project,
                    trust_sender_attribute: Some(trust),
                }))
                .await?;
            ctx.print_one(&ProjectView::from(&p))
        }
        ProjectsCommand::AddIamPolicyBinding { project, args } => {
            policy::add_binding(ctx, &Target::project(&project)?, args).await
        }
        ProjectsCommand::RemoveIamPolicyBinding { project, args } => {
            policy::remove_binding(ctx, &Target::project(&project)?, args).await
        }
        ProjectsCommand::GetIamPolicy { project } => {
            policy::get(ctx, &Target::project(&project)?).await
        }
        ProjectsCommand::SetIamPolicy { project, args } => {
            policy::set(ctx, &Target::project(&project)?, args).await
        }
    }
}
