//! The builder: a git push becomes an image, ready to be rolled out as a
//! new revision of a service (issue 5).
//!
//! This crate holds the builder's parts, each usable and tested on its own
//! against the real thing (the `git` binary, the Docker engine, a local
//! HTTP server standing in for GitHub); it has no store and no server. The
//! api crate wires them together (not written yet):
//!
//! ```text
//! POST /webhooks/github ─▶ signature::verify (raw body, X-Hub-Signature-256)
//!   (or /webhooks/git)  ─▶ webhook::parse_github / parse_generic ─▶ Push
//!                       ─▶ triggers whose Trigger::watches(clone_url, full_name)
//!                       ─▶ Trigger::matches(push): Build, or Skip(reason)
//!                       ─▶ record the build (queued), answer 202 with its id
//!                       ─▶ queue::BuildQueue::submit(id, trigger id, job)
//! the build's runner    ─▶ github: commit status `pending`
//!   (a queue::BuildRunner) ─▶ fetching:    git::GitFetcher::checkout (exactly the pushed commit)
//!                       ─▶ building:    docker::ImageBuilder::build (rouse/<project>-<service>:<commit12>, :latest)
//!                       ─▶ pushing:     docker::ImageBuilder::push (when a registry is configured)
//!                       ─▶ rolling-out: a revision of the image, one instance
//!                                       ready within the wake timeout, then serving
//!                       ─▶ github: `success` / `failure` / `error`
//! ```
//!
//! - [`signature`]: HMAC-SHA256 webhook signatures, checked in constant time
//!   before parsing; SHA-1 is refused.
//! - [`webhook`]: typed GitHub `ping`/`push` and generic `{repo, ref, sha}`
//!   payloads, errors naming the bad field.
//! - [`trigger`]: [`Trigger`] (repository, branch regex, Dockerfile, context,
//!   file filters, webhook secret, GitHub token), repository URL
//!   normalisation ([`RepoKey`]) and the build/skip [`Decision`].
//! - [`git`]: a per-repository bare cache, one-commit fetches with a full
//!   fetch as fallback, export to a fresh directory; timeouts and
//!   cancellation kill the whole process group.
//! - [`docker`]: the context as a bounded tar stream (honouring
//!   `.dockerignore`), the build's log line by line, failures naming the
//!   failing instruction.
//! - [`queue`]: bounded, one build at a time by default, newer pushes
//!   superseding queued builds of the same trigger, cancellation and time
//!   limits; statuses go to a [`queue::StatusSink`].
//! - [`github`]: commit statuses through the REST API (base URL
//!   configurable for tests and GitHub Enterprise).
//! - [`secrets`]: per-service secrets sealed with ChaCha20-Poly1305 under a
//!   key file kept outside the database.
//! - [`glob`]: the file globs of triggers and `.dockerignore`.
//!
//! Everything is bounded: body sizes, changed-file lists, log lines kept,
//! stderr kept, context size, queue length, build time, secret sizes.

pub mod docker;
pub mod git;
pub mod github;
pub mod glob;
pub mod queue;
pub mod secrets;
pub mod signature;
pub mod trigger;
pub mod webhook;

pub use queue::{BuildQueue, BuildStatus};
pub use trigger::{Decision, RepoKey, SkipReason, Trigger, TriggerSpec};
pub use webhook::{CommitId, GitRef, Push};

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}
