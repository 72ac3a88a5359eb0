//! `rouse iam service-accounts …`: identities for programs, NAME@PROJECT.rouse.

use rouse_core::ProjectName;
use rouse_identity::Account;
use rouse_proto as pb;
use rouse_proto::service_accounts_client::ServiceAccountsClient;

use super::keys::{self, KeysCommand};
use super::{account, usage};
use crate::context::Context;
use crate::exit::CliError;
use crate::output::ServiceAccountView;

#[derive(Debug, clap::Subcommand)]
pub enum ServiceAccountsCommand {
    /// Create a service account NAME@PROJECT.rouse.
    Create {
        /// The account id, the part before `@`: lower-case letters, digits and `-`.
        name: String,
        /// The account's project.
        #[arg(long, env = "ROUSE_PROJECT")]
        project: String,
        #[arg(long)]
        display_name: Option<String>,
        #[arg(long)]
        description: Option<String>,
    },
    /// List service accounts, of one project or of all.
    List {
        /// Only this project's accounts.
        #[arg(long, env = "ROUSE_PROJECT")]
        project: Option<String>,
    },
    /// Show a service account.
    Describe {
        /// NAME@PROJECT.rouse
        email: String,
    },
    /// Delete a service account and all its keys (their tokens stop working at once).
    Delete { email: String },
    /// Disable a service account: its tokens are refused at once.
    Disable { email: String },
    /// Enable a disabled service account again.
    Enable { email: String },
    /// A service account's keys.
    #[command(subcommand)]
    Keys(KeysCommand),
}

pub async fn run(ctx: &Context, cmd: ServiceAccountsCommand) -> Result<(), CliError> {
    use ServiceAccountsCommand as C;
    match cmd {
        C::Create {
            name,
            project,
            display_name,
            description,
        } => {
            let p = ProjectName::parse(&project).map_err(usage)?;
            Account::service_account(&name, &p).map_err(usage)?;
            let mut api = ctx.client(ServiceAccountsClient::new).await?;
            let a = ctx
                .call(api.create_service_account(pb::CreateServiceAccountRequest {
                    project,
                    name,
                    display_name: display_name.unwrap_or_default(),
                    description: description.unwrap_or_default(),
                }))
                .await?;
            ctx.print_one(&ServiceAccountView::from(&a))
        }
        C::List { project } => {
            if let Some(p) = &project {
                ProjectName::parse(p).map_err(usage)?;
            }
            let mut api = ctx.client(ServiceAccountsClient::new).await?;
            let list = ctx
                .call(api.list_service_accounts(pb::ListServiceAccountsRequest {
                    project: project.unwrap_or_default(),
                }))
                .await?;
            let views: Vec<_> = list.accounts.iter().map(ServiceAccountView::from).collect();
            ctx.print_list(&views)
        }
        C::Describe { email } => {
            let email = account(&email)?.email().to_owned();
            let mut api = ctx.client(ServiceAccountsClient::new).await?;
            let a = ctx
                .call(api.get_service_account(pb::GetServiceAccountRequest { email }))
                .await?;
            ctx.print_one(&ServiceAccountView::from(&a))
        }
        C::Delete { email } => {
            let email = account(&email)?.email().to_owned();
            let mut api = ctx.client(ServiceAccountsClient::new).await?;
            ctx.call(api.delete_service_account(pb::DeleteServiceAccountRequest {
                email: email.clone(),
            }))
            .await?;
            ctx.note(format_args!(
                "deleted service account `{email}` and its keys"
            ));
            Ok(())
        }
        C::Disable { email } => set_disabled(ctx, &email, true).await,
        C::Enable { email } => set_disabled(ctx, &email, false).await,
        C::Keys(cmd) => keys::run(ctx, cmd).await,
    }
}

async fn set_disabled(ctx: &Context, email: &str, disabled: bool) -> Result<(), CliError> {
    let email = account(email)?.email().to_owned();
    let mut api = ctx.client(ServiceAccountsClient::new).await?;
    ctx.call(
        api.set_service_account_disabled(pb::SetServiceAccountDisabledRequest {
            email: email.clone(),
            disabled,
        }),
    )
    .await?;
    if disabled {
        ctx.note(format_args!(
            "disabled service account `{email}`: its tokens are refused from now on"
        ));
    } else {
        ctx.note(format_args!("enabled service account `{email}`"));
    }
    Ok(())
}
