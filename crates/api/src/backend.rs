//! What every API service is built on: the store and its change notices,
//! messaging, the secrets key, the dispatcher hooks and where instance logs
//! are.

use std::path::PathBuf;
use std::sync::Arc;

use rouse_authz::Authority;
use rouse_core::{ProjectName, Service, ServiceName};
use rouse_secrets::SecretsKey;
use rouse_store::{
    BuildStore, Changes, DispatchStore, IamStore, NodeStore, RolloutStore, SecretStore, Store,
    TriggerStore,
};

use crate::error::ApiError;
use crate::hooks::DispatchHooks;
use crate::messaging::Messaging;

/// Everything the API's store must do: the API manages every record, so it
/// names every store trait.
pub trait ApiStore:
    Store
    + DispatchStore
    + IamStore
    + TriggerStore
    + BuildStore
    + RolloutStore
    + SecretStore
    + NodeStore
{
}
impl<T> ApiStore for T where
    T: Store
        + DispatchStore
        + IamStore
        + TriggerStore
        + BuildStore
        + RolloutStore
        + SecretStore
        + NodeStore
{
}

#[derive(Clone)]
pub struct Backend {
    pub store: Arc<dyn ApiStore>,
    pub messaging: Arc<dyn Messaging>,
    pub hooks: Arc<dyn DispatchHooks>,
    /// Wakes the other roles of this process after a change.
    pub changes: Changes,
    /// Seals secrets and triggers' webhook secrets and tokens.
    pub key: Arc<SecretsKey>,
    /// Base URL of the builder's webhook server (`http://127.0.0.1:7071`),
    /// shown with triggers.
    pub webhook_url: String,
    /// `<logs_dir>/<service uuid>/<instance>.log`
    pub logs_dir: PathBuf,
    /// `<functions_dir>/<project>-<service>/<hash>/`: deployed functions'
    /// files, read by the builder (same machine).
    pub functions_dir: PathBuf,
    /// Who may do what; every method asks it first.
    pub authority: Arc<Authority>,
    /// Signs the question tokens of callers known by a bearer token
    /// ([`platform_asserter`], made once).
    pub asserter: Arc<rouse_identity::Asserter>,
    /// The image registry, when one is configured: its repositories and
    /// the token issuer it trusts.
    pub registry: Option<Arc<crate::registry::RegistryAuth>>,
}

impl Backend {
    pub fn names(project: &str, name: &str) -> Result<(ProjectName, ServiceName), ApiError> {
        let invalid = |e: rouse_core::NameError| ApiError::InvalidArgument(e.to_string());
        let project = ProjectName::parse(project).map_err(invalid)?;
        let name = ServiceName::parse(&project, name).map_err(invalid)?;
        Ok((project, name))
    }

    /// The service, or NOT_FOUND saying how to list the existing ones.
    pub async fn find_service(&self, project: &str, name: &str) -> Result<Service, ApiError> {
        let (project, name) = Self::names(project, name)?;
        self.store
            .get_service(&project, &name)
            .await?
            .ok_or_else(|| ApiError::ServiceNotFound {
                project: project.to_string(),
                name: name.to_string(),
            })
    }

    /// A record of a service's (a build, a trigger: `kind`) found by `id`,
    /// with its service; NOT_FOUND saying how to list them if either is gone.
    pub async fn with_its_service<R>(
        &self,
        kind: &'static str,
        id: &str,
        record: Option<R>,
        service_uuid: impl FnOnce(&R) -> uuid::Uuid,
    ) -> Result<(R, Service), ApiError> {
        let not_found = || ApiError::RecordNotFound {
            kind,
            id: id.to_owned(),
        };
        let record = record.ok_or_else(not_found)?;
        let service = self
            .store
            .get_service_by_uuid(service_uuid(&record))
            .await?
            .ok_or_else(not_found)?;
        Ok((record, service))
    }
}

/// The platform's question-assertion key, derived from the secrets key, so
/// every process on the same key (an api here, a dispatcher elsewhere)
/// agrees on it. The api signs with it; the authority trusts it.
pub fn platform_asserter(key: &SecretsKey) -> rouse_identity::Asserter {
    rouse_identity::Asserter::from_seed(&key.derive("rouse question assertions v1"))
}
