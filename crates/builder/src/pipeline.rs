//! One build, step by step: fetching (git) ─▶ building (docker, log lines
//! stored as they come) ─▶ pushing (with a registry) ─▶ rolling-out.
//!
//! Rolling out is store-driven, so the builder and the dispatcher may run in
//! different processes: the pipeline records a candidate revision, whichever
//! dispatcher serves the service claims it, starts one instance and records
//! the verdict of its readiness check ([`rouse_store::TrialStore`]), and the
//! pipeline, waiting on that record, makes a ready revision serve. A failure
//! at any step fails the build with the step and the last log lines, and
//! leaves the serving revision as it was.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rouse_core::Service;
use rouse_core::build::RevisionState;
use rouse_core::revision::{DeliveryMode, RevisionSource};
use rouse_store::{BuildOrigin, Changes, NewRevision};
use tokio_util::sync::CancellationToken;

use crate::builder::BuilderStore;
use crate::docker::{BuildSpec, ImageBuilder, RegistryCredentials};
use crate::git::GitFetcher;
use crate::log::BuildLog;
use crate::queue::{BuildContext, BuildFailure, BuildRunner};
use crate::{BuildStatus, CommitId, Trigger};

/// How long a candidate may wait for a dispatcher to take its trial, on
/// top of the service's wake timeout: dispatchers look for candidates every
/// second (at once in the same process), so 30 s means none is running.
pub const TRIAL_PICKUP: Duration = Duration::from_secs(30);
/// How often the pipeline re-reads a trial's record when no notice comes.
const TRIAL_POLL: Duration = Duration::from_millis(100);

/// A registry built images are pushed to, as
/// `<prefix>/<project>-<service>:<commit12>` and `:latest`.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// `host[:port][/path]`, checked by [`crate::docker::parse_registry`].
    pub prefix: String,
    pub credentials: Option<RegistryCredentials>,
    /// Without static credentials: the platform's key, which signs the
    /// builder's own credential for each service's repository (the
    /// registry's token server, Rouse, grants it that repository only).
    pub asserter: Option<Arc<rouse_identity::Asserter>>,
}

impl RegistryConfig {
    /// What the engine logs in to `service`'s repository with: the static
    /// credentials, else a credential the platform signs for it. A registry
    /// without authentication never asks for either.
    pub fn credentials_for(&self, service: &Service) -> Option<RegistryCredentials> {
        if let Some(static_credentials) = &self.credentials {
            return Some(static_credentials.clone());
        }
        let asserter = self.asserter.as_ref()?;
        let audience = rouse_identity::registry_audience(&service.project, &service.name);
        asserter
            .assert_registry(
                rouse_identity::BUILDER_PRINCIPAL,
                &audience,
                SystemTime::now(),
                BUILDER_CREDENTIAL_LIFETIME,
            )
            .ok()
            .map(|password| RegistryCredentials {
                username: "rouse".to_owned(),
                password,
            })
    }

    /// A service's repository: `<prefix>/<project>-<service>`.
    pub fn repository(&self, service: &Service) -> String {
        format!("{}/{}-{}", self.prefix, service.project, service.name)
    }
}

/// How long the builder's own registry credential lives: one push or pull.
const BUILDER_CREDENTIAL_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// What one build works on.
#[derive(Debug, Clone)]
pub enum BuildSource {
    /// A pushed commit.
    Git {
        url: String,
        commit: CommitId,
        branch: Option<String>,
    },
    /// A directory on the builder's machine (`rouse builds submit`).
    Dir { path: PathBuf, dockerfile: PathBuf },
    /// A function's source directory (`rouse functions deploy`), made by
    /// [`crate::function::write_source`].
    Function { dir: PathBuf },
    /// An image to pull and roll out (`rouse services update --image`).
    Image { reference: String },
}

/// One queued build.
#[derive(Debug, Clone)]
pub struct BuildJob {
    pub service: Service,
    pub trigger: Option<Trigger>,
    pub source: BuildSource,
}

/// Runs one build: fetch, build, push, roll out.
pub(crate) struct Pipeline {
    pub store: Arc<dyn BuilderStore>,
    pub changes: Changes,
    pub fetcher: GitFetcher,
    pub registry: Option<RegistryConfig>,
    /// The functions' environments, one per distinct requirements.
    pub function_envs: PathBuf,
    /// Functions are built into images on it, where it and the engine are
    /// there.
    pub function_base_image: Option<String>,
}

#[async_trait::async_trait]
impl BuildRunner<BuildJob> for Pipeline {
    async fn run(&self, ctx: BuildContext, job: BuildJob) -> Result<(), BuildFailure> {
        let log = BuildLog::new();
        let stop = CancellationToken::new();
        let flusher = {
            let (log, store, id, stop) = (
                log.clone(),
                self.store.clone(),
                ctx.id().to_owned(),
                stop.clone(),
            );
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(crate::log::LOG_FLUSH) => log.flush(store.as_ref(), &id).await,
                    }
                }
                log.flush(store.as_ref(), &id).await;
            })
        };
        let result = self.steps(&ctx, &job, &log).await;
        if let Err(failure) = &result {
            log.line(format!("build failed: {failure}"));
        }
        stop.cancel();
        let _ = flusher.await;
        if result.is_err()
            && let Ok(Some(mut record)) = self.store.get_build(ctx.id()).await
        {
            record.last_lines = log.tail();
            if let Err(e) = self.store.update_build(&record).await {
                tracing::warn!(build = %ctx.id(), error = %e, "cannot record a build's last lines");
            }
        }
        result
    }
}

impl Pipeline {
    async fn steps(
        &self,
        ctx: &BuildContext,
        job: &BuildJob,
        log: &BuildLog,
    ) -> Result<(), BuildFailure> {
        let service = &job.service;
        log.line(format!(
            "build {} of {}/{}",
            ctx.id(),
            service.project,
            service.name
        ));
        match job.trigger.as_ref() {
            Some(t) if t.github_token().is_some() => {}
            Some(_) => log.line("the trigger has no GitHub token: no commit status is reported"),
            None => {}
        }
        if let BuildSource::Function { dir } = &job.source {
            return self.function(ctx, service, dir, log).await;
        }
        if let BuildSource::Image { reference } = &job.source {
            return self.image(ctx, service, reference, log).await;
        }
        ctx.set_status(BuildStatus::Fetching).await;
        let cancel = ctx.cancellation();
        let (tree, root, dockerfile, commit, branch) = match &job.source {
            BuildSource::Git {
                url,
                commit,
                branch,
            } => {
                log.line(format!("fetching {} from {url}", commit.as_str()));
                let token = job.trigger.as_ref().and_then(|t| t.github_token());
                let (tree, fetched) = self
                    .fetcher
                    .checkout(url, commit, token, cancel)
                    .await
                    .map_err(|e| BuildFailure::new(format!("fetching failed: {e}")))?;
                log.line(format!("fetched ({fetched:?})"));
                let context = job
                    .trigger
                    .as_ref()
                    .map(|t| t.context_dir().to_owned())
                    .unwrap_or_else(|| PathBuf::from("."));
                let dockerfile = job
                    .trigger
                    .as_ref()
                    .map(|t| t.dockerfile().to_owned())
                    .unwrap_or_else(|| PathBuf::from("Dockerfile"));
                let root = tree.path().join(context);
                (
                    Some(tree),
                    root,
                    dockerfile,
                    Some(commit.clone()),
                    branch.clone(),
                )
            }
            BuildSource::Dir { path, dockerfile } => {
                log.line(format!("building the directory {}", path.display()));
                (None, path.clone(), dockerfile.clone(), None, None)
            }
            BuildSource::Function { .. } | BuildSource::Image { .. } => {
                unreachable!("function and image builds return above")
            }
        };

        ctx.set_status(BuildStatus::Building).await;
        let repository =
            crate::trigger::image_repository(service.project.as_str(), service.name.as_str());
        let tags = match &commit {
            Some(c) => {
                crate::docker::image_tags(service.project.as_str(), service.name.as_str(), c)
            }
            None => vec![
                format!("{repository}:build-{}", ctx.id()),
                format!("{repository}:latest"),
            ],
        };
        let images = ImageBuilder::connect()
            .await
            .map_err(|e| BuildFailure::new(format!("building failed: {e}")))?;
        // No labels: the classic (pre-BuildKit) builder runs them as one more
        // step, a second of the build on some storage drivers; the revision
        // records the image id and the build, and the tags name the commit.
        let mut spec = BuildSpec::new(root, tags.clone());
        spec.dockerfile = dockerfile;
        let mut on_line = |line: &str| log.line(line);
        let built = images
            .build(&spec, &mut on_line, cancel)
            .await
            .map_err(|e| BuildFailure::new(format!("building failed: {e}")))?;
        drop(tree);
        log.line(format!("built image {} ({})", tags[0], built.id));
        let image = self
            .publish(ctx, service, &images, &built.id, &tags, log)
            .await?;

        ctx.set_status(BuildStatus::RollingOut).await;
        let origin = BuildOrigin {
            commit: commit.as_ref().map(|c| c.as_str().to_owned()),
            branch,
            trigger_id: job.trigger.as_ref().map(|t| t.id().to_owned()),
            build_id: Some(ctx.id().to_owned()),
            image_id: Some(built.id.clone()),
        };
        self.roll_out(
            ctx,
            service,
            RevisionSource::Image(image),
            None,
            origin,
            log,
        )
        .await
        .map_err(|e| BuildFailure::new(format!("rolling-out failed: {e}")))
    }

    /// Pushes a built image under each of `tags`' tags to the service's
    /// repository, when a registry is configured, and returns what the
    /// revision runs: the pushed reference (the local engine holds it too,
    /// as a Cloud Run revision names its image), else the first tag.
    async fn publish(
        &self,
        ctx: &BuildContext,
        service: &Service,
        images: &ImageBuilder,
        id: &str,
        tags: &[String],
        log: &BuildLog,
    ) -> Result<String, BuildFailure> {
        let Some(registry) = &self.registry else {
            log.line("no registry is configured: the image stays in the local engine");
            return Ok(tags[0].clone());
        };
        ctx.set_status(BuildStatus::Pushing).await;
        let mut pushed = Vec::with_capacity(tags.len());
        let credentials = registry.credentials_for(service);
        let mut on_line = |line: &str| log.line(line);
        for tag in tags {
            let (_, tag) = tag.rsplit_once(':').unwrap_or((tag, "latest"));
            let reference = format!("{}:{tag}", registry.repository(service));
            log.line(format!("pushing {reference}"));
            images
                .push(
                    id,
                    &reference,
                    credentials.as_ref(),
                    &mut on_line,
                    ctx.cancellation(),
                )
                .await
                .map_err(|e| BuildFailure::new(format!("pushing failed: {e}")))?;
            pushed.push(reference);
        }
        log.line(format!("pushed {}", pushed.join(" and ")));
        Ok(pushed.swap_remove(0))
    }

    /// An image: pulled (from the service's repository with the builder's
    /// credential; from elsewhere without one, unless the engine has it
    /// already), then rolled out like a built one.
    async fn image(
        &self,
        ctx: &BuildContext,
        service: &Service,
        reference: &str,
        log: &BuildLog,
    ) -> Result<(), BuildFailure> {
        ctx.set_status(BuildStatus::Fetching).await;
        let images = ImageBuilder::connect()
            .await
            .map_err(|e| BuildFailure::new(format!("fetching failed: {e}")))?;
        let credentials = self
            .registry
            .as_ref()
            .filter(|r| {
                reference.starts_with(&format!("{}:", r.repository(service)))
                    || reference.starts_with(&format!("{}@", r.repository(service)))
            })
            .and_then(|r| r.credentials_for(service));
        // A name without a registry host is the engine's own image: Docker
        // would look for it on Docker Hub.
        let from_registry = reference.split_once('/').is_some_and(|(host, _)| {
            host.contains('.') || host.contains(':') || host == "localhost"
        });
        let id = if from_registry {
            log.line(format!("pulling {reference}"));
            let mut on_line = |line: &str| log.line(line);
            let id = images
                .pull(
                    reference,
                    credentials.as_ref(),
                    &mut on_line,
                    ctx.cancellation(),
                )
                .await
                .map_err(|e| BuildFailure::new(format!("fetching failed: {e}")))?;
            log.line(format!("pulled {reference} ({id})"));
            id
        } else {
            let found = images.docker().inspect_image(reference).await.map_err(|e| {
                BuildFailure::new(format!(
                    "fetching failed: {reference} names no registry and the engine has no such image ({}); push it to the service's repository and give its tag",
                    crate::docker::engine_message(e)
                ))
            })?;
            let id = found.id.unwrap_or_default();
            log.line(format!(
                "the engine has {reference} ({id}): nothing to pull"
            ));
            id
        };
        ctx.set_status(BuildStatus::RollingOut).await;
        let origin = BuildOrigin {
            commit: None,
            branch: None,
            trigger_id: None,
            build_id: Some(ctx.id().to_owned()),
            image_id: Some(id),
        };
        self.roll_out(
            ctx,
            service,
            RevisionSource::Image(reference.to_owned()),
            None,
            origin,
            log,
        )
        .await
        .map_err(|e| BuildFailure::new(format!("rolling-out failed: {e}")))
    }

    /// A function: its environment made (or found), then rolled out as a
    /// command revision serving `main` over HTTP, ready once the file
    /// imported.
    async fn function(
        &self,
        ctx: &BuildContext,
        service: &Service,
        dir: &std::path::Path,
        log: &BuildLog,
    ) -> Result<(), BuildFailure> {
        log.line(format!("function from {}", dir.display()));
        ctx.set_status(BuildStatus::Building).await;
        let mut image_id = None;
        let source = match self.function_image(ctx, service, dir, log).await? {
            Some((reference, id)) => {
                image_id = Some(id);
                RevisionSource::Image(reference)
            }
            None => crate::function::prepare(&self.function_envs, dir, log, ctx.cancellation())
                .await
                .map_err(|e| BuildFailure::new(format!("building failed: {e}")))?,
        };
        ctx.set_status(BuildStatus::RollingOut).await;
        let origin = BuildOrigin {
            commit: None,
            branch: None,
            trigger_id: None,
            build_id: Some(ctx.id().to_owned()),
            image_id,
        };
        let delivery = (DeliveryMode::Server, Some("/healthz".to_owned()), false);
        self.roll_out(ctx, service, source, Some(delivery), origin, log)
            .await
            .map_err(|e| BuildFailure::new(format!("rolling-out failed: {e}")))
    }

    /// A function built into an image on the configured base image (its
    /// requirements in an image of their own per base and requirements,
    /// made once), pushed like a build; `None` (processes) without a base
    /// image, or while the engine or the base image is missing, said in
    /// the log.
    async fn function_image(
        &self,
        ctx: &BuildContext,
        service: &Service,
        dir: &std::path::Path,
        log: &BuildLog,
    ) -> Result<Option<(String, String)>, BuildFailure> {
        let Some(base) = &self.function_base_image else {
            return Ok(None);
        };
        let images = match ImageBuilder::connect().await {
            Ok(images) => images,
            Err(e) => {
                log.line(format!(
                    "no Docker engine ({e}): the function runs as a process"
                ));
                return Ok(None);
            }
        };
        let base_id = match images.docker().inspect_image(base).await {
            Ok(image) => image.id.unwrap_or_default(),
            Err(e) => {
                log.line(format!(
                    "the base image {base} is not in the engine ({}): the function runs as a process",
                    crate::docker::engine_message(e)
                ));
                return Ok(None);
            }
        };
        let failed = |e: String| BuildFailure::new(format!("building failed: {e}"));
        let context = crate::function::image_context(dir, base, &base_id)
            .await
            .map_err(failed)?;
        let mut on_line = |line: &str| log.line(line);
        let env_tag = context.env_tag.clone();
        if images.docker().inspect_image(&env_tag).await.is_ok() {
            log.line(format!(
                "the requirements are installed already: image {env_tag}"
            ));
        } else {
            log.line(format!("installing the requirements into image {env_tag}"));
            let mut spec = BuildSpec::new(context.dir.path(), vec![env_tag.clone()]);
            spec.dockerfile = crate::function::ENV_DOCKERFILE.into();
            // pip reaches the index over the host's network, as the
            // instances do: no bridge is needed (or may exist).
            spec.network = Some("host".to_owned());
            images
                .build(&spec, &mut on_line, ctx.cancellation())
                .await
                .map_err(|e| failed(e.to_string()))?;
        }
        let repository =
            crate::trigger::image_repository(service.project.as_str(), service.name.as_str());
        let tags = vec![
            format!("{repository}:function-{}", context.hash),
            format!("{repository}:latest"),
        ];
        let mut spec = BuildSpec::new(context.dir.path(), tags.clone());
        spec.dockerfile = crate::function::FUNCTION_DOCKERFILE.into();
        let built = images
            .build(&spec, &mut on_line, ctx.cancellation())
            .await
            .map_err(|e| failed(e.to_string()))?;
        log.line(format!("built image {} ({}) on {base}", tags[0], built.id));
        let reference = self
            .publish(ctx, service, &images, &built.id, &tags, log)
            .await?;
        Ok(Some((reference, built.id)))
    }

    /// Records the candidate, waits for a dispatcher's trial, and makes it
    /// serve when it passed.
    async fn roll_out(
        &self,
        ctx: &BuildContext,
        service: &Service,
        source: RevisionSource,
        delivery: Option<(DeliveryMode, Option<String>, bool)>,
        origin: BuildOrigin,
        log: &BuildLog,
    ) -> Result<(), String> {
        let store = &self.store;
        let service = store
            .get_service_by_uuid(service.uuid)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the service was deleted during the build")?;
        let serving = store
            .serving_revision(service.uuid)
            .await
            .map_err(|e| e.to_string())?;
        // A built image is delivered to like the revision it replaces.
        let (mode, probe_path, http2) = delivery.unwrap_or_else(|| {
            serving
                .as_ref()
                .map(|r| (r.mode, r.probe_path.clone(), r.http2))
                .unwrap_or((DeliveryMode::Server, None, false))
        });
        let image = match &source {
            RevisionSource::Image(image) => Some(image.clone()),
            RevisionSource::Command { .. } => None,
        };
        let candidate = store
            .insert_candidate_revision(
                &service,
                &NewRevision {
                    source,
                    mode,
                    probe_path,
                    http2,
                },
                &origin,
                SystemTime::now(),
            )
            .await
            .map_err(|e| e.to_string())?;
        if let Ok(Some(mut record)) = store.get_build(ctx.id()).await {
            record.revision = Some(candidate.name.clone());
            record.image = image;
            let _ = store.update_build(&record).await;
        }
        self.changes.revisions_changed();
        let wake = service.scaling.wake_timeout;
        log.line(format!(
            "waiting for a dispatcher to start one instance of {} and check that it becomes ready within {}s",
            candidate.name,
            wake.as_secs_f64()
        ));
        let still = || {
            serving
                .as_ref()
                .map(|r| format!("{} still serves", r.name))
                .unwrap_or_else(|| "no revision serves yet".into())
        };
        match self
            .trial(&candidate.name, wake + TRIAL_PICKUP, ctx.cancellation())
            .await
        {
            Ok(()) => {}
            Err(why) => {
                // Whatever the trial's state, this candidate never serves.
                let _ = store
                    .set_revision_state(&candidate.name, RevisionState::Failed)
                    .await;
                for line in why.lines() {
                    log.line(line);
                }
                return Err(format!(
                    "revision {} did not become ready, so it does not serve ({}): {why}",
                    candidate.name,
                    still()
                ));
            }
        }
        store
            .set_revision_state(&candidate.name, RevisionState::Ready)
            .await
            .map_err(|e| e.to_string())?;
        let mut routing = store
            .routing(service.uuid)
            .await
            .map_err(|e| e.to_string())?;
        routing.serving = Some(candidate.name.clone());
        routing.traffic.clear();
        store
            .set_routing(service.uuid, &routing)
            .await
            .map_err(|e| e.to_string())?;
        self.changes.services_changed();
        log.line(format!("revision {} serves", candidate.name));
        tracing::info!(build = %ctx.id(), revision = %candidate.name, "built revision serves");
        Ok(())
    }

    /// Waits for the verdict of a candidate's trial, at most `limit`.
    async fn trial(
        &self,
        name: &str,
        limit: Duration,
        cancel: &CancellationToken,
    ) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut notices = self.changes.revisions();
        loop {
            let state = match self.store.trial(name).await.map_err(|e| e.to_string())? {
                Some((RevisionState::Passed | RevisionState::Ready, _)) => return Ok(()),
                Some((RevisionState::Failed, why)) => {
                    return Err(why.unwrap_or_else(|| "its trial failed".into()));
                }
                Some((state @ (RevisionState::Candidate | RevisionState::Trying), _)) => state,
                None => return Err("the revision was deleted during its trial".into()),
            };
            tokio::select! {
                () = cancel.cancelled() => return Err("the build was stopped".into()),
                () = tokio::time::sleep_until(deadline) => {
                    return Err(if state == RevisionState::Trying {
                        format!("its trial took longer than {}s", limit.as_secs())
                    } else {
                        format!(
                            "no dispatcher took its readiness trial within {}s; is a `rouse server` with the dispatcher role running on this store?",
                            limit.as_secs()
                        )
                    });
                }
                () = rouse_store::changes::next(&mut notices, TRIAL_POLL) => {}
            }
        }
    }
}
