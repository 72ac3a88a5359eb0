//! `rouse iam …`: service accounts and their keys, custom roles, groups, and the
//! questions "which of these may M do here?" (`test-permissions`) and "why
//! (not)?" (`explain`).
//!
//! Keys are generated here, not on the server: `keys create` writes the key
//! file first (never over an existing file), then registers only the public
//! half, and removes the file again if that fails, so the server never knows
//! a key whose private half nobody holds, and a failed call leaves nothing.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rouse_core::ProjectName;
use rouse_iam::{
    CustomRole, CustomRoleName, GroupName, Permission, Principal, Resource, RoleDocument, RoleName,
    Stage,
};
use rouse_identity::{Account, KeyFile, KeyFileError};
use rouse_proto as pb;
use rouse_proto::groups_client::GroupsClient;
use rouse_proto::iam_client::IamClient;
use rouse_proto::roles_client::RolesClient;
use rouse_proto::service_accounts_client::ServiceAccountsClient;
use serde::Serialize;

use super::policy::{parse_by_extension, read_text};
use super::status;
use crate::args::{ClientArgs, Format};
use crate::exit::CliError;
use crate::output::{self, GroupView, KeyView, RoleView, ServiceAccountView};

#[derive(Debug, clap::Subcommand)]
pub enum IamCommand {
    /// Service accounts (identities for programs) and their keys.
    #[command(subcommand)]
    ServiceAccounts(ServiceAccountsCommand),
    /// Custom roles (named sets of permissions) of a project, and the predefined roles.
    #[command(subcommand)]
    Roles(RolesCommand),
    /// Groups of principals, granted roles as `group:NAME`.
    #[command(subcommand)]
    Groups(GroupsCommand),
    /// Print which of the given permissions a member holds on a resource.
    TestPermissions {
        /// `projects/P` or `projects/P/services/S`.
        resource: String,
        /// Whose permissions (default: the caller's).
        #[arg(long)]
        member: Option<String>,
        /// Permissions to test, comma-separated, e.g. services.ask,services.get.
        #[arg(long, required = true, value_delimiter = ',')]
        permissions: Vec<String>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Explain whether a member holds a permission on a resource: which binding grants it, or why not.
    Explain {
        /// `projects/P` or `projects/P/services/S`.
        resource: String,
        #[arg(long)]
        member: String,
        /// e.g. services.ask.
        #[arg(long)]
        permission: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        #[command(flatten)]
        client: ClientArgs,
    },
}

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
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List service accounts, of one project or of all.
    List {
        /// Only this project's accounts [env: ROUSE_PROJECT].
        #[arg(long, env = "ROUSE_PROJECT")]
        project: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a service account.
    Describe {
        /// NAME@PROJECT.rouse
        email: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a service account and all its keys (their tokens stop working at once).
    Delete {
        email: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Disable a service account: its tokens are refused at once.
    Disable {
        email: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Enable a disabled service account again.
    Enable {
        email: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A service account's keys.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, clap::Subcommand)]
pub enum GroupsCommand {
    /// Create a group; bind it in policies as `group:NAME`.
    Create {
        /// Lower-case letters, digits, `.`, `_` and `-` (`group:` in front is allowed).
        name: String,
        #[arg(long)]
        description: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the groups.
    List {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a group and its members.
    Describe {
        name: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a group: bindings naming it grant nothing from then on.
    Delete {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Add a member (`user:EMAIL`, `serviceAccount:NAME@PROJECT.rouse` or `service:NAMESPACE/NAME`).
    AddMember {
        name: String,
        #[arg(long)]
        member: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove a member.
    RemoveMember {
        name: String,
        #[arg(long)]
        member: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Generate a key pair, write it to FILE (use it with --credentials) and register its public half.
    Create {
        /// Where to write the key file; must not exist yet.
        file: PathBuf,
        /// The service account, NAME@PROJECT.rouse.
        #[arg(long)]
        iam_account: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List a service account's keys.
    List {
        #[arg(long)]
        iam_account: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete (revoke) a key: tokens signed with it are refused at once.
    Delete {
        key_id: String,
        #[arg(long)]
        iam_account: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum RolesCommand {
    /// Create a custom role projects/PROJECT/roles/ROLE_ID.
    Create(CreateRoleArgs),
    /// List a project's custom roles, or the predefined roles without --project.
    List {
        #[arg(long)]
        project: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a role: `roles/NAME`, `projects/P/roles/ID`, or ID with --project.
    Describe {
        name: String,
        /// The project of a custom role given by its id alone.
        #[arg(long)]
        project: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change a custom role; given fields replace the role's.
    Update(UpdateRoleArgs),
    /// Delete a custom role: bindings to it grant nothing from then on.
    Delete {
        name: String,
        /// The project of a custom role given by its id alone.
        #[arg(long)]
        project: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, clap::Args)]
pub struct CreateRoleArgs {
    /// 3 to 64 letters, digits, `_` or `.`.
    role_id: String,
    /// The role's project.
    #[arg(long, env = "ROUSE_PROJECT")]
    project: String,
    /// Required unless --file.
    #[arg(long, required_unless_present = "file")]
    title: Option<String>,
    #[arg(long)]
    description: Option<String>,
    /// Comma-separated, e.g. services.get,services.ask.
    #[arg(long, value_delimiter = ',')]
    permissions: Vec<String>,
    /// ALPHA (default), BETA, GA, DEPRECATED, DISABLED (grants nothing) or EAP.
    #[arg(long, value_parser = parse_stage)]
    stage: Option<Stage>,
    /// The role as a YAML or JSON document (title, description,
    /// includedPermissions, stage), instead of the flags.
    #[arg(long, conflicts_with_all = ["title", "description", "permissions", "stage"])]
    file: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, clap::Args)]
pub struct UpdateRoleArgs {
    /// `projects/P/roles/ID`, or ID with --project.
    name: String,
    /// The project of a custom role given by its id alone.
    #[arg(long)]
    project: Option<String>,
    #[arg(long)]
    title: Option<String>,
    #[arg(long)]
    description: Option<String>,
    /// Replaces the role's permissions; comma-separated.
    #[arg(long, value_delimiter = ',')]
    permissions: Option<Vec<String>>,
    #[arg(long, value_parser = parse_stage)]
    stage: Option<Stage>,
    /// Replace the whole role with this YAML or JSON document (as `describe
    /// --format yaml` prints it).
    #[arg(long, conflicts_with_all = ["title", "description", "permissions", "stage"])]
    file: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    #[command(flatten)]
    client: ClientArgs,
}

fn parse_stage(value: &str) -> Result<Stage, String> {
    Stage::parse(value).ok_or_else(|| {
        format!("unknown stage `{value}`; use ALPHA, BETA, GA, DEPRECATED, DISABLED or EAP")
    })
}

pub async fn run(cmd: IamCommand) -> Result<(), CliError> {
    match cmd {
        IamCommand::ServiceAccounts(cmd) => service_accounts(cmd).await,
        IamCommand::Roles(cmd) => roles(cmd).await,
        IamCommand::Groups(cmd) => groups(cmd).await,
        IamCommand::TestPermissions {
            resource,
            member,
            permissions,
            format,
            client,
        } => test_permissions(resource, member, permissions, format, client).await,
        IamCommand::Explain {
            resource,
            member,
            permission,
            format,
            client,
        } => explain(resource, member, permission, format, client).await,
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

async fn service_accounts(cmd: ServiceAccountsCommand) -> Result<(), CliError> {
    use ServiceAccountsCommand as C;
    match cmd {
        C::Create {
            name,
            project,
            display_name,
            description,
            format,
            client,
        } => {
            let p = ProjectName::parse(&project).map_err(usage)?;
            Account::service_account(&name, &p).map_err(usage)?;
            let mut api = ServiceAccountsClient::new(super::connect(&client).await?);
            let a = api
                .create_service_account(pb::CreateServiceAccountRequest {
                    project,
                    name,
                    display_name: display_name.unwrap_or_default(),
                    description: description.unwrap_or_default(),
                })
                .await
                .map_err(status(&client.endpoint))?
                .into_inner();
            output::print_one(&ServiceAccountView::from(&a), format)
        }
        C::List {
            project,
            format,
            client,
        } => {
            if let Some(p) = &project {
                ProjectName::parse(p).map_err(usage)?;
            }
            let mut api = ServiceAccountsClient::new(super::connect(&client).await?);
            let list = api
                .list_service_accounts(pb::ListServiceAccountsRequest {
                    project: project.unwrap_or_default(),
                })
                .await
                .map_err(status(&client.endpoint))?
                .into_inner();
            let views: Vec<_> = list.accounts.iter().map(ServiceAccountView::from).collect();
            output::print_list(&views, format)
        }
        C::Describe {
            email,
            format,
            client,
        } => {
            let email = account(&email)?.email().to_owned();
            let mut api = ServiceAccountsClient::new(super::connect(&client).await?);
            let a = api
                .get_service_account(pb::GetServiceAccountRequest { email })
                .await
                .map_err(status(&client.endpoint))?
                .into_inner();
            output::print_one(&ServiceAccountView::from(&a), format)
        }
        C::Delete { email, client } => {
            let email = account(&email)?.email().to_owned();
            let mut api = ServiceAccountsClient::new(super::connect(&client).await?);
            api.delete_service_account(pb::DeleteServiceAccountRequest {
                email: email.clone(),
            })
            .await
            .map_err(status(&client.endpoint))?;
            eprintln!("deleted service account `{email}` and its keys");
            Ok(())
        }
        C::Disable { email, client } => set_disabled(&email, true, &client).await,
        C::Enable { email, client } => set_disabled(&email, false, &client).await,
        C::Keys(cmd) => keys(cmd).await,
    }
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

async fn groups(cmd: GroupsCommand) -> Result<(), CliError> {
    use GroupsCommand as C;
    match cmd {
        C::Create {
            name,
            description,
            format,
            client,
        } => {
            let name = group(&name)?;
            let mut api = GroupsClient::new(super::connect(&client).await?);
            let g = api
                .create_group(pb::CreateGroupRequest {
                    name,
                    description: description.unwrap_or_default(),
                })
                .await
                .map_err(status(&client.endpoint))?
                .into_inner();
            output::print_one(&GroupView::from(&g), format)
        }
        C::List { format, client } => {
            let mut api = GroupsClient::new(super::connect(&client).await?);
            let list = api
                .list_groups(pb::ListGroupsRequest {})
                .await
                .map_err(status(&client.endpoint))?
                .into_inner();
            let views: Vec<_> = list.groups.iter().map(GroupView::from).collect();
            output::print_list(&views, format)
        }
        C::Describe {
            name,
            format,
            client,
        } => {
            let name = group(&name)?;
            let mut api = GroupsClient::new(super::connect(&client).await?);
            let g = api
                .get_group(pb::GetGroupRequest { name })
                .await
                .map_err(status(&client.endpoint))?
                .into_inner();
            output::print_one(&GroupView::from(&g), format)
        }
        C::Delete { name, client } => {
            let name = group(&name)?;
            let mut api = GroupsClient::new(super::connect(&client).await?);
            api.delete_group(pb::DeleteGroupRequest { name: name.clone() })
                .await
                .map_err(status(&client.endpoint))?;
            eprintln!("deleted group `{name}`");
            Ok(())
        }
        C::AddMember {
            name,
            member,
            format,
            client,
        } => change_member(&name, &member, true, format, &client).await,
        C::RemoveMember {
            name,
            member,
            format,
            client,
        } => change_member(&name, &member, false, format, &client).await,
    }
}

/// `groups add-member` (`add`) and `groups remove-member`.
async fn change_member(
    name: &str,
    member: &str,
    add: bool,
    format: Format,
    client: &ClientArgs,
) -> Result<(), CliError> {
    let request = pb::GroupMemberRequest {
        name: group(name)?,
        member: group_member(member)?,
    };
    let mut api = GroupsClient::new(super::connect(client).await?);
    let answer = if add {
        api.add_group_member(request).await
    } else {
        api.remove_group_member(request).await
    };
    let g = answer.map_err(status(&client.endpoint))?.into_inner();
    output::print_one(&GroupView::from(&g), format)
}

async fn set_disabled(email: &str, disabled: bool, client: &ClientArgs) -> Result<(), CliError> {
    let email = account(email)?.email().to_owned();
    let mut api = ServiceAccountsClient::new(super::connect(client).await?);
    api.set_service_account_disabled(pb::SetServiceAccountDisabledRequest {
        email: email.clone(),
        disabled,
    })
    .await
    .map_err(status(&client.endpoint))?;
    if disabled {
        eprintln!("disabled service account `{email}`: its tokens are refused from now on");
    } else {
        eprintln!("enabled service account `{email}`");
    }
    Ok(())
}

async fn keys(cmd: KeysCommand) -> Result<(), CliError> {
    match cmd {
        KeysCommand::Create {
            file,
            iam_account,
            client,
        } => create_key(&file, &iam_account, &client).await,
        KeysCommand::List {
            iam_account,
            format,
            client,
        } => {
            let email = account(&iam_account)?.email().to_owned();
            let mut api = ServiceAccountsClient::new(super::connect(&client).await?);
            let list = api
                .list_keys(pb::ListKeysRequest { email })
                .await
                .map_err(status(&client.endpoint))?
                .into_inner();
            let views: Vec<_> = list.keys.iter().map(KeyView::from).collect();
            output::print_list(&views, format)
        }
        KeysCommand::Delete {
            key_id,
            iam_account,
            client,
        } => {
            let email = account(&iam_account)?.email().to_owned();
            let mut api = ServiceAccountsClient::new(super::connect(&client).await?);
            api.delete_key(pb::DeleteKeyRequest {
                email: email.clone(),
                key_id: key_id.clone(),
            })
            .await
            .map_err(status(&client.endpoint))?;
            eprintln!(
                "deleted key `{key_id}` of `{email}`: tokens signed with it are refused from now on"
            );
            Ok(())
        }
    }
}

async fn create_key(file: &Path, iam_account: &str, client: &ClientArgs) -> Result<(), CliError> {
    let account = account(iam_account)?;
    let email = account.email().to_owned();
    // Early, for a clear error before any call; `write_new` still refuses
    // atomically should the file appear in between.
    if file.exists() {
        return Err(CliError::usage(format!(
            "key file {} already exists; choose another FILE or delete it first",
            file.display()
        )));
    }
    // Connect first: an unreachable server then leaves no file behind.
    let mut api = ServiceAccountsClient::new(super::connect(client).await?);
    let (key, entry) = KeyFile::generate(account, &client.endpoint, SystemTime::now())
        .map_err(|e| CliError::internal(e.to_string()))?;
    key.write_new(file).map_err(|e| match e {
        KeyFileError::AlreadyExists { .. } => {
            CliError::usage(format!("{e}; choose another FILE or delete it first"))
        }
        other => CliError::internal(other.to_string()),
    })?;
    let created = api
        .create_key(pb::CreateKeyRequest {
            email: email.clone(),
            key_id: entry.key_id.clone(),
            public_key: entry.public_key.to_base64(),
        })
        .await;
    if let Err(s) = created {
        // The key was not registered: a file holding it would only mislead.
        let removed = std::fs::remove_file(file);
        let mut e = CliError::from_status(&s, &client.endpoint);
        if let Err(r) = removed {
            e.message.push_str(&format!(
                "; the unregistered key file {} could not be removed ({r}), delete it",
                file.display()
            ));
        }
        return Err(e);
    }
    eprintln!(
        "created key `{}` for `{email}` in {}; use it with --credentials {} (or ROUSE_CREDENTIALS)",
        entry.key_id,
        file.display(),
        file.display()
    );
    Ok(())
}

/// A custom role's name: `projects/P/roles/ID`, or ID with `--project`.
fn custom_role_name(name: &str, project: Option<&str>) -> Result<CustomRoleName, CliError> {
    if name.starts_with("roles/") {
        return Err(CliError::usage(format!(
            "`{name}` is a predefined role and cannot be changed; create a custom role with `rouse iam roles create`"
        )));
    }
    if name.contains('/') {
        return CustomRoleName::parse(name).map_err(usage);
    }
    let Some(project) = project else {
        return Err(CliError::usage(format!(
            "role `{name}` needs its project: write `projects/PROJECT/roles/{name}` or pass --project"
        )));
    };
    let project = ProjectName::parse(project).map_err(usage)?;
    CustomRoleName::new(&project, name).map_err(usage)
}

/// Any role's name, for `describe`.
fn role_name(name: &str, project: Option<&str>) -> Result<String, CliError> {
    if name.starts_with("roles/") || name.contains('/') {
        RoleName::parse(name).map_err(usage)?;
        Ok(name.to_owned())
    } else {
        custom_role_name(name, project).map(|n| n.to_string())
    }
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

/// A role document file, Google's shape; errors name the file and the field.
fn read_role_file(path: &Path) -> Result<RoleDocument, CliError> {
    let text = read_text(path, "role file")?;
    parse_by_extension(
        path,
        &text,
        |t| serde_json::from_str::<RoleDocument>(t).map_err(|e| format!("not valid JSON: {e}")),
        |t| serde_yaml::from_str::<RoleDocument>(t).map_err(|e| format!("not valid YAML: {e}")),
    )
    .map_err(|e| CliError::usage(format!("role file {}: {e}", path.display())))
}

fn role_to_pb(role: &CustomRole) -> pb::Role {
    pb::Role {
        name: role.name.to_string(),
        title: role.title.clone(),
        description: role.description.clone(),
        included_permissions: role
            .permissions
            .iter()
            .map(|p| p.as_str().to_owned())
            .collect(),
        stage: role.stage.as_str().to_owned(),
    }
}

async fn roles(cmd: RolesCommand) -> Result<(), CliError> {
    match cmd {
        RolesCommand::Create(args) => create_role(args).await,
        RolesCommand::List {
            project,
            format,
            client,
        } => {
            if let Some(p) = &project {
                ProjectName::parse(p).map_err(usage)?;
            }
            let mut api = RolesClient::new(super::connect(&client).await?);
            let list = api
                .list_roles(pb::ListRolesRequest {
                    project: project.unwrap_or_default(),
                })
                .await
                .map_err(status(&client.endpoint))?
                .into_inner();
            let views: Vec<_> = list.roles.iter().map(RoleView::from).collect();
            output::print_list(&views, format)
        }
        RolesCommand::Describe {
            name,
            project,
            format,
            client,
        } => {
            let name = role_name(&name, project.as_deref())?;
            let mut api = RolesClient::new(super::connect(&client).await?);
            let r = api
                .get_role(pb::GetRoleRequest { name })
                .await
                .map_err(status(&client.endpoint))?
                .into_inner();
            output::print_one(&RoleView::from(&r), format)
        }
        RolesCommand::Update(args) => update_role(args).await,
        RolesCommand::Delete {
            name,
            project,
            client,
        } => {
            let name = custom_role_name(&name, project.as_deref())?.to_string();
            let mut api = RolesClient::new(super::connect(&client).await?);
            api.delete_role(pb::DeleteRoleRequest { name: name.clone() })
                .await
                .map_err(status(&client.endpoint))?;
            eprintln!("deleted role `{name}`: bindings to it grant nothing from now on");
            Ok(())
        }
    }
}

async fn create_role(args: CreateRoleArgs) -> Result<(), CliError> {
    let CreateRoleArgs {
        role_id,
        project,
        title,
        description,
        permissions: perms,
        stage,
        file,
        format,
        client,
    } = args;
    let project_name = ProjectName::parse(&project).map_err(usage)?;
    let name = CustomRoleName::new(&project_name, &role_id).map_err(usage)?;
    let doc = match &file {
        Some(path) => read_role_file(path)?,
        None => RoleDocument {
            name: None,
            title: title.unwrap_or_default(),
            description: description.unwrap_or_default(),
            included_permissions: permissions(&perms)?,
            stage: stage.unwrap_or_default(),
            etag: None,
        },
    };
    let role = CustomRole::from_document(&name, &doc).map_err(|e| match &file {
        Some(path) => CliError::usage(format!("role file {}: {e}", path.display())),
        None => usage(e),
    })?;
    let mut api = RolesClient::new(super::connect(&client).await?);
    let r = api
        .create_role(pb::CreateRoleRequest {
            project,
            role_id,
            role: Some(role_to_pb(&role)),
        })
        .await
        .map_err(status(&client.endpoint))?
        .into_inner();
    output::print_one(&RoleView::from(&r), format)
}

async fn update_role(args: UpdateRoleArgs) -> Result<(), CliError> {
    let UpdateRoleArgs {
        name,
        project,
        title,
        description,
        permissions: perms,
        stage,
        file,
        format,
        client,
    } = args;
    let name = custom_role_name(&name, project.as_deref())?;
    let request = match &file {
        Some(path) => {
            let doc = read_role_file(path)?;
            let role = CustomRole::from_document(&name, &doc)
                .map_err(|e| CliError::usage(format!("role file {}: {e}", path.display())))?;
            let pb::Role {
                name,
                title,
                description,
                included_permissions,
                stage,
            } = role_to_pb(&role);
            pb::UpdateRoleRequest {
                name,
                title: Some(title),
                description: Some(description),
                included_permissions,
                set_permissions: true,
                stage: Some(stage),
            }
        }
        None => {
            if title.is_none() && description.is_none() && perms.is_none() && stage.is_none() {
                return Err(CliError::usage(
                    "nothing to update: pass at least one of --title, --description, --permissions, --stage, or --file",
                ));
            }
            if title.as_deref().is_some_and(|t| t.trim().is_empty()) {
                return Err(CliError::usage(format!(
                    "--title must not be empty: custom role `{name}` needs a title"
                )));
            }
            pb::UpdateRoleRequest {
                name: name.to_string(),
                title,
                description,
                set_permissions: perms.is_some(),
                included_permissions: permissions(&perms.unwrap_or_default())?,
                stage: stage.map(|s| s.as_str().to_owned()),
            }
        }
    };
    let mut api = RolesClient::new(super::connect(&client).await?);
    let r = api
        .update_role(request)
        .await
        .map_err(status(&client.endpoint))?
        .into_inner();
    output::print_one(&RoleView::from(&r), format)
}

fn resource(value: &str) -> Result<String, CliError> {
    Resource::parse(value).map_err(usage)?;
    Ok(value.to_owned())
}

fn member(value: &str) -> Result<String, CliError> {
    Principal::parse(value).map_err(|e| CliError::usage(format!("--member: {e}")))?;
    Ok(value.to_owned())
}

async fn test_permissions(
    resource_name: String,
    member_name: Option<String>,
    perms: Vec<String>,
    format: Format,
    client: ClientArgs,
) -> Result<(), CliError> {
    let resource_name = resource(&resource_name)?;
    let member_name = member_name.as_deref().map(member).transpose()?;
    let perms = permissions(&perms)?;
    let mut api = IamClient::new(super::connect(&client).await?);
    let held = api
        .test_iam_permissions(pb::TestIamPermissionsRequest {
            resource: resource_name.clone(),
            member: member_name.unwrap_or_default(),
            permissions: perms,
        })
        .await
        .map_err(status(&client.endpoint))?
        .into_inner();
    #[derive(Serialize)]
    struct Held<'a> {
        member: &'a str,
        resource: &'a str,
        permissions: &'a [String],
    }
    if held.permissions.is_empty() && format == Format::Table {
        eprintln!(
            "`{}` holds none of these permissions on `{resource_name}`",
            held.member
        );
    }
    let view = Held {
        member: &held.member,
        resource: &resource_name,
        permissions: &held.permissions,
    };
    output::print_value(&view, format, || {
        held.permissions.iter().map(|p| format!("{p}\n")).collect()
    })
}

async fn explain(
    resource_name: String,
    member_name: String,
    permission: String,
    format: Format,
    client: ClientArgs,
) -> Result<(), CliError> {
    let resource_name = resource(&resource_name)?;
    let member_name = member(&member_name)?;
    let permission = Permission::parse(&permission)
        .map_err(|e| CliError::usage(format!("--permission: {e}")))?
        .as_str()
        .to_owned();
    let mut api = IamClient::new(super::connect(&client).await?);
    let answer = api
        .explain_permission(pb::ExplainPermissionRequest {
            resource: resource_name.clone(),
            member: member_name.clone(),
            permission: permission.clone(),
        })
        .await
        .map_err(status(&client.endpoint))?
        .into_inner();
    #[derive(Serialize)]
    struct Explained<'a> {
        member: &'a str,
        permission: &'a str,
        resource: &'a str,
        granted: bool,
        lines: &'a [String],
    }
    let view = Explained {
        member: &member_name,
        permission: &permission,
        resource: &resource_name,
        granted: answer.granted,
        lines: &answer.lines,
    };
    // Exit 0 either way: the answer is the output, not a failure.
    output::print_value(&view, format, || {
        let verdict = if answer.granted {
            format!("GRANTED: `{member_name}` holds `{permission}` on `{resource_name}`\n")
        } else {
            format!("DENIED: `{member_name}` does not hold `{permission}` on `{resource_name}`\n")
        };
        answer
            .lines
            .iter()
            .fold(verdict, |out, line| out + "  " + line + "\n")
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn role_names() {
        assert_eq!(
            custom_role_name("builder", Some("p")).unwrap().to_string(),
            "projects/p/roles/builder"
        );
        assert_eq!(
            custom_role_name("projects/p/roles/builder", None)
                .unwrap()
                .to_string(),
            "projects/p/roles/builder"
        );
        let e = custom_role_name("builder", None).unwrap_err();
        assert!(e.message.contains("--project"), "{}", e.message);
        let e = custom_role_name("roles/owner", None).unwrap_err();
        assert!(e.message.contains("predefined"), "{}", e.message);
        assert_eq!(role_name("roles/owner", None).unwrap(), "roles/owner");
        assert_eq!(role_name("roles/nope", None).unwrap_err().code, 2);
    }

    #[test]
    fn permissions_are_checked_locally() {
        assert_eq!(
            permissions(&["services.ask".into(), " services.get".into()]).unwrap(),
            ["services.ask", "services.get"]
        );
        let e = permissions(&["services.ask".into(), "services.fly".into()]).unwrap_err();
        assert_eq!(e.code, 2);
        assert!(e.message.contains("`services.fly`"), "{}", e.message);
    }

    #[test]
    fn stages() {
        assert_eq!(parse_stage("ga"), Ok(Stage::Ga));
        assert!(parse_stage("beta2").unwrap_err().contains("`beta2`"));
    }

    #[test]
    fn service_account_emails() {
        assert_eq!(
            account("serviceAccount:a@p.rouse").unwrap().email(),
            "a@p.rouse"
        );
        assert_eq!(account("a@p.com").unwrap_err().code, 2);
    }

    #[test]
    fn role_file_names_unknown_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("role.yaml");
        std::fs::write(
            &path,
            "title: Builder\nincludedPermissions: [builds.create]\nstage: GA\n",
        )
        .unwrap();
        let doc = read_role_file(&path).unwrap();
        assert_eq!(doc.stage, Stage::Ga);
        std::fs::write(&path, "title: Builder\npermissions: [builds.create]\n").unwrap();
        let e = read_role_file(&path).unwrap_err();
        assert!(e.message.contains("role.yaml"), "{}", e.message);
        assert!(e.message.contains("`permissions`"), "{}", e.message);
    }
}
