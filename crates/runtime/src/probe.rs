//! Readiness probes: one attempt at a time, cheap when the answer is "no".
//!
//! A TCP probe through Docker's userland port proxy cannot be a plain
//! connect: the proxy accepts every connection on the host port and closes
//! it only after failing to reach the container. So for containers the TCP
//! probe first connects to the container's own address, which is exact where
//! the host can reach it (rootful Linux engines). Where it cannot (Docker
//! Desktop, rootless engines, filtered bridges), a connection through the
//! proxy counts only if it survives a short read window, several attempts in
//! a row, so that one slow close under load is not taken for readiness.
//! HTTP probes always go through `addr`: a response proves the whole path.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::Probe;

/// How long a connect to the container's own address may take before the
/// host is taken to have no route to it (Docker Desktop, rootless engines):
/// a local bridge answers in microseconds.
const DIRECT_CONNECT_TIMEOUT: Duration = Duration::from_millis(100);
/// How long a connection through Docker's proxy must stay open to count:
/// the proxy closes it well within a millisecond when the container refuses.
const PROXY_READ_WINDOW: Duration = Duration::from_millis(10);
/// How many attempts in a row a proxied connection must survive when the
/// container's own address gave no answer to trust.
const PROXY_CONFIRMATIONS: u32 = 3;
/// Longest single attempt, so that one stuck connection does not hold up
/// the next poll for long.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);

pub(crate) struct Prober {
    kind: Kind,
    addr: SocketAddr,
}

enum Kind {
    Tcp {
        /// Still to try first; cleared when it turns out to be unreachable.
        direct: Option<SocketAddr>,
        /// Connections to `addr` pass a proxy (containers).
        proxied: bool,
        /// Proxied connections that survived the window, in a row.
        survived: u32,
    },
    /// The whole request, formatted once.
    Http(Vec<u8>),
}

impl Prober {
    /// `proxied`: `addr` is a port published through Docker's proxy, and
    /// `direct` the container's own address behind it, if known.
    pub(crate) fn new(
        probe: &Probe,
        addr: SocketAddr,
        proxied: bool,
        direct: Option<SocketAddr>,
    ) -> Self {
        let kind = match probe {
            Probe::Tcp => Kind::Tcp {
                direct,
                proxied,
                survived: 0,
            },
            Probe::Http(path) => {
                let path = if path.starts_with('/') {
                    path.clone()
                } else {
                    format!("/{path}")
                };
                Kind::Http(
                    format!(
                        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: rouse-probe\r\nConnection: close\r\n\r\n"
                    )
                    .into_bytes(),
                )
            }
        };
        Self { kind, addr }
    }

    /// One attempt, bounded by `deadline`.
    pub(crate) async fn is_ready(&mut self, deadline: Instant) -> bool {
        let limit = deadline.min(Instant::now() + ATTEMPT_TIMEOUT);
        tokio::time::timeout_at(limit, self.attempt())
            .await
            .unwrap_or(false)
    }

    async fn attempt(&mut self) -> bool {
        match &mut self.kind {
            Kind::Tcp {
                direct,
                proxied,
                survived,
            } => {
                if let Some(target) = *direct {
                    match tokio::time::timeout(DIRECT_CONNECT_TIMEOUT, TcpStream::connect(target))
                        .await
                    {
                        Ok(Ok(_)) => return true,
                        // Normally "not listening yet"; but a filter can
                        // refuse too, so the proxy gets asked as well.
                        Ok(Err(err)) if err.kind() == std::io::ErrorKind::ConnectionRefused => {}
                        Ok(Err(_)) | Err(_) => {
                            tracing::debug!(%target, "container address unreachable; probing through the published port");
                            *direct = None;
                        }
                    }
                }
                let Ok(mut stream) = TcpStream::connect(self.addr).await else {
                    *survived = 0;
                    return false;
                };
                if !*proxied {
                    return true;
                }
                let mut byte = [0u8; 1];
                let open =
                    match tokio::time::timeout(PROXY_READ_WINDOW, stream.read(&mut byte)).await {
                        // Still open: the proxy seems to have reached the instance.
                        Err(_) => true,
                        // The instance spoke first.
                        Ok(Ok(n)) => n > 0,
                        Ok(Err(_)) => false,
                    };
                *survived = if open { *survived + 1 } else { 0 };
                *survived >= PROXY_CONFIRMATIONS
            }
            Kind::Http(request) => http_status_below_500(self.addr, request).await,
        }
    }
}

async fn http_status_below_500(addr: SocketAddr, request: &[u8]) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return false;
    };
    if stream.write_all(request).await.is_err() {
        return false;
    }
    // "HTTP/1.1 200" is all we need.
    let mut head = [0u8; 12];
    let mut filled = 0;
    while filled < head.len() {
        match stream.read(&mut head[filled..]).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => filled += n,
        }
    }
    parse_status(&head).is_some_and(|status| status < 500)
}

fn parse_status(head: &[u8; 12]) -> Option<u16> {
    if !head.starts_with(b"HTTP/") || head[8] != b' ' {
        return None;
    }
    head[9..12].iter().try_fold(0u16, |status, &digit| {
        digit
            .is_ascii_digit()
            .then(|| status * 10 + u16::from(digit - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for Docker's port proxy: accepts every connection, then
    /// closes it at once (nothing behind it) or holds it (a server behind).
    async fn proxy(backend_up: bool) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                if backend_up {
                    held.push(stream);
                }
            }
        });
        addr
    }

    #[tokio::test]
    async fn tcp_probes_through_a_proxy_are_not_fooled_by_its_accept() {
        // TEST-NET-1: never routed, so the direct attempt fails, times out or
        // is refused by a filter, and the proxied port decides.
        let unreachable = Some(SocketAddr::from(([192, 0, 2, 1], 8080)));
        let deadline = Instant::now() + Duration::from_secs(5);

        let mut down = Prober::new(&Probe::Tcp, proxy(false).await, true, unreachable);
        for _ in 0..2 * PROXY_CONFIRMATIONS {
            assert!(!down.is_ready(deadline).await);
        }

        let mut up = Prober::new(&Probe::Tcp, proxy(true).await, true, unreachable);
        for _ in 1..PROXY_CONFIRMATIONS {
            assert!(!up.is_ready(deadline).await, "confirmed too early");
        }
        assert!(up.is_ready(deadline).await);
    }

    #[tokio::test]
    async fn tcp_probes_connect_directly_when_they_can() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let direct = listener.local_addr().expect("address");
        let deadline = Instant::now() + Duration::from_secs(5);
        // The proxy would say no; the direct address decides.
        let mut prober = Prober::new(&Probe::Tcp, proxy(false).await, true, Some(direct));
        assert!(prober.is_ready(deadline).await);
        drop(listener);
        assert!(!prober.is_ready(deadline).await);
    }

    #[test]
    fn status_lines_are_parsed() {
        assert_eq!(parse_status(b"HTTP/1.1 200"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.0 404"), Some(404));
        assert_eq!(parse_status(b"HTTP/1.1 2x0"), None);
        assert_eq!(parse_status(b"SSH-2.0-Open"), None);
    }
}
