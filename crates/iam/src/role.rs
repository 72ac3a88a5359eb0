//! Roles: named sets of permissions.
//!
//! Predefined roles (`roles/owner`, …) are fixed tables. Custom roles are
//! Google's `projects/PROJECT/roles/ROLE_ID` with a title, a description,
//! `includedPermissions` and a launch `stage`; a `DISABLED` role grants
//! nothing, and a custom role grants only on its own project and the
//! project's services. [`Roles`] is the catalog a policy is checked and
//! evaluated against.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use rouse_core::ProjectName;
use serde::{Deserialize, Serialize};

use crate::permission::{Permission as P, PermissionError, PermissionSet};
use crate::resource::Resource;

/// Google's limits on a custom role's id, title and description.
const ROLE_ID_LEN: std::ops::RangeInclusive<usize> = 3..=64;
const MAX_TITLE_LEN: usize = 100;
const MAX_DESCRIPTION_LEN: usize = 300;

/// The predefined roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PredefinedRole {
    Owner,
    Editor,
    Viewer,
    ServiceUser,
    Invoker,
    Deployer,
    IamAdmin,
    Auditor,
}

/// Reading metadata: every `get` and `list`, and reading policies.
const READ: PermissionSet = PermissionSet::of(&[
    P::NodesList,
    P::ServicesGet,
    P::ServicesList,
    P::RevisionsGet,
    P::RevisionsList,
    P::ExecutionsGet,
    P::ExecutionsList,
    P::BuildsGet,
    P::BuildsList,
    P::TriggersGet,
    P::TriggersList,
    P::IamGetPolicy,
    P::ServiceAccountsGet,
    P::ServiceAccountsList,
    P::ServiceAccountKeysList,
    P::RolesGet,
    P::RolesList,
    P::GroupsGet,
    P::GroupsList,
    P::ProjectsGet,
    P::ProjectsList,
]);

const OWNER: PermissionSet = PermissionSet::ALL;
/// Like Google's editor: changes everything in a project but not who may do
/// what (policies, roles, keys), not the audit log, and not the project
/// itself (`projects.update` switches how senders are authenticated).
const EDITOR: PermissionSet = PermissionSet::ALL.minus(PermissionSet::of(&[
    P::IamSetPolicy,
    P::RolesCreate,
    P::RolesUpdate,
    P::RolesDelete,
    P::ServiceAccountKeysCreate,
    P::ServiceAccountKeysDelete,
    P::GroupsCreate,
    P::GroupsUpdate,
    P::GroupsDelete,
    P::AuditRead,
    P::ProjectsCreate,
    P::ProjectsUpdate,
    P::ProjectsDelete,
    P::NodesCreate,
    P::NodesUpdate,
    P::NodesDelete,
]));
const VIEWER: PermissionSet = READ.with(P::LogsRead);
const SERVICE_USER: PermissionSet = PermissionSet::of(&[P::ServicesAsk, P::ServicesGet]);
const INVOKER: PermissionSet = PermissionSet::of(&[P::ServicesAsk]);
const DEPLOYER: PermissionSet = PermissionSet::of(&[
    P::ServicesGet,
    P::ServicesList,
    P::ServicesUpdate,
    P::ServicesDeploy,
    P::RevisionsCreate,
    P::RevisionsGet,
    P::RevisionsList,
    P::RevisionsDelete,
    P::BuildsCreate,
    P::BuildsGet,
    P::BuildsList,
    P::BuildsCancel,
    P::TriggersCreate,
    P::TriggersGet,
    P::TriggersList,
    P::TriggersDelete,
    P::ExecutionsGet,
    P::ExecutionsList,
    P::LogsRead,
]);
const IAM_ADMIN: PermissionSet = PermissionSet::of(&[
    P::IamGetPolicy,
    P::IamSetPolicy,
    P::ServiceAccountsCreate,
    P::ServiceAccountsGet,
    P::ServiceAccountsList,
    P::ServiceAccountsUpdate,
    P::ServiceAccountsDelete,
    P::ServiceAccountKeysCreate,
    P::ServiceAccountKeysList,
    P::ServiceAccountKeysDelete,
    P::RolesCreate,
    P::RolesGet,
    P::RolesList,
    P::RolesUpdate,
    P::RolesDelete,
    P::GroupsCreate,
    P::GroupsGet,
    P::GroupsList,
    P::GroupsUpdate,
    P::GroupsDelete,
    P::ProjectsGet,
]);
const AUDITOR: PermissionSet = READ.with(P::AuditRead);

impl PredefinedRole {
    pub const ALL: &'static [PredefinedRole] = &[
        Self::Owner,
        Self::Editor,
        Self::Viewer,
        Self::ServiceUser,
        Self::Invoker,
        Self::Deployer,
        Self::IamAdmin,
        Self::Auditor,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Owner => "roles/owner",
            Self::Editor => "roles/editor",
            Self::Viewer => "roles/viewer",
            Self::ServiceUser => "roles/serviceUser",
            Self::Invoker => "roles/invoker",
            Self::Deployer => "roles/deployer",
            Self::IamAdmin => "roles/iamAdmin",
            Self::Auditor => "roles/auditor",
        }
    }

    pub const fn title(self) -> &'static str {
        match self {
            Self::Owner => "Owner",
            Self::Editor => "Editor",
            Self::Viewer => "Viewer",
            Self::ServiceUser => "Service User",
            Self::Invoker => "Invoker",
            Self::Deployer => "Deployer",
            Self::IamAdmin => "IAM Admin",
            Self::Auditor => "Auditor",
        }
    }

    pub const fn description(self) -> &'static str {
        match self {
            Self::Owner => "Full access to every resource, including who may do what.",
            Self::Editor => {
                "Create, change, deploy, ask and delete services and their builds, triggers and service accounts; not policies, roles, keys, groups, the project itself or the audit log."
            }
            Self::Viewer => {
                "Read-only access to services, revisions, executions, logs and policies."
            }
            Self::ServiceUser => {
                "May ask a service questions and see it (Octue's octue-service-user)."
            }
            Self::Invoker => "May ask a service questions (Cloud Run Invoker).",
            Self::Deployer => {
                "Deploys existing services: revisions, builds, triggers, and reading executions and logs."
            }
            Self::IamAdmin => {
                "Manages policies, service accounts, their keys, custom roles and groups."
            }
            Self::Auditor => "Reads the audit log and all metadata.",
        }
    }

    pub const fn permissions(self) -> PermissionSet {
        match self {
            Self::Owner => OWNER,
            Self::Editor => EDITOR,
            Self::Viewer => VIEWER,
            Self::ServiceUser => SERVICE_USER,
            Self::Invoker => INVOKER,
            Self::Deployer => DEPLOYER,
            Self::IamAdmin => IAM_ADMIN,
            Self::Auditor => AUDITOR,
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|r| r.name() == value)
    }
}

/// Why a role name or a custom role was refused. Every message names the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    #[error(
        "role `{value}` must be `roles/NAME` (a predefined role) or `projects/PROJECT/roles/ROLE_ID` (a custom role)"
    )]
    Shape { value: String },
    #[error(
        "unknown predefined role `{value}`; predefined roles are {}",
        predefined_names()
    )]
    UnknownPredefined { value: String },
    #[error(
        "custom role `{value}`: role id `{role_id}` must be {min} to {max} letters, digits, `_` or `.`",
        min = ROLE_ID_LEN.start(), max = ROLE_ID_LEN.end()
    )]
    BadRoleId { value: String, role_id: String },
    #[error("custom role `{value}`: {source}")]
    BadProject {
        value: String,
        source: rouse_core::NameError,
    },
    #[error("custom role `{value}` does not exist; create it with `rouse iam roles create`")]
    NotFound { value: String },
    #[error(
        "custom role `{value}` belongs to project `{project}` and can only be granted on it and its services, not on `{resource}`"
    )]
    OutOfScope {
        value: String,
        project: String,
        resource: String,
    },
    #[error("custom role `{role}`: {source}")]
    Permission {
        role: String,
        source: PermissionError,
    },
    #[error("custom role `{role}`: {field} has {len} characters; at most {max} are allowed")]
    TooLong {
        role: String,
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("custom role `{role}`: `title` is required")]
    MissingTitle { role: String },
    #[error(
        "custom role document names `{in_document}` but the role being written is `{expected}`"
    )]
    NameMismatch {
        in_document: String,
        expected: String,
    },
}

fn predefined_names() -> String {
    PredefinedRole::ALL
        .iter()
        .map(|r| r.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A custom role's name, `projects/PROJECT/roles/ROLE_ID`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CustomRoleName {
    project: ProjectName,
    role_id: String,
}

impl CustomRoleName {
    pub fn parse(value: &str) -> Result<Self, RoleError> {
        let Some((project, role_id)) = value
            .strip_prefix("projects/")
            .and_then(|rest| rest.split_once("/roles/"))
        else {
            return Err(RoleError::Shape {
                value: value.to_owned(),
            });
        };
        let project = ProjectName::parse(project).map_err(|source| RoleError::BadProject {
            value: value.to_owned(),
            source,
        })?;
        Self::new(&project, role_id).map_err(|_| RoleError::BadRoleId {
            value: value.to_owned(),
            role_id: role_id.to_owned(),
        })
    }

    /// The role `role_id` of `project` (Google's `[a-zA-Z0-9_.]{3,64}`).
    pub fn new(project: &ProjectName, role_id: &str) -> Result<Self, RoleError> {
        let ok = ROLE_ID_LEN.contains(&role_id.len())
            && role_id
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.');
        if ok {
            Ok(Self {
                project: project.clone(),
                role_id: role_id.to_owned(),
            })
        } else {
            Err(RoleError::BadRoleId {
                value: format!("projects/{project}/roles/{role_id}"),
                role_id: role_id.to_owned(),
            })
        }
    }

    pub fn project(&self) -> &ProjectName {
        &self.project
    }

    pub fn role_id(&self) -> &str {
        &self.role_id
    }
}

impl fmt::Display for CustomRoleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "projects/{}/roles/{}", self.project, self.role_id)
    }
}

/// A role as named in a binding.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RoleName {
    Predefined(PredefinedRole),
    Custom(CustomRoleName),
}

impl RoleName {
    /// Parses the name's shape; whether a custom role exists is the catalog's
    /// business ([`Roles::check`]).
    pub fn parse(value: &str) -> Result<Self, RoleError> {
        if value.starts_with("roles/") {
            PredefinedRole::parse(value)
                .map(Self::Predefined)
                .ok_or_else(|| RoleError::UnknownPredefined {
                    value: value.to_owned(),
                })
        } else {
            CustomRoleName::parse(value).map(Self::Custom)
        }
    }
}

impl fmt::Display for RoleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Predefined(r) => f.write_str(r.name()),
            Self::Custom(c) => c.fmt(f),
        }
    }
}

impl FromStr for RoleName {
    type Err = RoleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A custom role's launch stage, Google's vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Stage {
    #[default]
    Alpha,
    Beta,
    Ga,
    Deprecated,
    /// Grants nothing, wherever it is bound.
    Disabled,
    Eap,
}

impl Stage {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Alpha => "ALPHA",
            Self::Beta => "BETA",
            Self::Ga => "GA",
            Self::Deprecated => "DEPRECATED",
            Self::Disabled => "DISABLED",
            Self::Eap => "EAP",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        [
            Self::Alpha,
            Self::Beta,
            Self::Ga,
            Self::Deprecated,
            Self::Disabled,
            Self::Eap,
        ]
        .into_iter()
        .find(|s| s.as_str().eq_ignore_ascii_case(value))
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A custom role document in Google's shape (`gcloud iam roles describe`,
/// `--file`): unknown fields are refused with their name.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RoleDocument {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub title: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default)]
    pub included_permissions: Vec<String>,
    #[serde(default)]
    pub stage: Stage,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
}

/// A validated custom role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomRole {
    pub name: CustomRoleName,
    pub title: String,
    pub description: String,
    pub permissions: PermissionSet,
    pub stage: Stage,
}

impl CustomRole {
    /// Validates a role document as the role `name`. A `name` in the document
    /// must agree with it.
    pub fn from_document(name: &CustomRoleName, doc: &RoleDocument) -> Result<Self, RoleError> {
        let role = name.to_string();
        if let Some(in_document) = doc.name.as_deref().filter(|n| *n != role) {
            return Err(RoleError::NameMismatch {
                in_document: in_document.to_owned(),
                expected: role,
            });
        }
        if doc.title.trim().is_empty() {
            return Err(RoleError::MissingTitle { role });
        }
        for (field, value, max) in [
            ("title", &doc.title, MAX_TITLE_LEN),
            ("description", &doc.description, MAX_DESCRIPTION_LEN),
        ] {
            let len = value.chars().count();
            if len > max {
                return Err(RoleError::TooLong {
                    role,
                    field,
                    len,
                    max,
                });
            }
        }
        let permissions = PermissionSet::parse(&doc.included_permissions)
            .map_err(|source| RoleError::Permission { role, source })?;
        Ok(Self {
            name: name.clone(),
            title: doc.title.clone(),
            description: doc.description.clone(),
            permissions,
            stage: doc.stage,
        })
    }

    pub fn to_document(&self) -> RoleDocument {
        RoleDocument {
            name: Some(self.name.to_string()),
            title: self.title.clone(),
            description: self.description.clone(),
            included_permissions: self
                .permissions
                .iter()
                .map(|p| p.as_str().to_owned())
                .collect(),
            stage: self.stage,
            etag: None,
        }
    }

    /// What the role grants: nothing while it is `DISABLED`.
    pub fn granted(&self) -> PermissionSet {
        if self.stage == Stage::Disabled {
            PermissionSet::EMPTY
        } else {
            self.permissions
        }
    }
}

/// How a binding's role resolves on a given resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// The role grants these permissions.
    Grants(PermissionSet),
    /// A `DISABLED` custom role that would otherwise grant these.
    Disabled(PermissionSet),
    /// A custom role of another project, which would otherwise grant these.
    OutOfScope(PermissionSet),
    /// A custom role that does not exist (deleted, or never created).
    Missing,
}

impl Resolution {
    /// The permissions actually granted: only [`Resolution::Grants`] grants.
    pub fn granted(self) -> PermissionSet {
        match self {
            Self::Grants(set) => set,
            _ => PermissionSet::EMPTY,
        }
    }

    /// The permissions the role names, granted or not.
    pub fn declared(self) -> PermissionSet {
        match self {
            Self::Grants(set) | Self::Disabled(set) | Self::OutOfScope(set) => set,
            Self::Missing => PermissionSet::EMPTY,
        }
    }
}

/// The roles a policy may bind: the predefined ones and the custom roles given.
#[derive(Debug, Clone, Default)]
pub struct Roles {
    custom: HashMap<String, CustomRole>,
}

impl Roles {
    /// The predefined roles only.
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_custom(roles: impl IntoIterator<Item = CustomRole>) -> Self {
        let mut catalog = Self::new();
        for role in roles {
            catalog.insert(role);
        }
        catalog
    }

    /// Adds or replaces a custom role.
    pub fn insert(&mut self, role: CustomRole) -> Option<CustomRole> {
        self.custom.insert(role.name.to_string(), role)
    }

    pub fn remove(&mut self, name: &CustomRoleName) -> Option<CustomRole> {
        self.custom.remove(&name.to_string())
    }

    pub fn custom(&self, name: &str) -> Option<&CustomRole> {
        self.custom.get(name)
    }

    /// Custom roles, in name order.
    pub fn custom_roles(&self) -> Vec<&CustomRole> {
        let mut roles: Vec<&CustomRole> = self.custom.values().collect();
        roles.sort_by(|a, b| a.name.cmp(&b.name));
        roles
    }

    /// How `role` resolves in a policy on `on`. `key` is the role's name as a
    /// string (the binding keeps it, so the hot path does not format it).
    pub fn resolve(&self, role: &RoleName, key: &str, on: &Resource) -> Resolution {
        match role {
            RoleName::Predefined(r) => Resolution::Grants(r.permissions()),
            RoleName::Custom(name) => match self.custom.get(key) {
                None => Resolution::Missing,
                Some(c) if on.project() != Some(name.project()) => {
                    Resolution::OutOfScope(c.permissions)
                }
                Some(c) if c.stage == Stage::Disabled => Resolution::Disabled(c.permissions),
                Some(c) => Resolution::Grants(c.permissions),
            },
        }
    }

    /// Checks that `role` may be bound in a policy on `on`: it exists, and a
    /// custom role belongs to `on`'s project.
    pub fn check(&self, role: &RoleName, on: &Resource) -> Result<(), RoleError> {
        let key = role.to_string();
        match self.resolve(role, &key, on) {
            Resolution::Missing => Err(RoleError::NotFound { value: key }),
            Resolution::OutOfScope(_) => {
                let project = match role {
                    RoleName::Custom(c) => c.project().to_string(),
                    RoleName::Predefined(_) => String::new(),
                };
                Err(RoleError::OutOfScope {
                    value: key,
                    project,
                    resource: on.to_string(),
                })
            }
            Resolution::Grants(_) | Resolution::Disabled(_) => Ok(()),
        }
    }

    /// The roles (predefined and custom) that include `permission`, for hints.
    pub fn roles_with(&self, permission: crate::Permission) -> Vec<String> {
        let mut names: Vec<String> = PredefinedRole::ALL
            .iter()
            .filter(|r| r.permissions().contains(permission))
            .map(|r| r.name().to_owned())
            .collect();
        names.extend(
            self.custom_roles()
                .into_iter()
                .filter(|c| c.granted().contains(permission))
                .map(|c| c.name.to_string()),
        );
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Permission;

    #[test]
    fn predefined_roles() {
        use PredefinedRole::*;
        assert_eq!(Owner.permissions(), PermissionSet::ALL);
        let read = PermissionSet::with_verbs(&["get", "list"]).with(Permission::IamGetPolicy);
        assert_eq!(READ, read);
        assert!(!Viewer.permissions().contains(Permission::AuditRead));
        assert!(Viewer.permissions().contains(Permission::LogsRead));
        for p in Viewer.permissions().iter() {
            assert!(
                matches!(p.verb(), "get" | "list" | "read" | "getPolicy"),
                "{p}"
            );
        }
        assert!(Auditor.permissions().contains(Permission::AuditRead));
        assert!(Auditor.permissions().is_superset(read));
        assert!(Editor.permissions().is_superset(Viewer.permissions()));
        assert!(!Editor.permissions().contains(Permission::IamSetPolicy));
        assert!(!Editor.permissions().contains(Permission::RolesCreate));
        assert!(
            !Editor
                .permissions()
                .contains(Permission::ServiceAccountKeysCreate)
        );
        assert!(Editor.permissions().contains(Permission::ServicesDeploy));
        assert!(Editor.permissions().contains(Permission::ServicesAsk));
        assert_eq!(
            ServiceUser.permissions().iter().collect::<Vec<_>>(),
            [Permission::ServicesAsk, Permission::ServicesGet]
        );
        assert_eq!(
            Invoker.permissions(),
            PermissionSet::of(&[Permission::ServicesAsk])
        );
        assert!(!Deployer.permissions().contains(Permission::ServicesAsk));
        assert!(!Deployer.permissions().contains(Permission::ServicesCreate));
        assert!(Deployer.permissions().contains(Permission::RevisionsDelete));
        assert!(IamAdmin.permissions().contains(Permission::IamSetPolicy));
        assert!(!IamAdmin.permissions().contains(Permission::ServicesAsk));
        for r in PredefinedRole::ALL {
            assert_eq!(RoleName::parse(r.name()), Ok(RoleName::Predefined(*r)));
            assert!(!r.title().is_empty() && !r.description().is_empty());
        }
    }

    #[test]
    fn role_name_errors_name_the_value() {
        for (bad, needle) in [
            ("roles/god", "unknown predefined role `roles/god`"),
            ("owner", "role `owner` must be"),
            ("projects/p/roles/x", "role id `x`"),
            ("projects/P/roles/abc", "custom role `projects/P/roles/abc`"),
            ("projects/p/roles/a-b-c", "role id `a-b-c`"),
        ] {
            let err = RoleName::parse(bad).expect_err(bad).to_string();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    fn custom(doc: &str, name: &str) -> Result<CustomRole, RoleError> {
        let doc: RoleDocument = serde_yaml::from_str(doc).expect("document");
        CustomRole::from_document(&CustomRoleName::parse(name).expect("name"), &doc)
    }

    #[test]
    fn custom_roles_from_documents() {
        let role = custom(
            "title: Asker\ndescription: asks\nincludedPermissions: [services.ask]\nstage: GA\n",
            "projects/p/roles/asker",
        )
        .expect("valid");
        assert_eq!(
            role.granted(),
            PermissionSet::of(&[Permission::ServicesAsk])
        );
        let doc = role.to_document();
        assert_eq!(
            CustomRole::from_document(&role.name, &doc).expect("round trip"),
            role
        );

        let err = custom(
            "title: x\nincludedPermissions: [services.fly]\n",
            "projects/p/roles/abc",
        )
        .expect_err("unknown permission")
        .to_string();
        assert!(err.contains("`services.fly`"), "{err}");
        let err = custom("includedPermissions: []\n", "projects/p/roles/abc")
            .expect_err("no title")
            .to_string();
        assert!(err.contains("`title` is required"), "{err}");
        let err = serde_yaml::from_str::<RoleDocument>("title: x\npermissions: []\n")
            .expect_err("unknown field")
            .to_string();
        assert!(err.contains("`permissions`"), "{err}");
        let err = serde_yaml::from_str::<RoleDocument>("title: x\nstage: SOON\n")
            .expect_err("unknown stage")
            .to_string();
        assert!(err.contains("SOON"), "{err}");
        let err = custom(
            "name: projects/p/roles/other\ntitle: x\n",
            "projects/p/roles/abc",
        )
        .expect_err("mismatch")
        .to_string();
        assert!(err.contains("projects/p/roles/other"), "{err}");
    }

    #[test]
    fn disabled_and_out_of_scope_custom_roles_grant_nothing() {
        let mut role = custom(
            "title: Asker\nincludedPermissions: [services.ask]\nstage: DISABLED\n",
            "projects/p/roles/asker",
        )
        .expect("valid");
        assert_eq!(role.granted(), PermissionSet::EMPTY);
        let mut roles = Roles::with_custom([role.clone()]);
        let name = RoleName::Custom(role.name.clone());
        let key = name.to_string();
        let here = Resource::parse("projects/p/services/a").expect("resource");
        let there = Resource::parse("projects/q").expect("resource");
        assert!(matches!(
            roles.resolve(&name, &key, &here),
            Resolution::Disabled(_)
        ));
        assert!(roles.check(&name, &here).is_ok());
        let err = roles
            .check(&name, &there)
            .expect_err("out of scope")
            .to_string();
        assert!(err.contains("belongs to project `p`"), "{err}");
        role.stage = Stage::Ga;
        roles.insert(role.clone());
        assert_eq!(
            roles.resolve(&name, &key, &here).granted(),
            PermissionSet::of(&[Permission::ServicesAsk])
        );
        assert_eq!(
            roles.resolve(&name, &key, &there).granted(),
            PermissionSet::EMPTY
        );
        roles.remove(&role.name);
        assert_eq!(roles.resolve(&name, &key, &here), Resolution::Missing);
        let err = roles.check(&name, &here).expect_err("missing").to_string();
        assert!(err.contains("does not exist"), "{err}");
    }
}
