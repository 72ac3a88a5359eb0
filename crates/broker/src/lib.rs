//! Rouse's embedded Pub/Sub broker: Google's Pub/Sub API (gRPC
//! `google.pubsub.v1.Publisher` and `Subscriber`, and the REST subset the
//! admin clients use) on one local port, with Google's semantics rather than
//! the emulator's (subscription filters applied, ordering keys, ack
//! deadlines and redelivery, retry backoff, dead letters, retention,
//! expiry, push subscriptions), and its state in its own SQLite file so a
//! restart or `kill -9` loses no published or unacknowledged message.
//!
//! - [`engine`]: the state machine (pure, unit-tested).
//! - [`persist`]: the SQLite file and its group-committing writer.
//! - [`broker`]: the calls, shared by [`grpc`] and [`rest`]; [`push`].
//! - [`filter`]: the filter language.

pub mod broker;
pub mod engine;
pub mod error;
pub mod filter;
pub mod grpc;
pub mod names;
pub mod persist;
pub mod push;
pub mod rest;

use std::net::SocketAddr;
use std::path::Path;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use broker::Broker;
pub use error::BrokerError;

/// Google's Pub/Sub messages and the generated tonic servers.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("google.pubsub.v1");

    /// The compiled descriptor set (for the REST surface's JSON mapping).
    pub const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/pubsub_v1.bin"));
}

/// The largest request the server decodes: a 10 MB publish plus framing
/// (a larger one is refused by the publish check with a clear message).
const MAX_DECODING: usize = 12 * 1024 * 1024;

/// A broker serving on a port.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    broker: Broker,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    writer: std::thread::JoinHandle<()>,
}

impl Running {
    /// Opens the store at `path` (created if missing) and serves gRPC and
    /// REST on `listener`.
    pub async fn start(
        path: &Path,
        listener: tokio::net::TcpListener,
    ) -> Result<Self, BrokerError> {
        let addr = listener
            .local_addr()
            .map_err(|e| BrokerError::Internal(format!("the broker's listener: {e}")))?;
        let (persist, engine, writer) = persist::Persist::open(path)?;
        let broker = Broker::new(engine, persist);
        let shutdown = CancellationToken::new();
        let service = grpc::Service {
            broker: broker.clone(),
            shutdown: shutdown.clone(),
        };
        let grpc = tonic::service::Routes::new(
            pb::publisher_server::PublisherServer::new(service.clone())
                .max_decoding_message_size(MAX_DECODING),
        )
        .add_service(
            pb::subscriber_server::SubscriberServer::new(service)
                .max_decoding_message_size(MAX_DECODING),
        );
        let routes = grpc.into_axum_router().merge(rest::router(broker.clone()));
        // Small frames go out at once: with Nagle's algorithm a response
        // written while the client delays its TCP ack waits up to 40 ms.
        // (The builder's `tcp_nodelay` applies only to listeners it binds.)
        let incoming = tokio_stream::StreamExt::map(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            |accepted| {
                accepted.inspect(|stream| {
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                    }
                })
            },
        );
        let stop = shutdown.clone();
        let server = tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .accept_http1(true)
                .add_routes(tonic::service::Routes::from(routes))
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "the broker's server failed");
            }
        });
        let ticker = tokio::spawn(broker.clone().run_ticker(shutdown.clone()));
        let pusher = tokio::spawn(push::run(broker.clone(), shutdown.clone()));
        tracing::info!(%addr, store = %path.display(), "the Pub/Sub broker is serving");
        Ok(Self {
            addr,
            broker,
            shutdown,
            tasks: vec![server, ticker, pusher],
            writer,
        })
    }

    /// Where it listens (`HOST:PORT`, for `PUBSUB_EMULATOR_HOST`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Stops serving, lets the writer commit what it has, and returns.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        // The writer ends once every handle on it is gone.
        drop(self.broker);
        let writer = self.writer;
        let joined = tokio::task::spawn_blocking(move || writer.join());
        if tokio::time::timeout(std::time::Duration::from_secs(5), joined)
            .await
            .is_err()
        {
            tracing::warn!("the broker's writer did not stop within 5 s");
        }
    }
}
