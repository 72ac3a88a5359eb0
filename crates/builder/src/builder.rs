//! The running builder: its queue, fed from the store.
//!
//! Every build is recorded `queued` first, by the webhook server here or by
//! the api's `SubmitBuild` in any process; the intake loop takes queued
//! records into the [`BuildQueue`] (at once after a notice from this
//! process, else within [`INTAKE_POLL`]), and stops those someone asked to
//! cancel. A full queue leaves the rest waiting in the store. At start,
//! builds a stopped run left running are marked failed (their candidate
//! revisions too, so no dispatcher tries them).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rouse_core::Service;
use rouse_core::build::RevisionState;
use rouse_secrets::{SealedValue, SecretsKey, trigger_secret_name};
use rouse_store::{
    BuildRecord, BuildStore, Changes, RevisionStore, RolloutStore, Store, StoreError,
    TriggerRecord, TriggerStore,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::git::{GitConfig, GitFetcher};
use crate::github::StatusReporter;
use crate::pipeline::{BuildJob, BuildSource, Pipeline, RegistryConfig};
use crate::queue::{QueueConfig, QueueError};
use crate::report::Recorder;
use crate::{BuildQueue, BuildStatus, CommitId, Trigger, TriggerSpec};

/// How often the store is read for queued builds and cancel requests when
/// no notice comes (the api in another process): a second is well inside
/// what a person waiting for a build notices.
pub const INTAKE_POLL: Duration = Duration::from_secs(1);
/// Unfinished builds one intake pass reads at most.
const INTAKE_BATCH: u32 = 1000;

/// Everything the builder's store must do: read services and their
/// revisions, keep triggers and builds, record candidates and route to them.
pub trait BuilderStore: Store + RevisionStore + TriggerStore + BuildStore + RolloutStore {}
impl<T: Store + RevisionStore + TriggerStore + BuildStore + RolloutStore> BuilderStore for T {}

/// Why the builder cannot do something.
#[derive(Debug, thiserror::Error)]
pub enum BuilderError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("trigger `{id}`: {reason}")]
    Trigger { id: String, reason: String },
    #[error("{0}")]
    Config(String),
}

/// Where and how the builder works.
#[derive(Debug, Clone)]
pub struct BuilderConfig {
    /// Git cache and exported sources.
    pub state_dir: PathBuf,
    pub github_api_url: String,
    /// Base URL the webhook server is reached at (`http://127.0.0.1:7071`).
    pub webhook_url: String,
    pub queue: QueueConfig,
    /// Where built images are pushed; `None` keeps them in the local engine.
    pub registry: Option<RegistryConfig>,
    /// A local image functions are built on (they run as processes
    /// without one, or while it or the engine is missing).
    pub function_base_image: Option<String>,
}

/// The builder: triggers' secrets, the queue and the pipeline.
#[derive(Clone)]
pub struct Builder {
    inner: Arc<Inner>,
}

struct Inner {
    /// Step durations and ends, served at the webhook port's `/metrics`.
    metrics: Arc<crate::metrics::BuildMetrics>,
    store: Arc<dyn BuilderStore>,
    key: Arc<SecretsKey>,
    changes: Changes,
    queue: BuildQueue<BuildJob>,
    /// Builds handed to the queue and not yet seen finished.
    taken: Mutex<HashSet<String>>,
}

impl Builder {
    /// What the builder counts (served at the webhook port's `/metrics`).
    pub fn metrics(&self) -> &crate::metrics::BuildMetrics {
        &self.inner.metrics
    }

    /// Marks builds a previous run left running as failed, prepares the
    /// pipeline and starts taking queued builds from the store. The handle
    /// completes once `shutdown` is cancelled and the running builds stopped.
    pub async fn start(
        store: Arc<dyn BuilderStore>,
        key: Arc<SecretsKey>,
        changes: Changes,
        config: BuilderConfig,
        shutdown: CancellationToken,
    ) -> Result<(Self, JoinHandle<()>), BuilderError> {
        let reporter = StatusReporter::new(&config.github_api_url).map_err(|e| {
            BuilderError::Config(format!(
                "{e}; set --github-api-url (ROUSE_GITHUB_API_URL) to e.g. https://api.github.com"
            ))
        })?;
        let pipeline = Arc::new(Pipeline {
            store: store.clone(),
            changes: changes.clone(),
            fetcher: GitFetcher::new(GitConfig::new(&config.state_dir)),
            registry: config.registry.clone(),
            function_envs: config.state_dir.join("function-envs"),
            function_base_image: config.function_base_image.clone(),
        });
        let metrics = Arc::new(crate::metrics::BuildMetrics::default());
        let sink = Arc::new(Recorder {
            store: store.clone(),
            reporter,
            key: key.clone(),
            webhook_url: config.webhook_url.clone(),
            metrics: metrics.clone(),
        });
        let queue = BuildQueue::new(config.queue.clone(), pipeline, sink)
            .map_err(|e| BuilderError::Config(e.to_string()))?;
        fail_interrupted(store.as_ref()).await?;
        let builder = Self {
            inner: Arc::new(Inner {
                store,
                key,
                changes,
                queue,
                taken: Mutex::new(HashSet::new()),
                metrics,
            }),
        };
        let intake = builder.clone();
        let handle = tokio::spawn(async move {
            let mut notices = intake.inner.changes.builds();
            loop {
                if let Err(e) = intake.take_queued().await {
                    tracing::warn!(error = %e, "cannot read queued builds");
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = rouse_store::changes::next(&mut notices, INTAKE_POLL) => {}
                }
            }
            intake.inner.queue.shutdown().await;
        });
        Ok((builder, handle))
    }

    pub fn store(&self) -> &Arc<dyn BuilderStore> {
        &self.inner.store
    }

    /// Every trigger, validated with its secrets opened, with its service.
    pub async fn triggers(&self) -> Result<Vec<(Trigger, Service)>, BuilderError> {
        let store = &self.inner.store;
        let records = store.list_triggers(None).await?;
        let mut out = Vec::with_capacity(records.len());
        for record in records {
            let Some(service) = store.get_service_by_uuid(record.service_uuid).await? else {
                continue;
            };
            match trigger_of(&self.inner.key, &record, &service) {
                Ok(t) => out.push((t, service)),
                Err(e) => tracing::warn!(trigger = %record.id, error = %e, "unusable trigger"),
            }
        }
        Ok(out)
    }

    /// Records a build `queued` for the intake to take; returns its id.
    pub async fn record(&self, job: &BuildJob) -> Result<String, BuilderError> {
        let record = queued_record(job);
        self.inner.store.insert_build(&record).await?;
        self.inner.changes.builds_changed();
        tracing::info!(build = %record.id, "build queued");
        Ok(record.id)
    }

    /// One intake pass: queued builds into the queue, cancel requests to it.
    async fn take_queued(&self) -> Result<(), BuilderError> {
        let store = &self.inner.store;
        let mut unfinished = store.list_builds(None, true, INTAKE_BATCH).await?;
        unfinished.reverse(); // oldest first
        let present: HashSet<&str> = unfinished.iter().map(|b| b.id.as_str()).collect();
        if let Ok(mut taken) = self.inner.taken.lock() {
            taken.retain(|id| present.contains(id.as_str()));
        }
        for build in &unfinished {
            let taken = self
                .inner
                .taken
                .lock()
                .map(|t| t.contains(&build.id))
                .unwrap_or(true);
            if build.cancel_requested {
                if taken {
                    // Reported `cancelled` by the queue once it stopped.
                    let _ = self.inner.queue.cancel(&build.id).await;
                } else if build.status == BuildStatus::Queued {
                    finish(
                        store.as_ref(),
                        build,
                        BuildStatus::Cancelled,
                        "cancelled while queued",
                    )
                    .await;
                }
                continue;
            }
            if taken || build.status != BuildStatus::Queued {
                continue;
            }
            let job = match self.job_of(build).await {
                Ok(job) => job,
                Err(why) => {
                    finish(store.as_ref(), build, BuildStatus::Failed, &why).await;
                    continue;
                }
            };
            let key = job.trigger.as_ref().map(|t| t.id().to_owned());
            match self.inner.queue.submit(build.id.clone(), key, job).await {
                Ok(_) => {
                    if let Ok(mut t) = self.inner.taken.lock() {
                        t.insert(build.id.clone());
                    }
                }
                // The rest wait in the store for room.
                Err(QueueError::Full { .. }) | Err(QueueError::Closed) => break,
                Err(e) => {
                    finish(
                        store.as_ref(),
                        build,
                        BuildStatus::Failed,
                        &format!("not queued: {e}"),
                    )
                    .await
                }
            }
        }
        Ok(())
    }

    /// What a queued record asks to build.
    async fn job_of(&self, build: &BuildRecord) -> Result<BuildJob, String> {
        let store = &self.inner.store;
        let service = store
            .get_service_by_uuid(build.service_uuid)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the service was deleted before the build started")?;
        if let Some(dir) = build.source.strip_prefix("function:") {
            return Ok(BuildJob {
                service,
                trigger: None,
                source: BuildSource::Function {
                    dir: PathBuf::from(dir),
                },
            });
        }
        if let Some(reference) = build.source.strip_prefix("image:") {
            return Ok(BuildJob {
                service,
                trigger: None,
                source: BuildSource::Image {
                    reference: reference.to_owned(),
                },
            });
        }
        if let Some(path) = build.source.strip_prefix("dir:") {
            return Ok(BuildJob {
                service,
                trigger: None,
                source: BuildSource::Dir {
                    path: PathBuf::from(path),
                    dockerfile: PathBuf::from(build.dockerfile.as_deref().unwrap_or("Dockerfile")),
                },
            });
        }
        let trigger = match &build.trigger_id {
            None => None,
            Some(id) => {
                let record = store
                    .get_trigger(id)
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| {
                        format!("trigger `{id}` was deleted before the build started")
                    })?;
                Some(trigger_of(&self.inner.key, &record, &service).map_err(|e| e.to_string())?)
            }
        };
        let commit = build
            .commit
            .as_deref()
            .and_then(CommitId::parse)
            .ok_or_else(|| format!("build `{}` names no commit to fetch", build.id))?;
        Ok(BuildJob {
            service,
            trigger,
            source: BuildSource::Git {
                url: build.source.clone(),
                commit,
                branch: build.branch.clone(),
            },
        })
    }
}

/// The `queued` record of a new build.
pub fn queued_record(job: &BuildJob) -> BuildRecord {
    let (source, commit, branch, dockerfile) = match &job.source {
        BuildSource::Git {
            url,
            commit,
            branch,
        } => (
            url.clone(),
            Some(commit.as_str().to_owned()),
            branch.clone(),
            None,
        ),
        BuildSource::Dir { path, dockerfile } => (
            format!("dir:{}", path.display()),
            None,
            None,
            Some(dockerfile.display().to_string()),
        ),
        BuildSource::Function { dir } => (format!("function:{}", dir.display()), None, None, None),
        BuildSource::Image { reference } => (format!("image:{reference}"), None, None, None),
    };
    BuildRecord {
        id: Uuid::new_v4().simple().to_string()[..16].to_owned(),
        service_uuid: job.service.uuid,
        trigger_id: job.trigger.as_ref().map(|t| t.id().to_owned()),
        status: BuildStatus::Queued,
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
        dockerfile,
        cancel_requested: false,
    }
}

/// Ends a build the queue never held.
async fn finish(store: &dyn BuilderStore, build: &BuildRecord, status: BuildStatus, why: &str) {
    let mut record = build.clone();
    record.status = status;
    record.failure = Some(why.to_owned());
    record.finished_at = Some(SystemTime::now());
    if let Err(e) = store.update_build(&record).await {
        tracing::warn!(build = %build.id, error = %e, "cannot record a build's end");
    }
}

/// Builds a stopped run left running (past `queued`) end `failed`, and their
/// candidate revisions with them, so the serving revision stays as it was.
async fn fail_interrupted(store: &dyn BuilderStore) -> Result<(), BuilderError> {
    let unfinished = store.list_builds(None, true, u32::MAX).await?;
    for mut build in unfinished {
        if build.status == BuildStatus::Queued {
            continue;
        }
        if let Some(revision) = &build.revision {
            store
                .set_revision_state(revision, RevisionState::Failed)
                .await?;
        }
        build.status = BuildStatus::Failed;
        build.failure = Some(
            "the builder stopped while the build ran; push again or run `rouse builds submit`"
                .into(),
        );
        build.finished_at = Some(SystemTime::now());
        store.update_build(&build).await?;
    }
    Ok(())
}

/// The trigger a stored record describes, its secrets opened.
pub fn trigger_of(
    key: &SecretsKey,
    record: &TriggerRecord,
    service: &Service,
) -> Result<Trigger, BuilderError> {
    let bad = |reason: String| BuilderError::Trigger {
        id: record.id.clone(),
        reason,
    };
    let open = |name: &str, sealed: &str| -> Result<String, BuilderError> {
        let sealed = SealedValue::from_text(sealed).map_err(|e| bad(e.to_string()))?;
        let value = key.open(name, &sealed).map_err(|e| bad(e.to_string()))?;
        value
            .expose_str()
            .map(str::to_owned)
            .ok_or_else(|| bad(format!("{name} is not UTF-8")))
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
    .map_err(|e| bad(e.to_string()))
}
