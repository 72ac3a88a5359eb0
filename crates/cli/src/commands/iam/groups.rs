//! `rouse iam groups …`: groups of principals, granted roles as `group:NAME`.

use rouse_iam::{GroupName, Principal};
use rouse_proto as pb;
use rouse_proto::groups_client::GroupsClient;

use super::usage;
use crate::context::Context;
use crate::exit::CliError;
use crate::output::GroupView;

#[derive(Debug, clap::Subcommand)]
pub enum GroupsCommand {
    /// Create a group; bind it in policies as `group:NAME`.
    Create {
        /// Lower-case letters, digits, `.`, `_` and `-` (`group:` in front is allowed).
        name: String,
        #[arg(long)]
        description: Option<String>,
    },
    /// List the groups.
    List,
    /// Show a group and its members.
    Describe { name: String },
    /// Delete a group: bindings naming it grant nothing from then on.
    Delete { name: String },
    /// Add a member (`user:EMAIL`, `serviceAccount:NAME@PROJECT.rouse` or `service:NAMESPACE/NAME`).
    AddMember {
        name: String,
        #[arg(long)]
        member: String,
    },
    /// Remove a member.
    RemoveMember {
        name: String,
        #[arg(long)]
        member: String,
    },
}

pub async fn run(ctx: &Context, cmd: GroupsCommand) -> Result<(), CliError> {
    use GroupsCommand as C;
    match cmd {
        C::Create { name, description } => {
            let name = group(&name)?;
            let mut api = ctx.client(GroupsClient::new).await?;
            let g = ctx
                .call(api.create_group(pb::CreateGroupRequest {
                    name,
                    description: description.unwrap_or_default(),
                }))
                .await?;
            ctx.print_one(&GroupView::from(&g))
        }
        C::List => {
            let mut api = ctx.client(GroupsClient::new).await?;
            let list = ctx.call(api.list_groups(pb::ListGroupsRequest {})).await?;
            let views: Vec<_> = list.groups.iter().map(GroupView::from).collect();
            ctx.print_list(&views)
        }
        C::Describe { name } => {
            let name = group(&name)?;
            let mut api = ctx.client(GroupsClient::new).await?;
            let g = ctx
                .call(api.get_group(pb::GetGroupRequest { name }))
                .await?;
            ctx.print_one(&GroupView::from(&g))
        }
        C::Delete { name } => {
            let name = group(&name)?;
            let mut api = ctx.client(GroupsClient::new).await?;
            ctx.call(api.delete_group(pb::DeleteGroupRequest { name: name.clone() }))
                .await?;
            ctx.note(format_args!("deleted group `{name}`"));
            Ok(())
        }
        C::AddMember { name, member } => change_member(ctx, &name, &member, true).await,
        C::RemoveMember { name, member } => change_member(ctx, &name, &member, false).await,
    }
}

/// `groups add-member` (`add`) and `groups remove-member`.
async fn change_member(ctx: &Context, name: &str, member: &str, add: bool) -> Result<(), CliError> {
    let request = pb::GroupMemberRequest {
        name: group(name)?,
        member: group_member(member)?,
    };
    let mut api = ctx.client(GroupsClient::new).await?;
    let g = if add {
        ctx.call(api.add_group_member(request)).await?
    } else {
        ctx.call(api.remove_group_member(request)).await?
    };
    ctx.print_one(&GroupView::from(&g))
}

/// A group name, `NAME` or `group:NAME`, checked locally.
fn group(name: &str) -> Result<String, CliError> {
    let name = name.strip_prefix("group:").unwrap_or(name);
    Ok(GroupName::parse(name).map_err(usage)?.to_string())
}

/// A group member, checked locally: a user, a service account or a service.
fn group_member(value: &str) -> Result<String, CliError> {
    match Principal::parse(value).map_err(|e| CliError::usage(format!("--member: {e}")))? {
        Principal::User(_) | Principal::ServiceAccount(_) | Principal::Service(_) => {
            Ok(value.to_owned())
        }
        _ => Err(CliError::usage(format!(
            "--member: `{value}` cannot be a group member; members are `user:EMAIL`, `serviceAccount:NAME@PROJECT.rouse` or `service:NAMESPACE/NAME` (groups do not nest)"
        ))),
    }
}
