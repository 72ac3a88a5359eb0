//! Readiness probes: one attempt at a time, cheap when the answer is "no".
//!
//! Instances listen on a host port (processes directly, containers in the
//! host's network), so a TCP probe is a plain connect and an HTTP probe a
//! plain request: nothing in between accepts on an instance's behalf.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::Probe;

/// Longest single attempt, so that one stuck connection does not hold up
/// the next poll for long.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);

pub(crate) struct Prober {
    addr: SocketAddr,
    /// The whole HTTP request, formatted once; `None` probes TCP.
    http: Option<Vec<u8>>,
}

impl Prober {
    pub(crate) fn new(probe: &Probe, addr: SocketAddr) -> Self {
        let http = match probe {
            Probe::Tcp => None,
            Probe::Http(path) => {
                let path = if path.starts_with('/') {
                    path.clone()
                } else {
                    format!("/{path}")
                };
                Some(
                    format!(
                        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: rouse-probe\r\nConnection: close\r\n\r\n"
                    )
                    .into_bytes(),
                )
            }
        };
        Self { addr, http }
    }

    /// One attempt, bounded by `deadline`.
    pub(crate) async fn is_ready(&mut self, deadline: Instant) -> bool {
        let limit = deadline.min(Instant::now() + ATTEMPT_TIMEOUT);
        tokio::time::timeout_at(limit, self.attempt())
            .await
            .unwrap_or(false)
    }

    async fn attempt(&self) -> bool {
        match &self.http {
            None => TcpStream::connect(self.addr).await.is_ok(),
            Some(request) => http_status_below_500(self.addr, request).await,
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

    #[tokio::test]
    async fn tcp_probes_follow_the_listener() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut prober = Prober::new(&Probe::Tcp, addr);
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
