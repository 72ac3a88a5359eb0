//! [`IamStore`](crate::IamStore) on PostgreSQL: policies, service accounts,
//! public keys, custom roles, groups, per-project settings and the audit
//! log. The logic is the SQLite store's (`crate::iam`); the schema's
//! triggers bump `iam_version` once per statement that touches what
//! permission checks read.
//!
//! Text sorts with `COLLATE "C"`: byte order, as SQLite sorts, whatever the
//! database's locale (`list_groups` relies on it to match members to groups).

use std::time::SystemTime;

use async_trait::async_trait;
use tokio_postgres::{IsolationLevel, Row};

use super::{PgStore, exec, get, int, row, rows, write_tx};
use crate::iam::{ACCOUNT_COLUMNS, AUDIT_COLUMNS, KEY_COLUMNS};
use crate::sqlite::{from_micros, micros};
use crate::{
    AccountStore, AuditDecision, AuditEntry, AuditFilter, AuditStore, GroupRecord, GroupStore,
    IamData, IamSnapshot, PolicyStore, PublicKeyRecord, RoleStore, ServiceAccountRecord,
    StoreError, StoredPolicy,
};

const POLICY_COLUMNS: &str = "resource, document, etag, updated_at_us";

fn read_policy(r: &Row) -> Result<StoredPolicy, StoreError> {
    Ok(StoredPolicy {
        resource: get(r, 0)?,
        document: get(r, 1)?,
        etag: get(r, 2)?,
        updated_at: from_micros(get(r, 3)?),
    })
}

fn read_account(r: &Row) -> Result<ServiceAccountRecord, StoreError> {
    Ok(ServiceAccountRecord {
        email: get(r, 0)?,
        project: get(r, 1)?,
        display_name: get(r, 2)?,
        description: get(r, 3)?,
        disabled: get(r, 4)?,
        created_at: from_micros(get(r, 5)?),
    })
}

fn read_key(r: &Row) -> Result<PublicKeyRecord, StoreError> {
    Ok(PublicKeyRecord {
        key_id: get(r, 0)?,
        principal: get(r, 1)?,
        public_key: get(r, 2)?,
        created_at: from_micros(get(r, 3)?),
    })
}

fn read_audit(r: &Row) -> Result<AuditEntry, StoreError> {
    let decision: String = get(r, 6)?;
    Ok(AuditEntry {
        id: get(r, 0)?,
        at: from_micros(get(r, 1)?),
        principal: get(r, 2)?,
        action: get(r, 3)?,
        resource: get(r, 4)?,
        permission: get(r, 5)?,
        decision: decision
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("audit decision: {e}")))?,
        detail: get(r, 7)?,
    })
}

fn read_pair(r: &Row) -> Result<(String, String), StoreError> {
    Ok((get(r, 0)?, get(r, 1)?))
}

#[async_trait]
impl PolicyStore for PgStore {
    async fn get_policy(&self, resource: &str) -> Result<Option<StoredPolicy>, StoreError> {
        self.one(
            &format!("SELECT {POLICY_COLUMNS} FROM policies WHERE resource = $1"),
            &[&resource],
            read_policy,
        )
        .await
    }

    async fn set_policy(
        &self,
        p: &StoredPolicy,
        expected_etag: Option<&str>,
        force: bool,
    ) -> Result<(), StoreError> {
        write_tx!(self, |tx| {
            let current: Option<String> = match row(
                &tx,
                "SELECT etag FROM policies WHERE resource = $1",
                &[&p.resource],
            )
            .await?
            {
                Some(r) => Some(get(&r, 0)?),
                None => None,
            };
            if !force && current.as_deref() != expected_etag {
                return Err(StoreError::EtagMismatch {
                    resource: p.resource.clone(),
                    expected: expected_etag.unwrap_or_default().to_owned(),
                });
            }
            exec(
                &tx,
                "INSERT INTO policies (resource, document, etag, updated_at_us) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (resource) DO UPDATE SET document = $2, etag = $3, updated_at_us = $4",
                &[&p.resource, &p.document, &p.etag, &micros(p.updated_at)],
            )
            .await?;
            Ok(())
        })
    }

    async fn delete_policy(&self, resource: &str) -> Result<bool, StoreError> {
        write_tx!(self, |tx| {
            Ok(exec(
                &tx,
                "DELETE FROM policies WHERE resource = $1",
                &[&resource],
            )
            .await?
                == 1)
        })
    }

    async fn list_policies(&self) -> Result<Vec<StoredPolicy>, StoreError> {
        let c = self.client().await?;
        rows(&c, &format!("SELECT {POLICY_COLUMNS} FROM policies"), &[])
            .await?
            .iter()
            .map(read_policy)
            .collect()
    }

    async fn set_trust_sender_attribute(
        &self,
        project: &str,
        trust: bool,
    ) -> Result<(), StoreError> {
        write_tx!(self, |tx| {
            exec(
                &tx,
                "INSERT INTO project_settings (project, trust_sender_attribute) VALUES ($1, $2) \
                 ON CONFLICT (project) DO UPDATE SET trust_sender_attribute = $2",
                &[&project, &trust],
            )
            .await?;
            Ok(())
        })
    }

    async fn trusts_sender_attribute(&self, project: &str) -> Result<bool, StoreError> {
        let c = self.client().await?;
        match row(
            &c,
            "SELECT trust_sender_attribute FROM project_settings WHERE project = $1",
            &[&project],
        )
        .await?
        {
            Some(r) => get(&r, 0),
            None => Ok(false),
        }
    }
}

#[async_trait]
impl AccountStore for PgStore {
    async fn insert_service_account(&self, a: &ServiceAccountRecord) -> Result<(), StoreError> {
        write_tx!(self, |tx| {
            let n = exec(
                &tx,
                &format!(
                    "INSERT INTO service_accounts ({ACCOUNT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT DO NOTHING"
                ),
                &[
                    &a.email,
                    &a.project,
                    &a.display_name,
                    &a.description,
                    &a.disabled,
                    &micros(a.created_at),
                ],
            )
            .await?;
            if n == 0 {
                return Err(StoreError::Duplicate {
                    what: "service account",
                    name: a.email.clone(),
                });
            }
            Ok(())
        })
    }

    async fn get_service_account(
        &self,
        email: &str,
    ) -> Result<Option<ServiceAccountRecord>, StoreError> {
        self.one(
            &format!("SELECT {ACCOUNT_COLUMNS} FROM service_accounts WHERE email = $1"),
            &[&email],
            read_account,
        )
        .await
    }

    async fn list_service_accounts(
        &self,
        project: Option<&str>,
    ) -> Result<Vec<ServiceAccountRecord>, StoreError> {
        self.all(
            &format!(
                "SELECT {ACCOUNT_COLUMNS} FROM service_accounts \
                 WHERE $1::TEXT IS NULL OR project = $1 ORDER BY email COLLATE \"C\""
            ),
            &[&project],
            read_account,
        )
        .await
    }

    async fn set_service_account_disabled(
        &self,
        email: &str,
        disabled: bool,
    ) -> Result<bool, StoreError> {
        write_tx!(self, |tx| {
            Ok(exec(
                &tx,
                "UPDATE service_accounts SET disabled = $2 WHERE email = $1",
                &[&email, &disabled],
            )
            .await?
                == 1)
        })
    }

    async fn delete_service_account(&self, email: &str) -> Result<bool, StoreError> {
        let principal = format!("serviceAccount:{email}");
        write_tx!(self, |tx| {
            exec(
                &tx,
                "DELETE FROM principal_keys WHERE principal = $1",
                &[&principal],
            )
            .await?;
            Ok(exec(
                &tx,
                "DELETE FROM service_accounts WHERE email = $1",
                &[&email],
            )
            .await?
                == 1)
        })
    }

    async fn insert_key(&self, k: &PublicKeyRecord) -> Result<(), StoreError> {
        write_tx!(self, |tx| {
            exec(
                &tx,
                &format!("INSERT INTO principal_keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4)"),
                &[
                    &k.key_id,
                    &k.principal,
                    &k.public_key,
                    &micros(k.created_at),
                ],
            )
            .await?;
            Ok(())
        })
    }

    async fn get_key(&self, key_id: &str) -> Result<Option<PublicKeyRecord>, StoreError> {
        self.one(
            &format!("SELECT {KEY_COLUMNS} FROM principal_keys WHERE key_id = $1"),
            &[&key_id],
            read_key,
        )
        .await
    }

    async fn list_keys(&self, principal: &str) -> Result<Vec<PublicKeyRecord>, StoreError> {
        self.all(
            &format!(
                "SELECT {KEY_COLUMNS} FROM principal_keys WHERE principal = $1 ORDER BY created_at_us"
            ),
            &[&principal],
        read_key,
)
.await
    }

    async fn delete_key(&self, key_id: &str) -> Result<bool, StoreError> {
        write_tx!(self, |tx| {
            Ok(exec(
                &tx,
                "DELETE FROM principal_keys WHERE key_id = $1",
                &[&key_id],
            )
            .await?
                == 1)
        })
    }
}

#[async_trait]
impl RoleStore for PgStore {
    async fn put_role(&self, name: &str, document: &str) -> Result<(), StoreError> {
        write_tx!(self, |tx| {
            exec(
                &tx,
                "INSERT INTO custom_roles (name, document, updated_at_us) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET document = $2, updated_at_us = $3",
                &[&name, &document, &micros(SystemTime::now())],
            )
            .await?;
            Ok(())
        })
    }

    async fn get_role(&self, name: &str) -> Result<Option<String>, StoreError> {
        let c = self.client().await?;
        row(
            &c,
            "SELECT document FROM custom_roles WHERE name = $1",
            &[&name],
        )
        .await?
        .map(|r| get(&r, 0))
        .transpose()
    }

    async fn list_roles(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.all(
            "SELECT name, document FROM custom_roles ORDER BY name COLLATE \"C\"",
            &[],
            read_pair,
        )
        .await
    }

    async fn delete_role(&self, name: &str) -> Result<bool, StoreError> {
        write_tx!(self, |tx| {
            Ok(exec(&tx, "DELETE FROM custom_roles WHERE name = $1", &[&name]).await? == 1)
        })
    }
}

/// A read-only transaction that sees one moment of the database.
async fn snapshot(
    c: &mut deadpool_postgres::Client,
) -> Result<deadpool_postgres::Transaction<'_>, StoreError> {
    Ok(c.build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?)
}

#[async_trait]
impl GroupStore for PgStore {
    async fn create_group(&self, g: &GroupRecord) -> Result<(), StoreError> {
        write_tx!(self, |tx| {
            let n = exec(
                &tx,
                "INSERT INTO iam_groups (name, description, created_at_us) VALUES ($1, $2, $3) \
                 ON CONFLICT DO NOTHING",
                &[&g.name, &g.description, &micros(g.created_at)],
            )
            .await?;
            if n == 0 {
                return Err(StoreError::Duplicate {
                    what: "group",
                    name: g.name.clone(),
                });
            }
            for member in &g.members {
                exec(
                    &tx,
                    "INSERT INTO iam_group_members (group_name, member, added_at_us) VALUES ($1, $2, $3) \
                     ON CONFLICT DO NOTHING",
                    &[&g.name, member, &micros(g.created_at)],
                )
                .await?;
            }
            Ok(())
        })
    }

    async fn get_group(&self, name: &str) -> Result<Option<GroupRecord>, StoreError> {
        let mut c = self.client().await?;
        let tx = snapshot(&mut c).await?;
        let Some(group) = row(
            &tx,
            "SELECT description, created_at_us FROM iam_groups WHERE name = $1",
            &[&name],
        )
        .await?
        else {
            return Ok(None);
        };
        let members = rows(
            &tx,
            "SELECT member FROM iam_group_members WHERE group_name = $1 ORDER BY member COLLATE \"C\"",
            &[&name],
        )
        .await?
        .iter()
        .map(|r| get(r, 0))
        .collect::<Result<Vec<String>, _>>()?;
        tx.commit().await?;
        Ok(Some(GroupRecord {
            name: name.to_owned(),
            description: get(&group, 0)?,
            members,
            created_at: from_micros(get(&group, 1)?),
        }))
    }

    async fn list_groups(&self) -> Result<Vec<GroupRecord>, StoreError> {
        let mut c = self.client().await?;
        let tx = snapshot(&mut c).await?;
        let mut groups = rows(
            &tx,
            "SELECT name, description, created_at_us FROM iam_groups ORDER BY name COLLATE \"C\"",
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(GroupRecord {
                name: get(r, 0)?,
                description: get(r, 1)?,
                members: Vec::new(),
                created_at: from_micros(get(r, 2)?),
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
        let memberships = rows(
            &tx,
            "SELECT group_name, member FROM iam_group_members \
             ORDER BY group_name COLLATE \"C\", member COLLATE \"C\"",
            &[],
        )
        .await?;
        tx.commit().await?;
        for r in &memberships {
            let (group, member) = read_pair(r)?;
            if let Ok(i) = groups.binary_search_by(|g| g.name.as_str().cmp(&group)) {
                groups[i].members.push(member);
            }
        }
        Ok(groups)
    }

    async fn delete_group(&self, name: &str) -> Result<bool, StoreError> {
        write_tx!(self, |tx| {
            exec(
                &tx,
                "DELETE FROM iam_group_members WHERE group_name = $1",
                &[&name],
            )
            .await?;
            Ok(exec(&tx, "DELETE FROM iam_groups WHERE name = $1", &[&name]).await? == 1)
        })
    }

    async fn add_group_member(
        &self,
        group: &str,
        member: &str,
    ) -> Result<Option<bool>, StoreError> {
        write_tx!(self, |tx| {
            if row(&tx, "SELECT 1 FROM iam_groups WHERE name = $1", &[&group])
                .await?
                .is_none()
            {
                return Ok(None);
            }
            let added = exec(
                &tx,
                "INSERT INTO iam_group_members (group_name, member, added_at_us) VALUES ($1, $2, $3) \
                 ON CONFLICT DO NOTHING",
                &[&group, &member, &micros(SystemTime::now())],
            )
            .await?
                == 1;
            Ok(Some(added))
        })
    }

    async fn remove_group_member(&self, group: &str, member: &str) -> Result<bool, StoreError> {
        write_tx!(self, |tx| {
            Ok(exec(
                &tx,
                "DELETE FROM iam_group_members WHERE group_name = $1 AND member = $2",
                &[&group, &member],
            )
            .await?
                == 1)
        })
    }
}

#[async_trait]
impl IamSnapshot for PgStore {
    async fn iam_version(&self) -> Result<i64, StoreError> {
        let c = self.client().await?;
        match row(&c, "SELECT version FROM iam_version", &[]).await? {
            Some(r) => get(&r, 0),
            None => Err(StoreError::Corrupt("iam_version has no row".into())),
        }
    }

    async fn load_iam(&self) -> Result<IamData, StoreError> {
        let mut c = self.client().await?;
        let tx = snapshot(&mut c).await?;
        let version = match row(&tx, "SELECT version FROM iam_version", &[]).await? {
            Some(r) => get(&r, 0)?,
            None => return Err(StoreError::Corrupt("iam_version has no row".into())),
        };
        let policies = rows(&tx, &format!("SELECT {POLICY_COLUMNS} FROM policies"), &[])
            .await?
            .iter()
            .map(read_policy)
            .collect::<Result<_, _>>()?;
        let roles = rows(&tx, "SELECT name, document FROM custom_roles", &[])
            .await?
            .iter()
            .map(read_pair)
            .collect::<Result<_, _>>()?;
        let keys = rows(
            &tx,
            "SELECT k.key_id, k.principal, k.public_key, k.created_at_us, \
             COALESCE(a.disabled, FALSE) FROM principal_keys k \
             LEFT JOIN service_accounts a ON k.principal = 'serviceAccount:' || a.email",
            &[],
        )
        .await?
        .iter()
        .map(|r| Ok((read_key(r)?, get(r, 4)?)))
        .collect::<Result<_, StoreError>>()?;
        let trusted_projects = rows(
            &tx,
            "SELECT project FROM project_settings WHERE trust_sender_attribute",
            &[],
        )
        .await?
        .iter()
        .map(|r| get(r, 0))
        .collect::<Result<_, _>>()?;
        let memberships = rows(&tx, "SELECT group_name, member FROM iam_group_members", &[])
            .await?
            .iter()
            .map(read_pair)
            .collect::<Result<_, _>>()?;
        tx.commit().await?;
        Ok(IamData {
            version,
            policies,
            roles,
            keys,
            trusted_projects,
            memberships,
        })
    }
}

#[async_trait]
impl AuditStore for PgStore {
    async fn append_audit(&self, e: &AuditEntry) -> Result<i64, StoreError> {
        // One statement that reads nothing: its own transaction, on the
        // path of every checked call.
        let c = self.client().await?;
        match row(
            &c,
            "INSERT INTO audit (at_us, principal, action, resource, permission, decision, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            &[
                &micros(e.at),
                &e.principal,
                &e.action,
                &e.resource,
                &e.permission,
                &e.decision.as_str(),
                &e.detail,
            ],
        )
        .await?
        {
            Some(r) => get(&r, 0),
            None => Err(StoreError::Corrupt("audit insert returned no id".into())),
        }
    }

    async fn prune_audit_decisions(
        &self,
        before: SystemTime,
        limit: u32,
    ) -> Result<u64, StoreError> {
        write_tx!(self, |tx| {
            exec(
                &tx,
                "DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE at_us < $1 \
                 AND decision IN ('granted', 'denied') ORDER BY at_us LIMIT $2)",
                &[&micros(before), &int(limit)],
            )
            .await
        })
    }

    async fn list_audit(&self, f: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        let c = self.client().await?;
        let limit = if f.limit == 0 { 100 } else { f.limit };
        rows(
            &c,
            &format!(
                "SELECT {AUDIT_COLUMNS} FROM audit \
                 WHERE ($1::BIGINT IS NULL OR at_us >= $1) AND ($2::TEXT IS NULL OR principal = $2) \
                 AND ($3::TEXT IS NULL OR substr(resource, 1, length($3)) = $3) \
                 AND ($4::TEXT IS NULL OR decision = $4) \
                 ORDER BY id DESC LIMIT $5"
            ),
            &[
                &f.since.map(micros),
                &f.principal,
                &f.resource_prefix,
                &f.decision.map(AuditDecision::as_str),
                &int(limit),
            ],
        )
        .await?
        .iter()
        .map(read_audit)
        .collect()
    }
}
