//! Intake: streaming pull on every service topic and on the network topic.
//!
//! For each question: parse → record in the store (the execution's key
//! `(question_uuid, retry_count)` makes a duplicate a no-op) → acknowledge to
//! Pub/Sub → `delivery_acknowledgement` → hand to the service's worker. The
//! hand-off waits while the worker's queue is full: at most [`MAX_IN_FLIGHT`]
//! messages are handled at once and each stream holds at most
//! [`MAX_OUTSTANDING`] unacknowledged ones, so a full queue stops the pulling
//! instead of dropping or nacking in a loop.
//!
//! A message that is not a valid question gets an `exception` event when its
//! asker can be addressed (and a failed execution), else a dead letter. The
//! emulator ignores subscription filters, so the network intake filters here:
//! questions (`sender_type = PARENT`) are routed by `recipient`; replies
//! (`CHILD`) to questions Rouse knows are recorded in the event store.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rouse_authz::decision_entry;
use rouse_core::protocol::{Attributes, Question, Reply};
use rouse_core::revision::{Execution, ExecutionStatus};
use rouse_core::sruid::Sruid;
use rouse_core::{ProjectName, Service, ServiceName};
use rouse_iam::{Permission, Resource};
use rouse_pubsub::{Handler, Message, Subscriber, SubscriptionSpec};
use rouse_store::NewEvent;
use rouse_store::{AuditDecision, AuditEntry};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::replies::build_event;
use crate::table::{Found, Key};
use crate::worker::WorkerMsg;
use crate::{NETWORK_SUBSCRIPTION, Shared};

/// Messages handled at once (recorded, acknowledged, handed over).
pub const MAX_IN_FLIGHT: usize = 100;
/// Unacknowledged messages one stream may hold (Pub/Sub's flow control).
/// The client sends acknowledgements every 100 ms, and until Pub/Sub has
/// them they count as outstanding: a stream allowed 100 took at most
/// ~1,000 messages a second whatever the dispatcher could do. 2,000 leaves
/// room for 20,000 a second; when handling stalls (a stalled store, a full
/// worker queue) the stream stops at that and Pub/Sub holds the rest.
pub const MAX_OUTSTANDING: i64 = 2000;
/// Pause before re-subscribing after a stream ended (emulator restart, network).
const RESUBSCRIBE_BACKOFF: Duration = Duration::from_secs(1);

fn attributes(msg: &Message) -> Attributes {
    msg.attributes
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn ack(handler: Handler) {
    if let Handler::AtLeastOnce(h) = handler {
        h.ack();
    }
}

fn nack(handler: Handler) {
    if let Handler::AtLeastOnce(h) = handler {
        h.nack();
    }
}

/// Pulls `subscription_id` until `shutdown`, handling each message in a
/// task of its own so that their store writes are committed together. At
/// most [`MAX_IN_FLIGHT`] are handled at once: when they are stuck (a full
/// worker queue), pulling stops.
async fn pull<F, Fut>(
    shared: &Arc<Shared>,
    subscriber: &Subscriber,
    subscription_id: &str,
    topic_id: &str,
    shutdown: &CancellationToken,
    mut on_message: F,
) where
    F: FnMut(Message, Handler) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let mut stream =
            rouse_pubsub::subscribe(subscriber, &shared.pubsub, subscription_id, MAX_OUTSTANDING);
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => {
                    stream.shutdown_token().shutdown().await;
                    return;
                }
                next = stream.next() => next,
            };
            match next {
                Some(Ok((msg, handler))) => {
                    let Ok(permit) = permits.clone().acquire_owned().await else {
                        return;
                    };
                    let work = on_message(msg, handler);
                    // Tracked: shutdown waits for a message being recorded.
                    shared.ctx.tasks.spawn(async move {
                        work.await;
                        drop(permit);
                    });
                }
                Some(Err(e)) => {
                    tracing::warn!(subscription = subscription_id, error = %e, "streaming pull failed; re-subscribing");
                    break;
                }
                None => break,
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(RESUBSCRIBE_BACKOFF) => {}
        }
        // The emulator may have restarted and lost everything.
        if let Err(e) = shared.pubsub.ensure_topic(topic_id).await {
            tracing::warn!(topic = topic_id, error = %e, "cannot ensure topic");
            continue;
        }
        if let Err(e) = shared
            .pubsub
            .ensure_subscription(subscription_id, topic_id, &SubscriptionSpec::dispatcher())
            .await
        {
            tracing::warn!(subscription = subscription_id, error = %e, "cannot ensure subscription");
        }
    }
}

/// Intake on one service's topic.
pub async fn service(
    shared: Arc<Shared>,
    subscriber: Arc<Subscriber>,
    service: Service,
    tx: mpsc::Sender<WorkerMsg>,
    shutdown: CancellationToken,
) {
    let (sub, topic) = (service.subscription_id(), service.topic_id());
    let target = Arc::new(Target {
        uuid: service.uuid,
        sender: service.sruid().to_string(),
        project: service.project.clone(),
        name: service.name.clone(),
        // Only the dispatcher that runs a service pulls its topic.
        dispatcher: Some(shared.shards.holder.clone()),
    });
    pull(
        &shared,
        &subscriber,
        &sub,
        &topic,
        &shutdown,
        |msg, handler| {
            let (shared, tx, target) = (shared.clone(), tx.clone(), target.clone());
            async move { accept(&shared, &target, &tx, msg, handler).await }
        },
    )
    .await;
}

/// The service a question is for, and who its replies come from.
struct Target {
    uuid: Uuid,
    sender: String,
    project: ProjectName,
    name: ServiceName,
    /// This dispatcher if it runs the service; `None`: another does, and
    /// claims the question once it is recorded.
    dispatcher: Option<String>,
}

/// Whether the question's asker holds `services.ask` on the target service,
/// with the decision recorded in the audit log. The asker is the principal
/// of the question's token, or (without one) its sender service if the
/// project trusts sender attributes, else anonymous. The token must have
/// been valid when Pub/Sub accepted the question (`asked_at`), so a question
/// that waited while the dispatcher was down is judged by when it was asked;
/// the policy is applied as it is now. Returns who asked (`None`:
/// anonymous) and the audit entry to record (a grant is recorded together
/// with the execution; a denial at once).
async fn authorize(
    shared: &Shared,
    target: &Target,
    question_uuid: &str,
    token: Option<&str>,
    sender: Option<&str>,
    asked_at: SystemTime,
) -> Result<(Option<String>, AuditEntry), String> {
    let snapshot = shared.authority.snapshot();
    let resource = Resource::Service(target.project.clone(), target.name.clone());
    let permission = Permission::ServicesAsk;
    let caller = match snapshot.question_caller(
        token,
        &target.project,
        &target.name,
        question_uuid,
        sender,
        asked_at,
    ) {
        Ok(caller) => caller,
        Err(e) => {
            let reason = format!(
                "the question's authorization token is refused ({e}), so it may not ask `{resource}`"
            );
            shared
                .authority
                .audit(AuditEntry {
                    id: 0,
                    at: SystemTime::now(),
                    principal: "unauthenticated".into(),
                    action: "question".into(),
                    resource: resource.to_string(),
                    permission: permission.as_str().into(),
                    decision: AuditDecision::Denied,
                    detail: serde_json::json!({ "reason": reason, "question_uuid": question_uuid })
                        .to_string(),
                })
                .await;
            return Err(reason);
        }
    };
    let decision = snapshot.check(&caller, permission, &resource, SystemTime::now());
    let mut entry = decision_entry(&caller, "question", &resource, permission, &decision);
    if let Ok(mut detail) = serde_json::from_str::<serde_json::Value>(&entry.detail) {
        detail["question_uuid"] = question_uuid.into();
        entry.detail = detail.to_string();
    }
    match decision {
        Ok(_) => Ok((caller.principal().map(ToString::to_string), entry)),
        Err(denied) => {
            shared.authority.audit(entry).await;
            let hint = if caller.is_anonymous() {
                " (the question carried no `authorization` token)"
            } else {
                ""
            };
            Err(format!("{denied}{hint}"))
        }
    }
}

/// Records, acknowledges and hands on one question for `target`.
async fn accept(
    shared: &Arc<Shared>,
    target: &Target,
    tx: &mpsc::Sender<WorkerMsg>,
    msg: Message,
    handler: Handler,
) {
    let mut attrs = attributes(&msg);
    // A bearer credential: checked here, never stored, delivered or echoed.
    let token = attrs.remove("authorization");
    let question = match Question::parse(attrs.clone(), &msg.data) {
        Ok(q) => q,
        Err(e) => {
            reject(
                shared,
                Some(target.uuid),
                &target.sender,
                &attrs,
                &msg.data,
                &e.to_string(),
            )
            .await;
            ack(handler);
            return;
        }
    };
    let asked_at = msg
        .publish_time
        .and_then(|t| SystemTime::try_from(t).ok())
        .unwrap_or_else(SystemTime::now);
    if let Ok(lag) = SystemTime::now().duration_since(asked_at) {
        shared.ctx.metrics.lag(lag);
    }
    let (asked_by, granted) = match authorize(
        shared,
        target,
        &question.question_uuid,
        token.as_deref(),
        attrs.get("sender").map(String::as_str),
        asked_at,
    )
    .await
    {
        Ok(entry) => entry,
        Err(reason) => {
            reject_as(
                shared,
                Some(target.uuid),
                &target.sender,
                &attrs,
                &msg.data,
                "PermissionDenied",
                &reason,
            )
            .await;
            ack(handler);
            return;
        }
    };
    // A tag or a traffic split may send it to another revision's worker;
    // decided before the question is recorded, so a tag that names no
    // revision is the asker's error rather than a run of the wrong code.
    let lane = match lane_for(shared, target.uuid, &attrs, &question.question_uuid).await {
        Ok(lane) => lane,
        Err(reason) => {
            reject(
                shared,
                Some(target.uuid),
                &target.sender,
                &attrs,
                &msg.data,
                &reason,
            )
            .await;
            ack(handler);
            return;
        }
    };
    let execution = Execution {
        asked_by,
        dispatcher: target.dispatcher.clone(),
        ..Execution::received(
            question.question_uuid.clone(),
            question.retry_count,
            target.uuid,
            attrs,
            msg.data.to_vec(),
            SystemTime::now(),
        )
    };
    // Both writes wait for the same group commit.
    let (inserted, ()) = tokio::join!(
        shared.store.insert_execution(&execution),
        shared.authority.audit(granted)
    );
    match inserted {
        Ok(true) => {}
        Ok(false) => {
            tracing::debug!(question = %execution.question_uuid, retry = execution.retry_count, "duplicate question dropped");
            ack(handler);
            return;
        }
        Err(e) => {
            // Not recorded, so not ours yet: Pub/Sub redelivers it.
            tracing::error!(question = %execution.question_uuid, error = %e, "cannot record a question; leaving it to Pub/Sub");
            nack(handler);
            tokio::time::sleep(RESUBSCRIBE_BACKOFF).await;
            return;
        }
    }
    ack(handler);
    let replier = shared.ctx.replier.clone();
    let ack_event = build_event(
        &execution.attributes,
        &target.sender,
        &Reply::DeliveryAcknowledgement,
    );
    shared
        .ctx
        .tasks
        .spawn(async move { replier.send_now(ack_event).await });
    let tx = lane.as_ref().unwrap_or(tx);
    if tx.send(WorkerMsg::Run(Box::new(execution))).await.is_err() {
        tracing::warn!(
            "the service's worker stopped; the question stays recorded and resumes at the next start"
        );
    }
}

/// The worker of another revision that a question goes to (`None`: the
/// service's main worker), by its recipient's tag or the traffic split.
///
/// A tag the registry does not know may have been set a moment ago through
/// an API (in this process or another), so the registry is re-read and the
/// question waits for it, at most [`CATCH_UP`]; a tag still unknown then is
/// refused, naming the tags the service has.
async fn lane_for(
    shared: &Shared,
    uuid: Uuid,
    attrs: &Attributes,
    question_uuid: &str,
) -> Result<Option<mpsc::Sender<WorkerMsg>>, String> {
    let recipient = attrs.get("recipient").map(String::as_str).unwrap_or("");
    let Ok(sruid) = Sruid::parse(recipient) else {
        return Ok(None);
    };
    let tag = sruid.revision_tag;
    let refused = |why: String| {
        format!(
            "no service `{recipient}`: `{}/{}` {why}",
            sruid.namespace, sruid.name
        )
    };
    let pick = |found: &Found| {
        found
            .lane(tag.as_deref(), question_uuid)
            .map(|lane| lane.map(|(_, tx)| tx))
    };
    let Ok(found) = shared.table.lookup(Key::Uuid(uuid)) else {
        return Ok(None);
    };
    match pick(&found) {
        Ok(lane) => Ok(lane),
        Err(why) => match shared
            .await_entry(Key::Uuid(uuid), CATCH_UP, |f| pick(f).is_ok())
            .await
        {
            Some(found) => pick(&found).map_err(refused),
            None => Err(refused(why)),
        },
    }
}

/// Answers a message that cannot run: an exception to its asker and a failed
/// execution where the asker can be addressed, a dead letter otherwise.
async fn reject(
    shared: &Arc<Shared>,
    service: Option<Uuid>,
    sender: &str,
    attrs: &Attributes,
    data: &[u8],
    reason: &str,
) {
    let exception_type = if reason.starts_with("no service") {
        "ServiceNotFound"
    } else {
        "InvalidQuestion"
    };
    reject_as(shared, service, sender, attrs, data, exception_type, reason).await;
}

/// [`reject`] with the exception type given.
async fn reject_as(
    shared: &Arc<Shared>,
    service: Option<Uuid>,
    sender: &str,
    attrs: &Attributes,
    data: &[u8],
    exception_type: &str,
    reason: &str,
) {
    let addressable = attrs.get("question_uuid").is_some_and(|q| !q.is_empty())
        && attrs.get("sender").is_some_and(|s| !s.is_empty());
    tracing::warn!(question = attrs.get("question_uuid").map(String::as_str).unwrap_or("?"), %reason, "refused a message");
    if !addressable {
        if let Err(e) = shared
            .store
            .dead_letter("intake", reason, attrs, data)
            .await
        {
            tracing::error!(error = %e, "cannot record a dead letter");
        }
        return;
    }
    let mut reply_attrs = attrs.clone();
    reply_attrs
        .entry("retry_count".into())
        .or_insert_with(|| "0".into());
    let reply = Reply::exception(exception_type, reason);
    match service {
        Some(service_uuid) => {
            let mut execution = Execution::received(
                attrs.get("question_uuid").cloned().unwrap_or_default(),
                reply_attrs
                    .get("retry_count")
                    .and_then(|r| r.parse().ok())
                    .unwrap_or(0),
                service_uuid,
                reply_attrs,
                data.to_vec(),
                SystemTime::now(),
            );
            execution.status = ExecutionStatus::Failed;
            match shared.store.insert_execution(&execution).await {
                Ok(true) => {
                    shared
                        .ctx
                        .replier
                        .finish(execution, reply, ExecutionStatus::Failed, sender)
                        .await;
                }
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, "cannot record a refused question"),
            }
        }
        None => {
            if let Err(e) = shared
                .store
                .dead_letter("network", reason, attrs, data)
                .await
            {
                tracing::error!(error = %e, "cannot record a dead letter");
            }
            shared
                .ctx
                .replier
                .send_now(build_event(&reply_attrs, sender, &reply))
                .await;
        }
    }
}

/// Intake on the network topic.
pub async fn network(
    shared: Arc<Shared>,
    subscriber: Arc<Subscriber>,
    shutdown: CancellationToken,
) {
    let topic = shared.ctx.config.network_topic.clone();
    pull(
        &shared,
        &subscriber,
        NETWORK_SUBSCRIPTION,
        &topic,
        &shutdown,
        |msg, handler| {
            let shared = shared.clone();
            async move { on_network(&shared, msg, handler).await }
        },
    )
    .await;
}

async fn on_network(shared: &Arc<Shared>, msg: Message, handler: Handler) {
    let attrs = attributes(&msg);
    match attrs.get("sender_type").map(String::as_str) {
        Some("PARENT") => route(shared, attrs, msg, handler).await,
        Some("CHILD") => {
            record_reply(shared, attrs, &msg.data).await;
            ack(handler);
        }
        _ => ack(handler),
    }
}

pub use crate::routes::LATEST_TAG;

/// Routes a question on the network topic by its `recipient` SRUID: a name
/// without a tag, with the serving revision's tag, or with `latest` reaches
/// the serving revision.
async fn route(shared: &Arc<Shared>, attrs: Attributes, msg: Message, handler: Handler) {
    const RECIPIENT_UNKNOWN: &str = "rouse/network";
    let recipient = attrs.get("recipient").cloned().unwrap_or_default();
    let sruid = match Sruid::parse(&recipient) {
        Ok(sruid) => sruid,
        Err(e) => {
            let reason = format!("no service can be found for recipient: {e}");
            let sender = if recipient.is_empty() {
                RECIPIENT_UNKNOWN
            } else {
                &recipient
            };
            reject(shared, None, sender, &attrs, &msg.data, &reason).await;
            ack(handler);
            return;
        }
    };
    let service = match shared
        .table
        .lookup(Key::Sruid(&sruid.namespace, &sruid.name))
    {
        Ok(found) => found,
        Err(_) => match catch_up(shared, &sruid).await {
            CatchUp::Registered(found) => *found,
            CatchUp::Unknown { namespace_is_ours } => {
                // Not one of ours: another dispatcher or an Octue service
                // may serve it on a shared network topic only if it is not
                // in our namespaces.
                if namespace_is_ours {
                    let reason = format!(
                        "no service `{}/{}` is registered with Rouse",
                        sruid.namespace, sruid.name
                    );
                    reject(shared, None, &recipient, &attrs, &msg.data, &reason).await;
                }
                ack(handler);
                return;
            }
            CatchUp::Later => {
                // Not recorded, so not ours yet: Pub/Sub redelivers it.
                nack(handler);
                return;
            }
        },
    };
    let uuid = service.uuid;
    let mut serving = service.serving.clone();
    let question = attrs.get("question_uuid").cloned().unwrap_or_default();
    match service.lane(sruid.revision_tag.as_deref(), &question) {
        Ok(Some((other, _))) => serving = Some(other),
        Ok(None) => {}
        Err(why) => {
            let reason = format!(
                "no service `{recipient}`: `{}/{}` {why}{}",
                sruid.namespace,
                sruid.name,
                serving
                    .map(|s| format!(" (it serves `{s}`)"))
                    .unwrap_or_default()
            );
            reject(shared, Some(uuid), &recipient, &attrs, &msg.data, &reason).await;
            ack(handler);
            return;
        }
    }
    let target = Target {
        uuid,
        dispatcher: service.owned.then(|| shared.shards.holder.clone()),
        project: service.project.clone(),
        name: service.name.clone(),
        sender: match serving {
            Some(tag) => format!("{}/{}:{tag}", sruid.namespace, sruid.name),
            None => format!("{}/{}", sruid.namespace, sruid.name),
        },
    };
    accept(shared, &target, &service.tx, msg, handler).await;
}

/// How long a question for a service that the store has and the registry
/// lacks waits for the registry, before it is left to Pub/Sub to redeliver.
/// 2 s: a sync takes milliseconds, and a waiting question holds one of the
/// stream's [`MAX_OUTSTANDING`] slots.
const CATCH_UP: Duration = Duration::from_secs(2);

enum CatchUp {
    /// The registry has it now.
    Registered(Box<Found>),
    /// The store has no such service either; whether its namespace is ours
    /// (so the name is ours to refuse).
    Unknown { namespace_is_ours: bool },
    /// The registry has not caught up, or the store cannot tell: leave the
    /// question to Pub/Sub.
    Later,
}

/// For a recipient the registry does not have: whether the store has it.
///
/// The registry is a copy of the store, re-read on a change this process
/// made and otherwise every `resync_interval`, so a service just created
/// through an API in another process (or mid-sync) is missing from it for a
/// while. Acknowledging its questions then would lose them (or answer
/// `ServiceNotFound` for a service that exists); instead the registry is
/// re-read at once and the question waits for it, or is nacked for Pub/Sub
/// to redeliver. Only a service the store does not have is unknown.
/// Costs one read of the services for each question to a recipient that
/// is not (yet) registered, such as another platform's on a shared topic.
async fn catch_up(shared: &Shared, sruid: &Sruid) -> CatchUp {
    let stored = match shared.store.list_services(None).await {
        Ok(services) => services.iter().any(|s| {
            let id = s.sruid();
            id.namespace == sruid.namespace && id.name == sruid.name
        }),
        Err(e) => {
            tracing::warn!(recipient = %sruid, error = %e, "cannot look up a question's recipient; leaving it to Pub/Sub");
            tokio::time::sleep(RESUBSCRIBE_BACKOFF).await;
            return CatchUp::Later;
        }
    };
    if !stored {
        let namespace_is_ours = shared
            .table
            .lookup(Key::Sruid(&sruid.namespace, &sruid.name))
            .err()
            .is_some_and(|m| m.namespace_is_ours);
        return CatchUp::Unknown { namespace_is_ours };
    }
    let key = Key::Sruid(&sruid.namespace, &sruid.name);
    match shared.await_entry(key, CATCH_UP, |_| true).await {
        Some(found) => CatchUp::Registered(Box::new(found)),
        None => {
            tracing::debug!(recipient = %sruid, "the registry has not caught up with the store; leaving the question to Pub/Sub");
            CatchUp::Later
        }
    }
}

/// Records a reply event for a question Rouse knows (the event store).
async fn record_reply(shared: &Arc<Shared>, attrs: Attributes, data: &[u8]) {
    let (Some(question_uuid), Some(event_uuid)) = (attrs.get("question_uuid"), attrs.get("uuid"))
    else {
        return;
    };
    if shared.ctx.replier.sent_here(event_uuid) {
        return;
    }
    match shared.store.get_execution(question_uuid).await {
        Ok(Some(_)) => {}
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(error = %e, "cannot look up a reply's question");
            return;
        }
    }
    let kind = serde_json::from_slice::<serde_json::Value>(data)
        .ok()
        .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_owned))
        .unwrap_or_default();
    let event = NewEvent {
        event_uuid: event_uuid.clone(),
        question_uuid: question_uuid.clone(),
        retry_count: attrs.get("retry_count").and_then(|r| r.parse().ok()),
        kind,
        attributes: attrs,
        data: data.to_vec(),
    };
    if let Err(e) = shared.store.record_event(&event, true).await {
        tracing::warn!(error = %e, "cannot record a reply event");
    }
}
