//! The REST subset of Google's Pub/Sub API (`/v1/projects/...`), as the Rust
//! admin clients and emulator-style health checks use it. Bodies are proto3
//! JSON (camelCase fields, `"10s"` durations, base64 bytes), mapped through
//! the compiled descriptors so every field reads and writes exactly as
//! Google's does; unknown fields are ignored, as Google ignores them. Errors
//! are Google's JSON error shape.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prost::Message as _;
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage};

use crate::broker::Broker;
use crate::error::BrokerError;
use crate::pb;

/// How long a REST `:pull` waits for a message.
const PULL_WAIT: Duration = Duration::from_secs(10);

fn pool() -> Result<&'static DescriptorPool, BrokerError> {
    static POOL: OnceLock<Option<DescriptorPool>> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(pb::DESCRIPTORS).ok())
        .as_ref()
        .ok_or_else(|| BrokerError::Internal("the Pub/Sub descriptors do not decode".into()))
}

/// Reads a proto3 JSON body as message `T` (named `google.pubsub.v1.<kind>`).
fn from_json<T: prost::Message + Default>(kind: &str, body: &[u8]) -> Result<T, BrokerError> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    let descriptor = pool()?
        .get_message_by_name(&format!("google.pubsub.v1.{kind}"))
        .ok_or_else(|| BrokerError::Internal(format!("no descriptor for {kind}")))?;
    let mut de = serde_json::Deserializer::from_slice(body);
    let dynamic = DynamicMessage::deserialize_with_options(
        descriptor,
        &mut de,
        &DeserializeOptions::new().deny_unknown_fields(false),
    )
    .map_err(|e| BrokerError::InvalidArgument(format!("Invalid JSON payload for {kind}: {e}")))?;
    T::decode(dynamic.encode_to_vec().as_slice())
        .map_err(|e| BrokerError::Internal(format!("cannot convert {kind}: {e}")))
}

/// Writes message `T` as proto3 JSON.
fn to_json<T: prost::Message>(kind: &str, message: &T) -> Result<serde_json::Value, BrokerError> {
    let descriptor = pool()?
        .get_message_by_name(&format!("google.pubsub.v1.{kind}"))
        .ok_or_else(|| BrokerError::Internal(format!("no descriptor for {kind}")))?;
    let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
        .map_err(|e| BrokerError::Internal(format!("cannot convert {kind}: {e}")))?;
    serde_json::to_value(&dynamic)
        .map_err(|e| BrokerError::Internal(format!("cannot write {kind} as JSON: {e}")))
}

/// Google's JSON error: `{"error": {"code": 404, "message": …, "status": "NOT_FOUND"}}`.
struct Failure(BrokerError);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let (status, word) = match &self.0 {
            BrokerError::NotFound { .. } => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            BrokerError::AlreadyExists { .. } => (StatusCode::CONFLICT, "ALREADY_EXISTS"),
            BrokerError::InvalidArgument(_) => (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT"),
            BrokerError::FailedPrecondition(_) => (StatusCode::BAD_REQUEST, "FAILED_PRECONDITION"),
            BrokerError::Unimplemented(_) => (StatusCode::NOT_IMPLEMENTED, "UNIMPLEMENTED"),
            BrokerError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
        };
        let body = serde_json::json!({
            "error": { "code": status.as_u16(), "message": self.0.to_string(), "status": word }
        });
        (status, Json(body)).into_response()
    }
}

impl From<BrokerError> for Failure {
    fn from(e: BrokerError) -> Self {
        Self(e)
    }
}

/// A JSON body (axum's own `Json` is behind a feature this needs nothing else of).
struct Json(serde_json::Value);

impl IntoResponse for Json {
    fn into_response(self) -> Response {
        (
            [(header::CONTENT_TYPE, "application/json")],
            self.0.to_string(),
        )
            .into_response()
    }
}

type Answer = Result<Json, Failure>;

fn ok<T: prost::Message>(kind: &str, message: &T) -> Answer {
    Ok(Json(to_json(kind, message)?))
}

fn empty() -> Answer {
    Ok(Json(serde_json::json!({})))
}

/// `pageSize` and `pageToken` from a query string.
#[derive(Debug, Default)]
struct Paging {
    page_size: i32,
    page_token: String,
}

impl Paging {
    fn parse(query: Option<&str>) -> Result<Self, BrokerError> {
        let mut paging = Self::default();
        for pair in query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "pageSize" | "page_size" => {
                    paging.page_size = value.parse().map_err(|_| {
                        BrokerError::InvalidArgument(format!(
                            "Invalid pageSize `{value}`: a whole number"
                        ))
                    })?;
                }
                "pageToken" | "page_token" => paging.page_token = percent_decode(value),
                _ => {}
            }
        }
        Ok(paging)
    }
}

/// Undoes `%XX` escapes (page tokens are resource names, so `/` arrives as `%2F`).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The REST routes, under `/v1/`.
pub fn router(broker: Broker) -> Router {
    Router::new()
        .route("/v1/{*path}", axum::routing::any(dispatch))
        .with_state(Arc::new(broker))
}

async fn dispatch(
    State(broker): State<Arc<Broker>>,
    method: Method,
    Path(path): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Answer {
    let paging = Paging::parse(query.as_deref())?;
    let (resource, verb) = match path.rsplit_once(':') {
        Some((r, v)) if !v.contains('/') => (r.to_owned(), Some(v.to_owned())),
        _ => (path.clone(), None),
    };
    let parts: Vec<&str> = resource.split('/').collect();
    let b = broker.as_ref();
    match (parts.as_slice(), method.as_str(), verb.as_deref()) {
        (["projects", _, "topics"], "GET", None) => {
            let (topics, next_page_token) =
                b.list_topics(&parts[..2].join("/"), paging.page_size, &paging.page_token)?;
            ok(
                "ListTopicsResponse",
                &pb::ListTopicsResponse {
                    topics,
                    next_page_token,
                },
            )
        }
        (["projects", _, "topics", _], "PUT", None) => {
            let mut topic: pb::Topic = from_json("Topic", &body)?;
            topic.name = resource.clone();
            ok("Topic", &b.create_topic(topic).await?)
        }
        (["projects", _, "topics", _], "GET", None) => ok("Topic", &b.get_topic(&resource)?),
        (["projects", _, "topics", _], "PATCH", None) => {
            let req: pb::UpdateTopicRequest = from_json("UpdateTopicRequest", &body)?;
            let mut topic = req.topic.unwrap_or_default();
            topic.name = resource.clone();
            let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
            ok("Topic", &b.update_topic(topic, &paths).await?)
        }
        (["projects", _, "topics", _], "DELETE", None) => {
            b.delete_topic(&resource).await?;
            empty()
        }
        (["projects", _, "topics", _], "POST", Some("publish")) => {
            let req: pb::PublishRequest = from_json("PublishRequest", &body)?;
            let message_ids = b.publish(&resource, req.messages).await?;
            ok("PublishResponse", &pb::PublishResponse { message_ids })
        }
        (["projects", _, "topics", _, "subscriptions"], "GET", None) => {
            let topic = parts[..4].join("/");
            let (subscriptions, next_page_token) =
                b.list_topic_subscriptions(&topic, paging.page_size, &paging.page_token)?;
            ok(
                "ListTopicSubscriptionsResponse",
                &pb::ListTopicSubscriptionsResponse {
                    subscriptions,
                    next_page_token,
                },
            )
        }
        (["projects", _, "subscriptions"], "GET", None) => {
            let (subscriptions, next_page_token) =
                b.list_subscriptions(&parts[..2].join("/"), paging.page_size, &paging.page_token)?;
            ok(
                "ListSubscriptionsResponse",
                &pb::ListSubscriptionsResponse {
                    subscriptions,
                    next_page_token,
                },
            )
        }
        (["projects", _, "subscriptions", _], "PUT", None) => {
            let mut sub: pb::Subscription = from_json("Subscription", &body)?;
            sub.name = resource.clone();
            ok("Subscription", &b.create_subscription(sub).await?)
        }
        (["projects", _, "subscriptions", _], "GET", None) => {
            ok("Subscription", &b.get_subscription(&resource)?)
        }
        (["projects", _, "subscriptions", _], "PATCH", None) => {
            let req: pb::UpdateSubscriptionRequest = from_json("UpdateSubscriptionRequest", &body)?;
            let mut sub = req.subscription.unwrap_or_default();
            sub.name = resource.clone();
            let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
            ok("Subscription", &b.update_subscription(sub, &paths).await?)
        }
        (["projects", _, "subscriptions", _], "DELETE", None) => {
            b.delete_subscription(&resource).await?;
            empty()
        }
        (["projects", _, "subscriptions", _], "POST", Some(verb)) => {
            subscription_verb(b, &resource, verb, &body).await
        }
        _ => Err(Failure(BrokerError::NotFound {
            kind: "REST method",
            name: path.clone(),
            full: format!("{method} /v1/{path}"),
        })),
    }
}

async fn subscription_verb(b: &Broker, sub: &str, verb: &str, body: &[u8]) -> Answer {
    match verb {
        "pull" => {
            let req: pb::PullRequest = from_json("PullRequest", body)?;
            #[allow(deprecated)]
            let wait = if req.return_immediately {
                Duration::ZERO
            } else {
                PULL_WAIT
            };
            let received_messages = b.pull(sub, req.max_messages, wait).await?;
            ok("PullResponse", &pb::PullResponse { received_messages })
        }
        "acknowledge" => {
            let req: pb::AcknowledgeRequest = from_json("AcknowledgeRequest", body)?;
            b.acknowledge(sub, &req.ack_ids).await?;
            empty()
        }
        "modifyAckDeadline" => {
            let req: pb::ModifyAckDeadlineRequest = from_json("ModifyAckDeadlineRequest", body)?;
            b.modify_ack_deadline(sub, &req.ack_ids, req.ack_deadline_seconds)
                .await?;
            empty()
        }
        "modifyPushConfig" => {
            let req: pb::ModifyPushConfigRequest = from_json("ModifyPushConfigRequest", body)?;
            b.modify_push_config(sub, req.push_config).await?;
            empty()
        }
        "seek" => {
            let req: pb::SeekRequest = from_json("SeekRequest", body)?;
            match req.target {
                Some(pb::seek_request::Target::Time(t)) => {
                    let time = std::time::SystemTime::try_from(t).map_err(|e| {
                        BrokerError::InvalidArgument(format!("Invalid seek time: {e}"))
                    })?;
                    b.seek(sub, time).await?;
                    empty()
                }
                _ => Err(Failure(BrokerError::Unimplemented(
                    "seeking to a snapshot is not supported by Rouse's embedded broker; seek to a time".into(),
                ))),
            }
        }
        other => Err(Failure(BrokerError::NotFound {
            kind: "REST method",
            name: other.to_owned(),
            full: format!("POST /v1/{sub}:{other}"),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_reads_and_writes_as_google_maps_it() {
        let sub: pb::Subscription = from_json(
            "Subscription",
            br#"{"topic":"projects/p/topics/t","ackDeadlineSeconds":20,
                "messageRetentionDuration":"600s","filter":"attributes:x",
                "deadLetterPolicy":{"deadLetterTopic":"projects/p/topics/d","maxDeliveryAttempts":5},
                "someFutureField":true}"#,
        )
        .expect("a subscription");
        assert_eq!(sub.ack_deadline_seconds, 20);
        assert_eq!(
            sub.message_retention_duration,
            Some(prost_types::Duration {
                seconds: 600,
                nanos: 0
            })
        );
        let json = to_json("Subscription", &sub).expect("json");
        assert_eq!(json["ackDeadlineSeconds"], 20);
        assert_eq!(json["messageRetentionDuration"], "600s");
        assert_eq!(json["deadLetterPolicy"]["maxDeliveryAttempts"], 5);
        let err = from_json::<pb::Subscription>("Subscription", b"{\"ackDeadlineSeconds\":\"x\"")
            .expect_err("malformed");
        assert!(err.to_string().contains("Invalid JSON payload"), "{err}");
    }
}
