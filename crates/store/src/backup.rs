//! An online backup of a SQLite store: `VACUUM INTO` a new file, taken in
//! one read transaction, so it is consistent while servers keep writing
//! (WAL lets them), then checked by opening it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::StoreError;

/// How long a backup, export or import waits for a lock another process
/// holds.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// An error about the file at `path`, saying why.
pub(crate) fn failed(path: &Path, why: impl Into<String>) -> StoreError {
    StoreError::Open {
        path: path.display().to_string(),
        source: why.into().into(),
    }
}

/// A read-only connection to the existing SQLite store at `source`: what
/// is read from it must not migrate or otherwise change it.
pub(crate) fn open_read_only(source: &Path) -> Result<Connection, StoreError> {
    if !source.is_file() {
        return Err(failed(
            source,
            "no store here; pass the server's --data-dir (or --store with the SQLite file)",
        ));
    }
    let conn = Connection::open_with_flags(source, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| failed(source, e.to_string()))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

/// What a backup holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    pub path: PathBuf,
    /// The store's schema version (`PRAGMA user_version`).
    pub schema_version: i64,
    pub services: i64,
    pub revisions: i64,
    pub bytes: u64,
}

/// Copies the SQLite store at `source` to the new file `target`, which must
/// not exist yet, and checks the copy (`PRAGMA integrity_check`).
pub fn backup_sqlite(source: &Path, target: &Path) -> Result<Backup, StoreError> {
    if target.exists() {
        return Err(failed(
            target,
            "exists already; a backup never overwrites a file: name a new one",
        ));
    }
    let target_str = target
        .to_str()
        .ok_or_else(|| failed(target, "the path is not UTF-8; name another file"))?;
    let conn = open_read_only(source)?;
    conn.execute("VACUUM INTO ?1", [target_str])
        .map_err(|e| failed(target, format!("the backup failed: {e}")))?;
    drop(conn);
    let copy = Connection::open_with_flags(target, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| failed(target, e.to_string()))?;
    let integrity: String = copy.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    if integrity != "ok" {
        return Err(failed(
            target,
            format!("the copy fails SQLite's integrity check: {integrity}"),
        ));
    }
    let count = |table: &str| -> Result<i64, StoreError> {
        Ok(copy.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))?)
    };
    Ok(Backup {
        path: target.to_owned(),
        schema_version: copy.query_row("PRAGMA user_version", [], |r| r.get(0))?,
        services: count("services")?,
        revisions: count("revisions")?,
        bytes: std::fs::metadata(target).map_or(0, |m| m.len()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SqliteStore, Store};

    #[tokio::test]
    async fn a_backup_is_a_store_with_the_same_services_and_never_overwrites() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("rouse.db");
        let store = SqliteStore::open(&db).expect("open");
        let project = rouse_core::ProjectName::parse("p").expect("project");
        let name = rouse_core::ServiceName::parse(&project, "kept").expect("name");
        let service = rouse_core::Service::new(
            project,
            name,
            uuid::Uuid::new_v4(),
            std::time::SystemTime::now(),
        );
        store.insert_service(&service).await.expect("insert");

        let target = dir.path().join("backup.db");
        let backup = backup_sqlite(&db, &target).expect("backup while the store is open");
        assert_eq!((backup.services, backup.revisions), (1, 0));
        assert!(backup.schema_version > 0);
        let copy = SqliteStore::open(&target).expect("the backup opens as a store");
        let read = copy
            .get_service_by_uuid(service.uuid)
            .await
            .expect("read")
            .expect("the service is in the backup");
        assert_eq!(read.name, service.name);

        let again = backup_sqlite(&db, &target).expect_err("the file exists");
        assert!(again.to_string().contains("never overwrites"), "{again}");
        let missing = backup_sqlite(&dir.path().join("none.db"), &dir.path().join("b2.db"))
            .expect_err("no store");
        assert!(missing.to_string().contains("--data-dir"), "{missing}");
    }
}
