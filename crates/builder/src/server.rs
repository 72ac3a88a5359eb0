//! The builder's webhook endpoint (axum): `POST /webhooks/github` and
//! `POST /webhooks/git`, and `GET /builds/{id}`, where a commit status links.
//!
//! A delivery is checked before anything else: its `X-Hub-Signature-256`
//! must be the HMAC-SHA256 of the raw body under the secret of some
//! trigger (checked in constant time against each), else 401. Then it is
//! parsed (400 naming the reason), matched to the triggers that watch its
//! repository (404 if none), deduplicated by `X-GitHub-Delivery`, recorded
//! `queued`, and answered 202 with the build ids; the build runs in the
//! background. Bodies over 25 MB are refused with 413. This module is the
//! one place where the webhook's errors become HTTP responses.

use std::future::Future;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use rouse_core::Service;
use rouse_store::DeliveryClaim;
use tokio::net::TcpListener;

use crate::builder::{Builder, BuilderError};
use crate::payload::{self, DELIVERY_HEADER, EVENT_HEADER, GithubEvent, Push};
use crate::pipeline::{BuildJob, BuildSource};
use crate::signature::{self, SignatureError, SignatureHeaders};
use crate::{Decision, Trigger};

/// Why a delivery was refused; turned into a response in one place.
#[derive(Debug, thiserror::Error)]
pub enum WebhookRefusal {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl From<BuilderError> for WebhookRefusal {
    fn from(e: BuilderError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl IntoResponse for WebhookRefusal {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            Self::Unauthorized(m) => (StatusCode::UNAUTHORIZED, m),
            Self::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            Self::NotFound(m) => (StatusCode::NOT_FOUND, m),
            Self::Unavailable(m) => {
                tracing::warn!(error = %m, "webhook delivery not taken");
                (StatusCode::SERVICE_UNAVAILABLE, m)
            }
            Self::Internal(m) => {
                tracing::error!(error = %m, "webhook delivery failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error; the server log has the details".to_owned(),
                )
            }
        };
        json(status, serde_json::json!({ "error": message }))
    }
}

fn json(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// `GET /metrics`: the builder's metrics in the Prometheus text format.
async fn metrics(State(builder): State<Builder>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            rouse_core::prometheus::CONTENT_TYPE,
        )],
        builder.metrics().encode(),
    )
        .into_response()
}

/// The webhook routes over `builder`.
pub fn router(builder: Builder) -> Router {
    Router::new()
        .route("/webhooks/github", post(github))
        .route("/webhooks/git", post(generic))
        .route("/builds/{id}", get(build_status))
        .route("/metrics", get(metrics))
        // A larger body is answered 413 by axum itself, unread.
        .layer(DefaultBodyLimit::max(payload::MAX_BODY_BYTES))
        .with_state(builder)
}

/// Serves the webhook routes on `listener` until `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    builder: Builder,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(builder))
        .with_graceful_shutdown(shutdown)
        .await
}

/// What a commit status links to: a build's status, step, commit and
/// revision, without its log or failure text (those need `builds.get`
/// through the API).
async fn build_status(State(builder): State<Builder>, Path(id): Path<String>) -> Response {
    match builder.store().get_build(&id).await {
        Ok(Some(b)) => json(
            StatusCode::OK,
            serde_json::json!({
                "id": b.id,
                "status": b.status,
                "step": b.step,
                "commit": b.commit,
                "branch": b.branch,
                "revision": b.revision,
                "details": format!("rouse builds describe {}", b.id),
            }),
        ),
        Ok(None) => {
            WebhookRefusal::NotFound(format!("build `{id}` does not exist")).into_response()
        }
        Err(e) => WebhookRefusal::Internal(e.to_string()).into_response(),
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The triggers whose secret signed `body`, or 401.
async fn signed_by(
    builder: &Builder,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Vec<(Trigger, Service)>, WebhookRefusal> {
    let sig = SignatureHeaders {
        sha256: header(headers, signature::SIGNATURE_HEADER),
        sha1: header(headers, signature::LEGACY_SIGNATURE_HEADER),
    };
    let triggers = builder.triggers().await?;
    let mut last = SignatureError::Mismatch;
    let mut signed = Vec::new();
    for (trigger, service) in triggers {
        match signature::verify(trigger.webhook_secret().expose().as_bytes(), body, sig) {
            Ok(()) => signed.push((trigger, service)),
            Err(e) => last = e,
        }
    }
    if signed.is_empty() {
        let reason = match last {
            SignatureError::Mismatch => "header `X-Hub-Signature-256` matches no trigger's webhook secret: set the webhook's secret to the one given to `rouse triggers create`".to_owned(),
            other => other.to_string(),
        };
        return Err(WebhookRefusal::Unauthorized(reason));
    }
    Ok(signed)
}

async fn github(State(builder): State<Builder>, headers: HeaderMap, body: Bytes) -> Response {
    match handle_github(&builder, &headers, &body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn generic(State(builder): State<Builder>, headers: HeaderMap, body: Bytes) -> Response {
    let handled = async {
        let signed = signed_by(&builder, &headers, &body).await?;
        let push =
            payload::parse_generic(&body).map_err(|e| WebhookRefusal::BadRequest(e.to_string()))?;
        push_builds(&builder, &headers, signed, push).await
    };
    match handled.await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn handle_github(
    builder: &Builder,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, WebhookRefusal> {
    let signed = signed_by(builder, headers, body).await?;
    let event = payload::parse_github(header(headers, EVENT_HEADER), body)
        .map_err(|e| WebhookRefusal::BadRequest(e.to_string()))?;
    match event {
        GithubEvent::Ping(_) => Ok(json(StatusCode::OK, serde_json::json!({ "pong": true }))),
        GithubEvent::Unsupported { event } => Ok(json(
            StatusCode::OK,
            serde_json::json!({ "ignored": format!("event {event} is not handled; only push and ping are") }),
        )),
        GithubEvent::Push(push) => push_builds(builder, headers, signed, push).await,
    }
}

/// Starts a build for every trigger that watches the pushed repository and
/// matches the push.
async fn push_builds(
    builder: &Builder,
    headers: &HeaderMap,
    signed: Vec<(Trigger, Service)>,
    push: Push,
) -> Result<Response, WebhookRefusal> {
    let watching: Vec<_> = signed
        .into_iter()
        .filter(|(t, _)| {
            t.watches(
                &push.repository.clone_url,
                push.repository.full_name.as_deref(),
            )
        })
        .collect();
    if watching.is_empty() {
        return Err(WebhookRefusal::NotFound(format!(
            "no trigger watches repository `{}`; create one with `rouse triggers create SERVICE --project P --repo {}`",
            push.repository.clone_url, push.repository.clone_url
        )));
    }
    if let Some(delivery) = header(headers, DELIVERY_HEADER).filter(|d| !d.trim().is_empty()) {
        let claim = builder
            .store()
            .claim_delivery(delivery.trim())
            .await
            .map_err(BuilderError::from)?;
        if claim == DeliveryClaim::Duplicate {
            return Ok(json(
                StatusCode::OK,
                serde_json::json!({ "duplicate": true, "delivery": delivery, "builds": [] }),
            ));
        }
    }
    let mut builds = Vec::new();
    let mut skipped = Vec::new();
    for (trigger, service) in watching {
        match trigger.matches(&push) {
            Decision::Skip(reason) => skipped.push(serde_json::json!({
                "trigger": trigger.id(),
                "reason": reason.to_string(),
            })),
            Decision::Build => {
                let job = BuildJob {
                    service,
                    source: BuildSource::Git {
                        url: trigger.repo_url().to_owned(),
                        commit: push.after.clone(),
                        branch: push.git_ref.branch().map(str::to_owned),
                    },
                    trigger: Some(trigger),
                };
                builds.push(builder.record(&job).await?);
            }
        }
    }
    let status = if builds.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok(json(
        status,
        serde_json::json!({
            "build_id": builds.first(),
            "builds": builds,
            "skipped": skipped,
        }),
    ))
}
