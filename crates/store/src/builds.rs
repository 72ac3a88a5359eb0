//! The builder's state (issue 5) on SQLite: triggers, builds and their
//! logs, webhook deliveries seen, revisions made by builds and how a
//! service's revisions are routed, and sealed secrets.
//!
//! The store keeps what it is given: secrets and webhook secrets arrive
//! sealed (the key lives outside the database), statuses as the builder's
//! words. Small traits, one per consumer concern: [`TriggerStore`] and
//! [`BuildStore`] (the webhook and the pipeline), [`RolloutStore`]
//! (revisions and routing), [`TrialStore`] (the dispatcher's readiness
//! trials) and [`SecretStore`].

use std::time::SystemTime;

use async_trait::async_trait;
use rouse_core::build::{BuildStatus, RevisionState, Routing};
use rouse_core::revision::{Revision, RevisionSource};
use rouse_core::{Service, ServiceStatus};
use rusqlite::{Connection, OptionalExtension, Row, params};
use uuid::Uuid;

use crate::sqlite::{from_micros, micros};
use crate::{NewRevision, SqliteStore, StoreError};

/// Log lines of one build kept at most: a runaway build cannot fill the
/// disk. 50 000 lines is far more than any image build a person reads.
pub const MAX_BUILD_LOG_LINES: i64 = 50_000;
/// Longest log line kept (progress bars can be one long line).
pub const MAX_LOG_LINE_CHARS: usize = 4096;

/// A trigger as stored. The webhook secret and GitHub token are sealed by
/// the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerRecord {
    pub id: String,
    pub service_uuid: Uuid,
    pub repo: String,
    pub branch_pattern: String,
    pub tag_pattern: Option<String>,
    pub dockerfile: Option<String>,
    pub context_dir: Option<String>,
    pub included_files: Vec<String>,
    pub ignored_files: Vec<String>,
    pub webhook_secret_sealed: String,
    pub github_token_sealed: Option<String>,
    pub created_at: SystemTime,
}

/// One build as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildRecord {
    pub id: String,
    pub service_uuid: Uuid,
    pub trigger_id: Option<String>,
    pub status: BuildStatus,
    /// The last running status reached: where a failure happened.
    pub step: Option<BuildStatus>,
    /// The repository URL, or `dir:<path>` for a manual build.
    pub source: String,
    pub commit: Option<String>,
    pub branch: Option<String>,
    /// The revision the build made.
    pub revision: Option<String>,
    pub image: Option<String>,
    pub failure: Option<String>,
    pub last_lines: Vec<String>,
    pub created_at: SystemTime,
    pub started_at: Option<SystemTime>,
    pub finished_at: Option<SystemTime>,
    /// The Dockerfile of a directory build (a triggered build takes its
    /// trigger's).
    pub dockerfile: Option<String>,
    /// Someone asked to cancel it ([`BuildStore::request_cancel`]); the
    /// builder running or holding it stops it.
    pub cancel_requested: bool,
}

/// Where a built revision came from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BuildOrigin {
    pub commit: Option<String>,
    pub branch: Option<String>,
    pub trigger_id: Option<String>,
    pub build_id: Option<String>,
    pub image_id: Option<String>,
}

pub(crate) fn state_column(state: RevisionState) -> Option<&'static str> {
    match state {
        RevisionState::Ready => None,
        other => Some(other.as_str()),
    }
}

pub(crate) fn state_from_column(value: Option<&str>) -> Result<RevisionState, StoreError> {
    value.map_or(Ok(RevisionState::Ready), |word| {
        word.parse()
            .map_err(|_| StoreError::Corrupt(format!("revision state `{word}`")))
    })
}

/// A revision with where it came from and its rollout state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionInfo {
    pub revision: Revision,
    pub origin: BuildOrigin,
    pub state: RevisionState,
}

/// What a webhook delivery's build insert found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryClaim {
    /// First time this delivery id was seen.
    New,
    /// Seen before: nothing was recorded.
    Duplicate,
}

/// Build triggers and the webhook deliveries already seen.
#[async_trait]
pub trait TriggerStore: Send + Sync + 'static {
    /// Records a trigger. Fails with [`StoreError::Duplicate`] if its id exists.
    async fn insert_trigger(&self, trigger: &TriggerRecord) -> Result<(), StoreError>;
    async fn get_trigger(&self, id: &str) -> Result<Option<TriggerRecord>, StoreError>;
    /// Every trigger, or those of one service, oldest first.
    async fn list_triggers(
        &self,
        service_uuid: Option<Uuid>,
    ) -> Result<Vec<TriggerRecord>, StoreError>;
    async fn delete_trigger(&self, id: &str) -> Result<bool, StoreError>;
    /// Remembers a webhook delivery id; [`DeliveryClaim::Duplicate`] if it
    /// was seen before (GitHub redelivers; a replay must build once).
    async fn claim_delivery(&self, delivery_id: &str) -> Result<DeliveryClaim, StoreError>;
}

/// Builds and their logs.
#[async_trait]
pub trait BuildStore: Send + Sync + 'static {
    /// Records a new build.
    async fn insert_build(&self, build: &BuildRecord) -> Result<(), StoreError>;
    /// Replaces a build's record (status, step, revision, failure, times).
    async fn update_build(&self, build: &BuildRecord) -> Result<(), StoreError>;
    async fn get_build(&self, id: &str) -> Result<Option<BuildRecord>, StoreError>;
    /// Builds, newest first; `unfinished` keeps those not in a terminal
    /// status (what a restart finds interrupted).
    async fn list_builds(
        &self,
        service_uuid: Option<Uuid>,
        unfinished: bool,
        limit: u32,
    ) -> Result<Vec<BuildRecord>, StoreError>;
    /// Asks whoever holds the build to stop it; `false` if it is unknown or
    /// already over.
    async fn request_cancel(&self, id: &str) -> Result<bool, StoreError>;
    /// Appends log lines to a build's log (beyond [`MAX_BUILD_LOG_LINES`]
    /// they are dropped); returns the sequence number of the last line kept.
    async fn append_build_log(&self, build_id: &str, lines: Vec<String>)
    -> Result<i64, StoreError>;
    /// Log lines with a sequence number above `after`, in order, at most `limit`.
    async fn build_log_after(
        &self,
        build_id: &str,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, String)>, StoreError>;
}

/// Built revisions and routing.
#[async_trait]
pub trait RolloutStore: Send + Sync + 'static {
    /// Adds the service's next revision as a [`RevisionState::Candidate`]
    /// (it does not serve), named `<service>-<nnnnn>-<commit7>` when the
    /// origin has a commit.
    async fn insert_candidate_revision(
        &self,
        service: &Service,
        revision: &NewRevision,
        origin: &BuildOrigin,
        now: SystemTime,
    ) -> Result<Revision, StoreError>;
    async fn set_revision_state(&self, name: &str, state: RevisionState) -> Result<(), StoreError>;
    /// A revision's state and, when its trial failed, why.
    async fn trial(
        &self,
        name: &str,
    ) -> Result<Option<(RevisionState, Option<String>)>, StoreError>;
    /// The service's revisions with their origin and state, newest first.
    async fn revision_infos(&self, service_uuid: Uuid) -> Result<Vec<RevisionInfo>, StoreError>;
    async fn routing(&self, service_uuid: Uuid) -> Result<Routing, StoreError>;
    /// Replaces the routing and bumps the service's generation (so the
    /// dispatcher re-reads it), marking the service `ready`.
    async fn set_routing(&self, service_uuid: Uuid, routing: &Routing) -> Result<(), StoreError>;
}

/// The readiness trials of built revisions, run by whichever dispatcher
/// takes them: the builder records a candidate, a dispatcher claims it,
/// starts one instance and records the verdict, the builder reads it.
#[async_trait]
pub trait TrialStore: Send + Sync + 'static {
    /// Revisions waiting for a trial ([`RevisionState::Candidate`]), oldest first.
    async fn candidates(&self) -> Result<Vec<Revision>, StoreError>;
    /// Takes a candidate for a trial (`Candidate` → `Trying`); `false` if
    /// another dispatcher took it or it is no longer a candidate.
    async fn claim_trial(&self, name: &str) -> Result<bool, StoreError>;
    /// Records a claimed trial's verdict: `Passed`, or `Failed` with why.
    /// `false` if the revision was no longer `Trying` (the builder gave up).
    async fn record_trial(
        &self,
        name: &str,
        verdict: Result<(), String>,
    ) -> Result<bool, StoreError>;
}

/// Sealed per-service secrets.
#[async_trait]
pub trait SecretStore: Send + Sync + 'static {
    async fn set_secret(
        &self,
        service_uuid: Uuid,
        name: &str,
        sealed: &str,
        now: SystemTime,
    ) -> Result<(), StoreError>;
    /// Names only, sorted.
    async fn secret_names(&self, service_uuid: Uuid) -> Result<Vec<String>, StoreError>;
    async fn delete_secret(&self, service_uuid: Uuid, name: &str) -> Result<bool, StoreError>;
    /// `(name, sealed)` pairs, sorted by name.
    async fn sealed_secrets(&self, service_uuid: Uuid)
    -> Result<Vec<(String, String)>, StoreError>;
}

pub(crate) fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

pub(crate) fn json_list(v: &[String]) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

pub(crate) fn list_from(what: &str, s: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(s).map_err(|e| corrupt(what, e))
}

pub(crate) fn parse_uuid(what: &str, s: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(s).map_err(|e| corrupt(what, e))
}

pub(crate) const TRIGGER_COLUMNS: &str = "id, service_uuid, repo, branch_pattern, tag_pattern, dockerfile, \
     context_dir, included_files, ignored_files, webhook_secret, github_token, created_at_us";

fn read_trigger(row: &Row<'_>) -> rusqlite::Result<Result<TriggerRecord, StoreError>> {
    let id: String = row.get(0)?;
    let service: String = row.get(1)?;
    let repo: String = row.get(2)?;
    let branch_pattern: String = row.get(3)?;
    let tag_pattern: Option<String> = row.get(4)?;
    let dockerfile: Option<String> = row.get(5)?;
    let context_dir: Option<String> = row.get(6)?;
    let included: String = row.get(7)?;
    let ignored: String = row.get(8)?;
    let webhook_secret_sealed: String = row.get(9)?;
    let github_token_sealed: Option<String> = row.get(10)?;
    let created: i64 = row.get(11)?;
    Ok((|| {
        Ok(TriggerRecord {
            service_uuid: parse_uuid("trigger service", &service)?,
            included_files: list_from("trigger included files", &included)?,
            ignored_files: list_from("trigger ignored files", &ignored)?,
            id,
            repo,
            branch_pattern,
            tag_pattern,
            dockerfile,
            context_dir,
            webhook_secret_sealed,
            github_token_sealed,
            created_at: from_micros(created),
        })
    })())
}

pub(crate) const BUILD_COLUMNS: &str = "id, service_uuid, trigger_id, status, step, source, commit_sha, branch, \
     revision, image, failure, last_lines, created_at_us, started_at_us, finished_at_us, dockerfile, \
     cancel_requested";

fn read_build(row: &Row<'_>) -> rusqlite::Result<Result<BuildRecord, StoreError>> {
    let id: String = row.get(0)?;
    let service: String = row.get(1)?;
    let status: String = row.get(3)?;
    let step: Option<String> = row.get(4)?;
    let last_lines: String = row.get(11)?;
    let started: Option<i64> = row.get(13)?;
    let finished: Option<i64> = row.get(14)?;
    let record = BuildRecord {
        id,
        service_uuid: Uuid::nil(),
        trigger_id: row.get(2)?,
        status: BuildStatus::Queued,
        step: None,
        source: row.get(5)?,
        commit: row.get(6)?,
        branch: row.get(7)?,
        revision: row.get(8)?,
        image: row.get(9)?,
        failure: row.get(10)?,
        last_lines: Vec::new(),
        created_at: from_micros(row.get(12)?),
        started_at: started.map(from_micros),
        finished_at: finished.map(from_micros),
        dockerfile: row.get(15)?,
        cancel_requested: row.get(16)?,
    };
    Ok((|| {
        Ok(BuildRecord {
            service_uuid: parse_uuid("build service", &service)?,
            status: build_status(&status)?,
            step: step.as_deref().map(build_status).transpose()?,
            last_lines: list_from("build last lines", &last_lines)?,
            ..record
        })
    })())
}

pub(crate) fn build_status(word: &str) -> Result<BuildStatus, StoreError> {
    word.parse()
        .map_err(|_| StoreError::Corrupt(format!("build status `{word}`")))
}

fn collect<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    read: fn(&Row<'_>) -> rusqlite::Result<Result<T, StoreError>>,
) -> Result<Vec<T>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(params, read)?;
    rows.map(|r| r.map_err(StoreError::from).and_then(|x| x))
        .collect()
}

fn service_exists(conn: &Connection, uuid: Uuid) -> Result<(), StoreError> {
    let exists: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM services WHERE uuid = ?1)",
        [uuid.to_string()],
        |r| r.get(0),
    )?;
    if exists {
        Ok(())
    } else {
        Err(StoreError::NotFound { uuid })
    }
}

/// The statuses after which a build does not change.
pub(crate) const TERMINAL_STATUSES: &str = "('succeeded', 'failed', 'cancelled', 'superseded')";

#[async_trait]
impl TriggerStore for SqliteStore {
    async fn insert_trigger(&self, t: &TriggerRecord) -> Result<(), StoreError> {
        let t = t.clone();
        self.write(move |conn| {
            service_exists(conn, t.service_uuid)?;
            let n = conn.execute(
                &format!(
                    "INSERT OR IGNORE INTO triggers ({TRIGGER_COLUMNS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
                ),
                params![
                    t.id,
                    t.service_uuid.to_string(),
                    t.repo,
                    t.branch_pattern,
                    t.tag_pattern,
                    t.dockerfile,
                    t.context_dir,
                    json_list(&t.included_files),
                    json_list(&t.ignored_files),
                    t.webhook_secret_sealed,
                    t.github_token_sealed,
                    micros(t.created_at),
                ],
            )?;
            if n == 0 {
                return Err(StoreError::Duplicate {
                    what: "trigger",
                    name: t.id,
                });
            }
            Ok(())
        })
        .await
    }

    async fn get_trigger(&self, id: &str) -> Result<Option<TriggerRecord>, StoreError> {
        let id = id.to_owned();
        self.with(move |conn| {
            conn.query_row(
                &format!("SELECT {TRIGGER_COLUMNS} FROM triggers WHERE id = ?1"),
                [id],
                read_trigger,
            )
            .optional()?
            .transpose()
        })
        .await
    }

    async fn list_triggers(
        &self,
        service_uuid: Option<Uuid>,
    ) -> Result<Vec<TriggerRecord>, StoreError> {
        self.with(move |conn| {
            collect(
                conn,
                &format!(
                    "SELECT {TRIGGER_COLUMNS} FROM triggers \
                     WHERE ?1 IS NULL OR service_uuid = ?1 ORDER BY created_at_us, id"
                ),
                [service_uuid.map(|u| u.to_string())],
                read_trigger,
            )
        })
        .await
    }

    async fn delete_trigger(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.write(move |conn| Ok(conn.execute("DELETE FROM triggers WHERE id = ?1", [id])? == 1))
            .await
    }

    async fn claim_delivery(&self, delivery_id: &str) -> Result<DeliveryClaim, StoreError> {
        let id = delivery_id.to_owned();
        self.write(move |conn| {
            let n = conn.execute(
                "INSERT OR IGNORE INTO webhook_deliveries (delivery_id, received_at_us) VALUES (?1, ?2)",
                params![id, micros(SystemTime::now())],
            )?;
            Ok(if n == 1 {
                DeliveryClaim::New
            } else {
                DeliveryClaim::Duplicate
            })
        })
        .await
    }
}

#[async_trait]
impl BuildStore for SqliteStore {
    async fn insert_build(&self, b: &BuildRecord) -> Result<(), StoreError> {
        let b = b.clone();
        self.write(move |conn| {
            service_exists(conn, b.service_uuid)?;
            conn.execute(
                &format!(
                    "INSERT INTO builds ({BUILD_COLUMNS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"
                ),
                params![
                    b.id,
                    b.service_uuid.to_string(),
                    b.trigger_id,
                    b.status.as_str(),
                    b.step.map(BuildStatus::as_str),
                    b.source,
                    b.commit,
                    b.branch,
                    b.revision,
                    b.image,
                    b.failure,
                    json_list(&b.last_lines),
                    micros(b.created_at),
                    b.started_at.map(micros),
                    b.finished_at.map(micros),
                    b.dockerfile,
                    b.cancel_requested,
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn update_build(&self, b: &BuildRecord) -> Result<(), StoreError> {
        let b = b.clone();
        self.write(move |conn| {
            conn.execute(
                "UPDATE builds SET status = ?2, step = ?3, revision = ?4, image = ?5, failure = ?6, \
                 last_lines = ?7, started_at_us = ?8, finished_at_us = ?9 WHERE id = ?1",
                params![
                    b.id,
                    b.status.as_str(),
                    b.step.map(BuildStatus::as_str),
                    b.revision,
                    b.image,
                    b.failure,
                    json_list(&b.last_lines),
                    b.started_at.map(micros),
                    b.finished_at.map(micros),
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn get_build(&self, id: &str) -> Result<Option<BuildRecord>, StoreError> {
        let id = id.to_owned();
        self.with(move |conn| {
            conn.query_row(
                &format!("SELECT {BUILD_COLUMNS} FROM builds WHERE id = ?1"),
                [id],
                read_build,
            )
            .optional()?
            .transpose()
        })
        .await
    }

    async fn list_builds(
        &self,
        service_uuid: Option<Uuid>,
        unfinished: bool,
        limit: u32,
    ) -> Result<Vec<BuildRecord>, StoreError> {
        self.with(move |conn| {
            collect(
                conn,
                &format!(
                    "SELECT {BUILD_COLUMNS} FROM builds \
                     WHERE (?1 IS NULL OR service_uuid = ?1) \
                     AND (?2 = 0 OR status NOT IN {TERMINAL_STATUSES}) \
                     ORDER BY created_at_us DESC, id LIMIT ?3"
                ),
                params![service_uuid.map(|u| u.to_string()), unfinished, limit],
                read_build,
            )
        })
        .await
    }

    async fn request_cancel(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.write(move |conn| {
            let n = conn.execute(
                &format!(
                    "UPDATE builds SET cancel_requested = 1 WHERE id = ?1 AND status NOT IN {TERMINAL_STATUSES}"
                ),
                [id],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn append_build_log(
        &self,
        build_id: &str,
        lines: Vec<String>,
    ) -> Result<i64, StoreError> {
        let id = build_id.to_owned();
        self.write(move |conn| {
            let mut last: i64 = conn.query_row(
                "SELECT COALESCE(MAX(seq), 0) FROM build_logs WHERE build_id = ?1",
                [&id],
                |r| r.get(0),
            )?;
            let mut stmt = conn.prepare_cached(
                "INSERT INTO build_logs (build_id, seq, line) VALUES (?1, ?2, ?3)",
            )?;
            for line in lines {
                if last >= MAX_BUILD_LOG_LINES {
                    break;
                }
                last += 1;
                let line: String = line.chars().take(MAX_LOG_LINE_CHARS).collect();
                stmt.execute(params![id, last, line])?;
            }
            Ok(last)
        })
        .await
    }

    async fn build_log_after(
        &self,
        build_id: &str,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        let id = build_id.to_owned();
        self.with(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, line FROM build_logs WHERE build_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![id, after, limit], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.map(|r| r.map_err(StoreError::from)).collect()
        })
        .await
    }
}

pub(crate) const INFO_COLUMNS: &str = "commit_sha, branch, trigger_id, build_id, image_id, state";

fn read_info(row: &Row<'_>) -> rusqlite::Result<Result<RevisionInfo, StoreError>> {
    let revision = crate::dispatch::read_revision(row)?;
    let origin = BuildOrigin {
        commit: row.get(12)?,
        branch: row.get(13)?,
        trigger_id: row.get(14)?,
        build_id: row.get(15)?,
        image_id: row.get(16)?,
    };
    let state: Option<String> = row.get(17)?;
    Ok((|| {
        Ok(RevisionInfo {
            revision: revision?,
            origin,
            state: state_from_column(state.as_deref())?,
        })
    })())
}

fn read_routing(conn: &Connection, uuid: Uuid) -> Result<Routing, StoreError> {
    let row: Option<(Option<String>, String, String)> = conn
        .query_row(
            "SELECT serving, tags, traffic FROM routing WHERE service_uuid = ?1",
            [uuid.to_string()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((serving, tags, traffic)) = row else {
        return Ok(Routing::default());
    };
    Ok(Routing {
        serving,
        tags: serde_json::from_str(&tags).map_err(|e| corrupt("routing tags", e))?,
        traffic: serde_json::from_str(&traffic).map_err(|e| corrupt("routing traffic", e))?,
    })
}

/// Writes `routing` for `uuid` (inside the caller's transaction).
pub(crate) fn write_routing(
    conn: &Connection,
    uuid: Uuid,
    routing: &Routing,
) -> Result<(), StoreError> {
    let tags = serde_json::to_string(&routing.tags).map_err(|e| corrupt("routing tags", e))?;
    let traffic =
        serde_json::to_string(&routing.traffic).map_err(|e| corrupt("routing traffic", e))?;
    conn.execute(
        "INSERT INTO routing (service_uuid, serving, tags, traffic) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (service_uuid) DO UPDATE SET serving = excluded.serving, tags = excluded.tags, \
         traffic = excluded.traffic",
        params![uuid.to_string(), routing.serving, tags, traffic],
    )?;
    Ok(())
}

/// Bumps the service's generation so that the dispatcher re-reads it.
pub(crate) fn touch_service(
    conn: &Connection,
    uuid: Uuid,
    now: SystemTime,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE services SET status = ?2, generation = generation + 1, updated_at_us = ?3 WHERE uuid = ?1",
        params![uuid.to_string(), ServiceStatus::Ready.as_str(), micros(now)],
    )?;
    Ok(())
}

/// The next revision sequence number of a service.
pub(crate) fn next_seq(conn: &Connection, uuid: Uuid) -> Result<u32, StoreError> {
    let last: Option<i64> = conn.query_row(
        "SELECT MAX(seq) FROM revisions WHERE service_uuid = ?1",
        [uuid.to_string()],
        |r| r.get(0),
    )?;
    u32::try_from(last.unwrap_or(0) + 1).map_err(|e| corrupt("revision seq", e))
}

/// A built revision's name: `<service>-<nnnnn>-<commit7>` when the origin
/// has a commit.
pub(crate) fn candidate_name(service_name: &str, seq: u32, origin: &BuildOrigin) -> String {
    let base = Revision::name_for(service_name, seq);
    match origin.commit.as_deref() {
        Some(c) if c.len() >= 7 => format!("{base}-{}", &c[..7]),
        _ => base,
    }
}

/// The `image`, `program`, `args` and `workdir` columns of a revision.
pub(crate) fn source_columns(
    source: &RevisionSource,
) -> (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
) {
    match source {
        RevisionSource::Image(image) => (Some(image.clone()), None, None, None),
        RevisionSource::Command {
            program,
            args,
            workdir,
        } => (
            None,
            Some(program.clone()),
            Some(serde_json::to_string(args).unwrap_or_else(|_| "[]".into())),
            Some(workdir.display().to_string()),
        ),
    }
}

#[async_trait]
impl RolloutStore for SqliteStore {
    async fn insert_candidate_revision(
        &self,
        service: &Service,
        revision: &NewRevision,
        origin: &BuildOrigin,
        now: SystemTime,
    ) -> Result<Revision, StoreError> {
        let (uuid, service_name) = (service.uuid, service.name.to_string());
        let (new, origin) = (revision.clone(), origin.clone());
        self.write(move |conn| {
            service_exists(conn, uuid)?;
            let seq = next_seq(conn, uuid)?;
            let name = candidate_name(&service_name, seq, &origin);
            let (image, program, args, workdir) = source_columns(&new.source);
            conn.execute(
                "INSERT INTO revisions (name, service_uuid, seq, runtime, image, program, args, workdir, \
                 mode, probe_path, created_at_us, commit_sha, branch, trigger_id, build_id, image_id, state, http2) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, 'candidate', ?17)",
                params![
                    name,
                    uuid.to_string(),
                    seq,
                    new.source.runtime(),
                    image,
                    program,
                    args,
                    workdir,
                    new.mode.as_str(),
                    new.probe_path,
                    micros(now),
                    origin.commit,
                    origin.branch,
                    origin.trigger_id,
                    origin.build_id,
                    origin.image_id,
                    new.http2,
                ],
            )?;
            Ok(Revision {
                name,
                service_uuid: uuid,
                seq,
                source: new.source,
                mode: new.mode,
                probe_path: new.probe_path,
                http2: new.http2,
                created_at: from_micros(micros(now)),
            })
        })
        .await
    }

    async fn set_revision_state(&self, name: &str, state: RevisionState) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.write(move |conn| {
            conn.execute(
                "UPDATE revisions SET state = ?2 WHERE name = ?1",
                params![name, state_column(state)],
            )?;
            Ok(())
        })
        .await
    }

    async fn trial(
        &self,
        name: &str,
    ) -> Result<Option<(RevisionState, Option<String>)>, StoreError> {
        let name = name.to_owned();
        self.with(move |conn| {
            let row: Option<(Option<String>, Option<String>)> = conn
                .query_row(
                    "SELECT state, trial_failure FROM revisions WHERE name = ?1",
                    [name],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            row.map(|(state, why)| Ok((state_from_column(state.as_deref())?, why)))
                .transpose()
        })
        .await
    }

    async fn revision_infos(&self, service_uuid: Uuid) -> Result<Vec<RevisionInfo>, StoreError> {
        self.with(move |conn| {
            collect(
                conn,
                &format!(
                    "SELECT {}, {INFO_COLUMNS} FROM revisions WHERE service_uuid = ?1 ORDER BY seq DESC",
                    crate::dispatch::REVISION_COLUMNS
                ),
                [service_uuid.to_string()],
                read_info,
            )
        })
        .await
    }

    async fn routing(&self, service_uuid: Uuid) -> Result<Routing, StoreError> {
        self.with(move |conn| read_routing(conn, service_uuid))
            .await
    }

    async fn set_routing(&self, service_uuid: Uuid, routing: &Routing) -> Result<(), StoreError> {
        let routing = routing.clone();
        self.write(move |conn| {
            service_exists(conn, service_uuid)?;
            write_routing(conn, service_uuid, &routing)?;
            touch_service(conn, service_uuid, SystemTime::now())
        })
        .await
    }
}

#[async_trait]
impl TrialStore for SqliteStore {
    async fn candidates(&self) -> Result<Vec<Revision>, StoreError> {
        self.with(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {} FROM revisions WHERE state = 'candidate' ORDER BY created_at_us, name",
                crate::dispatch::REVISION_COLUMNS
            ))?;
            let rows = stmt.query_map([], crate::dispatch::read_revision)?;
            rows.map(|r| r.map_err(StoreError::from).and_then(|x| x))
                .collect()
        })
        .await
    }

    async fn claim_trial(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.write(move |conn| {
            let n = conn.execute(
                "UPDATE revisions SET state = 'trying' WHERE name = ?1 AND state = 'candidate'",
                [name],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn record_trial(
        &self,
        name: &str,
        verdict: Result<(), String>,
    ) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.write(move |conn| {
            let (state, why) = match verdict {
                Ok(()) => (state_column(RevisionState::Passed), None),
                Err(why) => (state_column(RevisionState::Failed), Some(why)),
            };
            let n = conn.execute(
                "UPDATE revisions SET state = ?2, trial_failure = ?3 WHERE name = ?1 AND state = 'trying'",
                params![name, state, why],
            )?;
            Ok(n == 1)
        })
        .await
    }
}

#[async_trait]
impl SecretStore for SqliteStore {
    async fn set_secret(
        &self,
        service_uuid: Uuid,
        name: &str,
        sealed: &str,
        now: SystemTime,
    ) -> Result<(), StoreError> {
        let (name, sealed) = (name.to_owned(), sealed.to_owned());
        self.write(move |conn| {
            service_exists(conn, service_uuid)?;
            conn.execute(
                "INSERT INTO secrets (service_uuid, name, sealed, updated_at_us) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (service_uuid, name) DO UPDATE SET sealed = excluded.sealed, \
                 updated_at_us = excluded.updated_at_us",
                params![service_uuid.to_string(), name, sealed, micros(now)],
            )?;
            // Instances started from now on get the new value.
            touch_service(conn, service_uuid, now)
        })
        .await
    }

    async fn secret_names(&self, service_uuid: Uuid) -> Result<Vec<String>, StoreError> {
        self.with(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT name FROM secrets WHERE service_uuid = ?1 ORDER BY name")?;
            let rows = stmt.query_map([service_uuid.to_string()], |r| r.get(0))?;
            rows.map(|r| r.map_err(StoreError::from)).collect()
        })
        .await
    }

    async fn delete_secret(&self, service_uuid: Uuid, name: &str) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.write(move |conn| {
            let n = conn.execute(
                "DELETE FROM secrets WHERE service_uuid = ?1 AND name = ?2",
                params![service_uuid.to_string(), name],
            )?;
            if n == 1 {
                touch_service(conn, service_uuid, SystemTime::now())?;
            }
            Ok(n == 1)
        })
        .await
    }

    async fn sealed_secrets(
        &self,
        service_uuid: Uuid,
    ) -> Result<Vec<(String, String)>, StoreError> {
        self.with(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT name, sealed FROM secrets WHERE service_uuid = ?1 ORDER BY name",
            )?;
            let rows =
                stmt.query_map([service_uuid.to_string()], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.map(|r| r.map_err(StoreError::from)).collect()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;
    use rouse_core::{ProjectName, ServiceName};

    fn service(name: &str) -> Service {
        let p = ProjectName::parse("p").expect("valid project");
        let n = ServiceName::parse(&p, name).expect("valid name");
        Service::new(p, n, Uuid::new_v4(), SystemTime::now())
    }

    fn build(id: &str, service: Uuid) -> BuildRecord {
        BuildRecord {
            id: id.into(),
            service_uuid: service,
            trigger_id: Some("t1".into()),
            status: BuildStatus::Queued,
            step: None,
            source: "file:///repo".into(),
            commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
            branch: Some("main".into()),
            revision: None,
            image: None,
            failure: None,
            last_lines: Vec::new(),
            created_at: SystemTime::now(),
            started_at: None,
            finished_at: None,
            dockerfile: None,
            cancel_requested: false,
        }
    }

    #[test]
    fn the_sql_terminal_set_is_the_terminal_statuses() {
        let words: Vec<String> = BuildStatus::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .map(|s| format!("'{s}'"))
            .collect();
        assert_eq!(TERMINAL_STATUSES, format!("({})", words.join(", ")));
    }

    #[tokio::test]
    async fn an_unknown_status_word_reads_as_corrupt_not_as_a_status() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("rouse.db")).expect("open");
        let s = service("svc");
        store.insert_service(&s).await.expect("insert");
        store
            .insert_build(&build("b1", s.uuid))
            .await
            .expect("build");
        store
            .write(|conn| {
                conn.execute("UPDATE builds SET status = 'exploded' WHERE id = 'b1'", [])?;
                Ok(())
            })
            .await
            .expect("corrupt it");
        let err = store.get_build("b1").await.expect_err("unknown word");
        assert!(err.to_string().contains("build status `exploded`"), "{err}");
    }
}
