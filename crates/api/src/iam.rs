//! The `Iam`, `ServiceAccounts` and `Roles` APIs: policies, project settings,
//! the audit log, service accounts with their keys, and custom roles.
//!
//! Every change is recorded in the audit log (who, what, before and after)
//! and makes the permission snapshot refresh at once, so the next check in
//! this process sees it; the dispatcher in another process sees it within
//! `rouse_authz::REFRESH_INTERVAL`.

use std::time::SystemTime;

use rouse_core::ProjectName;
use rouse_iam::{
    Caller, CustomRole, CustomRoleName, GroupName, Permission, Policy, PredefinedRole, Principal,
    Resource, RoleDocument, RoleName, Stage,
};
use rouse_identity::{Account, PublicKey};
use rouse_store::{
    AuditDecision, AuditFilter, GroupRecord, PublicKeyRecord, ServiceAccountRecord, StoredPolicy,
};
use tonic::{Request, Response, Status};

use crate::auth::{Permit, project_resource};
use crate::backend::Backend;
use crate::error::ApiError;
use crate::pb;

/// Default and largest page of `ListAudit`.
const DEFAULT_AUDIT_LIMIT: u32 = 100;
const MAX_AUDIT_LIMIT: u32 = 10_000;

#[derive(Clone)]
pub struct IamApi {
    backend: Backend,
}

impl IamApi {
    pub fn new(backend: Backend) -> Self {
        Self { backend }
    }
}

fn parse_resource(value: &str) -> Result<Resource, ApiError> {
    Resource::parse(value).map_err(|e| ApiError::InvalidArgument(e.to_string()))
}

fn invalid(e: impl std::fmt::Display) -> ApiError {
    ApiError::InvalidArgument(e.to_string())
}

impl Backend {
    /// The policy set on `resource` itself, with its etag (an empty one if
    /// none was ever set).
    pub async fn current_policy(&self, resource: &Resource) -> Result<Policy, ApiError> {
        let stored = self.store.get_policy(&resource.to_string()).await?;
        let policy = match stored {
            None => Policy::default(),
            Some(s) => Policy::from_json(&s.document).map_err(|e| {
                ApiError::Internal(format!(
                    "the stored policy of `{resource}` does not parse: {e}"
                ))
            })?,
        };
        Ok(policy.with_etag())
    }

    /// A service's policy resource must name an existing service.
    async fn existing(&self, resource: &Resource) -> Result<(), ApiError> {
        if let Resource::Service(project, name) = resource {
            self.find_service(project.as_str(), name.as_str()).await?;
        }
        Ok(())
    }
}

fn policy_to_pb(resource: &Resource, policy: &Policy) -> pb::PolicyDocument {
    pb::PolicyDocument {
        resource: resource.to_string(),
        policy_json: policy.to_json(),
        etag: policy.etag.clone().unwrap_or_default(),
    }
}

/// A member whose permissions are being tested or explained, as a caller
/// with the groups `snapshot` says it is in.
fn caller_for_member(member: &str, snapshot: &rouse_authz::Snapshot) -> Result<Caller, ApiError> {
    let principal = Principal::parse(member).map_err(invalid)?;
    match principal {
        Principal::AllUsers => Ok(Caller::anonymous()),
        p if p.is_identity() => {
            let groups = snapshot.groups_of(&p.to_string()).iter().cloned();
            Caller::authenticated(p, groups).map_err(invalid)
        }
        other => Err(ApiError::InvalidArgument(format!(
            "member `{other}` is not one identity; test a `user:`, `serviceAccount:` or `service:` member, or `allUsers` for anonymous askers"
        ))),
    }
}

fn timestamp(t: SystemTime) -> Option<prost_types::Timestamp> {
    Some(t.into())
}

#[tonic::async_trait]
impl pb::iam_server::Iam for IamApi {
    async fn get_iam_policy(
        &self,
        request: Request<pb::GetIamPolicyRequest>,
    ) -> Result<Response<pb::PolicyDocument>, Status> {
        let resource = parse_resource(&request.get_ref().resource)?;
        self.backend.permit(&request, &resource).await?;
        self.backend.existing(&resource).await?;
        let policy = self.backend.current_policy(&resource).await?;
        Ok(Response::new(policy_to_pb(&resource, &policy)))
    }

    async fn set_iam_policy(
        &self,
        request: Request<pb::SetIamPolicyRequest>,
    ) -> Result<Response<pb::PolicyDocument>, Status> {
        let resource = parse_resource(&request.get_ref().resource)?;
        let permit = self.backend.permit(&request, &resource).await?;
        self.backend.existing(&resource).await?;
        let new = Policy::from_json(&request.get_ref().policy_json).map_err(invalid)?;
        new.validate(&resource, self.backend.authority.snapshot().roles())
            .map_err(invalid)?;
        let key = resource.to_string();
        let stored = self
            .backend
            .store
            .get_policy(&key)
            .await
            .map_err(ApiError::from)?;
        let current = self.backend.current_policy(&resource).await?;
        new.check_etag(&current)
            .map_err(|e| ApiError::Aborted(e.to_string()))?;
        let next = new.with_etag();
        let etag = next.etag.clone().unwrap_or_default();
        let record = StoredPolicy {
            resource: key.clone(),
            document: next.to_json(),
            etag,
            updated_at: SystemTime::now(),
        };
        self.backend
            .store
            .set_policy(&record, stored.as_ref().map(|s| s.etag.as_str()), false)
            .await
            .map_err(ApiError::from)?;
        self.backend
            .changed(
                &permit,
                &key,
                serde_json::to_value(&current).unwrap_or_default(),
                serde_json::to_value(&next).unwrap_or_default(),
            )
            .await;
        tracing::info!(resource = %key, by = %rouse_authz::principal_name(&permit.caller), "policy set");
        Ok(Response::new(policy_to_pb(&resource, &next)))
    }

    async fn test_iam_permissions(
        &self,
        request: Request<pb::TestIamPermissionsRequest>,
    ) -> Result<Response<pb::TestIamPermissionsResponse>, Status> {
        let resource = parse_resource(&request.get_ref().resource)?;
        let permissions = request
            .get_ref()
            .permissions
            .iter()
            .map(|p| Permission::parse(p).map_err(invalid))
            .collect::<Result<Vec<_>, _>>()?;
        let (caller, member) = if request.get_ref().member.is_empty() {
            // Like Google's testIamPermissions: asking about oneself needs no
            // permission.
            let permit = self.backend.permit_themselves(&request, &resource)?;
            let name = rouse_authz::principal_name(&permit.caller);
            (permit.caller, name)
        } else {
            self.backend.permit(&request, &resource).await?;
            let member = request.get_ref().member.clone();
            let snapshot = self.backend.authority.snapshot();
            (caller_for_member(&member, &snapshot)?, member)
        };
        let snapshot = self.backend.authority.snapshot();
        let held = rouse_iam::test_permissions(
            &caller,
            &resource,
            SystemTime::now(),
            &permissions,
            &snapshot.governing(&resource),
            snapshot.roles(),
        );
        Ok(Response::new(pb::TestIamPermissionsResponse {
            member,
            permissions: held.iter().map(|p| p.as_str().to_owned()).collect(),
        }))
    }

    async fn explain_permission(
        &self,
        request: Request<pb::ExplainPermissionRequest>,
    ) -> Result<Response<pb::ExplainPermissionResponse>, Status> {
        let resource = parse_resource(&request.get_ref().resource)?;
        self.backend.permit(&request, &resource).await?;
        let snapshot = self.backend.authority.snapshot();
        let caller = caller_for_member(&request.get_ref().member, &snapshot)?;
        let permission = Permission::parse(&request.get_ref().permission).map_err(invalid)?;
        let explanation = rouse_iam::explain(
            &rouse_iam::Request {
                caller: &caller,
                permission,
                resource: &resource,
                time: SystemTime::now(),
            },
            &snapshot.governing(&resource),
            snapshot.roles(),
        );
        Ok(Response::new(pb::ExplainPermissionResponse {
            granted: explanation.decision.is_ok(),
            lines: explanation.lines,
        }))
    }

    async fn get_project(
        &self,
        request: Request<pb::GetProjectRequest>,
    ) -> Result<Response<pb::Project>, Status> {
        let resource = project_resource(&request.get_ref().project)?;
        self.backend.permit(&request, &resource).await?;
        let name = request.into_inner().project;
        let trust = self
            .backend
            .store
            .trusts_sender_attribute(&name)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::Project {
            name,
            trust_sender_attribute: trust,
        }))
    }

    async fn update_project(
        &self,
        request: Request<pb::UpdateProjectRequest>,
    ) -> Result<Response<pb::Project>, Status> {
        let resource = project_resource(&request.get_ref().project)?;
        let permit = self.backend.permit(&request, &resource).await?;
        let req = request.into_inner();
        let before = self
            .backend
            .store
            .trusts_sender_attribute(&req.project)
            .await
            .map_err(ApiError::from)?;
        let after = req.trust_sender_attribute.unwrap_or(before);
        if after != before {
            self.backend
                .store
                .set_trust_sender_attribute(&req.project, after)
                .await
                .map_err(ApiError::from)?;
            self.backend
                .changed(
                    &permit,
                    &resource.to_string(),
                    serde_json::json!({ "trust_sender_attribute": before }),
                    serde_json::json!({ "trust_sender_attribute": after }),
                )
                .await;
        }
        Ok(Response::new(pb::Project {
            name: req.project,
            trust_sender_attribute: after,
        }))
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        // Groups are audited as `groups/NAME`, on the root.
        let requested = request.get_ref().resource.clone();
        let groups = requested == "groups" || requested.starts_with("groups/");
        let resource = match requested.as_str() {
            "" => Resource::Root,
            _ if groups => Resource::Root,
            r => parse_resource(r)?,
        };
        self.backend.permit(&request, &resource).await?;
        let req = request.into_inner();
        let decision = match req.decision.as_str() {
            "" => None,
            word => Some(
                word.parse::<AuditDecision>()
                    .map_err(|e| invalid(format!("decision: {e}")))?,
            ),
        };
        let filter = AuditFilter {
            since: req
                .since
                .map(SystemTime::try_from)
                .transpose()
                .map_err(|e| invalid(format!("since: {e}")))?,
            principal: Some(req.principal).filter(|p| !p.is_empty()),
            resource_prefix: match &resource {
                _ if groups => Some(requested),
                Resource::Root => None,
                r => Some(r.to_string()),
            },
            decision,
            limit: match req.limit {
                0 => DEFAULT_AUDIT_LIMIT,
                n => n.min(MAX_AUDIT_LIMIT),
            },
        };
        let entries = self
            .backend
            .store
            .list_audit(&filter)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::ListAuditResponse {
            entries: entries
                .into_iter()
                .map(|e| pb::AuditEntry {
                    id: e.id,
                    at: timestamp(e.at),
                    principal: e.principal,
                    action: e.action,
                    resource: e.resource,
                    permission: e.permission,
                    decision: e.decision.to_string(),
                    detail: e.detail,
                })
                .collect(),
        }))
    }
}

/// The `ServiceAccounts` API.
#[derive(Clone)]
pub struct ServiceAccountsApi {
    backend: Backend,
}

impl ServiceAccountsApi {
    pub fn new(backend: Backend) -> Self {
        Self { backend }
    }

    /// Parses the account `email` names and makes the method's check on
    /// its project: the permit, the account and the project's resource.
    async fn permit_account<T>(
        &self,
        request: &Request<T>,
        email: &str,
    ) -> Result<(Permit, Account, Resource), ApiError> {
        let account = Account::service_account_email(email).map_err(invalid)?;
        let resource = project_resource(account.project())?;
        let permit = self.backend.permit(request, &resource).await?;
        Ok((permit, account, resource))
    }

    async fn find(&self, email: &str) -> Result<ServiceAccountRecord, ApiError> {
        self.backend
            .store
            .get_service_account(email)
            .await?
            .ok_or_else(|| ApiError::ServiceAccountNotFound {
                email: email.to_owned(),
            })
    }
}

fn account_to_pb(a: &ServiceAccountRecord) -> pb::ServiceAccount {
    pb::ServiceAccount {
        email: a.email.clone(),
        project: a.project.clone(),
        display_name: a.display_name.clone(),
        description: a.description.clone(),
        disabled: a.disabled,
        created_at: timestamp(a.created_at),
    }
}

fn key_to_pb(k: &PublicKeyRecord) -> pb::ServiceAccountKey {
    pb::ServiceAccountKey {
        key_id: k.key_id.clone(),
        principal: k.principal.clone(),
        created_at: timestamp(k.created_at),
    }
}

#[tonic::async_trait]
impl pb::service_accounts_server::ServiceAccounts for ServiceAccountsApi {
    async fn create_service_account(
        &self,
        request: Request<pb::CreateServiceAccountRequest>,
    ) -> Result<Response<pb::ServiceAccount>, Status> {
        let resource = project_resource(&request.get_ref().project)?;
        let permit = self.backend.permit(&request, &resource).await?;
        let req = request.into_inner();
        let project = ProjectName::parse(&req.project).map_err(invalid)?;
        let account = Account::service_account(&req.name, &project).map_err(invalid)?;
        let record = ServiceAccountRecord {
            email: account.email().to_owned(),
            project: project.to_string(),
            display_name: req.display_name,
            description: req.description,
            disabled: false,
            created_at: SystemTime::now(),
        };
        self.backend
            .store
            .insert_service_account(&record)
            .await
            .map_err(ApiError::from)?;
        self.backend
            .changed(
                &permit,
                &format!("{resource}/serviceAccounts/{}", record.email),
                serde_json::Value::Null,
                serde_json::json!({ "email": record.email }),
            )
            .await;
        Ok(Response::new(account_to_pb(&record)))
    }

    async fn get_service_account(
        &self,
        request: Request<pb::GetServiceAccountRequest>,
    ) -> Result<Response<pb::ServiceAccount>, Status> {
        self.permit_account(&request, &request.get_ref().email)
            .await?;
        let account = self.find(&request.get_ref().email).await?;
        Ok(Response::new(account_to_pb(&account)))
    }

    async fn list_service_accounts(
        &self,
        request: Request<pb::ListServiceAccountsRequest>,
    ) -> Result<Response<pb::ListServiceAccountsResponse>, Status> {
        let project = request.get_ref().project.clone();
        let permit = if project.is_empty() {
            self.backend.permit_each_item(&request)?
        } else {
            let resource = project_resource(&project)?;
            self.backend.permit(&request, &resource).await?
        };
        let mut accounts = self
            .backend
            .store
            .list_service_accounts(Some(project.as_str()).filter(|p| !p.is_empty()))
            .await
            .map_err(ApiError::from)?;
        if project.is_empty() {
            accounts.retain(|a| {
                project_resource(&a.project).is_ok_and(|r| self.backend.shows(&permit, &r))
            });
        }
        Ok(Response::new(pb::ListServiceAccountsResponse {
            accounts: accounts.iter().map(account_to_pb).collect(),
        }))
    }

    async fn delete_service_account(
        &self,
        request: Request<pb::DeleteServiceAccountRequest>,
    ) -> Result<Response<pb::ServiceAccount>, Status> {
        let (permit, _, resource) = self
            .permit_account(&request, &request.get_ref().email)
            .await?;
        let account = self.find(&request.get_ref().email).await?;
        self.backend
            .store
            .delete_service_account(&account.email)
            .await
            .map_err(ApiError::from)?;
        self.backend
            .changed(
                &permit,
                &format!("{resource}/serviceAccounts/{}", account.email),
                serde_json::json!({ "email": account.email }),
                serde_json::Value::Null,
            )
            .await;
        Ok(Response::new(account_to_pb(&account)))
    }

    async fn set_service_account_disabled(
        &self,
        request: Request<pb::SetServiceAccountDisabledRequest>,
    ) -> Result<Response<pb::ServiceAccount>, Status> {
        let (permit, _, resource) = self
            .permit_account(&request, &request.get_ref().email)
            .await?;
        let req = request.into_inner();
        let mut account = self.find(&req.email).await?;
        let before = account.disabled;
        self.backend
            .store
            .set_service_account_disabled(&req.email, req.disabled)
            .await
            .map_err(ApiError::from)?;
        account.disabled = req.disabled;
        self.backend
            .changed_as(
                &permit,
                if req.disabled {
                    "DisableServiceAccount"
                } else {
                    "EnableServiceAccount"
                },
                &format!("{resource}/serviceAccounts/{}", account.email),
                serde_json::json!({ "disabled": before }),
                serde_json::json!({ "disabled": req.disabled }),
            )
            .await;
        Ok(Response::new(account_to_pb(&account)))
    }

    async fn create_key(
        &self,
        request: Request<pb::CreateKeyRequest>,
    ) -> Result<Response<pb::ServiceAccountKey>, Status> {
        let (permit, account, resource) = self
            .permit_account(&request, &request.get_ref().email)
            .await?;
        let req = request.into_inner();
        self.find(&req.email).await?;
        let id_ok = (8..=64).contains(&req.key_id.len())
            && req.key_id.bytes().all(|b| b.is_ascii_hexdigit());
        if !id_ok {
            return Err(invalid(format!(
                "key id `{}` must be 8 to 64 hexadecimal digits",
                req.key_id
            ))
            .into());
        }
        PublicKey::from_base64(&req.public_key).map_err(invalid)?;
        let record = PublicKeyRecord {
            key_id: req.key_id,
            principal: account.principal(),
            public_key: req.public_key,
            created_at: SystemTime::now(),
        };
        self.backend
            .store
            .insert_key(&record)
            .await
            .map_err(ApiError::from)?;
        self.backend
            .changed(
                &permit,
                &format!("{resource}/serviceAccounts/{}", account.email()),
                serde_json::Value::Null,
                serde_json::json!({ "key_id": record.key_id }),
            )
            .await;
        Ok(Response::new(key_to_pb(&record)))
    }

    async fn list_keys(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        let (_, account, _) = self
            .permit_account(&request, &request.get_ref().email)
            .await?;
        self.find(account.email()).await?;
        let keys = self
            .backend
            .store
            .list_keys(&account.principal())
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::ListKeysResponse {
            keys: keys.iter().map(key_to_pb).collect(),
        }))
    }

    async fn delete_key(
        &self,
        request: Request<pb::DeleteKeyRequest>,
    ) -> Result<Response<pb::ServiceAccountKey>, Status> {
        let (permit, account, resource) = self
            .permit_account(&request, &request.get_ref().email)
            .await?;
        let key_id = request.into_inner().key_id;
        let key = self
            .backend
            .store
            .get_key(&key_id)
            .await
            .map_err(ApiError::from)?
            .filter(|k| k.principal == account.principal())
            .ok_or_else(|| ApiError::KeyNotFound {
                email: account.email().to_string(),
                key_id: key_id.clone(),
            })?;
        self.backend
            .store
            .delete_key(&key_id)
            .await
            .map_err(ApiError::from)?;
        self.backend
            .changed(
                &permit,
                &format!("{resource}/serviceAccounts/{}", account.email()),
                serde_json::json!({ "key_id": key_id }),
                serde_json::Value::Null,
            )
            .await;
        Ok(Response::new(key_to_pb(&key)))
    }
}

/// The `Roles` API: custom roles, and the predefined catalogue.
#[derive(Clone)]
pub struct RolesApi {
    backend: Backend,
}

impl RolesApi {
    pub fn new(backend: Backend) -> Self {
        Self { backend }
    }

    async fn find(&self, name: &CustomRoleName) -> Result<CustomRole, ApiError> {
        let document = self
            .backend
            .store
            .get_role(&name.to_string())
            .await?
            .ok_or_else(|| ApiError::RoleNotFound {
                name: name.to_string(),
                project: name.project().to_string(),
            })?;
        let doc: RoleDocument = serde_json::from_str(&document)
            .map_err(|e| ApiError::Internal(format!("stored role `{name}` does not parse: {e}")))?;
        CustomRole::from_document(name, &doc).map_err(|e| ApiError::Internal(e.to_string()))
    }

    async fn save(&self, role: &CustomRole) -> Result<(), ApiError> {
        let document = serde_json::to_string(&role.to_document())
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(self
            .backend
            .store
            .put_role(&role.name.to_string(), &document)
            .await?)
    }
}

fn custom_to_pb(role: &CustomRole) -> pb::Role {
    let doc = role.to_document();
    pb::Role {
        name: role.name.to_string(),
        title: doc.title,
        description: doc.description,
        included_permissions: doc.included_permissions,
        stage: stage_name(doc.stage),
    }
}

fn stage_name(stage: Stage) -> String {
    serde_json::to_value(stage)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn predefined_to_pb(role: PredefinedRole) -> pb::Role {
    pb::Role {
        name: role.name().to_owned(),
        title: role.title().to_owned(),
        description: role.description().to_owned(),
        included_permissions: role
            .permissions()
            .iter()
            .map(|p| p.as_str().to_owned())
            .collect(),
        stage: "GA".into(),
    }
}

fn parse_stage(value: &str) -> Result<Stage, ApiError> {
    Stage::parse(value).ok_or_else(|| {
        invalid(format!(
            "stage `{value}` is not one of ALPHA, BETA, GA, DEPRECATED, DISABLED, EAP"
        ))
    })
}

/// A custom role's name; a predefined role cannot be `verb` (changed, deleted).
fn custom_role(value: &str, verb: &str) -> Result<CustomRoleName, ApiError> {
    match RoleName::parse(value).map_err(invalid)? {
        RoleName::Custom(name) => Ok(name),
        RoleName::Predefined(role) => Err(invalid(format!(
            "`{}` is a predefined role and cannot be {verb}; create a custom role instead",
            role.name()
        ))),
    }
}

fn role_resource(name: &CustomRoleName) -> Resource {
    Resource::Project(name.project().clone())
}

#[tonic::async_trait]
impl pb::roles_server::Roles for RolesApi {
    async fn create_role(
        &self,
        request: Request<pb::CreateRoleRequest>,
    ) -> Result<Response<pb::Role>, Status> {
        let resource = project_resource(&request.get_ref().project)?;
        let permit = self.backend.permit(&request, &resource).await?;
        let req = request.into_inner();
        let project = ProjectName::parse(&req.project).map_err(invalid)?;
        let name = CustomRoleName::new(&project, &req.role_id).map_err(invalid)?;
        let given = req.role.unwrap_or_default();
        let doc = RoleDocument {
            name: None,
            title: given.title,
            description: given.description,
            included_permissions: given.included_permissions,
            stage: if given.stage.is_empty() {
                Stage::default()
            } else {
                parse_stage(&given.stage)?
            },
            etag: None,
        };
        let role = CustomRole::from_document(&name, &doc).map_err(invalid)?;
        if self
            .backend
            .store
            .get_role(&name.to_string())
            .await
            .map_err(ApiError::from)?
            .is_some()
        {
            return Err(ApiError::RoleExists {
                name: name.to_string(),
            }
            .into());
        }
        self.save(&role).await?;
        self.backend
            .changed(
                &permit,
                &name.to_string(),
                serde_json::Value::Null,
                serde_json::to_value(role.to_document()).unwrap_or_default(),
            )
            .await;
        Ok(Response::new(custom_to_pb(&role)))
    }

    async fn get_role(
        &self,
        request: Request<pb::GetRoleRequest>,
    ) -> Result<Response<pb::Role>, Status> {
        let name = RoleName::parse(&request.get_ref().name).map_err(invalid)?;
        match name {
            RoleName::Predefined(role) => {
                self.backend.permit_authenticated(&request).await?;
                Ok(Response::new(predefined_to_pb(role)))
            }
            RoleName::Custom(name) => {
                self.backend.permit(&request, &role_resource(&name)).await?;
                Ok(Response::new(custom_to_pb(&self.find(&name).await?)))
            }
        }
    }

    async fn list_roles(
        &self,
        request: Request<pb::ListRolesRequest>,
    ) -> Result<Response<pb::ListRolesResponse>, Status> {
        if request.get_ref().project.is_empty() {
            self.backend.permit_authenticated(&request).await?;
            return Ok(Response::new(pb::ListRolesResponse {
                roles: PredefinedRole::ALL
                    .iter()
                    .map(|r| predefined_to_pb(*r))
                    .collect(),
            }));
        }
        let resource = project_resource(&request.get_ref().project)?;
        self.backend.permit(&request, &resource).await?;
        let prefix = format!("{resource}/roles/");
        let mut roles = Vec::new();
        for (name, _) in self
            .backend
            .store
            .list_roles()
            .await
            .map_err(ApiError::from)?
            .into_iter()
            .filter(|(n, _)| n.starts_with(&prefix))
        {
            let name =
                CustomRoleName::parse(&name).map_err(|e| ApiError::Internal(e.to_string()))?;
            roles.push(custom_to_pb(&self.find(&name).await?));
        }
        Ok(Response::new(pb::ListRolesResponse { roles }))
    }

    async fn update_role(
        &self,
        request: Request<pb::UpdateRoleRequest>,
    ) -> Result<Response<pb::Role>, Status> {
        let name = custom_role(&request.get_ref().name, "changed")?;
        let permit = self.backend.permit(&request, &role_resource(&name)).await?;
        let req = request.into_inner();
        let before = self.find(&name).await?.to_document();
        let mut doc = before.clone();
        if let Some(title) = req.title {
            doc.title = title;
        }
        if let Some(description) = req.description {
            doc.description = description;
        }
        if req.set_permissions {
            doc.included_permissions = req.included_permissions;
        }
        if let Some(stage) = req.stage {
            doc.stage = parse_stage(&stage)?;
        }
        let role = CustomRole::from_document(&name, &doc).map_err(invalid)?;
        self.save(&role).await?;
        self.backend
            .changed(
                &permit,
                &name.to_string(),
                serde_json::to_value(before).unwrap_or_default(),
                serde_json::to_value(role.to_document()).unwrap_or_default(),
            )
            .await;
        Ok(Response::new(custom_to_pb(&role)))
    }

    async fn delete_role(
        &self,
        request: Request<pb::DeleteRoleRequest>,
    ) -> Result<Response<pb::Role>, Status> {
        let name = custom_role(&request.get_ref().name, "deleted")?;
        let permit = self.backend.permit(&request, &role_resource(&name)).await?;
        let role = self.find(&name).await?;
        self.backend
            .store
            .delete_role(&name.to_string())
            .await
            .map_err(ApiError::from)?;
        self.backend
            .changed(
                &permit,
                &name.to_string(),
                serde_json::to_value(role.to_document()).unwrap_or_default(),
                serde_json::Value::Null,
            )
            .await;
        Ok(Response::new(custom_to_pb(&role)))
    }
}

/// The `Groups` API: groups live on the root, so every method checks its
/// `groups.*` permission there.
#[derive(Clone)]
pub struct GroupsApi {
    backend: Backend,
}

impl GroupsApi {
    pub fn new(backend: Backend) -> Self {
        Self { backend }
    }

    async fn find(&self, name: &GroupName) -> Result<GroupRecord, ApiError> {
        self.backend
            .store
            .get_group(name.as_str())
            .await?
            .ok_or_else(|| ApiError::GroupNotFound {
                name: name.to_string(),
            })
    }
}

impl GroupsApi {
    /// Adds (`add`) or removes the request's member, audited; the group after.
    async fn change_member(
        &self,
        request: Request<pb::GroupMemberRequest>,
        add: bool,
    ) -> Result<pb::Group, ApiError> {
        let permit = self.backend.permit(&request, &Resource::Root).await?;
        let name = group_name(&request.get_ref().name)?;
        let member = group_member(&request.get_ref().member)?.to_string();
        let store = &self.backend.store;
        let (before, after) = if add {
            match store.add_group_member(name.as_str(), &member).await? {
                None => {
                    return Err(ApiError::GroupNotFound {
                        name: name.to_string(),
                    });
                }
                Some(false) => {
                    return Err(ApiError::AlreadyAMember {
                        group: name.to_string(),
                        member,
                    });
                }
                Some(true) => (
                    serde_json::Value::Null,
                    serde_json::json!({ "member": member }),
                ),
            }
        } else {
            let group = self.find(&name).await?;
            if !store.remove_group_member(name.as_str(), &member).await? {
                return Err(ApiError::NotAMember {
                    group: name.to_string(),
                    member,
                    members: if group.members.is_empty() {
                        "none".to_owned()
                    } else {
                        group.members.join(", ")
                    },
                });
            }
            (
                serde_json::json!({ "member": member }),
                serde_json::Value::Null,
            )
        };
        self.backend
            .changed(&permit, &group_resource(&name), before, after)
            .await;
        Ok(group_to_pb(&self.find(&name).await?))
    }
}

/// A group name as `NAME` or `group:NAME`.
fn group_name(value: &str) -> Result<GroupName, ApiError> {
    GroupName::parse(value.strip_prefix("group:").unwrap_or(value)).map_err(invalid)
}

/// A principal that can be in a group: a user, a service account or a service.
fn group_member(value: &str) -> Result<Principal, ApiError> {
    let principal = Principal::parse(value).map_err(invalid)?;
    match principal {
        Principal::User(_) | Principal::ServiceAccount(_) | Principal::Service(_) => Ok(principal),
        _ => Err(ApiError::InvalidArgument(format!(
            "`{value}` cannot be a group member: members are `user:EMAIL`, `serviceAccount:NAME@PROJECT.rouse` or `service:NAMESPACE/NAME` (groups do not nest; bind `{value}` itself instead)"
        ))),
    }
}

fn group_resource(name: &GroupName) -> String {
    format!("groups/{name}")
}

fn group_to_pb(g: &GroupRecord) -> pb::Group {
    pb::Group {
        name: g.name.clone(),
        description: g.description.clone(),
        members: g.members.clone(),
        created_at: timestamp(g.created_at),
    }
}

#[tonic::async_trait]
impl pb::groups_server::Groups for GroupsApi {
    async fn create_group(
        &self,
        request: Request<pb::CreateGroupRequest>,
    ) -> Result<Response<pb::Group>, Status> {
        let permit = self.backend.permit(&request, &Resource::Root).await?;
        let req = request.into_inner();
        let name = group_name(&req.name)?;
        let record = GroupRecord {
            name: name.to_string(),
            description: req.description,
            members: Vec::new(),
            created_at: SystemTime::now(),
        };
        self.backend
            .store
            .create_group(&record)
            .await
            .map_err(ApiError::from)?;
        self.backend
            .changed(
                &permit,
                &group_resource(&name),
                serde_json::Value::Null,
                serde_json::json!({ "name": record.name, "description": record.description }),
            )
            .await;
        Ok(Response::new(group_to_pb(&record)))
    }

    async fn get_group(
        &self,
        request: Request<pb::GetGroupRequest>,
    ) -> Result<Response<pb::Group>, Status> {
        self.backend.permit(&request, &Resource::Root).await?;
        let name = group_name(&request.get_ref().name)?;
        Ok(Response::new(group_to_pb(&self.find(&name).await?)))
    }

    async fn list_groups(
        &self,
        request: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        self.backend.permit(&request, &Resource::Root).await?;
        let groups = self
            .backend
            .store
            .list_groups()
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::ListGroupsResponse {
            groups: groups.iter().map(group_to_pb).collect(),
        }))
    }

    async fn delete_group(
        &self,
        request: Request<pb::DeleteGroupRequest>,
    ) -> Result<Response<pb::Group>, Status> {
        let permit = self.backend.permit(&request, &Resource::Root).await?;
        let name = group_name(&request.get_ref().name)?;
        let group = self.find(&name).await?;
        self.backend
            .store
            .delete_group(name.as_str())
            .await
            .map_err(ApiError::from)?;
        self.backend
            .changed(
                &permit,
                &group_resource(&name),
                serde_json::json!({ "name": group.name, "members": group.members }),
                serde_json::Value::Null,
            )
            .await;
        Ok(Response::new(group_to_pb(&group)))
    }

    async fn add_group_member(
        &self,
        request: Request<pb::GroupMemberRequest>,
    ) -> Result<Response<pb::Group>, Status> {
        Ok(Response::new(self.change_member(request, true).await?))
    }

    async fn remove_group_member(
        &self,
        request: Request<pb::GroupMemberRequest>,
    ) -> Result<Response<pb::Group>, Status> {
        Ok(Response::new(self.change_member(request, false).await?))
    }
}
