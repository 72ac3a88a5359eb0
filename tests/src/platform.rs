//! The platform started in this test's process ([`rouse_server::Platform`])
//! on port 0, for the middle of the test pyramid: the API handlers and the
//! dispatcher's workers against the real emulator, without a second
//! process. Clients are still the real `rouse` binary.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rouse_pubsub::PubSubConfig;
use rouse_server::{Config, Platform, Roles, Running, StoreLocation};

use crate::{Emulator, Output};

pub struct InProcess {
    running: Option<Running>,
    endpoint: String,
    owner_key: PathBuf,
    store_path: PathBuf,
}

impl InProcess {
    /// Every role, with its state in `data_dir`, on `emulator`.
    pub async fn start(emulator: &Emulator, data_dir: &Path) -> Self {
        let config = Config {
            roles: Roles::ALL,
            data_dir: data_dir.to_owned(),
            store: StoreLocation::Sqlite(data_dir.join("rouse.db")),
            api_listen: ([127, 0, 0, 1], 0).into(),
            webhook_listen: ([127, 0, 0, 1], 0).into(),
            ingress_listen: ([127, 0, 0, 1], 0).into(),
            ingress_tls: None,
            ingress_acme: None,
            ingress_http_listen: None,
            internal_networks: rouse_server::Network::default_internal(),
            ingress_limits: rouse_server::IngressLimits::default(),
            ingress_advertise: None,
            broker: None,
            pubsub: PubSubConfig {
                project: "rouse-local".into(),
                emulator_host: Some(emulator.host().into()),
                call_timeout: Duration::from_secs(10),
            },
            network_topic: "octue.services".into(),
            heartbeat_interval: Duration::from_secs(60),
            queue_capacity: 1000,
            audit_retention: None,
            // Nothing here reports commit statuses.
            github_api_url: "http://127.0.0.1:9".into(),
            secrets_key: data_dir.join("secrets.key"),
            registry: None,
            registry_credentials: None,
            function_base_image: None,
            owner_credentials: None,
            runtime: Default::default(),
        };
        let store_path = data_dir.join("rouse.db");
        let running = Platform::start(config).await.expect("the platform starts");
        let endpoint = format!("http://{}", running.api.expect("the api listens"));
        Self {
            running: Some(running),
            endpoint,
            owner_key: data_dir.join("owner-key.json"),
            store_path,
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The store file the platform uses (open it to look behind the API).
    pub fn store_path(&self) -> &Path {
        &self.store_path
    }

    /// Runs a client command as the owner, off the runtime's threads.
    pub async fn rouse(&self, args: &[&str]) -> Output {
        let (endpoint, key) = (self.endpoint.clone(), self.owner_key.clone());
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            crate::rouse_as(&endpoint, Some(&key), &args)
        })
        .await
        .expect("the client ran")
    }

    /// Stops every role within the drain deadline.
    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
    }
}
