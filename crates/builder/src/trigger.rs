//! Triggers: which pushes build which service, and how.
//!
//! A [`Trigger`] connects a repository and a branch pattern to a service of
//! a project. When a push arrives, the webhook handler looks triggers up by
//! the push's repository ([`RepoKey`]: the different spellings of one
//! repository's URL compare equal), then asks each one
//! [`Trigger::matches`]: build, or skip with a [`SkipReason`] that the
//! webhook answer and the logs show.
//!
//! Branch patterns are regular expressions in RE2 syntax (the `regex`
//! crate: linear-time, no backtracking) matched against the branch name,
//! not the full ref; like Cloud Build's they are not implicitly anchored, so
//! `main` also matches `maintenance`: write `^main$`.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Component, Path, PathBuf};

use regex::{Regex, RegexBuilder};

pub use crate::glob::{FileGlob, GlobError};
use crate::payload::{GitRef, Push};

/// Longest accepted branch or tag pattern.
pub const MAX_PATTERN_LEN: usize = 1024;
/// Bound on a compiled pattern's size: a branch pattern that needs more is
/// a mistake, and the bound keeps a hostile one from costing memory.
const PATTERN_SIZE_LIMIT: usize = 1 << 20;
/// Most included or ignored globs per trigger.
pub const MAX_GLOBS: usize = 100;
/// Shortest webhook secret accepted: GitHub recommends a high-entropy
/// secret; anything shorter than this is guessable.
pub const MIN_SECRET_LEN: usize = 16;
/// Default Dockerfile, relative to the context directory.
pub const DEFAULT_DOCKERFILE: &str = "Dockerfile";
/// Default context directory, relative to the repository root.
pub const DEFAULT_CONTEXT_DIR: &str = ".";

/// Everything a trigger is made from, as the user wrote it (CLI flags, the
/// API request, a stored row). [`Trigger::new`] validates it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TriggerSpec {
    pub id: String,
    pub project: String,
    pub service: String,
    /// `https://github.com/OWNER/REPO(.git)`, any git URL, or a local path
    /// or `file://` URL.
    pub repo: String,
    /// Regex matched against the branch name, e.g. `^main$`.
    pub branch_pattern: String,
    /// Regex for tag pushes; `None` ignores tags.
    pub tag_pattern: Option<String>,
    /// Relative to the context directory; default `Dockerfile`.
    pub dockerfile: Option<String>,
    /// Relative to the repository root; default `.`.
    pub context_dir: Option<String>,
    /// If set, a push builds only if a changed file matches one of these.
    pub included_files: Vec<String>,
    /// A push that changes only files matching these builds nothing.
    pub ignored_files: Vec<String>,
    pub webhook_secret: String,
    /// Token for commit statuses (and fetching private repositories).
    pub github_token: Option<String>,
}

impl fmt::Debug for TriggerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TriggerSpec")
            .field("id", &self.id)
            .field("project", &self.project)
            .field("service", &self.service)
            .field("repo", &self.repo)
            .field("branch_pattern", &self.branch_pattern)
            .field("tag_pattern", &self.tag_pattern)
            .field("dockerfile", &self.dockerfile)
            .field("context_dir", &self.context_dir)
            .field("included_files", &self.included_files)
            .field("ignored_files", &self.ignored_files)
            .field("webhook_secret", &"<redacted>")
            .field(
                "github_token",
                &self.github_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Why a trigger specification was refused; each message names the value
/// and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TriggerError {
    #[error(
        "{what} pattern `{pattern}` is not a valid regular expression (RE2 syntax, e.g. `^main$`): {reason}"
    )]
    Pattern {
        what: &'static str,
        pattern: String,
        reason: String,
    },
    #[error(
        "repository `{url}` {problem}; use `https://github.com/OWNER/REPO`, `git@HOST:OWNER/REPO.git`, any git URL, or a local path or `file://` URL"
    )]
    Repo { url: String, problem: String },
    #[error("{what} `{path}` {problem}")]
    Path {
        what: &'static str,
        path: String,
        problem: String,
    },
    #[error(transparent)]
    Glob(#[from] GlobError),
    #[error(
        "{what} has {count} globs, more than the {MAX_GLOBS} allowed: combine them with `**` or `[…]`"
    )]
    TooManyGlobs { what: &'static str, count: usize },
    #[error(
        "webhook secret is {len} characters, fewer than {MIN_SECRET_LEN}: use a random secret, e.g. `openssl rand -hex 32`"
    )]
    WeakSecret { len: usize },
    #[error("{what} must not be empty")]
    Empty { what: &'static str },
}

/// A branch or tag pattern.
#[derive(Clone)]
pub struct RefPattern(Regex);

impl RefPattern {
    fn new(what: &'static str, pattern: &str) -> Result<Self, TriggerError> {
        let error = |reason: String| TriggerError::Pattern {
            what,
            pattern: pattern.to_owned(),
            reason,
        };
        if pattern.is_empty() {
            return Err(error("it is empty".to_owned()));
        }
        if pattern.len() > MAX_PATTERN_LEN {
            return Err(error(format!(
                "it is longer than {MAX_PATTERN_LEN} characters"
            )));
        }
        RegexBuilder::new(pattern)
            .size_limit(PATTERN_SIZE_LIMIT)
            .build()
            .map(Self)
            .map_err(|err| error(err.to_string().replace('\n', " ")))
    }

    pub fn is_match(&self, name: &str) -> bool {
        self.0.is_match(name)
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Debug for RefPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RefPattern").field(&self.as_str()).finish()
    }
}

impl fmt::Display for RefPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A secret string (webhook secret, token) that never shows in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// A repository's identity, independent of how its URL is spelled:
/// `https://github.com/OWNER/REPO`, `…/REPO.git`, `git@github.com:OWNER/REPO.git`,
/// `ssh://git@github.com/OWNER/REPO` and the push's `OWNER/REPO` full name
/// all give `github.com/owner/repo` (GitHub names are case-insensitive);
/// a local path and its `file://` URL give `file:///abs/path` (with a
/// trailing `.git` removed, as git itself does when looking a path up).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoKey(String);

impl RepoKey {
    /// Normalises a git URL or a local path (relative paths are taken from
    /// the current directory; existing ones are canonicalised, so symlinks
    /// compare equal too).
    pub fn from_url(url: &str) -> Result<Self, TriggerError> {
        let error = |problem: &str| TriggerError::Repo {
            url: url.to_owned(),
            problem: problem.to_owned(),
        };
        let text = url.trim();
        if text.is_empty() {
            return Err(error("is empty"));
        }
        if text.chars().any(char::is_control) {
            return Err(error("contains control characters"));
        }
        if let Some(rest) = text.strip_prefix("file://") {
            let path = rest.strip_prefix("localhost").unwrap_or(rest);
            if !path.starts_with('/') {
                return Err(error("is a `file://` URL without an absolute path"));
            }
            return Ok(Self::local(Path::new(path)));
        }
        if let Some((scheme, rest)) = text.split_once("://") {
            let default_port = match scheme.to_ascii_lowercase().as_str() {
                "https" => "443",
                "http" => "80",
                "ssh" | "git+ssh" | "ssh+git" => "22",
                "git" => "9418",
                _ => return Err(error(&format!("has the unsupported scheme `{scheme}`"))),
            };
            let (authority, path) = rest.split_once('/').ok_or_else(|| error("has no path"))?;
            // Drop credentials (`user@`, `user:token@`) and the default port.
            let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            let host_port = match host_port.rsplit_once(':') {
                Some((host, port)) if port == default_port || port.is_empty() => host,
                _ => host_port,
            };
            return Self::remote(host_port, path).ok_or_else(|| error("has no host or no path"));
        }
        // scp-like `[user@]host:path`, told apart from a local path by a `:`
        // before any `/`.
        if let Some((authority, path)) = text.split_once(':')
            && !authority.contains('/')
        {
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            return Self::remote(host, path).ok_or_else(|| error("has no host or no path"));
        }
        let absolute = std::path::absolute(text).map_err(|err| error(&err.to_string()))?;
        Ok(Self::local(&absolute))
    }

    /// The key of a GitHub repository named `OWNER/REPO` (a push's
    /// `repository.full_name`).
    pub fn github(full_name: &str) -> Option<Self> {
        Self::remote("github.com", full_name)
    }

    fn remote(host: &str, path: &str) -> Option<Self> {
        let host = host.trim().to_ascii_lowercase();
        let path = path.trim_matches('/');
        let path = path
            .strip_suffix(".git")
            .unwrap_or(path)
            .trim_end_matches('/');
        if host.is_empty() || path.is_empty() {
            return None;
        }
        let path = if host == "github.com" || host == "www.github.com" {
            path.to_ascii_lowercase()
        } else {
            path.to_owned()
        };
        let host = host
            .strip_prefix("www.")
            .filter(|_| host.ends_with("github.com"))
            .unwrap_or(&host);
        Some(Self(format!("{host}/{path}")))
    }

    fn local(path: &Path) -> Self {
        let path = normalise_lexically(path);
        let path = std::fs::canonicalize(&path).unwrap_or(path);
        let text = path.to_string_lossy();
        let text = text.trim_end_matches('/');
        let text = text.strip_suffix(".git").unwrap_or(text);
        Self(format!("file://{text}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RepoKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Resolves `.` and `..` without touching the file system.
fn normalise_lexically(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// What a trigger does with a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Build,
    Skip(SkipReason),
}

/// Why a push builds nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SkipReason {
    #[error("push to repository `{pushed}`, but the trigger watches `{watched}`")]
    OtherRepository { pushed: String, watched: String },
    #[error("ref `{git_ref}` was deleted")]
    Deletion { git_ref: String },
    #[error("branch `{branch}` does not match the pattern `{pattern}`")]
    BranchNotMatched { branch: String, pattern: String },
    #[error("`{tag}` is a tag, and the trigger builds no tags")]
    Tag { tag: String },
    #[error("tag `{tag}` does not match the tag pattern `{pattern}`")]
    TagNotMatched { tag: String, pattern: String },
    #[error("ref `{git_ref}` is neither a branch nor a tag")]
    OtherRef { git_ref: String },
    #[error("only ignored files changed")]
    OnlyIgnoredFiles,
    #[error("no changed file matches the included files")]
    NoIncludedFiles,
}

/// A validated trigger.
#[derive(Debug, Clone)]
pub struct Trigger {
    id: String,
    project: String,
    service: String,
    repo_url: String,
    repo_key: RepoKey,
    branch_pattern: RefPattern,
    tag_pattern: Option<RefPattern>,
    dockerfile: PathBuf,
    context_dir: PathBuf,
    included_files: Vec<FileGlob>,
    ignored_files: Vec<FileGlob>,
    webhook_secret: Secret,
    github_token: Option<Secret>,
}

impl Trigger {
    /// Validates `spec`.
    pub fn new(spec: TriggerSpec) -> Result<Self, TriggerError> {
        let TriggerSpec {
            id,
            project,
            service,
            repo,
            branch_pattern,
            tag_pattern,
            dockerfile,
            context_dir,
            included_files,
            ignored_files,
            webhook_secret,
            github_token,
        } = spec;
        for (what, value) in [
            ("trigger id", &id),
            ("project", &project),
            ("service", &service),
        ] {
            if value.is_empty() {
                return Err(TriggerError::Empty { what });
            }
        }
        let repo_key = RepoKey::from_url(&repo)?;
        let branch_pattern = RefPattern::new("branch", &branch_pattern)?;
        let tag_pattern = tag_pattern
            .map(|pattern| RefPattern::new("tag", &pattern))
            .transpose()?;
        let dockerfile = relative_path(
            "dockerfile",
            dockerfile.as_deref().unwrap_or(DEFAULT_DOCKERFILE),
            false,
        )?;
        let context_dir = relative_path(
            "context dir",
            context_dir.as_deref().unwrap_or(DEFAULT_CONTEXT_DIR),
            true,
        )?;
        let included_files = globs("included files", &included_files)?;
        let ignored_files = globs("ignored files", &ignored_files)?;
        if webhook_secret.chars().count() < MIN_SECRET_LEN {
            return Err(TriggerError::WeakSecret {
                len: webhook_secret.chars().count(),
            });
        }
        let github_token = match github_token {
            Some(token) if token.trim().is_empty() => {
                return Err(TriggerError::Empty {
                    what: "github token",
                });
            }
            Some(token) => Some(Secret::new(token.trim())),
            None => None,
        };
        Ok(Self {
            id,
            project,
            service,
            repo_url: repo.trim().to_owned(),
            repo_key,
            branch_pattern,
            tag_pattern,
            dockerfile,
            context_dir,
            included_files,
            ignored_files,
            webhook_secret: Secret::new(webhook_secret),
            github_token,
        })
    }

    /// Whether a push naming this `clone_url` (and, from GitHub, this
    /// `OWNER/REPO` full name) went to this trigger's repository.
    pub fn watches(&self, clone_url: &str, full_name: Option<&str>) -> bool {
        RepoKey::from_url(clone_url).is_ok_and(|key| key == self.repo_key)
            || full_name
                .and_then(RepoKey::github)
                .is_some_and(|key| key == self.repo_key)
    }

    /// Decides whether `push` builds.
    pub fn matches(&self, push: &Push) -> Decision {
        let repo = &push.repository;
        if !self.watches(&repo.clone_url, repo.full_name.as_deref()) {
            return Decision::Skip(SkipReason::OtherRepository {
                pushed: repo.clone_url.clone(),
                watched: self.repo_url.clone(),
            });
        }
        if push.deleted || push.after.is_zero() {
            return Decision::Skip(SkipReason::Deletion {
                git_ref: push.git_ref.full(),
            });
        }
        match &push.git_ref {
            GitRef::Branch(branch) if !self.branch_pattern.is_match(branch) => {
                return Decision::Skip(SkipReason::BranchNotMatched {
                    branch: branch.clone(),
                    pattern: self.branch_pattern.as_str().to_owned(),
                });
            }
            GitRef::Branch(_) => {}
            GitRef::Tag(tag) => match &self.tag_pattern {
                None => return Decision::Skip(SkipReason::Tag { tag: tag.clone() }),
                Some(pattern) if !pattern.is_match(tag) => {
                    return Decision::Skip(SkipReason::TagNotMatched {
                        tag: tag.clone(),
                        pattern: pattern.as_str().to_owned(),
                    });
                }
                Some(_) => {}
            },
            GitRef::Other(full) => {
                return Decision::Skip(SkipReason::OtherRef {
                    git_ref: full.clone(),
                });
            }
        }
        if let Some(files) = &push.changed_files {
            self.filter_files(files)
                .map_or(Decision::Build, Decision::Skip)
        } else {
            Decision::Build
        }
    }

    /// Cloud Build's rules: files matching an ignored glob do not count;
    /// if nothing else changed, skip; with included globs, at least one of
    /// the remaining files must match one.
    fn filter_files(&self, files: &BTreeSet<String>) -> Option<SkipReason> {
        if self.ignored_files.is_empty() && self.included_files.is_empty() {
            return None;
        }
        let mut counted = files
            .iter()
            .filter(|file| !self.ignored_files.iter().any(|glob| glob.matches(file)))
            .peekable();
        if !self.ignored_files.is_empty() && counted.peek().is_none() && !files.is_empty() {
            return Some(SkipReason::OnlyIgnoredFiles);
        }
        if !self.included_files.is_empty()
            && !counted.any(|file| self.included_files.iter().any(|glob| glob.matches(file)))
        {
            return Some(SkipReason::NoIncludedFiles);
        }
        None
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn project(&self) -> &str {
        &self.project
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    /// The repository URL as configured: what `git fetch` is given.
    pub fn repo_url(&self) -> &str {
        &self.repo_url
    }

    pub fn repo_key(&self) -> &RepoKey {
        &self.repo_key
    }

    pub fn branch_pattern(&self) -> &RefPattern {
        &self.branch_pattern
    }

    pub fn tag_pattern(&self) -> Option<&RefPattern> {
        self.tag_pattern.as_ref()
    }

    /// Relative to the context directory.
    pub fn dockerfile(&self) -> &Path {
        &self.dockerfile
    }

    /// Relative to the repository root.
    pub fn context_dir(&self) -> &Path {
        &self.context_dir
    }

    pub fn included_files(&self) -> &[FileGlob] {
        &self.included_files
    }

    pub fn ignored_files(&self) -> &[FileGlob] {
        &self.ignored_files
    }

    pub fn webhook_secret(&self) -> &Secret {
        &self.webhook_secret
    }

    pub fn github_token(&self) -> Option<&Secret> {
        self.github_token.as_ref()
    }

    /// The image repository builds are tagged in: `rouse/<project>-<service>`.
    pub fn image_repository(&self) -> String {
        image_repository(&self.project, &self.service)
    }

    /// The commit-status context: `rouse/<project>-<service>`.
    pub fn status_context(&self) -> String {
        format!("rouse/{}-{}", self.project, self.service)
    }
}

/// `rouse/<project>-<service>`: where a service's images are tagged.
pub fn image_repository(project: &str, service: &str) -> String {
    format!("rouse/{project}-{service}")
}

/// A path inside the repository: relative, without `..`.
fn relative_path(what: &'static str, text: &str, dir: bool) -> Result<PathBuf, TriggerError> {
    let error = |problem: &str| TriggerError::Path {
        what,
        path: text.to_owned(),
        problem: problem.to_owned(),
    };
    if text.is_empty() {
        return Err(error(if dir {
            "is empty: use `.` for the repository root"
        } else {
            "is empty"
        }));
    }
    let path = Path::new(text);
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(error("must stay inside the repository: remove the `..`"));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(error("must be relative to the repository, not absolute"));
            }
        }
    }
    if !dir && out.as_os_str().is_empty() {
        return Err(error("names a directory, not a file"));
    }
    Ok(if out.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        out
    })
}

fn globs(what: &'static str, patterns: &[String]) -> Result<Vec<FileGlob>, TriggerError> {
    if patterns.len() > MAX_GLOBS {
        return Err(TriggerError::TooManyGlobs {
            what,
            count: patterns.len(),
        });
    }
    patterns
        .iter()
        .map(|pattern| FileGlob::new(pattern).map_err(TriggerError::from))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::tests::{SHA_A, github_push};
    use crate::payload::{CommitId, GithubEvent, PushRepository, PushSource, parse_github};

    const SECRET: &str = "0123456789abcdef0123";

    fn spec() -> TriggerSpec {
        TriggerSpec {
            id: "t1".into(),
            project: "acme".into(),
            service: "echo".into(),
            repo: "https://github.com/Octo/Hello".into(),
            branch_pattern: "^main$".into(),
            webhook_secret: SECRET.into(),
            ..TriggerSpec::default()
        }
    }

    fn trigger(spec: TriggerSpec) -> Trigger {
        Trigger::new(spec).expect("valid trigger")
    }

    fn push(git_ref: &str, files: &[&str]) -> Push {
        match parse_github(Some("push"), github_push(git_ref, SHA_A, files).as_bytes()) {
            Ok(GithubEvent::Push(push)) => push,
            other => panic!("{other:?}"),
        }
    }

    fn key(url: &str) -> String {
        RepoKey::from_url(url).expect("valid url").0
    }

    #[test]
    fn spellings_of_one_github_repository_are_equal() {
        let expected = "github.com/octo/hello";
        for url in [
            "https://github.com/octo/hello",
            "https://github.com/Octo/Hello.git",
            "https://github.com/octo/hello/",
            "http://github.com/octo/hello.git",
            "https://user:token@github.com:443/octo/hello.git",
            "https://www.github.com/octo/hello",
            "git@github.com:Octo/hello.git",
            "ssh://git@github.com/octo/hello.git",
            "ssh://git@github.com:22/octo/hello",
            "git://github.com/octo/hello.git",
        ] {
            assert_eq!(key(url), expected, "{url}");
        }
        assert_eq!(
            RepoKey::github("Octo/Hello").map(|k| k.0).as_deref(),
            Some(expected)
        );
        // Other hosts keep their case and non-default ports.
        assert_eq!(
            key("https://git.example.com/Team/App.git"),
            "git.example.com/Team/App"
        );
        assert_eq!(key("http://localhost:3000/a/b"), "localhost:3000/a/b");
        assert_ne!(
            key("http://localhost:3000/a/b"),
            key("http://localhost:4000/a/b")
        );
        assert_ne!(
            key("https://github.com/octo/hello"),
            key("https://github.com/octo/other")
        );
    }

    #[test]
    fn local_paths_and_file_urls_are_equal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = dir.path().join("hello.git");
        std::fs::create_dir(&repo).expect("mkdir");
        let path = repo.to_string_lossy().into_owned();
        let expected = key(&path);
        assert!(expected.starts_with("file:///"), "{expected}");
        for url in [
            format!("file://{path}"),
            format!("file://localhost{path}"),
            format!("{path}/"),
            path.trim_end_matches(".git").to_owned(),
            format!("{}/../hello.git", repo.display()),
        ] {
            assert_eq!(key(&url), expected, "{url}");
        }
        let err = RepoKey::from_url("file://relative/x").expect_err("relative file url");
        assert!(err.to_string().contains("`file://relative/x`"), "{err}");
        let err = RepoKey::from_url("ftp://host/x").expect_err("scheme");
        assert!(
            err.to_string().contains("unsupported scheme `ftp`"),
            "{err}"
        );
        assert!(RepoKey::from_url("https://github.com").is_err());
        assert!(RepoKey::from_url("  ").is_err());
    }

    #[test]
    fn builds_pushes_to_a_matching_branch() {
        let t = trigger(spec());
        assert_eq!(
            t.matches(&push("refs/heads/main", &["src/main.rs"])),
            Decision::Build
        );
        assert_eq!(
            t.matches(&push("refs/heads/feature/x", &["src/main.rs"])),
            Decision::Skip(SkipReason::BranchNotMatched {
                branch: "feature/x".into(),
                pattern: "^main$".into()
            })
        );
        // Unanchored patterns match substrings, as documented.
        let t = trigger(TriggerSpec {
            branch_pattern: "main".into(),
            ..spec()
        });
        assert_eq!(
            t.matches(&push("refs/heads/maintenance", &[])),
            Decision::Build
        );
        let t = trigger(TriggerSpec {
            branch_pattern: r"^release/v\d+$".into(),
            ..spec()
        });
        assert_eq!(
            t.matches(&push("refs/heads/release/v12", &[])),
            Decision::Build
        );
    }

    #[test]
    fn skips_tags_deletions_other_refs_and_other_repositories() {
        let t = trigger(spec());
        assert_eq!(
            t.matches(&push("refs/tags/v1", &[])),
            Decision::Skip(SkipReason::Tag { tag: "v1".into() })
        );
        let tags = trigger(TriggerSpec {
            tag_pattern: Some("^v".into()),
            ..spec()
        });
        assert_eq!(tags.matches(&push("refs/tags/v1", &[])), Decision::Build);
        assert!(matches!(
            tags.matches(&push("refs/tags/nightly", &[])),
            Decision::Skip(SkipReason::TagNotMatched { .. })
        ));
        assert!(matches!(
            t.matches(&push("refs/pull/1/head", &[])),
            Decision::Skip(SkipReason::OtherRef { .. })
        ));
        let mut deletion = push("refs/heads/main", &[]);
        deletion.deleted = true;
        assert_eq!(
            t.matches(&deletion),
            Decision::Skip(SkipReason::Deletion {
                git_ref: "refs/heads/main".into()
            })
        );
        let mut elsewhere = push("refs/heads/main", &[]);
        elsewhere.repository = PushRepository {
            clone_url: "https://github.com/octo/other.git".into(),
            full_name: Some("octo/other".into()),
        };
        assert!(matches!(
            t.matches(&elsewhere),
            Decision::Skip(SkipReason::OtherRepository { .. })
        ));
    }

    #[test]
    fn a_generic_push_to_a_local_repository() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("app.git");
        std::fs::create_dir(&path).expect("mkdir");
        let t = trigger(TriggerSpec {
            repo: path.to_string_lossy().into_owned(),
            ..spec()
        });
        let push = Push {
            source: PushSource::Generic,
            repository: PushRepository {
                clone_url: format!("file://{}", path.display()),
                full_name: None,
            },
            git_ref: GitRef::Branch("main".into()),
            before: None,
            after: CommitId::parse(SHA_A).expect("sha"),
            deleted: false,
            head_commit: None,
            changed_files: None,
        };
        assert_eq!(t.matches(&push), Decision::Build);
    }

    #[test]
    fn included_and_ignored_files() {
        let t = trigger(TriggerSpec {
            ignored_files: vec!["**/*.md".into(), "docs/**".into()],
            ..spec()
        });
        assert_eq!(
            t.matches(&push("refs/heads/main", &["README.md", "docs/a/b.txt"])),
            Decision::Skip(SkipReason::OnlyIgnoredFiles)
        );
        assert_eq!(
            t.matches(&push("refs/heads/main", &["README.md", "src/lib.rs"])),
            Decision::Build
        );
        let t = trigger(TriggerSpec {
            included_files: vec!["services/echo/**".into()],
            ignored_files: vec!["**/*.md".into()],
            ..spec()
        });
        assert_eq!(
            t.matches(&push("refs/heads/main", &["services/echo/main.py"])),
            Decision::Build
        );
        assert_eq!(
            t.matches(&push("refs/heads/main", &["services/other/main.py"])),
            Decision::Skip(SkipReason::NoIncludedFiles)
        );
        // An included file that is also ignored does not count.
        assert_eq!(
            t.matches(&push("refs/heads/main", &["services/echo/README.md"])),
            Decision::Skip(SkipReason::OnlyIgnoredFiles)
        );
        // Unknown changed files never skip.
        let mut unknown = push("refs/heads/main", &[]);
        unknown.changed_files = None;
        assert_eq!(t.matches(&unknown), Decision::Build);
    }

    #[test]
    fn invalid_specs_name_the_value_and_the_fix() {
        let err = Trigger::new(TriggerSpec {
            branch_pattern: "^(main$".into(),
            ..spec()
        })
        .expect_err("bad regex");
        let message = err.to_string();
        assert!(message.starts_with("branch pattern `^(main$` is not a valid regular expression (RE2 syntax, e.g. `^main$`)"), "{message}");
        assert!(!message.contains('\n'), "{message}");

        let err = Trigger::new(TriggerSpec {
            dockerfile: Some("../Dockerfile".into()),
            ..spec()
        })
        .expect_err("escaping dockerfile");
        assert_eq!(
            err.to_string(),
            "dockerfile `../Dockerfile` must stay inside the repository: remove the `..`"
        );
        let err = Trigger::new(TriggerSpec {
            context_dir: Some("/srv".into()),
            ..spec()
        })
        .expect_err("absolute context");
        assert!(err.to_string().contains("context dir `/srv`"), "{err}");
        let err = Trigger::new(TriggerSpec {
            webhook_secret: "short".into(),
            ..spec()
        })
        .expect_err("weak secret");
        assert!(err.to_string().contains("openssl rand -hex 32"), "{err}");
        let err = Trigger::new(TriggerSpec {
            ignored_files: vec!["[oops".into()],
            ..spec()
        })
        .expect_err("bad glob");
        assert!(err.to_string().contains("`[oops`"), "{err}");
        let err = Trigger::new(TriggerSpec {
            repo: "ftp://x/y".into(),
            ..spec()
        })
        .expect_err("bad repo");
        assert!(
            err.to_string().contains("https://github.com/OWNER/REPO"),
            "{err}"
        );
    }

    #[test]
    fn defaults_names_and_redaction() {
        let t = trigger(TriggerSpec {
            github_token: Some("ghp_secret_token".into()),
            context_dir: Some("./services/echo/".into()),
            ..spec()
        });
        assert_eq!(t.dockerfile(), Path::new("Dockerfile"));
        assert_eq!(t.context_dir(), Path::new("services/echo"));
        assert_eq!(trigger(spec()).context_dir(), Path::new("."));
        assert_eq!(t.image_repository(), "rouse/acme-echo");
        assert_eq!(t.status_context(), "rouse/acme-echo");
        assert_eq!(t.repo_url(), "https://github.com/Octo/Hello");
        let debug = format!("{t:?} {:?}", spec());
        assert!(!debug.contains(SECRET), "{debug}");
        assert!(!debug.contains("ghp_secret_token"), "{debug}");
        assert_eq!(
            t.github_token().map(Secret::expose),
            Some("ghp_secret_token")
        );
    }
}
