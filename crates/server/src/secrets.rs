//! A service's secrets opened for its instances: the dispatcher's
//! [`InstanceSecrets`], over the store and the platform's secrets key.

use std::collections::BTreeMap;
use std::sync::Arc;

use rouse_dispatcher::InstanceSecrets;
use rouse_secrets::{SealedValue, SecretsKey, sealed_name};
use rouse_store::SecretStore;
use uuid::Uuid;

pub struct ServiceSecrets {
    store: Arc<dyn SecretStore>,
    key: Arc<SecretsKey>,
}

impl ServiceSecrets {
    pub fn new(store: Arc<dyn SecretStore>, key: Arc<SecretsKey>) -> Self {
        Self { store, key }
    }
}

#[async_trait::async_trait]
impl InstanceSecrets for ServiceSecrets {
    async fn env(&self, service: Uuid) -> Result<BTreeMap<String, String>, String> {
        let sealed = self
            .store
            .sealed_secrets(service)
            .await
            .map_err(|e| e.to_string())?;
        let mut env = BTreeMap::new();
        for (name, text) in sealed {
            let value = SealedValue::from_text(&text)
                .and_then(|s| self.key.open(&sealed_name(service, &name), &s))
                .map_err(|e| e.to_string())?;
            let value = value
                .expose_str()
                .ok_or_else(|| format!("secret `{name}` is not UTF-8 text, so it cannot be an environment variable; set it again as text"))?
                .to_owned();
            env.insert(name, value);
        }
        Ok(env)
    }
}
