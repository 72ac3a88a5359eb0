//! [`DispatchStore`] on SQLite: revisions, executions, the event store and
//! dead letters.

use std::path::PathBuf;
use std::time::SystemTime;

use async_trait::async_trait;
use rouse_core::protocol::{Attributes, is_terminal_kind};
use rouse_core::revision::{
    DeliveryMode, EventRecord, Execution, ExecutionStatus, Revision, RevisionSource,
};
use rouse_core::{Service, ServiceStatus};
use rusqlite::{Connection, OptionalExtension, Row, params};
use uuid::Uuid;

use crate::sqlite::{Cached as _, from_micros, micros};
use crate::{
    EventStore, ExecutionStore, NewEvent, NewRevision, RevisionStore, SqliteStore, StoreError,
};

pub(crate) fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

pub(crate) fn attrs_json(a: &Attributes) -> String {
    serde_json::to_string(a).unwrap_or_else(|_| "{}".into())
}

pub(crate) fn attrs_from(s: &str) -> Result<Attributes, StoreError> {
    serde_json::from_str(s).map_err(|e| corrupt("attributes", e))
}

fn opt_micros(t: Option<SystemTime>) -> Option<i64> {
    t.map(micros)
}

pub(crate) const REVISION_COLUMNS: &str = "name, service_uuid, seq, runtime, image, program, args, workdir, mode, probe_path, created_at_us, http2";

pub(crate) fn read_revision(row: &Row<'_>) -> rusqlite::Result<Result<Revision, StoreError>> {
    let name: String = row.get(0)?;
    let service_uuid: String = row.get(1)?;
    let seq: i64 = row.get(2)?;
    let runtime: String = row.get(3)?;
    let image: Option<String> = row.get(4)?;
    let program: Option<String> = row.get(5)?;
    let args: Option<String> = row.get(6)?;
    let workdir: Option<String> = row.get(7)?;
    let mode: String = row.get(8)?;
    let probe_path: Option<String> = row.get(9)?;
    let created: i64 = row.get(10)?;
    let http2: bool = row.get(11)?;
    Ok((|| {
        let source = match (runtime.as_str(), image, program) {
            ("docker", Some(image), _) => RevisionSource::Image(image),
            ("process", _, Some(program)) => RevisionSource::Command {
                program,
                args: serde_json::from_str(args.as_deref().unwrap_or("[]"))
                    .map_err(|e| corrupt("revision args", e))?,
                workdir: PathBuf::from(workdir.unwrap_or_default()),
            },
            (other, _, _) => return Err(corrupt("revision runtime", other)),
        };
        Ok(Revision {
            name,
            service_uuid: Uuid::parse_str(&service_uuid)
                .map_err(|e| corrupt("revision service", e))?,
            seq: u32::try_from(seq).map_err(|e| corrupt("revision seq", e))?,
            source,
            mode: DeliveryMode::parse(&mode).ok_or_else(|| corrupt("revision mode", &mode))?,
            probe_path,
            http2,
            created_at: from_micros(created),
        })
    })())
}

pub(crate) const EXECUTION_COLUMNS: &str = "question_uuid, retry_count, service_uuid, status, revision, instance, \
     cold_start, reason, attributes, data, received_at_us, ready_at_us, delivered_at_us, finished_at_us, asked_by, dispatcher";

fn read_execution(row: &Row<'_>) -> rusqlite::Result<Result<Execution, StoreError>> {
    let question_uuid: String = row.get(0)?;
    let retry: i64 = row.get(1)?;
    let service: String = row.get(2)?;
    let status: String = row.get(3)?;
    let revision: Option<String> = row.get(4)?;
    let instance: Option<String> = row.get(5)?;
    let cold_start: Option<bool> = row.get(6)?;
    let reason: Option<String> = row.get(7)?;
    let attributes: String = row.get(8)?;
    let data: Vec<u8> = row.get(9)?;
    let received: i64 = row.get(10)?;
    let ready: Option<i64> = row.get(11)?;
    let delivered: Option<i64> = row.get(12)?;
    let finished: Option<i64> = row.get(13)?;
    let asked_by: Option<String> = row.get(14)?;
    let dispatcher: Option<String> = row.get(15)?;
    Ok((|| {
        Ok(Execution {
            retry_count: u32::try_from(retry).map_err(|e| corrupt("retry_count", e))?,
            service_uuid: Uuid::parse_str(&service).map_err(|e| corrupt("execution service", e))?,
            status: ExecutionStatus::parse(&status)
                .ok_or_else(|| corrupt("execution status", &status))?,
            question_uuid,
            revision,
            instance,
            cold_start,
            reason,
            attributes: attrs_from(&attributes)?,
            data,
            received_at: from_micros(received),
            ready_at: ready.map(from_micros),
            delivered_at: delivered.map(from_micros),
            finished_at: finished.map(from_micros),
            asked_by,
            dispatcher,
        })
    })())
}

pub(crate) const EVENT_COLUMNS: &str =
    "id, question_uuid, kind, attributes, data, published, recorded_at_us";

fn read_event(row: &Row<'_>) -> rusqlite::Result<Result<EventRecord, StoreError>> {
    let id: i64 = row.get(0)?;
    let question_uuid: String = row.get(1)?;
    let kind: String = row.get(2)?;
    let attributes: String = row.get(3)?;
    let data: Vec<u8> = row.get(4)?;
    let published: bool = row.get(5)?;
    let recorded: i64 = row.get(6)?;
    Ok(attrs_from(&attributes).map(|attributes| EventRecord {
        id,
        question_uuid,
        kind,
        attributes,
        data,
        published,
        recorded_at: from_micros(recorded),
    }))
}

/// Runs a query whose rows read into `Result<T, StoreError>`.
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

fn insert_event(
    conn: &Connection,
    event: &NewEvent,
    published: bool,
) -> Result<Option<i64>, StoreError> {
    let n = conn.run(
        "INSERT OR IGNORE INTO events (event_uuid, question_uuid, retry_count, kind, attributes, data, published, recorded_at_us) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            event.event_uuid,
            event.question_uuid,
            event.retry_count,
            event.kind,
            attrs_json(&event.attributes),
            event.data,
            published,
            micros(SystemTime::now()),
        ],
    )?;
    Ok((n == 1).then(|| conn.last_insert_rowid()))
}

#[async_trait]
impl RevisionStore for SqliteStore {
    async fn insert_revision(
        &self,
        service: &Service,
        revision: &NewRevision,
        now: SystemTime,
    ) -> Result<Revision, StoreError> {
        let (uuid, service_name) = (service.uuid, service.name.to_string());
        let new = revision.clone();
        self.write(move |conn| {
            let tx = conn;
            let exists: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM services WHERE uuid = ?1)",
                [uuid.to_string()],
                |r| r.get(0),
            )?;
            if !exists {
                return Err(StoreError::NotFound { uuid });
            }
            let last: Option<i64> = tx.query_row(
                "SELECT MAX(seq) FROM revisions WHERE service_uuid = ?1",
                [uuid.to_string()],
                |r| r.get(0),
            )?;
            let seq = u32::try_from(last.unwrap_or(0) + 1).map_err(|e| corrupt("revision seq", e))?;
            let revision = Revision {
                name: Revision::name_for(&service_name, seq),
                service_uuid: uuid,
                seq,
                source: new.source,
                mode: new.mode,
                probe_path: new.probe_path,
                http2: new.http2,
                // As stored: to the microsecond.
                created_at: from_micros(micros(now)),
            };
            let (image, program, args, workdir) = crate::builds::source_columns(&revision.source);
            tx.run(
                &format!("INSERT INTO revisions ({REVISION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"),
                params![
                    revision.name,
                    uuid.to_string(),
                    seq,
                    revision.source.runtime(),
                    image,
                    program,
                    args,
                    workdir,
                    revision.mode.as_str(),
                    revision.probe_path,
                    micros(now),
                    revision.http2,
                ],
            )?;
            tx.run(
                "UPDATE services SET status = ?2, generation = generation + 1, updated_at_us = ?3 WHERE uuid = ?1",
                params![uuid.to_string(), ServiceStatus::Ready.as_str(), micros(now)],
            )?;
            // A revision registered by hand serves at once, all traffic to
            // it; tags stay where they were.
            tx.run(
                "INSERT INTO routing (service_uuid, serving, tags, traffic) VALUES (?1, ?2, '{}', '[]') \
                 ON CONFLICT (service_uuid) DO UPDATE SET serving = excluded.serving, traffic = '[]'",
                params![uuid.to_string(), revision.name],
            )?;
            Ok(revision)
        })
        .await
    }

    async fn list_revisions(&self, service_uuid: Uuid) -> Result<Vec<Revision>, StoreError> {
        self.with(move |conn| {
            collect(
                conn,
                &format!("SELECT {REVISION_COLUMNS} FROM revisions WHERE service_uuid = ?1 ORDER BY seq DESC"),
                [service_uuid.to_string()],
                read_revision,
            )
        })
        .await
    }

    async fn serving_revision(&self, service_uuid: Uuid) -> Result<Option<Revision>, StoreError> {
        self.with(move |conn| {
            let routed: Option<String> = conn
                .query_row(
                    "SELECT serving FROM routing WHERE service_uuid = ?1",
                    [service_uuid.to_string()],
                    |r| r.get(0),
                )
                .optional()?
                .flatten();
            let found = match routed {
                Some(name) => collect(
                    conn,
                    &format!("SELECT {REVISION_COLUMNS} FROM revisions WHERE name = ?1 AND service_uuid = ?2"),
                    params![name, service_uuid.to_string()],
                    read_revision,
                )?,
                None => collect(
                    conn,
                    &format!(
                        "SELECT {REVISION_COLUMNS} FROM revisions WHERE service_uuid = ?1 \
                         AND state IS NULL ORDER BY seq DESC LIMIT 1"
                    ),
                    [service_uuid.to_string()],
                    read_revision,
                )?,
            };
            Ok(found.into_iter().next())
        })
        .await
    }
}

#[async_trait]
impl ExecutionStore for SqliteStore {
    async fn insert_execution(&self, e: &Execution) -> Result<bool, StoreError> {
        let e = e.clone();
        self.write(move |conn| {
            let n = conn.run(
                &format!(
                    "INSERT OR IGNORE INTO executions ({EXECUTION_COLUMNS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"
                ),
                params![
                    e.question_uuid,
                    e.retry_count,
                    e.service_uuid.to_string(),
                    e.status.as_str(),
                    e.revision,
                    e.instance,
                    e.cold_start,
                    e.reason,
                    attrs_json(&e.attributes),
                    e.data,
                    micros(e.received_at),
                    opt_micros(e.ready_at),
                    opt_micros(e.delivered_at),
                    opt_micros(e.finished_at),
                    e.asked_by,
                    e.dispatcher,
                ],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn update_execution(
        &self,
        e: &Execution,
        event: Option<&NewEvent>,
    ) -> Result<Option<i64>, StoreError> {
        let (e, event) = (e.clone(), event.cloned());
        self.write(move |conn| {
            let tx = conn;
            let n = tx.run(
                "UPDATE executions SET status = ?3, revision = ?4, instance = ?5, cold_start = ?6, \
                 reason = ?7, ready_at_us = ?8, delivered_at_us = ?9, finished_at_us = ?10 \
                 WHERE question_uuid = ?1 AND retry_count = ?2 AND dispatcher IS ?11 \
                 AND NOT (?3 = 'waking' AND status NOT IN ('queued', 'waking'))",
                params![
                    e.question_uuid,
                    e.retry_count,
                    e.status.as_str(),
                    e.revision,
                    e.instance,
                    e.cold_start,
                    e.reason,
                    opt_micros(e.ready_at),
                    opt_micros(e.delivered_at),
                    opt_micros(e.finished_at),
                    e.dispatcher,
                ],
            )?;
            if n == 0 {
                return Err(StoreError::Fenced {
                    question_uuid: e.question_uuid,
                    retry_count: e.retry_count,
                });
            }
            let id = match &event {
                Some(ev) => insert_event(tx, ev, false)?,
                None => None,
            };
            Ok(id)
        })
        .await
    }

    async fn get_execution(&self, question_uuid: &str) -> Result<Option<Execution>, StoreError> {
        let q = question_uuid.to_owned();
        self.with(move |conn| {
            conn.prepare_cached(&format!(
                "SELECT {EXECUTION_COLUMNS} FROM executions WHERE question_uuid = ?1 \
                 ORDER BY retry_count DESC LIMIT 1"
            ))?
            .query_row([q], read_execution)
            .optional()?
            .transpose()
        })
        .await
    }

    async fn list_executions(
        &self,
        service_uuid: Option<Uuid>,
        status: Option<ExecutionStatus>,
        limit: u32,
    ) -> Result<Vec<Execution>, StoreError> {
        self.with(move |conn| {
            collect(
                conn,
                &format!(
                    "SELECT {EXECUTION_COLUMNS} FROM executions \
                     WHERE (?1 IS NULL OR service_uuid = ?1) AND (?2 IS NULL OR status = ?2) \
                     ORDER BY received_at_us DESC LIMIT ?3"
                ),
                params![
                    service_uuid.map(|u| u.to_string()),
                    status.map(ExecutionStatus::as_str),
                    limit
                ],
                read_execution,
            )
        })
        .await
    }

    async fn unfinished_executions(&self) -> Result<Vec<Execution>, StoreError> {
        self.with(move |conn| {
            collect(
                conn,
                &format!(
                    "SELECT {EXECUTION_COLUMNS} FROM executions \
                     WHERE status IN ('queued', 'waking', 'running') ORDER BY received_at_us"
                ),
                [],
                read_execution,
            )
        })
        .await
    }

    async fn claim_executions(
        &self,
        services: &[Uuid],
        dispatcher: &str,
    ) -> Result<Vec<Execution>, StoreError> {
        let services =
            serde_json::to_string(&services.iter().map(Uuid::to_string).collect::<Vec<_>>())
                .map_err(|e| StoreError::Task(e.to_string()))?;
        let dispatcher = dispatcher.to_owned();
        let mut claimed = self
            .write(move |conn| {
                collect(
                    conn,
                    &format!(
                        "UPDATE executions SET dispatcher = ?1 \
                         WHERE service_uuid IN (SELECT value FROM json_each(?2)) \
                         AND status IN ('queued', 'waking', 'running') AND dispatcher IS NOT ?1 \
                         RETURNING {EXECUTION_COLUMNS}"
                    ),
                    params![dispatcher, services],
                    read_execution,
                )
            })
            .await?;
        claimed.sort_by_key(|e| e.received_at);
        Ok(claimed)
    }
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn record_event(
        &self,
        event: &NewEvent,
        published: bool,
    ) -> Result<Option<i64>, StoreError> {
        let event = event.clone();
        self.write(move |conn| insert_event(conn, &event, published))
            .await
    }

    async fn mark_published(&self, event_id: i64) -> Result<(), StoreError> {
        self.write(move |conn| {
            conn.run("UPDATE events SET published = 1 WHERE id = ?1", [event_id])?;
            Ok(())
        })
        .await
    }

    async fn unpublished_events(&self) -> Result<Vec<EventRecord>, StoreError> {
        self.with(move |conn| {
            collect(
                conn,
                &format!("SELECT {EVENT_COLUMNS} FROM events WHERE published = 0 ORDER BY id"),
                [],
                read_event,
            )
        })
        .await
    }

    async fn unpublished_events_of(
        &self,
        services: &[Uuid],
    ) -> Result<Vec<EventRecord>, StoreError> {
        let services =
            serde_json::to_string(&services.iter().map(Uuid::to_string).collect::<Vec<_>>())
                .map_err(|e| StoreError::Task(e.to_string()))?;
        self.with(move |conn| {
            collect(
                conn,
                &format!(
                    "SELECT {EVENT_COLUMNS} FROM events WHERE published = 0 AND EXISTS \
                     (SELECT 1 FROM executions x WHERE x.question_uuid = events.question_uuid \
                     AND x.retry_count = events.retry_count \
                     AND x.service_uuid IN (SELECT value FROM json_each(?1))) ORDER BY id"
                ),
                [services],
                read_event,
            )
        })
        .await
    }

    async fn events_after(
        &self,
        question_uuid: &str,
        after: i64,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let q = question_uuid.to_owned();
        self.with(move |conn| {
            collect(
                conn,
                &format!(
                    "SELECT {EVENT_COLUMNS} FROM events WHERE question_uuid = ?1 AND id > ?2 ORDER BY id"
                ),
                params![q, after],
                read_event,
            )
        })
        .await
    }

    async fn terminal_event(
        &self,
        question_uuid: &str,
        retry_count: u32,
    ) -> Result<Option<String>, StoreError> {
        let q = question_uuid.to_owned();
        self.with(move |conn| {
            let kinds: Vec<String> = {
                let mut stmt = conn.prepare_cached(
                    "SELECT kind FROM events WHERE question_uuid = ?1 AND retry_count = ?2 ORDER BY id",
                )?;
                let rows = stmt.query_map(params![q, retry_count], |r| r.get(0))?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            Ok(kinds.into_iter().find(|k| is_terminal_kind(k)))
        })
        .await
    }

    async fn dead_letter(
        &self,
        source: &str,
        reason: &str,
        attributes: &Attributes,
        data: &[u8],
    ) -> Result<(), StoreError> {
        let (source, reason, attributes, data) = (
            source.to_owned(),
            reason.to_owned(),
            attrs_json(attributes),
            data.to_vec(),
        );
        self.write(move |conn| {
            conn.run(
                "INSERT INTO dead_letters (source, reason, attributes, data, recorded_at_us) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![source, reason, attributes, data, micros(SystemTime::now())],
            )?;
            Ok(())
        })
        .await
    }
}
