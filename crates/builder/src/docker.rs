//! Images: a source tree built into an image by the local Docker engine,
//! through bollard.
//!
//! The build context is sent as a tar stream, written by a blocking thread
//! into a small bounded channel while the engine reads it, so memory stays
//! bounded whatever the context's size (and the size itself is capped by
//! [`BuildSpec::max_context_bytes`]). A `.dockerignore` at the context's
//! root is honoured as Docker does (globs with `**`, `!` exceptions, the
//! last matching line wins, a matching directory excludes what is in it);
//! the Dockerfile and `.dockerignore` are always sent.
//!
//! The engine's classic builder is used: it needs no session and runs on
//! every engine version. Its output is split into lines and handed to the
//! caller as it arrives; the `Step N/M : INSTRUCTION` lines tell which
//! instruction failed, so a failed build is a [`BuildError::Failed`] naming
//! the step and carrying the last log lines. The first tag is given to the
//! build, the others (`:latest`) are added once it succeeded. Images are
//! never pulled from a registry here: a `FROM` names a local image (or
//! `scratch`). [`ImageBuilder::push`] tags a built image into a registry's
//! repository and pushes it, with the engine doing the registry protocol.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::query_parameters::{
    BuildImageOptions, PushImageOptions, RemoveImageOptionsBuilder, TagImageOptionsBuilder,
};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::glob::FileGlob;
use crate::payload::CommitId;

const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// Bound on one request's response headers. The engine answers a build once
/// it has the whole context, so this also bounds the upload of a large one.
const REQUEST_TIMEOUT_SECS: u64 = 600;
/// Bound on connecting and agreeing on the API version at start-up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default cap on the bytes of files in a context: larger ones are nearly
/// always a missing `.dockerignore` (a `target/` or `node_modules/`).
pub const DEFAULT_MAX_CONTEXT_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// Log lines a failed build's error carries.
const ERROR_TAIL_LINES: usize = 20;
/// Longest log line passed on; longer ones are cut (a progress bar, a
/// minified file echoed by `RUN cat`).
const MAX_LINE_BYTES: usize = 4096;
/// Tar chunks in flight between the writer thread and the engine: with
/// 64 KiB chunks, at most half a mebibyte is buffered.
const CONTEXT_CHANNEL_CHUNKS: usize = 8;
const CONTEXT_CHUNK_BYTES: usize = 64 * 1024;
/// How long a finished build waits for the context writer's own verdict
/// (it ends as soon as the engine stops reading).
const WRITER_WAIT: Duration = Duration::from_secs(10);

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildSpec {
    /// The build context directory.
    pub context: PathBuf,
    /// The Dockerfile, relative to the context (default `Dockerfile`).
    pub dockerfile: PathBuf,
    /// At least one; the first is given to the build, the others are added
    /// afterwards. See [`image_tags`].
    pub tags: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub max_context_bytes: u64,
    /// The network `RUN` steps use (`host`); `None`: the engine's default
    /// bridge.
    pub network: Option<String>,
}

impl BuildSpec {
    pub fn new(context: impl Into<PathBuf>, tags: Vec<String>) -> Self {
        Self {
            context: context.into(),
            dockerfile: PathBuf::from(crate::trigger::DEFAULT_DOCKERFILE),
            tags,
            labels: BTreeMap::new(),
            max_context_bytes: DEFAULT_MAX_CONTEXT_BYTES,
            network: None,
        }
    }
}

/// `rouse/<project>-<service>:<commit12>` and `…:latest`.
pub fn image_tags(project: &str, service: &str, commit: &CommitId) -> Vec<String> {
    let repository = crate::trigger::image_repository(project, service);
    vec![
        format!("{repository}:{}", commit.short12()),
        format!("{repository}:latest"),
    ]
}

/// A built image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    /// `sha256:…`.
    pub id: String,
    pub tags: Vec<String>,
}

/// Why an image was not built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(
        "cannot reach the Docker engine at `{socket}`: {reason}; start the engine or set DOCKER_HOST=unix://<socket>"
    )]
    EngineUnreachable { socket: String, reason: String },
    #[error("dockerfile `{}` {problem}", .dockerfile.display())]
    Dockerfile {
        dockerfile: PathBuf,
        problem: String,
    },
    #[error("build context `{}` is larger than {limit} bytes: add a `.dockerignore` excluding what the image does not need", .context.display())]
    ContextTooLarge { context: PathBuf, limit: u64 },
    #[error("cannot read the build context at `{}`: {source}", .path.display())]
    Context { path: PathBuf, source: io::Error },
    #[error("invalid build: {0}")]
    Invalid(String),
    #[error("image build failed{}: {message}{}", step_suffix(.step), lines_suffix(.last_lines))]
    Failed {
        /// The instruction that failed (`Step 2/3 : COPY app /`), if the
        /// build got that far.
        step: Option<String>,
        message: String,
        last_lines: Vec<String>,
    },
    #[error("pushing `{reference}` failed: {message}")]
    Push { reference: String, message: String },
    #[error("pulling `{reference}` failed: {message}")]
    Pull { reference: String, message: String },
    #[error("image build was cancelled")]
    Cancelled,
    #[error("Docker engine error while trying to {action}: {source}")]
    Engine {
        action: String,
        source: bollard::errors::Error,
    },
}

fn step_suffix(step: &Option<String>) -> String {
    step.as_ref()
        .map(|s| format!(" at `{s}`"))
        .unwrap_or_default()
}

fn lines_suffix(lines: &[String]) -> String {
    if lines.is_empty() {
        String::new()
    } else {
        format!("\nlast log lines:\n{}", lines.join("\n"))
    }
}

/// Builds images with one engine connection.
#[derive(Debug, Clone)]
pub struct ImageBuilder {
    docker: Docker,
}

impl ImageBuilder {
    /// Uses an existing connection.
    pub fn new(docker: Docker) -> Self {
        Self { docker }
    }

    /// Connects to the local engine (`$DOCKER_HOST` if it is a `unix://`
    /// socket, else `/var/run/docker.sock`) and agrees on an API version.
    pub async fn connect() -> Result<Self, BuildError> {
        Self::connect_to(&default_socket()).await
    }

    /// As [`connect`](Self::connect), to the socket at `socket`.
    pub async fn connect_to(socket: &str) -> Result<Self, BuildError> {
        let socket = socket.strip_prefix("unix://").unwrap_or(socket).to_owned();
        let unreachable = |reason: String| BuildError::EngineUnreachable {
            socket: socket.clone(),
            reason,
        };
        let docker =
            Docker::connect_with_unix(&socket, REQUEST_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
                .map_err(|err| unreachable(err.to_string()))?;
        let docker = tokio::time::timeout(CONNECT_TIMEOUT, docker.negotiate_version())
            .await
            .map_err(|_| unreachable(format!("no answer within {}s", CONNECT_TIMEOUT.as_secs())))?
            .map_err(|err| unreachable(err.to_string()))?;
        Ok(Self { docker })
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// Builds `spec`, passing each log line to `on_line` as it arrives.
    /// Cancelling `cancel` drops the connection, which stops the engine's
    /// build.
    pub async fn build(
        &self,
        spec: &BuildSpec,
        on_line: &mut (dyn FnMut(&str) + Send),
        cancel: &CancellationToken,
    ) -> Result<BuiltImage, BuildError> {
        let (first_tag, other_tags) = spec.tags.split_first().ok_or_else(|| {
            BuildError::Invalid("an image build needs at least one tag".to_owned())
        })?;
        let dockerfile = dockerfile_in_context(&spec.context, &spec.dockerfile)?;
        let context = spec.context.clone();
        let limit = spec.max_context_bytes;
        let (tx, rx) = mpsc::channel::<Result<Bytes, io::Error>>(CONTEXT_CHANNEL_CHUNKS);
        let dockerfile_for_tar = dockerfile.clone();
        let writer = tokio::task::spawn_blocking(move || {
            write_context(&context, &dockerfile_for_tar, limit, tx)
        });
        let body = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let options = BuildImageOptions {
            dockerfile: dockerfile.clone(),
            t: Some(first_tag.clone()),
            rm: true,
            forcerm: true,
            networkmode: spec.network.clone(),
            labels: (!spec.labels.is_empty()).then(|| {
                spec.labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<HashMap<_, _>>()
            }),
            ..BuildImageOptions::default()
        };
        let mut stream =
            self.docker
                .build_image(options, None, Some(bollard::body_try_stream(body)));
        let mut log = LogState::default();
        let mut image_id = None;
        let mut failure: Option<(String, Option<bollard::errors::Error>)> = None;
        loop {
            let item = tokio::select! {
                biased;
                () = cancel.cancelled() => {
                    writer.abort();
                    return Err(BuildError::Cancelled);
                }
                item = stream.next() => item,
            };
            let Some(item) = item else { break };
            match item {
                Ok(info) => {
                    if let Some(text) = info.stream.as_deref().or(info.status.as_deref()) {
                        log.push_text(text, on_line);
                    }
                    if let Some(id) = info.aux.and_then(|aux| aux.id) {
                        image_id = Some(id);
                    }
                    if let Some(detail) = info.error_detail {
                        let message = detail.message.unwrap_or_else(|| "unknown error".to_owned());
                        failure = Some((message, None));
                        break;
                    }
                }
                Err(err) => {
                    let message = match &err {
                        bollard::errors::Error::DockerResponseServerError { message, .. } => {
                            message.clone()
                        }
                        bollard::errors::Error::DockerStreamError { error } => error.clone(),
                        other => other.to_string(),
                    };
                    failure = Some((message, Some(err)));
                    break;
                }
            }
        }
        log.flush(on_line);
        drop(stream);
        // A context that could not be sent explains the failure better than
        // the engine's view of a broken upload.
        match tokio::time::timeout(WRITER_WAIT, writer).await {
            Ok(Ok(Err(err))) => return Err(err),
            Ok(Ok(Ok(()))) => {}
            // Still blocked on a channel nobody reads: it ends by itself
            // once the connection's body is dropped.
            Err(_) => tracing::warn!("the build context writer did not finish"),
            Ok(Err(join)) if join.is_cancelled() => return Err(BuildError::Cancelled),
            Ok(Err(join)) => {
                return Err(BuildError::Invalid(format!(
                    "the context writer failed: {join}"
                )));
            }
        }
        if let Some((message, source)) = failure {
            if log.step.is_none()
                && let Some(source) = source
                && !matches!(
                    source,
                    bollard::errors::Error::DockerResponseServerError { .. }
                )
            {
                return Err(BuildError::Engine {
                    action: "build an image".to_owned(),
                    source,
                });
            }
            return Err(BuildError::Failed {
                step: log.step,
                message: message.trim().to_owned(),
                last_lines: log.tail.into(),
            });
        }
        let id = match image_id {
            Some(id) => id,
            None => self
                .docker
                .inspect_image(first_tag)
                .await
                .ok()
                .and_then(|image| image.id)
                .ok_or_else(|| BuildError::Failed {
                    step: log.step.clone(),
                    message: "the engine reported no image".to_owned(),
                    last_lines: log.tail.clone().into(),
                })?,
        };
        for tag in other_tags {
            let (repo, tag_name) = split_tag(tag);
            let options = TagImageOptionsBuilder::default()
                .repo(repo)
                .tag(tag_name)
                .build();
            self.docker
                .tag_image(&id, Some(options))
                .await
                .map_err(|source| BuildError::Engine {
                    action: format!("tag {id} as {tag}"),
                    source,
                })?;
        }
        Ok(BuiltImage {
            id,
            tags: spec.tags.clone(),
        })
    }

    /// Tags image `id` as `reference` (`host[:port]/path:tag`) and pushes
    /// that tag, passing the engine's progress lines to `on_line` (one per
    /// layer and state, not the byte counts). A registry that refuses or
    /// cannot be reached ends it with [`BuildError::Push`] naming it.
    pub async fn push(
        &self,
        id: &str,
        reference: &str,
        credentials: Option<&RegistryCredentials>,
        on_line: &mut (dyn FnMut(&str) + Send),
        cancel: &CancellationToken,
    ) -> Result<(), BuildError> {
        let (repo, tag) = split_tag(reference);
        let options = TagImageOptionsBuilder::default()
            .repo(repo)
            .tag(tag)
            .build();
        self.docker
            .tag_image(id, Some(options))
            .await
            .map_err(|source| BuildError::Engine {
                action: format!("tag {id} as {reference}"),
                source,
            })?;
        let options = PushImageOptions {
            tag: Some(tag.to_owned()),
            platform: None,
        };
        let credentials = credentials.map(|c| DockerCredentials {
            username: Some(c.username.clone()),
            password: Some(c.password.clone()),
            serveraddress: Some(registry_host(repo).to_owned()),
            ..DockerCredentials::default()
        });
        let mut stream = self.docker.push_image(repo, Some(options), credentials);
        let mut last = String::new();
        loop {
            let item = tokio::select! {
                biased;
                () = cancel.cancelled() => return Err(BuildError::Cancelled),
                item = stream.next() => item,
            };
            let Some(item) = item else { return Ok(()) };
            match item {
                Ok(info) => {
                    if let Some(status) = info.status {
                        // "Pushing" repeats with byte counts; every other
                        // state is worth a line.
                        if status != "Pushing" && status != last {
                            on_line(&status);
                            last = status;
                        }
                    }
                }
                Err(err) => {
                    return Err(BuildError::Push {
                        reference: reference.to_owned(),
                        message: engine_message(err),
                    });
                }
            }
        }
    }

    /// Pulls `reference` (`host[:port]/path:tag` or `…@sha256:…`) into the
    /// engine, passing progress lines to `on_line` (one per layer and
    /// state), and returns the image's id. A registry that refuses, or an
    /// image it lacks, ends it with [`BuildError::Pull`] naming both.
    pub async fn pull(
        &self,
        reference: &str,
        credentials: Option<&RegistryCredentials>,
        on_line: &mut (dyn FnMut(&str) + Send),
        cancel: &CancellationToken,
    ) -> Result<String, BuildError> {
        let (from, tag) = if reference.contains('@') {
            (reference, None)
        } else {
            let (repo, tag) = split_tag(reference);
            (repo, Some(tag))
        };
        let mut options =
            bollard::query_parameters::CreateImageOptionsBuilder::default().from_image(from);
        if let Some(tag) = tag {
            options = options.tag(tag);
        }
        let credentials = credentials.map(|c| DockerCredentials {
            username: Some(c.username.clone()),
            password: Some(c.password.clone()),
            serveraddress: Some(registry_host(from).to_owned()),
            ..DockerCredentials::default()
        });
        let mut stream = self
            .docker
            .create_image(Some(options.build()), None, credentials);
        let mut last = String::new();
        loop {
            let item = tokio::select! {
                biased;
                () = cancel.cancelled() => return Err(BuildError::Cancelled),
                item = stream.next() => item,
            };
            let Some(item) = item else { break };
            match item {
                Ok(info) => {
                    if let Some(status) = info.status
                        && status != "Downloading"
                        && status != "Extracting"
                        && status != last
                    {
                        on_line(&status);
                        last = status;
                    }
                }
                Err(err) => {
                    return Err(BuildError::Pull {
                        reference: reference.to_owned(),
                        message: engine_message(err),
                    });
                }
            }
        }
        let image = self
            .docker
            .inspect_image(reference)
            .await
            .map_err(|source| BuildError::Engine {
                action: format!("inspect the pulled {reference}"),
                source,
            })?;
        image.id.ok_or_else(|| BuildError::Pull {
            reference: reference.to_owned(),
            message: "the engine reports no id for it".into(),
        })
    }

    /// Removes an image by reference (a tag or an id), forcibly; a missing
    /// image is not an error.
    pub async fn remove_image(&self, reference: &str) -> Result<(), BuildError> {
        let options = RemoveImageOptionsBuilder::default().force(true).build();
        match self
            .docker
            .remove_image(reference, Some(options), None)
            .await
        {
            Ok(_)
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(source) => Err(BuildError::Engine {
                action: format!("remove image {reference}"),
                source,
            }),
        }
    }
}

/// What the engine said, without bollard's wrapping.
pub(crate) fn engine_message(err: bollard::errors::Error) -> String {
    let message = match err {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message,
        bollard::errors::Error::DockerStreamError { error } => error,
        other => other.to_string(),
    };
    message.trim().to_owned()
}

/// The socket named by `$DOCKER_HOST` (if `unix://…`), else the default.
pub fn default_socket() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|host| host.strip_prefix("unix://").map(str::to_owned))
        .unwrap_or_else(|| DEFAULT_SOCKET.to_owned())
}

/// The user name and password (or token) a registry accepts, as in
/// `docker login`. For Google's Artifact Registry: `oauth2accesstoken` and
/// an access token.
#[derive(Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryCredentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Checks a registry setting (`host[:port][/path]`, as in
/// `europe-west1-docker.pkg.dev/my-project/rouse` or `127.0.0.1:5000`) and
/// returns it without a trailing `/`. The host must look like one (a `.` or
/// a `:` in it, or `localhost`): otherwise the engine would read it as a
/// Docker Hub namespace and push there.
pub fn parse_registry(value: &str) -> Result<String, String> {
    let trimmed = value.trim().trim_end_matches('/');
    if trimmed.is_empty() {
        return Err("registry is empty: give host[:port][/path], e.g. 127.0.0.1:5000/rouse".into());
    }
    if trimmed.contains("://") {
        return Err(format!(
            "registry `{value}` has a scheme: give host[:port][/path] without it, e.g. {}",
            trimmed.split_once("://").map_or(trimmed, |(_, rest)| rest)
        ));
    }
    if let Some(bad) = trimmed
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/:".contains(*c)))
    {
        return Err(format!(
            "registry `{value}` has `{bad}`: image repositories allow lowercase letters, digits and `._-/` (and `:port` after the host)"
        ));
    }
    let host = registry_host(trimmed);
    if !(host.contains('.') || host.contains(':') || host == "localhost") {
        return Err(format!(
            "registry `{value}` does not start with a registry host (`{host}` has no `.` or `:port`), so Docker would push to Docker Hub: give e.g. {host}.example.com or localhost:5000"
        ));
    }
    if trimmed.split('/').any(str::is_empty) || trimmed[host.len()..].contains(':') {
        return Err(format!(
            "registry `{value}` is not host[:port][/path] (an empty path part, or a tag)"
        ));
    }
    Ok(trimmed.to_owned())
}

/// The registry part of a repository: `host[:port]` before the first `/`.
fn registry_host(repository: &str) -> &str {
    repository
        .split_once('/')
        .map_or(repository, |(host, _)| host)
}

/// `repo:tag` (the repository may hold a registry port: `host:5000/x:tag`).
fn split_tag(reference: &str) -> (&str, &str) {
    match reference.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (reference, "latest"),
    }
}

/// Splits the engine's output into lines, remembers the current step and
/// the last lines.
#[derive(Default)]
struct LogState {
    partial: String,
    step: Option<String>,
    tail: VecDeque<String>,
}

impl LogState {
    fn push_text(&mut self, text: &str, on_line: &mut (dyn FnMut(&str) + Send)) {
        for piece in text.split_inclusive('\n') {
            if self.partial.len() < MAX_LINE_BYTES {
                let room = MAX_LINE_BYTES - self.partial.len();
                let cut = floor_char_boundary(piece, room);
                self.partial.push_str(&piece[..cut]);
            }
            if piece.ends_with('\n') {
                self.emit(on_line);
            }
        }
    }

    fn flush(&mut self, on_line: &mut (dyn FnMut(&str) + Send)) {
        if !self.partial.is_empty() {
            self.emit(on_line);
        }
    }

    fn emit(&mut self, on_line: &mut (dyn FnMut(&str) + Send)) {
        let line = std::mem::take(&mut self.partial);
        let line = line.trim_end();
        if line.is_empty() {
            return;
        }
        if line.starts_with("Step ") && line.contains(" : ") {
            self.step = Some(line.to_owned());
        }
        if self.tail.len() == ERROR_TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line.to_owned());
        on_line(line);
    }
}

fn floor_char_boundary(text: &str, index: usize) -> usize {
    if index >= text.len() {
        return text.len();
    }
    (0..=index)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0)
}

/// The Dockerfile as a `/`-separated path inside the context.
fn dockerfile_in_context(context: &Path, dockerfile: &Path) -> Result<String, BuildError> {
    let error = |problem: String| BuildError::Dockerfile {
        dockerfile: dockerfile.to_owned(),
        problem,
    };
    let relative = if dockerfile.is_absolute() {
        dockerfile.strip_prefix(context).map_err(|_| {
            error(format!(
                "is outside the build context `{}`: move it into the context or widen the context",
                context.display()
            ))
        })?
    } else {
        dockerfile
    };
    let mut parts = Vec::new();
    for component in relative.components() {
        match component {
            Component::Normal(part) => parts.push(part.to_string_lossy().into_owned()),
            Component::CurDir => {}
            _ => {
                return Err(error(format!(
                    "must be a path inside the build context `{}` without `..`",
                    context.display()
                )));
            }
        }
    }
    if parts.is_empty() {
        return Err(error("names no file".to_owned()));
    }
    let joined = parts.join("/");
    if !context.join(&joined).is_file() {
        return Err(error(format!(
            "was not found in the build context `{}`: add it, or set the Dockerfile path (relative to the context)",
            context.display()
        )));
    }
    Ok(joined)
}

/// `.dockerignore`, as Docker reads it.
struct IgnoreRules {
    rules: Vec<(FileGlob, bool)>,
    has_exceptions: bool,
}

impl IgnoreRules {
    fn load(context: &Path) -> Result<Self, BuildError> {
        let path = context.join(".dockerignore");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => String::new(),
            Err(source) => return Err(BuildError::Context { path, source }),
        };
        let mut rules = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (exception, pattern) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let pattern = pattern.trim_start_matches('/').trim_end_matches('/');
            let pattern = pattern.strip_prefix("./").unwrap_or(pattern);
            if pattern.is_empty() {
                continue;
            }
            let glob = FileGlob::new(pattern).map_err(|err| BuildError::Context {
                path: path.clone(),
                source: io::Error::new(io::ErrorKind::InvalidData, err.to_string()),
            })?;
            rules.push((glob, exception));
        }
        let has_exceptions = rules.iter().any(|(_, exception)| *exception);
        Ok(Self {
            rules,
            has_exceptions,
        })
    }

    /// Whether `path` (relative, `/`-separated) is excluded: the last rule
    /// matching it or one of its parent directories decides.
    fn excluded(&self, path: &str) -> bool {
        let mut excluded = false;
        for (glob, exception) in &self.rules {
            let hit = glob.matches(path)
                || path
                    .match_indices('/')
                    .any(|(end, _)| glob.matches(&path[..end]));
            if hit {
                excluded = !exception;
            }
        }
        excluded
    }
}

/// The entries of the context, relative and `/`-separated, in a stable
/// order (a directory's entries by name, each directory before its
/// contents), without what `.dockerignore` excludes.
fn context_entries(context: &Path, dockerfile: &str) -> Result<Vec<(String, PathBuf)>, BuildError> {
    let rules = IgnoreRules::load(context)?;
    let mut entries = Vec::new();
    let mut pending = vec![(String::new(), context.to_owned())];
    while let Some((prefix, dir)) = pending.pop() {
        let read = std::fs::read_dir(&dir).map_err(|source| BuildError::Context {
            path: dir.clone(),
            source,
        })?;
        let mut children = Vec::new();
        for entry in read {
            let entry = entry.map_err(|source| BuildError::Context {
                path: dir.clone(),
                source,
            })?;
            children.push(entry);
        }
        children.sort_by_key(std::fs::DirEntry::file_name);
        let mut subdirs = Vec::new();
        for entry in children {
            let name = entry.file_name().to_string_lossy().into_owned();
            let relative = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let kind = entry.file_type().map_err(|source| BuildError::Context {
                path: entry.path(),
                source,
            })?;
            let always = relative == dockerfile || relative == ".dockerignore";
            let excluded = !always && rules.excluded(&relative);
            if kind.is_dir() {
                // An excluded directory may still hold an exception.
                if excluded && !rules.has_exceptions {
                    continue;
                }
                if !excluded {
                    entries.push((relative.clone(), entry.path()));
                }
                subdirs.push((relative, entry.path()));
            } else if !excluded {
                entries.push((relative, entry.path()));
            }
        }
        // One directory at a time, in name order.
        pending.extend(subdirs.into_iter().rev());
    }
    Ok(entries)
}

/// Writes the context as a tar stream into `tx`.
fn write_context(
    context: &Path,
    dockerfile: &str,
    limit: u64,
    tx: mpsc::Sender<Result<Bytes, io::Error>>,
) -> Result<(), BuildError> {
    let error_tx = tx.clone();
    let result = (|| {
        let entries = context_entries(context, dockerfile)?;
        let mut total = 0u64;
        let mut tar = tar::Builder::new(ChunkWriter::new(tx));
        tar.mode(tar::HeaderMode::Deterministic);
        tar.follow_symlinks(false);
        for (name, path) in entries {
            let metadata =
                std::fs::symlink_metadata(&path).map_err(|source| BuildError::Context {
                    path: path.clone(),
                    source,
                })?;
            if metadata.is_file() {
                total = total.saturating_add(metadata.len());
                if total > limit {
                    return Err(BuildError::ContextTooLarge {
                        context: context.to_owned(),
                        limit,
                    });
                }
            }
            tar.append_path_with_name(&path, &name)
                .map_err(|source| BuildError::Context { path, source })?;
        }
        let writer = tar.into_inner().map_err(|source| BuildError::Context {
            path: context.to_owned(),
            source,
        })?;
        writer.finish().map_err(|source| BuildError::Context {
            path: context.to_owned(),
            source,
        })
    })();
    if let Err(err) = &result {
        // Break the upload, so the engine does not build a truncated context.
        let _ = error_tx.blocking_send(Err(io::Error::other(err.to_string())));
    }
    result
}

/// Sends what is written in chunks of [`CONTEXT_CHUNK_BYTES`]; blocks
/// while the channel is full (the engine reads slower than the disk).
struct ChunkWriter {
    buffer: Vec<u8>,
    tx: mpsc::Sender<Result<Bytes, io::Error>>,
}

impl ChunkWriter {
    fn new(tx: mpsc::Sender<Result<Bytes, io::Error>>) -> Self {
        Self {
            buffer: Vec::with_capacity(CONTEXT_CHUNK_BYTES),
            tx,
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buffer, Vec::with_capacity(CONTEXT_CHUNK_BYTES));
        self.tx.blocking_send(Ok(Bytes::from(chunk))).map_err(|_| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the engine stopped reading the build context",
            )
        })
    }

    fn finish(mut self) -> io::Result<()> {
        self.send()
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CONTEXT_CHUNK_BYTES - self.buffer.len();
        let n = data.len().min(room);
        self.buffer.extend_from_slice(&data[..n]);
        if self.buffer.len() >= CONTEXT_CHUNK_BYTES {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn write(dir: &Path, path: &str, content: &str) {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, content).expect("write");
    }

    fn names(context: &Path, dockerfile: &str) -> Vec<String> {
        context_entries(context, dockerfile)
            .expect("entries")
            .into_iter()
            .map(|(name, _)| name)
            .collect()
    }

    #[test]
    fn registry_settings_are_checked_and_named() {
        for good in [
            "127.0.0.1:5000",
            "localhost:5000/rouse/",
            "europe-west1-docker.pkg.dev/my-project/rouse",
            "localhost",
        ] {
            let parsed = parse_registry(good).unwrap_or_else(|e| panic!("{good}: {e}"));
            assert!(!parsed.ends_with('/'), "{parsed}");
        }
        for (bad, needle) in [
            ("", "empty"),
            (
                "https://registry.example.com",
                "without it, e.g. registry.example.com",
            ),
            ("myteam/images", "Docker Hub"),
            ("Registry.example.com", "`R`"),
            ("registry.example.com//x", "empty path part"),
            ("registry.example.com/x:v1", "a tag"),
        ] {
            let err = parse_registry(bad).expect_err(bad);
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn registry_credentials_refuse_unknown_fields_and_hide_the_password() {
        let creds: RegistryCredentials =
            serde_json::from_str(r#"{"username":"oauth2accesstoken","password":"s3cret"}"#)
                .expect("parse");
        assert!(!format!("{creds:?}").contains("s3cret"));
        let err = serde_json::from_str::<RegistryCredentials>(
            r#"{"username":"u","password":"p","token":"t"}"#,
        )
        .expect_err("unknown field");
        assert!(err.to_string().contains("token"), "{err}");
    }

    #[test]
    fn dockerignore_is_honoured_and_the_dockerfile_always_sent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = dir.path();
        write(ctx, "Dockerfile", "FROM scratch\n");
        write(ctx, "app/main.txt", "main");
        write(ctx, "app/notes.md", "notes");
        write(ctx, "target/debug/big.bin", "big");
        write(ctx, "docs/keep.md", "keep");
        write(ctx, "docs/drop.md", "drop");
        write(
            ctx,
            ".dockerignore",
            "# build output\n/target\n**/*.md\n!docs/keep.md\nDockerfile\n",
        );
        assert_eq!(
            names(ctx, "Dockerfile"),
            [
                ".dockerignore",
                "Dockerfile",
                "app",
                "docs",
                "app/main.txt",
                "docs/keep.md"
            ]
        );
        // Without `.dockerignore` everything goes.
        std::fs::remove_file(ctx.join(".dockerignore")).expect("rm");
        assert_eq!(names(ctx, "Dockerfile").len(), 10);
    }

    #[test]
    fn the_dockerfile_must_be_inside_the_context() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = dir.path().join("ctx");
        write(&ctx, "build/Dockerfile.prod", "FROM scratch\n");
        write(dir.path(), "Dockerfile", "FROM scratch\n");
        assert_eq!(
            dockerfile_in_context(&ctx, Path::new("./build/Dockerfile.prod")).expect("inside"),
            "build/Dockerfile.prod"
        );
        assert_eq!(
            dockerfile_in_context(&ctx, &ctx.join("build/Dockerfile.prod"))
                .expect("absolute inside"),
            "build/Dockerfile.prod"
        );
        let err = dockerfile_in_context(&ctx, Path::new("../Dockerfile")).expect_err("outside");
        assert!(err.to_string().contains("without `..`"), "{err}");
        let err = dockerfile_in_context(&ctx, &dir.path().join("Dockerfile")).expect_err("outside");
        assert!(
            err.to_string().contains("is outside the build context"),
            "{err}"
        );
        let err = dockerfile_in_context(&ctx, Path::new("Dockerfile")).expect_err("missing");
        assert!(
            err.to_string()
                .starts_with("dockerfile `Dockerfile` was not found in the build context"),
            "{err}"
        );
    }

    #[test]
    fn log_lines_are_split_cut_and_steps_remembered() {
        let mut log = LogState::default();
        let mut seen = Vec::new();
        let mut on_line = |line: &str| seen.push(line.to_owned());
        log.push_text("Step 1/2 : FROM scratch\n ---> \n", &mut on_line);
        log.push_text("Step 2/2 : COPY a ", &mut on_line);
        log.push_text("/\n", &mut on_line);
        log.push_text(&"x".repeat(MAX_LINE_BYTES * 2), &mut on_line);
        log.flush(&mut on_line);
        assert_eq!(seen[0], "Step 1/2 : FROM scratch");
        assert_eq!(seen[1], " --->", "trailing blanks trimmed");
        assert_eq!(seen[2], "Step 2/2 : COPY a /");
        assert_eq!(seen[3].len(), MAX_LINE_BYTES);
        assert_eq!(log.step.as_deref(), Some("Step 2/2 : COPY a /"));
        assert_eq!(
            split_tag("rouse/a-b:0123456789ab"),
            ("rouse/a-b", "0123456789ab")
        );
        assert_eq!(split_tag("host:5000/a"), ("host:5000/a", "latest"));
    }

    /// Engine tests need the local engine; without its socket they print a
    /// notice and pass (CI runs them with the engine).
    async fn engine() -> Option<ImageBuilder> {
        let socket = default_socket();
        if !Path::new(&socket).exists() {
            eprintln!("skipping: no Docker engine socket at {socket}");
            return None;
        }
        Some(
            ImageBuilder::connect_to(&socket)
                .await
                .expect("engine reachable"),
        )
    }

    static NEXT: AtomicUsize = AtomicUsize::new(0);

    /// Unique tags for one test, removed (with the image) on drop.
    struct Images(Vec<String>);

    impl Images {
        fn new(name: &str) -> Self {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let commit =
                CommitId::parse(&format!("{:040x}", std::process::id() as usize * 1000 + n))
                    .expect("commit id");
            Self(image_tags(
                "builder-test",
                &format!("{name}-{}-{n}", std::process::id()),
                &commit,
            ))
        }
    }

    impl Drop for Images {
        fn drop(&mut self) {
            let tags = self.0.clone();
            let _ = std::thread::spawn(move || {
                let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                runtime.block_on(async {
                    if let Ok(builder) = ImageBuilder::connect_to(&default_socket()).await {
                        for tag in &tags {
                            let _ = builder.remove_image(tag).await;
                        }
                    }
                });
            })
            .join();
        }
    }

    #[tokio::test]
    async fn builds_a_scratch_image_and_tags_it() {
        let Some(builder) = engine().await else {
            return;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = dir.path();
        write(
            ctx,
            "docker/Dockerfile.rouse",
            "FROM scratch\nCOPY hello.txt /\nLABEL stage=test\n",
        );
        write(ctx, "hello.txt", "hello from rouse\n");
        write(ctx, "secret.txt", "not sent\n");
        write(ctx, ".dockerignore", "secret.txt\n");
        let images = Images::new("ok");
        let mut spec = BuildSpec::new(ctx, images.0.clone());
        spec.dockerfile = PathBuf::from("docker/Dockerfile.rouse");
        spec.labels.insert("rouse.commit".into(), "abc".into());
        let mut lines = Vec::new();
        let built = builder
            .build(
                &spec,
                &mut |line: &str| lines.push(line.to_owned()),
                &CancellationToken::new(),
            )
            .await
            .expect("image builds");
        assert!(built.id.starts_with("sha256:"), "{built:?}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("Step 2/") && l.ends_with(" : COPY hello.txt /")),
            "{lines:?}"
        );
        for tag in &images.0 {
            let image = builder.docker().inspect_image(tag).await.expect("tagged");
            assert_eq!(image.id.as_deref(), Some(built.id.as_str()), "{tag}");
            let labels = image.config.and_then(|c| c.labels).unwrap_or_default();
            assert_eq!(labels.get("rouse.commit").map(String::as_str), Some("abc"));
        }
        assert!(images.0[1].ends_with(":latest"));
    }

    #[tokio::test]
    async fn a_failing_instruction_is_named_with_the_last_lines() {
        let Some(builder) = engine().await else {
            return;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = dir.path();
        write(
            ctx,
            "Dockerfile",
            "FROM scratch\nCOPY hello.txt /\nCOPY missing.txt /\n",
        );
        write(ctx, "hello.txt", "hello\n");
        let images = Images::new("fail");
        let spec = BuildSpec::new(ctx, images.0.clone());
        let err = builder
            .build(&spec, &mut |_: &str| {}, &CancellationToken::new())
            .await
            .expect_err("COPY of a missing file fails");
        let BuildError::Failed {
            step,
            message,
            last_lines,
        } = &err
        else {
            panic!("expected a failed build, got {err}");
        };
        assert_eq!(
            step.as_deref(),
            Some("Step 3/3 : COPY missing.txt /"),
            "{err}"
        );
        assert!(message.contains("missing.txt"), "{message}");
        assert!(
            last_lines.iter().any(|l| l.starts_with("Step 3/3")),
            "{last_lines:?}"
        );
        let text = err.to_string();
        assert!(
            text.starts_with("image build failed at `Step 3/3 : COPY missing.txt /`: "),
            "{text}"
        );

        // An excluded file is not in the context either.
        write(ctx, "Dockerfile", "FROM scratch\nCOPY hello.txt /\n");
        write(ctx, ".dockerignore", "hello.txt\n");
        let err = builder
            .build(&spec, &mut |_: &str| {}, &CancellationToken::new())
            .await
            .expect_err("ignored file");
        assert!(
            matches!(&err, BuildError::Failed { step: Some(step), .. } if step.starts_with("Step 2/2")),
            "{err}"
        );

        // A Dockerfile the engine cannot parse fails before any step.
        write(ctx, "Dockerfile", "FROM scratch\nNOPE hello\n");
        let err = builder
            .build(&spec, &mut |_: &str| {}, &CancellationToken::new())
            .await
            .expect_err("unknown instruction");
        assert!(err.to_string().to_lowercase().contains("nope"), "{err}");
    }

    #[tokio::test]
    async fn oversized_contexts_and_cancellation() {
        let Some(builder) = engine().await else {
            return;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = dir.path();
        write(ctx, "Dockerfile", "FROM scratch\nCOPY big.bin /\n");
        write(ctx, "big.bin", &"x".repeat(10_000));
        let images = Images::new("big");
        let mut spec = BuildSpec::new(ctx, images.0.clone());
        spec.max_context_bytes = 1000;
        let err = builder
            .build(&spec, &mut |_: &str| {}, &CancellationToken::new())
            .await
            .expect_err("too large");
        assert!(
            matches!(err, BuildError::ContextTooLarge { limit: 1000, .. }),
            "{err}"
        );
        assert!(err.to_string().contains(".dockerignore"), "{err}");

        let cancel = CancellationToken::new();
        cancel.cancel();
        spec.max_context_bytes = DEFAULT_MAX_CONTEXT_BYTES;
        let err = builder
            .build(&spec, &mut |_: &str| {}, &cancel)
            .await
            .expect_err("cancelled");
        assert!(matches!(err, BuildError::Cancelled), "{err}");
    }
}
