//! The Cloud Run runtime: Rouse decides when a question runs and records
//! it; Cloud Run runs the containers.
//!
//! - A **job-mode** revision becomes one Cloud Run Job (created on first
//!   use, no retries: a question runs at most once per `retry_count`). Each
//!   question is one execution of it, its arguments and environment given
//!   as overrides, so a run may last far beyond a Pub/Sub ack deadline. The
//!   execution is polled until it ends; cancelling the question cancels it.
//! - A **server-mode** revision becomes one private Cloud Run service
//!   (created on first use, reused by every instance Rouse wakes; Cloud Run
//!   scales it, to zero as well). Questions are POSTed to its URL with an ID
//!   token for that URL from the metadata server, so the permission check
//!   and the records stay in Rouse.
//!
//! Names are derived from the Rouse service and a digest of what the
//! instance runs (image, arguments, environment), so that every dispatcher
//! finds the same job or service, and a changed secret makes a new one.
//!
//! The Admin API is Google's unless `endpoint` names another; a plain
//! `http://` endpoint (a local stand-in) is called without credentials.
//! Logs are in Cloud Logging, not on this machine: the instance's log file
//! says where they are, and a plain job (one that does not publish its own
//! result, as an Octue job does) answers with its exit status only.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use google_cloud_auth::credentials::idtoken::{self, IDTokenCredentials};
use google_cloud_gax::error::rpc::Code;
use google_cloud_lro::{Poller, PollingResult};
use google_cloud_run_v2::client::{Executions, Jobs, Services};
use google_cloud_run_v2::model::run_job_request::Overrides;
use google_cloud_run_v2::model::run_job_request::overrides::ContainerOverride;
use google_cloud_run_v2::model::{
    Container, ContainerPort, EnvVar, Execution, ExecutionTemplate, IngressTraffic, Job,
    RevisionTemplate, Service, TaskTemplate,
};
use rouse_runtime::{
    CONTAINER_PORT, ExitInfo, Instance, InstanceSpec, Remote, Runtime, RuntimeError, Source,
};
use tokio::sync::watch;

/// Where and how to reach Cloud Run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudRunConfig {
    /// The Google Cloud project the jobs and services are made in.
    pub project: String,
    /// Its region (`europe-west1`).
    pub region: String,
    /// The Admin API; `None` is Google's (`https://run.googleapis.com`).
    pub endpoint: Option<String>,
    /// How often a running execution is looked at.
    pub poll: Duration,
}

impl CloudRunConfig {
    /// The default poll interval: an execution's end is noticed within it.
    pub const DEFAULT_POLL: Duration = Duration::from_secs(1);
}

/// The task timeout given to jobs: Cloud Run's longest. Rouse's own
/// request timeout ends a question earlier (by cancelling its execution).
const TASK_TIMEOUT_SECS: i64 = 24 * 60 * 60;
/// Consecutive failed looks at an execution after which it is cancelled
/// and the question given up.
const POLL_ERRORS: u32 = 10;
/// The longest Cloud Run service id (job ids may be longer).
const MAX_ID: usize = 49;
/// The name of the platform in errors.
const PLATFORM: &str = "Cloud Run";

/// Starts instances on Cloud Run.
pub struct CloudRunRuntime {
    parent: String,
    poll: Duration,
    jobs: Jobs,
    executions: Executions,
    services: Services,
    /// Jobs known to exist.
    known_jobs: Mutex<HashSet<String>>,
    /// Services known to serve, by name: their URL and ID tokens for it.
    served: tokio::sync::Mutex<HashMap<String, Arc<Served>>>,
}

impl std::fmt::Debug for CloudRunRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudRunRuntime")
            .field("parent", &self.parent)
            .finish_non_exhaustive()
    }
}

struct Served {
    url: String,
    tokens: IDTokenCredentials,
}

fn failed(action: &'static str, target: &str, reason: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Platform {
        platform: PLATFORM,
        action,
        target: target.to_owned(),
        reason: reason.to_string(),
    }
}

impl CloudRunRuntime {
    /// Clients for the Admin API; nothing is called yet.
    pub async fn connect(config: &CloudRunConfig) -> Result<Self, String> {
        for (what, value) in [("project", &config.project), ("region", &config.region)] {
            if value.is_empty() || value.contains('/') {
                return Err(format!(
                    "Cloud Run {what} `{value}` is not usable: give a {what} id such as {}",
                    if what == "project" {
                        "`my-project`"
                    } else {
                        "`europe-west1`"
                    }
                ));
            }
        }
        let endpoint = config.endpoint.clone();
        let local = endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"));
        macro_rules! client {
            ($client:ty) => {{
                let mut builder = <$client>::builder();
                if let Some(endpoint) = &endpoint {
                    builder = builder.with_endpoint(endpoint);
                }
                if local {
                    builder = builder.with_credentials(
                        google_cloud_auth::credentials::anonymous::Builder::new().build(),
                    );
                }
                builder
                    .build()
                    .await
                    .map_err(|e| format!("cannot make a Cloud Run client: {e}"))?
            }};
        }
        Ok(Self {
            parent: format!("projects/{}/locations/{}", config.project, config.region),
            poll: config.poll,
            jobs: client!(Jobs),
            executions: client!(Executions),
            services: client!(Services),
            known_jobs: Mutex::new(HashSet::new()),
            served: tokio::sync::Mutex::new(HashMap::new()),
        })
    }

    /// `projects/…/locations/…`.
    pub fn parent(&self) -> &str {
        &self.parent
    }

    /// The job for `image`, made if it is not known to exist.
    async fn job(&self, id: &str, image: &str) -> Result<String, RuntimeError> {
        let name = format!("{}/jobs/{id}", self.parent);
        if self.lock_jobs().contains(&name) {
            return Ok(name);
        }
        let job = Job::new().set_template(
            ExecutionTemplate::new().set_task_count(1).set_template(
                TaskTemplate::new()
                    .set_containers([Container::new().set_image(image)])
                    .set_max_retries(0)
                    .set_timeout(google_cloud_wkt::Duration::clamp(TASK_TIMEOUT_SECS, 0)),
            ),
        );
        let made = self
            .jobs
            .create_job()
            .set_parent(&self.parent)
            .set_job_id(id)
            .set_job(job)
            .poller()
            .until_done()
            .await;
        match made {
            Ok(_) => tracing::info!(job = %name, image, "created a Cloud Run job"),
            Err(e) if code(&e) == Some(Code::AlreadyExists) => {}
            Err(e) => return Err(failed("create job", &name, e)),
        }
        self.lock_jobs().insert(name.clone());
        Ok(name)
    }

    fn lock_jobs(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.known_jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One execution of the revision's job for this question.
    async fn start_job(&self, spec: InstanceSpec, image: &str) -> Result<Instance, RuntimeError> {
        // The job holds only the image: the question's arguments and the
        // environment are the execution's overrides.
        let named = ["ROUSE_SERVICE", "OCTUE_SERVICE_REVISION_TAG"];
        let id = resource_id(
            &InstanceSpec {
                env: spec
                    .env
                    .iter()
                    .filter(|(k, _)| named.contains(&k.as_str()))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                extra_args: Vec::new(),
                ..spec.clone()
            },
            &[image],
        );
        let job = self.job(&id, image).await?;
        let overrides = Overrides::new().set_container_overrides([ContainerOverride::new()
            .set_args(spec.extra_args.clone())
            .set_env(env_vars(&spec.env))]);
        let mut poller = self
            .jobs
            .run_job()
            .set_name(&job)
            .set_overrides(overrides)
            .poller();
        // The first look starts the execution and names it.
        let (execution, ended) = match poller.poll().await {
            Some(PollingResult::InProgress(Some(e))) => (e.name, None),
            Some(PollingResult::Completed(Ok(e))) => (e.name.clone(), Some(exit_of(&e))),
            Some(PollingResult::Completed(Err(e)) | PollingResult::PollingError(e)) => {
                return Err(failed("run job", &job, e));
            }
            Some(PollingResult::InProgress(None)) | None => {
                return Err(failed("run job", &job, "the operation named no execution"));
            }
        };
        note(
            &spec,
            &format!("Cloud Run execution {execution}; its logs are in Cloud Logging"),
        );
        tracing::debug!(instance = %spec.instance_id, %execution, "started a Cloud Run execution");
        let (exit_tx, exit_rx) = watch::channel(ended.clone());
        let exit_tx = Arc::new(exit_tx);
        if ended.is_none() {
            let (exit_tx, poll, execution) = (exit_tx.clone(), self.poll, execution.clone());
            let executions = self.executions.clone();
            tokio::spawn(async move {
                let mut errors = 0;
                let exit = loop {
                    tokio::time::sleep(poll).await;
                    if exit_tx.borrow().is_some() {
                        return;
                    }
                    match poller.poll().await {
                        Some(PollingResult::InProgress(_)) => errors = 0,
                        Some(PollingResult::Completed(Ok(e))) => break exit_of(&e),
                        Some(PollingResult::Completed(Err(e))) => {
                            break lost(&execution, &e.to_string());
                        }
                        Some(PollingResult::PollingError(e)) => {
                            errors += 1;
                            tracing::warn!(%execution, error = %e, "cannot look at a Cloud Run execution");
                            if errors >= POLL_ERRORS {
                                cancel(&executions, &execution).await;
                                break lost(&execution, &e.to_string());
                            }
                        }
                        None => break lost(&execution, "its operation ended without a result"),
                    }
                };
                exit_tx.send_if_modified(|e| e.is_none() && e.replace(exit).is_none());
            });
        }
        let remote = Arc::new(JobRun {
            execution,
            executions: self.executions.clone(),
            exit: exit_tx,
        });
        let instance = Instance::remote(&spec.instance_id, false, spec.log_path, exit_rx, remote);
        instance.placed_on("cloudrun");
        Ok(instance)
    }

    /// The revision's service, made if it does not exist; a handle on it.
    async fn start_service(
        &self,
        spec: InstanceSpec,
        image: &str,
    ) -> Result<Instance, RuntimeError> {
        // Every instance shares the service: its id is in neither the
        // service's environment nor (see `resource_id`) its name.
        let mut env = spec.env.clone();
        env.remove("ROUSE_INSTANCE");
        let id = resource_id(&spec, &[image]);
        let name = format!("{}/services/{id}", self.parent);
        let served = self.serve(&name, &id, image, &spec, env).await?;
        note(
            &spec,
            &format!(
                "Cloud Run service {name} at {}; its logs are in Cloud Logging",
                served.url
            ),
        );
        let (exit_tx, exit_rx) = watch::channel(None);
        let remote = Arc::new(ServiceHandle {
            served,
            exit: Arc::new(exit_tx),
        });
        let instance = Instance::remote(&spec.instance_id, true, spec.log_path, exit_rx, remote);
        instance.placed_on("cloudrun");
        Ok(instance)
    }

    async fn serve(
        &self,
        name: &str,
        id: &str,
        image: &str,
        spec: &InstanceSpec,
        env: BTreeMap<String, String>,
    ) -> Result<Arc<Served>, RuntimeError> {
        // One lock for all: a service is made once, while the others wait.
        let mut served = self.served.lock().await;
        if let Some(s) = served.get(name) {
            return Ok(s.clone());
        }
        let service = match self.services.get_service().set_name(name).send().await {
            Ok(s) => s,
            Err(e) if code(&e) == Some(Code::NotFound) => {
                let container = Container::new()
                    .set_image(image)
                    .set_args(spec.extra_args.clone())
                    .set_env(env_vars(&env))
                    .set_ports(
                        [ContainerPort::new().set_container_port(i32::from(CONTAINER_PORT))],
                    );
                let made = self
                    .services
                    .create_service()
                    .set_parent(&self.parent)
                    .set_service_id(id)
                    .set_service(
                        Service::new()
                            .set_ingress(IngressTraffic::All)
                            .set_template(RevisionTemplate::new().set_containers([container])),
                    )
                    .poller()
                    .until_done()
                    .await;
                match made {
                    Ok(s) => {
                        tracing::info!(service = %name, image, url = %s.uri, "created a Cloud Run service");
                        s
                    }
                    Err(e) if code(&e) == Some(Code::AlreadyExists) => self
                        .services
                        .get_service()
                        .set_name(name)
                        .send()
                        .await
                        .map_err(|e| failed("read service", name, e))?,
                    Err(e) => return Err(failed("create service", name, e)),
                }
            }
            Err(e) => return Err(failed("read service", name, e)),
        };
        if service.uri.is_empty() {
            return Err(failed(
                "read service",
                name,
                "it has no URL yet (is it ready?)",
            ));
        }
        let tokens = idtoken::mds::Builder::new(service.uri.clone())
            .build()
            .map_err(|e| failed("get ID tokens for", &service.uri, e))?;
        let s = Arc::new(Served {
            url: format!("{}/", service.uri.trim_end_matches('/')),
            tokens,
        });
        served.insert(name.to_owned(), s.clone());
        Ok(s)
    }
}

#[async_trait::async_trait]
impl Runtime for CloudRunRuntime {
    fn kind(&self) -> &'static str {
        "cloudrun"
    }

    async fn start(&self, spec: InstanceSpec) -> Result<Instance, RuntimeError> {
        rouse_runtime::validate_instance_id(&spec.instance_id)?;
        let image = match &spec.source {
            Source::Image(image) => image.clone(),
            Source::Command { program, .. } => {
                return Err(RuntimeError::Unsupported {
                    runtime: "cloudrun",
                    what: format!("the command `{program}`: Cloud Run runs images"),
                });
            }
        };
        match spec.listen {
            false => self.start_job(spec, &image).await,
            true => self.start_service(spec, &image).await,
        }
    }
}

/// A running execution.
struct JobRun {
    execution: String,
    executions: Executions,
    exit: Arc<watch::Sender<Option<ExitInfo>>>,
}

#[async_trait::async_trait]
impl Remote for JobRun {
    fn url(&self) -> Option<String> {
        None
    }

    async fn bearer(&self) -> Result<Option<String>, String> {
        Ok(None)
    }

    async fn stop(&self) {
        if self.exit.borrow().is_some() {
            return;
        }
        cancel(&self.executions, &self.execution).await;
        self.exit.send_if_modified(|e| {
            e.is_none()
                && e.replace(ExitInfo {
                    code: None,
                    description: format!("was cancelled (Cloud Run execution {})", self.execution),
                })
                .is_none()
        });
    }

    fn abandon(self: Arc<Self>) {
        if self.exit.borrow().is_none() {
            tokio::spawn(async move { self.stop().await });
        }
    }
}

/// A handle on a service Cloud Run scales by itself.
struct ServiceHandle {
    served: Arc<Served>,
    exit: Arc<watch::Sender<Option<ExitInfo>>>,
}

#[async_trait::async_trait]
impl Remote for ServiceHandle {
    fn url(&self) -> Option<String> {
        Some(self.served.url.clone())
    }

    async fn bearer(&self) -> Result<Option<String>, String> {
        self.served
            .tokens
            .id_token()
            .await
            .map(Some)
            .map_err(|e| format!("cannot get an ID token for {}: {e}", self.served.url))
    }

    async fn stop(&self) {
        // Cloud Run scales the service to zero itself; only this handle ends.
        self.exit.send_if_modified(|e| {
            e.is_none()
                && e.replace(ExitInfo {
                    code: Some(0),
                    description: "was let go (Cloud Run scales the service itself)".into(),
                })
                .is_none()
        });
    }

    fn abandon(self: Arc<Self>) {}
}

async fn cancel(executions: &Executions, execution: &str) {
    let cancelled = executions
        .cancel_execution()
        .set_name(execution)
        .poller()
        .until_done()
        .await;
    match cancelled {
        Ok(_) => tracing::info!(%execution, "cancelled a Cloud Run execution"),
        Err(e) => tracing::warn!(%execution, error = %e, "cannot cancel a Cloud Run execution"),
    }
}

fn code(e: &google_cloud_gax::error::Error) -> Option<Code> {
    e.status().map(|s| s.code)
}

/// How an execution ended, as an exit.
fn exit_of(e: &Execution) -> ExitInfo {
    let completed = e
        .conditions
        .iter()
        .find(|c| c.r#type == "Completed")
        .map(|c| c.message.clone())
        .filter(|m| !m.is_empty());
    let detail = completed.map(|m| format!(": {m}")).unwrap_or_default();
    if e.succeeded_count > 0 && e.failed_count == 0 {
        ExitInfo {
            code: Some(0),
            description: format!("succeeded (Cloud Run execution {})", e.name),
        }
    } else if e.cancelled_count > 0 {
        ExitInfo {
            code: None,
            description: format!("was cancelled (Cloud Run execution {}){detail}", e.name),
        }
    } else {
        ExitInfo {
            code: Some(1),
            description: format!("failed on Cloud Run (execution {}){detail}", e.name),
        }
    }
}

fn lost(execution: &str, why: &str) -> ExitInfo {
    ExitInfo {
        code: None,
        description: format!("could not be followed on Cloud Run (execution {execution}): {why}"),
    }
}

fn env_vars(env: &BTreeMap<String, String>) -> Vec<EnvVar> {
    env.iter()
        .map(|(k, v)| EnvVar::new().set_name(k).set_value(v))
        .collect()
}

/// Appends a line to the instance's log file (its real logs are in Cloud
/// Logging).
fn note(spec: &InstanceSpec, line: &str) {
    use std::io::Write as _;
    if let Some(dir) = spec.log_path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log_path)
    {
        let _ = writeln!(f, "{line}");
    }
}

/// `rouse-<service>-<digest>`: a Cloud Run id (lowercase letters, digits,
/// hyphens, a letter first, at most 49 characters) naming the Rouse service
/// and what the instance runs.
fn resource_id(spec: &InstanceSpec, extra: &[&str]) -> String {
    let mut material = Vec::new();
    for part in extra {
        material.extend_from_slice(part.as_bytes());
        material.push(0);
    }
    for arg in &spec.extra_args {
        material.extend_from_slice(arg.as_bytes());
        material.push(0);
    }
    for (k, v) in &spec.env {
        if matches!(
            k.as_str(),
            "ROUSE_INSTANCE" | "ROUSE_QUESTION" | "ROUSE_QUESTION_ATTRIBUTES"
        ) {
            continue;
        }
        material.extend_from_slice(k.as_bytes());
        material.push(b'=');
        material.extend_from_slice(v.as_bytes());
        material.push(0);
    }
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &material);
    let hex: String = digest.as_ref()[..5]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let service = spec
        .env
        .get("ROUSE_SERVICE")
        .map(String::as_str)
        .unwrap_or("service");
    let mut name: String = service
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .collect();
    let room = MAX_ID - "rouse-".len() - 1 - hex.len();
    name.truncate(room);
    let name = name.trim_matches('-');
    format!("rouse-{name}-{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(service: &str, env: &[(&str, &str)]) -> InstanceSpec {
        let mut map: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        map.insert("ROUSE_SERVICE".into(), service.into());
        InstanceSpec {
            instance_id: "i".into(),
            source: Source::Image("img".into()),
            env: map,
            extra_args: Vec::new(),
            log_path: "/tmp/x.log".into(),
            listen: true,
            node_selector: BTreeMap::new(),
        }
    }

    #[test]
    fn ids_are_cloud_run_ids_that_change_with_what_runs() {
        let a = resource_id(&spec("p/echo_svc", &[("K", "1")]), &["img"]);
        assert!(a.starts_with("rouse-p-echo-svc-"), "{a}");
        assert!(a.len() <= MAX_ID);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
        // The same for every instance and question; another value, another id.
        let same = resource_id(
            &spec("p/echo_svc", &[("K", "1"), ("ROUSE_QUESTION", "{}")]),
            &["img"],
        );
        assert_eq!(a, same);
        assert_ne!(a, resource_id(&spec("p/echo_svc", &[("K", "2")]), &["img"]));
        assert_ne!(
            a,
            resource_id(&spec("p/echo_svc", &[("K", "1")]), &["img2"])
        );
        let long = resource_id(&spec(&format!("p/{}", "x".repeat(80)), &[]), &["img"]);
        assert!(long.len() <= MAX_ID, "{long}");
        assert!(!long.contains("--"), "{long}");
    }

    #[test]
    fn an_execution_ends_as_an_exit() {
        let mut e = Execution::new().set_name("projects/p/locations/l/jobs/j/executions/e");
        e.succeeded_count = 1;
        assert_eq!(exit_of(&e).code, Some(0));
        let mut e = Execution::new().set_name("e");
        e.failed_count = 1;
        e.conditions = vec![
            google_cloud_run_v2::model::Condition::new()
                .set_type("Completed")
                .set_message("Task failed: exit code 3"),
        ];
        let exit = exit_of(&e);
        assert_eq!(exit.code, Some(1));
        assert!(exit.description.contains("exit code 3"), "{exit:?}");
        let mut e = Execution::new().set_name("e");
        e.cancelled_count = 1;
        assert_eq!(exit_of(&e).code, None);
    }
}
