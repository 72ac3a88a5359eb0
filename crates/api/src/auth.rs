//! The permission check every API method makes before doing anything.
//!
//! The caller is identified from the `authorization: Bearer <token>`
//! metadata (anonymous without it; a bad token is UNAUTHENTICATED, saying
//! what is wrong with it), then the policy decides. Every decision is
//! recorded in the audit log; a denial is PERMISSION_DENIED naming the
//! caller, the permission and the resource, never the policy.

use std::time::SystemTime;

use rouse_core::{ProjectName, ServiceName};
use rouse_iam::{Caller, Permission, Resource};
use tonic::Request;

use crate::backend::Backend;
use crate::error::ApiError;

impl Backend {
    /// Who makes `request`.
    pub fn caller<T>(&self, request: &Request<T>) -> Result<Caller, ApiError> {
        let value = match request.metadata().get("authorization") {
            None => None,
            Some(v) => Some(v.to_str().map_err(|_| {
                ApiError::Unauthenticated(
                    "the `authorization` metadata is not ASCII; send `Bearer <token>`".into(),
                )
            })?),
        };
        self.authority
            .snapshot()
            .api_caller(value, SystemTime::now())
            .map_err(|e| ApiError::Unauthenticated(format!("the call's token is refused: {e}")))
    }

    /// Checks that the caller of `request` holds `permission` on `resource`,
    /// recording the decision in the audit log. `action` names the method.
    pub async fn authorize<T>(
        &self,
        request: &Request<T>,
        action: &str,
        permission: Permission,
        resource: &Resource,
    ) -> Result<Caller, ApiError> {
        let caller = self.identify(request, action, permission, resource).await?;
        self.authorize_caller(&caller, action, permission, resource)
            .await?;
        Ok(caller)
    }

    /// Who makes `request`; a refused token is recorded in the audit log as
    /// a denial of `permission` on `resource`.
    async fn identify<T>(
        &self,
        request: &Request<T>,
        action: &str,
        permission: Permission,
        resource: &Resource,
    ) -> Result<Caller, ApiError> {
        match self.caller(request) {
            Ok(c) => Ok(c),
            Err(e) => {
                self.authority
                    .audit(rouse_store::AuditEntry {
                        id: 0,
                        at: SystemTime::now(),
                        principal: "unauthenticated".into(),
                        action: action.to_owned(),
                        resource: resource.to_string(),
                        permission: permission.as_str().to_owned(),
                        decision: "denied".into(),
                        detail: serde_json::json!({ "reason": e.to_string() }).to_string(),
                    })
                    .await;
                Err(e)
            }
        }
    }

    /// [`Backend::authorize`] for a caller already identified.
    pub async fn authorize_caller(
        &self,
        caller: &Caller,
        action: &str,
        permission: Permission,
        resource: &Resource,
    ) -> Result<(), ApiError> {
        let decision =
            self.authority
                .snapshot()
                .check(caller, permission, resource, SystemTime::now());
        self.authority
            .audit(rouse_authz::decision_entry(
                caller, action, resource, permission, &decision,
            ))
            .await;
        decision.map(|_| ()).map_err(|denied| {
            let hint = if caller.is_anonymous() {
                "; the call carried no credentials: pass --credentials FILE or set ROUSE_CREDENTIALS"
            } else {
                ""
            };
            ApiError::PermissionDenied(format!("{denied}{hint}"))
        })
    }

    /// The check for a call on something looked up by id (an execution, a
    /// build, a trigger): made on the service `service` says it belongs to,
    /// or on the root when the lookup found nothing (or its service is
    /// gone), so that only callers who could see anything learn that an id
    /// does not exist. The lookup's error comes after the check.
    pub async fn authorize_lookup<T, V>(
        &self,
        request: &Request<T>,
        action: &str,
        permission: Permission,
        lookup: Result<V, ApiError>,
        service: impl Fn(&V) -> Option<&rouse_core::Service>,
    ) -> Result<(Caller, V), ApiError> {
        self.authorize_lookup_or_owner(request, action, permission, lookup, service, |_| None)
            .await
    }

    /// [`Backend::authorize_lookup`] for something that belongs to whoever
    /// made it (an execution to its asker): `owner` names that principal,
    /// and a caller who is it needs no permission. The permit is audited as
    /// granted with `"as": "owner"`; anyone else is checked as
    /// `authorize_lookup` checks, so they learn nothing more than before.
    pub async fn authorize_lookup_or_owner<T, V>(
        &self,
        request: &Request<T>,
        action: &str,
        permission: Permission,
        lookup: Result<V, ApiError>,
        service: impl Fn(&V) -> Option<&rouse_core::Service>,
        owner: impl Fn(&V) -> Option<&str>,
    ) -> Result<(Caller, V), ApiError> {
        let resource = lookup
            .as_ref()
            .ok()
            .and_then(&service)
            .map_or(Resource::Root, |s| resource_of(&s.project, &s.name));
        let caller = self
            .identify(request, action, permission, &resource)
            .await?;
        let owner = lookup.as_ref().ok().and_then(&owner);
        let owns = caller
            .principal()
            .is_some_and(|p| owner.is_some_and(|o| o == p.to_string()));
        if owns {
            self.authority
                .audit(rouse_store::AuditEntry {
                    id: 0,
                    at: SystemTime::now(),
                    principal: rouse_authz::principal_name(&caller),
                    action: action.to_owned(),
                    resource: resource.to_string(),
                    permission: permission.as_str().to_owned(),
                    decision: "granted".into(),
                    detail: serde_json::json!({ "as": "owner" }).to_string(),
                })
                .await;
        } else {
            self.authorize_caller(&caller, action, permission, &resource)
                .await?;
        }
        Ok((caller, lookup?))
    }

    /// Whether `caller` holds `permission` on `resource`, without auditing:
    /// for filtering what a list shows.
    pub fn allowed(&self, caller: &Caller, permission: Permission, resource: &Resource) -> bool {
        self.authority
            .snapshot()
            .check(caller, permission, resource, SystemTime::now())
            .is_ok()
    }
}

/// `projects/P`, or INVALID_ARGUMENT naming the bad project.
pub fn project_resource(project: &str) -> Result<Resource, ApiError> {
    ProjectName::parse(project)
        .map(Resource::Project)
        .map_err(|e| ApiError::InvalidArgument(e.to_string()))
}

/// `projects/P/services/S`, or INVALID_ARGUMENT naming the bad name.
pub fn service_resource(project: &str, service: &str) -> Result<Resource, ApiError> {
    let (p, s) = Backend::names(project, service)?;
    Ok(Resource::Service(p, s))
}

/// The resource of a service already known to be valid.
pub fn resource_of(project: &ProjectName, service: &ServiceName) -> Resource {
    Resource::Service(project.clone(), service.clone())
}
