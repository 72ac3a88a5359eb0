//! Permission checks for the API and the dispatcher.
//!
//! An [`Authority`] holds a [`Snapshot`] of everything a check reads (the
//! compiled policies, custom roles, public keys with whether their account is
//! disabled, which projects trust the `sender` attribute, and the groups each
//! principal is in), built from the
//! store. A check reads the snapshot only: no I/O, no lock held while
//! deciding. The snapshot is rebuilt when the store's IAM version changes:
//! at once after a change made through this process ([`Authority::refresh`]),
//! and within [`REFRESH_INTERVAL`] for a change made by another process
//! ([`Authority::keep_fresh`]), so a policy change takes effect for
//! questions within a second.
//!
//! Who a caller is comes from a token ([`rouse_identity::verify`]): for API
//! calls the `authorization: Bearer` metadata ([`Snapshot::api_caller`]), for
//! questions the `authorization` attribute, bound to the question's uuid
//! ([`Snapshot::question_caller`]). A question without one is anonymous
//! (matches `allUsers` only), unless its project trusts the `sender`
//! attribute: then it is asked as `service:<namespace>/<name>` of its sender.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rouse_core::{ProjectName, ServiceName, Sruid};
use rouse_iam::{
    Caller, CompiledPolicy, CustomRole, CustomRoleName, Denied, GroupName, Permission, Permit,
    Policy, Principal, Request, Resource, RoleDocument, Roles, ServiceId,
};
use rouse_identity::{KeyRecord, PublicKey, TokenError};
use rouse_store::{AuditDecision, AuditEntry, AuditStore, IamData, IamSnapshot, StoreError};
use tokio_util::sync::CancellationToken;

/// How often [`Authority::keep_fresh`] looks for changes made elsewhere.
/// 250 ms: four cheap one-row reads a second keep a change made by another
/// process effective well within the one second the issue allows.
pub const REFRESH_INTERVAL: Duration = Duration::from_millis(250);

/// Why a caller could not be identified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    Token(#[from] TokenError),
    #[error(
        "the `authorization` value must be `Bearer <token>`; found a value without the `Bearer ` prefix"
    )]
    NotBearer,
    #[error("the token's principal `{0}` is not a user or service account")]
    Principal(String),
}

/// Everything a permission check reads, as of one store version.
#[derive(Debug, Default)]
pub struct Snapshot {
    version: i64,
    policies: HashMap<Resource, CompiledPolicy>,
    roles: Roles,
    keys: HashMap<String, KeyRecord>,
    trusted: HashSet<String>,
    /// Principal (`user:…`) → the groups it is in.
    groups: HashMap<String, Vec<GroupName>>,
    /// The platform's question-assertion key ([`rouse_identity::Asserter`]).
    platform: Option<(String, KeyRecord)>,
}

impl Snapshot {
    /// Builds a snapshot from what the store holds. A document that does not
    /// parse grants nothing (and is logged); it never fails the build.
    pub fn build(data: IamData) -> Self {
        let mut roles = Roles::new();
        for (name, document) in &data.roles {
            let parsed = CustomRoleName::parse(name)
                .map_err(|e| e.to_string())
                .and_then(|n| {
                    let doc: RoleDocument =
                        serde_json::from_str(document).map_err(|e| e.to_string())?;
                    CustomRole::from_document(&n, &doc).map_err(|e| e.to_string())
                });
            match parsed {
                Ok(role) => {
                    roles.insert(role);
                }
                Err(e) => {
                    tracing::error!(role = %name, error = %e, "stored custom role is invalid; it grants nothing")
                }
            }
        }
        let mut policies = HashMap::with_capacity(data.policies.len());
        for stored in &data.policies {
            let resource = match Resource::parse(&stored.resource) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "stored policy is on an invalid resource; ignored");
                    continue;
                }
            };
            let compiled = match Policy::from_json(&stored.document) {
                Ok(policy) => CompiledPolicy::new(resource.clone(), &policy),
                Err(e) => {
                    tracing::error!(resource = %stored.resource, error = %e, "stored policy does not parse; it grants nothing");
                    CompiledPolicy::empty(resource.clone())
                }
            };
            for problem in compiled.problems() {
                tracing::warn!(resource = %stored.resource, %problem, "policy binding grants nothing");
            }
            policies.insert(resource, compiled);
        }
        let mut keys = HashMap::with_capacity(data.keys.len());
        for (key, disabled) in data.keys {
            match PublicKey::from_base64(&key.public_key) {
                Ok(public_key) => {
                    keys.insert(
                        key.key_id,
                        KeyRecord {
                            principal: key.principal,
                            public_key,
                            disabled,
                        },
                    );
                }
                Err(e) => {
                    tracing::error!(key = %key.key_id, error = %e, "stored public key is invalid; its tokens are refused");
                }
            }
        }
        let mut groups: HashMap<String, Vec<GroupName>> = HashMap::new();
        for (group, member) in data.memberships {
            match GroupName::parse(&group) {
                Ok(name) => groups.entry(member).or_default().push(name),
                Err(e) => {
                    tracing::error!(%group, error = %e, "stored group name is invalid; its members gain nothing from it")
                }
            }
        }
        Self {
            version: data.version,
            policies,
            roles,
            keys,
            trusted: data.trusted_projects.into_iter().collect(),
            groups,
            platform: None,
        }
    }

    pub fn version(&self) -> i64 {
        self.version
    }

    pub fn roles(&self) -> &Roles {
        &self.roles
    }

    /// The policies that govern `resource`, root first.
    pub fn governing(&self, resource: &Resource) -> Vec<&CompiledPolicy> {
        resource
            .lineage()
            .iter()
            .filter_map(|r| self.policies.get(r))
            .collect()
    }

    /// Decides whether `caller` holds `permission` on `resource` at `now`.
    pub fn check(
        &self,
        caller: &Caller,
        permission: Permission,
        resource: &Resource,
        now: SystemTime,
    ) -> Result<Permit, Denied> {
        let request = Request {
            caller,
            permission,
            resource,
            time: now,
        };
        rouse_iam::evaluate(&request, &self.governing(resource), &self.roles)
    }

    fn lookup(&self, kid: &str) -> Option<KeyRecord> {
        if let Some((platform, record)) = &self.platform
            && platform == kid
        {
            return Some(record.clone());
        }
        self.keys.get(kid).cloned()
    }

    /// The claims of a registry credential (the password of a `docker
    /// login`) for `audience`, a repository's
    /// ([`rouse_identity::registry_audience`]).
    pub fn verify_registry_credential(
        &self,
        token: &str,
        audience: &str,
        now: SystemTime,
    ) -> Result<rouse_identity::Claims, rouse_identity::TokenError> {
        rouse_identity::verify(token, audience, None, now, |kid| self.lookup(kid))
    }

    /// The groups `principal` is in.
    pub fn groups_of(&self, principal: &str) -> &[GroupName] {
        self.groups.get(principal).map_or(&[], Vec::as_slice)
    }

    /// `principal` as a caller, with its groups.
    fn authenticated(&self, principal: Principal) -> Result<Caller, AuthError> {
        let name = principal.to_string();
        let groups = self.groups_of(&name).iter().cloned();
        Caller::authenticated(principal, groups).map_err(|_| AuthError::Principal(name))
    }

    fn caller_of(&self, claims: &rouse_identity::Claims) -> Result<Caller, AuthError> {
        let principal = Principal::parse(claims.principal())
            .map_err(|_| AuthError::Principal(claims.principal().to_owned()))?;
        self.authenticated(principal)
    }

    /// The caller of an API call from its `authorization` metadata value
    /// (`Bearer <token>`); anonymous without one.
    pub fn api_caller(
        &self,
        authorization: Option<&str>,
        now: SystemTime,
    ) -> Result<Caller, AuthError> {
        let Some(value) = authorization else {
            return Ok(Caller::anonymous());
        };
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or(AuthError::NotBearer)?;
        let claims = rouse_identity::verify(
            token.trim(),
            rouse_identity::API_AUDIENCE,
            None,
            now,
            |kid| self.lookup(kid),
        )?;
        self.caller_of(&claims)
    }

    /// The caller of a question to `project/service`: the principal of its
    /// `authorization` token (which must be for this service and this
    /// question); without a token, `service:<namespace>/<name>` of `sender`
    /// if the project trusts the sender attribute, else anonymous.
    ///
    /// `issued_by` is when the token must still have been valid: the time
    /// Pub/Sub accepted the question (set by the broker, not the asker), so a
    /// question that waited in its subscription while the dispatcher was down
    /// is judged by when it was asked.
    pub fn question_caller(
        &self,
        authorization: Option<&str>,
        project: &ProjectName,
        service: &ServiceName,
        question_uuid: &str,
        sender: Option<&str>,
        issued_by: SystemTime,
    ) -> Result<Caller, AuthError> {
        if let Some(token) = authorization.filter(|t| !t.is_empty()) {
            let audience = rouse_identity::service_audience(project, service);
            let claims =
                rouse_identity::verify(token, &audience, Some(question_uuid), issued_by, |kid| {
                    self.lookup(kid)
                })?;
            return self.caller_of(&claims);
        }
        if self.trusted.contains(project.as_str())
            && let Some(sruid) = sender.and_then(|s| Sruid::parse(s).ok())
        {
            return self.authenticated(Principal::Service(ServiceId::from_sruid(&sruid)));
        }
        Ok(Caller::anonymous())
    }

    /// The caller of an HTTP request to `project/service` through the
    /// ingress: the principal of its `Authorization` header (`Bearer
    /// <token>`, or `Token <token>`) for this service (audience
    /// `projects/P/services/S`, no question) or for the API; anonymous
    /// without one.
    pub fn http_caller(
        &self,
        authorization: Option<&str>,
        project: &ProjectName,
        service: &ServiceName,
        now: SystemTime,
    ) -> Result<Caller, AuthError> {
        let Some(value) = authorization.map(str::trim).filter(|v| !v.is_empty()) else {
            return Ok(Caller::anonymous());
        };
        let token = ["Bearer ", "bearer ", "Token ", "token "]
            .iter()
            .find_map(|scheme| value.strip_prefix(scheme))
            .ok_or(AuthError::NotBearer)?
            .trim();
        let audience = rouse_identity::service_audience(project, service);
        let claims =
            match rouse_identity::verify(token, &audience, None, now, |kid| self.lookup(kid)) {
                Err(rouse_identity::TokenError::WrongAudience { .. }) => {
                    rouse_identity::verify(token, rouse_identity::API_AUDIENCE, None, now, |kid| {
                        self.lookup(kid)
                    })?
                }
                other => other?,
            };
        self.caller_of(&claims)
    }

    /// Whether `project` trusts the `sender` attribute of questions.
    pub fn trusts_sender(&self, project: &str) -> bool {
        self.trusted.contains(project)
    }
}

/// What the authority reads and writes: the IAM snapshot and the audit log.
pub trait AuthorityStore: IamSnapshot + AuditStore {}
impl<T: IamSnapshot + AuditStore> AuthorityStore for T {}

/// The current [`Snapshot`], kept fresh from the store.
pub struct Authority {
    store: Arc<dyn AuthorityStore>,
    current: RwLock<Arc<Snapshot>>,
    platform: Option<(String, KeyRecord)>,
    /// One rebuild at a time.
    rebuild: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("version", &self.snapshot().version)
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// Loads the first snapshot.
    pub async fn load(store: Arc<dyn AuthorityStore>) -> Result<Arc<Self>, StoreError> {
        Self::load_with(store, None).await
    }

    /// Loads the first snapshot; question tokens signed by `platform` (the
    /// platform's assertion key: its id and record) name their caller.
    pub async fn load_with(
        store: Arc<dyn AuthorityStore>,
        platform: Option<(String, KeyRecord)>,
    ) -> Result<Arc<Self>, StoreError> {
        let mut snapshot = Snapshot::build(store.load_iam().await?);
        snapshot.platform.clone_from(&platform);
        Ok(Arc::new(Self {
            store,
            platform,
            current: RwLock::new(Arc::new(snapshot)),
            rebuild: tokio::sync::Mutex::new(()),
        }))
    }

    /// The snapshot checks read now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Rebuilds the snapshot if the store changed since it was built.
    /// Returns whether it did.
    pub async fn refresh(&self) -> Result<bool, StoreError> {
        let _one = self.rebuild.lock().await;
        let version = self.store.iam_version().await?;
        if version == self.snapshot().version {
            return Ok(false);
        }
        let mut snapshot = Snapshot::build(self.store.load_iam().await?);
        snapshot.platform.clone_from(&self.platform);
        let snapshot = Arc::new(snapshot);
        match self.current.write() {
            Ok(mut guard) => *guard = snapshot,
            Err(poisoned) => *poisoned.into_inner() = snapshot,
        }
        Ok(true)
    }

    /// Refreshes every [`REFRESH_INTERVAL`] until `shutdown`.
    pub fn keep_fresh(
        self: &Arc<Self>,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REFRESH_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                if let Err(e) = this.refresh().await {
                    tracing::warn!(error = %e, "cannot refresh the permission snapshot; checks use the last one");
                }
            }
        })
    }

    /// Records a check's outcome (or a change) in the audit log; failures to
    /// record are logged, not returned: an audit write never fails a call.
    pub async fn audit(&self, entry: AuditEntry) {
        if let Err(e) = self.store.append_audit(&entry).await {
            tracing::error!(action = %entry.action, error = %e, "cannot record an audit entry");
        }
    }
}

/// An audit entry for a decision.
pub fn decision_entry(
    caller: &Caller,
    action: &str,
    resource: &Resource,
    permission: Permission,
    decision: &Result<Permit, Denied>,
) -> AuditEntry {
    let (verdict, detail) = match decision {
        Ok(permit) => (
            AuditDecision::Granted,
            serde_json::json!({
                "role": permit.role.to_string(),
                "member": permit.member.to_string(),
                "on": permit.resource.to_string(),
                "condition": permit.condition,
            }),
        ),
        Err(denied) => (
            AuditDecision::Denied,
            serde_json::json!({ "reason": denied.to_string() }),
        ),
    };
    AuditEntry {
        id: 0,
        at: SystemTime::now(),
        principal: principal_name(caller),
        action: action.to_owned(),
        resource: resource.to_string(),
        permission: permission.as_str().to_owned(),
        decision: verdict,
        detail: detail.to_string(),
    }
}

/// The caller as the audit log names it: its principal, or `anonymous`.
pub fn principal_name(caller: &Caller) -> String {
    caller
        .principal()
        .map_or_else(|| "anonymous".to_owned(), ToString::to_string)
}

#[cfg(test)]
mod tests;
