//! The ingress: HTTP services behind one port, routed by path (seed `001`'s
//! nginx recipe), woken by their first request.
//!
//! `/<project>-<service>[/…]` (the service's `CONTEXT_ROOT`) goes to an
//! instance of its serving revision, `/<project>-<service>:<tag>[/…]` to
//! the revision with that tag; the path is passed on whole, as services
//! listen under their context root. A request:
//!
//! 1. is checked like a question: its caller (an `Authorization: Bearer`
//!    or `Token` Rouse token for the service or the API; anonymous without
//!    one) must hold `services.ask` on the service (granted by
//!    `roles/invoker`, `roles/serviceUser` and up; `allUsers` for a public
//!    service), and the decision is audited;
//! 2. waits in the service worker's bounded queue for an instance with
//!    room, counting as work when scaling (so it wakes one at zero), for
//!    at most the service's `wake_timeout`;
//! 3. is proxied to that instance, bodies streamed both ways, with the
//!    `X-Forwarded-*` headers set, for at most its `request_timeout`.
//!
//! With several dispatchers, a request for a service another dispatcher
//! runs is forwarded to that dispatcher's ingress (each registers its URL
//! as a lease, [`crate::shards::INGRESS`], renewed with the others), which
//! checks the caller and serves it; one hop only, marked with
//! `Rouse-Forwarded-By`. A dispatcher whose ingress has no address others
//! can use (TLS, or listening on every interface without
//! `--ingress-advertise`) is answered 503 naming the other dispatcher.
//!
//! Errors are answered in plain text naming the cause: 404 for a path that
//! names no service (with the route form), 401/403 for callers, 503 with
//! `Retry-After` when the queue is full or no instance came, 503 naming the
//! reason when waking failed, 502 when the instance could not be reached,
//! 504 after the request timeout.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rouse_authz::decision_entry;
use rouse_core::IngressPolicy;
use rouse_iam::{Permission, Resource};
use rouse_store::{AuditDecision, AuditEntry};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::Shared;
use crate::table::Key;
use crate::worker::{HttpLease, LeaseError, WorkerMsg};

/// A request header naming the tagged revision to reach, for clients
/// that cannot change the path (as Knative's `Knative-Serving-Tag`); a tag
/// in the path (`/<root>:<tag>/…`) wins.
pub const TAG_HEADER: &str = "rouse-tag";
/// Seconds a client is told to wait before retrying a 503.
const RETRY_AFTER_SECS: &str = "1";
/// Headers that belong to one connection, not to the request (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// An IP network, `ADDRESS/PREFIX` (`10.0.0.0/8`, `fd00::/8`); a bare
/// address is a network of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    /// What `--ingress internal` admits by default: loopback, the private
    /// ranges (RFC 1918, RFC 6598's shared space, IPv6 unique local) and
    /// link-local addresses.
    pub const DEFAULT_INTERNAL: &[&str] = &[
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
    ];

    /// Parses `ADDRESS[/PREFIX]`, naming the bad part.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| {
            format!("`{s}` is not a network: give ADDRESS/PREFIX, e.g. 10.0.0.0/8 or fd00::/8")
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| {
                format!("`{s}`: the prefix length must be 0..={max} for this address")
            })?,
        };
        Ok(Self { addr, prefix })
    }

    /// Whether `ip` is in this network (an IPv4-mapped IPv6 address counts
    /// as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let (a, b, bits) = match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                (u128::from(a.to_bits()), u128::from(b.to_bits()), 32)
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => (a.to_bits(), b.to_bits(), 128),
            _ => return false,
        };
        let shift = bits - u32::from(self.prefix);
        shift >= bits || (a >> shift) == (b >> shift)
    }

    /// [`Self::DEFAULT_INTERNAL`], parsed.
    pub fn default_internal() -> Vec<Self> {
        Self::DEFAULT_INTERNAL
            .iter()
            .filter_map(|n| Self::parse(n).ok())
            .collect()
    }
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// How the ingress serves, beyond where it listens.
#[derive(Debug, Clone, Default)]
pub struct IngressOptions {
    /// TLS, when it serves HTTPS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The URL other dispatchers' ingresses forward this one's requests to
    /// (`http://host:port`); by default the listening address when it is
    /// a specific one.
    pub advertise: Option<String>,
    /// Where requests for `--ingress internal` services may come from.
    pub internal_networks: Vec<Network>,
    pub limits: Limits,
}

#[derive(Clone)]
struct Ingress {
    shared: Arc<Shared>,
    /// Where requests for internal services may come from.
    internal: Arc<[Network]>,
    limits: Limits,
    client: Client<HttpConnector, Body>,
    /// For instances that speak HTTP/2 without TLS (prior knowledge).
    client_h2c: Client<HttpConnector, Body>,
    /// Grants to audit, written off the request's path (see [`write_audits`]).
    audits: tokio::sync::mpsc::Sender<AuditEntry>,
    /// `https` behind TLS, else `http` (for `X-Forwarded-Proto`).
    scheme: &'static str,
}

/// Checks `--ingress-advertise`: an `http://host:port` URL with no path.
pub fn parse_advertise(url: &str) -> Result<String, String> {
    let bad = |why: &str| {
        format!(
            "--ingress-advertise `{url}` {why}; give the URL other dispatchers reach this ingress at, like http://10.0.0.5:8080"
        )
    };
    let uri: Uri = url
        .parse()
        .map_err(|e| bad(&format!("is not a URL ({e})")))?;
    if uri.scheme_str() != Some("http") {
        return Err(bad(
            "is not plain http:// (forwarding between ingresses speaks HTTP/1.1 without TLS)",
        ));
    }
    if uri.authority().is_none() {
        return Err(bad("has no host"));
    }
    if uri.path() != "/" && !uri.path().is_empty() || uri.query().is_some() {
        return Err(bad("has a path"));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// How long a request for a service this dispatcher does not run (yet)
/// waits for it to take the service: a new service is taken within a
/// lease renewal.
const OWNERSHIP_WAIT: Duration = Duration::from_secs(4);
/// How long a request for a service the table lacks waits for a re-read.
const LOOKUP_WAIT: Duration = Duration::from_secs(1);
/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the ingress bounds, settable with `rouse server --ingress-*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest request body passed on (Cloud Run's HTTP/1 limit by
    /// default, 32 MiB): a larger declared length is answered 413 at once,
    /// a longer stream is cut off with 413.
    pub max_body_bytes: u64,
    /// The largest request head read (request line and headers), as hyper
    /// buffers it: beyond it, 431. 64 KiB by default; at least 8 KiB.
    pub max_head_bytes: usize,
    /// How long a client has to send a request's head (slowloris), and how
    /// long a kept-alive connection may wait for its next request. 10 s by
    /// default.
    pub header_timeout: Duration,
}

impl Limits {
    /// The smallest head hyper reads.
    pub const MIN_HEAD_BYTES: usize = 8 * 1024;

    /// Checks the limits, naming the flag to change.
    pub fn check(&self) -> Result<(), String> {
        if self.max_body_bytes == 0 {
            return Err(
                "--ingress-max-body 0 would refuse every body; give a size such as 32MiB".into(),
            );
        }
        if !(Self::MIN_HEAD_BYTES..=1024 * 1024).contains(&self.max_head_bytes) {
            return Err(format!(
                "--ingress-max-head {} bytes is out of range; use 8KiB..=1MiB",
                self.max_head_bytes
            ));
        }
        if self.header_timeout < Duration::from_secs(1)
            || self.header_timeout > Duration::from_secs(300)
        {
            return Err(format!(
                "--ingress-header-timeout {} is out of range; use 1s..=5m",
                humantime::format_duration(self.header_timeout)
            ));
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 32 * 1024 * 1024,
            max_head_bytes: 64 * 1024,
            header_timeout: Duration::from_secs(10),
        }
    }
}

/// `32MiB`, `64KiB`, `1GB`, `1048576`: a size in bytes (binary units
/// `KiB`/`MiB`/`GiB`, decimal `KB`/`MB`/`GB`, or none).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let text = s.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let unit_of = |unit: &str| match unit.trim() {
        "" | "B" => Some(1u64),
        "KiB" | "k" | "K" => Some(1 << 10),
        "MiB" | "M" => Some(1 << 20),
        "GiB" | "G" => Some(1 << 30),
        "KB" => Some(1_000),
        "MB" => Some(1_000_000),
        "GB" => Some(1_000_000_000),
        _ => None,
    };
    let (Ok(n), Some(unit)) = (digits.parse::<u64>(), unit_of(unit)) else {
        return Err(format!(
            "`{s}` is not a size; write e.g. 32MiB, 64KiB, 1GB or a number of bytes"
        ));
    };
    n.checked_mul(unit)
        .ok_or_else(|| format!("`{s}` is too large a size"))
}

/// The ingress's TLS: a certificate chain and its private key, PEM files
/// (`--tls-cert`, `--tls-key`). Errors name the file and what is wrong.
pub fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect)
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "--tls-cert {}: no PEM certificate in it (`-----BEGIN CERTIFICATE-----`)",
            cert.display()
        ));
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| {
            format!(
                "--tls-cert {} and --tls-key {} do not make a certificate: {e}",
                cert.display(),
                key.display()
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves the ingress on `listener` (behind `tls` when given) until
/// `shutdown`.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    options: IngressOptions,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let IngressOptions {
        tls,
        advertise,
        internal_networks,
        limits,
    } = options;
    // Plain HTTP only: forwarding speaks HTTP/1.1 without TLS.
    let advertise = match (&tls, advertise) {
        (Some(_), _) => None,
        (None, Some(url)) => Some(url),
        (None, None) => listener
            .local_addr()
            .ok()
            .filter(|a| !a.ip().is_unspecified())
            .map(|a| format!("http://{a}")),
    };
    let registration =
        advertise.map(|url| tokio::spawn(register(shared.clone(), url, shutdown.clone())));
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector.clone());
    let client_h2c = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .http2_only(true)
        .build(connector);
    let scheme = if tls.is_some() { "https" } else { "http" };
    let (audits, pending) = tokio::sync::mpsc::channel(AUDIT_QUEUE);
    let writer = tokio::spawn(write_audits(shared.clone(), pending));
    let router = axum::Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .fallback(handle)
        .with_state(Ingress {
            shared,
            internal: internal_networks.into(),
            limits,
            client,
            client_h2c,
            audits,
            scheme,
        });
    let served = accept(listener, tls, limits, router, shutdown).await;
    if let Some(registration) = registration {
        let _ = registration.await;
    }
    // Every connection has ended with the shutdown, and with them every
    // sender: the last grants are written before the ingress is done.
    let _ = writer.await;
    served
}

/// Takes the lease that says where this ingress takes requests (the
/// dispatcher's renewal of all its leases keeps it), and gives it up at
/// `shutdown`.
async fn register(shared: Arc<Shared>, url: String, shutdown: CancellationToken) {
    let name = format!("{}{url}", crate::shards::INGRESS);
    let holder = shared.shards.holder.clone();
    loop {
        let taken = shared
            .store
            .acquire_lease(&name, &holder, crate::shards::LEASE_TTL, SystemTime::now())
            .await;
        match taken {
            Ok(rouse_store::Lease::Held) => break,
            Ok(rouse_store::Lease::Taken { holder: other, .. }) => {
                tracing::warn!(%url, %other, "another dispatcher says its ingress is at this URL; requests are not forwarded here until its lease expires");
            }
            Err(e) => tracing::warn!(%url, error = %e, "cannot register the ingress's URL"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(crate::shards::RENEW_EVERY) => {}
        }
    }
    shutdown.cancelled().await;
    if let Err(e) = shared.store.release_lease(&name, &holder).await {
        tracing::debug!(error = %e, "the ingress's lease was not given up; it expires");
    }
}

/// The URL of the ingress of the dispatcher that runs `service`, when
/// another live dispatcher does and its ingress registered one.
async fn owner_ingress(shared: &Shared, service: uuid::Uuid) -> Option<String> {
    let now = SystemTime::now();
    let name = crate::shards::service_lease(service);
    let holder = shared
        .store
        .leases(&name)
        .await
        .ok()?
        .into_iter()
        .find(|l| l.name == name && l.until > now)?
        .holder;
    if holder == shared.shards.holder {
        return None;
    }
    shared
        .store
        .leases(crate::shards::INGRESS)
        .await
        .ok()?
        .into_iter()
        .find(|l| l.holder == holder && l.until > now)
        .and_then(|l| {
            l.name
                .strip_prefix(crate::shards::INGRESS)
                .map(str::to_owned)
        })
}

/// The header that marks a request one ingress forwarded to another.
const FORWARDED_BY: &str = "rouse-forwarded-by";

/// Passes `request` for `root` on to the ingress at `to` (the one of the
/// dispatcher that runs the service), which checks its caller and serves
/// it; its answer comes back streamed.
async fn forward(
    ingress: &Ingress,
    request: Request<Body>,
    client: SocketAddr,
    to: &str,
    root: &str,
    timeout: Duration,
) -> Response<Body> {
    let (mut parts, body) = request.into_parts();
    let body = Body::new(http_body_util::Limited::new(
        body,
        usize::try_from(ingress.limits.max_body_bytes).unwrap_or(usize::MAX),
    ));
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri = match format!("{to}{path_and_query}").parse::<Uri>() {
        Ok(uri) => uri,
        Err(e) => {
            return plain(
                StatusCode::BAD_GATEWAY,
                format!("cannot address the ingress at {to} that serves `{root}`: {e}"),
            );
        }
    };
    let host = parts.headers.get(header::HOST).cloned();
    strip_hop_by_hop(&mut parts.headers);
    forwarded(&mut parts.headers, client, host, ingress.scheme);
    if let Ok(holder) = HeaderValue::from_str(&ingress.shared.shards.holder) {
        parts.headers.insert(FORWARDED_BY, holder);
    }
    parts.uri = uri;
    parts.version = axum::http::Version::HTTP_11;
    let sent = tokio::time::timeout(
        timeout,
        ingress.client.request(Request::from_parts(parts, body)),
    )
    .await;
    match sent {
        Ok(Ok(response)) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, Body::new(body))
        }
        Ok(Err(e)) if body_too_long(&e) => too_large(root, ingress.limits.max_body_bytes),
        Ok(Err(e)) => plain(
            StatusCode::BAD_GATEWAY,
            format!(
                "`{root}` is run by the dispatcher whose ingress is at {to}, which could not be reached: {e}"
            ),
        ),
        Err(_) => plain(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "`{root}` did not answer through the ingress at {to} within {}s",
                timeout.as_secs()
            ),
        ),
    }
}

/// Grants waiting to be written, at most; beyond it requests wait.
const AUDIT_QUEUE: usize = 4096;
/// Grants written at once (one group commit on SQLite).
const AUDIT_BATCH: usize = 256;

/// Writes audited grants as they come, a batch at a time, until every
/// sender is gone. A request does not wait for its grant's write (a store
/// write per request would bound the ingress by the store), only for room
/// in the queue.
async fn write_audits(shared: Arc<Shared>, mut pending: tokio::sync::mpsc::Receiver<AuditEntry>) {
    let mut batch = Vec::with_capacity(AUDIT_BATCH);
    while pending.recv_many(&mut batch, AUDIT_BATCH).await > 0 {
        let writes = batch.drain(..).map(|entry| shared.authority.audit(entry));
        futures::future::join_all(writes).await;
    }
}

/// Serves connections on `listener` until `shutdown`.
async fn accept(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Limits,
    router: axum::Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: the listener stays.
                    tracing::warn!(error = %e, "the ingress cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (acceptor, router, shutdown) = (acceptor.clone(), router.clone(), shutdown.clone());
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |mut request: Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    let mut router = router.clone();
                    async move {
                        use tower_service::Service as _;
                        router.call(request.map(Body::new)).await
                    }
                });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            // A client that sends its request head slowly (slowloris) is
            // cut off; an oversized head is answered 431 by hyper.
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(limits.max_head_bytes);
            let served = match acceptor {
                Some(acceptor) => {
                    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "a TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let connection = builder
                        .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tls), service);
                    tokio::select! {
                        served = connection => served,
                        () = shutdown.cancelled() => Ok(()),
                    }
                }
                None => {
                    let connection = builder.serve_connection_with_upgrades(
                        hyper_util::rt::TokioIo::new(stream),
                        service,
                    );
                    tokio::select! {
                        served = connection => served,
                        () = shutdown.cancelled() => Ok(()),
                    }
                }
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "an ingress connection ended");
            }
        });
    }
}

fn plain(status: StatusCode, text: String) -> Response<Body> {
    let mut response = Response::new(Body::from(text + "\n"));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_static(RETRY_AFTER_SECS),
        );
    }
    response
}

/// The context root and tag a path names: `/<root>[:<tag>][/…]`.
fn route_of(path: &str) -> Option<(&str, Option<&str>)> {
    let rest = path.strip_prefix('/')?;
    let first = rest.split('/').next().unwrap_or_default();
    if first.is_empty() {
        return None;
    }
    let root = &path[..=first.len()];
    match root.split_once(':') {
        Some((root, tag)) if !tag.is_empty() => Some((root, Some(tag))),
        Some(_) => None,
        None => Some((root, None)),
    }
}

/// `/metrics`: the dispatcher's metrics in the Prometheus text format (no
/// context root can be `/metrics`: it has no `-`).
async fn metrics(
    State(ingress): State<Ingress>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
) -> Response<Body> {
    // Service names and traffic are for the operator's scraper, not for
    // the callers of the services.
    if !ingress.internal.iter().any(|n| n.contains(client.ip())) {
        return plain(
            StatusCode::FORBIDDEN,
            format!(
                "/metrics is served to the internal networks only, and {} is not in them (`rouse server --internal-networks`)",
                client.ip()
            ),
        );
    }
    let mut response = Response::new(Body::from(ingress.shared.ctx.metrics.encode()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(rouse_core::prometheus::CONTENT_TYPE),
    );
    response
}

async fn handle(
    State(ingress): State<Ingress>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    request: Request<Body>,
) -> Response<Body> {
    let path = request.uri().path().to_owned();
    let Some((root, tag)) = route_of(&path) else {
        return plain(
            StatusCode::NOT_FOUND,
            format!(
                "`{path}` names no service: requests go to /<project>-<service>/… (the service's CONTEXT_ROOT), or /<project>-<service>:<tag>/… for a tagged revision"
            ),
        );
    };
    let shared = &ingress.shared;
    let Some(found) = lookup(shared, root).await else {
        return plain(
            StatusCode::NOT_FOUND,
            format!(
                "no service has the context root `{root}`: requests go to /<project>-<service>/…; `rouse services list` shows the services"
            ),
        );
    };
    let response = serve_service(&ingress, request, client, root, tag, found).await;
    ingress
        .shared
        .ctx
        .metrics
        .http_request(root.trim_start_matches('/'), response.status().as_u16());
    response
}

/// The service at `root`. One the table does not have (yet: created a
/// moment ago, in another process, or being taken over here) is waited
/// for after a re-read of the registry, up to [`LOOKUP_WAIT`], as intake
/// waits for a question's recipient.
async fn lookup(shared: &Shared, root: &str) -> Option<crate::table::Found> {
    match shared.table.lookup(Key::Root(root)) {
        Ok(found) => Some(found),
        Err(_) => {
            shared
                .await_entry(Key::Root(root), LOOKUP_WAIT, |_| true)
                .await
        }
    }
}

/// A request for the service `found` (at `root`, `tag`).
async fn serve_service(
    ingress: &Ingress,
    request: Request<Body>,
    client: SocketAddr,
    root: &str,
    tag: Option<&str>,
    found: crate::table::Found,
) -> Response<Body> {
    if found.ingress == IngressPolicy::Internal
        && !ingress.internal.iter().any(|n| n.contains(client.ip()))
    {
        return plain(
            StatusCode::FORBIDDEN,
            format!(
                "service `{root}` takes requests from the internal networks only (its ingress is `internal`), and {} is not in them; call it from inside, or `rouse services update --ingress all` (the networks are `rouse server --internal-networks`)",
                client.ip()
            ),
        );
    }
    // A service another dispatcher runs is its ingress's to serve: the
    // request goes there whole (its token too, checked there), once.
    let forwarded_here = request.headers().contains_key(FORWARDED_BY);
    if !found.owned
        && !forwarded_here
        && let Some(to) = owner_ingress(&ingress.shared, found.uuid).await
    {
        let timeout = found.scaling.wake_timeout + found.scaling.request_timeout;
        return forward(ingress, request, client, &to, root, timeout).await;
    }
    // A service just created is in the table a moment before this
    // dispatcher takes its lease; one another dispatcher runs stays theirs.
    let found = match found.owned {
        true => found,
        false => {
            let within = OWNERSHIP_WAIT.min(found.scaling.wake_timeout);
            let key = Key::Uuid(found.uuid);
            match ingress.shared.await_entry(key, within, |f| f.owned).await {
                Some(found) => found,
                None => {
                    return plain(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "service `{root}` is run by another dispatcher, whose ingress gave no address to forward to (it serves TLS, or listens on every interface without `--ingress-advertise`); send its requests to that dispatcher's ingress"
                        ),
                    );
                }
            }
        }
    };
    let resource = Resource::Service(found.project.clone(), found.name.clone());
    let mut request = request;
    match authorize(ingress, request.headers(), &resource, &found).await {
        Err(refused) => return refused,
        // The caller's Rouse token is the ingress's to check, not the
        // service's to keep: an API token could call the API as the caller.
        Ok(Credential::Rouse) => {
            request.headers_mut().remove(header::AUTHORIZATION);
        }
        Ok(Credential::None | Credential::Foreign) => {}
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > ingress.limits.max_body_bytes) {
        return too_large(root, ingress.limits.max_body_bytes);
    }
    // A tag in the path wins over one in the header.
    let header_tag = request
        .headers()
        .get(TAG_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned);
    let tag = tag.or(header_tag.as_deref());
    let split_key = uuid::Uuid::new_v4().to_string();
    let tx = match found.lane(tag, &split_key) {
        Ok(Some((_, lane))) => lane,
        Ok(None) => found.tx.clone(),
        Err(why) => return plain(StatusCode::NOT_FOUND, why),
    };
    let scaling = found.scaling;
    // The request waits (its queue is bounded by the worker) at most the
    // wake timeout for an instance, whatever it waits on.
    let deadline = tokio::time::Instant::now() + scaling.wake_timeout;
    let (reply, lent) = oneshot::channel();
    match tokio::time::timeout_at(deadline, tx.send(WorkerMsg::Http(reply))).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => {
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("service `{root}` stopped here; retry"),
            );
        }
        Err(_) => {
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("service `{root}` has too much work queued; retry shortly"),
            );
        }
    }
    let lease = match tokio::time::timeout_at(deadline, lent).await {
        Ok(Ok(Ok(lease))) => lease,
        Ok(Ok(Err(e))) => return refused_lease(root, e),
        Ok(Err(_)) => {
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("service `{root}` stopped here while the request waited; retry"),
            );
        }
        Err(_) => {
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "no instance of `{root}` was free within its wake timeout of {}s; retry shortly",
                    scaling.wake_timeout.as_secs()
                ),
            );
        }
    };
    proxy(
        ingress,
        request,
        client,
        lease,
        scaling.request_timeout,
        root,
    )
    .await
}

fn refused_lease(root: &str, e: LeaseError) -> Response<Body> {
    match e {
        LeaseError::NotDeployed(why) | LeaseError::JobMode(why) => {
            plain(StatusCode::SERVICE_UNAVAILABLE, why)
        }
        LeaseError::QueueFull => plain(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the queue of requests waiting for `{root}` is full; retry shortly"),
        ),
        LeaseError::WakeFailed(why) => plain(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("service `{root}` could not be woken: {why}"),
        ),
    }
}

/// What a request's `Authorization` header held.
enum Credential {
    None,
    /// A Rouse token, verified: removed before the request is passed on.
    Rouse,
    /// Something else (a public service's own scheme): passed on as is.
    Foreign,
}

/// Whether the request's caller may call the service, audited. `Err` is
/// the answer when not.
async fn authorize(
    ingress: &Ingress,
    headers: &HeaderMap,
    resource: &Resource,
    found: &crate::table::Found,
) -> Result<Credential, Response<Body>> {
    let shared = &ingress.shared;
    let snapshot = shared.authority.snapshot();
    let permission = Permission::ServicesAsk;
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let now = SystemTime::now();
    let (caller, token_error) =
        match snapshot.http_caller(authorization, &found.project, &found.name, now) {
            Ok(caller) => (caller, None),
            // Not a Rouse token: a public service may do its own
            // authentication with it, so it is judged as anonymous.
            Err(e) => (rouse_iam::Caller::anonymous(), Some(e.to_string())),
        };
    let decision = snapshot.check(&caller, permission, resource, now);
    let mut entry = decision_entry(&caller, "http", resource, permission, &decision);
    match (decision, token_error) {
        (Ok(_), token_error) => {
            if let Err(refused) = ingress.audits.send(entry).await {
                shared.authority.audit(refused.0).await;
            }
            Ok(match (authorization, token_error) {
                (None, _) => Credential::None,
                (Some(_), None) => Credential::Rouse,
                (Some(_), Some(_)) => Credential::Foreign,
            })
        }
        (Err(denied), Some(token_error)) => {
            entry.principal = "unauthenticated".into();
            entry.decision = AuditDecision::Denied;
            shared.authority.audit(entry).await;
            Err(unauthorized(format!(
                "the request's Authorization header is refused ({token_error}), and anonymous callers may not call `{resource}` ({denied})"
            )))
        }
        (Err(denied), None) if caller.is_anonymous() => {
            shared.authority.audit(entry).await;
            Err(unauthorized(format!(
                "`{resource}` requires authentication: send `Authorization: Bearer $(rouse auth print-access-token --service {} --project {})` ({denied})",
                found.name, found.project
            )))
        }
        (Err(denied), None) => {
            shared.authority.audit(entry).await;
            Err(plain(StatusCode::FORBIDDEN, denied.to_string()))
        }
    }
}

fn unauthorized(text: String) -> Response<Body> {
    let mut response = plain(StatusCode::UNAUTHORIZED, text);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"rouse\""),
    );
    response
}

/// Sends `request` to the lent instance and streams its answer back.
async fn proxy(
    ingress: &Ingress,
    mut request: Request<Body>,
    client: SocketAddr,
    lease: HttpLease,
    timeout: Duration,
    root: &str,
) -> Response<Body> {
    let Some(authority) = lease.instance.addr().map(|a| a.to_string()) else {
        return plain(
            StatusCode::BAD_GATEWAY,
            match lease.instance.url() {
                Some(url) => format!(
                    "the instance of `{root}` is at {url}, which the ingress cannot reach yet (only instances on this platform's engines)"
                ),
                None => format!("the instance of `{root}` has no address"),
            },
        );
    };
    // An upgrade (WebSocket, or any protocol the client and the service
    // agree on): asked for with `Connection: upgrade`, passed on, and once
    // the instance answers 101 the two connections are joined.
    let upgrade = request
        .headers()
        .get(header::UPGRADE)
        .filter(|_| wants_upgrade(request.headers()))
        .cloned();
    let client_side = upgrade.is_some().then(|| hyper::upgrade::on(&mut request));
    let (mut parts, body) = request.into_parts();
    let body = Body::new(http_body_util::Limited::new(
        body,
        usize::try_from(ingress.limits.max_body_bytes).unwrap_or(usize::MAX),
    ));
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let uri = match Uri::builder()
        .scheme("http")
        .authority(authority.as_str())
        .path_and_query(path_and_query)
        .build()
    {
        Ok(uri) => uri,
        Err(e) => {
            return plain(
                StatusCode::BAD_GATEWAY,
                format!("cannot address the instance of `{root}`: {e}"),
            );
        }
    };
    let host = parts.headers.get(header::HOST).cloned();
    strip_hop_by_hop(&mut parts.headers);
    if let Some(protocol) = &upgrade {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, protocol.clone());
    }
    forwarded(&mut parts.headers, client, host, ingress.scheme);
    parts.uri = uri;
    // h2c to instances of a `--use-http2` revision (Host becomes
    // :authority), HTTP/1.1 to the others.
    let client = match lease.http2 {
        true => {
            parts.version = axum::http::Version::HTTP_2;
            &ingress.client_h2c
        }
        false => {
            parts.version = axum::http::Version::HTTP_11;
            &ingress.client
        }
    };
    let upstream = Request::from_parts(parts, body);
    let sent = tokio::time::timeout(timeout, client.request(upstream)).await;
    match sent {
        Ok(Ok(response)) => {
            if let (StatusCode::SWITCHING_PROTOCOLS, Some(client_side), Some(protocol)) =
                (response.status(), client_side, upgrade)
            {
                return switched(response, client_side, protocol, lease);
            }
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            // The lease (the instance's slot) is held until the body is sent.
            let body = Body::new(Leased {
                body,
                lease: Some(lease),
            });
            Response::from_parts(parts, body)
        }
        Ok(Err(e)) if body_too_long(&e) => too_large(root, ingress.limits.max_body_bytes),
        Ok(Err(e)) => plain(
            StatusCode::BAD_GATEWAY,
            format!("the instance of `{root}` could not be reached: {e}"),
        ),
        Err(_) => plain(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "`{root}` did not answer within its request timeout of {}s",
                timeout.as_secs()
            ),
        ),
    }
}

/// Whether the request's `Connection` header asks for an upgrade.
fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// The instance switched protocols: answers the client 101 and, once both
/// sides have switched, copies bytes both ways until either closes. The
/// instance's slot is held for as long as the connection lasts.
fn switched(
    mut response: Response<hyper::body::Incoming>,
    client_side: hyper::upgrade::OnUpgrade,
    protocol: HeaderValue,
    lease: HttpLease,
) -> Response<Body> {
    let instance_side = hyper::upgrade::on(&mut response);
    tokio::spawn(async move {
        let _lease = lease;
        match tokio::join!(client_side, instance_side) {
            (Ok(client), Ok(instance)) => {
                let mut client = hyper_util::rt::TokioIo::new(client);
                let mut instance = hyper_util::rt::TokioIo::new(instance);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut instance).await;
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!(error = %e, "an upgraded connection did not switch");
            }
        }
    });
    let (mut parts, _) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    parts.headers.insert(header::UPGRADE, protocol);
    Response::from_parts(parts, Body::empty())
}

fn too_large(root: &str, max: u64) -> Response<Body> {
    plain(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "the request body for `{root}` is larger than the ingress passes on ({max} bytes; `rouse server --ingress-max-body`)"
        ),
    )
}

/// Whether sending failed because the body went past [`Limits::max_body_bytes`].
fn body_too_long(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cause = c.source();
    }
    false
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers the Connection header names are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::try_from(n.trim()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Sets `X-Forwarded-For` (appended to), `-Host` and `-Proto`.
fn forwarded(
    headers: &mut HeaderMap,
    client: SocketAddr,
    host: Option<HeaderValue>,
    scheme: &'static str,
) {
    let ip = client.ip().to_string();
    let chain = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(before) => format!("{before}, {ip}"),
        None => ip,
    };
    if let Ok(value) = HeaderValue::try_from(chain) {
        headers.insert("x-forwarded-for", value);
    }
    if let Some(host) = host {
        headers.insert("x-forwarded-host", host);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static(scheme));
}

/// A response body that holds the instance's slot until the instance has
/// sent all of it. The slot goes back as the last frame is handed on, before
/// it is written to the client: a client that sends its next request as soon
/// as it has read this answer finds the instance free, rather than waking
/// another one for a slot not yet given back.
struct Leased {
    body: hyper::body::Incoming,
    lease: Option<HttpLease>,
}

impl hyper::body::Body for Leased {
    type Data = hyper::body::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        let over = match &polled {
            std::task::Poll::Ready(Some(Ok(_))) => self.body.is_end_stream(),
            std::task::Poll::Ready(_) => true,
            std::task::Poll::Pending => false,
        };
        if over {
            self.lease = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_limits_are_read_and_checked() {
        assert_eq!(parse_size("32MiB"), Ok(32 << 20));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        for bad in ["", "MiB", "12 parsecs", "-1", "99999999999999999999GiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert!(Limits::default().check().is_ok());
        let small_head = Limits {
            max_head_bytes: 4096,
            ..Limits::default()
        };
        assert!(small_head.check().expect_err("small").contains("8KiB"));
        let instant = Limits {
            header_timeout: Duration::from_millis(10),
            ..Limits::default()
        };
        assert!(instant.check().expect_err("short").contains("1s..=5m"));
    }

    #[test]
    fn an_advertised_url_is_plain_http_without_a_path() {
        assert_eq!(
            parse_advertise("http://10.0.0.5:8080/").as_deref(),
            Ok("http://10.0.0.5:8080")
        );
        for (bad, named) in [
            ("https://a:1", "not plain http://"),
            ("http://a:1/x", "has a path"),
            ("10.0.0.5:8080", "not plain http://"),
            ("not a url", "is not a URL"),
        ] {
            let e = parse_advertise(bad).expect_err(bad);
            assert!(e.contains(bad) && e.contains(named), "{bad}: {e}");
        }
    }

    #[test]
    fn networks_hold_their_addresses() {
        let net = |s: &str| Network::parse(s).expect(s);
        let ip = |s: &str| s.parse::<IpAddr>().expect(s);
        assert!(net("10.0.0.0/8").contains(ip("10.200.3.4")));
        assert!(!net("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(net("172.16.0.0/12").contains(ip("172.31.255.255")));
        assert!(!net("172.16.0.0/12").contains(ip("172.32.0.0")));
        assert!(net("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(net("192.0.2.7").contains(ip("192.0.2.7")));
        assert!(!net("192.0.2.7").contains(ip("192.0.2.8")));
        assert!(net("fc00::/7").contains(ip("fd12::1")));
        assert!(!net("fc00::/7").contains(ip("2001:db8::1")));
        // An IPv4 client on a dual-stack socket.
        assert!(net("127.0.0.0/8").contains(ip("::ffff:127.0.0.1")));
        assert!(!net("::1/128").contains(ip("127.0.0.1")));
        let internal = Network::default_internal();
        assert_eq!(internal.len(), Network::DEFAULT_INTERNAL.len());
        for inside in ["127.0.0.1", "10.1.2.3", "192.168.1.1", "::1", "fe80::1"] {
            assert!(internal.iter().any(|n| n.contains(ip(inside))), "{inside}");
        }
        for outside in ["203.0.113.9", "8.8.8.8", "2001:db8::1"] {
            assert!(
                !internal.iter().any(|n| n.contains(ip(outside))),
                "{outside}"
            );
        }
        for (bad, says) in [
            ("10.0.0.0/33", "0..=32"),
            ("ten/8", "not a network"),
            ("::/129", "0..=128"),
        ] {
            let e = Network::parse(bad).expect_err(bad);
            assert!(e.contains(says) && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn a_path_names_a_context_root_and_maybe_a_tag() {
        assert_eq!(route_of("/p-web"), Some(("/p-web", None)));
        assert_eq!(route_of("/p-web/"), Some(("/p-web", None)));
        assert_eq!(route_of("/p-web/a/b"), Some(("/p-web", None)));
        assert_eq!(
            route_of("/p-web:canary/x"),
            Some(("/p-web", Some("canary")))
        );
        assert_eq!(route_of("/"), None);
        assert_eq!(route_of(""), None);
        assert_eq!(route_of("/p-web:/x"), None);
    }

    #[test]
    fn hop_by_hop_headers_stay_behind() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert!(headers.contains_key("x-kept"));
    }

    #[test]
    fn the_forwarded_chain_is_appended_to() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        forwarded(
            &mut headers,
            "127.0.0.1:5000".parse().expect("addr"),
            Some(HeaderValue::from_static("example.test")),
            "http",
        );
        assert_eq!(headers["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(headers["x-forwarded-host"], "example.test");
        assert_eq!(headers["x-forwarded-proto"], "http");
    }
}
