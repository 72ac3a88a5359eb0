//! Docker engines reached over SSH (`ssh://[user@]host[:port]`), as the
//! Docker CLI reaches them: every connection is an `ssh` process running
//! `docker system dial-stdio` on the node, which joins its standard input
//! and output to the node's engine. So the node needs an SSH server and the
//! Docker CLI, and nothing is listening on the network for the engine.
//!
//! The `ssh` is the system's, with the operator's own configuration, keys
//! and agent; `BatchMode` makes a missing key or unknown host key fail at
//! once instead of prompting. `ROUSE_SSH_COMMAND` replaces the `ssh`
//! command (run by `sh -c`, like git's `GIT_SSH_COMMAND`), e.g.
//! `ssh -i /etc/rouse/node_key -o UserKnownHostsFile=/etc/rouse/known_hosts`.
//!
//! An `ssh` process ends with its connection; when the platform dies its
//! standard input closes, `dial-stdio` ends and `ssh` with it: nothing is
//! left running on either machine.

use std::future::Future;
use std::pin::Pin;
use std::process::Stdio;
use std::task::{Context, Poll};
use std::time::Duration;

use bollard::{BollardRequest, ClientVersion, Docker};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, Join};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// The environment variable that replaces the `ssh` command.
pub const SSH_COMMAND_VAR: &str = "ROUSE_SSH_COMMAND";
/// How long an idle connection (and its `ssh` process) is kept for reuse.
const IDLE: Duration = Duration::from_secs(30);
/// Bound on the first contact (key exchange, authentication, `docker version`).
const FIRST_CONTACT: Duration = Duration::from_secs(20);

/// Where an `ssh://` engine is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    /// `host` or `user@host`, as `ssh` takes it.
    pub destination: String,
    pub host: String,
    pub port: Option<u16>,
}

impl SshTarget {
    /// The `ssh` command for `remote` (words run on the node).
    fn command(&self, remote: &[&str]) -> Command {
        let custom = std::env::var(SSH_COMMAND_VAR)
            .ok()
            .filter(|c| !c.trim().is_empty());
        let mut cmd = match custom {
            Some(custom) => {
                let mut cmd = Command::new("sh");
                cmd.arg("-c")
                    .arg(format!("{custom} \"$@\""))
                    .arg("rouse-ssh");
                cmd
            }
            None => Command::new("ssh"),
        };
        cmd.args(["-o", "BatchMode=yes", "-T"]);
        if let Some(port) = self.port {
            cmd.arg("-p").arg(port.to_string());
        }
        cmd.arg("--").arg(&self.destination).args(remote);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Runs `docker version` on the node: whether ssh gets in and the
    /// node's CLI reaches its engine, and the engine's API version.
    async fn api_version(&self) -> Result<ClientVersion, String> {
        let mut cmd = self.command(&["docker", "version", "--format", "{{.Server.APIVersion}}"]);
        cmd.stdin(Stdio::null());
        let run = async {
            let out = cmd
                .output()
                .await
                .map_err(|e| format!("cannot run ssh: {e}"))?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            if !out.status.success() {
                let said = stderr.trim();
                return Err(format!(
                    "`ssh {} docker version` failed ({}): {}",
                    self.destination,
                    out.status,
                    if said.is_empty() {
                        "it printed nothing"
                    } else {
                        said
                    }
                ));
            }
            crate::docker::parse_api_version(stdout.trim()).ok_or_else(|| {
                format!(
                    "`docker version` on {} printed `{}`, not an API version",
                    self.host,
                    stdout.trim()
                )
            })
        };
        tokio::time::timeout(FIRST_CONTACT, run)
            .await
            .map_err(|_| {
                format!(
                    "ssh to {} did not finish within {FIRST_CONTACT:?}",
                    self.destination
                )
            })?
    }

    /// A client of the node's engine over `ssh … docker system dial-stdio`.
    pub(crate) async fn connect(&self, timeout_secs: u64) -> Result<Docker, String> {
        let engine = self.api_version().await?;
        let version = if engine < *bollard::API_DEFAULT_VERSION {
            engine
        } else {
            *bollard::API_DEFAULT_VERSION
        };
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(IDLE)
            .build(Dialer {
                target: self.clone(),
            });
        Docker::connect_with_custom_transport(
            move |request: BollardRequest| {
                let client = client.clone();
                async move {
                    client
                        .request(request)
                        .await
                        .map_err(bollard::errors::Error::from)
                }
            },
            // The URI's host is not used: every connection dials the node.
            Some("http://docker"),
            timeout_secs,
            &version,
        )
        .map_err(|e| e.to_string())
    }
}

/// Opens connections: one `ssh` process each.
#[derive(Clone)]
struct Dialer {
    target: SshTarget,
}

impl tower_service::Service<hyper::Uri> for Dialer {
    type Response = SshStream;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<SshStream>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: hyper::Uri) -> Self::Future {
        let target = self.target.clone();
        Box::pin(async move {
            let mut child = target
                .command(&["docker", "system", "dial-stdio"])
                .spawn()?;
            let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                return Err(std::io::Error::other("ssh without pipes"));
            };
            // What ssh says (a refused key, a closed connection) goes to the
            // platform's log rather than filling a pipe.
            if let Some(mut stderr) = child.stderr.take() {
                let host = target.host.clone();
                tokio::spawn(async move {
                    let mut said = String::new();
                    let _ = stderr.read_to_string(&mut said).await;
                    let said = said.trim();
                    if !said.is_empty() {
                        tracing::warn!(node = %host, ssh = %said, "ssh to a node's engine said");
                    }
                });
            }
            Ok(SshStream {
                io: TokioIo::new(tokio::io::join(stdout, stdin)),
                _child: child,
            })
        })
    }
}

/// One connection: the `ssh` process's output and input; the process is
/// killed when the connection is dropped.
struct SshStream {
    io: TokioIo<Join<ChildStdout, ChildStdin>>,
    _child: Child,
}

impl hyper::rt::Read for SshStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for SshStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl Connection for SshStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}
