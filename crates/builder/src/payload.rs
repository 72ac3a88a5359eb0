//! Push payloads: GitHub's `ping` and `push` webhook events, and the generic
//! `{repo, ref, sha}` push that any other host (or a script) can send.
//!
//! Parsing happens after the signature was verified (see
//! [`crate::signature`]). GitHub payloads carry many more fields than Rouse
//! reads, and GitHub adds new ones, so unknown fields are ignored; the
//! generic payload is Rouse's own and refuses unknown fields, so that a typo
//! (`"commit"` for `"sha"`) is an error rather than a silent default. Every
//! error names the field (as a dotted path) and what was wrong with it.

use std::collections::BTreeSet;
use std::fmt;

use serde_json::Value;

/// GitHub's header naming the event (`push`, `ping`, …).
pub const EVENT_HEADER: &str = "X-GitHub-Event";
/// GitHub's header with the unique id of a delivery (redeliveries repeat it).
pub const DELIVERY_HEADER: &str = "X-GitHub-Delivery";
/// Largest body accepted: GitHub caps webhook payloads at 25 MB and drops
/// bigger ones itself, so anything larger is not from GitHub.
pub const MAX_BODY_BYTES: usize = 25 * 1024 * 1024;
/// Changed files kept from one push: beyond this the set is treated as
/// unknown (every trigger whose branch matches builds), which keeps memory
/// bounded for pushes of huge histories.
pub const MAX_CHANGED_FILES: usize = 10_000;

/// A full git reference, classified.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum GitRef {
    /// `refs/heads/<name>`.
    Branch(String),
    /// `refs/tags/<name>`.
    Tag(String),
    /// Anything else under `refs/` (e.g. `refs/pull/1/head`).
    Other(String),
}

impl GitRef {
    /// Classifies a full reference such as `refs/heads/main`.
    pub fn parse(full: &str) -> Result<Self, WebhookError> {
        let bad =
            |problem: &str| WebhookError::field("ref", format!("{problem}, got `{}`", quote(full)));
        if !full.starts_with("refs/") {
            return Err(bad(
                "must be a full reference such as `refs/heads/main` or `refs/tags/v1`",
            ));
        }
        if full.chars().any(|c| c.is_control() || c == ' ') || full.contains("..") {
            return Err(bad("is not a valid git reference name"));
        }
        let name_after = |prefix: &str| full.strip_prefix(prefix).filter(|n| !n.is_empty());
        Ok(if let Some(name) = name_after("refs/heads/") {
            Self::Branch(name.to_owned())
        } else if let Some(name) = name_after("refs/tags/") {
            Self::Tag(name.to_owned())
        } else {
            Self::Other(full.to_owned())
        })
    }

    /// The full reference, as pushed.
    pub fn full(&self) -> String {
        match self {
            Self::Branch(name) => format!("refs/heads/{name}"),
            Self::Tag(name) => format!("refs/tags/{name}"),
            Self::Other(full) => full.clone(),
        }
    }

    /// The branch name, if this is a branch.
    pub fn branch(&self) -> Option<&str> {
        match self {
            Self::Branch(name) => Some(name),
            _ => None,
        }
    }
}

impl fmt::Display for GitRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full())
    }
}

/// A commit id: 40 (SHA-1) or 64 (SHA-256 repositories) lower-case hex
/// digits. The all-zero id stands for "no commit" (the `after` of a branch
/// deletion, the `before` of a branch creation).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CommitId(String);

impl CommitId {
    /// Validates `text` (upper-case hex is accepted and lowered).
    pub fn parse(text: &str) -> Option<Self> {
        let valid = matches!(text.len(), 40 | 64) && text.bytes().all(|b| b.is_ascii_hexdigit());
        valid.then(|| Self(text.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 digits, as in image tags.
    pub fn short12(&self) -> &str {
        &self.0[..12]
    }

    /// The first 7 digits, as in revision names.
    pub fn short7(&self) -> &str {
        &self.0[..7]
    }

    /// Whether this is the all-zero "no commit" id.
    pub fn is_zero(&self) -> bool {
        self.0.bytes().all(|b| b == b'0')
    }
}

impl fmt::Display for CommitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The repository a push went to, as the payload names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushRepository {
    /// A URL git can fetch from (`repository.clone_url`, or the generic
    /// payload's `repo`).
    pub clone_url: String,
    /// `OWNER/REPO` (GitHub only).
    pub full_name: Option<String>,
}

/// The commit a push ended on, as GitHub describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadCommit {
    pub id: CommitId,
    pub message: String,
}

/// Where a push notification came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushSource {
    GitHub,
    Generic,
}

/// One push, from either payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    pub source: PushSource,
    pub repository: PushRepository,
    pub git_ref: GitRef,
    /// The commit the ref pointed at before (GitHub only).
    pub before: Option<CommitId>,
    /// The commit the ref points at now: the one to build. All zeros for a
    /// deletion.
    pub after: CommitId,
    /// The ref was deleted (nothing to build).
    pub deleted: bool,
    pub head_commit: Option<HeadCommit>,
    /// Paths added, modified or removed by the pushed commits; `None` when
    /// unknown (generic pushes, a new branch whose commits GitHub does not
    /// list, or more than [`MAX_CHANGED_FILES`]), in which case file filters
    /// do not skip the build.
    pub changed_files: Option<BTreeSet<String>>,
}

/// A GitHub ping: sent once when a webhook is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ping {
    pub zen: Option<String>,
    pub hook_id: Option<u64>,
    /// Absent for organisation webhooks.
    pub repository: Option<PushRepository>,
}

/// A parsed GitHub delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GithubEvent {
    Ping(Ping),
    Push(Push),
    /// Any other event (e.g. `issues`): acknowledged and ignored.
    Unsupported {
        event: String,
    },
}

/// Why a payload was refused: the caller's mistake (answered 400, or 413
/// for [`WebhookError::TooLarge`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("body of {size} bytes is larger than the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("body is not valid JSON: {reason}")]
    NotJson { reason: String },
    #[error("field `{field}` {problem}")]
    Field { field: String, problem: String },
    #[error(
        "missing header `X-GitHub-Event`: GitHub always sends it; a generic push goes to `POST /webhooks/git`"
    )]
    MissingEvent,
}

impl WebhookError {
    fn field(field: &str, problem: impl Into<String>) -> Self {
        Self::Field {
            field: field.to_owned(),
            problem: problem.into(),
        }
    }
}

/// Parses a GitHub delivery: `event` is the `X-GitHub-Event` header, `body`
/// the raw (already verified) body.
pub fn parse_github(event: Option<&str>, body: &[u8]) -> Result<GithubEvent, WebhookError> {
    let event = event
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .ok_or(WebhookError::MissingEvent)?;
    match event {
        "ping" => parse_ping(&parse_json(body)?).map(GithubEvent::Ping),
        "push" => parse_github_push(&parse_json(body)?).map(GithubEvent::Push),
        other => Ok(GithubEvent::Unsupported {
            event: quote(other),
        }),
    }
}

/// Parses the generic push `{"repo": URL, "ref": "refs/heads/main", "sha": COMMIT}`.
pub fn parse_generic(body: &[u8]) -> Result<Push, WebhookError> {
    let value = parse_json(body)?;
    let object = value.as_object().ok_or_else(|| WebhookError::NotJson {
        reason: "expected an object `{\"repo\": …, \"ref\": …, \"sha\": …}`".to_owned(),
    })?;
    if let Some(unknown) = object
        .keys()
        .find(|k| !matches!(k.as_str(), "repo" | "ref" | "sha"))
    {
        return Err(WebhookError::field(
            unknown,
            "is not known: a generic push has exactly `repo`, `ref` and `sha`",
        ));
    }
    let repo = required_str(&value, "repo")?;
    if repo.trim().is_empty() {
        return Err(WebhookError::field(
            "repo",
            "is empty: give the repository's git URL",
        ));
    }
    let git_ref = GitRef::parse(required_str(&value, "ref")?)?;
    let after = commit_at(&value, "sha")?;
    if after.is_zero() {
        return Err(WebhookError::field(
            "sha",
            "is all zeros: a generic push names the commit to build",
        ));
    }
    Ok(Push {
        source: PushSource::Generic,
        repository: PushRepository {
            clone_url: repo.trim().to_owned(),
            full_name: None,
        },
        git_ref,
        before: None,
        after,
        deleted: false,
        head_commit: None,
        changed_files: None,
    })
}

fn parse_json(body: &[u8]) -> Result<Value, WebhookError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(WebhookError::TooLarge {
            size: body.len(),
            limit: MAX_BODY_BYTES,
        });
    }
    serde_json::from_slice(body).map_err(|err| WebhookError::NotJson {
        reason: err.to_string(),
    })
}

fn parse_ping(value: &Value) -> Result<Ping, WebhookError> {
    let zen = optional_str(value, "zen")?.map(str::to_owned);
    let hook_id = match lookup(value, "hook_id") {
        None => None,
        Some(id) => Some(
            id.as_u64()
                .ok_or_else(|| WebhookError::field("hook_id", "must be a non-negative integer"))?,
        ),
    };
    let repository = match lookup(value, "repository") {
        None => None,
        Some(_) => Some(parse_repository(value)?),
    };
    Ok(Ping {
        zen,
        hook_id,
        repository,
    })
}

fn parse_github_push(value: &Value) -> Result<Push, WebhookError> {
    let git_ref = GitRef::parse(required_str(value, "ref")?)?;
    let after = commit_at(value, "after")?;
    let before = match lookup(value, "before") {
        None => None,
        Some(_) => Some(commit_at(value, "before")?),
    };
    let deleted = match lookup(value, "deleted") {
        None => after.is_zero(),
        Some(flag) => flag
            .as_bool()
            .ok_or_else(|| WebhookError::field("deleted", "must be true or false"))?,
    };
    if !deleted && after.is_zero() {
        return Err(WebhookError::field(
            "after",
            "is all zeros but `deleted` is false",
        ));
    }
    let head_commit = match lookup(value, "head_commit") {
        None => None,
        Some(_) => Some(HeadCommit {
            id: commit_at(value, "head_commit.id")?,
            message: optional_str(value, "head_commit.message")?
                .unwrap_or_default()
                .to_owned(),
        }),
    };
    Ok(Push {
        source: PushSource::GitHub,
        repository: parse_repository(value)?,
        git_ref,
        before,
        after,
        deleted,
        head_commit,
        changed_files: changed_files(value)?,
    })
}

fn parse_repository(value: &Value) -> Result<PushRepository, WebhookError> {
    let clone_url = required_str(value, "repository.clone_url")?;
    if clone_url.trim().is_empty() {
        return Err(WebhookError::field("repository.clone_url", "is empty"));
    }
    let full_name = optional_str(value, "repository.full_name")?;
    if let Some(name) = full_name
        && name.split('/').filter(|part| !part.is_empty()).count() != 2
    {
        return Err(WebhookError::field(
            "repository.full_name",
            format!("must be `OWNER/REPO`, got `{}`", quote(name)),
        ));
    }
    Ok(PushRepository {
        clone_url: clone_url.trim().to_owned(),
        full_name: full_name.map(str::to_owned),
    })
}

/// The union of `commits[].added/modified/removed`; `None` if GitHub listed
/// no commits (a new branch pointing at existing commits) or too many files.
fn changed_files(value: &Value) -> Result<Option<BTreeSet<String>>, WebhookError> {
    let commits = match lookup(value, "commits") {
        None => return Ok(None),
        Some(Value::Array(commits)) => commits,
        Some(_) => return Err(WebhookError::field("commits", "must be an array")),
    };
    if commits.is_empty() {
        return Ok(None);
    }
    let mut files = BTreeSet::new();
    for (index, commit) in commits.iter().enumerate() {
        for list in ["added", "modified", "removed"] {
            let field = || format!("commits[{index}].{list}");
            let paths = match commit.get(list) {
                None | Some(Value::Null) => continue,
                Some(Value::Array(paths)) => paths,
                Some(_) => {
                    return Err(WebhookError::field(&field(), "must be an array of paths"));
                }
            };
            for path in paths {
                let path = path
                    .as_str()
                    .ok_or_else(|| WebhookError::field(&field(), "must contain only strings"))?;
                if files.len() >= MAX_CHANGED_FILES {
                    return Ok(None);
                }
                files.insert(path.to_owned());
            }
        }
    }
    Ok(Some(files))
}

/// The value at a dotted path; JSON `null` counts as absent.
fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(value, |v, key| v.get(key))
        .filter(|v| !v.is_null())
}

fn required_str<'a>(value: &'a Value, path: &str) -> Result<&'a str, WebhookError> {
    optional_str(value, path)?.ok_or_else(|| WebhookError::field(path, "is missing"))
}

fn optional_str<'a>(value: &'a Value, path: &str) -> Result<Option<&'a str>, WebhookError> {
    match lookup(value, path) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(other) => Err(WebhookError::field(
            path,
            format!("must be a string, got {}", rouse_core::json_kind(other)),
        )),
    }
}

fn commit_at(value: &Value, path: &str) -> Result<CommitId, WebhookError> {
    let text = required_str(value, path)?;
    CommitId::parse(text).ok_or_else(|| {
        WebhookError::field(
            path,
            format!(
                "must be a commit id of 40 (or 64) hex digits, got `{}`",
                quote(text)
            ),
        )
    })
}

/// Quotes at most 100 characters of untrusted input in an error.
fn quote(text: &str) -> String {
    match text.char_indices().nth(100) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const SHA_A: &str = "6113728f27ae82c7b1a177c8d03f9e96e0adf246";
    pub(crate) const SHA_B: &str = "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c";
    const ZERO: &str = "0000000000000000000000000000000000000000";

    /// A push payload shaped like GitHub's (trimmed, plus fields Rouse does
    /// not read, which must be tolerated).
    pub(crate) fn github_push(git_ref: &str, after: &str, files: &[&str]) -> String {
        serde_json::json!({
            "ref": git_ref,
            "before": SHA_B,
            "after": after,
            "created": false,
            "deleted": false,
            "forced": false,
            "base_ref": null,
            "compare": "https://github.com/octo/hello/compare/0d1a26e67d8f...6113728f27ae",
            "commits": [{
                "id": after,
                "tree_id": "f9d2a07e9488b91af2641b26b9407fe22a451433",
                "distinct": true,
                "message": "Update README",
                "timestamp": "2024-01-01T00:00:00Z",
                "author": {"name": "Octo", "email": "octo@example.com", "username": "octo"},
                "added": [],
                "removed": [],
                "modified": files,
            }],
            "head_commit": {"id": after, "message": "Update README", "added": [], "removed": [], "modified": files},
            "repository": {
                "id": 1296269,
                "node_id": "MDEwOlJlcG9zaXRvcnkxMjk2MjY5",
                "name": "hello",
                "full_name": "octo/hello",
                "private": false,
                "owner": {"login": "octo", "id": 1},
                "html_url": "https://github.com/octo/hello",
                "clone_url": "https://github.com/octo/hello.git",
                "ssh_url": "git@github.com:octo/hello.git",
                "default_branch": "main",
                "topics": []
            },
            "pusher": {"name": "octo", "email": "octo@example.com"},
            "sender": {"login": "octo", "id": 1, "type": "User"}
        })
        .to_string()
    }

    fn push_of(body: &str) -> Push {
        match parse_github(Some("push"), body.as_bytes()).expect("valid push") {
            GithubEvent::Push(push) => push,
            other => panic!("not a push: {other:?}"),
        }
    }

    fn field_error(result: Result<impl fmt::Debug, WebhookError>) -> (String, String) {
        match result {
            Err(WebhookError::Field { field, problem }) => (field, problem),
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn parses_a_github_push_and_tolerates_unknown_fields() {
        let push = push_of(&github_push("refs/heads/main", SHA_A, &["README.md"]));
        assert_eq!(push.source, PushSource::GitHub);
        assert_eq!(push.git_ref, GitRef::Branch("main".into()));
        assert_eq!(push.after.as_str(), SHA_A);
        assert_eq!(push.after.short12(), "6113728f27ae");
        assert_eq!(push.before.as_ref().map(CommitId::as_str), Some(SHA_B));
        assert!(!push.deleted);
        assert_eq!(
            push.repository.clone_url,
            "https://github.com/octo/hello.git"
        );
        assert_eq!(push.repository.full_name.as_deref(), Some("octo/hello"));
        let head = push.head_commit.expect("head commit");
        assert_eq!(head.id.as_str(), SHA_A);
        assert_eq!(head.message, "Update README");
        let files = push.changed_files.expect("files known");
        assert_eq!(files.into_iter().collect::<Vec<_>>(), ["README.md"]);
    }

    #[test]
    fn branches_tags_and_other_refs() {
        assert_eq!(
            GitRef::parse("refs/heads/feature/x"),
            Ok(GitRef::Branch("feature/x".into()))
        );
        assert_eq!(
            GitRef::parse("refs/tags/v1.0"),
            Ok(GitRef::Tag("v1.0".into()))
        );
        assert_eq!(
            GitRef::parse("refs/pull/1/head"),
            Ok(GitRef::Other("refs/pull/1/head".into()))
        );
        assert_eq!(GitRef::Branch("main".into()).full(), "refs/heads/main");
        let push = push_of(&github_push("refs/tags/v2", SHA_A, &[]));
        assert_eq!(push.git_ref, GitRef::Tag("v2".into()));
        for bad in ["main", "refs/heads/a..b", "refs/heads/a b", ""] {
            let (field, problem) = field_error(GitRef::parse(bad));
            assert_eq!(field, "ref");
            assert!(problem.contains(&format!("`{bad}`")), "{problem}");
        }
    }

    #[test]
    fn a_branch_deletion() {
        let body = serde_json::json!({
            "ref": "refs/heads/old", "before": SHA_A, "after": ZERO,
            "created": false, "deleted": true, "head_commit": null, "commits": [],
            "repository": {"full_name": "octo/hello", "clone_url": "https://github.com/octo/hello.git"}
        })
        .to_string();
        let push = push_of(&body);
        assert!(push.deleted);
        assert!(push.after.is_zero());
        assert_eq!(push.head_commit, None);
        assert_eq!(push.changed_files, None, "no commits listed: unknown");
    }

    #[test]
    fn errors_name_the_bad_field() {
        let mut value: Value =
            serde_json::from_str(&github_push("refs/heads/main", SHA_A, &[])).expect("json");
        value["repository"]
            .as_object_mut()
            .expect("object")
            .remove("clone_url");
        let (field, problem) =
            field_error(parse_github(Some("push"), value.to_string().as_bytes()));
        assert_eq!(
            (field.as_str(), problem.as_str()),
            ("repository.clone_url", "is missing")
        );

        let body = github_push("refs/heads/main", "not-a-sha", &[]);
        let (field, problem) = field_error(parse_github(Some("push"), body.as_bytes()));
        assert_eq!(field, "after");
        assert!(problem.contains("`not-a-sha`"), "{problem}");

        let mut value: Value =
            serde_json::from_str(&github_push("refs/heads/main", SHA_A, &[])).expect("json");
        value["commits"][0]["modified"] = serde_json::json!("README.md");
        let (field, _) = field_error(parse_github(Some("push"), value.to_string().as_bytes()));
        assert_eq!(field, "commits[0].modified");

        value["ref"] = serde_json::json!(7);
        let (field, problem) =
            field_error(parse_github(Some("push"), value.to_string().as_bytes()));
        assert_eq!(
            (field.as_str(), problem.as_str()),
            ("ref", "must be a string, got a number")
        );

        let err = parse_github(Some("push"), b"{not json").expect_err("malformed");
        assert!(matches!(err, WebhookError::NotJson { .. }), "{err:?}");
        assert!(
            err.to_string().starts_with("body is not valid JSON: "),
            "{err}"
        );
        assert_eq!(parse_github(None, b"{}"), Err(WebhookError::MissingEvent));
    }

    #[test]
    fn oversized_bodies_are_refused_before_parsing() {
        let body = vec![b' '; MAX_BODY_BYTES + 1];
        assert_eq!(
            parse_github(Some("push"), &body),
            Err(WebhookError::TooLarge {
                size: MAX_BODY_BYTES + 1,
                limit: MAX_BODY_BYTES
            })
        );
    }

    #[test]
    fn ping_and_unsupported_events() {
        let body = serde_json::json!({
            "zen": "Design for failure.", "hook_id": 42, "hook": {"type": "Repository"},
            "repository": {"full_name": "octo/hello", "clone_url": "https://github.com/octo/hello.git"}
        })
        .to_string();
        match parse_github(Some("ping"), body.as_bytes()) {
            Ok(GithubEvent::Ping(ping)) => {
                assert_eq!(ping.zen.as_deref(), Some("Design for failure."));
                assert_eq!(ping.hook_id, Some(42));
                assert_eq!(
                    ping.repository.map(|r| r.full_name),
                    Some(Some("octo/hello".to_owned()))
                );
            }
            other => panic!("{other:?}"),
        }
        // An organisation hook's ping has no repository.
        assert!(matches!(
            parse_github(Some("ping"), br#"{"zen":"x","hook_id":1}"#),
            Ok(GithubEvent::Ping(Ping {
                repository: None,
                ..
            }))
        ));
        assert_eq!(
            parse_github(Some("issues"), b"{}"),
            Ok(GithubEvent::Unsupported {
                event: "issues".into()
            })
        );
    }

    #[test]
    fn the_generic_push() {
        let body = format!(
            r#"{{"repo":"file:///srv/git/hello.git","ref":"refs/heads/main","sha":"{SHA_A}"}}"#
        );
        let push = parse_generic(body.as_bytes()).expect("valid generic push");
        assert_eq!(push.source, PushSource::Generic);
        assert_eq!(push.repository.clone_url, "file:///srv/git/hello.git");
        assert_eq!(push.git_ref, GitRef::Branch("main".into()));
        assert_eq!(push.after.as_str(), SHA_A);
        assert_eq!(push.changed_files, None);

        let typo = format!(r#"{{"repo":"x","ref":"refs/heads/main","commit":"{SHA_A}"}}"#);
        let (field, problem) = field_error(parse_generic(typo.as_bytes()));
        assert_eq!(field, "commit");
        assert!(problem.contains("`repo`, `ref` and `sha`"), "{problem}");

        let (field, _) = field_error(parse_generic(br#"{"repo":"x","ref":"refs/heads/main"}"#));
        assert_eq!(field, "sha");
        let (field, _) = field_error(parse_generic(
            format!(r#"{{"repo":"x","ref":"main","sha":"{SHA_A}"}}"#).as_bytes(),
        ));
        assert_eq!(field, "ref");
        assert!(matches!(
            parse_generic(b"[]"),
            Err(WebhookError::NotJson { .. })
        ));
    }
}
