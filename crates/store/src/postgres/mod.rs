//! The store on PostgreSQL (`--store postgres://…`), for Rouse past one
//! machine: several processes (api replicas, builders, dispatchers) share one
//! database.
//!
//! Every trait method is one transaction. Writes run at `SERIALIZABLE`, so
//! the check-then-write logic the methods share with the SQLite store (which
//! serialises writes through one writer) stays correct when processes write
//! at once; a transaction PostgreSQL refuses as a serialisation failure or
//! deadlock is run again from the start, a few times. Reads are single
//! statements, or a `REPEATABLE READ` transaction where they read several
//! tables at once. Statements are prepared once per pooled connection.
//! The schema is applied at connect time, under an advisory lock, so replicas
//! starting together migrate it once.

mod builds;
mod dispatch;
mod iam;
mod leases;
mod nodes;
mod notify;

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use rouse_core::{
    EnvVars, IngressPolicy, ProjectName, Scaling, Service, ServiceName, ServiceStatus,
};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};
use uuid::Uuid;

use crate::sqlite::{from_micros, micros};
use crate::{Store, StoreError};

/// Schema versions, applied in order; the index + 1 is the version. Never
/// edit one that has shipped: add another.
const MIGRATIONS: &[&str] = &[
    include_str!("schema.sql"),
    include_str!("notify.sql"),
    include_str!("leases.sql"),
    include_str!("shards.sql"),
    include_str!("nodes.sql"),
    include_str!("selectors.sql"),
    include_str!("ingress.sql"),
    include_str!("freeze.sql"),
    include_str!("retries.sql"),
];

/// The advisory lock taken while migrating (any fixed number; this one
/// spells "rouse" in ASCII).
const MIGRATION_LOCK: i64 = 0x72_6f_75_73_65;

/// Connections per process. A dispatcher's burst holds one per write in
/// flight (its intake handles 100 questions at once); PostgreSQL's default
/// `max_connections` (100) leaves room for a few processes.
const POOL_SIZE: usize = 32;

/// How long a call waits for a free connection, and a new connection for
/// the server, before failing.
const POOL_WAIT: Duration = Duration::from_secs(10);

/// Times a write transaction is run again after a serialisation failure.
pub(crate) const MAX_RETRIES: u32 = 20;

/// The PostgreSQL store: see the module documentation.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    /// For connections of its own (change notices).
    config: tokio_postgres::Config,
    /// The URL without its password, for messages.
    display: String,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("url", &self.display)
            .finish()
    }
}

/// `url` with any password replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{host}{path}")
        }
        None => url.to_owned(),
    }
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user:pass@host:port/db`)
    /// and brings its schema up to date.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let display = redact_url(url);
        let open_err = |source: Box<dyn std::error::Error + Send + Sync>| StoreError::Open {
            path: display.clone(),
            source,
        };
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
            open_err(
                format!("{e}; expected a URL like postgres://USER:PASSWORD@HOST:PORT/DATABASE")
                    .into(),
            )
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(POOL_WAIT);
        }
        if config.get_application_name().is_none() {
            config.application_name("rouse");
        }
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(POOL_WAIT))
            .build()
            .map_err(|e| open_err(e.into()))?;
        let store = Self {
            pool,
            config,
            display: display.clone(),
        };
        store
            .migrate()
            .await
            .map_err(|e| open_err(with_causes(&e).into()))?;
        Ok(store)
    }

    /// The URL connected to, without its password.
    pub fn url(&self) -> &str {
        &self.display
    }

    /// Every row of `sql`, each read by `read`.
    pub(crate) async fn all<T>(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        read: fn(&Row) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let c = self.client().await?;
        rows(&c, sql, params).await?.iter().map(read).collect()
    }

    /// The row of `sql`, if any, read by `read`.
    pub(crate) async fn one<T>(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        read: fn(&Row) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        let c = self.client().await?;
        row(&c, sql, params).await?.as_ref().map(read).transpose()
    }

    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => StoreError::Postgres(e),
            other => StoreError::Pool(format!("{other} (database {})", self.display)),
        })
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS rouse_schema (version BIGINT NOT NULL)")
            .await?;
        let current: i64 = tx
            .query_opt("SELECT version FROM rouse_schema", &[])
            .await?
            .map_or(0, |r| r.get(0));
        let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
        if current > known {
            return Err(StoreError::Corrupt(format!(
                "schema version {current} is newer than this rouse knows ({known}); upgrade rouse"
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            tx.batch_execute(sql).await?;
            tracing::info!(version = i + 1, "applied store migration (PostgreSQL)");
        }
        tx.execute("DELETE FROM rouse_schema", &[]).await?;
        tx.execute("INSERT INTO rouse_schema (version) VALUES ($1)", &[&known])
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// `e` and every cause under it: the driver's own message ("error
/// connecting to server") leaves out why (refused, timed out, bad password).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        cause = c.source();
    }
    text
}

/// Whether PostgreSQL refused a transaction (on its `attempt`th run) only
/// because of another one running at the same time, so that running it again
/// may succeed. A unique violation counts for a few runs: PostgreSQL reports
/// one as a serialisation failure only when the transaction had read that
/// very key, not when it computed it (the next revision number, say); run
/// again, the body sees the other transaction's row.
pub(crate) fn retryable(e: &StoreError, attempt: u32) -> bool {
    match e {
        StoreError::Postgres(e) => match e.code() {
            Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE => attempt < MAX_RETRIES,
            Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED => attempt < MAX_RETRIES,
            Some(c) if *c == SqlState::UNIQUE_VIOLATION => attempt < 3,
            _ => false,
        },
        _ => false,
    }
}

/// Runs `$body` (an expression that may use `?` and `return` with
/// [`StoreError`]s) in a `SERIALIZABLE` transaction named `$tx` (or at the
/// isolation level given before it, for writes that read nothing they
/// decide on), committing it if the body succeeds; a transaction refused
/// because of a concurrent one is run again.
macro_rules! write_tx {
    ($store:expr, |$tx:ident| $body:expr) => {
        $crate::postgres::write_tx!(
            $store,
            tokio_postgres::IsolationLevel::Serializable,
            |$tx| $body
        )
    };
    ($store:expr, $isolation:expr, |$tx:ident| $body:expr) => {{
        let mut client = $store.client().await?;
        let mut attempt: u32 = 0;
        loop {
            let $tx = client
                .build_transaction()
                .isolation_level($isolation)
                .start()
                .await?;
            let outcome: Result<_, $crate::StoreError> = async { $body }.await;
            let outcome = match outcome {
                Ok(value) => $tx
                    .commit()
                    .await
                    .map(|()| value)
                    .map_err($crate::StoreError::from),
                Err(e) => Err(e),
            };
            match outcome {
                Err(e) if $crate::postgres::retryable(&e, attempt) => {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(u64::from(attempt))).await;
                }
                other => break other,
            }
        }
    }};
}
pub(crate) use write_tx;

/// The rows of `sql`, prepared once per connection.
pub(crate) async fn rows<C: GenericClient>(
    c: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, StoreError> {
    let statement = c.prepare_cached(sql).await?;
    Ok(c.query(&statement, params).await?)
}

/// The row of `sql`, if any.
pub(crate) async fn row<C: GenericClient>(
    c: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<Row>, StoreError> {
    let statement = c.prepare_cached(sql).await?;
    Ok(c.query_opt(&statement, params).await?)
}

/// Runs `sql`; the number of rows it changed.
pub(crate) async fn exec<C: GenericClient>(
    c: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, StoreError> {
    let statement = c.prepare_cached(sql).await?;
    Ok(c.execute(&statement, params).await?)
}

/// Whether `sql` (a `SELECT EXISTS (…)`) is true.
pub(crate) async fn exists<C: GenericClient>(
    c: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<bool, StoreError> {
    let statement = c.prepare_cached(sql).await?;
    Ok(c.query_one(&statement, params).await?.try_get(0)?)
}

/// Reads column `i` of `row`, a wrong type being a corrupt record.
pub(crate) fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    i: usize,
) -> Result<T, StoreError> {
    row.try_get(i).map_err(StoreError::from)
}

pub(crate) fn int(v: u32) -> i64 {
    i64::from(v)
}

pub(crate) fn big(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
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

fn read_service(row: &Row) -> Result<Service, StoreError> {
    let uuid: String = get(row, 0)?;
    let corrupt = |what: &str, e: &dyn std::fmt::Display| {
        StoreError::Corrupt(format!("service {uuid}: {what}: {e}"))
    };
    let project: String = get(row, 1)?;
    let name: String = get(row, 2)?;
    let status: String = get(row, 3)?;
    let project = ProjectName::parse(&project).map_err(|e| corrupt("project", &e))?;
    let name = ServiceName::parse(&project, &name).map_err(|e| corrupt("name", &e))?;
    let count = |i: usize| -> Result<u32, StoreError> {
        let v: i64 = get(row, i)?;
        u32::try_from(v).map_err(|e| corrupt("scaling", &e))
    };
    let scaling = Scaling {
        min_instances: count(4)?,
        max_instances: count(5)?,
        concurrency: count(6)?,
        idle_timeout: from_millis(get(row, 7)?),
        wake_timeout: from_millis(get(row, 8)?),
        request_timeout: from_millis(get(row, 9)?),
        freeze: get(row, 16)?,
        frozen_timeout: from_millis(get(row, 17)?),
        max_retries: count(18)?,
    };
    let env: String = get(row, 10)?;
    let env = serde_json::from_str(&env).map_err(|e| corrupt("env", &e))?;
    let env = EnvVars::from_map(env).map_err(|e| corrupt("env", &e))?;
    let generation: i64 = get(row, 11)?;
    let node_selector: String = get(row, 14)?;
    let node_selector =
        serde_json::from_str(&node_selector).map_err(|e| corrupt("node_selector", &e))?;
    let ingress: String = get(row, 15)?;
    let ingress = IngressPolicy::parse(&ingress).ok_or_else(|| corrupt("ingress", &ingress))?;
    Ok(Service {
        uuid: Uuid::parse_str(&uuid).map_err(|e| corrupt("uuid", &e))?,
        project,
        name,
        status: ServiceStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?,
        scaling,
        env,
        node_selector,
        ingress,
        dead_letter_topic: get(row, 19)?,
        generation: u64::try_from(generation).map_err(|e| corrupt("generation", &e))?,
        created_at: from_micros(get(row, 12)?),
        updated_at: from_micros(get(row, 13)?),
    })
}

fn env_json(service: &Service) -> String {
    // A map of strings always serialises.
    serde_json::to_string(service.env.as_map()).unwrap_or_else(|_| "{}".into())
}

#[async_trait]
impl Store for PgStore {
    async fn insert_service(&self, s: &Service) -> Result<(), StoreError> {
        let namespace = s.project.namespace();
        let uuid = s.uuid.to_string();
        let env = env_json(s);
        let selector = crate::sqlite::selector_json(s);
        write_tx!(self, |tx| {
            let existing = row(
                &tx,
                "SELECT name FROM projects WHERE namespace = $1",
                &[&namespace],
            )
            .await?;
            match existing.map(|r| get::<String>(&r, 0)).transpose()? {
                Some(existing) if existing != s.project.as_str() => {
                    return Err(StoreError::NamespaceTaken {
                        project: s.project.to_string(),
                        namespace: namespace.clone(),
                        existing,
                    });
                }
                Some(_) => {}
                None => {
                    exec(
                        &tx,
                        "INSERT INTO projects (name, namespace, created_at_us) VALUES ($1, $2, $3)",
                        &[&s.project.as_str(), &namespace, &micros(s.created_at)],
                    )
                    .await?;
                }
            }
            if exists(
                &tx,
                "SELECT EXISTS (SELECT 1 FROM services WHERE project = $1 AND name = $2)",
                &[&s.project.as_str(), &s.name.as_str()],
            )
            .await?
            {
                return Err(StoreError::AlreadyExists {
                    project: s.project.to_string(),
                    name: s.name.to_string(),
                });
            }
            exec(
                &tx,
                &format!(
                    "INSERT INTO services ({SERVICE_COLUMNS}) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)"
                ),
                &[
                    &uuid,
                    &s.project.as_str(),
                    &s.name.as_str(),
                    &s.status.as_str(),
                    &int(s.scaling.min_instances),
                    &int(s.scaling.max_instances),
                    &int(s.scaling.concurrency),
                    &millis(s.scaling.idle_timeout),
                    &millis(s.scaling.wake_timeout),
                    &millis(s.scaling.request_timeout),
                    &env,
                    &big(s.generation),
                    &micros(s.created_at),
                    &micros(s.updated_at),
                    &selector,
                    &s.ingress.as_str(),
                    &s.scaling.freeze,
                    &millis(s.scaling.frozen_timeout),
                    &int(s.scaling.max_retries),
                    &s.dead_letter_topic,
                ],
            )
            .await?;
            Ok(())
        })
    }

    async fn get_service(
        &self,
        project: &ProjectName,
        name: &ServiceName,
    ) -> Result<Option<Service>, StoreError> {
        self.one(
            &format!("SELECT {SERVICE_COLUMNS} FROM services WHERE project = $1 AND name = $2"),
            &[&project.as_str(), &name.as_str()],
            read_service,
        )
        .await
    }

    async fn get_service_by_uuid(&self, uuid: Uuid) -> Result<Option<Service>, StoreError> {
        self.one(
            &format!("SELECT {SERVICE_COLUMNS} FROM services WHERE uuid = $1"),
            &[&uuid.to_string()],
            read_service,
        )
        .await
    }

    async fn list_services(
        &self,
        project: Option<&ProjectName>,
    ) -> Result<Vec<Service>, StoreError> {
        let c = self.client().await?;
        let project = project.map(ProjectName::as_str);
        rows(
            &c,
            &format!(
                "SELECT {SERVICE_COLUMNS} FROM services \
                 WHERE $1::TEXT IS NULL OR project = $1 ORDER BY project COLLATE \"C\", name COLLATE \"C\""
            ),
            &[&project],
        )
        .await?
        .iter()
        .map(read_service)
        .collect()
    }

    async fn update_service(&self, service: &Service) -> Result<Service, StoreError> {
        let mut s = service.clone();
        let expected = s.generation;
        s.generation += 1;
        let (uuid, env) = (s.uuid.to_string(), env_json(&s));
        let selector = crate::sqlite::selector_json(&s);
        write_tx!(self, |tx| {
            let changed = exec(
                &tx,
                "UPDATE services SET status = $3, min_instances = $4, max_instances = $5, \
                 concurrency = $6, idle_timeout_ms = $7, wake_timeout_ms = $8, \
                 request_timeout_ms = $9, env = $10, generation = $11, updated_at_us = $12, \
                 node_selector = $13, ingress = $14, freeze_idle = $15, frozen_timeout_ms = $16, \
                 max_retries = $17, dead_letter_topic = $18 WHERE uuid = $1 AND generation = $2",
                &[
                    &uuid,
                    &big(expected),
                    &s.status.as_str(),
                    &int(s.scaling.min_instances),
                    &int(s.scaling.max_instances),
                    &int(s.scaling.concurrency),
                    &millis(s.scaling.idle_timeout),
                    &millis(s.scaling.wake_timeout),
                    &millis(s.scaling.request_timeout),
                    &env,
                    &big(s.generation),
                    &micros(s.updated_at),
                    &selector,
                    &s.ingress.as_str(),
                    &s.scaling.freeze,
                    &millis(s.scaling.frozen_timeout),
                    &int(s.scaling.max_retries),
                    &s.dead_letter_topic,
                ],
            )
            .await?;
            if changed == 1 {
                return Ok(());
            }
            let found = exists(
                &tx,
                "SELECT EXISTS (SELECT 1 FROM services WHERE uuid = $1)",
                &[&uuid],
            )
            .await?;
            Err(if found {
                StoreError::Conflict {
                    uuid: s.uuid,
                    expected,
                }
            } else {
                StoreError::NotFound { uuid: s.uuid }
            })
        })?;
        Ok(s)
    }

    async fn delete_service(&self, uuid: Uuid) -> Result<bool, StoreError> {
        let uuid = uuid.to_string();
        write_tx!(self, |tx| {
            Ok(exec(&tx, "DELETE FROM services WHERE uuid = $1", &[&uuid]).await? == 1)
        })
    }
}
