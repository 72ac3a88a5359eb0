//! The builder: a git push becomes an image and, once one instance of it
//! passed its readiness check, the serving revision of a service. This
//! crate owns the build path end to end; it talks to the other roles only
//! through the store, so it can run in its own process (`--roles builder`).
//!
//! ```text
//! POST /webhooks/github ─▶ server: signature::verify (raw body, X-Hub-Signature-256)
//!   (or /webhooks/git)  ─▶ payload::parse_github / parse_generic ─▶ Push
//!                       ─▶ triggers whose Trigger::watches(clone_url, full_name)
//!                       ─▶ Trigger::matches(push): Build, or Skip(reason)
//!                       ─▶ record the build `queued`, answer 202 with its id
//! SubmitBuild (api)     ─▶ record the build `queued` (any process)
//! DeployFunction (api)  ─▶ function::write_source, record the build `queued`;
//!                          its building step is function::prepare (no image)
//! builder::Builder      ─▶ intake: queued records ─▶ queue::BuildQueue (cancel requests too)
//! pipeline::Pipeline    ─▶ fetching:    git::GitFetcher::checkout (exactly the pushed commit)
//!                       ─▶ building:    docker::ImageBuilder::build (rouse/<project>-<service>:<commit12>, :latest)
//!                       ─▶ pushing:     docker::ImageBuilder::push (when a registry is configured)
//!                       ─▶ rolling-out: a candidate revision; a dispatcher runs its
//!                                       readiness trial and records the verdict;
//!                                       ready ─▶ it serves
//! report::Recorder      ─▶ every status: the build's record; GitHub commit status
//! ```
//!
//! - [`server`]: the webhook HTTP server (axum), the one place its errors
//!   become HTTP statuses.
//! - [`signature`]: HMAC-SHA256 webhook signatures, checked in constant time
//!   before parsing; SHA-1 is refused.
//! - [`payload`]: typed GitHub `ping`/`push` and generic `{repo, ref, sha}`
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
//! - [`log`]: the build log writer; [`github`]: commit statuses through the
//!   REST API (base URL configurable for tests and GitHub Enterprise).
//! - [`glob`]: the file globs of triggers and `.dockerignore`.
//! - [`function`]: function builds (`rouse functions deploy`): the source
//!   written by hash, requirements installed once per hash into a virtual
//!   environment, the runner beside the file, a command revision.
//!
//! Everything is bounded: body sizes, changed-file lists, log lines kept,
//! stderr kept, context size, queue length, build time.

pub mod builder;
pub mod docker;
pub mod function;
pub mod git;
pub mod github;
pub mod glob;
pub mod log;
pub mod metrics;
pub mod payload;
pub mod pipeline;
pub mod queue;
mod report;
pub mod server;
pub mod signature;
pub mod trigger;

pub use builder::{Builder, BuilderConfig, BuilderError, BuilderStore, trigger_of};
pub use payload::{CommitId, GitRef, Push};
pub use pipeline::{BuildJob, BuildSource, RegistryConfig};
pub use queue::{BuildQueue, BuildStatus};
pub use trigger::{Decision, RepoKey, SkipReason, Trigger, TriggerSpec};

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
