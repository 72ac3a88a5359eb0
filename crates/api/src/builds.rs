//! The `Builds` API over the store: builds are recorded `queued` and taken
//! by the builder role (in this process or another); a cancel is a request
//! the builder sees. Logs are read from the store as the builder writes them.

use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use rouse_builder::{BuildJob, BuildSource};
use rouse_core::Service;
use rouse_store::BuildRecord;
use tonic::{Request, Response, Status};

use crate::auth::{project_resource, resource_of, service_resource};
use crate::backend::Backend;
use crate::error::ApiError;
use crate::pb;

/// How often a followed log is polled for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(250);
/// Lines one read of a build log returns at most.
const LOG_PAGE: u32 = 1000;
/// Builds a list returns by default.
const DEFAULT_LIST: u32 = 50;
/// How long `CancelBuild` waits for the builder to stop the build: a
/// running step is stopped within the queue's cancel grace (10 s).
const CANCEL_WAIT: Duration = Duration::from_secs(15);

/// The `Builds` API.
#[derive(Clone)]
pub struct BuildsApi {
    backend: Backend,
}

impl BuildsApi {
    pub fn new(backend: Backend) -> Self {
        Self { backend }
    }

    fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The build and its service, or NOT_FOUND.
    /// Records a `queued` build of `source` for `service` (the builder takes
    /// it from the store), audits it with `detail` beside its id, and
    /// answers it.
    async fn queue(
        &self,
        permit: &crate::auth::Permit,
        service: Service,
        source: BuildSource,
        detail: (&str, serde_json::Value),
    ) -> Result<Response<pb::Build>, Status> {
        let backend = self.backend();
        let record = rouse_builder::builder::queued_record(&BuildJob {
            service,
            trigger: None,
            source,
        });
        backend
            .store
            .insert_build(&record)
            .await
            .map_err(ApiError::from)?;
        backend.changes.builds_changed();
        let id = record.id;
        let mut audited = serde_json::json!({ "build": id });
        audited[detail.0] = detail.1;
        backend
            .changed(
                permit,
                &permit.resource.to_string(),
                serde_json::Value::Null,
                audited,
            )
            .await;
        let (build, service) = self.find(&id).await?;
        Ok(Response::new(build_to_pb(&build, &service)))
    }

    async fn find(&self, id: &str) -> Result<(BuildRecord, Service), ApiError> {
        let build = self.backend().store.get_build(id).await?;
        self.backend()
            .with_its_service("build", id, build, |b| b.service_uuid)
            .await
    }
}

pub fn build_to_pb(b: &BuildRecord, service: &Service) -> pb::Build {
    let BuildRecord {
        id,
        service_uuid: _,
        trigger_id,
        status,
        step,
        source,
        commit,
        branch,
        revision,
        image,
        failure,
        last_lines,
        created_at,
        started_at,
        finished_at,
        dockerfile: _,
        cancel_requested: _,
    } = b;
    pb::Build {
        id: id.clone(),
        project: service.project.to_string(),
        service: service.name.to_string(),
        trigger: trigger_id.clone().unwrap_or_default(),
        status: status.to_string(),
        step: step.map(|s| s.to_string()).unwrap_or_default(),
        source: source.clone(),
        commit: commit.clone().unwrap_or_default(),
        branch: branch.clone().unwrap_or_default(),
        revision: revision.clone().unwrap_or_default(),
        image: image.clone().unwrap_or_default(),
        failure: failure.clone().unwrap_or_default(),
        last_lines: last_lines.clone(),
        create_time: Some((*created_at).into()),
        start_time: started_at.map(Into::into),
        finish_time: finished_at.map(Into::into),
    }
}

type LogStream = Pin<Box<dyn Stream<Item = Result<pb::BuildLogLine, Status>> + Send>>;

#[tonic::async_trait]
impl pb::builds_server::Builds for BuildsApi {
    async fn list_builds(
        &self,
        request: Request<pb::ListBuildsRequest>,
    ) -> Result<Response<pb::ListBuildsResponse>, Status> {
        let req = request.get_ref();
        let resource = if req.service.is_empty() {
            project_resource(&req.project)?
        } else {
            service_resource(&req.project, &req.service)?
        };
        let permit = self.backend().permit(&request, &resource).await?;
        let req = request.into_inner();
        let limit = if req.limit == 0 {
            DEFAULT_LIST
        } else {
            req.limit
        };
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
        let mut builds = Vec::new();
        for service in services {
            if !self
                .backend()
                .shows(&permit, &resource_of(&service.project, &service.name))
            {
                continue;
            }
            let list = self
                .backend()
                .store
                .list_builds(Some(service.uuid), false, limit)
                .await
                .map_err(ApiError::from)?;
            builds.extend(
                list.iter()
                    .map(|b| (b.created_at, build_to_pb(b, &service))),
            );
        }
        builds.sort_by_key(|b| std::cmp::Reverse(b.0));
        builds.truncate(limit as usize);
        Ok(Response::new(pb::ListBuildsResponse {
            builds: builds.into_iter().map(|(_, b)| b).collect(),
        }))
    }

    async fn get_build(
        &self,
        request: Request<pb::GetBuildRequest>,
    ) -> Result<Response<pb::Build>, Status> {
        let (_, (build, service)) = self
            .backend()
            .permit_record(
                &request,
                self.find(&request.get_ref().id).await,
                |(_, service)| Some(service),
            )
            .await?;
        Ok(Response::new(build_to_pb(&build, &service)))
    }

    async fn cancel_build(
        &self,
        request: Request<pb::CancelBuildRequest>,
    ) -> Result<Response<pb::Build>, Status> {
        let (permit, (build, service)) = self
            .backend()
            .permit_record(
                &request,
                self.find(&request.get_ref().id).await,
                |(_, service)| Some(service),
            )
            .await?;
        if build.status.is_terminal() {
            return Err(ApiError::FailedPrecondition(format!(
                "build `{}` is already {}; only queued or running builds can be cancelled",
                build.id, build.status
            ))
            .into());
        }
        if !self
            .backend()
            .store
            .request_cancel(&build.id)
            .await
            .map_err(ApiError::from)?
        {
            return Err(ApiError::FailedPrecondition(format!(
                "build `{}` ended before it could be cancelled",
                build.id
            ))
            .into());
        }
        self.backend().changes.builds_changed();
        // The builder reports `cancelled` once the build stopped.
        let deadline = tokio::time::Instant::now() + CANCEL_WAIT;
        let mut latest = build.clone();
        while tokio::time::Instant::now() < deadline {
            if let Some(b) = self
                .backend()
                .store
                .get_build(&build.id)
                .await
                .map_err(ApiError::from)?
            {
                latest = b;
                if latest.status.is_terminal() {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.backend()
            .changed(
                &permit,
                &resource_of(&service.project, &service.name).to_string(),
                serde_json::json!({ "build": build.id, "status": build.status }),
                serde_json::json!({ "build": latest.id, "status": latest.status }),
            )
            .await;
        Ok(Response::new(build_to_pb(&latest, &service)))
    }

    async fn submit_build(
        &self,
        request: Request<pb::SubmitBuildRequest>,
    ) -> Result<Response<pb::Build>, Status> {
        let resource = service_resource(&request.get_ref().project, &request.get_ref().service)?;
        let permit = self.backend().permit(&request, &resource).await?;
        let req = request.into_inner();
        let service = self
            .backend()
            .find_service(&req.project, &req.service)
            .await?;
        let path = PathBuf::from(&req.source_dir);
        if !path.is_absolute() || !path.is_dir() {
            return Err(ApiError::InvalidArgument(format!(
                "--source `{}` must be an existing directory on the server's machine, given as an absolute path",
                req.source_dir
            ))
            .into());
        }
        let dockerfile = PathBuf::from(if req.dockerfile.is_empty() {
            "Dockerfile"
        } else {
            &req.dockerfile
        });
        self.queue(
            &permit,
            service,
            BuildSource::Dir { path, dockerfile },
            ("source", req.source_dir.into()),
        )
        .await
    }

    async fn deploy_function(
        &self,
        request: Request<pb::DeployFunctionRequest>,
    ) -> Result<Response<pb::Build>, Status> {
        use rouse_core::function::{CONTEXT_SECRET, MAX_FILE, check_main, parse_context};
        let backend = self.backend();
        let resource = service_resource(&request.get_ref().project, &request.get_ref().service)?;
        let permit = backend.permit(&request, &resource).await?;
        let req = request.into_inner();
        let service = backend.find_service(&req.project, &req.service).await?;
        let or = |name: &str, default: &str| {
            if name.is_empty() {
                default.to_owned()
            } else {
                name.to_owned()
            }
        };
        let file = or(&req.file_name, "main.py");
        let context_file = or(&req.context_file_name, "context");
        check_main(&file, &req.code).map_err(ApiError::InvalidArgument)?;
        if req.requirements.len() > MAX_FILE {
            return Err(ApiError::InvalidArgument(format!(
                "the requirements are {} bytes; at most {MAX_FILE} are accepted",
                req.requirements.len()
            ))
            .into());
        }
        let context =
            parse_context(&context_file, &req.context).map_err(ApiError::InvalidArgument)?;
        let context =
            serde_json::to_vec(&context).map_err(|e| ApiError::Internal(e.to_string()))?;
        let dir = {
            let (root, project, name) = (
                backend.functions_dir.clone(),
                service.project.to_string(),
                service.name.to_string(),
            );
            let (code, requirements) = (req.code, req.requirements);
            tokio::task::spawn_blocking(move || {
                rouse_builder::function::write_source(&root, &project, &name, &code, &requirements)
            })
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .map_err(|e| {
                ApiError::Unavailable(format!(
                    "cannot write the function into {}: {e}",
                    backend.functions_dir.display()
                ))
            })?
        };
        // Each deploy sets the whole context, `{}` without one.
        let sealed = backend
            .key
            .seal(
                &rouse_secrets::sealed_name(service.uuid, CONTEXT_SECRET),
                &context,
            )
            .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        backend
            .store
            .set_secret(
                service.uuid,
                CONTEXT_SECRET,
                &sealed.to_text(),
                std::time::SystemTime::now(),
            )
            .await
            .map_err(ApiError::from)?;
        // Where its files are; the context never reaches a log.
        let function = dir.display().to_string();
        self.queue(
            &permit,
            service,
            BuildSource::Function { dir },
            ("function", function.into()),
        )
        .await
    }

    async fn deploy_image(
        &self,
        request: Request<pb::DeployImageRequest>,
    ) -> Result<Response<pb::Build>, Status> {
        let backend = self.backend();
        let resource = service_resource(&request.get_ref().project, &request.get_ref().service)?;
        let permit = backend.permit(&request, &resource).await?;
        let req = request.into_inner();
        let service = backend.find_service(&req.project, &req.service).await?;
        let reference = crate::registry::image_reference(
            backend.registry.as_deref(),
            &service.project,
            &service.name,
            &req.image,
        )
        .map_err(ApiError::InvalidArgument)?;
        self.queue(
            &permit,
            service,
            BuildSource::Image {
                reference: reference.clone(),
            },
            ("image", reference.into()),
        )
        .await
    }

    type StreamBuildLogsStream = LogStream;

    async fn stream_build_logs(
        &self,
        request: Request<pb::StreamBuildLogsRequest>,
    ) -> Result<Response<Self::StreamBuildLogsStream>, Status> {
        let (_, (build, _service)) = self
            .backend()
            .permit_record(
                &request,
                self.find(&request.get_ref().id).await,
                |(_, service)| Some(service),
            )
            .await?;
        let follow = request.get_ref().follow;
        let backend = self.backend().clone();
        // Bounded: a slow reader holds the reading task, not memory.
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let mut after = 0;
            loop {
                let lines = match backend
                    .store
                    .build_log_after(&build.id, after, LOG_PAGE)
                    .await
                {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = tx.send(Err(Status::from(ApiError::from(e)))).await;
                        return;
                    }
                };
                let full_page = lines.len() == LOG_PAGE as usize;
                for (seq, line) in lines {
                    after = seq;
                    let msg = pb::BuildLogLine {
                        seq,
                        line,
                        status: String::new(),
                    };
                    if tx.send(Ok(msg)).await.is_err() {
                        return;
                    }
                }
                if full_page {
                    continue;
                }
                if !follow {
                    return;
                }
                let status = match backend.store.get_build(&build.id).await {
                    Ok(Some(b)) => b.status,
                    _ => return,
                };
                if status.is_terminal() {
                    // Lines written just before the end.
                    if let Ok(rest) = backend
                        .store
                        .build_log_after(&build.id, after, LOG_PAGE)
                        .await
                    {
                        for (seq, line) in rest {
                            let msg = pb::BuildLogLine {
                                seq,
                                line,
                                status: String::new(),
                            };
                            if tx.send(Ok(msg)).await.is_err() {
                                return;
                            }
                        }
                    }
                    let _ = tx
                        .send(Ok(pb::BuildLogLine {
                            seq: 0,
                            line: String::new(),
                            status: status.to_string(),
                        }))
                        .await;
                    return;
                }
                tokio::time::sleep(FOLLOW_POLL).await;
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
