//! Rouse's control plane: the gRPC API of `proto/rouse/v1`, served with tonic.
//!
//! - [`pb`]: the generated messages, server and client (the CLI uses the client).
//! - [`services`], [`revisions`], [`executions`]: the APIs, all over one
//!   [`Backend`]: the store, a [`Messaging`] backend that owns topics and
//!   subscriptions, the secrets key, change notices for the other roles and
//!   [`DispatchHooks`] into a dispatcher in the same process.
//! - [`reconcile`]: run at start, brings Pub/Sub back in line with the store.
//! - [`methods`]: who may call what, one entry per RPC, enforced by one
//!   layer around the whole API; [`auth`] makes the checks it asks for.
//! - [`error`]: the one place where errors become gRPC statuses.
//! - [`rest`]: the same calls as HTTP/JSON on the same port for `curl`
//!   users, described by the OpenAPI document [`openapi`] makes.
//!
//! Protobuf stays here: domain types (`rouse_core`) never see prost; the
//! conversions live in [`convert`].

pub mod auth;
pub mod backend;
pub mod bootstrap;
pub mod builds;
pub mod convert;
pub mod error;
pub mod executions;
pub mod hooks;
pub mod iam;
pub mod messaging;
pub mod methods;
pub mod nodes;
pub mod openapi;
pub mod reconcile;
pub mod registry;
pub mod rest;
pub mod retention;
pub mod revisions;
pub mod rollout;
pub mod secrets;
pub mod services;
pub mod triggers;

use std::future::Future;

use tokio::net::TcpListener;

pub use backend::{ApiStore, Backend};
pub use error::ApiError;
pub use hooks::{DispatchHooks, NoDispatcher};
pub use messaging::{Messaging, PubSubMessaging};
pub use services::ServicesApi;

/// Generated code for `rouse.v1` (the `rouse-proto` crate).
pub use rouse_proto as pb;

/// Serves the API on `listener` until `shutdown` completes, then lets calls in
/// flight finish.
pub async fn serve(
    listener: TcpListener,
    backend: Backend,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .accept_http1(true)
        .layer(rest::JsonLayer::new(backend.clone()))
        .layer(methods::MethodLayer)
        .add_service(pb::services_server::ServicesServer::new(ServicesApi::new(
            backend.clone(),
        )))
        .add_service(pb::revisions_server::RevisionsServer::new(
            revisions::RevisionsApi::new(backend.clone()),
        ))
        .add_service(pb::executions_server::ExecutionsServer::new(
            executions::ExecutionsApi::new(backend.clone()),
        ))
        .add_service(pb::logs_server::LogsServer::new(executions::LogsApi::new(
            backend.clone(),
        )))
        .add_service(pb::iam_server::IamServer::new(iam::IamApi::new(
            backend.clone(),
        )))
        .add_service(pb::service_accounts_server::ServiceAccountsServer::new(
            iam::ServiceAccountsApi::new(backend.clone()),
        ))
        .add_service(pb::groups_server::GroupsServer::new(iam::GroupsApi::new(
            backend.clone(),
        )))
        .add_service(pb::roles_server::RolesServer::new(iam::RolesApi::new(
            backend.clone(),
        )))
        .add_service(pb::rollouts_server::RolloutsServer::new(
            rollout::RolloutsApi::new(backend.clone()),
        ))
        .add_service(pb::triggers_server::TriggersServer::new(
            triggers::TriggersApi::new(backend.clone()),
        ))
        .add_service(pb::builds_server::BuildsServer::new(
            builds::BuildsApi::new(backend.clone()),
        ))
        .add_service(pb::nodes_server::NodesServer::new(nodes::NodesApi::new(
            backend.clone(),
        )))
        .add_service(pb::secrets_server::SecretsServer::new(
            secrets::SecretsApi::new(backend),
        ))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await
}
