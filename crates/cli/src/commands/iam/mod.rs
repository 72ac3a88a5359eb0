//! `rouse iam …`: service accounts and their keys, custom roles, groups, and
//! the questions "which of these may M do here?" (`test-permissions`) and
//! "why (not)?" (`explain`). One module per command group.

mod explain;
mod groups;
mod keys;
mod roles;
mod service_accounts;
mod test_permissions;

use rouse_iam::{Permission, Principal, Resource};
use rouse_identity::Account;

use crate::context::Context;
use crate::exit::CliError;

#[derive(Debug, clap::Subcommand)]
pub enum IamCommand {
    /// Service accounts (identities for programs) and their keys.
    #[command(subcommand)]
    ServiceAccounts(service_accounts::ServiceAccountsCommand),
    /// Custom roles (named sets of permissions) of a project, and the predefined roles.
    #[command(subcommand)]
    Roles(roles::RolesCommand),
    /// Groups of principals, granted roles as `group:NAME`.
    #[command(subcommand)]
    Groups(groups::GroupsCommand),
    /// Print which of the given permissions a member holds on a resource.
    TestPermissions(test_permissions::TestPermissionsArgs),
    /// Explain whether a member holds a permission on a resource: which binding grants it, or why not.
    Explain(explain::ExplainArgs),
}

pub async fn run(ctx: &Context, cmd: IamCommand) -> Result<(), CliError> {
    match cmd {
        IamCommand::ServiceAccounts(cmd) => service_accounts::run(ctx, cmd).await,
        IamCommand::Roles(cmd) => roles::run(ctx, cmd).await,
        IamCommand::Groups(cmd) => groups::run(ctx, cmd).await,
        IamCommand::TestPermissions(args) => test_permissions::run(ctx, args).await,
        IamCommand::Explain(args) => explain::run(ctx, args).await,
    }
}

fn usage(e: impl std::fmt::Display) -> CliError {
    CliError::usage(e.to_string())
}

/// A service account's e-mail, checked locally (`serviceAccount:` is allowed
/// in front, as members are written).
fn account(email: &str) -> Result<Account, CliError> {
    let email = email.strip_prefix("serviceAccount:").unwrap_or(email);
    Account::service_account_email(email).map_err(usage)
}

/// Permissions given as flags, each checked: the error names the bad one.
fn permissions(list: &[String]) -> Result<Vec<String>, CliError> {
    list.iter()
        .map(|p| {
            Permission::parse(p.trim())
                .map(|p| p.as_str().to_owned())
                .map_err(|e| CliError::usage(format!("--permissions: {e}")))
        })
        .collect()
}

/// A resource, `projects/P` or `projects/P/services/S`, checked locally.
fn resource(value: &str) -> Result<String, CliError> {
    Resource::parse(value).map_err(usage)?;
    Ok(value.to_owned())
}

/// A `--member`, checked locally.
fn member(value: &str) -> Result<String, CliError> {
    Principal::parse(value).map_err(|e| CliError::usage(format!("--member: {e}")))?;
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn permissions_are_checked_locally() {
        assert_eq!(
            permissions(&["services.ask".into(), " services.get".into()]).unwrap(),
            ["services.ask", "services.get"]
        );
        let e = permissions(&["services.ask".into(), "services.fly".into()]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("`services.fly`"), "{e}");
    }

    #[test]
    fn service_account_emails() {
        assert_eq!(
            account("serviceAccount:a@p.rouse").unwrap().email(),
            "a@p.rouse"
        );
        assert_eq!(account("a@p.com").unwrap_err().exit_code(), 2);
    }
}
