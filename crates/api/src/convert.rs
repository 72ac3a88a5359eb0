//! Conversions between domain types and protobuf messages. Each one
//! destructures its source completely, so a new field breaks the build here
//! instead of being silently dropped.

use std::time::Duration;

use rouse_core::build::Routing;
use rouse_core::{Scaling, Service};

use crate::error::ApiError;
use crate::pb;

pub use rouse_proto::duration_to_pb;

/// A protobuf duration as a std one; negative or malformed ones are the
/// caller's mistake and name the field.
pub fn duration_from_pb(field: &str, d: &prost_types::Duration) -> Result<Duration, ApiError> {
    Duration::try_from(*d).map_err(|_| {
        ApiError::InvalidArgument(format!(
            "{field} {}s {}ns is not a valid duration; it must not be negative",
            d.seconds, d.nanos
        ))
    })
}

pub fn scaling_to_pb(s: &Scaling) -> pb::Scaling {
    let Scaling {
        min_instances,
        max_instances,
        concurrency,
        idle_timeout,
        wake_timeout,
        request_timeout,
        freeze,
        frozen_timeout,
        max_retries,
    } = *s;
    pb::Scaling {
        min_instances,
        max_instances,
        concurrency,
        idle_timeout: Some(duration_to_pb(idle_timeout)),
        wake_timeout: Some(duration_to_pb(wake_timeout)),
        request_timeout: Some(duration_to_pb(request_timeout)),
        freeze,
        frozen_timeout: Some(duration_to_pb(frozen_timeout)),
        max_retries,
    }
}

/// A service with where its questions go: `serving` is the revision that
/// serves untagged questions (`RevisionStore::serving_revision`), `routing`
/// its tags and traffic split.
pub fn service_to_pb(s: &Service, serving: Option<&str>, routing: &Routing) -> pb::Service {
    // `routing.serving` is only what a rollout set; `serving` is what
    // actually serves (it falls back to the newest revision).
    let Routing {
        serving: _,
        tags,
        traffic,
    } = routing;
    let Service {
        project,
        name,
        uuid,
        status,
        scaling,
        env,
        node_selector,
        ingress,
        dead_letter_topic,
        generation,
        created_at,
        updated_at,
    } = s;
    let mut sruid = s.sruid();
    sruid.revision_tag = serving.map(str::to_owned);
    pb::Service {
        serving_revision: serving.unwrap_or_default().to_owned(),
        sruid: if serving.is_some() {
            sruid.to_string()
        } else {
            String::new()
        },
        tags: tags.iter().map(|(t, r)| (t.clone(), r.clone())).collect(),
        // SetTraffic names each revision once.
        traffic: traffic.iter().map(|(r, p)| (r.clone(), *p)).collect(),
        project: project.to_string(),
        name: name.to_string(),
        uuid: uuid.to_string(),
        topic: s.topic_id(),
        subscription: s.subscription_id(),
        sruid_namespace: sruid.namespace,
        sruid_name: sruid.name,
        context_root: s.context_root(),
        scaling: Some(scaling_to_pb(scaling)),
        env: env
            .as_map()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        node_selector: node_selector
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        ingress: ingress.to_string(),
        dead_letter_topic: dead_letter_topic.clone().unwrap_or_default(),
        // Set by the API, which knows the registry.
        image_repository: String::new(),
        status: status.to_string(),
        create_time: Some((*created_at).into()),
        update_time: Some((*updated_at).into()),
        generation: *generation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip_and_negative_is_refused() {
        let d = Duration::from_millis(1500);
        let pb = duration_to_pb(d);
        assert_eq!(duration_from_pb("idle_timeout", &pb).expect("valid"), d);
        let neg = prost_types::Duration {
            seconds: -1,
            nanos: 0,
        };
        let err = duration_from_pb("idle_timeout", &neg).expect_err("negative");
        assert!(err.to_string().contains("idle_timeout -1s"), "{err}");
    }
}
