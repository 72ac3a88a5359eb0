//! The broker's durable state, in its own SQLite file: topics and
//! subscriptions (as their protobuf encoding), messages, and which
//! subscription still owes which message with how many delivery attempts.
//!
//! One writer thread applies every change. It takes whatever is waiting and
//! commits it as one transaction (a group commit), so a burst of publishes
//! and acknowledgements costs one commit. A publish is answered, and its
//! messages become deliverable, only after its commit: what a publisher was
//! told is stored survives `kill -9`. The journal is WAL with
//! `synchronous=NORMAL`: durable against a crash of the process (the
//! operating system still holds the writes); a power cut may lose the last
//! commits, as it would for the emulator's clients anyway.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use prost::Message as _;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};

use crate::engine::{Engine, Msg, Published, Stored, Write};
use crate::error::BrokerError;
use crate::pb;

/// Jobs waiting for the writer at most; publishers wait beyond that.
const QUEUE: usize = 8192;
/// Jobs one transaction takes at most.
const GROUP: usize = 1024;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS topics (name TEXT PRIMARY KEY, proto BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS subscriptions (name TEXT PRIMARY KEY, proto BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY, proto BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS pending (
    sub TEXT NOT NULL,
    msg INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    acked INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (sub, msg)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pending_by_message ON pending (msg);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
";

/// A change to topics or subscriptions, answered once committed.
#[derive(Debug)]
pub enum Admin {
    PutTopic(pb::Topic),
    /// The topic, and its subscriptions as they are now (renamed to
    /// `_deleted-topic_`).
    DeleteTopic(String, Vec<pb::Subscription>),
    PutSubscription(Box<pb::Subscription>),
    DeleteSubscription(String),
}

pub enum Job {
    /// New messages (and, for a dead letter, the source's acknowledgement).
    Publish {
        published: Published,
        also: Vec<Write>,
        done: oneshot::Sender<Result<(), String>>,
    },
    /// Acknowledgements and attempts: not waited for (a crash before the
    /// commit means a redelivery, which at-least-once allows).
    Writes(Vec<Write>),
    Admin(Box<Admin>, oneshot::Sender<Result<(), String>>),
}

/// The engine behind its lock, shared by the writer (which delivers what
/// it committed) and the servers.
pub type Shared = Arc<Mutex<Engine>>;

pub fn lock(engine: &Shared) -> MutexGuard<'_, Engine> {
    engine
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The writer's handle.
#[derive(Debug, Clone)]
pub struct Persist {
    jobs: mpsc::Sender<Job>,
}

impl Persist {
    /// Opens (or creates) the store at `path`, loads it into a new engine
    /// and starts the writer.
    pub fn open(path: &Path) -> Result<(Self, Shared, std::thread::JoinHandle<()>), BrokerError> {
        let conn = Connection::open(path).map_err(|e| {
            BrokerError::Internal(format!(
                "cannot open the broker's store {}: {e}",
                path.display()
            ))
        })?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;",
        )
        .and_then(|()| conn.execute_batch(SCHEMA))
        .map_err(|e| internal("prepare the store", &e))?;
        let engine = load(&conn)?;
        let shared: Shared = Arc::new(Mutex::new(engine));
        let (jobs, rx) = mpsc::channel(QUEUE);
        let writer = shared.clone();
        let thread = std::thread::Builder::new()
            .name("broker-writer".into())
            .spawn(move || write_loop(conn, rx, &writer))
            .map_err(|e| BrokerError::Internal(format!("cannot start the broker's writer: {e}")))?;
        Ok((Self { jobs }, shared, thread))
    }

    /// A place in the writer's queue for one publish. Take it before the
    /// engine numbers the messages and send while still holding the
    /// engine's lock: the writer then commits and delivers publishes in id
    /// order, so two publishers of one ordering key cannot overtake each
    /// other between numbering and queueing.
    pub async fn reserve(&self) -> Result<Reserved, BrokerError> {
        self.jobs
            .clone()
            .reserve_owned()
            .await
            .map(Reserved)
            .map_err(|_| BrokerError::Internal("the broker's writer has stopped".into()))
    }

    /// Queues acknowledgements and attempts.
    pub async fn writes(&self, writes: Vec<Write>) {
        if !writes.is_empty() {
            let _ = self.send(Job::Writes(writes)).await;
        }
    }

    pub async fn admin(&self, change: Admin) -> Result<(), BrokerError> {
        let (done, result) = oneshot::channel();
        self.send(Job::Admin(Box::new(change), done)).await?;
        answer(result).await
    }

    async fn send(&self, job: Job) -> Result<(), BrokerError> {
        self.jobs
            .send(job)
            .await
            .map_err(|_| BrokerError::Internal("the broker's writer has stopped".into()))
    }
}

/// A reserved place in the writer's queue ([`Persist::reserve`]).
pub struct Reserved(mpsc::OwnedPermit<Job>);

impl Reserved {
    /// Queues published messages (and, for a dead letter, the source's
    /// acknowledgement) without waiting; the answer comes once they are
    /// committed, and they are delivered then.
    pub fn publish(self, published: Published, also: Vec<Write>) -> Committed {
        let (done, result) = oneshot::channel();
        self.0.send(Job::Publish {
            published,
            also,
            done,
        });
        Committed(result)
    }
}

/// The commit of a queued publish, to wait for.
pub struct Committed(oneshot::Receiver<Result<(), String>>);

impl Committed {
    pub async fn wait(self) -> Result<(), BrokerError> {
        answer(self.0).await
    }
}

async fn answer(result: oneshot::Receiver<Result<(), String>>) -> Result<(), BrokerError> {
    match result.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(BrokerError::Internal(e)),
        Err(_) => Err(BrokerError::Internal(
            "the broker's writer stopped before committing".into(),
        )),
    }
}

fn internal(what: &str, e: &rusqlite::Error) -> BrokerError {
    BrokerError::Internal(format!("broker store: cannot {what}: {e}"))
}

fn load(conn: &Connection) -> Result<Engine, BrokerError> {
    let read = |e: rusqlite::Error| internal("read the store", &e);
    let next_id: u64 = conn
        .query_row("SELECT value FROM meta WHERE key = 'next_id'", [], |r| {
            r.get::<_, i64>(0)
        })
        .optional()
        .map_err(read)?
        .map_or(1, |v| v.unsigned_abs());
    let mut engine = Engine::new(next_id);
    let now = Instant::now();
    let mut stmt = conn.prepare("SELECT proto FROM topics").map_err(read)?;
    let topics = stmt
        .query_map([], |r| r.get::<_, Vec<u8>>(0))
        .map_err(read)?;
    for blob in topics {
        let topic = pb::Topic::decode(blob.map_err(read)?.as_slice())
            .map_err(|e| BrokerError::Internal(format!("a stored topic is corrupt: {e}")))?;
        engine.restore_topic(topic);
    }
    let mut stmt = conn
        .prepare("SELECT proto FROM subscriptions")
        .map_err(read)?;
    let subs = stmt
        .query_map([], |r| r.get::<_, Vec<u8>>(0))
        .map_err(read)?;
    for blob in subs {
        let sub = pb::Subscription::decode(blob.map_err(read)?.as_slice())
            .map_err(|e| BrokerError::Internal(format!("a stored subscription is corrupt: {e}")))?;
        engine.restore_subscription(sub, now)?;
    }
    let mut stmt = conn
        .prepare(
            "SELECT p.sub, p.msg, p.attempts, p.acked, m.proto FROM pending p \
             JOIN messages m ON m.id = p.msg ORDER BY p.msg",
        )
        .map_err(read)?;
    let mut rows = stmt.query([]).map_err(read)?;
    let mut last: Option<Msg> = None;
    while let Some(row) = rows.next().map_err(read)? {
        let sub: String = row.get(0).map_err(read)?;
        let id: i64 = row.get(1).map_err(read)?;
        let attempts: i64 = row.get(2).map_err(read)?;
        let acked: bool = row.get(3).map_err(read)?;
        let id = id.unsigned_abs();
        let msg = match &last {
            Some(m) if m.id == id => m.clone(),
            _ => {
                let blob: Vec<u8> = row.get(4).map_err(read)?;
                let message = pb::PubsubMessage::decode(blob.as_slice()).map_err(|e| {
                    BrokerError::Internal(format!("stored message {id} is corrupt: {e}"))
                })?;
                let m = Stored::restored(id, message);
                last = Some(m.clone());
                m
            }
        };
        engine.restore(
            &sub,
            msg,
            u32::try_from(attempts).unwrap_or(u32::MAX),
            acked,
        );
    }
    Ok(engine)
}

fn write_loop(mut conn: Connection, mut rx: mpsc::Receiver<Job>, engine: &Shared) {
    let mut batch = Vec::with_capacity(GROUP);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < GROUP {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let next_id = lock(engine).next_id();
        let outcome = commit(&mut conn, &batch, next_id).map_err(|e| {
            tracing::error!(error = %e, "the broker could not commit; the calls waiting for it fail");
            format!("the broker's store failed: {e}")
        });
        // Deliver what was committed, in commit order, then answer.
        if outcome.is_ok() {
            let mut engine = lock(engine);
            for job in &batch {
                if let Job::Publish { published, .. } = job {
                    engine.deliver(published);
                }
            }
        }
        for job in batch.drain(..) {
            match job {
                Job::Publish { done, .. } | Job::Admin(_, done) => {
                    let _ = done.send(outcome.clone());
                }
                Job::Writes(_) => {}
            }
        }
    }
}

fn commit(conn: &mut Connection, batch: &[Job], next_id: u64) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    for job in batch {
        match job {
            Job::Publish {
                published, also, ..
            } => {
                for (msg, subs) in &published.messages {
                    if subs.is_empty() {
                        continue;
                    }
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO messages (id, proto) VALUES (?1, ?2)",
                    )?
                    .execute(params![msg.id as i64, msg.message.encode_to_vec()])?;
                    let mut owe = tx.prepare_cached(
                        "INSERT OR IGNORE INTO pending (sub, msg) VALUES (?1, ?2)",
                    )?;
                    for sub in subs {
                        owe.execute(params![sub.as_ref(), msg.id as i64])?;
                    }
                }
                for write in also {
                    apply(&tx, write)?;
                }
            }
            Job::Writes(writes) => {
                for write in writes {
                    apply(&tx, write)?;
                }
            }
            Job::Admin(change, _) => admin(&tx, change)?,
        }
    }
    tx.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES ('next_id', ?1)")?
        .execute([next_id as i64])?;
    tx.commit()
}

fn apply(tx: &rusqlite::Transaction<'_>, write: &Write) -> rusqlite::Result<()> {
    match write {
        Write::Done {
            sub,
            id,
            retain: true,
        } => {
            tx.prepare_cached("UPDATE pending SET acked = 1 WHERE sub = ?1 AND msg = ?2")?
                .execute(params![sub.as_ref(), *id as i64])?;
        }
        Write::Done { sub, id, .. } => {
            tx.prepare_cached("DELETE FROM pending WHERE sub = ?1 AND msg = ?2")?
                .execute(params![sub.as_ref(), *id as i64])?;
            tx.prepare_cached(
                "DELETE FROM messages WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM pending WHERE msg = ?1)",
            )?
            .execute([*id as i64])?;
        }
        Write::Owed { sub, id } => {
            tx.prepare_cached("UPDATE pending SET acked = 0 WHERE sub = ?1 AND msg = ?2")?
                .execute(params![sub.as_ref(), *id as i64])?;
        }
        Write::Attempts { sub, id, attempts } => {
            tx.prepare_cached("UPDATE pending SET attempts = ?3 WHERE sub = ?1 AND msg = ?2")?
                .execute(params![sub.as_ref(), *id as i64, i64::from(*attempts)])?;
        }
        Write::DeadLetter { sub, msg, .. } => {
            // Reaches the store only as part of the forwarding publish.
            apply(
                tx,
                &Write::Done {
                    sub: sub.clone(),
                    id: msg.id,
                    retain: false,
                },
            )?;
        }
        Write::SubscriptionExpired { sub } => {
            admin(tx, &Admin::DeleteSubscription(sub.to_string()))?;
        }
    }
    Ok(())
}

fn admin(tx: &rusqlite::Transaction<'_>, change: &Admin) -> rusqlite::Result<()> {
    match change {
        Admin::PutTopic(topic) => {
            tx.execute(
                "INSERT OR REPLACE INTO topics (name, proto) VALUES (?1, ?2)",
                params![topic.name, topic.encode_to_vec()],
            )?;
        }
        Admin::DeleteTopic(name, subs) => {
            tx.execute("DELETE FROM topics WHERE name = ?1", [name])?;
            for sub in subs {
                tx.execute(
                    "INSERT OR REPLACE INTO subscriptions (name, proto) VALUES (?1, ?2)",
                    params![sub.name, sub.encode_to_vec()],
                )?;
            }
        }
        Admin::PutSubscription(sub) => {
            tx.execute(
                "INSERT OR REPLACE INTO subscriptions (name, proto) VALUES (?1, ?2)",
                params![sub.name, sub.encode_to_vec()],
            )?;
        }
        Admin::DeleteSubscription(name) => {
            tx.execute("DELETE FROM pending WHERE sub = ?1", [name])?;
            tx.execute("DELETE FROM subscriptions WHERE name = ?1", [name])?;
            tx.execute(
                "DELETE FROM messages WHERE NOT EXISTS (SELECT 1 FROM pending WHERE msg = messages.id)",
                [],
            )?;
        }
    }
    Ok(())
}
