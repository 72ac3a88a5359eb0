//! The embedded store: one SQLite file in WAL mode.
//!
//! Writes go to one writer thread that commits them in groups: it takes every
//! write waiting for it (up to [`MAX_GROUP`]), runs each inside its own
//! savepoint of one transaction, and commits once. Every caller still gets its
//! own result, and only after the commit (one fsync) made it durable, so
//! "recorded before acknowledged" holds while a burst of questions costs one
//! fsync per group instead of several per question. Reads use a second
//! connection (WAL lets it read while the writer writes), from `spawn_blocking`.
//! Schema changes are migrations numbered by `PRAGMA user_version`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rouse_core::{
    EnvVars, IngressPolicy, ProjectName, Scaling, Service, ServiceName, ServiceStatus,
};
use rusqlite::{Connection, OptionalExtension, Row, params};
use uuid::Uuid;

use crate::{Store, StoreError};

/// Schema migrations, applied in order; the index + 1 is the schema version.
/// Never edit one that has shipped: add another.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE projects (
    name          TEXT PRIMARY KEY,
    namespace     TEXT NOT NULL UNIQUE,
    created_at_us INTEGER NOT NULL
);
CREATE TABLE services (
    uuid               TEXT PRIMARY KEY,
    project            TEXT NOT NULL REFERENCES projects(name),
    name               TEXT NOT NULL,
    status             TEXT NOT NULL,
    min_instances      INTEGER NOT NULL,
    max_instances      INTEGER NOT NULL,
    concurrency        INTEGER NOT NULL,
    idle_timeout_ms    INTEGER NOT NULL,
    wake_timeout_ms    INTEGER NOT NULL,
    request_timeout_ms INTEGER NOT NULL,
    env                TEXT NOT NULL,
    generation         INTEGER NOT NULL,
    created_at_us      INTEGER NOT NULL,
    updated_at_us      INTEGER NOT NULL,
    UNIQUE (project, name)
);
"#,
    r#"
CREATE TABLE revisions (
    name          TEXT PRIMARY KEY,
    service_uuid  TEXT NOT NULL REFERENCES services(uuid) ON DELETE CASCADE,
    seq           INTEGER NOT NULL,
    runtime       TEXT NOT NULL,
    image         TEXT,
    program       TEXT,
    args          TEXT,
    workdir       TEXT,
    mode          TEXT NOT NULL,
    probe_path    TEXT,
    created_at_us INTEGER NOT NULL,
    UNIQUE (service_uuid, seq)
);
CREATE TABLE executions (
    question_uuid    TEXT NOT NULL,
    retry_count      INTEGER NOT NULL,
    service_uuid     TEXT NOT NULL,
    status           TEXT NOT NULL,
    revision         TEXT,
    instance         TEXT,
    cold_start       INTEGER,
    reason           TEXT,
    attributes       TEXT NOT NULL,
    data             BLOB NOT NULL,
    received_at_us   INTEGER NOT NULL,
    ready_at_us      INTEGER,
    delivered_at_us  INTEGER,
    finished_at_us   INTEGER,
    PRIMARY KEY (question_uuid, retry_count)
);
CREATE INDEX executions_unfinished ON executions (status) WHERE status IN ('queued', 'waking', 'running');
CREATE INDEX executions_by_service ON executions (service_uuid, received_at_us);
CREATE TABLE events (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    event_uuid     TEXT NOT NULL UNIQUE,
    question_uuid  TEXT NOT NULL,
    retry_count    INTEGER,
    kind           TEXT NOT NULL,
    attributes     TEXT NOT NULL,
    data           BLOB NOT NULL,
    published      INTEGER NOT NULL,
    recorded_at_us INTEGER NOT NULL
);
CREATE INDEX events_by_question ON events (question_uuid, id);
CREATE INDEX events_unpublished ON events (published) WHERE published = 0;
CREATE TABLE dead_letters (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    source         TEXT NOT NULL,
    reason         TEXT NOT NULL,
    attributes     TEXT NOT NULL,
    data           BLOB NOT NULL,
    recorded_at_us INTEGER NOT NULL
);
"#,
    r#"
CREATE TABLE policies (
    resource      TEXT PRIMARY KEY,
    document      TEXT NOT NULL,
    etag          TEXT NOT NULL,
    updated_at_us INTEGER NOT NULL
);
CREATE TABLE service_accounts (
    email         TEXT PRIMARY KEY,
    project       TEXT NOT NULL,
    display_name  TEXT NOT NULL,
    description   TEXT NOT NULL,
    disabled      INTEGER NOT NULL,
    created_at_us INTEGER NOT NULL
);
CREATE TABLE principal_keys (
    key_id        TEXT PRIMARY KEY,
    principal     TEXT NOT NULL,
    public_key    TEXT NOT NULL,
    created_at_us INTEGER NOT NULL
);
CREATE INDEX principal_keys_by_principal ON principal_keys (principal);
CREATE TABLE custom_roles (
    name          TEXT PRIMARY KEY,
    document      TEXT NOT NULL,
    updated_at_us INTEGER NOT NULL
);
CREATE TABLE project_settings (
    project                TEXT PRIMARY KEY,
    trust_sender_attribute INTEGER NOT NULL
);
CREATE TABLE audit (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at_us      INTEGER NOT NULL,
    principal  TEXT NOT NULL,
    action     TEXT NOT NULL,
    resource   TEXT NOT NULL,
    permission TEXT NOT NULL,
    decision   TEXT NOT NULL,
    detail     TEXT NOT NULL
);
CREATE INDEX audit_by_time ON audit (at_us);
"#,
    // One counter that every change to what the permission checks read
    // bumps, so checkers in this or another process see a change by reading
    // one row instead of reloading everything.
    r#"
CREATE TABLE iam_version (version INTEGER NOT NULL);
INSERT INTO iam_version (version) VALUES (1);
CREATE TRIGGER policies_insert_bumps_iam AFTER INSERT ON policies BEGIN UPDATE iam_version SET version = version + 1; END;
CREATE TRIGGER policies_update_bumps_iam AFTER UPDATE ON policies BEGIN UPDATE iam_version SET version = version + 1; END;
CREATE TRIGGER policies_delete_bumps_iam AFTER DELETE ON policies BEGIN UPDATE iam_version SET version = version + 1; END;
CREATE TRIGGER service_accounts_insert_bumps_iam AFTER INSERT ON service_accounts BEGIN UPDATE iam_version SET version = version + 1; END;
CREATE TRIGGER service_accounts_update_bumps_iam AFTER UPDATE ON service_accounts BEGIN UPDATE iam_version SET version = version + 1; END;
CREATE TRIGGER service_accounts_delete_bumps_iam AFTER DELETE ON service_accounts BEGIN UPDATE iam_version SET version = version + 1; END;
CREATE TRIGGER principal_keys_insert_bumps_iam AFTER INSERT ON principal_keys BEGIN UPDATE iam_version SET version = version + 1; END;
CREATE TRIGGER principal_keys_update_bumps_iam AFTER UPDATE ON principal_keys BEGIN UPDATE iam_version SET version = version + 1; END;
CREATE TRIGGER principal_keys_delete_bumps_iam AFTER DELETE ON principal_keys BEGIN UPDATE iam_version SET version = version + 1; END;
CREATE TRIGGER custom_roles_insert_bumps_iam AFTER INSERT ON custom_roles BEGIN UPDATE iam_version SET version = version + 1; END;
CREATE TRIGGER custom_roles_update_bumps_iam AFTER UPDATE ON custom_roles BEGIN UPDATE iam_version SET version = version + 1; END;
CREATE TRIGGER custom_roles_delete_bumps_iam AFTER DELETE ON custom_roles BEGIN UPDATE iam_version SET version = version + 1; END;
CREATE TRIGGER project_settings_insert_bumps_iam AFTER INSERT ON project_settings BEGIN UPDATE iam_version SET version = version + 1; END;
CREATE TRIGGER project_settings_update_bumps_iam AFTER UPDATE ON project_settings BEGIN UPDATE iam_version SET version = version + 1; END;
CREATE TRIGGER project_settings_delete_bumps_iam AFTER DELETE ON project_settings BEGIN UPDATE iam_version SET version = version + 1; END;
"#,
    // The builder (issue 5): where built revisions came from and whether
    // they passed their rollout, which revision serves (and under which
    // tags, with which traffic split), triggers, builds and their logs,
    // webhook deliveries seen, and sealed secrets.
    r#"
ALTER TABLE revisions ADD COLUMN commit_sha TEXT;
ALTER TABLE revisions ADD COLUMN branch TEXT;
ALTER TABLE revisions ADD COLUMN trigger_id TEXT;
ALTER TABLE revisions ADD COLUMN build_id TEXT;
ALTER TABLE revisions ADD COLUMN image_id TEXT;
ALTER TABLE revisions ADD COLUMN state TEXT;
CREATE TABLE routing (
    service_uuid TEXT PRIMARY KEY REFERENCES services(uuid) ON DELETE CASCADE,
    serving      TEXT,
    tags         TEXT NOT NULL,
    traffic      TEXT NOT NULL
);
CREATE TABLE triggers (
    id             TEXT PRIMARY KEY,
    service_uuid   TEXT NOT NULL REFERENCES services(uuid) ON DELETE CASCADE,
    repo           TEXT NOT NULL,
    branch_pattern TEXT NOT NULL,
    tag_pattern    TEXT,
    dockerfile     TEXT,
    context_dir    TEXT,
    included_files TEXT NOT NULL,
    ignored_files  TEXT NOT NULL,
    webhook_secret TEXT NOT NULL,
    github_token   TEXT,
    created_at_us  INTEGER NOT NULL
);
CREATE INDEX triggers_by_service ON triggers (service_uuid);
CREATE TABLE builds (
    id             TEXT PRIMARY KEY,
    service_uuid   TEXT NOT NULL REFERENCES services(uuid) ON DELETE CASCADE,
    trigger_id     TEXT,
    status         TEXT NOT NULL,
    step           TEXT,
    source         TEXT NOT NULL,
    commit_sha     TEXT,
    branch         TEXT,
    revision       TEXT,
    image          TEXT,
    failure        TEXT,
    last_lines     TEXT NOT NULL,
    created_at_us  INTEGER NOT NULL,
    started_at_us  INTEGER,
    finished_at_us INTEGER
);
CREATE INDEX builds_by_service ON builds (service_uuid, created_at_us);
CREATE TABLE build_logs (
    build_id TEXT NOT NULL REFERENCES builds(id) ON DELETE CASCADE,
    seq      INTEGER NOT NULL,
    line     TEXT NOT NULL,
    PRIMARY KEY (build_id, seq)
);
CREATE TABLE webhook_deliveries (
    delivery_id    TEXT PRIMARY KEY,
    received_at_us INTEGER NOT NULL
);
CREATE TABLE secrets (
    service_uuid  TEXT NOT NULL REFERENCES services(uuid) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    sealed        TEXT NOT NULL,
    updated_at_us INTEGER NOT NULL,
    PRIMARY KEY (service_uuid, name)
);
"#,
    // Groups (`group:NAME` members of policies) and who is in them.
    r#"
CREATE TABLE iam_groups (
    name          TEXT PRIMARY KEY,
    description   TEXT NOT NULL,
    created_at_us INTEGER NOT NULL
);
CREATE TABLE iam_group_members (
    group_name  TEXT NOT NULL REFERENCES iam_groups(name) ON DELETE CASCADE,
    member      TEXT NOT NULL,
    added_at_us INTEGER NOT NULL,
    PRIMARY KEY (group_name, member)
);
CREATE TRIGGER iam_groups_insert_bumps_iam AFTER INSERT ON iam_groups BEGIN UPDATE iam_version SET version = version + 1; END;
CREATE TRIGGER iam_groups_delete_bumps_iam AFTER DELETE ON iam_groups BEGIN UPDATE iam_version SET version = version + 1; END;
CREATE TRIGGER iam_group_members_insert_bumps_iam AFTER INSERT ON iam_group_members BEGIN UPDATE iam_version SET version = version + 1; END;
CREATE TRIGGER iam_group_members_delete_bumps_iam AFTER DELETE ON iam_group_members BEGIN UPDATE iam_version SET version = version + 1; END;
"#,
    // Roles that run apart: a build submitted through the api is taken by
    // the builder from the store (a directory build keeps its Dockerfile),
    // a cancel is a request the builder sees, and a built revision's
    // readiness trial is run by a dispatcher, which records why it failed.
    r#"
ALTER TABLE builds ADD COLUMN dockerfile TEXT;
ALTER TABLE builds ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
ALTER TABLE revisions ADD COLUMN trial_failure TEXT;
CREATE INDEX revisions_by_state ON revisions (state) WHERE state IS NOT NULL;
"#,
    // Who asked each question (the principal the dispatcher identified),
    // so that an asker can read its own execution; NULL: anonymous, or
    // asked before this column existed.
    r#"
ALTER TABLE executions ADD COLUMN asked_by TEXT;
"#,
    // Leases: the active dispatcher among several on one store.
    r#"
CREATE TABLE leases (
    name          TEXT PRIMARY KEY,
    holder        TEXT NOT NULL,
    expires_at_us INTEGER NOT NULL
);
"#,
    // Which dispatcher runs each execution (several dispatchers share the
    // services, each holding the leases of its own): the fence every
    // update of an execution checks.
    r#"
ALTER TABLE executions ADD COLUMN dispatcher TEXT;
"#,
    // Nodes: Docker engines instances may be placed on.
    r#"
CREATE TABLE nodes (
    name          TEXT PRIMARY KEY,
    docker_host   TEXT NOT NULL,
    capacity      INTEGER NOT NULL,
    labels        TEXT NOT NULL,
    draining      INTEGER NOT NULL DEFAULT 0,
    created_at_us INTEGER NOT NULL
);
"#,
    // A service's node selector: labels a node must carry.
    r#"
ALTER TABLE services ADD COLUMN node_selector TEXT NOT NULL DEFAULT '{}';
"#,
    // Where a service's HTTP requests may come from: `all` or `internal`.
    r#"
ALTER TABLE services ADD COLUMN ingress TEXT NOT NULL DEFAULT 'all';
ALTER TABLE revisions ADD COLUMN http2 INTEGER NOT NULL DEFAULT 0;
"#,
    // Idle instances frozen rather than stopped, and for how long.
    r#"
ALTER TABLE services ADD COLUMN freeze_idle INTEGER NOT NULL DEFAULT 0;
ALTER TABLE services ADD COLUMN frozen_timeout_ms INTEGER NOT NULL DEFAULT 900000;
"#,
    // Questions run again after the platform failed them, and where they go
    // after the last attempt.
    r#"
ALTER TABLE services ADD COLUMN max_retries INTEGER NOT NULL DEFAULT 0;
ALTER TABLE services ADD COLUMN dead_letter_topic TEXT;
"#,
];

/// How long a statement waits for a lock held by another process (another
/// `rouse` on the same file) before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Most writes committed together. 512: enough to absorb a burst, small
/// enough that one group's transaction stays well under a millisecond of work.
const MAX_GROUP: usize = 512;

/// What the writer calls once the group's commit is known.
type Completion = Box<dyn FnOnce(Result<(), String>) + Send>;
/// One write: run inside the group's transaction (`None`: the group could not
/// begin), giving what to call after the commit.
type Job = Box<dyn FnOnce(Option<&Connection>) -> Completion + Send>;

#[derive(Clone)]
pub struct SqliteStore {
    reader: Arc<Mutex<Connection>>,
    writer: std::sync::mpsc::Sender<Job>,
    path: PathBuf,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path` and migrates it.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = |source: Box<dyn std::error::Error + Send + Sync>| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| open_err(e.into()))?;
        }
        let mut conn = Connection::open(path).map_err(|e| open_err(e.into()))?;
        configure(&mut conn).map_err(|e| open_err(e.into()))?;
        migrate(&mut conn).map_err(|e| open_err(e.into()))?;
        let mut reader = Connection::open(path).map_err(|e| open_err(e.into()))?;
        configure(&mut reader).map_err(|e| open_err(e.into()))?;
        let (writer, jobs) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("rouse-store-writer".into())
            .spawn(move || write_groups(conn, jobs))
            .map_err(|e| open_err(e.into()))?;
        Ok(Self {
            reader: Arc::new(Mutex::new(reader)),
            writer,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs the write `f` in the writer's next group; returns once it is
    /// committed. A failing `f` rolls back only its own savepoint.
    pub(crate) async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |conn: Option<&Connection>| -> Completion {
            let outcome = match conn {
                None => Err(StoreError::Task(
                    "the store could not begin a transaction".into(),
                )),
                Some(c) => in_savepoint(c, f),
            };
            Box::new(move |commit: Result<(), String>| {
                let out = match (outcome, commit) {
                    (Ok(v), Ok(())) => Ok(v),
                    (Ok(_), Err(e)) => Err(StoreError::Task(format!("commit failed: {e}"))),
                    (Err(e), _) => Err(e),
                };
                let _ = done.send(out);
            })
        });
        self.writer
            .send(job)
            .map_err(|_| StoreError::Task("the store writer has stopped".into()))?;
        result
            .await
            .map_err(|_| StoreError::Task("the store writer has stopped".into()))?
    }

    /// Runs the read `f` on the reader connection off the async runtime.
    pub(crate) async fn with<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| StoreError::Task("store connection poisoned".into()))?;
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

/// Runs `f` inside a savepoint, rolled back if `f` fails.
fn in_savepoint<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    conn.execute_batch("SAVEPOINT write")?;
    let result = f(conn);
    let end = if result.is_ok() {
        conn.execute_batch("RELEASE write")
    } else {
        conn.execute_batch("ROLLBACK TO write; RELEASE write")
    };
    let value = result?;
    end?;
    Ok(value)
}

/// The writer thread: commits whatever writes are waiting as one group.
fn write_groups(conn: Connection, jobs: std::sync::mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            let e = e.to_string();
            for job in group {
                job(None)(Err(e.clone()));
            }
            continue;
        }
        let completions: Vec<Completion> = group.into_iter().map(|job| job(Some(&conn))).collect();
        let commit = conn.execute_batch("COMMIT").map_err(|e| e.to_string());
        if commit.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        for complete in completions {
            complete(commit.clone());
        }
    }
}

/// `execute` through the connection's statement cache: the statements on a
/// question's path are parsed once, not on every call.
pub(crate) trait Cached {
    fn run(&self, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize>;
}

impl Cached for Connection {
    fn run(&self, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }
}

fn configure(conn: &mut Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(64);
    // WAL: readers never block the writer. synchronous=FULL: a committed
    // transaction survives power loss, which the dispatcher's "acknowledge only
    // after it is recorded" rule relies on.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let current: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if current > MIGRATIONS.len() {
        return Err(StoreError::Corrupt(format!(
            "schema version {current} is newer than this rouse knows ({}); upgrade rouse",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "applied store migration");
    }
    Ok(())
}

pub(crate) fn micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub(crate) fn from_micros(us: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn from_millis(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

const SERVICE_COLUMNS: &str = "uuid, project, name, status, min_instances, max_instances, concurrency, \
     idle_timeout_ms, wake_timeout_ms, request_timeout_ms, env, generation, created_at_us, updated_at_us, \
     node_selector, ingress, freeze_idle, frozen_timeout_ms, max_retries, dead_letter_topic";

/// The raw columns of a `services` row; turned into a [`Service`] outside the
/// row callback so that validation errors stay typed.
struct ServiceRow {
    uuid: String,
    project: String,
    name: String,
    status: String,
    scaling: [i64; 6],
    env: String,
    generation: i64,
    created_at_us: i64,
    updated_at_us: i64,
    node_selector: String,
    ingress: String,
    freeze: bool,
    frozen_timeout_ms: i64,
    max_retries: i64,
    dead_letter_topic: Option<String>,
}

impl ServiceRow {
    fn read(row: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            uuid: row.get(0)?,
            project: row.get(1)?,
            name: row.get(2)?,
            status: row.get(3)?,
            scaling: [
                row.get(4)?,
                row.get(5)?,
                row.get(6)?,
                row.get(7)?,
                row.get(8)?,
                row.get(9)?,
            ],
            env: row.get(10)?,
            generation: row.get(11)?,
            created_at_us: row.get(12)?,
            updated_at_us: row.get(13)?,
            node_selector: row.get(14)?,
            ingress: row.get(15)?,
            freeze: row.get(16)?,
            frozen_timeout_ms: row.get(17)?,
            max_retries: row.get(18)?,
            dead_letter_topic: row.get(19)?,
        })
    }

    fn into_service(self) -> Result<Service, StoreError> {
        let corrupt = |what: &str, e: &dyn std::fmt::Display| {
            StoreError::Corrupt(format!("service {}: {what}: {e}", self.uuid))
        };
        let project = ProjectName::parse(&self.project).map_err(|e| corrupt("project", &e))?;
        let name = ServiceName::parse(&project, &self.name).map_err(|e| corrupt("name", &e))?;
        let uuid = Uuid::parse_str(&self.uuid).map_err(|e| corrupt("uuid", &e))?;
        let status =
            ServiceStatus::parse(&self.status).ok_or_else(|| corrupt("status", &self.status))?;
        let count = |v: i64| u32::try_from(v).map_err(|e| corrupt("scaling", &e));
        let [min, max, conc, idle, wake, request] = self.scaling;
        let scaling = Scaling {
            min_instances: count(min)?,
            max_instances: count(max)?,
            concurrency: count(conc)?,
            idle_timeout: from_millis(idle),
            wake_timeout: from_millis(wake),
            request_timeout: from_millis(request),
            freeze: self.freeze,
            frozen_timeout: from_millis(self.frozen_timeout_ms),
            max_retries: count(self.max_retries)?,
        };
        let env = serde_json::from_str(&self.env).map_err(|e| corrupt("env", &e))?;
        let env = EnvVars::from_map(env).map_err(|e| corrupt("env", &e))?;
        let node_selector =
            serde_json::from_str(&self.node_selector).map_err(|e| corrupt("node_selector", &e))?;
        let ingress =
            IngressPolicy::parse(&self.ingress).ok_or_else(|| corrupt("ingress", &self.ingress))?;
        Ok(Service {
            project,
            name,
            uuid,
            status,
            scaling,
            env,
            node_selector,
            ingress,
            dead_letter_topic: self.dead_letter_topic,
            generation: u64::try_from(self.generation).map_err(|e| corrupt("generation", &e))?,
            created_at: from_micros(self.created_at_us),
            updated_at: from_micros(self.updated_at_us),
        })
    }
}

fn env_json(service: &Service) -> String {
    // A map of strings always serialises.
    serde_json::to_string(service.env.as_map()).unwrap_or_else(|_| "{}".into())
}

pub(crate) fn selector_json(service: &Service) -> String {
    serde_json::to_string(&service.node_selector).unwrap_or_else(|_| "{}".into())
}

#[async_trait]
impl Store for SqliteStore {
    async fn insert_service(&self, service: &Service) -> Result<(), StoreError> {
        let s = service.clone();
        self.write(move |conn| {
            let tx = conn;
            let namespace = s.project.namespace();
            let existing: Option<String> = tx
                .query_row(
                    "SELECT name FROM projects WHERE namespace = ?1",
                    [&namespace],
                    |r| r.get(0),
                )
                .optional()?;
            match existing {
                Some(existing) if existing != s.project.as_str() => {
                    return Err(StoreError::NamespaceTaken {
                        project: s.project.to_string(),
                        namespace,
                        existing,
                    });
                }
                Some(_) => {}
                None => {
                    tx.execute(
                        "INSERT INTO projects (name, namespace, created_at_us) VALUES (?1, ?2, ?3)",
                        params![s.project.as_str(), namespace, micros(s.created_at)],
                    )?;
                }
            }
            let taken: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM services WHERE project = ?1 AND name = ?2)",
                params![s.project.as_str(), s.name.as_str()],
                |r| r.get(0),
            )?;
            if taken {
                return Err(StoreError::AlreadyExists {
                    project: s.project.to_string(),
                    name: s.name.to_string(),
                });
            }
            tx.execute(
                &format!(
                    "INSERT INTO services ({SERVICE_COLUMNS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)"
                ),
                params![
                    s.uuid.to_string(),
                    s.project.as_str(),
                    s.name.as_str(),
                    s.status.as_str(),
                    s.scaling.min_instances,
                    s.scaling.max_instances,
                    s.scaling.concurrency,
                    millis(s.scaling.idle_timeout),
                    millis(s.scaling.wake_timeout),
                    millis(s.scaling.request_timeout),
                    env_json(&s),
                    i64::try_from(s.generation).unwrap_or(i64::MAX),
                    micros(s.created_at),
                    micros(s.updated_at),
                    selector_json(&s),
                    s.ingress.as_str(),
                    s.scaling.freeze,
                    millis(s.scaling.frozen_timeout),
                    s.scaling.max_retries,
                    s.dead_letter_topic,
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn get_service(
        &self,
        project: &ProjectName,
        name: &ServiceName,
    ) -> Result<Option<Service>, StoreError> {
        let (project, name) = (project.to_string(), name.to_string());
        self.with(move |conn| {
            conn.query_row(
                &format!("SELECT {SERVICE_COLUMNS} FROM services WHERE project = ?1 AND name = ?2"),
                params![project, name],
                ServiceRow::read,
            )
            .optional()?
            .map(ServiceRow::into_service)
            .transpose()
        })
        .await
    }

    async fn get_service_by_uuid(&self, uuid: Uuid) -> Result<Option<Service>, StoreError> {
        self.with(move |conn| {
            conn.query_row(
                &format!("SELECT {SERVICE_COLUMNS} FROM services WHERE uuid = ?1"),
                [uuid.to_string()],
                ServiceRow::read,
            )
            .optional()?
            .map(ServiceRow::into_service)
            .transpose()
        })
        .await
    }

    async fn list_services(
        &self,
        project: Option<&ProjectName>,
    ) -> Result<Vec<Service>, StoreError> {
        let project = project.map(ToString::to_string);
        self.with(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {SERVICE_COLUMNS} FROM services \
                 WHERE ?1 IS NULL OR project = ?1 ORDER BY project, name"
            ))?;
            let rows = stmt.query_map([project], ServiceRow::read)?;
            rows.map(|r| {
                r.map_err(StoreError::from)
                    .and_then(ServiceRow::into_service)
            })
            .collect()
        })
        .await
    }

    async fn update_service(&self, service: &Service) -> Result<Service, StoreError> {
        let mut s = service.clone();
        self.write(move |conn| {
            let expected = s.generation;
            s.generation += 1;
            let changed = conn.execute(
                "UPDATE services SET status = ?3, min_instances = ?4, max_instances = ?5, \
                 concurrency = ?6, idle_timeout_ms = ?7, wake_timeout_ms = ?8, \
                 request_timeout_ms = ?9, env = ?10, generation = ?11, updated_at_us = ?12, \
                 node_selector = ?13, ingress = ?14, freeze_idle = ?15, frozen_timeout_ms = ?16, \
                 max_retries = ?17, dead_letter_topic = ?18 WHERE uuid = ?1 AND generation = ?2",
                params![
                    s.uuid.to_string(),
                    i64::try_from(expected).unwrap_or(i64::MAX),
                    s.status.as_str(),
                    s.scaling.min_instances,
                    s.scaling.max_instances,
                    s.scaling.concurrency,
                    millis(s.scaling.idle_timeout),
                    millis(s.scaling.wake_timeout),
                    millis(s.scaling.request_timeout),
                    env_json(&s),
                    i64::try_from(s.generation).unwrap_or(i64::MAX),
                    micros(s.updated_at),
                    selector_json(&s),
                    s.ingress.as_str(),
                    s.scaling.freeze,
                    millis(s.scaling.frozen_timeout),
                    s.scaling.max_retries,
                    s.dead_letter_topic,
                ],
            )?;
            if changed == 1 {
                return Ok(s);
            }
            let exists: bool = conn.query_row(
                "SELECT EXISTS (SELECT 1 FROM services WHERE uuid = ?1)",
                [s.uuid.to_string()],
                |r| r.get(0),
            )?;
            Err(if exists {
                StoreError::Conflict {
                    uuid: s.uuid,
                    expected,
                }
            } else {
                StoreError::NotFound { uuid: s.uuid }
            })
        })
        .await
    }

    async fn delete_service(&self, uuid: Uuid) -> Result<bool, StoreError> {
        self.write(move |conn| {
            let n = conn.execute("DELETE FROM services WHERE uuid = ?1", [uuid.to_string()])?;
            Ok(n == 1)
        })
        .await
    }
}

// What the stores share is tested once, on both, by the contract suite
// (`tests/tests/store`); here only what is SQLite's own.
#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_file_is_in_wal_mode_with_full_sync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("nested/rouse.db")).expect("open");
        let (mode, sync): (String, i64) = store
            .with(|c| {
                Ok((
                    c.pragma_query_value(None, "journal_mode", |r| r.get(0))?,
                    c.pragma_query_value(None, "synchronous", |r| r.get(0))?,
                ))
            })
            .await
            .expect("pragma");
        assert_eq!(mode, "wal");
        // synchronous is per connection: the writer's is what commits.
        let writer_sync: i64 = store
            .write(|c| Ok(c.pragma_query_value(None, "synchronous", |r| r.get(0))?))
            .await
            .expect("pragma");
        assert_eq!((sync, writer_sync), (2, 2), "FULL on both connections");
    }
}
