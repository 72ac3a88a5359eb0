//! [`DispatchStore`](crate::DispatchStore) on PostgreSQL: revisions,
//! executions, the event store and dead letters.

use std::path::PathBuf;
use std::time::SystemTime;

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use rouse_core::protocol::{Attributes, is_terminal_kind};
use rouse_core::revision::{
    DeliveryMode, EventRecord, Execution, ExecutionStatus, Revision, RevisionSource,
};
use rouse_core::{Service, ServiceStatus};
use tokio_postgres::Row;
use uuid::Uuid;

use super::{PgStore, exec, get, int, row, rows, write_tx};
use crate::dispatch::{
    EVENT_COLUMNS, EXECUTION_COLUMNS, REVISION_COLUMNS, attrs_from, attrs_json, corrupt,
};
use crate::sqlite::{from_micros, micros};
use crate::{EventStore, ExecutionStore, NewEvent, NewRevision, RevisionStore, StoreError};

/// A `revisions` row read as [`REVISION_COLUMNS`].
pub(crate) fn read_revision(row: &Row) -> Result<Revision, StoreError> {
    let runtime: String = get(row, 3)?;
    let image: Option<String> = get(row, 4)?;
    let program: Option<String> = get(row, 5)?;
    let args: Option<String> = get(row, 6)?;
    let workdir: Option<String> = get(row, 7)?;
    let mode: String = get(row, 8)?;
    let service: String = get(row, 1)?;
    let seq: i64 = get(row, 2)?;
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
        name: get(row, 0)?,
        service_uuid: Uuid::parse_str(&service).map_err(|e| corrupt("revision service", e))?,
        seq: u32::try_from(seq).map_err(|e| corrupt("revision seq", e))?,
        source,
        mode: DeliveryMode::parse(&mode).ok_or_else(|| corrupt("revision mode", &mode))?,
        probe_path: get(row, 9)?,
        http2: get(row, 11)?,
        created_at: from_micros(get(row, 10)?),
    })
}

fn read_execution(row: &Row) -> Result<Execution, StoreError> {
    let retry: i64 = get(row, 1)?;
    let service: String = get(row, 2)?;
    let status: String = get(row, 3)?;
    let attributes: String = get(row, 8)?;
    let ready: Option<i64> = get(row, 11)?;
    let delivered: Option<i64> = get(row, 12)?;
    let finished: Option<i64> = get(row, 13)?;
    Ok(Execution {
        question_uuid: get(row, 0)?,
        retry_count: u32::try_from(retry).map_err(|e| corrupt("retry_count", e))?,
        service_uuid: Uuid::parse_str(&service).map_err(|e| corrupt("execution service", e))?,
        status: ExecutionStatus::parse(&status)
            .ok_or_else(|| corrupt("execution status", &status))?,
        revision: get(row, 4)?,
        instance: get(row, 5)?,
        cold_start: get(row, 6)?,
        reason: get(row, 7)?,
        attributes: attrs_from(&attributes)?,
        data: get(row, 9)?,
        received_at: from_micros(get(row, 10)?),
        ready_at: ready.map(from_micros),
        delivered_at: delivered.map(from_micros),
        finished_at: finished.map(from_micros),
        asked_by: get(row, 14)?,
        dispatcher: get(row, 15)?,
    })
}

fn read_event(row: &Row) -> Result<EventRecord, StoreError> {
    let attributes: String = get(row, 3)?;
    Ok(EventRecord {
        id: get(row, 0)?,
        question_uuid: get(row, 1)?,
        kind: get(row, 2)?,
        attributes: attrs_from(&attributes)?,
        data: get(row, 4)?,
        published: get(row, 5)?,
        recorded_at: from_micros(get(row, 6)?),
    })
}

fn opt_micros(t: Option<SystemTime>) -> Option<i64> {
    t.map(micros)
}

async fn insert_event<C: GenericClient>(
    c: &C,
    event: &NewEvent,
    published: bool,
) -> Result<Option<i64>, StoreError> {
    let id = row(
        c,
        "INSERT INTO events (event_uuid, question_uuid, retry_count, kind, attributes, data, published, recorded_at_us) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (event_uuid) DO NOTHING RETURNING id",
        &[
            &event.event_uuid,
            &event.question_uuid,
            &event.retry_count.map(int),
            &event.kind,
            &attrs_json(&event.attributes),
            &event.data,
            &published,
            &micros(SystemTime::now()),
        ],
    )
    .await?;
    id.map(|r| get(&r, 0)).transpose()
}

#[async_trait]
impl RevisionStore for PgStore {
    async fn insert_revision(
        &self,
        service: &Service,
        revision: &NewRevision,
        now: SystemTime,
    ) -> Result<Revision, StoreError> {
        let uuid = service.uuid.to_string();
        let service_name = service.name.to_string();
        write_tx!(self, |tx| {
            // The service's row locked: its revisions are numbered one
            // writer at a time (a concurrent one is then a serialisation
            // failure, run again).
            if row(
                &tx,
                "SELECT 1 FROM services WHERE uuid = $1 FOR UPDATE",
                &[&uuid],
            )
            .await?
            .is_none()
            {
                return Err(StoreError::NotFound { uuid: service.uuid });
            }
            let last: Option<i64> = row(
                &tx,
                "SELECT MAX(seq) FROM revisions WHERE service_uuid = $1",
                &[&uuid],
            )
            .await?
            .map(|r| get(&r, 0))
            .transpose()?
            .flatten();
            let seq =
                u32::try_from(last.unwrap_or(0) + 1).map_err(|e| corrupt("revision seq", e))?;
            let made = Revision {
                name: Revision::name_for(&service_name, seq),
                service_uuid: service.uuid,
                seq,
                source: revision.source.clone(),
                mode: revision.mode,
                probe_path: revision.probe_path.clone(),
                http2: revision.http2,
                // As stored: to the microsecond.
                created_at: from_micros(micros(now)),
            };
            let (image, program, args, workdir) = crate::builds::source_columns(&made.source);
            exec(
                &tx,
                &format!(
                    "INSERT INTO revisions ({REVISION_COLUMNS}) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
                ),
                &[
                    &made.name,
                    &uuid,
                    &int(seq),
                    &made.source.runtime(),
                    &image,
                    &program,
                    &args,
                    &workdir,
                    &made.mode.as_str(),
                    &made.probe_path,
                    &micros(now),
                    &made.http2,
                ],
            )
            .await?;
            exec(
                &tx,
                "UPDATE services SET status = $2, generation = generation + 1, updated_at_us = $3 WHERE uuid = $1",
                &[&uuid, &ServiceStatus::Ready.as_str(), &micros(now)],
            )
            .await?;
            // A revision registered by hand serves at once, all traffic to
            // it; tags stay where they were.
            exec(
                &tx,
                "INSERT INTO routing (service_uuid, serving, tags, traffic) VALUES ($1, $2, '{}', '[]') \
                 ON CONFLICT (service_uuid) DO UPDATE SET serving = excluded.serving, traffic = '[]'",
                &[&uuid, &made.name],
            )
            .await?;
            Ok(made)
        })
    }

    async fn list_revisions(&self, service_uuid: Uuid) -> Result<Vec<Revision>, StoreError> {
        self.all(
            &format!(
                "SELECT {REVISION_COLUMNS} FROM revisions WHERE service_uuid = $1 ORDER BY seq DESC"
            ),
            &[&service_uuid.to_string()],
            read_revision,
        )
        .await
    }

    async fn serving_revision(&self, service_uuid: Uuid) -> Result<Option<Revision>, StoreError> {
        let c = self.client().await?;
        // One statement: the routed revision if routing names one, else the
        // newest that may serve.
        row(
            &c,
            &format!(
                "SELECT {REVISION_COLUMNS} FROM revisions r WHERE r.service_uuid = $1 AND ( \
                   r.name = (SELECT serving FROM routing WHERE service_uuid = $1) \
                   OR ((SELECT serving FROM routing WHERE service_uuid = $1) IS NULL AND r.state IS NULL)) \
                 ORDER BY r.seq DESC LIMIT 1"
            ),
            &[&service_uuid.to_string()],
        )
        .await?
        .as_ref()
        .map(read_revision)
        .transpose()
    }
}

#[async_trait]
impl ExecutionStore for PgStore {
    async fn insert_execution(&self, e: &Execution) -> Result<bool, StoreError> {
        let c = self.client().await?;
        let n = exec(
            &c,
            &format!(
                "INSERT INTO executions ({EXECUTION_COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
                 ON CONFLICT (question_uuid, retry_count) DO NOTHING"
            ),
            &[
                &e.question_uuid,
                &int(e.retry_count),
                &e.service_uuid.to_string(),
                &e.status.as_str(),
                &e.revision,
                &e.instance,
                &e.cold_start,
                &e.reason,
                &attrs_json(&e.attributes),
                &e.data,
                &micros(e.received_at),
                &opt_micros(e.ready_at),
                &opt_micros(e.delivered_at),
                &opt_micros(e.finished_at),
                &e.asked_by,
                &e.dispatcher,
            ],
        )
        .await?;
        Ok(n == 1)
    }

    async fn update_execution(
        &self,
        e: &Execution,
        event: Option<&NewEvent>,
    ) -> Result<Option<i64>, StoreError> {
        // An update by key and an insert-or-ignore: nothing read decides
        // what is written, so READ COMMITTED is enough (and spares the
        // predicate locks of SERIALIZABLE on the hottest write).
        write_tx!(self, tokio_postgres::IsolationLevel::ReadCommitted, |tx| {
            let n = exec(
                &tx,
                "UPDATE executions SET status = $3, revision = $4, instance = $5, cold_start = $6, \
                 reason = $7, ready_at_us = $8, delivered_at_us = $9, finished_at_us = $10 \
                 WHERE question_uuid = $1 AND retry_count = $2 AND dispatcher IS NOT DISTINCT FROM $11 \
                 AND NOT ($3 = 'waking' AND status NOT IN ('queued', 'waking'))",
                &[
                    &e.question_uuid,
                    &int(e.retry_count),
                    &e.status.as_str(),
                    &e.revision,
                    &e.instance,
                    &e.cold_start,
                    &e.reason,
                    &opt_micros(e.ready_at),
                    &opt_micros(e.delivered_at),
                    &opt_micros(e.finished_at),
                    &e.dispatcher,
                ],
            )
            .await?;
            if n == 0 {
                return Err(StoreError::Fenced {
                    question_uuid: e.question_uuid.clone(),
                    retry_count: e.retry_count,
                });
            }
            match event {
                Some(ev) => insert_event(&tx, ev, false).await,
                None => Ok(None),
            }
        })
    }

    async fn get_execution(&self, question_uuid: &str) -> Result<Option<Execution>, StoreError> {
        self.one(
            &format!(
                "SELECT {EXECUTION_COLUMNS} FROM executions WHERE question_uuid = $1 \
                 ORDER BY retry_count DESC LIMIT 1"
            ),
            &[&question_uuid],
            read_execution,
        )
        .await
    }

    async fn list_executions(
        &self,
        service_uuid: Option<Uuid>,
        status: Option<ExecutionStatus>,
        limit: u32,
    ) -> Result<Vec<Execution>, StoreError> {
        self.all(
            &format!(
                "SELECT {EXECUTION_COLUMNS} FROM executions \
                 WHERE ($1::TEXT IS NULL OR service_uuid = $1) AND ($2::TEXT IS NULL OR status = $2) \
                 ORDER BY received_at_us DESC LIMIT $3"
            ),
            &[
                &service_uuid.map(|u| u.to_string()),
                &status.map(ExecutionStatus::as_str),
                &int(limit),
            ],
        read_execution,
)
.await
    }

    async fn unfinished_executions(&self) -> Result<Vec<Execution>, StoreError> {
        self.all(
            &format!(
                "SELECT {EXECUTION_COLUMNS} FROM executions \
                 WHERE status IN ('queued', 'waking', 'running') ORDER BY received_at_us"
            ),
            &[],
            read_execution,
        )
        .await
    }

    async fn claim_executions(
        &self,
        services: &[Uuid],
        dispatcher: &str,
    ) -> Result<Vec<Execution>, StoreError> {
        let services: Vec<String> = services.iter().map(Uuid::to_string).collect();
        let mut claimed = self
            .all(
                &format!(
                    "UPDATE executions SET dispatcher = $1 \
                     WHERE service_uuid = ANY($2) AND status IN ('queued', 'waking', 'running') \
                     AND dispatcher IS DISTINCT FROM $1 RETURNING {EXECUTION_COLUMNS}"
                ),
                &[&dispatcher, &services],
                read_execution,
            )
            .await?;
        claimed.sort_by_key(|e| e.received_at);
        Ok(claimed)
    }
}

#[async_trait]
impl EventStore for PgStore {
    async fn record_event(
        &self,
        event: &NewEvent,
        published: bool,
    ) -> Result<Option<i64>, StoreError> {
        let c = self.client().await?;
        insert_event(&c, event, published).await
    }

    async fn mark_published(&self, event_id: i64) -> Result<(), StoreError> {
        let c = self.client().await?;
        exec(
            &c,
            "UPDATE events SET published = TRUE WHERE id = $1",
            &[&event_id],
        )
        .await?;
        Ok(())
    }

    async fn unpublished_events(&self) -> Result<Vec<EventRecord>, StoreError> {
        self.all(
            &format!("SELECT {EVENT_COLUMNS} FROM events WHERE NOT published ORDER BY id"),
            &[],
            read_event,
        )
        .await
    }

    async fn unpublished_events_of(
        &self,
        services: &[Uuid],
    ) -> Result<Vec<EventRecord>, StoreError> {
        let services: Vec<String> = services.iter().map(Uuid::to_string).collect();
        self.all(
            &format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE NOT published AND EXISTS \
                 (SELECT 1 FROM executions x WHERE x.question_uuid = events.question_uuid \
                 AND x.retry_count = events.retry_count AND x.service_uuid = ANY($1)) ORDER BY id"
            ),
            &[&services],
            read_event,
        )
        .await
    }

    async fn events_after(
        &self,
        question_uuid: &str,
        after: i64,
    ) -> Result<Vec<EventRecord>, StoreError> {
        self.all(
            &format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE question_uuid = $1 AND id > $2 ORDER BY id"
            ),
            &[&question_uuid, &after],
        read_event,
)
.await
    }

    async fn terminal_event(
        &self,
        question_uuid: &str,
        retry_count: u32,
    ) -> Result<Option<String>, StoreError> {
        let c = self.client().await?;
        let kinds = rows(
            &c,
            "SELECT kind FROM events WHERE question_uuid = $1 AND retry_count = $2 ORDER BY id",
            &[&question_uuid, &int(retry_count)],
        )
        .await?;
        for r in &kinds {
            let kind: String = get(r, 0)?;
            if is_terminal_kind(&kind) {
                return Ok(Some(kind));
            }
        }
        Ok(None)
    }

    async fn dead_letter(
        &self,
        source: &str,
        reason: &str,
        attributes: &Attributes,
        data: &[u8],
    ) -> Result<(), StoreError> {
        let c = self.client().await?;
        exec(
            &c,
            "INSERT INTO dead_letters (source, reason, attributes, data, recorded_at_us) VALUES ($1, $2, $3, $4, $5)",
            &[
                &source,
                &reason,
                &attrs_json(attributes),
                &data,
                &micros(SystemTime::now()),
            ],
        )
        .await?;
        Ok(())
    }
}
