//! The `Triggers` API: a repository and a branch pattern connected to a
//! service. Secrets (the webhook secret, the GitHub token) are sealed
//! before they are stored and never returned.

use std::time::SystemTime;

use rouse_builder::TriggerSpec;
use rouse_core::Service;
use rouse_store::TriggerRecord;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::auth::{project_resource, resource_of, service_resource};
use crate::backend::Backend;
use crate::error::ApiError;
use crate::pb;

#[derive(Clone)]
pub struct TriggersApi {
    backend: Backend,
}

impl TriggersApi {
    pub fn new(backend: Backend) -> Self {
        Self { backend }
    }

    fn backend(&self) -> &Backend {
        &self.backend
    }

    async fn find(&self, id: &str) -> Result<(TriggerRecord, Service), ApiError> {
        let trigger = self.backend().store.get_trigger(id).await?;
        self.backend()
            .with_its_service("trigger", id, trigger, |t| t.service_uuid)
            .await
    }

    fn to_pb(&self, t: &TriggerRecord, s: &Service) -> pb::Trigger {
        let TriggerRecord {
            id,
            service_uuid: _,
            repo,
            branch_pattern,
            tag_pattern,
            dockerfile,
            context_dir,
            included_files,
            ignored_files,
            webhook_secret_sealed: _,
            github_token_sealed,
            created_at,
        } = t;
        pb::Trigger {
            id: id.clone(),
            project: s.project.to_string(),
            service: s.name.to_string(),
            repo: repo.clone(),
            branch_pattern: branch_pattern.clone(),
            tag_pattern: tag_pattern.clone().unwrap_or_default(),
            dockerfile: dockerfile.clone().unwrap_or_default(),
            context_dir: context_dir.clone().unwrap_or_default(),
            included_files: included_files.clone(),
            ignored_files: ignored_files.clone(),
            reports_status: github_token_sealed.is_some(),
            webhook_url: format!("{}/webhooks/github", self.backend.webhook_url),
            generic_webhook_url: format!("{}/webhooks/git", self.backend.webhook_url),
            create_time: Some((*created_at).into()),
        }
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.trim().is_empty()).then(|| s.trim().to_owned())
}

#[tonic::async_trait]
impl pb::triggers_server::Triggers for TriggersApi {
    async fn create_trigger(
        &self,
        request: Request<pb::CreateTriggerRequest>,
    ) -> Result<Response<pb::Trigger>, Status> {
        let resource = service_resource(&request.get_ref().project, &request.get_ref().service)?;
        let permit = self.backend().permit(&request, &resource).await?;
        let req = request.into_inner();
        let service = self
            .backend()
            .find_service(&req.project, &req.service)
            .await?;
        let id = format!("t-{}", &Uuid::new_v4().simple().to_string()[..12]);
        let spec = TriggerSpec {
            id: id.clone(),
            project: service.project.to_string(),
            service: service.name.to_string(),
            repo: req.repo.clone(),
            branch_pattern: req.branch_pattern.clone(),
            tag_pattern: non_empty(&req.tag_pattern),
            dockerfile: non_empty(&req.dockerfile),
            context_dir: non_empty(&req.context_dir),
            included_files: req.included_files.clone(),
            ignored_files: req.ignored_files.clone(),
            webhook_secret: req.webhook_secret.clone(),
            github_token: non_empty(&req.github_token),
        };
        // Validates everything: the URL, the regex, paths, globs, the secret.
        rouse_builder::Trigger::new(spec.clone())
            .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        let key = &self.backend.key;
        let seal = |what: &str, value: &str| {
            key.seal(
                &rouse_secrets::trigger_secret_name(&id, what),
                value.as_bytes(),
            )
            .map(|s| s.to_text())
            .map_err(|e| ApiError::Internal(e.to_string()))
        };
        let record = TriggerRecord {
            id: id.clone(),
            service_uuid: service.uuid,
            repo: spec.repo.trim().to_owned(),
            branch_pattern: spec.branch_pattern,
            tag_pattern: spec.tag_pattern,
            dockerfile: spec.dockerfile,
            context_dir: spec.context_dir,
            included_files: spec.included_files,
            ignored_files: spec.ignored_files,
            webhook_secret_sealed: seal("webhook_secret", &spec.webhook_secret)?,
            github_token_sealed: spec
                .github_token
                .as_deref()
                .map(|t| seal("github_token", t))
                .transpose()?,
            created_at: SystemTime::now(),
        };
        self.backend()
            .store
            .insert_trigger(&record)
            .await
            .map_err(ApiError::from)?;
        let out = self.to_pb(&record, &service);
        self.backend()
            .changed(&permit, &resource.to_string(),
                serde_json::Value::Null,
                serde_json::json!({ "trigger": id, "repo": out.repo, "branch_pattern": out.branch_pattern }),
            )
            .await;
        tracing::info!(trigger = %id, service = %service.qualified_name(), "trigger created");
        Ok(Response::new(out))
    }

    async fn get_trigger(
        &self,
        request: Request<pb::GetTriggerRequest>,
    ) -> Result<Response<pb::Trigger>, Status> {
        let (_, (t, s)) = self
            .backend()
            .permit_record(
                &request,
                self.find(&request.get_ref().id).await,
                |(_, service)| Some(service),
            )
            .await?;
        Ok(Response::new(self.to_pb(&t, &s)))
    }

    async fn list_triggers(
        &self,
        request: Request<pb::ListTriggersRequest>,
    ) -> Result<Response<pb::ListTriggersResponse>, Status> {
        let req = request.get_ref();
        let resource = if req.service.is_empty() {
            project_resource(&req.project)?
        } else {
            service_resource(&req.project, &req.service)?
        };
        let permit = self.backend().permit(&request, &resource).await?;
        let req = request.into_inner();
        let services = if req.service.is_empty() {
            let project = rouse_core::ProjectName::parse(&req.project)
                .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
            self.backend()
                .store
                .list_services(Some(&project))
                .await
                .map_err(ApiError::from)?
        } else {
            vec![
                self.backend()
                    .find_service(&req.project, &req.service)
                    .await?,
            ]
        };
        let mut triggers = Vec::new();
        for s in services {
            if !self
                .backend()
                .shows(&permit, &resource_of(&s.project, &s.name))
            {
                continue;
            }
            for t in self
                .backend()
                .store
                .list_triggers(Some(s.uuid))
                .await
                .map_err(ApiError::from)?
            {
                triggers.push(self.to_pb(&t, &s));
            }
        }
        Ok(Response::new(pb::ListTriggersResponse { triggers }))
    }

    async fn delete_trigger(
        &self,
        request: Request<pb::DeleteTriggerRequest>,
    ) -> Result<Response<pb::DeleteTriggerResponse>, Status> {
        let (permit, (t, s)) = self
            .backend()
            .permit_record(
                &request,
                self.find(&request.get_ref().id).await,
                |(_, service)| Some(service),
            )
            .await?;
        let resource = resource_of(&s.project, &s.name);
        self.backend()
            .store
            .delete_trigger(&t.id)
            .await
            .map_err(ApiError::from)?;
        self.backend()
            .changed(
                &permit,
                &resource.to_string(),
                serde_json::json!({ "trigger": t.id, "repo": t.repo }),
                serde_json::Value::Null,
            )
            .await;
        Ok(Response::new(pb::DeleteTriggerResponse {}))
    }
}
