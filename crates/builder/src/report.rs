//! Where a build's status changes go: its record in the store, and the
//! commit's status on GitHub (pending at the start, success / failure /
//! error at the end) when its trigger has a token.

use std::sync::Arc;
use std::time::SystemTime;

use rouse_secrets::SecretsKey;
use rouse_store::BuildRecord;

use crate::builder::{BuilderStore, trigger_of};
use crate::github::{CommitState, CommitStatus, GithubRepo, StatusReporter};
use crate::queue::{StatusSink, StatusUpdate};
use crate::{BuildStatus, CommitId};

pub(crate) struct Recorder {
    pub store: Arc<dyn BuilderStore>,
    pub reporter: StatusReporter,
    pub key: Arc<SecretsKey>,
    pub webhook_url: String,
    pub metrics: Arc<crate::metrics::BuildMetrics>,
}

#[async_trait::async_trait]
impl StatusSink for Recorder {
    async fn report(&self, update: StatusUpdate) {
        let store = &self.store;
        let mut record = match store.get_build(&update.build).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(build = %update.build, error = %e, "cannot read a build");
                return;
            }
        };
        self.metrics
            .moved(&update.build, update.status, record.created_at);
        let now = SystemTime::now();
        record.status = update.status;
        if update.status.is_running() {
            record.step = Some(update.status);
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

impl Recorder {
    async fn commit_status(&self, record: &BuildRecord, state: CommitState, detail: Option<&str>) {
        let (Some(trigger_id), Some(commit)) = (&record.trigger_id, &record.commit) else {
            return;
        };
        let store = &self.store;
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
            let path = url.trim_end_matches('/').trim_end_matches(".git");
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
