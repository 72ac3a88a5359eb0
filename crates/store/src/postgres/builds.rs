//! The builder's state on PostgreSQL: triggers, builds and their logs,
//! webhook deliveries seen, revisions made by builds and how a service's
//! revisions are routed, and sealed secrets. The logic is the SQLite
//! store's (`crate::builds`), statement for statement.
//!
//! Text sorts with `COLLATE "C"`: byte order, as SQLite sorts, whatever the
//! database's locale.

use std::time::SystemTime;

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use rouse_core::build::{BuildStatus, RevisionState, Routing};
use rouse_core::revision::Revision;
use rouse_core::{Service, ServiceStatus};
use tokio_postgres::Row;
use uuid::Uuid;

use super::dispatch::read_revision;
use super::{PgStore, exec, exists, get, int, row, rows, write_tx};
use crate::builds::{
    BUILD_COLUMNS, INFO_COLUMNS, MAX_LOG_LINE_CHARS, TERMINAL_STATUSES, TRIGGER_COLUMNS,
    build_status, candidate_name, corrupt, json_list, list_from, parse_uuid, source_columns,
    state_column, state_from_column,
};
use crate::dispatch::REVISION_COLUMNS;
use crate::sqlite::{from_micros, micros};
use crate::{
    BuildOrigin, BuildRecord, BuildStore, DeliveryClaim, MAX_BUILD_LOG_LINES, NewRevision,
    RevisionInfo, RolloutStore, SecretStore, StoreError, TrialStore, TriggerRecord, TriggerStore,
};

fn read_trigger(row: &Row) -> Result<TriggerRecord, StoreError> {
    let service: String = get(row, 1)?;
    let included: String = get(row, 7)?;
    let ignored: String = get(row, 8)?;
    Ok(TriggerRecord {
        id: get(row, 0)?,
        service_uuid: parse_uuid("trigger service", &service)?,
        repo: get(row, 2)?,
        branch_pattern: get(row, 3)?,
        tag_pattern: get(row, 4)?,
        dockerfile: get(row, 5)?,
        context_dir: get(row, 6)?,
        included_files: list_from("trigger included files", &included)?,
        ignored_files: list_from("trigger ignored files", &ignored)?,
        webhook_secret_sealed: get(row, 9)?,
        github_token_sealed: get(row, 10)?,
        created_at: from_micros(get(row, 11)?),
    })
}

fn read_build(row: &Row) -> Result<BuildRecord, StoreError> {
    let service: String = get(row, 1)?;
    let status: String = get(row, 3)?;
    let step: Option<String> = get(row, 4)?;
    let last_lines: String = get(row, 11)?;
    let started: Option<i64> = get(row, 13)?;
    let finished: Option<i64> = get(row, 14)?;
    Ok(BuildRecord {
        id: get(row, 0)?,
        service_uuid: parse_uuid("build service", &service)?,
        trigger_id: get(row, 2)?,
        status: build_status(&status)?,
        step: step.as_deref().map(build_status).transpose()?,
        source: get(row, 5)?,
        commit: get(row, 6)?,
        branch: get(row, 7)?,
        revision: get(row, 8)?,
        image: get(row, 9)?,
        failure: get(row, 10)?,
        last_lines: list_from("build last lines", &last_lines)?,
        created_at: from_micros(get(row, 12)?),
        started_at: started.map(from_micros),
        finished_at: finished.map(from_micros),
        dockerfile: get(row, 15)?,
        cancel_requested: get(row, 16)?,
    })
}

/// A row of `REVISION_COLUMNS, INFO_COLUMNS`.
fn read_info(row: &Row) -> Result<RevisionInfo, StoreError> {
    let state: Option<String> = get(row, 17)?;
    Ok(RevisionInfo {
        revision: read_revision(row)?,
        origin: BuildOrigin {
            commit: get(row, 12)?,
            branch: get(row, 13)?,
            trigger_id: get(row, 14)?,
            build_id: get(row, 15)?,
            image_id: get(row, 16)?,
        },
        state: state_from_column(state.as_deref())?,
    })
}

async fn service_exists<C: GenericClient>(c: &C, uuid: Uuid) -> Result<(), StoreError> {
    if exists(
        c,
        "SELECT EXISTS (SELECT 1 FROM services WHERE uuid = $1)",
        &[&uuid.to_string()],
    )
    .await?
    {
        Ok(())
    } else {
        Err(StoreError::NotFound { uuid })
    }
}

async fn read_routing<C: GenericClient>(c: &C, uuid: Uuid) -> Result<Routing, StoreError> {
    let Some(r) = row(
        c,
        "SELECT serving, tags, traffic FROM routing WHERE service_uuid = $1",
        &[&uuid.to_string()],
    )
    .await?
    else {
        return Ok(Routing::default());
    };
    let tags: String = get(&r, 1)?;
    let traffic: String = get(&r, 2)?;
    Ok(Routing {
        serving: get(&r, 0)?,
        tags: serde_json::from_str(&tags).map_err(|e| corrupt("routing tags", e))?,
        traffic: serde_json::from_str(&traffic).map_err(|e| corrupt("routing traffic", e))?,
    })
}

async fn write_routing<C: GenericClient>(
    c: &C,
    uuid: Uuid,
    routing: &Routing,
) -> Result<(), StoreError> {
    let tags = serde_json::to_string(&routing.tags).map_err(|e| corrupt("routing tags", e))?;
    let traffic =
        serde_json::to_string(&routing.traffic).map_err(|e| corrupt("routing traffic", e))?;
    exec(
        c,
        "INSERT INTO routing (service_uuid, serving, tags, traffic) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (service_uuid) DO UPDATE SET serving = excluded.serving, tags = excluded.tags, \
         traffic = excluded.traffic",
        &[&uuid.to_string(), &routing.serving, &tags, &traffic],
    )
    .await?;
    Ok(())
}

/// Bumps the service's generation so that the dispatcher re-reads it.
async fn touch_service<C: GenericClient>(
    c: &C,
    uuid: Uuid,
    now: SystemTime,
) -> Result<(), StoreError> {
    exec(
        c,
        "UPDATE services SET status = $2, generation = generation + 1, updated_at_us = $3 WHERE uuid = $1",
        &[&uuid.to_string(), &ServiceStatus::Ready.as_str(), &micros(now)],
    )
    .await?;
    Ok(())
}

/// The next revision sequence number of a service.
async fn next_seq<C: GenericClient>(c: &C, uuid: Uuid) -> Result<u32, StoreError> {
    let last: Option<i64> = match row(
        c,
        "SELECT MAX(seq) FROM revisions WHERE service_uuid = $1",
        &[&uuid.to_string()],
    )
    .await?
    {
        Some(r) => get(&r, 0)?,
        None => None,
    };
    u32::try_from(last.unwrap_or(0) + 1).map_err(|e| corrupt("revision seq", e))
}

#[async_trait]
impl TriggerStore for PgStore {
    async fn insert_trigger(&self, t: &TriggerRecord) -> Result<(), StoreError> {
        let service = t.service_uuid.to_string();
        let (included, ignored) = (json_list(&t.included_files), json_list(&t.ignored_files));
        write_tx!(self, |tx| {
            service_exists(&tx, t.service_uuid).await?;
            let n = exec(
                &tx,
                &format!(
                    "INSERT INTO triggers ({TRIGGER_COLUMNS}) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT DO NOTHING"
                ),
                &[
                    &t.id,
                    &service,
                    &t.repo,
                    &t.branch_pattern,
                    &t.tag_pattern,
                    &t.dockerfile,
                    &t.context_dir,
                    &included,
                    &ignored,
                    &t.webhook_secret_sealed,
                    &t.github_token_sealed,
                    &micros(t.created_at),
                ],
            )
            .await?;
            if n == 0 {
                return Err(StoreError::Duplicate {
                    what: "trigger",
                    name: t.id.clone(),
                });
            }
            Ok(())
        })
    }

    async fn get_trigger(&self, id: &str) -> Result<Option<TriggerRecord>, StoreError> {
        self.one(
            &format!("SELECT {TRIGGER_COLUMNS} FROM triggers WHERE id = $1"),
            &[&id],
            read_trigger,
        )
        .await
    }

    async fn list_triggers(
        &self,
        service_uuid: Option<Uuid>,
    ) -> Result<Vec<TriggerRecord>, StoreError> {
        self.all(
            &format!(
                "SELECT {TRIGGER_COLUMNS} FROM triggers \
                 WHERE $1::TEXT IS NULL OR service_uuid = $1 ORDER BY created_at_us, id COLLATE \"C\""
            ),
            &[&service_uuid.map(|u| u.to_string())],
        read_trigger,
)
.await
    }

    async fn delete_trigger(&self, id: &str) -> Result<bool, StoreError> {
        write_tx!(self, |tx| {
            Ok(exec(&tx, "DELETE FROM triggers WHERE id = $1", &[&id]).await? == 1)
        })
    }

    async fn claim_delivery(&self, delivery_id: &str) -> Result<DeliveryClaim, StoreError> {
        write_tx!(self, |tx| {
            let n = exec(
                &tx,
                "INSERT INTO webhook_deliveries (delivery_id, received_at_us) VALUES ($1, $2) \
                 ON CONFLICT DO NOTHING",
                &[&delivery_id, &micros(SystemTime::now())],
            )
            .await?;
            Ok(if n == 1 {
                DeliveryClaim::New
            } else {
                DeliveryClaim::Duplicate
            })
        })
    }
}

#[async_trait]
impl BuildStore for PgStore {
    async fn insert_build(&self, b: &BuildRecord) -> Result<(), StoreError> {
        let service = b.service_uuid.to_string();
        let last_lines = json_list(&b.last_lines);
        write_tx!(self, |tx| {
            service_exists(&tx, b.service_uuid).await?;
            exec(
                &tx,
                &format!(
                    "INSERT INTO builds ({BUILD_COLUMNS}) VALUES \
                     ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
                ),
                &[
                    &b.id,
                    &service,
                    &b.trigger_id,
                    &b.status.as_str(),
                    &b.step.map(BuildStatus::as_str),
                    &b.source,
                    &b.commit,
                    &b.branch,
                    &b.revision,
                    &b.image,
                    &b.failure,
                    &last_lines,
                    &micros(b.created_at),
                    &b.started_at.map(micros),
                    &b.finished_at.map(micros),
                    &b.dockerfile,
                    &b.cancel_requested,
                ],
            )
            .await?;
            Ok(())
        })
    }

    async fn update_build(&self, b: &BuildRecord) -> Result<(), StoreError> {
        let last_lines = json_list(&b.last_lines);
        write_tx!(self, |tx| {
            exec(
                &tx,
                "UPDATE builds SET status = $2, step = $3, revision = $4, image = $5, failure = $6, \
                 last_lines = $7, started_at_us = $8, finished_at_us = $9 WHERE id = $1",
                &[
                    &b.id,
                    &b.status.as_str(),
                    &b.step.map(BuildStatus::as_str),
                    &b.revision,
                    &b.image,
                    &b.failure,
                    &last_lines,
                    &b.started_at.map(micros),
                    &b.finished_at.map(micros),
                ],
            )
            .await?;
            Ok(())
        })
    }

    async fn get_build(&self, id: &str) -> Result<Option<BuildRecord>, StoreError> {
        self.one(
            &format!("SELECT {BUILD_COLUMNS} FROM builds WHERE id = $1"),
            &[&id],
            read_build,
        )
        .await
    }

    async fn list_builds(
        &self,
        service_uuid: Option<Uuid>,
        unfinished: bool,
        limit: u32,
    ) -> Result<Vec<BuildRecord>, StoreError> {
        self.all(
            &format!(
                "SELECT {BUILD_COLUMNS} FROM builds \
                 WHERE ($1::TEXT IS NULL OR service_uuid = $1) \
                 AND (NOT $2::BOOLEAN OR status NOT IN {TERMINAL_STATUSES}) \
                 ORDER BY created_at_us DESC, id COLLATE \"C\" LIMIT $3"
            ),
            &[
                &service_uuid.map(|u| u.to_string()),
                &unfinished,
                &int(limit),
            ],
            read_build,
        )
        .await
    }

    async fn request_cancel(&self, id: &str) -> Result<bool, StoreError> {
        write_tx!(self, |tx| {
            let n = exec(
                &tx,
                &format!(
                    "UPDATE builds SET cancel_requested = TRUE WHERE id = $1 AND status NOT IN {TERMINAL_STATUSES}"
                ),
                &[&id],
            )
            .await?;
            Ok(n == 1)
        })
    }

    async fn append_build_log(
        &self,
        build_id: &str,
        lines: Vec<String>,
    ) -> Result<i64, StoreError> {
        write_tx!(self, |tx| {
            let mut last: i64 = match row(
                &tx,
                "SELECT COALESCE(MAX(seq), 0) FROM build_logs WHERE build_id = $1",
                &[&build_id],
            )
            .await?
            {
                Some(r) => get(&r, 0)?,
                None => 0,
            };
            for line in &lines {
                if last >= MAX_BUILD_LOG_LINES {
                    break;
                }
                last += 1;
                let line: String = line.chars().take(MAX_LOG_LINE_CHARS).collect();
                // A seq a concurrent append took is not in this
                // transaction's snapshot: DO NOTHING fails as a
                // serialisation failure, and the append runs again.
                let n = exec(
                    &tx,
                    "INSERT INTO build_logs (build_id, seq, line) VALUES ($1, $2, $3) \
                     ON CONFLICT DO NOTHING",
                    &[&build_id, &last, &line],
                )
                .await?;
                if n == 0 {
                    return Err(StoreError::Duplicate {
                        what: "build log line",
                        name: format!("{build_id} {last}"),
                    });
                }
            }
            Ok(last)
        })
    }

    async fn build_log_after(
        &self,
        build_id: &str,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        let c = self.client().await?;
        rows(
            &c,
            "SELECT seq, line FROM build_logs WHERE build_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            &[&build_id, &after, &int(limit)],
        )
        .await?
        .iter()
        .map(|r| Ok((get(r, 0)?, get(r, 1)?)))
        .collect()
    }
}

#[async_trait]
impl RolloutStore for PgStore {
    async fn insert_candidate_revision(
        &self,
        service: &Service,
        revision: &NewRevision,
        origin: &BuildOrigin,
        now: SystemTime,
    ) -> Result<Revision, StoreError> {
        let (uuid, service_name) = (service.uuid, service.name.to_string());
        let (image, program, args, workdir) = source_columns(&revision.source);
        write_tx!(self, |tx| {
            service_exists(&tx, uuid).await?;
            let seq = next_seq(&tx, uuid).await?;
            let name = candidate_name(&service_name, seq, origin);
            // A concurrent insert may have taken this seq (and name): its
            // row is not in this transaction's snapshot, so DO NOTHING fails
            // as a serialisation failure, run again with the next seq as
            // often as it takes (a unique violation is retried only a few
            // times).
            let n = exec(
                &tx,
                "INSERT INTO revisions (name, service_uuid, seq, runtime, image, program, args, workdir, \
                 mode, probe_path, created_at_us, commit_sha, branch, trigger_id, build_id, image_id, state, http2) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, 'candidate', $17) \
                 ON CONFLICT DO NOTHING",
                &[
                    &name,
                    &uuid.to_string(),
                    &int(seq),
                    &revision.source.runtime(),
                    &image,
                    &program,
                    &args,
                    &workdir,
                    &revision.mode.as_str(),
                    &revision.probe_path,
                    &micros(now),
                    &origin.commit,
                    &origin.branch,
                    &origin.trigger_id,
                    &origin.build_id,
                    &origin.image_id,
                    &revision.http2,
                ],
            )
            .await?;
            if n == 0 {
                return Err(StoreError::Duplicate {
                    what: "revision",
                    name,
                });
            }
            Ok(Revision {
                name,
                service_uuid: uuid,
                seq,
                source: revision.source.clone(),
                mode: revision.mode,
                probe_path: revision.probe_path.clone(),
                http2: revision.http2,
                created_at: from_micros(micros(now)),
            })
        })
    }

    async fn set_revision_state(&self, name: &str, state: RevisionState) -> Result<(), StoreError> {
        write_tx!(self, |tx| {
            exec(
                &tx,
                "UPDATE revisions SET state = $2 WHERE name = $1",
                &[&name, &state_column(state)],
            )
            .await?;
            Ok(())
        })
    }

    async fn trial(
        &self,
        name: &str,
    ) -> Result<Option<(RevisionState, Option<String>)>, StoreError> {
        let c = self.client().await?;
        let Some(r) = row(
            &c,
            "SELECT state, trial_failure FROM revisions WHERE name = $1",
            &[&name],
        )
        .await?
        else {
            return Ok(None);
        };
        let state: Option<String> = get(&r, 0)?;
        Ok(Some((state_from_column(state.as_deref())?, get(&r, 1)?)))
    }

    async fn revision_infos(&self, service_uuid: Uuid) -> Result<Vec<RevisionInfo>, StoreError> {
        self.all(
            &format!(
                "SELECT {REVISION_COLUMNS}, {INFO_COLUMNS} FROM revisions WHERE service_uuid = $1 ORDER BY seq DESC"
            ),
            &[&service_uuid.to_string()],
        read_info,
)
.await
    }

    async fn routing(&self, service_uuid: Uuid) -> Result<Routing, StoreError> {
        let c = self.client().await?;
        read_routing(&c, service_uuid).await
    }

    async fn set_routing(&self, service_uuid: Uuid, routing: &Routing) -> Result<(), StoreError> {
        write_tx!(self, |tx| {
            service_exists(&tx, service_uuid).await?;
            write_routing(&tx, service_uuid, routing).await?;
            touch_service(&tx, service_uuid, SystemTime::now()).await
        })
    }
}

#[async_trait]
impl TrialStore for PgStore {
    async fn candidates(&self) -> Result<Vec<Revision>, StoreError> {
        self.all(
            &format!(
                "SELECT {REVISION_COLUMNS} FROM revisions WHERE state = 'candidate' \
                 ORDER BY created_at_us, name COLLATE \"C\""
            ),
            &[],
            read_revision,
        )
        .await
    }

    async fn claim_trial(&self, name: &str) -> Result<bool, StoreError> {
        write_tx!(self, |tx| {
            let n = exec(
                &tx,
                "UPDATE revisions SET state = 'trying' WHERE name = $1 AND state = 'candidate'",
                &[&name],
            )
            .await?;
            Ok(n == 1)
        })
    }

    async fn record_trial(
        &self,
        name: &str,
        verdict: Result<(), String>,
    ) -> Result<bool, StoreError> {
        let (state, why) = match verdict {
            Ok(()) => (state_column(RevisionState::Passed), None),
            Err(why) => (state_column(RevisionState::Failed), Some(why)),
        };
        write_tx!(self, |tx| {
            let n = exec(
                &tx,
                "UPDATE revisions SET state = $2, trial_failure = $3 WHERE name = $1 AND state = 'trying'",
                &[&name, &state, &why],
            )
            .await?;
            Ok(n == 1)
        })
    }
}

#[async_trait]
impl SecretStore for PgStore {
    async fn set_secret(
        &self,
        service_uuid: Uuid,
        name: &str,
        sealed: &str,
        now: SystemTime,
    ) -> Result<(), StoreError> {
        write_tx!(self, |tx| {
            service_exists(&tx, service_uuid).await?;
            exec(
                &tx,
                "INSERT INTO secrets (service_uuid, name, sealed, updated_at_us) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (service_uuid, name) DO UPDATE SET sealed = excluded.sealed, \
                 updated_at_us = excluded.updated_at_us",
                &[&service_uuid.to_string(), &name, &sealed, &micros(now)],
            )
            .await?;
            // Instances started from now on get the new value.
            touch_service(&tx, service_uuid, now).await
        })
    }

    async fn secret_names(&self, service_uuid: Uuid) -> Result<Vec<String>, StoreError> {
        let c = self.client().await?;
        rows(
            &c,
            "SELECT name FROM secrets WHERE service_uuid = $1 ORDER BY name COLLATE \"C\"",
            &[&service_uuid.to_string()],
        )
        .await?
        .iter()
        .map(|r| get(r, 0))
        .collect()
    }

    async fn delete_secret(&self, service_uuid: Uuid, name: &str) -> Result<bool, StoreError> {
        write_tx!(self, |tx| {
            let n = exec(
                &tx,
                "DELETE FROM secrets WHERE service_uuid = $1 AND name = $2",
                &[&service_uuid.to_string(), &name],
            )
            .await?;
            if n == 1 {
                touch_service(&tx, service_uuid, SystemTime::now()).await?;
            }
            Ok(n == 1)
        })
    }

    async fn sealed_secrets(
        &self,
        service_uuid: Uuid,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let c = self.client().await?;
        rows(
            &c,
            "SELECT name, sealed FROM secrets WHERE service_uuid = $1 ORDER BY name COLLATE \"C\"",
            &[&service_uuid.to_string()],
        )
        .await?
        .iter()
        .map(|r| Ok((get(r, 0)?, get(r, 1)?)))
        .collect()
    }
}
