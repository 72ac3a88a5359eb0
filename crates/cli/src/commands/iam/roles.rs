//! `rouse iam roles …`: custom roles (named sets of permissions) of a
//! project, and the predefined roles.

use std::path::{Path, PathBuf};

use rouse_core::ProjectName;
use rouse_iam::{CustomRole, CustomRoleName, RoleDocument, RoleName, Stage};
use rouse_proto as pb;
use rouse_proto::roles_client::RolesClient;

use super::{permissions, usage};
use crate::commands::policy::{parse_by_extension, read_text};
use crate::context::Context;
use crate::exit::CliError;
use crate::output::RoleView;

#[derive(Debug, clap::Subcommand)]
pub enum RolesCommand {
    /// Create a custom role projects/PROJECT/roles/ROLE_ID.
    Create(CreateRoleArgs),
    /// List a project's custom roles, or the predefined roles without --project.
    List {
        #[arg(long)]
        project: Option<String>,
    },
    /// Show a role: `roles/NAME`, `projects/P/roles/ID`, or ID with --project.
    Describe {
        name: String,
        /// The project of a custom role given by its id alone.
        #[arg(long)]
        project: Option<String>,
    },
    /// Change a custom role; given fields replace the role's.
    Update(UpdateRoleArgs),
    /// Delete a custom role: bindings to it grant nothing from then on.
    Delete {
        name: String,
        /// The project of a custom role given by its id alone.
        #[arg(long)]
        project: Option<String>,
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
}

fn parse_stage(value: &str) -> Result<Stage, String> {
    Stage::parse(value).ok_or_else(|| {
        format!("unknown stage `{value}`; use ALPHA, BETA, GA, DEPRECATED, DISABLED or EAP")
    })
}

pub async fn run(ctx: &Context, cmd: RolesCommand) -> Result<(), CliError> {
    match cmd {
        RolesCommand::Create(args) => create(ctx, args).await,
        RolesCommand::List { project } => {
            if let Some(p) = &project {
                ProjectName::parse(p).map_err(usage)?;
            }
            let mut api = ctx.client(RolesClient::new).await?;
            let list = ctx
                .call(api.list_roles(pb::ListRolesRequest {
                    project: project.unwrap_or_default(),
                }))
                .await?;
            let views: Vec<_> = list.roles.iter().map(RoleView::from).collect();
            ctx.print_list(&views)
        }
        RolesCommand::Describe { name, project } => {
            let name = role_name(&name, project.as_deref())?;
            let mut api = ctx.client(RolesClient::new).await?;
            let r = ctx.call(api.get_role(pb::GetRoleRequest { name })).await?;
            ctx.print_one(&RoleView::from(&r))
        }
        RolesCommand::Update(args) => update(ctx, args).await,
        RolesCommand::Delete { name, project } => {
            let name = custom_role_name(&name, project.as_deref())?.to_string();
            let mut api = ctx.client(RolesClient::new).await?;
            ctx.call(api.delete_role(pb::DeleteRoleRequest { name: name.clone() }))
                .await?;
            ctx.note(format_args!(
                "deleted role `{name}`: bindings to it grant nothing from now on"
            ));
            Ok(())
        }
    }
}

async fn create(ctx: &Context, args: CreateRoleArgs) -> Result<(), CliError> {
    let CreateRoleArgs {
        role_id,
        project,
        title,
        description,
        permissions: perms,
        stage,
        file,
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
    let mut api = ctx.client(RolesClient::new).await?;
    let r = ctx
        .call(api.create_role(pb::CreateRoleRequest {
            project,
            role_id,
            role: Some(role_to_pb(&role)),
        }))
        .await?;
    ctx.print_one(&RoleView::from(&r))
}

async fn update(ctx: &Context, args: UpdateRoleArgs) -> Result<(), CliError> {
    let UpdateRoleArgs {
        name,
        project,
        title,
        description,
        permissions: perms,
        stage,
        file,
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
    let mut api = ctx.client(RolesClient::new).await?;
    let r = ctx.call(api.update_role(request)).await?;
    ctx.print_one(&RoleView::from(&r))
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
        assert!(e.to_string().contains("--project"), "{e}");
        let e = custom_role_name("roles/owner", None).unwrap_err();
        assert!(e.to_string().contains("predefined"), "{e}");
        assert_eq!(role_name("roles/owner", None).unwrap(), "roles/owner");
        assert_eq!(role_name("roles/nope", None).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn stages() {
        assert_eq!(parse_stage("ga"), Ok(Stage::Ga));
        assert!(parse_stage("beta2").unwrap_err().contains("`beta2`"));
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
        assert!(e.to_string().contains("role.yaml"), "{e}");
        assert!(e.to_string().contains("`permissions`"), "{e}");
    }
}
