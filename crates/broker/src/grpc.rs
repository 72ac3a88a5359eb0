//! `google.pubsub.v1.Publisher` and `Subscriber` over gRPC. Snapshots are
//! not kept, so their calls (and seeking to one) are UNIMPLEMENTED.

use std::pin::Pin;
use std::time::{Duration, Instant, SystemTime};

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::broker::{Broker, MAX_PULL, ack_deadline};
use crate::engine::{DEFAULT_STREAM_OUTSTANDING, MAX_ACK_DEADLINE, MIN_ACK_DEADLINE, Receiver};
use crate::error::BrokerError;
use crate::pb;
use crate::pb::publisher_server::Publisher;
use crate::pb::subscriber_server::Subscriber;
use crate::persist::lock;

/// A unary pull with no deadline of its own waits this long for a message.
const PULL_WAIT: Duration = Duration::from_secs(10);

/// Both services over one broker.
#[derive(Clone, Debug)]
pub struct Service {
    pub broker: Broker,
    pub shutdown: CancellationToken,
}

fn snapshots() -> Status {
    BrokerError::Unimplemented(
        "snapshots are not kept by Rouse's embedded broker; seek to a time instead".into(),
    )
    .into()
}

fn mask(mask: Option<prost_types::FieldMask>) -> Vec<String> {
    mask.map(|m| m.paths).unwrap_or_default()
}

#[tonic::async_trait]
impl Publisher for Service {
    async fn create_topic(
        &self,
        request: Request<pb::Topic>,
    ) -> Result<Response<pb::Topic>, Status> {
        Ok(Response::new(
            self.broker.create_topic(request.into_inner()).await?,
        ))
    }

    async fn update_topic(
        &self,
        request: Request<pb::UpdateTopicRequest>,
    ) -> Result<Response<pb::Topic>, Status> {
        let req = request.into_inner();
        let topic = req.topic.ok_or_else(|| {
            Status::invalid_argument(
                "UpdateTopicRequest.topic is missing; send the topic to update",
            )
        })?;
        Ok(Response::new(
            self.broker
                .update_topic(topic, &mask(req.update_mask))
                .await?,
        ))
    }

    async fn publish(
        &self,
        request: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        let req = request.into_inner();
        let message_ids = self.broker.publish(&req.topic, req.messages).await?;
        Ok(Response::new(pb::PublishResponse { message_ids }))
    }

    async fn get_topic(
        &self,
        request: Request<pb::GetTopicRequest>,
    ) -> Result<Response<pb::Topic>, Status> {
        Ok(Response::new(
            self.broker.get_topic(&request.into_inner().topic)?,
        ))
    }

    async fn list_topics(
        &self,
        request: Request<pb::ListTopicsRequest>,
    ) -> Result<Response<pb::ListTopicsResponse>, Status> {
        let req = request.into_inner();
        let (topics, next_page_token) =
            self.broker
                .list_topics(&req.project, req.page_size, &req.page_token)?;
        Ok(Response::new(pb::ListTopicsResponse {
            topics,
            next_page_token,
        }))
    }

    async fn list_topic_subscriptions(
        &self,
        request: Request<pb::ListTopicSubscriptionsRequest>,
    ) -> Result<Response<pb::ListTopicSubscriptionsResponse>, Status> {
        let req = request.into_inner();
        let (subscriptions, next_page_token) =
            self.broker
                .list_topic_subscriptions(&req.topic, req.page_size, &req.page_token)?;
        Ok(Response::new(pb::ListTopicSubscriptionsResponse {
            subscriptions,
            next_page_token,
        }))
    }

    async fn list_topic_snapshots(
        &self,
        request: Request<pb::ListTopicSnapshotsRequest>,
    ) -> Result<Response<pb::ListTopicSnapshotsResponse>, Status> {
        // No snapshots are kept, so a topic has none.
        self.broker.get_topic(&request.into_inner().topic)?;
        Ok(Response::new(pb::ListTopicSnapshotsResponse::default()))
    }

    async fn delete_topic(
        &self,
        request: Request<pb::DeleteTopicRequest>,
    ) -> Result<Response<()>, Status> {
        self.broker
            .delete_topic(&request.into_inner().topic)
            .await?;
        Ok(Response::new(()))
    }

    async fn detach_subscription(
        &self,
        _: Request<pb::DetachSubscriptionRequest>,
    ) -> Result<Response<pb::DetachSubscriptionResponse>, Status> {
        Err(BrokerError::Unimplemented(
            "detaching subscriptions is not supported by Rouse's embedded broker; delete the subscription instead".into(),
        )
        .into())
    }
}

type PullStream = Pin<Box<dyn Stream<Item = Result<pb::StreamingPullResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Subscriber for Service {
    async fn create_subscription(
        &self,
        request: Request<pb::Subscription>,
    ) -> Result<Response<pb::Subscription>, Status> {
        Ok(Response::new(
            self.broker
                .create_subscription(request.into_inner())
                .await?,
        ))
    }

    async fn get_subscription(
        &self,
        request: Request<pb::GetSubscriptionRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        Ok(Response::new(
            self.broker
                .get_subscription(&request.into_inner().subscription)?,
        ))
    }

    async fn update_subscription(
        &self,
        request: Request<pb::UpdateSubscriptionRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        let req = request.into_inner();
        let sub = req.subscription.ok_or_else(|| {
            Status::invalid_argument(
                "UpdateSubscriptionRequest.subscription is missing; send the subscription to update",
            )
        })?;
        Ok(Response::new(
            self.broker
                .update_subscription(sub, &mask(req.update_mask))
                .await?,
        ))
    }

    async fn list_subscriptions(
        &self,
        request: Request<pb::ListSubscriptionsRequest>,
    ) -> Result<Response<pb::ListSubscriptionsResponse>, Status> {
        let req = request.into_inner();
        let (subscriptions, next_page_token) =
            self.broker
                .list_subscriptions(&req.project, req.page_size, &req.page_token)?;
        Ok(Response::new(pb::ListSubscriptionsResponse {
            subscriptions,
            next_page_token,
        }))
    }

    async fn delete_subscription(
        &self,
        request: Request<pb::DeleteSubscriptionRequest>,
    ) -> Result<Response<()>, Status> {
        self.broker
            .delete_subscription(&request.into_inner().subscription)
            .await?;
        Ok(Response::new(()))
    }

    async fn modify_ack_deadline(
        &self,
        request: Request<pb::ModifyAckDeadlineRequest>,
    ) -> Result<Response<()>, Status> {
        let req = request.into_inner();
        self.broker
            .modify_ack_deadline(&req.subscription, &req.ack_ids, req.ack_deadline_seconds)
            .await?;
        Ok(Response::new(()))
    }

    async fn acknowledge(
        &self,
        request: Request<pb::AcknowledgeRequest>,
    ) -> Result<Response<()>, Status> {
        let req = request.into_inner();
        self.broker
            .acknowledge(&req.subscription, &req.ack_ids)
            .await?;
        Ok(Response::new(()))
    }

    async fn pull(
        &self,
        request: Request<pb::PullRequest>,
    ) -> Result<Response<pb::PullResponse>, Status> {
        // Wait within the caller's own deadline, if it sent one.
        let wait = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(grpc_timeout)
            .map_or(PULL_WAIT, |t| t.saturating_sub(Duration::from_millis(100)))
            .min(PULL_WAIT);
        let req = request.into_inner();
        #[allow(deprecated)]
        let wait = if req.return_immediately {
            Duration::ZERO
        } else {
            wait
        };
        let received_messages = self
            .broker
            .pull(&req.subscription, req.max_messages, wait)
            .await?;
        Ok(Response::new(pb::PullResponse { received_messages }))
    }

    type StreamingPullStream = PullStream;

    async fn streaming_pull(
        &self,
        request: Request<Streaming<pb::StreamingPullRequest>>,
    ) -> Result<Response<Self::StreamingPullStream>, Status> {
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("the stream ended before its first request"))?;
        if !(MIN_ACK_DEADLINE..=MAX_ACK_DEADLINE).contains(&first.stream_ack_deadline_seconds) {
            return Err(Status::invalid_argument(format!(
                "Invalid stream_ack_deadline_seconds {}: use {MIN_ACK_DEADLINE} to {MAX_ACK_DEADLINE}",
                first.stream_ack_deadline_seconds
            )));
        }
        let sub = first.subscription.clone();
        let ordering = self.broker.get_subscription(&sub)?.enable_message_ordering;
        apply_requests(&self.broker, &sub, &first).await?;
        let stream = Pull {
            broker: self.broker.clone(),
            id: self.broker.next_stream(),
            sub,
            ordering,
            deadline: ack_deadline(first.stream_ack_deadline_seconds),
            limits: (
                match first.max_outstanding_messages {
                    n if n <= 0 => DEFAULT_STREAM_OUTSTANDING,
                    n => n,
                },
                first.max_outstanding_bytes.max(0),
            ),
        };
        // Capacity 1: messages are leased just before they can be sent.
        let (tx, rx) = mpsc::channel(1);
        let ended = CancellationToken::new();
        tokio::spawn(read_requests(
            self.broker.clone(),
            stream.sub.clone(),
            inbound,
            ended.clone(),
        ));
        tokio::spawn(stream.run(tx, ended, self.shutdown.clone()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn modify_push_config(
        &self,
        request: Request<pb::ModifyPushConfigRequest>,
    ) -> Result<Response<()>, Status> {
        let req = request.into_inner();
        self.broker
            .modify_push_config(&req.subscription, req.push_config)
            .await?;
        Ok(Response::new(()))
    }

    async fn get_snapshot(
        &self,
        _: Request<pb::GetSnapshotRequest>,
    ) -> Result<Response<pb::Snapshot>, Status> {
        Err(snapshots())
    }

    async fn list_snapshots(
        &self,
        _: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        Ok(Response::new(pb::ListSnapshotsResponse::default()))
    }

    async fn create_snapshot(
        &self,
        _: Request<pb::CreateSnapshotRequest>,
    ) -> Result<Response<pb::Snapshot>, Status> {
        Err(snapshots())
    }

    async fn update_snapshot(
        &self,
        _: Request<pb::UpdateSnapshotRequest>,
    ) -> Result<Response<pb::Snapshot>, Status> {
        Err(snapshots())
    }

    async fn delete_snapshot(
        &self,
        _: Request<pb::DeleteSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        Err(snapshots())
    }

    async fn seek(
        &self,
        request: Request<pb::SeekRequest>,
    ) -> Result<Response<pb::SeekResponse>, Status> {
        let req = request.into_inner();
        match req.target {
            Some(pb::seek_request::Target::Time(t)) => {
                let time = SystemTime::try_from(t)
                    .map_err(|e| Status::invalid_argument(format!("Invalid seek time: {e}")))?;
                self.broker.seek(&req.subscription, time).await?;
                Ok(Response::new(pb::SeekResponse {}))
            }
            Some(pb::seek_request::Target::Snapshot(_)) => Err(snapshots()),
            None => Err(Status::invalid_argument(
                "SeekRequest names neither a time nor a snapshot; give a time",
            )),
        }
    }
}

/// Acknowledgements and deadline changes carried by a stream request.
async fn apply_requests(
    broker: &Broker,
    sub: &str,
    req: &pb::StreamingPullRequest,
) -> Result<(), BrokerError> {
    if !req.ack_ids.is_empty() {
        broker.acknowledge(sub, &req.ack_ids).await?;
    }
    if req.modify_deadline_seconds.len() != req.modify_deadline_ack_ids.len() {
        return Err(BrokerError::InvalidArgument(format!(
            "modify_deadline_seconds has {} entries and modify_deadline_ack_ids {}; they must pair up",
            req.modify_deadline_seconds.len(),
            req.modify_deadline_ack_ids.len()
        )));
    }
    // Group the ids by their new deadline: one engine call per deadline.
    let mut by_seconds: Vec<(i32, Vec<String>)> = Vec::new();
    for (seconds, id) in req
        .modify_deadline_seconds
        .iter()
        .zip(&req.modify_deadline_ack_ids)
    {
        match by_seconds.iter_mut().find(|(s, _)| s == seconds) {
            Some((_, ids)) => ids.push(id.clone()),
            None => by_seconds.push((*seconds, vec![id.clone()])),
        }
    }
    for (seconds, ids) in by_seconds {
        broker.modify_ack_deadline(sub, &ids, seconds).await?;
    }
    Ok(())
}

/// Reads a stream's requests until it ends, then ends the stream.
async fn read_requests(
    broker: Broker,
    sub: String,
    mut inbound: Streaming<pb::StreamingPullRequest>,
    ended: CancellationToken,
) {
    loop {
        tokio::select! {
            () = ended.cancelled() => return,
            next = inbound.message() => match next {
                Ok(Some(req)) => {
                    if let Err(e) = apply_requests(&broker, &sub, &req).await {
                        tracing::debug!(%sub, error = %e, "a streaming pull request was refused");
                    }
                }
                Ok(None) | Err(_) => break,
            },
        }
    }
    ended.cancel();
}

/// One streaming pull's deliveries.
struct Pull {
    broker: Broker,
    id: u64,
    sub: String,
    ordering: bool,
    deadline: Duration,
    limits: (i64, i64),
}

impl Pull {
    async fn run(
        self,
        tx: mpsc::Sender<Result<pb::StreamingPullResponse, Status>>,
        ended: CancellationToken,
        shutdown: CancellationToken,
    ) {
        loop {
            let wake = lock(&self.broker.engine)
                .subscription(&self.sub)
                .map(|s| s.wake.clone());
            let wake = match wake {
                Ok(wake) => wake,
                Err(e) => {
                    let _ = tx.send(Err(e.into())).await;
                    break;
                }
            };
            let notified = wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let got = lock(&self.broker.engine).pull(
                &self.sub,
                Receiver::stream(self.id),
                MAX_PULL,
                self.limits,
                self.deadline,
                Instant::now(),
            );
            match got {
                Ok(received) if !received.is_empty() => {
                    let response = pb::StreamingPullResponse {
                        received_messages: received,
                        subscription_properties: Some(
                            pb::streaming_pull_response::SubscriptionProperties {
                                exactly_once_delivery_enabled: false,
                                message_ordering_enabled: self.ordering,
                            },
                        ),
                    };
                    if tx.send(Ok(response)).await.is_err() {
                        break;
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Err(e.into())).await;
                    break;
                }
            }
            tokio::select! {
                () = &mut notified => {}
                () = ended.cancelled() => break,
                () = tx.closed() => break,
                () = shutdown.cancelled() => {
                    let _ = tx.send(Err(Status::unavailable("the broker is shutting down"))).await;
                    break;
                }
            }
        }
        ended.cancel();
        lock(&self.broker.engine).stream_closed(&self.sub, self.id);
    }
}

/// A `grpc-timeout` header value (`100m`, `5S`, …).
fn grpc_timeout(value: &str) -> Option<Duration> {
    let (n, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_are_read_in_every_unit() {
        assert_eq!(grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(grpc_timeout("x"), None);
        assert_eq!(grpc_timeout(""), None);
    }
}
