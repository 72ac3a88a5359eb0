//! How an instance of a revision is started, for a worker or a readiness
//! trial: its spec (source, the service's environment, the Octue
//! variables), its secrets added at the last moment, and the runtime its
//! source needs.

use std::sync::Arc;

use rouse_core::Service;
use rouse_core::revision::{Revision, RevisionSource};
use rouse_runtime::{Instance, InstanceSpec, Runtime, Source};
use uuid::Uuid;

use crate::DispatcherConfig;

/// A service's secrets as environment variables, decrypted when an
/// instance starts. Owned here so the dispatcher does not depend on the
/// builder; values must never be logged.
#[async_trait::async_trait]
pub trait InstanceSecrets: Send + Sync + 'static {
    async fn env(
        &self,
        service_uuid: Uuid,
    ) -> Result<std::collections::BTreeMap<String, String>, String>;
}

/// The runtimes and the secrets instances start with.
pub struct Launcher {
    pub process: Arc<dyn Runtime>,
    pub docker: Option<Arc<dyn Runtime>>,
    pub secrets: Arc<dyn InstanceSecrets>,
}

impl Launcher {
    fn runtime_for(&self, source: &RevisionSource) -> Result<Arc<dyn Runtime>, String> {
        match source {
            RevisionSource::Command { .. } => Ok(self.process.clone()),
            RevisionSource::Image(image) => self.docker.clone().ok_or_else(|| {
                format!("image `{image}` needs the Docker runtime, but no Docker engine was reachable when the server started")
            }),
        }
    }

    /// Starts an instance of `source` from `spec`, with the service's
    /// secrets added to its environment (a secret wins over a plain
    /// variable of the same name). `Err` says why it did not start.
    pub async fn start(
        &self,
        service_uuid: Uuid,
        source: &RevisionSource,
        mut spec: InstanceSpec,
    ) -> Result<Instance, String> {
        let env = self
            .secrets
            .env(service_uuid)
            .await
            .map_err(|e| format!("cannot read the service's secrets: {e}"))?;
        spec.env.extend(env);
        let runtime = self.runtime_for(source)?;
        runtime.start(spec).await.map_err(|e| e.to_string())
    }
}

/// How an instance of `revision` is started: its source, the service's
/// environment and the Octue variables. Secrets are added when it starts
/// ([`Launcher::start`]), so that they never sit in a spec for long.
pub(crate) fn instance_spec(
    config: &DispatcherConfig,
    service: &Service,
    revision: &Revision,
    instance_id: &str,
    listen: bool,
    extra: Vec<String>,
) -> InstanceSpec {
    let source = match &revision.source {
        RevisionSource::Image(image) => Source::Image(image.clone()),
        RevisionSource::Command {
            program,
            args,
            workdir,
        } => Source::Command {
            program: program.clone(),
            args: args.clone(),
            workdir: workdir.clone(),
        },
    };
    let mut env = service.env.as_map().clone();
    let sruid = service.sruid();
    env.insert("CONTEXT_ROOT".into(), service.context_root());
    env.insert("ROUSE_SERVICE".into(), service.qualified_name());
    env.insert("ROUSE_INSTANCE".into(), instance_id.to_owned());
    env.insert("OCTUE_SERVICE_NAMESPACE".into(), sruid.namespace);
    env.insert("OCTUE_SERVICE_NAME".into(), sruid.name);
    env.insert("OCTUE_SERVICE_REVISION_TAG".into(), revision.name.clone());
    env.insert("GOOGLE_CLOUD_PROJECT".into(), config.pubsub_project.clone());
    env.insert(
        "TWINED_SERVICES_TOPIC_NAME".into(),
        config.network_topic.clone(),
    );
    if let Some(host) = &config.emulator_host {
        env.insert("PUBSUB_EMULATOR_HOST".into(), host.clone());
    }
    InstanceSpec {
        instance_id: instance_id.to_owned(),
        source,
        env,
        extra_args: extra,
        log_path: config
            .logs_dir
            .join(service.uuid.to_string())
            .join(format!("{instance_id}.log")),
        listen,
        node_selector: service.node_selector.clone(),
    }
}

/// How an instance of `revision` is found ready: its probe path answering
/// below 500 (over HTTP/1.1); else any HTTP answer (over HTTP/2 for a
/// revision whose instances speak h2c).
pub(crate) fn probe_of(revision: &Revision) -> rouse_runtime::Probe {
    match (&revision.probe_path, revision.http2) {
        (Some(path), _) => rouse_runtime::Probe::Http(path.clone()),
        (None, false) => rouse_runtime::Probe::Serving,
        (None, true) => rouse_runtime::Probe::ServingHttp2,
    }
}
