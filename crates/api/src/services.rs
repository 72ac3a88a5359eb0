//! The `Services` API: create, get, list, update and delete services.
//!
//! Create is "record, then provision": the record goes in first with status
//! `provisioning` (its unique key makes concurrent creates of one name
//! collide cleanly), then the topic and subscription are created, then the
//! status becomes `created`. If provisioning fails, whatever was created is
//! removed again and the record deleted, so a failed create leaves nothing
//! behind; if the server dies half-way, the reconciliation at start finishes
//! the job.

use std::collections::BTreeMap;
use std::time::SystemTime;

use rouse_core::{ProjectName, Service, ServiceStatus};
use rouse_pubsub::{Ensured, SubscriptionSpec};
use rouse_store::StoreError;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use rouse_iam::Resource;

use crate::auth::{project_resource, service_resource};
use crate::backend::Backend;
use crate::convert::{duration_from_pb, service_to_pb};
use crate::error::ApiError;
use crate::pb;

/// How often an update is retried when another update won the race.
const UPDATE_ATTEMPTS: usize = 5;

#[derive(Clone)]
pub struct ServicesApi {
    backend: Backend,
}

impl ServicesApi {
    pub fn new(backend: Backend) -> Self {
        Self { backend }
    }

    async fn find(&self, project: &str, name: &str) -> Result<Service, ApiError> {
        self.backend.find_service(project, name).await
    }

    /// The service as the API answers it: with its serving revision, tags
    /// and traffic split, read from the store.
    async fn to_pb(&self, service: &Service) -> Result<pb::Service, ApiError> {
        let store = &self.backend.store;
        let (routing, serving) = tokio::try_join!(
            store.routing(service.uuid),
            store.serving_revision(service.uuid)
        )?;
        let serving = serving.map(|r| r.name);
        let mut pb = service_to_pb(service, serving.as_deref(), &routing);
        if let Some(registry) = &self.backend.registry {
            pb.image_repository = registry.repository(&service.project, &service.name);
        }
        Ok(pb)
    }

    pub async fn create(&self, project: &str, name: &str) -> Result<Service, ApiError> {
        let (project, name) = Backend::names(project, name)?;
        let mut service = Service::new(project, name, Uuid::new_v4(), SystemTime::now());
        self.backend.store.insert_service(&service).await?;
        if let Err(e) = self.provision(&service).await {
            if let Err(cleanup) = self.backend.store.delete_service(service.uuid).await {
                tracing::error!(uuid = %service.uuid, error = %cleanup, "could not remove the record of a failed create");
            }
            return Err(e);
        }
        service.status = ServiceStatus::Created;
        service.updated_at = SystemTime::now();
        let service = self.backend.store.update_service(&service).await?;
        self.backend.changes.services_changed();
        tracing::info!(service = %service.qualified_name(), uuid = %service.uuid, topic = %service.topic_id(), "service created");
        Ok(service)
    }

    /// Creates the topic and the subscription, undoing the topic if the
    /// subscription cannot be created.
    async fn provision(&self, service: &Service) -> Result<(), ApiError> {
        let topic = service.topic_id();
        let created = self.backend.messaging.ensure_topic(&topic).await?;
        let subscribed = self
            .backend
            .messaging
            .ensure_subscription(
                &service.subscription_id(),
                &topic,
                &SubscriptionSpec::dispatcher(),
            )
            .await;
        if let Err(e) = subscribed {
            if created == Ensured::Created
                && let Err(cleanup) = self.backend.messaging.delete_topic(&topic).await
            {
                tracing::error!(%topic, error = %cleanup, "could not remove the topic of a failed create");
            }
            return Err(e.into());
        }
        Ok(())
    }

    pub async fn update(&self, req: &pb::UpdateServiceRequest) -> Result<Service, ApiError> {
        for _ in 0..UPDATE_ATTEMPTS {
            let mut service = self.find(&req.project, &req.name).await?;
            apply_update(&mut service, req)?;
            service.updated_at = SystemTime::now();
            match self.backend.store.update_service(&service).await {
                Ok(stored) => {
                    self.backend.changes.services_changed();
                    return Ok(stored);
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::Aborted(format!(
            "service `{}` kept changing under this update; try again",
            req.name
        )))
    }

    pub async fn delete(&self, project: &str, name: &str) -> Result<Service, ApiError> {
        let service = self.find(project, name).await?;
        self.backend
            .messaging
            .delete_subscription(&service.subscription_id())
            .await?;
        self.backend
            .messaging
            .delete_topic(&service.topic_id())
            .await?;
        self.backend.store.delete_service(service.uuid).await?;
        // A later service of the same name must not inherit who could ask this one.
        let resource = crate::auth::resource_of(&service.project, &service.name).to_string();
        if self.backend.store.delete_policy(&resource).await? {
            self.backend.authority.refresh().await?;
        }
        self.backend.changes.services_changed();
        tracing::info!(service = %service.qualified_name(), uuid = %service.uuid, "service deleted");
        Ok(service)
    }
}

/// Applies an update request to a service: clear, remove, then set env; then
/// scaling fields that are present. Validates the result.
pub fn apply_update(service: &mut Service, req: &pb::UpdateServiceRequest) -> Result<(), ApiError> {
    let invalid = |e: &dyn std::fmt::Display| ApiError::InvalidArgument(e.to_string());
    if req.clear_env {
        service.env.clear();
    }
    for name in &req.remove_env {
        service.env.remove(name);
    }
    for (k, v) in &req.set_env {
        service
            .env
            .set(k.clone(), v.clone())
            .map_err(|e| invalid(&e))?;
    }
    if req.clear_node_selector {
        service.node_selector.clear();
    }
    if !req.node_selector.is_empty() {
        let selector: BTreeMap<String, String> = req
            .node_selector
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        rouse_core::service::check_labels(&selector)
            .map_err(|e| invalid(&format!("node selector: {e}")))?;
        service.node_selector = selector;
    }
    if !req.ingress.is_empty() {
        service.ingress = rouse_core::IngressPolicy::parse(&req.ingress).ok_or_else(|| {
            ApiError::InvalidArgument(format!(
                "ingress `{}` is not a setting; use `all` (requests from anywhere) or `internal` (from the internal networks only)",
                req.ingress
            ))
        })?;
    }
    let s = &mut service.scaling;
    if let Some(v) = req.min_instances {
        s.min_instances = v;
    }
    if let Some(v) = req.max_instances {
        s.max_instances = v;
    }
    if let Some(v) = req.concurrency {
        s.concurrency = v;
    }
    if let Some(d) = &req.idle_timeout {
        s.idle_timeout = duration_from_pb("idle_timeout", d)?;
    }
    if let Some(d) = &req.wake_timeout {
        s.wake_timeout = duration_from_pb("wake_timeout", d)?;
    }
    if let Some(d) = &req.request_timeout {
        s.request_timeout = duration_from_pb("request_timeout", d)?;
    }
    if let Some(v) = req.freeze {
        s.freeze = v;
    }
    if let Some(d) = &req.frozen_timeout {
        s.frozen_timeout = duration_from_pb("frozen_timeout", d)?;
    }
    if let Some(v) = req.max_retries {
        s.max_retries = v;
    }
    s.validate().map_err(|e| invalid(&e))?;
    match req.dead_letter_topic.as_deref() {
        None => {}
        Some("") => service.dead_letter_topic = None,
        Some(topic) => {
            rouse_core::service::validate_topic_id(topic).map_err(ApiError::InvalidArgument)?;
            service.dead_letter_topic = Some(topic.to_owned());
        }
    }
    Ok(())
}

#[tonic::async_trait]
impl pb::services_server::Services for ServicesApi {
    async fn create_service(
        &self,
        request: Request<pb::CreateServiceRequest>,
    ) -> Result<Response<pb::Service>, Status> {
        let resource = project_resource(&request.get_ref().project)?;
        self.backend.permit(&request, &resource).await?;
        let pb::CreateServiceRequest { project, name } = request.into_inner();
        let service = self.create(&project, &name).await?;
        Ok(Response::new(self.to_pb(&service).await?))
    }

    async fn get_service(
        &self,
        request: Request<pb::GetServiceRequest>,
    ) -> Result<Response<pb::Service>, Status> {
        let resource = service_resource(&request.get_ref().project, &request.get_ref().name)?;
        self.backend.permit(&request, &resource).await?;
        let pb::GetServiceRequest { project, name } = request.into_inner();
        let service = self.find(&project, &name).await?;
        Ok(Response::new(self.to_pb(&service).await?))
    }

    async fn list_services(
        &self,
        request: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        let permit = if request.get_ref().project.is_empty() {
            // Every project: each service shows if the caller may list its
            // project's services.
            self.backend.permit_each_item(&request)?
        } else {
            let resource = project_resource(&request.get_ref().project)?;
            self.backend.permit(&request, &resource).await?
        };
        let pb::ListServicesRequest { project } = request.into_inner();
        let project = if project.is_empty() {
            None
        } else {
            Some(
                ProjectName::parse(&project)
                    .map_err(|e| ApiError::InvalidArgument(e.to_string()))?,
            )
        };
        let mut services = self
            .backend
            .store
            .list_services(project.as_ref())
            .await
            .map_err(ApiError::from)?;
        if project.is_none() {
            services.retain(|s| {
                self.backend
                    .shows(&permit, &Resource::Project(s.project.clone()))
            });
        }
        let mut out = Vec::with_capacity(services.len());
        for service in &services {
            out.push(self.to_pb(service).await?);
        }
        Ok(Response::new(pb::ListServicesResponse { services: out }))
    }

    async fn update_service(
        &self,
        request: Request<pb::UpdateServiceRequest>,
    ) -> Result<Response<pb::Service>, Status> {
        let resource = service_resource(&request.get_ref().project, &request.get_ref().name)?;
        self.backend.permit(&request, &resource).await?;
        let service = self.update(request.get_ref()).await?;
        Ok(Response::new(self.to_pb(&service).await?))
    }

    async fn delete_service(
        &self,
        request: Request<pb::DeleteServiceRequest>,
    ) -> Result<Response<pb::DeleteServiceResponse>, Status> {
        let resource = service_resource(&request.get_ref().project, &request.get_ref().name)?;
        self.backend.permit(&request, &resource).await?;
        let pb::DeleteServiceRequest { project, name } = request.into_inner();
        let service = self.delete(&project, &name).await?;
        Ok(Response::new(pb::DeleteServiceResponse {
            uuid: service.uuid.to_string(),
        }))
    }

    async fn issue_docker_credentials(
        &self,
        request: Request<pb::IssueDockerCredentialsRequest>,
    ) -> Result<Response<pb::DockerCredentials>, Status> {
        let resource = service_resource(&request.get_ref().project, &request.get_ref().name)?;
        let permit = self.backend.permit(&request, &resource).await?;
        let Some(registry) = self.backend.registry.clone() else {
            return Err(ApiError::FailedPrecondition(
                "no image registry is configured: start the server with --registry HOST[:PORT] (ROUSE_REGISTRY) and configure that registry's token authentication as the server's log says".into(),
            )
            .into());
        };
        let service = self
            .backend
            .find_service(&request.get_ref().project, &request.get_ref().name)
            .await?;
        let Some(principal) = permit.caller.principal().map(ToString::to_string) else {
            return Err(ApiError::PermissionDenied(
                "credentials are issued to a signed-in caller only: pass --credentials FILE or set ROUSE_CREDENTIALS".into(),
            )
            .into());
        };
        let (password, expires) =
            crate::registry::credential(&self.backend, &principal, &service.project, &service.name)
                .map_err(ApiError::Internal)?;
        Ok(Response::new(pb::DockerCredentials {
            registry: registry.host().to_owned(),
            repository: registry.repository(&service.project, &service.name),
            username: crate::registry::USERNAME.to_owned(),
            password,
            expire_time: Some(expires.into()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Mutex;

    use std::sync::Arc;

    use async_trait::async_trait;
    use rouse_pubsub::{Outgoing, PubSubError, Removed};
    use rouse_store::SqliteStore;

    use super::*;
    use crate::hooks::NoDispatcher;
    use crate::messaging::Messaging;

    /// An in-memory broker that can be told to refuse subscriptions.
    #[derive(Default)]
    struct FakeBroker {
        topics: Mutex<BTreeSet<String>>,
        subscriptions: Mutex<BTreeSet<String>>,
        refuse_subscriptions: bool,
    }

    fn refused(op: &'static str, resource: &str) -> PubSubError {
        PubSubError::Call {
            op,
            resource: resource.to_owned(),
            endpoint: "the fake".into(),
            code: None,
            message: "refused".into(),
        }
    }

    #[async_trait]
    impl Messaging for FakeBroker {
        async fn ensure_topic(&self, topic_id: &str) -> Result<Ensured, PubSubError> {
            let new = self
                .topics
                .lock()
                .expect("lock")
                .insert(topic_id.to_owned());
            Ok(if new {
                Ensured::Created
            } else {
                Ensured::Existed
            })
        }
        async fn ensure_subscription(
            &self,
            subscription_id: &str,
            _topic_id: &str,
            _spec: &SubscriptionSpec,
        ) -> Result<Ensured, PubSubError> {
            if self.refuse_subscriptions {
                return Err(refused("create subscription", subscription_id));
            }
            self.subscriptions
                .lock()
                .expect("lock")
                .insert(subscription_id.to_owned());
            Ok(Ensured::Created)
        }
        async fn delete_topic(&self, topic_id: &str) -> Result<Removed, PubSubError> {
            let had = self.topics.lock().expect("lock").remove(topic_id);
            Ok(if had {
                Removed::Deleted
            } else {
                Removed::Missing
            })
        }
        async fn delete_subscription(&self, id: &str) -> Result<Removed, PubSubError> {
            let had = self.subscriptions.lock().expect("lock").remove(id);
            Ok(if had {
                Removed::Deleted
            } else {
                Removed::Missing
            })
        }
        async fn publish(&self, topic_id: &str, _m: Outgoing) -> Result<String, PubSubError> {
            Err(refused("publish to", topic_id))
        }
    }

    fn api(broker: Arc<FakeBroker>) -> (ServicesApi, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(SqliteStore::open(&dir.path().join("rouse.db")).expect("store"));
        let authority = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(rouse_authz::Authority::load(store.clone()))
        })
        .expect("authority");
        let key = rouse_secrets::SecretsKey::load_or_create(&dir.path().join("secrets.key"))
            .expect("key");
        let backend = Backend {
            store,
            messaging: broker,
            hooks: Arc::new(NoDispatcher),
            changes: rouse_store::Changes::new(),
            asserter: Arc::new(crate::backend::platform_asserter(&key)),
            key: Arc::new(key),
            webhook_url: "http://127.0.0.1:7071".into(),
            logs_dir: dir.path().join("logs"),
            functions_dir: dir.path().join("functions"),
            authority,
            registry: None,
        };
        (ServicesApi::new(backend), dir)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn failed_subscription_leaves_nothing_behind() {
        let broker = Arc::new(FakeBroker {
            refuse_subscriptions: true,
            ..FakeBroker::default()
        });
        let (api, _dir) = api(broker.clone());
        let err = api.create("p", "svc").await.expect_err("must fail");
        assert!(err.to_string().contains("create subscription"), "{err}");
        assert!(
            broker.topics.lock().expect("lock").is_empty(),
            "topic was left behind"
        );
        assert!(
            api.backend
                .store
                .list_services(None)
                .await
                .expect("list")
                .is_empty()
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn create_update_delete() {
        let broker = Arc::new(FakeBroker::default());
        let (api, _dir) = api(broker.clone());
        let s = api.create("experiment_2", "hpc").await.expect("create");
        assert_eq!(s.status, ServiceStatus::Created);
        assert!(broker.topics.lock().expect("lock").contains(&s.topic_id()));
        let dup = api
            .create("experiment_2", "hpc")
            .await
            .expect_err("duplicate");
        assert!(matches!(dup, ApiError::ServiceExists { .. }), "{dup}");

        let req = pb::UpdateServiceRequest {
            project: "experiment_2".into(),
            name: "hpc".into(),
            max_instances: Some(5),
            set_env: [("K".to_owned(), "V".to_owned())].into(),
            ..Default::default()
        };
        let updated = api.update(&req).await.expect("update");
        assert_eq!(updated.scaling.max_instances, 5);
        assert_eq!(updated.env.as_map().get("K").map(String::as_str), Some("V"));

        let bad = pb::UpdateServiceRequest {
            min_instances: Some(9),
            ..req.clone()
        };
        let err = api.update(&bad).await.expect_err("min > max");
        assert!(matches!(err, ApiError::InvalidArgument(_)), "{err}");

        let internal = pb::UpdateServiceRequest {
            ingress: "internal".into(),
            ..req.clone()
        };
        let updated = api.update(&internal).await.expect("ingress");
        assert_eq!(updated.ingress, rouse_core::IngressPolicy::Internal);
        let bad = pb::UpdateServiceRequest {
            ingress: "private".into(),
            ..req.clone()
        };
        let err = api.update(&bad).await.expect_err("not a setting");
        assert!(err.to_string().contains("`private`"), "{err}");

        api.delete("experiment_2", "hpc").await.expect("delete");
        assert!(broker.topics.lock().expect("lock").is_empty());
        let gone = api.delete("experiment_2", "hpc").await.expect_err("gone");
        assert!(matches!(gone, ApiError::ServiceNotFound { .. }), "{gone}");
    }
}
