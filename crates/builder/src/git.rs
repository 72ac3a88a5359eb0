//! Sources: exactly the pushed commit, fetched with the `git` binary into a
//! per-repository cache, then exported into a fresh directory to build.
//!
//! # Cache
//!
//! Each repository gets a bare repository `<cache_dir>/<hash>.git`, where
//! `<hash>` is a SHA-256 of its [`RepoKey`] (so the spellings of one URL
//! share a cache). A commit already there is not fetched again. Otherwise
//! `git fetch --depth 1 <url> <commit>` fetches that one commit: GitHub and
//! every protocol-v2 server allow asking for a commit by id; a server that
//! refuses ("unadvertised object") gets a full fetch of its branches and
//! tags instead. The URL is given on the command line rather than stored as
//! a remote, so credentials in a URL never land in the cache's config; a
//! token goes through `GIT_CONFIG_*` variables as an `Authorization` header
//! (neither in the arguments, visible to every user, nor on disk).
//!
//! Fetches of one repository are serialised (one lock per cache directory,
//! within this process: one builder owns a cache directory); different
//! repositories fetch in parallel. Caches are not trimmed yet: they grow by
//! what is fetched.
//!
//! # Export
//!
//! [`GitFetcher::export`] writes the commit's tree into a new temporary
//! directory under `work_dir` with `git read-tree -u` and a private index
//! file, so concurrent exports from one cache do not meet. Submodules and
//! LFS objects are not fetched. The [`SourceTree`] removes itself on drop.
//!
//! # Processes
//!
//! Every command runs in its own process group with stdin closed, prompts
//! disabled (`GIT_TERMINAL_PROMPT=0`, SSH in batch mode), a timeout, and a
//! [`CancellationToken`]; on either the whole group is killed. Errors carry
//! the command (credentials removed) and the last lines of its stderr.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::payload::CommitId;
use crate::trigger::{RepoKey, Secret};

/// Default bound on a fetch: a first full fetch of a big repository over a
/// slow link takes minutes; anything longer is stuck.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(600);
/// Default bound on local commands (init, lookups, export of a large tree).
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// Lines of stderr an error keeps: git puts the reason in the last few.
const STDERR_TAIL_LINES: usize = 20;
/// Longest stderr line kept (progress output can be one long line).
const STDERR_LINE_MAX: usize = 1000;
/// Most stdout kept from one command: only short answers are read.
const STDOUT_MAX: usize = 64 * 1024;

/// Where and how git runs.
#[derive(Debug, Clone)]
pub struct GitConfig {
    /// The `git` program (default `git`, looked up on `PATH`).
    pub program: PathBuf,
    /// Holds one bare repository per source repository.
    pub cache_dir: PathBuf,
    /// Exported source trees are created here (removed after the build).
    pub work_dir: PathBuf,
    pub fetch_timeout: Duration,
    pub command_timeout: Duration,
}

impl GitConfig {
    /// Defaults under `state_dir`: `git-cache/` and `sources/`.
    pub fn new(state_dir: &Path) -> Self {
        Self {
            program: PathBuf::from("git"),
            cache_dir: state_dir.join("git-cache"),
            work_dir: state_dir.join("sources"),
            fetch_timeout: DEFAULT_FETCH_TIMEOUT,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
        }
    }
}

/// Why fetching or exporting failed.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot run `{program}`: {source}; install git or configure the path to it")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}){}", stderr_suffix(.stderr))]
    Command {
        command: String,
        status: String,
        /// The last lines of its stderr.
        stderr: Vec<String>,
    },
    #[error("`{command}` did not finish within {}s and was killed", .timeout.as_secs_f64())]
    Timeout { command: String, timeout: Duration },
    #[error("`{command}` was cancelled")]
    Cancelled { command: String },
    #[error(
        "commit {commit} is not in {url} (after a full fetch of its branches and tags): push it, or check the commit id"
    )]
    CommitNotFound { url: String, commit: String },
    #[error("repository `{url}` is not a valid git URL or path: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot prepare `{}`: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl GitError {
    /// Whether the error is a cancellation (not a failure of the build).
    pub fn is_cancelled(&self) -> bool {
        matches!(self, Self::Cancelled { .. })
    }
}

fn stderr_suffix(lines: &[String]) -> String {
    if lines.is_empty() {
        String::new()
    } else {
        format!(": {}", lines.join("\n"))
    }
}

/// How a commit got into the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetched {
    /// It was there already.
    Cached,
    /// `git fetch --depth 1 <url> <commit>`.
    Shallow,
    /// The server refused to send a commit by id; all branches and tags
    /// were fetched.
    Full,
}

/// A commit's files in a temporary directory, removed on drop.
#[derive(Debug)]
pub struct SourceTree {
    dir: tempfile::TempDir,
    root: PathBuf,
    commit: CommitId,
}

impl SourceTree {
    /// The repository root as of the commit.
    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn commit(&self) -> &CommitId {
        &self.commit
    }

    /// Removes the tree now, reporting failures (drop ignores them).
    pub fn remove(self) -> std::io::Result<()> {
        self.dir.close()
    }
}

/// Fetches commits into the cache and exports them.
#[derive(Debug)]
pub struct GitFetcher {
    config: GitConfig,
    /// One lock per cache directory; bounded by the number of repositories.
    locks: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
}

impl GitFetcher {
    pub fn new(config: GitConfig) -> Self {
        Self {
            config,
            locks: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &GitConfig {
        &self.config
    }

    /// The cache directory of the repository at `url`.
    pub fn cache_path(&self, url: &str) -> Result<PathBuf, GitError> {
        let key = RepoKey::from_url(url).map_err(|err| GitError::Url {
            url: redact_url(url),
            reason: err.to_string(),
        })?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.as_str().as_bytes());
        // 128 bits of the hash: collisions are not a concern, paths stay short.
        let name = format!("{}.git", crate::hex(&digest.as_ref()[..16]));
        Ok(self.config.cache_dir.join(name))
    }

    /// Fetches `commit` from `url` (and `token`, for HTTPS hosts that need
    /// one) into the cache, then exports it.
    pub async fn checkout(
        &self,
        url: &str,
        commit: &CommitId,
        token: Option<&Secret>,
        cancel: &CancellationToken,
    ) -> Result<(SourceTree, Fetched), GitError> {
        let fetched = self.fetch(url, commit, token, cancel).await?;
        let tree = self.export(url, commit, cancel).await?;
        Ok((tree, fetched))
    }

    /// Makes sure `commit` is in the cache of `url`.
    pub async fn fetch(
        &self,
        url: &str,
        commit: &CommitId,
        token: Option<&Secret>,
        cancel: &CancellationToken,
    ) -> Result<Fetched, GitError> {
        let cache = self.cache_path(url)?;
        let lock = self.lock_for(&cache);
        let _guard = tokio::select! {
            guard = lock.lock() => guard,
            () = cancel.cancelled() => {
                return Err(GitError::Cancelled { command: format!("git fetch {}", redact_url(url)) });
            }
        };
        self.ensure_cache(&cache, cancel).await?;
        if self.has_commit(&cache, commit, cancel).await? {
            return Ok(Fetched::Cached);
        }
        let env = auth_env(url, token);
        let git_dir = git_dir_arg(&cache);
        let shallow = self
            .run(
                &[
                    git_dir.clone(),
                    "fetch".into(),
                    "--quiet".into(),
                    "--no-tags".into(),
                    "--no-write-fetch-head".into(),
                    "--depth".into(),
                    "1".into(),
                    url.into(),
                    commit.as_str().into(),
                ],
                &env,
                self.config.fetch_timeout,
                cancel,
            )
            .await;
        match shallow {
            Ok(_) if self.has_commit(&cache, commit, cancel).await? => return Ok(Fetched::Shallow),
            Ok(_) => {}
            Err(
                err @ (GitError::Cancelled { .. }
                | GitError::Timeout { .. }
                | GitError::Spawn { .. }),
            ) => {
                return Err(err);
            }
            Err(err) => {
                tracing::debug!(error = %err, "fetching one commit was refused; fetching branches and tags");
            }
        }
        let mut args: Vec<OsString> = vec![
            git_dir,
            "fetch".into(),
            "--quiet".into(),
            "--no-write-fetch-head".into(),
        ];
        if cache.join("shallow").exists() {
            args.push("--unshallow".into());
        }
        args.extend([
            url.into(),
            "+refs/heads/*:refs/heads/*".into(),
            "+refs/tags/*:refs/tags/*".into(),
        ]);
        self.run(&args, &env, self.config.fetch_timeout, cancel)
            .await?;
        if self.has_commit(&cache, commit, cancel).await? {
            Ok(Fetched::Full)
        } else {
            Err(GitError::CommitNotFound {
                url: redact_url(url),
                commit: commit.to_string(),
            })
        }
    }

    /// Exports `commit`, which must be in the cache of `url`, into a new
    /// directory under `work_dir`.
    pub async fn export(
        &self,
        url: &str,
        commit: &CommitId,
        cancel: &CancellationToken,
    ) -> Result<SourceTree, GitError> {
        let cache = self.cache_path(url)?;
        let work_dir = &self.config.work_dir;
        std::fs::create_dir_all(work_dir).map_err(|source| GitError::Io {
            path: work_dir.clone(),
            source,
        })?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-", commit.short12()))
            .tempdir_in(work_dir)
            .map_err(|source| GitError::Io {
                path: work_dir.clone(),
                source,
            })?;
        let root = dir.path().join("src");
        let index = dir.path().join("index");
        std::fs::create_dir(&root).map_err(|source| GitError::Io {
            path: root.clone(),
            source,
        })?;
        let mut work_tree = OsString::from("--work-tree=");
        work_tree.push(&root);
        let env = vec![(
            OsString::from("GIT_INDEX_FILE"),
            index.clone().into_os_string(),
        )];
        self.run(
            &[
                git_dir_arg(&cache),
                work_tree,
                "read-tree".into(),
                "--reset".into(),
                "-u".into(),
                commit.as_str().into(),
            ],
            &env,
            self.config.command_timeout,
            cancel,
        )
        .await?;
        // The index only served the export.
        let _ = std::fs::remove_file(&index);
        Ok(SourceTree {
            dir,
            root,
            commit: commit.clone(),
        })
    }

    fn lock_for(&self, cache: &Path) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        locks.entry(cache.to_owned()).or_default().clone()
    }

    /// Creates the bare cache repository if it is missing (or was left
    /// half-made by a crash: it is made under a temporary name, then renamed).
    async fn ensure_cache(&self, cache: &Path, cancel: &CancellationToken) -> Result<(), GitError> {
        if cache.join("HEAD").is_file() {
            return Ok(());
        }
        let parent = &self.config.cache_dir;
        std::fs::create_dir_all(parent).map_err(|source| GitError::Io {
            path: parent.clone(),
            source,
        })?;
        if cache.exists() {
            std::fs::remove_dir_all(cache).map_err(|source| GitError::Io {
                path: cache.to_owned(),
                source,
            })?;
        }
        let staging = tempfile::Builder::new()
            .prefix(".init-")
            .tempdir_in(parent)
            .map_err(|source| GitError::Io {
                path: parent.clone(),
                source,
            })?;
        self.run(
            &[
                "init".into(),
                "--quiet".into(),
                "--bare".into(),
                staging.path().into(),
            ],
            &[],
            self.config.command_timeout,
            cancel,
        )
        .await?;
        // Objects fetched by id are reachable from no ref: keep automatic
        // gc from pruning them between the fetch and the export.
        self.run(
            &[
                git_dir_arg(staging.path()),
                "config".into(),
                "gc.auto".into(),
                "0".into(),
            ],
            &[],
            self.config.command_timeout,
            cancel,
        )
        .await?;
        let staged = staging.keep();
        std::fs::rename(&staged, cache).map_err(|source| GitError::Io {
            path: cache.to_owned(),
            source,
        })
    }

    async fn has_commit(
        &self,
        cache: &Path,
        commit: &CommitId,
        cancel: &CancellationToken,
    ) -> Result<bool, GitError> {
        let object = format!("{}^{{commit}}", commit.as_str());
        match self
            .run(
                &[
                    git_dir_arg(cache),
                    "cat-file".into(),
                    "-e".into(),
                    object.into(),
                ],
                &[],
                self.config.command_timeout,
                cancel,
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(GitError::Command { .. }) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Runs git with `args`, returning its (bounded) stdout.
    async fn run(
        &self,
        args: &[OsString],
        env: &[(OsString, OsString)],
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<String, GitError> {
        let program = &self.config.program;
        let command_line = describe(program, args);
        let mut command = Command::new(program);
        command
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("GIT_TERMINAL_PROMPT", "0")
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if !env.iter().any(|(k, _)| k == "GIT_INDEX_FILE") {
            command.env_remove("GIT_INDEX_FILE");
        }
        if std::env::var_os("GIT_SSH_COMMAND").is_none() && std::env::var_os("GIT_SSH").is_none() {
            command.env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes");
        }
        if cancel.is_cancelled() {
            return Err(GitError::Cancelled {
                command: command_line,
            });
        }
        let mut child = command.spawn().map_err(|source| GitError::Spawn {
            program: program.display().to_string(),
            source,
        })?;
        let pid = child.id();
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(GitError::Spawn {
                program: program.display().to_string(),
                source: std::io::Error::other("stdout or stderr was not captured"),
            });
        };
        let work = async {
            let (out, err, status) =
                tokio::join!(read_bounded(stdout), tail_lines(stderr), child.wait());
            (out, err, status)
        };
        let outcome = tokio::select! {
            biased;
            () = cancel.cancelled() => Err(false),
            result = tokio::time::timeout(timeout, work) => result.map_err(|_| true),
        };
        match outcome {
            Ok((stdout, stderr, status)) => {
                let status = status.map_err(|source| GitError::Spawn {
                    program: program.display().to_string(),
                    source,
                })?;
                if status.success() {
                    Ok(stdout)
                } else {
                    Err(GitError::Command {
                        command: command_line,
                        status: status.to_string(),
                        stderr,
                    })
                }
            }
            Err(timed_out) => {
                kill_group(pid);
                if timed_out {
                    Err(GitError::Timeout {
                        command: command_line,
                        timeout,
                    })
                } else {
                    Err(GitError::Cancelled {
                        command: command_line,
                    })
                }
            }
        }
    }
}

fn git_dir_arg(path: &Path) -> OsString {
    let mut arg = OsString::from("--git-dir=");
    arg.push(path);
    arg
}

/// `GIT_CONFIG_*` variables that add `Authorization: Basic` with the token
/// (GitHub's form for tokens over HTTPS) to requests to `url`'s host.
fn auth_env(url: &str, token: Option<&Secret>) -> Vec<(OsString, OsString)> {
    let Some(token) = token else {
        return Vec::new();
    };
    let lower = url.to_ascii_lowercase();
    if !(lower.starts_with("https://") || lower.starts_with("http://")) {
        return Vec::new();
    }
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("x-access-token:{}", token.expose()));
    vec![
        ("GIT_CONFIG_COUNT".into(), "1".into()),
        ("GIT_CONFIG_KEY_0".into(), "http.extraHeader".into()),
        (
            "GIT_CONFIG_VALUE_0".into(),
            format!("Authorization: Basic {basic}").into(),
        ),
    ]
}

/// The command as a readable line, with URL credentials removed.
fn describe(program: &Path, args: &[OsString]) -> String {
    let mut line = program.file_name().map_or_else(
        || program.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    for arg in args {
        let arg = redact_url(&arg.to_string_lossy());
        line.push(' ');
        if arg.is_empty() || arg.contains([' ', '\'', '"']) {
            line.push('\'');
            line.push_str(&arg.replace('\'', r"'\''"));
            line.push('\'');
        } else {
            line.push_str(&arg);
        }
    }
    line
}

/// `https://user:token@host/…` → `https://***@host/…`.
fn redact_url(text: &str) -> String {
    if let Some((scheme, rest)) = text.split_once("://") {
        let authority_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            return format!("{scheme}://***@{}", &rest[at + 1..]);
        }
    }
    text.to_owned()
}

pub(crate) fn kill_group(pid: Option<u32>) {
    let Some(pid) = pid
        .and_then(|p| i32::try_from(p).ok())
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    // The child leads its own group (`process_group(0)`); this reaches the
    // `ssh` or `git-remote-https` it started too. It may be gone already.
    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
}

async fn read_bounded(mut reader: impl AsyncRead + Unpin) -> String {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = STDOUT_MAX.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

/// The last [`STDERR_TAIL_LINES`] lines, each cut at [`STDERR_LINE_MAX`]
/// bytes; carriage returns (progress) end lines too.
async fn tail_lines(mut reader: impl AsyncRead + Unpin) -> Vec<String> {
    let mut lines = VecDeque::with_capacity(STDERR_TAIL_LINES);
    let mut current = Vec::new();
    let mut buf = [0u8; 8192];
    let push = |line: &mut Vec<u8>, lines: &mut VecDeque<String>| {
        let text = String::from_utf8_lossy(line).trim_end().to_owned();
        line.clear();
        if text.is_empty() {
            return;
        }
        if lines.len() == STDERR_TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(text);
    };
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                for &byte in &buf[..n] {
                    if byte == b'\n' || byte == b'\r' {
                        push(&mut current, &mut lines);
                    } else if current.len() < STDERR_LINE_MAX {
                        current.push(byte);
                    }
                }
            }
        }
    }
    push(&mut current, &mut lines);
    lines.into()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A bare "origin" repository with commits made through a work tree,
    /// all with the real git binary in a temporary directory.
    pub(crate) struct Origin {
        /// Holds everything; removed on drop.
        _dir: tempfile::TempDir,
        pub bare: PathBuf,
        work: PathBuf,
    }

    pub(crate) fn git(dir: &Path, args: &[&str]) -> String {
        let output = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args([
                "-c",
                "user.name=Rouse Test",
                "-c",
                "user.email=test@rouse.invalid",
            ])
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .expect("git runs");
        assert!(
            output.status.success(),
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    impl Origin {
        pub(crate) fn new() -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            let bare = dir.path().join("origin.git");
            let work = dir.path().join("work");
            std::fs::create_dir_all(&work).expect("mkdir");
            git(
                dir.path(),
                &["init", "--quiet", "--bare", "-b", "main", "origin.git"],
            );
            git(&work, &["init", "--quiet", "-b", "main"]);
            Self {
                _dir: dir,
                bare,
                work,
            }
        }

        /// Commits `files` (path, content) to `main` and pushes; returns the commit.
        pub(crate) fn commit(&self, message: &str, files: &[(&str, &str)]) -> CommitId {
            for (path, content) in files {
                let path = self.work.join(path);
                std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
                std::fs::write(path, content).expect("write");
            }
            git(&self.work, &["add", "--all"]);
            git(
                &self.work,
                &["commit", "--quiet", "--allow-empty", "-m", message],
            );
            let bare = self.bare.to_string_lossy().into_owned();
            git(&self.work, &["push", "--quiet", &bare, "main"]);
            CommitId::parse(&git(&self.work, &["rev-parse", "HEAD"])).expect("commit id")
        }

        pub(crate) fn url(&self) -> String {
            format!("file://{}", self.bare.display())
        }
    }

    fn fetcher(state: &Path) -> GitFetcher {
        GitFetcher::new(GitConfig::new(state))
    }

    fn read(tree: &SourceTree, path: &str) -> String {
        std::fs::read_to_string(tree.path().join(path)).expect("file in tree")
    }

    #[tokio::test]
    async fn fetches_exactly_the_pushed_commit_shallow_then_from_cache() {
        let origin = Origin::new();
        let first = origin.commit("one", &[("app.txt", "v1"), ("sub/dir/x.txt", "x")]);
        let second = origin.commit("two", &[("app.txt", "v2")]);
        let state = tempfile::tempdir().expect("tempdir");
        let git = fetcher(state.path());
        let cancel = CancellationToken::new();

        // The older commit, not the branch tip: fetched by id.
        let (tree, how) = git
            .checkout(&origin.url(), &first, None, &cancel)
            .await
            .expect("checkout of the first commit");
        assert_eq!(how, Fetched::Shallow);
        assert_eq!(read(&tree, "app.txt"), "v1");
        assert_eq!(read(&tree, "sub/dir/x.txt"), "x");
        assert_eq!(tree.commit(), &first);
        assert!(!tree.path().join(".git").exists());
        let cache = git.cache_path(&origin.url()).expect("cache path");
        assert!(cache.join("shallow").exists(), "depth 1");

        let (tree2, how) = git
            .checkout(&origin.url(), &second, None, &cancel)
            .await
            .expect("checkout of the second commit");
        assert_eq!(how, Fetched::Shallow);
        assert_eq!(read(&tree2, "app.txt"), "v2");

        // Again, through another spelling of the same repository: cached.
        let (tree3, how) = git
            .checkout(&origin.bare.to_string_lossy(), &first, None, &cancel)
            .await
            .expect("cached checkout");
        assert_eq!(how, Fetched::Cached);
        assert_eq!(read(&tree3, "app.txt"), "v1");

        let path = tree.path().to_owned();
        tree.remove().expect("removed");
        assert!(!path.exists());
        drop(tree2);
        drop(tree3);
        let left: Vec<_> = std::fs::read_dir(&git.config().work_dir)
            .expect("work dir")
            .collect();
        assert!(left.is_empty(), "source trees are removed: {left:?}");
    }

    #[tokio::test]
    async fn falls_back_to_a_full_fetch_when_the_server_refuses_a_commit_by_id() {
        let origin = Origin::new();
        let first = origin.commit("one", &[("app.txt", "v1")]);
        let tip = origin.commit("two", &[("app.txt", "v2")]);
        let state = tempfile::tempdir().expect("tempdir");
        let git = fetcher(state.path());
        let cancel = CancellationToken::new();
        git.fetch(&origin.url(), &tip, None, &cancel)
            .await
            .expect("tip");
        // Protocol v0 servers refuse unadvertised objects unless told otherwise.
        let cache = git.cache_path(&origin.url()).expect("cache path");
        super::tests::git(&cache, &["config", "protocol.version", "0"]);
        let how = git
            .fetch(&origin.url(), &first, None, &cancel)
            .await
            .expect("fallback");
        assert_eq!(how, Fetched::Full);
        let tree = git
            .export(&origin.url(), &first, &cancel)
            .await
            .expect("export");
        assert_eq!(read(&tree, "app.txt"), "v1");
    }

    #[tokio::test]
    async fn an_unknown_commit_or_repository_is_a_clear_error() {
        let origin = Origin::new();
        origin.commit("one", &[("app.txt", "v1")]);
        let state = tempfile::tempdir().expect("tempdir");
        let git = fetcher(state.path());
        let cancel = CancellationToken::new();
        let missing = CommitId::parse("1234567890123456789012345678901234567890").expect("id");
        let err = git
            .fetch(&origin.url(), &missing, None, &cancel)
            .await
            .expect_err("no such commit");
        assert!(matches!(err, GitError::CommitNotFound { .. }), "{err}");
        assert!(err.to_string().contains(missing.as_str()), "{err}");

        let nowhere = format!("file://{}/nowhere.git", state.path().display());
        let err = git
            .fetch(&nowhere, &missing, None, &cancel)
            .await
            .expect_err("no repo");
        let GitError::Command {
            command, stderr, ..
        } = &err
        else {
            panic!("expected a command error, got {err}");
        };
        assert!(command.starts_with("git --git-dir="), "{command}");
        assert!(command.contains("fetch"), "{command}");
        assert!(command.contains("nowhere.git"), "{command}");
        assert!(!stderr.is_empty(), "stderr kept");
        assert!(err.to_string().contains("nowhere.git"), "{err}");
    }

    #[tokio::test]
    async fn timeouts_and_cancellation_stop_git() {
        let origin = Origin::new();
        let commit = origin.commit("one", &[("app.txt", "v1")]);
        let state = tempfile::tempdir().expect("tempdir");
        let mut config = GitConfig::new(state.path());
        config.command_timeout = Duration::ZERO;
        let git = GitFetcher::new(config);
        let err = git
            .fetch(&origin.url(), &commit, None, &CancellationToken::new())
            .await
            .expect_err("times out");
        assert!(matches!(err, GitError::Timeout { .. }), "{err}");
        assert!(err.to_string().contains("was killed"), "{err}");

        let git = fetcher(state.path());
        let cancel = CancellationToken::new();
        cancel.cancel();
        let err = git
            .fetch(&origin.url(), &commit, None, &cancel)
            .await
            .expect_err("cancelled");
        assert!(err.is_cancelled(), "{err}");
    }

    #[test]
    fn commands_are_described_without_credentials() {
        let args: Vec<OsString> = vec![
            "fetch".into(),
            "https://x-access-token:ghp_abc@github.com/o/r.git".into(),
            "a b".into(),
        ];
        let line = describe(Path::new("/usr/bin/git"), &args);
        assert_eq!(line, "git fetch https://***@github.com/o/r.git 'a b'");
        assert_eq!(
            redact_url("git@github.com:o/r.git"),
            "git@github.com:o/r.git"
        );
        let env = auth_env("https://github.com/o/r.git", Some(&Secret::new("tok")));
        assert_eq!(env.len(), 3);
        assert!(auth_env("git@github.com:o/r.git", Some(&Secret::new("tok"))).is_empty());
    }

    #[tokio::test]
    async fn stderr_tail_is_bounded() {
        let mut text = String::new();
        for i in 0..100 {
            text.push_str(&format!("line {i}\n"));
        }
        text.push_str(&"y".repeat(5000));
        let lines = tail_lines(text.as_bytes()).await;
        assert_eq!(lines.len(), STDERR_TAIL_LINES);
        assert_eq!(lines[0], "line 81");
        assert_eq!(lines.last().map(String::len), Some(STDERR_LINE_MAX));
    }
}
