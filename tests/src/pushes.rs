//! Git pushes as the builder sees them, for the builder's end-to-end test and
//! the bench: a bare repository standing in for GitHub's `acme/echo` with a
//! working clone that commits the static echo and a `FROM scratch`
//! Dockerfile, the push payload GitHub sends, and plain HTTP/1.1 requests to
//! the webhook server (one connection each, as GitHub makes them).

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

/// `before` of a push that creates a branch.
pub const ZERO_COMMIT: &str = "0000000000000000000000000000000000000000";

/// Runs `git ARGS` in `dir` with no system or user configuration.
pub fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .map_err(|e| format!("cannot run git ({e}); the builder needs it"))?;
    if !out.status.success() {
        return Err(format!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A `FROM scratch` Dockerfile for the static echo answering `version`.
pub fn echo_dockerfile(version: &str) -> String {
    format!(
        "FROM scratch\nCOPY echo /echo\nENV ECHO_VERSION={version}\nEXPOSE 8080\nENTRYPOINT [\"/echo\"]\n"
    )
}

/// A bare repository (`<tmp>/acme/echo.git`) and a working clone holding
/// the static echo binary, pushing to it.
pub struct Repo {
    _dir: tempfile::TempDir,
    bare: PathBuf,
    work: PathBuf,
}

impl Repo {
    pub fn new(echo: &Path) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let bare = dir.path().join("acme/echo.git");
        let work = dir.path().join("work");
        for d in [&bare, &work] {
            std::fs::create_dir_all(d).map_err(|e| e.to_string())?;
        }
        git(&bare, &["init", "--bare", "-q", "-b", "main"])?;
        git(&work, &["init", "-q", "-b", "main"])?;
        git(&work, &["config", "user.email", "dev@example.com"])?;
        git(&work, &["config", "user.name", "Dev"])?;
        let url = bare.to_str().ok_or("a non-UTF-8 temporary path")?;
        git(&work, &["remote", "add", "origin", url])?;
        std::fs::copy(echo, work.join("echo"))
            .map_err(|e| format!("cannot copy the echo binary: {e}"))?;
        Ok(Self {
            _dir: dir,
            bare,
            work,
        })
    }

    /// The bare repository's path: what a trigger's `--repo` names.
    pub fn url(&self) -> String {
        self.bare.display().to_string()
    }

    /// Commits `dockerfile` on the current branch; returns the commit id.
    pub fn commit(&self, dockerfile: &str, message: &str) -> Result<String, String> {
        std::fs::write(self.work.join("Dockerfile"), dockerfile).map_err(|e| e.to_string())?;
        git(&self.work, &["add", "-A"])?;
        git(
            &self.work,
            &["commit", "-q", "--allow-empty", "-m", message],
        )?;
        git(&self.work, &["rev-parse", "HEAD"])
    }

    /// Runs `git ARGS` in the working clone (e.g. to switch branches).
    pub fn git(&self, args: &[&str]) -> Result<String, String> {
        git(&self.work, args)
    }

    /// Pushes the current commit to `branch` (forced).
    pub fn push(&self, branch: &str) -> Result<(), String> {
        let refspec = format!("HEAD:refs/heads/{branch}");
        git(&self.work, &["push", "-q", "-f", "origin", &refspec]).map(|_| ())
    }

    /// The push payload GitHub sends for `before..after` on `branch` (the
    /// fields Rouse reads and the usual others).
    pub fn push_payload(&self, branch: &str, before: &str, after: &str) -> Vec<u8> {
        let commit = json!({
            "id": after,
            "tree_id": after,
            "distinct": true,
            "message": "change",
            "timestamp": "2026-01-01T00:00:00Z",
            "url": format!("https://github.com/acme/echo/commit/{after}"),
            "author": {"name": "Dev", "email": "dev@example.com", "username": "dev"},
            "committer": {"name": "Dev", "email": "dev@example.com", "username": "dev"},
            "added": [],
            "removed": [],
            "modified": ["Dockerfile"],
        });
        json!({
            "ref": format!("refs/heads/{branch}"),
            "before": before,
            "after": after,
            "created": before == ZERO_COMMIT,
            "deleted": false,
            "forced": false,
            "base_ref": null,
            "compare": format!("https://github.com/acme/echo/compare/{before}...{after}"),
            "commits": [commit.clone()],
            "head_commit": commit,
            "repository": {
                "id": 1,
                "node_id": "R_1",
                "name": "echo",
                "full_name": "acme/echo",
                "private": false,
                "owner": {"login": "acme", "id": 2},
                "html_url": "https://github.com/acme/echo",
                "clone_url": self.url(),
                "default_branch": "main",
            },
            "pusher": {"name": "dev", "email": "dev@example.com"},
            "sender": {"login": "dev", "id": 3},
        })
        .to_string()
        .into_bytes()
    }
}

/// The headers of a GitHub delivery of `event` signed with `secret`.
pub fn github_headers(
    secret: &str,
    body: &[u8],
    event: &str,
    delivery: &str,
) -> Vec<(&'static str, String)> {
    vec![
        (
            "X-Hub-Signature-256",
            rouse_builder::signature::sign(secret.as_bytes(), body),
        ),
        ("X-GitHub-Event", event.to_owned()),
        ("X-GitHub-Delivery", delivery.to_owned()),
    ]
}

/// POSTs `body` to `base` (`http://HOST:PORT`) + `path` on a new
/// connection; returns the status and the body as JSON (`null` if not).
pub fn post(
    base: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Result<(u16, Value), String> {
    request("POST", base, path, headers, body)
}

/// Reads one HTTP/1.1 request (the server side of a test endpoint): its path
/// and its body (`Content-Length` bytes). `None` when the connection ends.
pub fn read_request(reader: &mut impl std::io::BufRead) -> Option<(String, Vec<u8>)> {
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return None;
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some((path, body))
}

/// Sends one HTTP/1.1 request with a JSON body; returns the status and the
/// body read as JSON.
pub fn request(
    method: &str,
    base: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Result<(u16, Value), String> {
    let addr = base.trim_start_matches("http://");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut stream = connect(addr)?;
    stream
        .write_all(head.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    // The body may be refused (413) before it is all sent.
    let _ = stream.write_all(body);
    read_response(&mut stream)
}

/// GETs `url` (`http://HOST:PORT/PATH`); returns the status and the body.
pub fn get(url: &str) -> Result<(u16, Value), String> {
    let rest = url.trim_start_matches("http://");
    let (addr, path) = rest
        .split_once('/')
        .ok_or_else(|| format!("`{url}` has no path"))?;
    let mut stream = connect(addr)?;
    let head = format!("GET /{path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(head.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    read_response(&mut stream)
}

fn connect(addr: &str) -> Result<TcpStream, String> {
    let stream = TcpStream::connect(addr).map_err(|e| format!("connect to {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    Ok(stream)
}

fn read_response(stream: &mut TcpStream) -> Result<(u16, Value), String> {
    // Read the head, then exactly Content-Length bytes when the server says
    // how many (some keep the connection open despite `Connection: close`).
    let mut raw = Vec::new();
    let mut chunk = [0u8; 8192];
    let body_start = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break raw.len(),
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&raw[..body_start.min(raw.len())]).into_owned();
    let length = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())
            .flatten()
    });
    match length {
        Some(n) => {
            while raw.len() < body_start + n {
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => raw.extend_from_slice(&chunk[..k]),
                }
            }
        }
        None => {
            let _ = stream.read_to_end(&mut raw);
        }
    }
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {head}"))?;
    let body = String::from_utf8_lossy(raw.get(body_start..).unwrap_or_default());
    Ok((status, serde_json::from_str(&body).unwrap_or(Value::Null)))
}

/// Removes the images builds of a repository made (every tag of each,
/// registry tags included), whatever happens. Each test builds its own
/// repository, so one test's cleanup never removes what another still runs.
pub struct Images(pub &'static str);

impl Drop for Images {
    fn drop(&mut self) {
        if let Ok(out) = std::process::Command::new("docker")
            .args(["images", "-q", self.0])
            .output()
        {
            let ids = String::from_utf8_lossy(&out.stdout);
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let _ = std::process::Command::new("docker")
                    .args(["rmi", "-f"])
                    .args(&ids)
                    .output();
            }
        }
    }
}
