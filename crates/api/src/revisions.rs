//! The `Revisions` API: register a revision (it serves from then on) and
//! list a service's revisions.

use std::path::PathBuf;
use std::time::SystemTime;

use rouse_core::revision::{DeliveryMode, Revision, RevisionSource};
use rouse_store::NewRevision;
use tonic::{Request, Response, Status};

use crate::auth::service_resource;
use crate::backend::Backend;
use crate::error::ApiError;
use crate::pb;

#[derive(Clone)]
pub struct RevisionsApi {
    backend: Backend,
}

impl RevisionsApi {
    pub fn new(backend: Backend) -> Self {
        Self { backend }
    }
}

/// Validates a create request into what the store records.
pub fn new_revision(req: &pb::CreateRevisionRequest) -> Result<NewRevision, ApiError> {
    let invalid = |m: String| ApiError::InvalidArgument(m);
    let source = match &req.source {
        Some(pb::create_revision_request::Source::Image(image)) => {
            if image.trim().is_empty() || image.chars().any(char::is_whitespace) {
                return Err(invalid(format!(
                    "image `{image}` is not an image reference; write e.g. rouse/echo:latest"
                )));
            }
            RevisionSource::Image(image.clone())
        }
        Some(pb::create_revision_request::Source::Command(c)) => {
            let Some((program, args)) = c.argv.split_first() else {
                return Err(invalid(
                    "--command is empty; give the program and its arguments".into(),
                ));
            };
            let workdir = PathBuf::from(&c.workdir);
            if !workdir.is_absolute() {
                return Err(invalid(format!(
                    "--workdir `{}` must be an absolute path (the server runs the command, not the CLI)",
                    c.workdir
                )));
            }
            RevisionSource::Command {
                program: program.clone(),
                args: args.to_vec(),
                workdir,
            }
        }
        None => return Err(invalid("give either --image or --command".into())),
    };
    let mode = match req.mode.as_str() {
        "" => DeliveryMode::Server,
        m => DeliveryMode::parse(m)
            .ok_or_else(|| invalid(format!("mode `{m}` is not `server` or `job`")))?,
    };
    let probe_path = match req.probe_path.as_str() {
        "" => None,
        p if p.starts_with('/') && !p.chars().any(char::is_whitespace) => Some(p.to_owned()),
        p => {
            return Err(invalid(format!(
                "probe path `{p}` must start with `/`, e.g. /healthz"
            )));
        }
    };
    if req.use_http2 && probe_path.is_some() {
        return Err(invalid(
            "--probe-path is probed over HTTP/1.1, which a --use-http2 revision's instances need not speak; drop --probe-path (they are ready once they answer HTTP/2)".into(),
        ));
    }
    if req.use_http2 && mode == DeliveryMode::Job {
        return Err(invalid(
            "--use-http2 is for instances that serve (--mode server); a job gets its question in its arguments".into(),
        ));
    }
    Ok(NewRevision {
        source,
        mode,
        probe_path,
        http2: req.use_http2,
    })
}

pub fn revision_to_pb(r: &Revision, project: &str, service: &str, serving: bool) -> pb::Revision {
    let Revision {
        name,
        service_uuid: _,
        seq,
        source,
        mode,
        probe_path,
        http2,
        created_at,
    } = r;
    let (image, command) = match source {
        RevisionSource::Image(i) => (i.clone(), None),
        RevisionSource::Command {
            program,
            args,
            workdir,
        } => (
            String::new(),
            Some(pb::Command {
                argv: std::iter::once(program.clone())
                    .chain(args.iter().cloned())
                    .collect(),
                workdir: workdir.display().to_string(),
            }),
        ),
    };
    pb::Revision {
        name: name.clone(),
        project: project.to_owned(),
        service: service.to_owned(),
        seq: *seq,
        runtime: source.runtime().to_owned(),
        image,
        command,
        mode: mode.as_str().to_owned(),
        probe_path: probe_path.clone().unwrap_or_default(),
        create_time: Some((*created_at).into()),
        serving,
        use_http2: *http2,
    }
}

#[tonic::async_trait]
impl pb::revisions_server::Revisions for RevisionsApi {
    async fn create_revision(
        &self,
        request: Request<pb::CreateRevisionRequest>,
    ) -> Result<Response<pb::Revision>, Status> {
        let resource = service_resource(&request.get_ref().project, &request.get_ref().service)?;
        self.backend.permit(&request, &resource).await?;
        let req = request.into_inner();
        let service = self
            .backend
            .find_service(&req.project, &req.service)
            .await?;
        let new = new_revision(&req)?;
        let revision = self
            .backend
            .store
            .insert_revision(&service, &new, SystemTime::now())
            .await
            .map_err(ApiError::from)?;
        self.backend.changes.services_changed();
        tracing::info!(service = %service.qualified_name(), revision = %revision.name, "revision created");
        Ok(Response::new(revision_to_pb(
            &revision,
            &req.project,
            &req.service,
            true,
        )))
    }

    async fn list_revisions(
        &self,
        request: Request<pb::ListRevisionsRequest>,
    ) -> Result<Response<pb::ListRevisionsResponse>, Status> {
        let resource = service_resource(&request.get_ref().project, &request.get_ref().service)?;
        self.backend.permit(&request, &resource).await?;
        let req = request.into_inner();
        let service = self
            .backend
            .find_service(&req.project, &req.service)
            .await?;
        let revisions = self
            .backend
            .store
            .list_revisions(service.uuid)
            .await
            .map_err(ApiError::from)?;
        let serving = self
            .backend
            .store
            .serving_revision(service.uuid)
            .await
            .map_err(ApiError::from)?
            .map(|r| r.name);
        Ok(Response::new(pb::ListRevisionsResponse {
            revisions: revisions
                .iter()
                .map(|r| {
                    let is_serving = serving.as_deref() == Some(r.name.as_str());
                    revision_to_pb(r, &req.project, &req.service, is_serving)
                })
                .collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(
        source: Option<pb::create_revision_request::Source>,
        mode: &str,
        probe: &str,
    ) -> pb::CreateRevisionRequest {
        pb::CreateRevisionRequest {
            project: "p".into(),
            service: "s".into(),
            source,
            mode: mode.into(),
            probe_path: probe.into(),
            use_http2: false,
        }
    }

    #[test]
    fn validation_names_the_bad_value() {
        use pb::create_revision_request::Source;
        let cmd = |argv: &[&str], workdir: &str| {
            Some(Source::Command(pb::Command {
                argv: argv.iter().map(|s| (*s).to_owned()).collect(),
                workdir: workdir.into(),
            }))
        };
        assert!(
            new_revision(&req(
                Some(Source::Image("rouse/echo:latest".into())),
                "",
                ""
            ))
            .is_ok()
        );
        let cases = [
            (req(None, "", ""), "either --image or --command"),
            (req(Some(Source::Image("a b".into())), "", ""), "`a b`"),
            (req(cmd(&[], "/srv"), "", ""), "--command is empty"),
            (
                req(cmd(&["python3"], "srv"), "", ""),
                "`srv` must be an absolute path",
            ),
            (req(cmd(&["python3"], "/srv"), "batch", ""), "mode `batch`"),
            (
                req(cmd(&["python3"], "/srv"), "job", "healthz"),
                "`healthz` must start with `/`",
            ),
        ];
        for (r, needle) in cases {
            let err = new_revision(&r).expect_err(needle).to_string();
            assert!(err.contains(needle), "{err} lacks {needle}");
        }
    }
}
