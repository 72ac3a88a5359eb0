//! The builder's pipeline and the `Builds` API.
//!
//! ```text
//! webhook / SubmitBuild ─▶ Builder::start_build: record `queued`, queue it
//!   queue slot ─▶ Pipeline::run: fetching (git) ─▶ building (docker, log lines
//!   stored as they come) ─▶ rolling-out: a candidate revision, one instance
//!   of it started through the dispatcher (DispatchHooks::try_revision) and
//!   ready within the wake timeout ─▶ it serves
//!   every status change ─▶ StoreSink: the build's record, and the GitHub
//!   commit status (pending at the start, success/failure/error at the end)
//! ```
//!
//! A failure at any step marks the build `failed` with the step and the last
//! log lines, and leaves the serving revision as it was.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::Stream;
use rouse_builder::docker::{BuildSpec, ImageBuilder, RegistryCredentials};
use rouse_builder::git::{GitConfig, GitFetcher};
use rouse_builder::github::{CommitState, CommitStatus, GithubRepo, StatusReporter};
use rouse_builder::queue::{
    BuildContext, BuildFailure, BuildRunner, QueueConfig, StatusSink, StatusUpdate,
};
use rouse_builder::secrets::{SealedValue, SecretsKey};
use rouse_builder::{BuildQueue, BuildStatus, CommitId, Trigger, TriggerSpec};
use rouse_core::Service;
use rouse_core::revision::{DeliveryMode, RevisionSource};
use rouse_iam::Permission;
use rouse_store::{BuildOrigin, BuildRecord, NewRevision, RevisionState, TriggerRecord};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::auth::{project_resource, resource_of, service_resource};
use crate::backend::Backend;
use crate::error::ApiError;
use crate::pb;

/// Log lines a failed build's record keeps: enough to show the error.
const LAST_LINES: usize = 20;
/// How often build log lines are written to the store while a build runs:
/// often enough for `--follow` to feel live, rarely enough to group lines.
const LOG_FLUSH: Duration = Duration::from_millis(200);
/// How often a followed log is polled for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(250);
/// Lines one read of a build log returns at most.
const LOG_PAGE: u32 = 1000;
/// Builds a list returns by default.
const DEFAULT_LIST: u32 = 50;

/// Where and how the builder works.
#[derive(Debug, Clone)]
pub struct BuilderConfig {
    /// Git cache and exported sources.
    pub state_dir: PathBuf,
    /// The key that seals secrets (outside the database).
    pub secrets_key: PathBuf,
    pub github_api_url: String,
    /// Base URL the webhook server is reached at (`http://127.0.0.1:7071`).
    pub webhook_url: String,
    pub queue: QueueConfig,
    /// Where built images are pushed; `None` keeps them in the local engine.
    pub registry: Option<RegistryConfig>,
}

/// A registry built images are pushed to, as
/// `<prefix>/<project>-<service>:<commit12>` and `:latest`.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// `host[:port][/path]`, checked by [`rouse_builder::docker::parse_registry`].
    pub prefix: String,
    pub credentials: Option<RegistryCredentials>,
}

/// What one build works on.
#[derive(Debug, Clone)]
pub enum BuildSource {
    /// A pushed commit.
    Git {
        url: String,
        commit: CommitId,
        branch: Option<String>,
    },
    /// A directory on the server's machine (`rouse builds submit`).
    Dir { path: PathBuf, dockerfile: PathBuf },
}

/// One queued build.
#[derive(Debug, Clone)]
pub struct BuildJob {
    pub service: Service,
    pub trigger: Option<Trigger>,
    pub source: BuildSource,
}

/// The builder: triggers' secrets, the queue and the pipeline.
#[derive(Clone)]
pub struct Builder {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    key: Arc<SecretsKey>,
    queue: BuildQueue<BuildJob>,
    webhook_url: String,
}

impl Builder {
    /// Loads (or creates) the secrets key, prepares the pipeline and marks
    /// builds a previous run left unfinished as failed.
    pub async fn start(backend: Backend, config: BuilderConfig) -> Result<Self, ApiError> {
        let key = Arc::new(
            SecretsKey::load_or_create(&config.secrets_key).map_err(|e| {
                ApiError::Internal(format!("the builder cannot load its secrets key: {e}"))
            })?,
        );
        let reporter = StatusReporter::new(&config.github_api_url).map_err(|e| {
            ApiError::InvalidArgument(format!(
                "{e}; set --github-api-url (ROUSE_GITHUB_API_URL) to e.g. https://api.github.com"
            ))
        })?;
        let pipeline = Arc::new(Pipeline {
            backend: backend.clone(),
            fetcher: GitFetcher::new(GitConfig::new(&config.state_dir)),
            registry: config.registry.clone(),
        });
        let sink = Arc::new(StoreSink {
            backend: backend.clone(),
            reporter,
            key: key.clone(),
            webhook_url: config.webhook_url.clone(),
        });
        let queue = BuildQueue::new(config.queue.clone(), pipeline, sink)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let interrupted = backend.store.list_builds(None, true, u32::MAX).await?;
        for mut build in interrupted {
            build.status = BuildStatus::Failed.as_str().into();
            build.failure = Some(
                "the server stopped while the build ran; push again or run `rouse builds submit`"
                    .into(),
            );
            build.finished_at = Some(SystemTime::now());
            backend.store.update_build(&build).await?;
        }
        Ok(Self {
            inner: Arc::new(Inner {
                backend,
                key,
                queue,
                webhook_url: config.webhook_url,
            }),
        })
    }

    pub fn backend(&self) -> &Backend {
        &self.inner.backend
    }

    pub fn key(&self) -> &SecretsKey {
        &self.inner.key
    }

    pub fn webhook_url(&self) -> &str {
        &self.inner.webhook_url
    }

    /// Stops taking builds and waits for the running ones.
    pub async fn shutdown(&self) {
        self.inner.queue.shutdown().await;
    }

    /// Every trigger, validated with its secrets opened, with its service.
    pub async fn triggers(&self) -> Result<Vec<(Trigger, Service)>, ApiError> {
        let records = self.inner.backend.store.list_triggers(None).await?;
        let mut out = Vec::with_capacity(records.len());
        for record in records {
            let Some(service) = self
                .inner
                .backend
                .store
                .get_service_by_uuid(record.service_uuid)
                .await?
            else {
                continue;
            };
            match trigger_of(&self.inner.key, &record, &service) {
                Ok(t) => out.push((t, service)),
                Err(e) => tracing::warn!(trigger = %record.id, error = %e, "unusable trigger"),
            }
        }
        Ok(out)
    }

    /// Records build `queued` and queues it; returns its id at once.
    pub async fn start_build(&self, job: BuildJob) -> Result<String, ApiError> {
        let id = Uuid::new_v4().simple().to_string()[..16].to_owned();
        let (source, commit, branch) = match &job.source {
            BuildSource::Git {
                url,
                commit,
                branch,
            } => (
                url.clone(),
                Some(commit.as_str().to_owned()),
                branch.clone(),
            ),
            BuildSource::Dir { path, .. } => (format!("dir:{}", path.display()), None, None),
        };
        let record = BuildRecord {
            id: id.clone(),
            service_uuid: job.service.uuid,
            trigger_id: job.trigger.as_ref().map(|t| t.id().to_owned()),
            status: BuildStatus::Queued.as_str().into(),
            step: None,
            source,
            commit,
            branch,
            revision: None,
            image: None,
            failure: None,
            last_lines: Vec::new(),
            created_at: SystemTime::now(),
            started_at: None,
            finished_at: None,
        };
        self.inner.backend.store.insert_build(&record).await?;
        let key = job.trigger.as_ref().map(|t| t.id().to_owned());
        if let Err(e) = self.inner.queue.submit(id.clone(), key, job).await {
            let mut failed = record;
            failed.status = BuildStatus::Failed.as_str().into();
            failed.failure = Some(format!("not queued: {e}"));
            failed.finished_at = Some(SystemTime::now());
            self.inner.backend.store.update_build(&failed).await?;
            return Err(ApiError::Unavailable(format!(
                "build not queued: {e}; try again once the queue has room"
            )));
        }
        tracing::info!(build = %id, "build queued");
        Ok(id)
    }
}

/// The trigger a stored record describes, its secrets opened.
pub fn trigger_of(
    key: &SecretsKey,
    record: &TriggerRecord,
    service: &Service,
) -> Result<Trigger, ApiError> {
    let open = |name: &str, sealed: &str| -> Result<String, ApiError> {
        let sealed = SealedValue::from_text(sealed)
            .map_err(|e| ApiError::Internal(format!("trigger {}: {e}", record.id)))?;
        let value = key
            .open(name, &sealed)
            .map_err(|e| ApiError::Internal(format!("trigger {}: {e}", record.id)))?;
        value.expose_str().map(str::to_owned).ok_or_else(|| {
            ApiError::Internal(format!("trigger {}: {name} is not UTF-8", record.id))
        })
    };
    let webhook_secret = open(
        &trigger_secret_name(&record.id, "webhook_secret"),
        &record.webhook_secret_sealed,
    )?;
    let github_token = record
        .github_token_sealed
        .as_deref()
        .map(|s| open(&trigger_secret_name(&record.id, "github_token"), s))
        .transpose()?;
    Trigger::new(TriggerSpec {
        id: record.id.clone(),
        project: service.project.to_string(),
        service: service.name.to_string(),
        repo: record.repo.clone(),
        branch_pattern: record.branch_pattern.clone(),
        tag_pattern: record.tag_pattern.clone(),
        dockerfile: record.dockerfile.clone(),
        context_dir: record.context_dir.clone(),
        included_files: record.included_files.clone(),
        ignored_files: record.ignored_files.clone(),
        webhook_secret,
        github_token,
    })
    .map_err(|e| ApiError::Internal(format!("trigger {}: {e}", record.id)))
}

/// The name a trigger's secret is sealed under (binds the value to it).
pub fn trigger_secret_name(trigger: &str, what: &str) -> String {
    format!("trigger/{trigger}/{what}")
}

/// Log lines of a running build: buffered, written to the store by a
/// flusher every [`LOG_FLUSH`], the last [`LAST_LINES`] kept for failures.
#[derive(Clone)]
struct BuildLog {
    pending: Arc<Mutex<Vec<String>>>,
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl BuildLog {
    fn new() -> Self {
        Self {
            pending: Arc::new(Mutex::new(Vec::new())),
            tail: Arc::new(Mutex::new(VecDeque::with_capacity(LAST_LINES))),
        }
    }

    fn line(&self, line: impl Into<String>) {
        let line = line.into();
        if let Ok(mut tail) = self.tail.lock() {
            if tail.len() == LAST_LINES {
                tail.pop_front();
            }
            tail.push_back(line.clone());
        }
        if let Ok(mut p) = self.pending.lock() {
            p.push(line);
        }
    }

    fn take(&self) -> Vec<String> {
        self.pending
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default()
    }

    fn tail(&self) -> Vec<String> {
        self.tail
            .lock()
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default()
    }

    async fn flush(&self, backend: &Backend, build: &str) {
        let lines = self.take();
        if lines.is_empty() {
            return;
        }
        if let Err(e) = backend.store.append_build_log(build, lines).await {
            tracing::warn!(build, error = %e, "cannot store build log lines");
        }
    }
}

/// Runs one build: fetch, build, roll out.
struct Pipeline {
    backend: Backend,
    fetcher: GitFetcher,
    registry: Option<RegistryConfig>,
}

#[async_trait::async_trait]
impl BuildRunner<BuildJob> for Pipeline {
    async fn run(&self, ctx: BuildContext, job: BuildJob) -> Result<(), BuildFailure> {
        let log = BuildLog::new();
        let stop = tokio_util::sync::CancellationToken::new();
        let flusher = {
            let (log, backend, id, stop) = (
                log.clone(),
                self.backend.clone(),
                ctx.id().to_owned(),
                stop.clone(),
            );
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(LOG_FLUSH) => log.flush(&backend, &id).await,
                    }
                }
                log.flush(&backend, &id).await;
            })
        };
        let result = self.steps(&ctx, &job, &log).await;
        if let Err(failure) = &result {
            log.line(format!("build failed: {failure}"));
        }
        stop.cancel();
        let _ = flusher.await;
        if result.is_err()
            && let Ok(Some(mut record)) = self.backend.store.get_build(ctx.id()).await
        {
            record.last_lines = log.tail();
            if let Err(e) = self.backend.store.update_build(&record).await {
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
        };

        ctx.set_status(BuildStatus::Building).await;
        let repository = rouse_builder::trigger::image_repository(
            service.project.as_str(),
            service.name.as_str(),
        );
        let tags = match &commit {
            Some(c) => rouse_builder::docker::image_tags(
                service.project.as_str(),
                service.name.as_str(),
                c,
            ),
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
        // With a registry, the revision runs the pushed reference (the local
        // engine holds it too), as a Cloud Run revision names its image.
        let image = match &self.registry {
            None => {
                log.line("no registry is configured: the image stays in the local engine");
                tags[0].clone()
            }
            Some(registry) => {
                ctx.set_status(BuildStatus::Pushing).await;
                let mut pushed = Vec::with_capacity(tags.len());
                for tag in &tags {
                    let (_, tag) = tag.rsplit_once(':').unwrap_or((tag, "latest"));
                    let reference = format!(
                        "{}/{}-{}:{tag}",
                        registry.prefix, service.project, service.name
                    );
                    log.line(format!("pushing {reference}"));
                    images
                        .push(
                            &built.id,
                            &reference,
                            registry.credentials.as_ref(),
                            &mut on_line,
                            cancel,
                        )
                        .await
                        .map_err(|e| BuildFailure::new(format!("pushing failed: {e}")))?;
                    pushed.push(reference);
                }
                log.line(format!("pushed {}", pushed.join(" and ")));
                pushed.swap_remove(0)
            }
        };

        ctx.set_status(BuildStatus::RollingOut).await;
        let store = &self.backend.store;
        let service = store
            .get_service_by_uuid(service.uuid)
            .await
            .map_err(|e| BuildFailure::new(format!("rolling-out failed: {e}")))?
            .ok_or_else(|| {
                BuildFailure::new("rolling-out failed: the service was deleted during the build")
            })?;
        let serving = store
            .serving_revision(service.uuid)
            .await
            .map_err(|e| BuildFailure::new(format!("rolling-out failed: {e}")))?;
        // A built revision is delivered to like the one it replaces.
        let (mode, probe_path) = serving
            .as_ref()
            .map(|r| (r.mode, r.probe_path.clone()))
            .unwrap_or((DeliveryMode::Server, None));
        let origin = BuildOrigin {
            commit: commit.as_ref().map(|c| c.as_str().to_owned()),
            branch,
            trigger_id: job.trigger.as_ref().map(|t| t.id().to_owned()),
            build_id: Some(ctx.id().to_owned()),
            image_id: Some(built.id.clone()),
        };
        let candidate = store
            .insert_candidate_revision(
                &service,
                &NewRevision {
                    source: RevisionSource::Image(image.clone()),
                    mode,
                    probe_path,
                },
                &origin,
                SystemTime::now(),
            )
            .await
            .map_err(|e| BuildFailure::new(format!("rolling-out failed: {e}")))?;
        if let Ok(Some(mut record)) = store.get_build(ctx.id()).await {
            record.revision = Some(candidate.name.clone());
            record.image = Some(image.clone());
            let _ = store.update_build(&record).await;
        }
        log.line(format!(
            "starting one instance of {} to check that it becomes ready within {}s",
            candidate.name,
            service.scaling.wake_timeout.as_secs_f64()
        ));
        if let Err(e) = self.backend.hooks.try_revision(&service, &candidate).await {
            let _ = store
                .set_revision_state(&candidate.name, RevisionState::Failed)
                .await;
            for line in e.lines() {
                log.line(line);
            }
            let still = serving
                .map(|r| format!("{} still serves", r.name))
                .unwrap_or_else(|| "no revision serves yet".into());
            return Err(BuildFailure::new(format!(
                "rolling-out failed: revision {} did not become ready, so it does not serve ({still}): {e}",
                candidate.name
            )));
        }
        let routed = async {
            store
                .set_revision_state(&candidate.name, RevisionState::Ready)
                .await?;
            let mut routing = store.routing(service.uuid).await?;
            routing.serving = Some(candidate.name.clone());
            routing.traffic.clear();
            store.set_routing(service.uuid, &routing).await
        };
        routed
            .await
            .map_err(|e| BuildFailure::new(format!("rolling-out failed: {e}")))?;
        self.backend.hooks.services_changed();
        log.line(format!("revision {} serves", candidate.name));
        tracing::info!(build = %ctx.id(), revision = %candidate.name, "built revision serves");
        Ok(())
    }
}

/// Records status changes and reports them to GitHub.
struct StoreSink {
    backend: Backend,
    reporter: StatusReporter,
    key: Arc<SecretsKey>,
    webhook_url: String,
}

#[async_trait::async_trait]
impl StatusSink for StoreSink {
    async fn report(&self, update: StatusUpdate) {
        let store = &self.backend.store;
        let mut record = match store.get_build(&update.build).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(build = %update.build, error = %e, "cannot read a build");
                return;
            }
        };
        let now = SystemTime::now();
        record.status = update.status.as_str().into();
        if update.status.is_running() {
            record.step = Some(update.status.as_str().into());
            record.started_at.get_or_insert(now);
        }
        if update.status.is_terminal() {
            record.finished_at = Some(now);
            if update.status != BuildStatus::Succeeded {
                record.failure = update.detail.clone();
            }
        }
        if let Err(e) = store.update_build(&record).await {
            tracing::warn!(build = %update.build, error = %e, "cannot record a build's status");
        }
        tracing::info!(build = %update.build, status = %update.status, "build status");
        let state = match update.status {
            BuildStatus::Fetching => CommitState::Pending,
            BuildStatus::Succeeded => CommitState::Success,
            BuildStatus::Failed => CommitState::Failure,
            BuildStatus::Cancelled | BuildStatus::Superseded => CommitState::Error,
            _ => return,
        };
        self.commit_status(&record, state, update.detail.as_deref())
            .await;
    }
}

impl StoreSink {
    async fn commit_status(&self, record: &BuildRecord, state: CommitState, detail: Option<&str>) {
        let (Some(trigger_id), Some(commit)) = (&record.trigger_id, &record.commit) else {
            return;
        };
        let store = &self.backend.store;
        let Ok(Some(trigger)) = store.get_trigger(trigger_id).await else {
            return;
        };
        let Ok(Some(service)) = store.get_service_by_uuid(trigger.service_uuid).await else {
            return;
        };
        let Ok(trigger) = trigger_of(&self.key, &trigger, &service) else {
            return;
        };
        let Some(token) = trigger.github_token() else {
            return;
        };
        let Some(commit) = CommitId::parse(commit) else {
            return;
        };
        let repo = GithubRepo::from_url(trigger.repo_url(), "github.com").or_else(|| {
            // A local repository (`/…/OWNER/REPO.git`, `file://…`) stands
            // in for a GitHub one in tests and local development: its last
            // two path segments are `OWNER/REPO`.
            let url = trigger.repo_url();
            if !(url.starts_with('/') || url.starts_with("file://")) {
                return None;
            }
            let path = trigger
                .repo_url()
                .trim_end_matches('/')
                .trim_end_matches(".git");
            let mut parts = path.rsplit('/');
            let repo = parts.next()?;
            let owner = parts.next()?;
            GithubRepo::from_full_name(&format!("{owner}/{repo}"))
        });
        let Some(repo) = repo else {
            tracing::info!(build = %record.id, "the trigger's repository is not on GitHub: no commit status");
            return;
        };
        let description = match state {
            CommitState::Pending => "building".to_owned(),
            CommitState::Success => format!(
                "revision {} serves",
                record.revision.as_deref().unwrap_or("?")
            ),
            _ => detail
                .unwrap_or("failed")
                .lines()
                .next()
                .unwrap_or("")
                .to_owned(),
        };
        let status = CommitStatus {
            state,
            context: trigger.status_context(),
            target_url: Some(format!("{}/builds/{}", self.webhook_url, record.id)),
            description: Some(description),
        };
        if let Err(e) = self
            .reporter
            .set_status(&repo, &commit, token, &status)
            .await
        {
            tracing::warn!(build = %record.id, error = %e, "cannot set the commit status");
        }
    }
}

/// The `Builds` API.
#[derive(Clone)]
pub struct BuildsApi {
    builder: Builder,
}

impl BuildsApi {
    pub fn new(builder: Builder) -> Self {
        Self { builder }
    }

    fn backend(&self) -> &Backend {
        self.builder.backend()
    }

    /// The build and its service, or NOT_FOUND.
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
    } = b;
    pb::Build {
        id: id.clone(),
        project: service.project.to_string(),
        service: service.name.to_string(),
        trigger: trigger_id.clone().unwrap_or_default(),
        status: status.clone(),
        step: step.clone().unwrap_or_default(),
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
        let caller = self
            .backend()
            .authorize(&request, "ListBuilds", Permission::BuildsList, &resource)
            .await?;
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
            if !self.backend().allowed(
                &caller,
                Permission::BuildsList,
                &resource_of(&service.project, &service.name),
            ) {
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
            .authorize_lookup(
                &request,
                "GetBuild",
                Permission::BuildsGet,
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
        let (caller, (build, service)) = self
            .backend()
            .authorize_lookup(
                &request,
                "CancelBuild",
                Permission::BuildsCancel,
                self.find(&request.get_ref().id).await,
                |(_, service)| Some(service),
            )
            .await?;
        if is_terminal(&build.status) {
            return Err(ApiError::FailedPrecondition(format!(
                "build `{}` is already {}; only queued or running builds can be cancelled",
                build.id, build.status
            ))
            .into());
        }
        self.builder
            .inner
            .queue
            .cancel(&build.id)
            .await
            .map_err(|e| ApiError::FailedPrecondition(format!("build `{}`: {e}", build.id)))?;
        // The queue reports `cancelled` once the build stopped.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
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
                if is_terminal(&latest.status) {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.backend()
            .changed(
                &caller,
                "CancelBuild",
                &resource_of(&service.project, &service.name).to_string(),
                Permission::BuildsCancel,
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
        let caller = self
            .backend()
            .authorize(&request, "SubmitBuild", Permission::BuildsCreate, &resource)
            .await?;
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
        let id = self
            .builder
            .start_build(BuildJob {
                service: service.clone(),
                trigger: None,
                source: BuildSource::Dir { path, dockerfile },
            })
            .await?;
        self.backend()
            .changed(
                &caller,
                "SubmitBuild",
                &resource.to_string(),
                Permission::BuildsCreate,
                serde_json::Value::Null,
                serde_json::json!({ "build": id, "source": req.source_dir }),
            )
            .await;
        let (build, service) = self.find(&id).await?;
        Ok(Response::new(build_to_pb(&build, &service)))
    }

    type StreamBuildLogsStream = LogStream;

    async fn stream_build_logs(
        &self,
        request: Request<pb::StreamBuildLogsRequest>,
    ) -> Result<Response<Self::StreamBuildLogsStream>, Status> {
        let (_, (build, _service)) = self
            .backend()
            .authorize_lookup(
                &request,
                "StreamBuildLogs",
                Permission::BuildsGet,
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
                if is_terminal(&status) {
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
                            status,
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

/// Whether a stored status word is a terminal one.
fn is_terminal(status: &str) -> bool {
    status
        .parse::<BuildStatus>()
        .is_ok_and(BuildStatus::is_terminal)
}
