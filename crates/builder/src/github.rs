//! Commit statuses: a build's progress shown on the pushed commit on GitHub
//! (`pending` when it starts, `success`, `failure` or `error` at the end),
//! under the context `rouse/<project>-<service>` and linking to the build.
//!
//! One request: `POST {api}/repos/{owner}/{repo}/statuses/{sha}` with the
//! trigger's token as `Authorization: Bearer`, `Accept:
//! application/vnd.github+json` and the REST API version header. The API's
//! base URL is configurable (`https://api.github.com` by default; GitHub
//! Enterprise Server's is `https://HOST/api/v3`), which is also how tests
//! point it at a local server that records what it receives.
//!
//! # Why not octocrab
//!
//! The design names octocrab for GitHub. Checked against this workspace's
//! lock file, octocrab 0.54 (default features) would add 13 crates the
//! platform does not build yet: octocrab itself (a large crate covering the
//! whole GitHub API), a second `jsonwebtoken` (10, the tree has 11), a
//! second `hmac` (0.12), `snafu` and its derive, `secrecy`, `http-serde`,
//! `arc-swap`, `pem`, `simple_asn1`, `num-bigint`, `num-integer` and
//! `serde_path_to_error`, all for one POST. The builder uses the `reqwest`
//! client the platform already links instead. If Rouse later needs much
//! more of the GitHub API (checks, deployments, app installations),
//! octocrab is worth its weight then.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::payload::CommitId;
use crate::trigger::Secret;

/// GitHub's public API.
pub const DEFAULT_API_URL: &str = "https://api.github.com";
/// The REST API version the requests are written for.
const API_VERSION: &str = "2022-11-28";
/// GitHub cuts descriptions at 140 characters; cut them first, keeping the
/// start of the reason.
pub const MAX_DESCRIPTION_CHARS: usize = 140;
/// Bound on one request: a status is a nicety, a hung API must not hold a
/// build's task.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Most of an error response kept for the message.
const MAX_ERROR_BODY: usize = 16 * 1024;

/// A commit status state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CommitState {
    Pending,
    Success,
    Failure,
    /// Rouse itself failed (not the user's code).
    Error,
}

/// One status to set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitStatus {
    pub state: CommitState,
    /// `rouse/<project>-<service>`: one line per service on the commit.
    pub context: String,
    /// Where the build can be seen.
    pub target_url: Option<String>,
    pub description: Option<String>,
}

/// `OWNER/REPO` on GitHub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GithubRepo {
    pub owner: String,
    pub name: String,
}

impl GithubRepo {
    /// From a push's `repository.full_name`.
    pub fn from_full_name(full_name: &str) -> Option<Self> {
        let (owner, name) = full_name.trim().split_once('/')?;
        let name = name.strip_suffix(".git").unwrap_or(name);
        let valid = |part: &str| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        (valid(owner) && valid(name) && name != "." && name != "..").then(|| Self {
            owner: owner.to_owned(),
            name: name.to_owned(),
        })
    }

    /// From a repository URL on `host` (`github.com`, or an Enterprise
    /// Server's host): `https://HOST/OWNER/REPO(.git)`, `git@HOST:OWNER/REPO.git`
    /// or `ssh://git@HOST/OWNER/REPO`.
    pub fn from_url(url: &str, host: &str) -> Option<Self> {
        let url = url.trim().trim_end_matches('/');
        let path = if let Some((_, rest)) = url.split_once("://") {
            let (authority, path) = rest.split_once('/')?;
            let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            let authority_host = authority.split(':').next()?;
            authority_host.eq_ignore_ascii_case(host).then_some(path)?
        } else {
            let (authority, path) = url.split_once(':')?;
            let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            authority.eq_ignore_ascii_case(host).then_some(path)?
        };
        Self::from_full_name(path)
    }
}

impl fmt::Display for GithubRepo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.owner, self.name)
    }
}

/// Why a status was not set.
#[derive(Debug, thiserror::Error)]
pub enum GithubError {
    #[error("GitHub API URL `{url}` must be an http(s) URL such as `https://api.github.com`")]
    ApiUrl { url: String },
    #[error("cannot create the HTTP client: {0}")]
    Client(String),
    #[error("cannot reach the GitHub API at `{url}`: {reason}")]
    Request { url: String, reason: String },
    #[error("GitHub answered {status} to setting a commit status on {repo}@{sha}: {message}{}", hint(*.status))]
    Status {
        status: u16,
        repo: String,
        sha: String,
        message: String,
    },
}

fn hint(status: u16) -> &'static str {
    match status {
        401 => "; the trigger's GitHub token is invalid or expired: replace it",
        403 | 404 => {
            "; the trigger's GitHub token cannot write commit statuses of this repository: give it the `repo:status` scope (classic token) or \"Commit statuses: write\" (fine-grained token) on the repository"
        }
        422 => "; GitHub refused the status (an unknown commit, or too many statuses on it)",
        _ => "",
    }
}

/// Sets commit statuses through the GitHub REST API.
#[derive(Debug, Clone)]
pub struct StatusReporter {
    client: reqwest::Client,
    api_url: String,
}

impl StatusReporter {
    /// A reporter for the API at `api_url` (see [`DEFAULT_API_URL`]).
    pub fn new(api_url: &str) -> Result<Self, GithubError> {
        let trimmed = api_url.trim().trim_end_matches('/');
        let lower = trimmed.to_ascii_lowercase();
        let rest = lower
            .strip_prefix("https://")
            .or_else(|| lower.strip_prefix("http://"));
        if rest.is_none_or(|host| host.is_empty() || host.starts_with('/')) {
            return Err(GithubError::ApiUrl {
                url: api_url.to_owned(),
            });
        }
        let client = reqwest::Client::builder()
            .user_agent(concat!("rouse/", env!("CARGO_PKG_VERSION")))
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|err| GithubError::Client(err.to_string()))?;
        Ok(Self {
            client,
            api_url: trimmed.to_owned(),
        })
    }

    pub fn api_url(&self) -> &str {
        &self.api_url
    }

    /// Sets `status` on commit `sha` of `repo`.
    pub async fn set_status(
        &self,
        repo: &GithubRepo,
        sha: &CommitId,
        token: &Secret,
        status: &CommitStatus,
    ) -> Result<(), GithubError> {
        #[derive(Serialize)]
        struct Body<'a> {
            state: CommitState,
            context: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            target_url: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            description: Option<String>,
        }
        let url = format!(
            "{}/repos/{}/{}/statuses/{}",
            self.api_url, repo.owner, repo.name, sha
        );
        let body = Body {
            state: status.state,
            context: &status.context,
            target_url: status.target_url.as_deref(),
            description: status.description.as_deref().map(truncate_description),
        };
        let mut response = self
            .client
            .post(&url)
            .bearer_auth(token.expose())
            .header("Accept", "application/vnd.github+json")
            .header("X-GitHub-Api-Version", API_VERSION)
            .json(&body)
            .send()
            .await
            .map_err(|err| GithubError::Request {
                url: url.clone(),
                reason: error_chain(&err),
            })?;
        let code = response.status();
        if code.is_success() {
            return Ok(());
        }
        let mut text = Vec::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            let room = MAX_ERROR_BODY.saturating_sub(text.len());
            text.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if room == 0 {
                break;
            }
        }
        let message = serde_json::from_slice::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
            .unwrap_or_else(|| {
                String::from_utf8_lossy(&text)
                    .trim()
                    .chars()
                    .take(300)
                    .collect()
            });
        Err(GithubError::Status {
            status: code.as_u16(),
            repo: repo.to_string(),
            sha: sha.to_string(),
            message: if message.is_empty() {
                code.canonical_reason()
                    .unwrap_or("no reason given")
                    .to_owned()
            } else {
                message
            },
        })
    }
}

fn truncate_description(text: &str) -> String {
    if text.chars().count() <= MAX_DESCRIPTION_CHARS {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(MAX_DESCRIPTION_CHARS - 1).collect();
    cut.push('…');
    cut
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const SHA: &str = "6113728f27ae82c7b1a177c8d03f9e96e0adf246";

    #[derive(Debug, Clone)]
    struct Recorded {
        method: String,
        path: String,
        headers: HashMap<String, String>,
        body: serde_json::Value,
    }

    /// A stand-in for the GitHub API: records each request and answers
    /// with the given status and body.
    struct FakeGithub {
        url: String,
        requests: Arc<Mutex<Vec<Recorded>>>,
    }

    impl FakeGithub {
        async fn start(status: u16, answer: &'static str) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let url = format!("http://{}", listener.local_addr().expect("addr"));
            let requests = Arc::new(Mutex::new(Vec::new()));
            let recorded = requests.clone();
            tokio::spawn(async move {
                while let Ok((mut socket, _)) = listener.accept().await {
                    let recorded = recorded.clone();
                    tokio::spawn(async move {
                        let mut data = Vec::new();
                        let mut buf = [0u8; 4096];
                        let (head, body_start) = loop {
                            let n = socket.read(&mut buf).await.expect("read");
                            assert!(n > 0, "connection closed mid-request");
                            data.extend_from_slice(&buf[..n]);
                            if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                                break (String::from_utf8_lossy(&data[..at]).into_owned(), at + 4);
                            }
                        };
                        let mut lines = head.lines();
                        let request_line = lines.next().expect("request line").to_owned();
                        let headers: HashMap<String, String> = lines
                            .filter_map(|l| l.split_once(':'))
                            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                            .collect();
                        let length: usize = headers
                            .get("content-length")
                            .and_then(|l| l.parse().ok())
                            .unwrap_or(0);
                        while data.len() < body_start + length {
                            let n = socket.read(&mut buf).await.expect("read body");
                            assert!(n > 0, "connection closed mid-body");
                            data.extend_from_slice(&buf[..n]);
                        }
                        let mut parts = request_line.split(' ');
                        recorded.lock().expect("lock").push(Recorded {
                            method: parts.next().unwrap_or_default().to_owned(),
                            path: parts.next().unwrap_or_default().to_owned(),
                            headers,
                            body: serde_json::from_slice(&data[body_start..body_start + length])
                                .expect("json body"),
                        });
                        let response = format!(
                            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                            answer.len()
                        );
                        let _ = socket.write_all(response.as_bytes()).await;
                    });
                }
            });
            Self { url, requests }
        }

        fn requests(&self) -> Vec<Recorded> {
            self.requests.lock().expect("lock").clone()
        }
    }

    fn repo() -> GithubRepo {
        GithubRepo::from_full_name("octo/hello").expect("repo")
    }

    fn sha() -> CommitId {
        CommitId::parse(SHA).expect("sha")
    }

    fn status(state: CommitState, description: &str) -> CommitStatus {
        CommitStatus {
            state,
            context: "rouse/acme-echo".into(),
            target_url: Some("http://127.0.0.1:7070/builds/b1".into()),
            description: Some(description.into()),
        }
    }

    #[tokio::test]
    async fn posts_pending_then_success_as_github_expects() {
        let github = FakeGithub::start(201, r#"{"id":1,"state":"pending"}"#).await;
        let reporter = StatusReporter::new(&format!("{}/", github.url)).expect("reporter");
        let token = Secret::new("ghp_test_token");
        reporter
            .set_status(
                &repo(),
                &sha(),
                &token,
                &status(CommitState::Pending, "building"),
            )
            .await
            .expect("pending set");
        let long = "x".repeat(500);
        reporter
            .set_status(
                &repo(),
                &sha(),
                &token,
                &status(CommitState::Success, &long),
            )
            .await
            .expect("success set");
        let requests = github.requests();
        assert_eq!(requests.len(), 2);
        let first = &requests[0];
        assert_eq!(first.method, "POST");
        assert_eq!(first.path, format!("/repos/octo/hello/statuses/{SHA}"));
        assert_eq!(first.headers["authorization"], "Bearer ghp_test_token");
        assert_eq!(first.headers["accept"], "application/vnd.github+json");
        assert_eq!(first.headers["x-github-api-version"], API_VERSION);
        assert!(first.headers["user-agent"].starts_with("rouse/"));
        assert_eq!(
            first.body,
            serde_json::json!({
                "state": "pending",
                "context": "rouse/acme-echo",
                "target_url": "http://127.0.0.1:7070/builds/b1",
                "description": "building"
            })
        );
        assert_eq!(requests[1].body["state"], "success");
        let description = requests[1].body["description"]
            .as_str()
            .expect("description");
        assert_eq!(description.chars().count(), MAX_DESCRIPTION_CHARS);
    }

    #[tokio::test]
    async fn an_enterprise_api_path_is_kept() {
        let github = FakeGithub::start(201, "{}").await;
        let reporter = StatusReporter::new(&format!("{}/api/v3", github.url)).expect("reporter");
        reporter
            .set_status(
                &repo(),
                &sha(),
                &Secret::new("t"),
                &status(CommitState::Failure, "failed"),
            )
            .await
            .expect("set");
        assert_eq!(
            github.requests()[0].path,
            format!("/api/v3/repos/octo/hello/statuses/{SHA}")
        );
        assert_eq!(github.requests()[0].body["state"], "failure");
    }

    #[tokio::test]
    async fn refusals_explain_the_fix_and_never_show_the_token() {
        let github =
            FakeGithub::start(404, r#"{"message":"Not Found","documentation_url":"x"}"#).await;
        let reporter = StatusReporter::new(&github.url).expect("reporter");
        let err = reporter
            .set_status(
                &repo(),
                &sha(),
                &Secret::new("ghp_secret"),
                &status(CommitState::Error, "e"),
            )
            .await
            .expect_err("refused");
        let text = err.to_string();
        assert!(
            text.starts_with(
                "GitHub answered 404 to setting a commit status on octo/hello@6113728f"
            ),
            "{text}"
        );
        assert!(text.contains("Not Found"), "{text}");
        assert!(text.contains("Commit statuses: write"), "{text}");
        assert!(!text.contains("ghp_secret"), "{text}");

        // Nothing listening: a request error naming the URL.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let closed = format!("http://{}", listener.local_addr().expect("addr"));
        drop(listener);
        let reporter = StatusReporter::new(&closed).expect("reporter");
        let err = reporter
            .set_status(
                &repo(),
                &sha(),
                &Secret::new("t"),
                &status(CommitState::Pending, "p"),
            )
            .await
            .expect_err("unreachable");
        assert!(matches!(err, GithubError::Request { .. }), "{err}");
        assert!(err.to_string().contains(&closed), "{err}");
    }

    #[test]
    fn api_urls_and_repositories() {
        assert!(StatusReporter::new("api.github.com").is_err());
        assert!(StatusReporter::new("https://").is_err());
        assert_eq!(
            StatusReporter::new(DEFAULT_API_URL)
                .expect("default")
                .api_url(),
            "https://api.github.com"
        );
        let expected = Some(repo());
        for url in [
            "https://github.com/octo/hello",
            "https://github.com/octo/hello.git",
            "git@github.com:octo/hello.git",
            "ssh://git@github.com/octo/hello",
        ] {
            assert_eq!(GithubRepo::from_url(url, "github.com"), expected, "{url}");
        }
        assert_eq!(
            GithubRepo::from_url("https://gitlab.com/octo/hello", "github.com"),
            None
        );
        assert_eq!(
            GithubRepo::from_url("file:///srv/hello.git", "github.com"),
            None
        );
        assert_eq!(GithubRepo::from_full_name("octo"), None);
        assert_eq!(GithubRepo::from_full_name("octo/../x"), None);
    }
}
