//! Rouse's control plane: the gRPC API of `proto/rouse/v1`, served with tonic.
//!
//! - [`pb`]: the generated messages, server and client (the CLI uses the client).
//! - [`services`]: the `Services` API, over a [`rouse_store::Store`] and a
//!   [`Messaging`] backend that owns topics and subscriptions.
//! - [`reconcile`]: run at start, brings Pub/Sub back in line with the store.
//! - [`error`]: the one place where errors become gRPC statuses.
//!
//! Protobuf stays here: domain types (`rouse_core`) never see prost; the
//! conversions live in [`convert`].

pub mod convert;
pub mod error;
pub mod messaging;
pub mod reconcile;
pub mod services;

use std::future::Future;

use tokio::net::TcpListener;

pub use error::ApiError;
pub use messaging::Messaging;
pub use services::ServicesApi;

/// Generated code for `rouse.v1`.
#[allow(clippy::all, missing_docs, clippy::unwrap_used)]
pub mod pb {
    tonic::include_proto!("rouse.v1");
}

/// Serves the API on `listener` until `shutdown` completes, then lets calls in
/// flight finish.
pub async fn serve(
    listener: TcpListener,
    services: ServicesApi,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(pb::services_server::ServicesServer::new(services))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await
}
