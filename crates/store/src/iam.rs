//! [`IamStore`] on SQLite: policies, service accounts, public keys, custom
//! roles, per-project settings and the audit log.
//!
//! The store keeps policy and role documents as the JSON the IAM engine
//! (`rouse-iam`) reads and writes; it does not interpret them. Setting a
//! policy is a compare-and-swap on its etag, so of two concurrent
//! `set-iam-policy` calls based on the same read exactly one wins.

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use async_trait::async_trait;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, ValueRef};
use rusqlite::{OptionalExtension, Row, ToSql, params};

use crate::sqlite::{Cached as _, from_micros, micros};
use crate::{SqliteStore, StoreError};

/// A policy document as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPolicy {
    /// `projects/P` or `projects/P/services/S` (or `rouse` for the root).
    pub resource: String,
    pub document: String,
    pub etag: String,
    pub updated_at: SystemTime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountRecord {
    /// `NAME@PROJECT.rouse`
    pub email: String,
    pub project: String,
    pub display_name: String,
    pub description: String,
    pub disabled: bool,
    pub created_at: SystemTime,
}

/// A principal's public key: only the public half is ever stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKeyRecord {
    pub key_id: String,
    /// `serviceAccount:…` or `user:…`
    pub principal: String,
    /// The encoded public key, as the identity crate writes it.
    pub public_key: String,
    pub created_at: SystemTime,
}

/// One audit entry: an administrative change, or a granted or denied call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Store-assigned; 0 when appending.
    pub id: i64,
    pub at: SystemTime,
    pub principal: String,
    /// The API method or `question`.
    pub action: String,
    pub resource: String,
    pub permission: String,
    pub decision: AuditDecision,
    /// JSON: before/after for changes, the reason for denials.
    pub detail: String,
}

/// What an audit entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditDecision {
    /// A permission check passed.
    Granted,
    /// A permission check failed.
    Denied,
    /// Something was changed (a policy, an account, a service); kept when
    /// old decisions are pruned.
    Changed,
}

impl AuditDecision {
    pub const ALL: [Self; 3] = [Self::Granted, Self::Denied, Self::Changed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Granted => "granted",
            Self::Denied => "denied",
            Self::Changed => "changed",
        }
    }
}

impl fmt::Display for AuditDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown audit decision word.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown audit decision `{0}`: expected granted, denied or changed")]
pub struct ParseDecisionError(pub String);

impl FromStr for AuditDecision {
    type Err = ParseDecisionError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|decision| decision.as_str() == text)
            .ok_or_else(|| ParseDecisionError(text.to_owned()))
    }
}

impl ToSql for AuditDecision {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for AuditDecision {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        value
            .as_str()?
            .parse()
            .map_err(|err: ParseDecisionError| FromSqlError::Other(err.into()))
    }
}

/// Which audit entries to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub since: Option<SystemTime>,
    pub principal: Option<String>,
    /// Entries whose resource starts with this.
    pub resource_prefix: Option<String>,
    pub decision: Option<AuditDecision>,
    pub limit: u32,
}

/// A group of principals, named by `group:NAME` in policies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    pub name: String,
    pub description: String,
    /// Member principals (`user:…`, `serviceAccount:…`, `service:…`), sorted.
    pub members: Vec<String>,
    pub created_at: SystemTime,
}

/// Everything permission checks read, read in one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IamData {
    /// [`IamSnapshot::iam_version`] at the time of reading.
    pub version: i64,
    pub policies: Vec<StoredPolicy>,
    /// `(name, document)` of every custom role.
    pub roles: Vec<(String, String)>,
    /// Every key, with whether its account is disabled.
    pub keys: Vec<(PublicKeyRecord, bool)>,
    /// Projects that trust the `sender` attribute of questions.
    pub trusted_projects: Vec<String>,
    /// `(group, member)` for every membership.
    pub memberships: Vec<(String, String)>,
}

/// Allow policies, and the project setting that trusts the `sender`
/// attribute of questions.
#[async_trait]
pub trait PolicyStore: Send + Sync + 'static {
    async fn get_policy(&self, resource: &str) -> Result<Option<StoredPolicy>, StoreError>;
    /// Replaces the policy if its current etag is `expected_etag` (`None`:
    /// there must be no policy yet, or the caller does not care when
    /// `force`). Fails with [`StoreError::EtagMismatch`] otherwise.
    async fn set_policy(
        &self,
        policy: &StoredPolicy,
        expected_etag: Option<&str>,
        force: bool,
    ) -> Result<(), StoreError>;
    /// Removes the policy of a resource that is gone (and of what it held:
    /// `projects/P/services/S` also removes nothing else); `false` if none.
    async fn delete_policy(&self, resource: &str) -> Result<bool, StoreError>;
    /// Every policy, for the evaluator's cache.
    async fn list_policies(&self) -> Result<Vec<StoredPolicy>, StoreError>;
    async fn set_trust_sender_attribute(
        &self,
        project: &str,
        trust: bool,
    ) -> Result<(), StoreError>;
    async fn trusts_sender_attribute(&self, project: &str) -> Result<bool, StoreError>;
}

/// Service accounts and the public keys principals sign with.
#[async_trait]
pub trait AccountStore: Send + Sync + 'static {
    async fn insert_service_account(
        &self,
        account: &ServiceAccountRecord,
    ) -> Result<(), StoreError>;
    async fn get_service_account(
        &self,
        email: &str,
    ) -> Result<Option<ServiceAccountRecord>, StoreError>;
    async fn list_service_accounts(
        &self,
        project: Option<&str>,
    ) -> Result<Vec<ServiceAccountRecord>, StoreError>;
    async fn set_service_account_disabled(
        &self,
        email: &str,
        disabled: bool,
    ) -> Result<bool, StoreError>;
    /// Deletes the account and every key of it; `false` if there was none.
    async fn delete_service_account(&self, email: &str) -> Result<bool, StoreError>;
    async fn insert_key(&self, key: &PublicKeyRecord) -> Result<(), StoreError>;
    async fn get_key(&self, key_id: &str) -> Result<Option<PublicKeyRecord>, StoreError>;
    async fn list_keys(&self, principal: &str) -> Result<Vec<PublicKeyRecord>, StoreError>;
    async fn delete_key(&self, key_id: &str) -> Result<bool, StoreError>;
}

/// Custom roles, as their JSON documents.
#[async_trait]
pub trait RoleStore: Send + Sync + 'static {
    async fn put_role(&self, name: &str, document: &str) -> Result<(), StoreError>;
    async fn get_role(&self, name: &str) -> Result<Option<String>, StoreError>;
    async fn list_roles(&self) -> Result<Vec<(String, String)>, StoreError>;
    async fn delete_role(&self, name: &str) -> Result<bool, StoreError>;
}

/// Groups of principals (`group:NAME` in policies).
#[async_trait]
pub trait GroupStore: Send + Sync + 'static {
    /// Fails with [`StoreError::Duplicate`] if the group exists.
    async fn create_group(&self, group: &GroupRecord) -> Result<(), StoreError>;
    async fn get_group(&self, name: &str) -> Result<Option<GroupRecord>, StoreError>;
    async fn list_groups(&self) -> Result<Vec<GroupRecord>, StoreError>;
    /// Deletes the group and its memberships; false if there was none.
    async fn delete_group(&self, name: &str) -> Result<bool, StoreError>;
    /// Adds `member` to `group`: `None` if there is no such group, else
    /// whether it was not a member before.
    async fn add_group_member(&self, group: &str, member: &str)
    -> Result<Option<bool>, StoreError>;
    /// Whether `member` was in `group`.
    async fn remove_group_member(&self, group: &str, member: &str) -> Result<bool, StoreError>;
}

/// What permission checks read, as one snapshot, and a version that says
/// when to read it again.
#[async_trait]
pub trait IamSnapshot: Send + Sync + 'static {
    /// A number that changes whenever policies, accounts, keys, custom
    /// roles, groups or project settings change (in any process using this
    /// store).
    async fn iam_version(&self) -> Result<i64, StoreError>;
    /// Everything permission checks read, as of one moment.
    async fn load_iam(&self) -> Result<IamData, StoreError>;
}

/// The audit log.
#[async_trait]
pub trait AuditStore: Send + Sync + 'static {
    async fn append_audit(&self, entry: &AuditEntry) -> Result<i64, StoreError>;
    /// Deletes up to `limit` of the oldest decision entries (`granted`,
    /// `denied`) recorded before `before`; administrative changes are kept.
    /// Returns how many it deleted.
    async fn prune_audit_decisions(
        &self,
        before: SystemTime,
        limit: u32,
    ) -> Result<u64, StoreError>;
    /// Newest first.
    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError>;
}

/// Every IAM store together, for the API that manages them all.
pub trait IamStore:
    PolicyStore + AccountStore + RoleStore + GroupStore + IamSnapshot + AuditStore
{
}
impl<T: PolicyStore + AccountStore + RoleStore + GroupStore + IamSnapshot + AuditStore> IamStore
    for T
{
}

fn read_policy(r: &Row<'_>) -> rusqlite::Result<StoredPolicy> {
    Ok(StoredPolicy {
        resource: r.get(0)?,
        document: r.get(1)?,
        etag: r.get(2)?,
        updated_at: from_micros(r.get(3)?),
    })
}

fn read_account(r: &Row<'_>) -> rusqlite::Result<ServiceAccountRecord> {
    Ok(ServiceAccountRecord {
        email: r.get(0)?,
        project: r.get(1)?,
        display_name: r.get(2)?,
        description: r.get(3)?,
        disabled: r.get(4)?,
        created_at: from_micros(r.get(5)?),
    })
}

fn read_key(r: &Row<'_>) -> rusqlite::Result<PublicKeyRecord> {
    Ok(PublicKeyRecord {
        key_id: r.get(0)?,
        principal: r.get(1)?,
        public_key: r.get(2)?,
        created_at: from_micros(r.get(3)?),
    })
}

fn read_audit(r: &Row<'_>) -> rusqlite::Result<AuditEntry> {
    Ok(AuditEntry {
        id: r.get(0)?,
        at: from_micros(r.get(1)?),
        principal: r.get(2)?,
        action: r.get(3)?,
        resource: r.get(4)?,
        permission: r.get(5)?,
        decision: r.get(6)?,
        detail: r.get(7)?,
    })
}

pub(crate) const ACCOUNT_COLUMNS: &str =
    "email, project, display_name, description, disabled, created_at_us";
pub(crate) const KEY_COLUMNS: &str = "key_id, principal, public_key, created_at_us";
pub(crate) const AUDIT_COLUMNS: &str =
    "id, at_us, principal, action, resource, permission, decision, detail";

#[async_trait]
impl PolicyStore for SqliteStore {
    async fn get_policy(&self, resource: &str) -> Result<Option<StoredPolicy>, StoreError> {
        let resource = resource.to_owned();
        self.with(move |c| {
            Ok(c.query_row(
                "SELECT resource, document, etag, updated_at_us FROM policies WHERE resource = ?1",
                [resource],
                read_policy,
            )
            .optional()?)
        })
        .await
    }

    async fn set_policy(
        &self,
        policy: &StoredPolicy,
        expected_etag: Option<&str>,
        force: bool,
    ) -> Result<(), StoreError> {
        let (p, expected) = (policy.clone(), expected_etag.map(str::to_owned));
        self.write(move |c| {
            let current: Option<String> = c
                .query_row("SELECT etag FROM policies WHERE resource = ?1", [&p.resource], |r| r.get(0))
                .optional()?;
            if !force && current != expected {
                return Err(StoreError::EtagMismatch {
                    resource: p.resource.clone(),
                    expected: expected.unwrap_or_default(),
                });
            }
            c.execute(
                "INSERT INTO policies (resource, document, etag, updated_at_us) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (resource) DO UPDATE SET document = ?2, etag = ?3, updated_at_us = ?4",
                params![p.resource, p.document, p.etag, micros(p.updated_at)],
            )?;
            Ok(())
        })
        .await
    }

    async fn delete_policy(&self, resource: &str) -> Result<bool, StoreError> {
        let resource = resource.to_owned();
        self.write(move |c| {
            Ok(c.execute("DELETE FROM policies WHERE resource = ?1", [resource])? == 1)
        })
        .await
    }

    async fn list_policies(&self) -> Result<Vec<StoredPolicy>, StoreError> {
        self.with(move |c| {
            let mut stmt =
                c.prepare_cached("SELECT resource, document, etag, updated_at_us FROM policies")?;
            let rows = stmt.query_map([], read_policy)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn set_trust_sender_attribute(
        &self,
        project: &str,
        trust: bool,
    ) -> Result<(), StoreError> {
        let project = project.to_owned();
        self.write(move |c| {
            c.execute(
                "INSERT INTO project_settings (project, trust_sender_attribute) VALUES (?1, ?2) \
                 ON CONFLICT (project) DO UPDATE SET trust_sender_attribute = ?2",
                params![project, trust],
            )?;
            Ok(())
        })
        .await
    }

    async fn trusts_sender_attribute(&self, project: &str) -> Result<bool, StoreError> {
        let project = project.to_owned();
        self.with(move |c| {
            Ok(c.query_row(
                "SELECT trust_sender_attribute FROM project_settings WHERE project = ?1",
                [project],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(false))
        })
        .await
    }
}

#[async_trait]
impl AccountStore for SqliteStore {
    async fn insert_service_account(&self, a: &ServiceAccountRecord) -> Result<(), StoreError> {
        let a = a.clone();
        self.write(move |c| {
            let n = c.execute(
                &format!("INSERT OR IGNORE INTO service_accounts ({ACCOUNT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
                params![a.email, a.project, a.display_name, a.description, a.disabled, micros(a.created_at)],
            )?;
            if n == 0 {
                return Err(StoreError::Duplicate {
                    what: "service account",
                    name: a.email.clone(),
                });
            }
            Ok(())
        })
        .await
    }

    async fn get_service_account(
        &self,
        email: &str,
    ) -> Result<Option<ServiceAccountRecord>, StoreError> {
        let email = email.to_owned();
        self.with(move |c| {
            Ok(c.query_row(
                &format!("SELECT {ACCOUNT_COLUMNS} FROM service_accounts WHERE email = ?1"),
                [email],
                read_account,
            )
            .optional()?)
        })
        .await
    }

    async fn list_service_accounts(
        &self,
        project: Option<&str>,
    ) -> Result<Vec<ServiceAccountRecord>, StoreError> {
        let project = project.map(str::to_owned);
        self.with(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {ACCOUNT_COLUMNS} FROM service_accounts WHERE ?1 IS NULL OR project = ?1 ORDER BY email"
            ))?;
            let rows = stmt.query_map([project], read_account)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn set_service_account_disabled(
        &self,
        email: &str,
        disabled: bool,
    ) -> Result<bool, StoreError> {
        let email = email.to_owned();
        self.write(move |c| {
            Ok(c.execute(
                "UPDATE service_accounts SET disabled = ?2 WHERE email = ?1",
                params![email, disabled],
            )? == 1)
        })
        .await
    }

    async fn delete_service_account(&self, email: &str) -> Result<bool, StoreError> {
        let email = email.to_owned();
        self.write(move |c| {
            c.execute(
                "DELETE FROM principal_keys WHERE principal = ?1",
                [format!("serviceAccount:{email}")],
            )?;
            Ok(c.execute("DELETE FROM service_accounts WHERE email = ?1", [email])? == 1)
        })
        .await
    }

    async fn insert_key(&self, k: &PublicKeyRecord) -> Result<(), StoreError> {
        let k = k.clone();
        self.write(move |c| {
            c.execute(
                &format!("INSERT INTO principal_keys ({KEY_COLUMNS}) VALUES (?1, ?2, ?3, ?4)"),
                params![k.key_id, k.principal, k.public_key, micros(k.created_at)],
            )?;
            Ok(())
        })
        .await
    }

    async fn get_key(&self, key_id: &str) -> Result<Option<PublicKeyRecord>, StoreError> {
        let key_id = key_id.to_owned();
        self.with(move |c| {
            Ok(c.query_row(
                &format!("SELECT {KEY_COLUMNS} FROM principal_keys WHERE key_id = ?1"),
                [key_id],
                read_key,
            )
            .optional()?)
        })
        .await
    }

    async fn list_keys(&self, principal: &str) -> Result<Vec<PublicKeyRecord>, StoreError> {
        let principal = principal.to_owned();
        self.with(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {KEY_COLUMNS} FROM principal_keys WHERE principal = ?1 ORDER BY created_at_us"
            ))?;
            let rows = stmt.query_map([principal], read_key)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn delete_key(&self, key_id: &str) -> Result<bool, StoreError> {
        let key_id = key_id.to_owned();
        self.write(move |c| {
            Ok(c.execute("DELETE FROM principal_keys WHERE key_id = ?1", [key_id])? == 1)
        })
        .await
    }
}

#[async_trait]
impl RoleStore for SqliteStore {
    async fn put_role(&self, name: &str, document: &str) -> Result<(), StoreError> {
        let (name, document) = (name.to_owned(), document.to_owned());
        self.write(move |c| {
            c.execute(
                "INSERT INTO custom_roles (name, document, updated_at_us) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (name) DO UPDATE SET document = ?2, updated_at_us = ?3",
                params![name, document, micros(SystemTime::now())],
            )?;
            Ok(())
        })
        .await
    }

    async fn get_role(&self, name: &str) -> Result<Option<String>, StoreError> {
        let name = name.to_owned();
        self.with(move |c| {
            Ok(c.query_row(
                "SELECT document FROM custom_roles WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()?)
        })
        .await
    }

    async fn list_roles(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.with(move |c| {
            let mut stmt =
                c.prepare_cached("SELECT name, document FROM custom_roles ORDER BY name")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn delete_role(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.write(move |c| Ok(c.execute("DELETE FROM custom_roles WHERE name = ?1", [name])? == 1))
            .await
    }
}

#[async_trait]
impl GroupStore for SqliteStore {
    async fn create_group(&self, g: &GroupRecord) -> Result<(), StoreError> {
        let g = g.clone();
        self.write(move |c| {
            let n = c.execute(
                "INSERT OR IGNORE INTO iam_groups (name, description, created_at_us) VALUES (?1, ?2, ?3)",
                params![g.name, g.description, micros(g.created_at)],
            )?;
            if n == 0 {
                return Err(StoreError::Duplicate {
                    what: "group",
                    name: g.name.clone(),
                });
            }
            for member in &g.members {
                c.execute(
                    "INSERT OR IGNORE INTO iam_group_members (group_name, member, added_at_us) VALUES (?1, ?2, ?3)",
                    params![g.name, member, micros(g.created_at)],
                )?;
            }
            Ok(())
        })
        .await
    }

    async fn get_group(&self, name: &str) -> Result<Option<GroupRecord>, StoreError> {
        let name = name.to_owned();
        self.with(move |c| {
            let tx = c.unchecked_transaction()?;
            let Some((description, created)) = tx
                .query_row(
                    "SELECT description, created_at_us FROM iam_groups WHERE name = ?1",
                    [&name],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
                )
                .optional()?
            else {
                return Ok(None);
            };
            let members = {
                let mut stmt = tx.prepare_cached(
                    "SELECT member FROM iam_group_members WHERE group_name = ?1 ORDER BY member",
                )?;
                stmt.query_map([&name], |r| r.get(0))?
                    .collect::<rusqlite::Result<Vec<String>>>()?
            };
            tx.commit()?;
            Ok(Some(GroupRecord {
                name,
                description,
                members,
                created_at: from_micros(created),
            }))
        })
        .await
    }

    async fn list_groups(&self) -> Result<Vec<GroupRecord>, StoreError> {
        self.with(move |c| {
            let tx = c.unchecked_transaction()?;
            let mut groups = {
                let mut stmt = tx.prepare_cached(
                    "SELECT name, description, created_at_us FROM iam_groups ORDER BY name",
                )?;
                stmt.query_map([], |r| {
                    Ok(GroupRecord {
                        name: r.get(0)?,
                        description: r.get(1)?,
                        members: Vec::new(),
                        created_at: from_micros(r.get(2)?),
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?
            };
            let mut stmt = tx.prepare_cached(
                "SELECT group_name, member FROM iam_group_members ORDER BY group_name, member",
            )?;
            let rows =
                stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            for row in rows {
                let (group, member) = row?;
                if let Ok(i) = groups.binary_search_by(|g| g.name.as_str().cmp(&group)) {
                    groups[i].members.push(member);
                }
            }
            drop(stmt);
            tx.commit()?;
            Ok(groups)
        })
        .await
    }

    async fn delete_group(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.write(move |c| {
            c.execute(
                "DELETE FROM iam_group_members WHERE group_name = ?1",
                [&name],
            )?;
            Ok(c.execute("DELETE FROM iam_groups WHERE name = ?1", [&name])? == 1)
        })
        .await
    }

    async fn add_group_member(
        &self,
        group: &str,
        member: &str,
    ) -> Result<Option<bool>, StoreError> {
        let (group, member) = (group.to_owned(), member.to_owned());
        self.write(move |c| {
            let exists = c
                .query_row("SELECT 1 FROM iam_groups WHERE name = ?1", [&group], |_| Ok(()))
                .optional()?
                .is_some();
            if !exists {
                return Ok(None);
            }
            let added = c.execute(
                "INSERT OR IGNORE INTO iam_group_members (group_name, member, added_at_us) VALUES (?1, ?2, ?3)",
                params![group, member, micros(SystemTime::now())],
            )? == 1;
            Ok(Some(added))
        })
        .await
    }

    async fn remove_group_member(&self, group: &str, member: &str) -> Result<bool, StoreError> {
        let (group, member) = (group.to_owned(), member.to_owned());
        self.write(move |c| {
            Ok(c.execute(
                "DELETE FROM iam_group_members WHERE group_name = ?1 AND member = ?2",
                params![group, member],
            )? == 1)
        })
        .await
    }
}

#[async_trait]
impl IamSnapshot for SqliteStore {
    async fn iam_version(&self) -> Result<i64, StoreError> {
        self.with(|c| Ok(c.query_row("SELECT version FROM iam_version", [], |r| r.get(0))?))
            .await
    }

    async fn load_iam(&self) -> Result<IamData, StoreError> {
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            let version = tx.query_row("SELECT version FROM iam_version", [], |r| r.get(0))?;
            let policies = {
                let mut stmt = tx.prepare_cached(
                    "SELECT resource, document, etag, updated_at_us FROM policies",
                )?;
                stmt.query_map([], read_policy)?
                    .collect::<rusqlite::Result<Vec<_>>>()?
            };
            let roles = {
                let mut stmt = tx.prepare_cached("SELECT name, document FROM custom_roles")?;
                stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<Vec<_>>>()?
            };
            let keys = {
                let mut stmt = tx.prepare_cached(
                    "SELECT k.key_id, k.principal, k.public_key, k.created_at_us, \
                     COALESCE(a.disabled, 0) FROM principal_keys k \
                     LEFT JOIN service_accounts a ON k.principal = 'serviceAccount:' || a.email",
                )?;
                stmt.query_map([], |r| Ok((read_key(r)?, r.get::<_, bool>(4)?)))?
                    .collect::<rusqlite::Result<Vec<_>>>()?
            };
            let trusted_projects = {
                let mut stmt = tx.prepare_cached(
                    "SELECT project FROM project_settings WHERE trust_sender_attribute = 1",
                )?;
                stmt.query_map([], |r| r.get(0))?
                    .collect::<rusqlite::Result<Vec<_>>>()?
            };
            let memberships = {
                let mut stmt =
                    tx.prepare_cached("SELECT group_name, member FROM iam_group_members")?;
                stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<Vec<_>>>()?
            };
            tx.commit()?;
            Ok(IamData {
                version,
                policies,
                roles,
                keys,
                trusted_projects,
                memberships,
            })
        })
        .await
    }
}

#[async_trait]
impl AuditStore for SqliteStore {
    async fn append_audit(&self, e: &AuditEntry) -> Result<i64, StoreError> {
        let e = e.clone();
        self.write(move |c| {
            c.run(
                "INSERT INTO audit (at_us, principal, action, resource, permission, decision, detail) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![micros(e.at), e.principal, e.action, e.resource, e.permission, e.decision, e.detail],
            )?;
            Ok(c.last_insert_rowid())
        })
        .await
    }

    async fn prune_audit_decisions(
        &self,
        before: SystemTime,
        limit: u32,
    ) -> Result<u64, StoreError> {
        self.write(move |c| {
            let deleted = c.execute(
                "DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE at_us < ?1 \
                 AND decision IN ('granted', 'denied') ORDER BY at_us LIMIT ?2)",
                params![micros(before), limit],
            )?;
            Ok(deleted as u64)
        })
        .await
    }

    async fn list_audit(&self, f: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        let f = f.clone();
        self.with(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {AUDIT_COLUMNS} FROM audit \
                 WHERE (?1 IS NULL OR at_us >= ?1) AND (?2 IS NULL OR principal = ?2) \
                 AND (?3 IS NULL OR substr(resource, 1, length(?3)) = ?3) AND (?4 IS NULL OR decision = ?4) \
                 ORDER BY id DESC LIMIT ?5"
            ))?;
            let limit = if f.limit == 0 { 100 } else { f.limit };
            let rows = stmt.query_map(
                params![f.since.map(micros), f.principal, f.resource_prefix, f.decision, limit],
                read_audit,
            )?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }
}
