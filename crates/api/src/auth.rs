//! The permission check every API method makes before doing anything.
//!
//! What a method needs is declared once, in [`crate::methods::METHODS`];
//! the [`MethodLayer`](crate::methods::MethodLayer) hands each handler its
//! entry. A handler names only the resource its request is about and gets
//! a [`Permit`] back: the permission checked and the action audited come
//! from the table. The caller is identified from the
//! `authorization: Bearer <token>` metadata (anonymous without it; a bad
//! token is UNAUTHENTICATED, saying what is wrong with it). Every decision
//! is recorded in the audit log; a denial is PERMISSION_DENIED naming the
//! caller, the permission and the resource, never the policy.

use std::time::SystemTime;

use rouse_core::{ProjectName, Service, ServiceName};
use rouse_iam::{Caller, Resource};
use rouse_store::{AuditDecision, AuditEntry};
use tonic::Request;

use crate::backend::Backend;
use crate::error::ApiError;
use crate::methods::{Also, Gate, Method};

/// Proof that a call passed its method's check: who called, and the
/// resource the check was made on. Only this module makes one.
#[derive(Debug, Clone)]
pub struct Permit {
    pub caller: Caller,
    pub resource: Resource,
    pub method: &'static Method,
    _made_here: MadeHere,
}

/// Only this module can name it, so only this module makes a [`Permit`].
#[derive(Debug, Clone)]
struct MadeHere;

impl Backend {
    /// Who makes `request`.
    fn caller<T>(&self, request: &Request<T>) -> Result<Caller, ApiError> {
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

    /// The entry of the method `request` calls, as the layer found it.
    fn gate<T>(request: &Request<T>) -> Result<&Gate, ApiError> {
        request.extensions().get::<Gate>().ok_or_else(|| {
            ApiError::Internal("a call reached a handler without the method layer".into())
        })
    }

    /// The gate of `request`, if its method lets `also` through.
    fn gate_allowing<T>(request: &Request<T>, also: Also) -> Result<&Gate, ApiError> {
        let gate = Self::gate(request)?;
        if gate.method.also == also {
            Ok(gate)
        } else {
            Err(ApiError::Internal(format!(
                "{} was checked as if its entry let {also:?} through; it lets {:?}",
                gate.method.path, gate.method.also
            )))
        }
    }

    /// Checks that the caller of `request` holds its method's permission on
    /// `resource`, recording the decision in the audit log.
    pub async fn permit<T>(
        &self,
        request: &Request<T>,
        resource: &Resource,
    ) -> Result<Permit, ApiError> {
        let gate = Self::gate(request)?;
        let caller = self.identify(request, gate.method, resource).await?;
        self.check(gate, caller, resource.clone()).await
    }

    /// The check for a call on a record looked up by id (an execution, a
    /// build, a trigger): made on the service `service` says it belongs to,
    /// or on the root when the lookup found nothing (or its service is
    /// gone). The lookup's error comes after the check.
    pub async fn permit_record<T, V>(
        &self,
        request: &Request<T>,
        lookup: Result<V, ApiError>,
        service: impl Fn(&V) -> Option<&Service>,
    ) -> Result<(Permit, V), ApiError> {
        self.permit_record_or_owner(request, lookup, service, |_| None)
            .await
    }

    /// [`Backend::permit_record`] for a method whose entry lets the record's
    /// owner through ([`Also::Owner`]): `owner` names the principal the
    /// record belongs to, and that caller needs no permission. The permit is
    /// audited as granted with `"as": "owner"`; anyone else is checked as
    /// `permit_record` checks, so they learn nothing more.
    pub async fn permit_record_or_owner<T, V>(
        &self,
        request: &Request<T>,
        lookup: Result<V, ApiError>,
        service: impl Fn(&V) -> Option<&Service>,
        owner: impl Fn(&V) -> Option<&str>,
    ) -> Result<(Permit, V), ApiError> {
        let gate = Self::gate(request)?;
        let resource = lookup
            .as_ref()
            .ok()
            .and_then(&service)
            .map_or(Resource::Root, |s| resource_of(&s.project, &s.name));
        let caller = self.identify(request, gate.method, &resource).await?;
        let owner = match gate.method.also {
            Also::Owner => lookup.as_ref().ok().and_then(&owner),
            _ => None,
        };
        let owns = caller
            .principal()
            .is_some_and(|p| owner.is_some_and(|o| o == p.to_string()));
        let permit = if owns {
            self.authority
                .audit(AuditEntry {
                    id: 0,
                    at: SystemTime::now(),
                    principal: rouse_authz::principal_name(&caller),
                    action: gate.method.action().to_owned(),
                    resource: resource.to_string(),
                    permission: gate.method.permission.as_str().to_owned(),
                    decision: AuditDecision::Granted,
                    detail: serde_json::json!({ "as": "owner" }).to_string(),
                })
                .await;
            self.issue(gate, caller, resource)
        } else {
            self.check(gate, caller, resource).await?
        };
        Ok((permit, lookup?))
    }

    /// The permit of a method asked across every project
    /// ([`Also::EachItem`]): any caller passes, and sees only the items
    /// [`Backend::shows`] allows.
    pub fn permit_each_item<T>(&self, request: &Request<T>) -> Result<Permit, ApiError> {
        let gate = Self::gate_allowing(request, Also::EachItem)?;
        let caller = self.caller(request)?;
        Ok(self.issue(gate, caller, Resource::Root))
    }

    /// The permit of a caller asking about themselves
    /// ([`Also::Themselves`]): no permission is needed.
    pub fn permit_themselves<T>(
        &self,
        request: &Request<T>,
        resource: &Resource,
    ) -> Result<Permit, ApiError> {
        let gate = Self::gate_allowing(request, Also::Themselves)?;
        let caller = self.caller(request)?;
        Ok(self.issue(gate, caller, resource.clone()))
    }

    /// The permit of a method open to any authenticated caller
    /// ([`Also::Authenticated`]); an anonymous one is checked on the root.
    pub async fn permit_authenticated<T>(&self, request: &Request<T>) -> Result<Permit, ApiError> {
        let gate = Self::gate_allowing(request, Also::Authenticated)?;
        let caller = self.caller(request)?;
        if caller.is_anonymous() {
            self.check(gate, caller, Resource::Root).await
        } else {
            Ok(self.issue(gate, caller, Resource::Root))
        }
    }

    /// Whether the permit's caller holds its method's permission on
    /// `resource`, without auditing: what a list shows.
    pub fn shows(&self, permit: &Permit, resource: &Resource) -> bool {
        self.authority
            .snapshot()
            .check(
                &permit.caller,
                permit.method.permission,
                resource,
                SystemTime::now(),
            )
            .is_ok()
    }

    /// Records an administrative change made under `permit` (the method's
    /// action and permission) and makes it effective at once.
    pub async fn changed(
        &self,
        permit: &Permit,
        resource: &str,
        before: serde_json::Value,
        after: serde_json::Value,
    ) {
        self.changed_as(permit, permit.method.action(), resource, before, after)
            .await;
    }

    /// [`Backend::changed`] audited under another action name
    /// (`DisableServiceAccount` for `SetServiceAccountDisabled`).
    pub async fn changed_as(
        &self,
        permit: &Permit,
        action: &str,
        resource: &str,
        before: serde_json::Value,
        after: serde_json::Value,
    ) {
        self.authority
            .audit(AuditEntry {
                id: 0,
                at: SystemTime::now(),
                principal: rouse_authz::principal_name(&permit.caller),
                action: action.to_owned(),
                resource: resource.to_owned(),
                permission: permit.method.permission.as_str().to_owned(),
                decision: AuditDecision::Changed,
                detail: serde_json::json!({ "before": before, "after": after }).to_string(),
            })
            .await;
        if let Err(e) = self.authority.refresh().await {
            tracing::warn!(error = %e, "cannot refresh the permission snapshot; the change takes effect at the next refresh");
        }
    }

    /// Who makes `request`; a refused token is recorded in the audit log as
    /// a denial of the method's permission on `resource`.
    async fn identify<T>(
        &self,
        request: &Request<T>,
        method: &Method,
        resource: &Resource,
    ) -> Result<Caller, ApiError> {
        match self.caller(request) {
            Ok(c) => Ok(c),
            Err(e) => {
                self.authority
                    .audit(AuditEntry {
                        id: 0,
                        at: SystemTime::now(),
                        principal: "unauthenticated".into(),
                        action: method.action().to_owned(),
                        resource: resource.to_string(),
                        permission: method.permission.as_str().to_owned(),
                        decision: AuditDecision::Denied,
                        detail: serde_json::json!({ "reason": e.to_string() }).to_string(),
                    })
                    .await;
                Err(e)
            }
        }
    }

    /// The check itself, audited.
    async fn check(
        &self,
        gate: &Gate,
        caller: Caller,
        resource: Resource,
    ) -> Result<Permit, ApiError> {
        let method = gate.method;
        if !method.admits(&resource) {
            return Err(ApiError::Internal(format!(
                "{} was checked on `{resource}`, which its entry ({:?}) does not declare",
                method.path, method.on
            )));
        }
        let decision = self.authority.snapshot().check(
            &caller,
            method.permission,
            &resource,
            SystemTime::now(),
        );
        self.authority
            .audit(rouse_authz::decision_entry(
                &caller,
                method.action(),
                &resource,
                method.permission,
                &decision,
            ))
            .await;
        if let Err(denied) = decision {
            let hint = if caller.is_anonymous() {
                "; the call carried no credentials: pass --credentials FILE or set ROUSE_CREDENTIALS"
            } else {
                ""
            };
            return Err(ApiError::PermissionDenied(format!("{denied}{hint}")));
        }
        Ok(self.issue(gate, caller, resource))
    }

    fn issue(&self, gate: &Gate, caller: Caller, resource: Resource) -> Permit {
        gate.pass();
        Permit {
            caller,
            resource,
            method: gate.method,
            _made_here: MadeHere,
        }
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
