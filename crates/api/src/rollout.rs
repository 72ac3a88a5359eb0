//! The `Rollouts` API: which of a service's revisions answer questions.
//!
//! Untagged questions go to the serving revision, or are split by
//! percentage (`SetTraffic`); questions to `namespace/name:<tag>` go to the
//! revision under that tag (`DeployTagged`, blue/green as in `deploy.py`);
//! `Promote` makes the tagged revision serve; `Rollback` makes an earlier one
//! serve again. Only revisions that may serve (registered by hand, or built
//! and past their rollout) can be routed to.

use rouse_core::Service;
use rouse_core::build::{RevisionState, Routing};
use rouse_core::revision::{Revision, RevisionSource};
use rouse_store::RevisionInfo;
use tonic::{Request, Response, Status};

use crate::auth::{Permit, service_resource};
use crate::backend::Backend;
use crate::error::ApiError;
use crate::pb;

#[derive(Clone)]
pub struct RolloutsApi {
    backend: Backend,
}

impl RolloutsApi {
    pub fn new(backend: Backend) -> Self {
        Self { backend }
    }

    /// A revision of `service` that may serve, or an error naming it.
    async fn routable(&self, service: &Service, name: &str) -> Result<RevisionInfo, ApiError> {
        let infos = self.backend.store.revision_infos(service.uuid).await?;
        let info = infos
            .into_iter()
            .find(|i| i.revision.name == name)
            .ok_or_else(|| ApiError::RevisionNotFound {
                project: service.project.to_string(),
                service: service.name.to_string(),
                revision: name.to_owned(),
            })?;
        if info.state != RevisionState::Ready {
            return Err(ApiError::FailedPrecondition(format!(
                "revision `{name}` is {}: only revisions that passed their rollout can serve",
                info.state.as_str()
            )));
        }
        Ok(info)
    }

    async fn apply(
        &self,
        permit: &Permit,
        service: &Service,
        before: Routing,
        after: Routing,
    ) -> Result<pb::RoutingStatus, ApiError> {
        self.backend.store.set_routing(service.uuid, &after).await?;
        self.backend.changes.services_changed();
        self.backend
            .changed(
                permit,
                &crate::auth::resource_of(&service.project, &service.name).to_string(),
                routing_json(&before),
                routing_json(&after),
            )
            .await;
        let serving = self
            .backend
            .store
            .serving_revision(service.uuid)
            .await?
            .map(|r| r.name)
            .unwrap_or_default();
        Ok(routing_to_pb(service, &after, serving))
    }

    async fn start(
        &self,
        project: &str,
        name: &str,
    ) -> Result<(Service, Routing, Option<Revision>), ApiError> {
        let service = self.backend.find_service(project, name).await?;
        let routing = self.backend.store.routing(service.uuid).await?;
        let serving = self.backend.store.serving_revision(service.uuid).await?;
        Ok((service, routing, serving))
    }
}

fn routing_json(r: &Routing) -> serde_json::Value {
    serde_json::json!({ "serving": r.serving, "tags": r.tags, "traffic": r.traffic })
}

fn routing_to_pb(service: &Service, r: &Routing, serving: String) -> pb::RoutingStatus {
    pb::RoutingStatus {
        project: service.project.to_string(),
        service: service.name.to_string(),
        serving,
        tags: r
            .tags
            .iter()
            .map(|(tag, revision)| pb::TagTarget {
                tag: tag.clone(),
                revision: revision.clone(),
            })
            .collect(),
        traffic: r
            .traffic
            .iter()
            .map(|(revision, percent)| pb::TrafficTarget {
                revision: revision.clone(),
                percent: *percent,
            })
            .collect(),
    }
}

/// Checks a tag: it must be a valid SRUID revision tag and not look like a
/// revision name (those already address their revision).
fn check_tag(tag: &str) -> Result<(), ApiError> {
    if !rouse_core::sruid::is_revision_tag(tag) {
        return Err(ApiError::InvalidArgument(format!(
            "tag `{tag}` must be letters, digits and `_`, joined by `-` or `.`, e.g. `green`"
        )));
    }
    if tag == "latest" {
        return Err(ApiError::InvalidArgument(
            "tag `latest` always names the serving revision; choose another, e.g. `green`".into(),
        ));
    }
    Ok(())
}

#[tonic::async_trait]
impl pb::rollouts_server::Rollouts for RolloutsApi {
    async fn describe_revision(
        &self,
        request: Request<pb::DescribeRevisionRequest>,
    ) -> Result<Response<pb::RevisionDetail>, Status> {
        let resource = service_resource(&request.get_ref().project, &request.get_ref().service)?;
        self.backend.permit(&request, &resource).await?;
        let req = request.into_inner();
        let (service, routing, serving) = self.start(&req.project, &req.service).await?;
        let infos = self
            .backend
            .store
            .revision_infos(service.uuid)
            .await
            .map_err(ApiError::from)?;
        let info = infos
            .into_iter()
            .find(|i| i.revision.name == req.revision)
            .ok_or_else(|| ApiError::RevisionNotFound {
                project: service.project.to_string(),
                service: service.name.to_string(),
                revision: req.revision.clone(),
            })?;
        let RevisionInfo {
            revision,
            origin,
            state,
        } = info;
        let is_serving = serving.as_ref().is_some_and(|s| s.name == revision.name);
        Ok(Response::new(pb::RevisionDetail {
            project: service.project.to_string(),
            service: service.name.to_string(),
            seq: revision.seq,
            runtime: revision.source.runtime().to_owned(),
            image: match &revision.source {
                RevisionSource::Image(i) => i.clone(),
                RevisionSource::Command { program, args, .. } => std::iter::once(program.clone())
                    .chain(args.iter().cloned())
                    .collect::<Vec<_>>()
                    .join(" "),
            },
            mode: revision.mode.as_str().to_owned(),
            probe_path: revision.probe_path.clone().unwrap_or_default(),
            use_http2: revision.http2,
            create_time: Some(revision.created_at.into()),
            serving: is_serving,
            state: state.as_str().to_owned(),
            commit: origin.commit.unwrap_or_default(),
            branch: origin.branch.unwrap_or_default(),
            trigger: origin.trigger_id.unwrap_or_default(),
            build: origin.build_id.unwrap_or_default(),
            image_id: origin.image_id.unwrap_or_default(),
            tags: routing
                .tags
                .iter()
                .filter(|(_, r)| **r == revision.name)
                .map(|(t, _)| t.clone())
                .collect(),
            traffic_percent: routing
                .traffic
                .iter()
                .find(|(r, _)| *r == revision.name)
                .map(|(_, p)| *p)
                .unwrap_or(0),
            name: revision.name,
        }))
    }

    async fn rollback(
        &self,
        request: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::RoutingStatus>, Status> {
        let resource = service_resource(&request.get_ref().project, &request.get_ref().service)?;
        let permit = self.backend.permit(&request, &resource).await?;
        let req = request.into_inner();
        let (service, before, _) = self.start(&req.project, &req.service).await?;
        self.routable(&service, &req.to_revision).await?;
        let mut after = before.clone();
        after.serving = Some(req.to_revision.clone());
        after.traffic.clear();
        let out = self.apply(&permit, &service, before, after).await?;
        Ok(Response::new(out))
    }

    async fn deploy_tagged(
        &self,
        request: Request<pb::DeployTaggedRequest>,
    ) -> Result<Response<pb::RoutingStatus>, Status> {
        let resource = service_resource(&request.get_ref().project, &request.get_ref().service)?;
        let permit = self.backend.permit(&request, &resource).await?;
        let req = request.into_inner();
        check_tag(&req.tag)?;
        let (service, before, serving) = self.start(&req.project, &req.service).await?;
        self.routable(&service, &req.revision).await?;
        let mut after = before.clone();
        // Pin what serves now, so that tagging never changes the default.
        if after.serving.is_none() {
            after.serving = serving.map(|r| r.name);
        }
        after.tags.insert(req.tag.clone(), req.revision.clone());
        let out = self.apply(&permit, &service, before, after).await?;
        Ok(Response::new(out))
    }

    async fn promote(
        &self,
        request: Request<pb::PromoteRequest>,
    ) -> Result<Response<pb::RoutingStatus>, Status> {
        let resource = service_resource(&request.get_ref().project, &request.get_ref().service)?;
        let permit = self.backend.permit(&request, &resource).await?;
        let req = request.into_inner();
        let (service, before, _) = self.start(&req.project, &req.service).await?;
        let revision = before
            .tags
            .get(&req.tag)
            .cloned()
            .ok_or_else(|| ApiError::TagNotFound {
                project: service.project.to_string(),
                service: service.name.to_string(),
                tag: req.tag.clone(),
            })?;
        self.routable(&service, &revision).await?;
        let mut after = before.clone();
        after.serving = Some(revision);
        after.traffic.clear();
        let out = self.apply(&permit, &service, before, after).await?;
        Ok(Response::new(out))
    }

    async fn set_traffic(
        &self,
        request: Request<pb::SetTrafficRequest>,
    ) -> Result<Response<pb::RoutingStatus>, Status> {
        let resource = service_resource(&request.get_ref().project, &request.get_ref().service)?;
        let permit = self.backend.permit(&request, &resource).await?;
        let req = request.into_inner();
        let (service, before, serving) = self.start(&req.project, &req.service).await?;
        let total: u32 = req.targets.iter().map(|t| t.percent).sum();
        if total != 100 {
            return Err(ApiError::InvalidArgument(format!(
                "traffic percentages add up to {total}, not 100; e.g. --traffic REV1=90,REV2=10"
            ))
            .into());
        }
        let mut traffic = Vec::new();
        for t in &req.targets {
            self.routable(&service, &t.revision).await?;
            if traffic
                .iter()
                .any(|(r, _): &(String, u32)| *r == t.revision)
            {
                return Err(ApiError::InvalidArgument(format!(
                    "revision `{}` is named twice in --traffic; name each revision once",
                    t.revision
                ))
                .into());
            }
            if t.percent > 0 {
                traffic.push((t.revision.clone(), t.percent));
            }
        }
        let mut after = before.clone();
        // The largest share serves when the split is removed.
        after.serving = traffic
            .iter()
            .max_by_key(|(_, p)| *p)
            .map(|(r, _)| r.clone())
            .or_else(|| serving.map(|r| r.name));
        after.traffic = if traffic.len() > 1 {
            traffic
        } else {
            Vec::new()
        };
        let out = self.apply(&permit, &service, before, after).await?;
        Ok(Response::new(out))
    }

    async fn get_routing(
        &self,
        request: Request<pb::GetRoutingRequest>,
    ) -> Result<Response<pb::RoutingStatus>, Status> {
        let resource = service_resource(&request.get_ref().project, &request.get_ref().service)?;
        self.backend.permit(&request, &resource).await?;
        let req = request.into_inner();
        let (service, routing, serving) = self.start(&req.project, &req.service).await?;
        Ok(Response::new(routing_to_pb(
            &service,
            &routing,
            serving.map(|r| r.name).unwrap_or_default(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::check_tag;

    #[test]
    fn tags_are_checked_and_latest_is_reserved() {
        assert!(check_tag("green").is_ok());
        let err = check_tag("gr/een").expect_err("bad tag").to_string();
        assert!(err.contains("`gr/een`"), "{err}");
        let err = check_tag("latest").expect_err("reserved").to_string();
        assert!(err.contains("`latest`"), "{err}");
    }
}
