//! The `Secrets` API: per-service values sealed with the builder's key and
//! injected into instances as environment variables ([`SecretEnv`]). Values
//! go in and never come out: `ListSecrets` returns names only.

use std::collections::BTreeMap;
use std::time::SystemTime;

use rouse_builder::secrets::{SealedValue, validate_name};
use rouse_iam::Permission;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::auth::service_resource;
use crate::builds::Builder;
use crate::error::ApiError;
use crate::pb;

/// The name a service's secret is sealed under: binds the value to the
/// service, so a sealed value copied to another service does not open.
pub fn sealed_name(service: Uuid, name: &str) -> String {
    format!("service/{service}/{name}")
}

#[derive(Clone)]
pub struct SecretsApi {
    builder: Builder,
}

impl SecretsApi {
    pub fn new(builder: Builder) -> Self {
        Self { builder }
    }
}

#[tonic::async_trait]
impl pb::secrets_server::Secrets for SecretsApi {
    async fn set_secret(
        &self,
        request: Request<pb::SetSecretRequest>,
    ) -> Result<Response<pb::SetSecretResponse>, Status> {
        let backend = self.builder.backend();
        let resource = service_resource(&request.get_ref().project, &request.get_ref().service)?;
        let caller = backend
            .authorize(&request, "SetSecret", Permission::ServicesUpdate, &resource)
            .await?;
        let req = request.into_inner();
        let service = backend.find_service(&req.project, &req.service).await?;
        validate_name(&req.name).map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        let sealed = self
            .builder
            .key()
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
        backend.hooks.services_changed();
        backend
            .changed(
                &caller,
                "SetSecret",
                &resource.to_string(),
                Permission::ServicesUpdate,
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
        let backend = self.builder.backend();
        let resource = service_resource(&request.get_ref().project, &request.get_ref().service)?;
        backend
            .authorize(&request, "ListSecrets", Permission::ServicesGet, &resource)
            .await?;
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
        let backend = self.builder.backend();
        let resource = service_resource(&request.get_ref().project, &request.get_ref().service)?;
        let caller = backend
            .authorize(
                &request,
                "DeleteSecret",
                Permission::ServicesUpdate,
                &resource,
            )
            .await?;
        let req = request.into_inner();
        let service = backend.find_service(&req.project, &req.service).await?;
        let deleted = backend
            .store
            .delete_secret(service.uuid, &req.name)
            .await
            .map_err(ApiError::from)?;
        if !deleted {
            return Err(ApiError::NotFound(format!(
                "service `{}` has no secret `{}`; `rouse secrets list {} --project {}` shows its secrets",
                service.name, req.name, service.name, service.project
            ))
            .into());
        }
        backend.hooks.services_changed();
        backend
            .changed(
                &caller,
                "DeleteSecret",
                &resource.to_string(),
                Permission::ServicesUpdate,
                serde_json::json!({ "secret": req.name }),
                serde_json::Value::Null,
            )
            .await;
        Ok(Response::new(pb::DeleteSecretResponse {}))
    }
}

/// A service's secrets, opened, as environment variables.
pub async fn secret_env(
    builder: &Builder,
    service: Uuid,
) -> Result<BTreeMap<String, String>, String> {
    let sealed = builder
        .backend()
        .store
        .sealed_secrets(service)
        .await
        .map_err(|e| e.to_string())?;
    let mut env = BTreeMap::new();
    for (name, text) in sealed {
        let value = SealedValue::from_text(&text)
            .and_then(|s| builder.key().open(&sealed_name(service, &name), &s))
            .map_err(|e| e.to_string())?;
        let value = value
            .expose_str()
            .ok_or_else(|| format!("secret `{name}` is not UTF-8 text, so it cannot be an environment variable; set it again as text"))?
            .to_owned();
        env.insert(name, value);
    }
    Ok(env)
}
