//! Readiness probes: one attempt at a time, cheap when the answer is "no".
//!
//! A TCP probe through Docker's userland port proxy cannot be a plain
//! connect: the proxy accepts every connection on the host port and closes
//! it only after failing to reach the container. So for containers the TCP
//! probe connects to the container's own address when the host can reach it
//! (a refusal there is definite), and otherwise connects through the proxy
//! and counts the connection only if it survives a short read window. HTTP
//! probes always go through `addr`: a response proves the whole path.

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
            Probe::Tcp => Kind::Tcp { direct, proxied },
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
            Kind::Tcp { direct, proxied } => {
                if let Some(target) = *direct {
                    match tokio::time::timeout(DIRECT_CONNECT_TIMEOUT, TcpStream::connect(target))
                        .await
                    {
                        Ok(Ok(_)) => return true,
                        Ok(Err(err)) if err.kind() == std::io::ErrorKind::ConnectionRefused => {
                            return false;
                        }
                        Ok(Err(_)) | Err(_) => {
                            tracing::debug!(%target, "container address unreachable; probing through the published port");
                            *direct = None;
                        }
                    }
                }
                let Ok(mut stream) = TcpStream::connect(self.addr).await else {
                    return false;
                };
                if !*proxied {
                    return true;
                }
                let mut byte = [0u8; 1];
                match tokio::time::timeout(PROXY_READ_WINDOW, stream.read(&mut byte)).await {
                    // Still open: the proxy reached the instance.
                    Err(_) => true,
                    // The instance spoke first.
                    Ok(Ok(n)) => n > 0,
                    Ok(Err(_)) => false,
                }
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

    #[test]
    fn status_lines_are_parsed() {
        assert_eq!(parse_status(b"HTTP/1.1 200"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.0 404"), Some(404));
        assert_eq!(parse_status(b"HTTP/1.1 2x0"), None);
        assert_eq!(parse_status(b"SSH-2.0-Open"), None);
    }
}
