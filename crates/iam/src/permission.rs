//! Permissions: a fixed, known set named `<resource type>.<verb>` like Google's
//! (`services.ask` is Cloud Run's `run.routes.invoke`).
//!
//! There are fewer than 64, so a set of them is one `u64` ([`PermissionSet`]):
//! a role's permissions are a mask and a check is one AND.

use std::fmt;
use std::str::FromStr;

macro_rules! permissions {
    ($($variant:ident = $name:literal,)+) => {
        /// One permission. The discriminant is its bit in a [`PermissionSet`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[repr(u8)]
        pub enum Permission {
            $($variant,)+
        }

        impl Permission {
            /// Every permission, in declaration order (grouped by resource type).
            pub const ALL: &'static [Permission] = &[$(Permission::$variant,)+];

            /// The permission's name, e.g. `services.ask`.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Permission::$variant => $name,)+
                }
            }
        }
    };
}

permissions! {
    ServicesAsk = "services.ask",
    ServicesGet = "services.get",
    ServicesList = "services.list",
    ServicesCreate = "services.create",
    ServicesUpdate = "services.update",
    ServicesDelete = "services.delete",
    ServicesDeploy = "services.deploy",
    RevisionsCreate = "revisions.create",
    RevisionsGet = "revisions.get",
    RevisionsList = "revisions.list",
    RevisionsDelete = "revisions.delete",
    ExecutionsGet = "executions.get",
    ExecutionsList = "executions.list",
    ExecutionsCancel = "executions.cancel",
    LogsRead = "logs.read",
    BuildsCreate = "builds.create",
    BuildsGet = "builds.get",
    BuildsList = "builds.list",
    BuildsCancel = "builds.cancel",
    TriggersCreate = "triggers.create",
    TriggersGet = "triggers.get",
    TriggersList = "triggers.list",
    TriggersDelete = "triggers.delete",
    IamGetPolicy = "iam.getPolicy",
    IamSetPolicy = "iam.setPolicy",
    ServiceAccountsCreate = "serviceAccounts.create",
    ServiceAccountsGet = "serviceAccounts.get",
    ServiceAccountsList = "serviceAccounts.list",
    ServiceAccountsUpdate = "serviceAccounts.update",
    ServiceAccountsDelete = "serviceAccounts.delete",
    ServiceAccountKeysCreate = "serviceAccountKeys.create",
    ServiceAccountKeysList = "serviceAccountKeys.list",
    ServiceAccountKeysDelete = "serviceAccountKeys.delete",
    RolesCreate = "roles.create",
    RolesGet = "roles.get",
    RolesList = "roles.list",
    RolesUpdate = "roles.update",
    RolesDelete = "roles.delete",
    GroupsCreate = "groups.create",
    GroupsGet = "groups.get",
    GroupsList = "groups.list",
    GroupsUpdate = "groups.update",
    GroupsDelete = "groups.delete",
    AuditRead = "audit.read",
    ProjectsCreate = "projects.create",
    ProjectsGet = "projects.get",
    ProjectsList = "projects.list",
    ProjectsUpdate = "projects.update",
    ProjectsDelete = "projects.delete",
    NodesCreate = "nodes.create",
    NodesList = "nodes.list",
    NodesUpdate = "nodes.update",
    NodesDelete = "nodes.delete",
}

// A set is a u64; this fails to compile the day a 65th permission is added.
const _: () = assert!(Permission::ALL.len() <= 64);

/// A permission name that is not one of [`Permission::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown permission `{value}`; {hint}")]
pub struct PermissionError {
    pub value: String,
    hint: String,
}

impl Permission {
    /// Parses a permission name. The error names the value and lists the
    /// permissions of its resource type (or the resource types, if that is
    /// unknown too).
    pub fn parse(value: &str) -> Result<Self, PermissionError> {
        if let Some(found) = Self::ALL.iter().find(|p| p.as_str() == value) {
            return Ok(*found);
        }
        let prefix = value.split('.').next().unwrap_or_default();
        let same_type: Vec<&str> = Self::ALL
            .iter()
            .map(|p| p.as_str())
            .filter(|name| name.split('.').next() == Some(prefix))
            .collect();
        let hint = if same_type.is_empty() {
            let mut types: Vec<&str> = Self::ALL
                .iter()
                .filter_map(|p| p.as_str().split('.').next())
                .collect();
            types.dedup();
            format!(
                "permissions have the form `<type>.<verb>` with type one of {}",
                types.join(", ")
            )
        } else {
            format!("`{prefix}` permissions are {}", same_type.join(", "))
        };
        Err(PermissionError {
            value: value.to_owned(),
            hint,
        })
    }

    /// This permission's bit.
    pub const fn bit(self) -> u64 {
        1 << (self as u8)
    }

    /// The verb after the dot (`get`, `list`, `ask`, …).
    pub fn verb(self) -> &'static str {
        let name = self.as_str();
        name.rsplit('.').next().unwrap_or(name)
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Permission {
    type Err = PermissionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A set of permissions as a bit mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PermissionSet(u64);

impl PermissionSet {
    pub const EMPTY: Self = Self(0);
    pub const ALL: Self = {
        let mut bits = 0;
        let mut i = 0;
        while i < Permission::ALL.len() {
            bits |= Permission::ALL[i].bit();
            i += 1;
        }
        Self(bits)
    };

    pub const fn from_bits_truncate(bits: u64) -> Self {
        Self(bits & Self::ALL.0)
    }

    pub const fn bits(self) -> u64 {
        self.0
    }

    pub const fn of(permissions: &[Permission]) -> Self {
        let mut bits = 0;
        let mut i = 0;
        while i < permissions.len() {
            bits |= permissions[i].bit();
            i += 1;
        }
        Self(bits)
    }

    /// Parses permission names; the first unknown one is the error.
    pub fn parse<S: AsRef<str>>(
        names: impl IntoIterator<Item = S>,
    ) -> Result<Self, PermissionError> {
        names.into_iter().try_fold(Self::EMPTY, |set, name| {
            Ok(set.with(Permission::parse(name.as_ref())?))
        })
    }

    pub const fn contains(self, permission: Permission) -> bool {
        self.0 & permission.bit() != 0
    }

    pub const fn with(self, permission: Permission) -> Self {
        Self(self.0 | permission.bit())
    }

    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    pub const fn minus(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub const fn is_superset(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// The permissions in declaration order.
    pub fn iter(self) -> impl Iterator<Item = Permission> {
        Permission::ALL
            .iter()
            .copied()
            .filter(move |p| self.contains(*p))
    }

    /// Every permission whose verb is one of `verbs`.
    pub fn with_verbs(verbs: &[&str]) -> Self {
        Permission::ALL
            .iter()
            .filter(|p| verbs.contains(&p.verb()))
            .fold(Self::EMPTY, |set, p| set.with(*p))
    }
}

impl FromIterator<Permission> for PermissionSet {
    fn from_iter<I: IntoIterator<Item = Permission>>(iter: I) -> Self {
        iter.into_iter().fold(Self::EMPTY, Self::with)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in Permission::ALL {
            assert_eq!(Permission::parse(p.as_str()), Ok(*p));
        }
        assert_eq!(PermissionSet::ALL.len(), Permission::ALL.len());
    }

    #[test]
    fn unknown_permission_names_value_and_hints() {
        let err = Permission::parse("services.fly").expect_err("unknown");
        let msg = err.to_string();
        assert!(msg.contains("`services.fly`"), "{msg}");
        assert!(msg.contains("services.ask"), "{msg}");
        let err = Permission::parse("storage.objects.get").expect_err("unknown");
        let msg = err.to_string();
        assert!(msg.contains("`storage.objects.get`"), "{msg}");
        assert!(msg.contains("serviceAccountKeys"), "{msg}");
    }

    #[test]
    fn set_operations() {
        let s = PermissionSet::of(&[Permission::ServicesAsk, Permission::LogsRead]);
        assert!(s.contains(Permission::ServicesAsk));
        assert!(!s.contains(Permission::ServicesGet));
        assert_eq!(
            s.iter().collect::<Vec<_>>(),
            vec![Permission::ServicesAsk, Permission::LogsRead]
        );
        assert_eq!(
            PermissionSet::parse(["services.ask", "logs.read"]).expect("known"),
            s
        );
        assert!(PermissionSet::parse(["services.ask", "nope"]).is_err());
        assert!(PermissionSet::ALL.is_superset(s));
        assert_eq!(s.minus(s), PermissionSet::EMPTY);
    }
}
