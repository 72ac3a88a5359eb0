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
    /// The statuses that count as ready: below this.
    below: u16,
    /// Probes HTTP/2 (h2c) rather than HTTP/1.1.
    h2: bool,
}

impl Prober {
    pub(crate) fn new(probe: &Probe, addr: SocketAddr) -> Self {
        let (path, below) = match probe {
            Probe::Tcp | Probe::ServingHttp2 => (None, 0),
            Probe::Serving => (Some("/"), 1000),
            Probe::Http(path) => (Some(path.as_str()), 500),
        };
        let http = match path {
            None => None,
            Some(path) => {
                let path = if path.starts_with('/') {
                    path.to_owned()
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
        Self {
            addr,
            http,
            below,
            h2: *probe == Probe::ServingHttp2,
        }
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
            None if self.h2 => answers_http2(self.addr).await,
            None => TcpStream::connect(self.addr).await.is_ok(),
            Some(request) => http_status_below(self.addr, request, self.below).await,
        }
    }
}

async fn http_status_below(addr: SocketAddr, request: &[u8], below: u16) -> bool {
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
    parse_status(&head).is_some_and(|status| status < below)
}

/// The HTTP/2 client connection preface (RFC 9113 §3.4) and an empty
/// SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

/// Whether the server answers the HTTP/2 preface with its SETTINGS frame
/// (the first frame a server sends).
async fn answers_http2(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return false;
    };
    if stream.write_all(H2_PREFACE).await.is_err() {
        return false;
    }
    // A frame header: length (3), type (1), flags (1), stream id (4).
    let mut frame = [0u8; 9];
    if stream.read_exact(&mut frame).await.is_err() {
        return false;
    }
    frame[3] == 0x04 && frame[5..9] == [0, 0, 0, 0]
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

    /// An open port whose owner does not answer HTTP is not serving; one
    /// that answers anything, even 503, is.
    #[tokio::test]
    async fn serving_means_answering_http_at_all() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut serving = Prober::new(&Probe::Serving, addr);
        let mut health = Prober::new(&Probe::Http("/healthz".into()), addr);
        // Accepted (by the kernel's backlog) but never answered.
        assert!(
            !serving
                .is_ready(Instant::now() + Duration::from_millis(200))
                .await
        );
        let answer = |status: &'static str| {
            let listener = &listener;
            async move {
                let (mut stream, _) = listener.accept().await.expect("accept");
                let mut request = [0u8; 512];
                let _ = stream.read(&mut request).await;
                let head = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
                stream.write_all(head.as_bytes()).await.expect("answer");
                String::from_utf8_lossy(&request).into_owned()
            }
        };
        // The unanswered attempt is still in the backlog: drain it.
        let _ = listener.accept().await;
        let (ready, request) = tokio::join!(
            serving.is_ready(deadline),
            answer("503 Service Unavailable")
        );
        assert!(ready);
        assert!(request.starts_with("GET / HTTP/1.1\r\n"), "{request}");
        let (ready, request) =
            tokio::join!(health.is_ready(deadline), answer("503 Service Unavailable"));
        assert!(!ready, "an explicit probe's 5xx is not ready");
        assert!(
            request.starts_with("GET /healthz HTTP/1.1\r\n"),
            "{request}"
        );
    }

    /// The h2c probe passes a server that answers the preface with its
    /// SETTINGS frame, not one that answers in HTTP/1.1.
    #[tokio::test]
    async fn serving_http2_means_answering_the_preface_with_settings() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut prober = Prober::new(&Probe::ServingHttp2, addr);
        let answer = |bytes: &'static [u8]| {
            let listener = &listener;
            async move {
                let (mut stream, _) = listener.accept().await.expect("accept");
                let mut preface = vec![0u8; H2_PREFACE.len()];
                stream.read_exact(&mut preface).await.expect("preface");
                stream.write_all(bytes).await.expect("answer");
                preface
            }
        };
        // An empty SETTINGS frame on stream 0.
        let settings = b"\0\0\0\x04\0\0\0\0\0";
        let (ready, preface) = tokio::join!(prober.is_ready(deadline), answer(settings));
        assert!(ready);
        assert_eq!(preface, H2_PREFACE);
        let (ready, _) = tokio::join!(
            prober.is_ready(deadline),
            answer(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        );
        assert!(!ready, "an HTTP/1.1 answer is not HTTP/2");
    }

    #[test]
    fn status_lines_are_parsed() {
        assert_eq!(parse_status(b"HTTP/1.1 200"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.0 404"), Some(404));
        assert_eq!(parse_status(b"HTTP/1.1 2x0"), None);
        assert_eq!(parse_status(b"SSH-2.0-Open"), None);
    }
}
