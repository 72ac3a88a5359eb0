//! The `Secrets` API: per-service values sealed with the platform's secrets key and
//! injected into instances as environment variables (by the dispatcher). Values
//! go in and never come out: `ListSecrets` returns names only.

use std::time::SystemTime;

use rouse_secrets::{sealed_name, validate_name};
use tonic::{Request, Response, Status};

use crate::auth::service_resource;
use crate::backend::Backend;
use crate::error::ApiError;
use crate::pb;

#[derive(Clone)]
pub struct SecretsApi {
    backend: Backend,
}

impl SecretsApi {
    pub fn new(backend: Backend) -> Self {
        Self { backend }
    }
}

#[tonic::async_trait]
impl pb::secrets_server::Secrets for SecretsApi {
    async fn set_secret(
        &self,
        request: Request<pb::SetSecretRequest>,
    ) -> Result<Response<pb::SetSecretResponse>, Status> {
        let backend = &self.backend;
        let resource = service_resource(&request.get_ref().project, &request.get_ref().service)?;
        let permit = backend.permit(&request, &resource).await?;
        let req = request.into_inner();
        let service = backend.find_service(&req.project, &req.service).await?;
        validate_name(&req.name).map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        let sealed = backend
            .key
            .seal(&sealed_name(service.uuid, &req.name), &req.value)
            .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        backend
            .store
            .set_secret(
                service.uuid,
                &req.name,
                &sealed.to_text(),
                SystemTime::now(),
            )
            .await
            .map_err(ApiError::from)?;
        backend.changes.services_changed();
        backend
            .changed(
                &permit,
                &resource.to_string(),
                serde_json::Value::Null,
                // The name only: a value never reaches a log.
                serde_json::json!({ "secret": req.name }),
            )
            .await;
        Ok(Response::new(pb::SetSecretResponse {}))
    }

    async fn list_secrets(
        &self,
        request: Request<pb::ListSecretsRequest>,
    ) -> Result<Response<pb::ListSecretsResponse>, Status> {
        let backend = &self.backend;
        let resource = service_resource(&request.get_ref().project, &request.get_ref().service)?;
        backend.permit(&request, &resource).await?;
        let req = request.into_inner();
        let service = backend.find_service(&req.project, &req.service).await?;
        let names = backend
            .store
            .secret_names(service.uuid)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::ListSecretsResponse { names }))
    }

    async fn delete_secret(
        &self,
        request: Request<pb::DeleteSecretRequest>,
    ) -> Result<Response<pb::DeleteSecretResponse>, Status> {
        let backend = &self.backend;
        let resource = service_resource(&request.get_ref().project, &request.get_ref().service)?;
        let permit = backend.permit(&request, &resource).await?;
        let req = request.into_inner();
        let service = backend.find_service(&req.project, &req.service).await?;
        let deleted = backend
            .store
            .delete_secret(service.uuid, &req.name)
            .await
            .map_err(ApiError::from)?;
        if !deleted {
            return Err(ApiError::SecretNotFound {
                project: service.project.to_string(),
                service: service.name.to_string(),
                secret: req.name,
            }
            .into());
        }
        backend.changes.services_changed();
        backend
            .changed(
                &permit,
                &resource.to_string(),
                serde_json::json!({ "secret": req.name }),
                serde_json::Value::Null,
            )
            .await;
        Ok(Response::new(pb::DeleteSecretResponse {}))
    }
}
