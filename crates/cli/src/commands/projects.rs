//! `rouse projects …`: a project's settings and its IAM policy (which every
//! service of the project inherits).

use rouse_proto as pb;
use rouse_proto::iam_client::IamClient;

use super::policy::{
    self, AddBindingArgs, GetPolicyArgs, RemoveBindingArgs, SetPolicyArgs, Target,
};
use super::status;
use crate::args::{ClientArgs, Format};
use crate::exit::CliError;
use crate::output::{self, ProjectView};

#[derive(Debug, clap::Subcommand)]
pub enum ProjectsCommand {
    /// Show a project's settings.
    Describe {
        project: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change a project's settings.
    Update(UpdateArgs),
    /// Grant a role to a member on a project (and so on each of its services).
    AddIamPolicyBinding {
        project: String,
        #[command(flatten)]
        args: AddBindingArgs,
    },
    /// Take a role away from a member on a project.
    RemoveIamPolicyBinding {
        project: String,
        #[command(flatten)]
        args: RemoveBindingArgs,
    },
    /// Print a project's IAM policy (YAML or JSON, with its etag).
    GetIamPolicy {
        project: String,
        #[command(flatten)]
        args: GetPolicyArgs,
    },
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
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    #[command(flatten)]
    client: ClientArgs,
}

pub async fn run(cmd: ProjectsCommand) -> Result<(), CliError> {
    match cmd {
        ProjectsCommand::Describe {
            project,
            format,
            client,
        } => {
            Target::project(&project)?;
            let mut api = IamClient::new(super::connect(&client).await?);
            let p = api
                .get_project(pb::GetProjectRequest { project })
                .await
                .map_err(status(&client.endpoint))?
                .into_inner();
            output::print_one(&ProjectView::from(&p), format)
        }
        ProjectsCommand::Update(UpdateArgs {
            project,
            trust_sender_attribute,
            no_trust_sender_attribute,
            format,
            client,
        }) => {
            Target::project(&project)?;
            // The argument group makes exactly one of the two flags present.
            let trust = trust_sender_attribute && !no_trust_sender_attribute;
            let mut api = IamClient::new(super::connect(&client).await?);
            let p = api
                .update_project(pb::UpdateProjectRequest {
                    project,
                    trust_sender_attribute: Some(trust),
                })
                .await
                .map_err(status(&client.endpoint))?
                .into_inner();
            output::print_one(&ProjectView::from(&p), format)
        }
        ProjectsCommand::AddIamPolicyBinding { project, args } => {
            policy::add_binding(&Target::project(&project)?, args).await
        }
        ProjectsCommand::RemoveIamPolicyBinding { project, args } => {
            policy::remove_binding(&Target::project(&project)?, args).await
        }
        ProjectsCommand::GetIamPolicy { project, args } => {
            policy::get(&Target::project(&project)?, args).await
        }
        ProjectsCommand::SetIamPolicy { project, args } => {
            policy::set(&Target::project(&project)?, args).await
        }
    }
}
