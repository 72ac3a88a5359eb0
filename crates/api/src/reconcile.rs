//! Start-up reconciliation: make Pub/Sub match the store.
//!
//! The store is the source of truth. At start the server ensures the network
//! topic, then every service's topic and dispatcher subscription: anything
//! missing (deleted behind Rouse's back, or lost with an emulator restart) is
//! recreated and logged; a service left `provisioning` by a crash is finished.

use std::time::SystemTime;

use rouse_core::ServiceStatus;
use rouse_pubsub::{Ensured, SubscriptionSpec};
use rouse_store::Store;

use crate::error::ApiError;
use crate::messaging::Messaging;

/// What reconciliation did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub services: usize,
    pub topics_recreated: usize,
    pub subscriptions_recreated: usize,
    /// Services that could not be reconciled, with the reason. They are retried
    /// at the next start; the others are not held up by them.
    pub failed: Vec<(String, String)>,
}

pub async fn reconcile(
    store: &dyn Store,
    messaging: &dyn Messaging,
    network_topic: &str,
) -> Result<Report, ApiError> {
    if messaging.ensure_topic(network_topic).await? == Ensured::Created {
        tracing::info!(topic = network_topic, "created the network topic");
    }
    let mut report = Report::default();
    for mut service in store.list_services(None).await? {
        report.services += 1;
        let name = service.qualified_name();
        let topic = service.topic_id();
        let result = async {
            let t = messaging.ensure_topic(&topic).await?;
            let s = messaging
                .ensure_subscription(
                    &service.subscription_id(),
                    &topic,
                    &SubscriptionSpec::dispatcher(),
                )
                .await?;
            Ok::<_, ApiError>((t, s))
        }
        .await;
        match result {
            Ok((t, s)) => {
                if t == Ensured::Created {
                    report.topics_recreated += 1;
                    tracing::warn!(service = %name, %topic, "topic was missing; recreated it");
                }
                if s != Ensured::Existed {
                    report.subscriptions_recreated += 1;
                    tracing::warn!(service = %name, subscription = %service.subscription_id(), "dispatcher subscription was missing or detached; recreated it");
                }
                if service.status == ServiceStatus::Provisioning {
                    service.status = ServiceStatus::Created;
                    service.updated_at = SystemTime::now();
                    store.update_service(&service).await?;
                    tracing::info!(service = %name, "finished provisioning interrupted by a restart");
                }
            }
            Err(e) => {
                tracing::error!(service = %name, error = %e, "could not reconcile the service's topic and subscription");
                report.failed.push((name, e.to_string()));
            }
        }
    }
    Ok(report)
}
