//! State export and import of a SQLite store: what is configured (services,
//! revisions, routing, triggers, sealed secrets, IAM, nodes) as one JSON
//! document with a format version, row for row, so that an export of the
//! imported store is the same document byte for byte. What happened
//! (executions, events, audit, builds) and what processes hold for
//! themselves (leases) stay out.

use std::path::Path;

use rusqlite::Connection;
use rusqlite::types::{Value as Sql, ValueRef};
use serde_json::{Map, Value};

use crate::StoreError;
use crate::backup::{BUSY_TIMEOUT, failed, open_read_only};

/// The document's `format`.
pub const EXPORT_FORMAT: &str = "rouse-export";
/// The document's `version`: bumped when its shape changes.
pub const EXPORT_VERSION: u64 = 1;

/// Tables an export carries, in the order an import writes them (each
/// after the tables it refers to).
pub(crate) const EXPORTED: &[&str] = &[
    "projects",
    "services",
    "revisions",
    "routing",
    "triggers",
    "secrets",
    "policies",
    "project_settings",
    "service_accounts",
    "principal_keys",
    "custom_roles",
    "iam_groups",
    "iam_group_members",
    "nodes",
];

/// Tables an export leaves out.
#[cfg(test)]
const LEFT_OUT: &[&str] = &[
    "executions",
    "events",
    "dead_letters",
    "audit",
    "iam_version",
    "builds",
    "build_logs",
    "webhook_deliveries",
    "leases",
];

/// The export document of the SQLite store at `source`, read in one
/// snapshot (servers may keep writing).
pub fn export_sqlite(source: &Path) -> Result<Value, StoreError> {
    let conn = open_read_only(source)?;
    conn.execute_batch("BEGIN")?;
    let schema_version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let mut tables = Map::new();
    for table in EXPORTED {
        let mut stmt = conn.prepare(&format!("SELECT * FROM {table} ORDER BY rowid"))?;
        let columns: Vec<String> = stmt.column_names().into_iter().map(str::to_owned).collect();
        let rows = stmt.query_map([], |row| {
            let mut object = Map::new();
            for (i, column) in columns.iter().enumerate() {
                let value = match row.get_ref(i)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(n) => Value::from(n),
                    ValueRef::Real(x) => Value::from(x),
                    ValueRef::Text(t) => Value::from(String::from_utf8_lossy(t).into_owned()),
                    ValueRef::Blob(_) => {
                        return Err(rusqlite::Error::InvalidColumnType(
                            i,
                            column.clone(),
                            rusqlite::types::Type::Blob,
                        ));
                    }
                };
                object.insert(column.clone(), value);
            }
            Ok(Value::Object(object))
        })?;
        let rows = rows.collect::<Result<Vec<Value>, _>>()?;
        tables.insert((*table).to_owned(), Value::Array(rows));
    }
    conn.execute_batch("COMMIT")?;
    Ok(serde_json::json!({
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "schema_version": schema_version,
        "tables": tables,
    }))
}

/// Rows written by [`import_sqlite`], per table (tables with none left out).
pub type Imported = Vec<(String, usize)>;

/// Writes the export document `doc` into the SQLite store at `target`
/// (created and migrated if missing), which must hold none of the exported
/// kinds of records yet. All or nothing: one transaction.
pub fn import_sqlite(target: &Path, doc: &Value) -> Result<Imported, StoreError> {
    let bad = |why: String| failed(target, why);
    if doc["format"] != EXPORT_FORMAT {
        return Err(bad(format!(
            "the document is not a Rouse export (its `format` is {}, not \"{EXPORT_FORMAT}\"); make one with `rouse admin export`",
            doc["format"]
        )));
    }
    let version = doc["version"].as_u64().unwrap_or(0);
    if version != EXPORT_VERSION {
        return Err(bad(format!(
            "the export has format version {version}; this Rouse reads version {EXPORT_VERSION}: import it with the Rouse that made it"
        )));
    }
    let Some(tables) = doc["tables"].as_object() else {
        return Err(bad("the export has no `tables` object".into()));
    };
    if let Some(unknown) = tables.keys().find(|t| !EXPORTED.contains(&t.as_str())) {
        return Err(bad(format!(
            "the export holds table `{unknown}`, which this Rouse does not import (it imports {})",
            EXPORTED.join(", ")
        )));
    }
    // Opening as a store creates and migrates it.
    drop(crate::SqliteStore::open(target)?);
    let mut conn = Connection::open(target).map_err(|e| bad(e.to_string()))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let exported = doc["schema_version"].as_i64().unwrap_or(i64::MAX);
    if exported > current {
        return Err(bad(format!(
            "the export is of schema version {exported}, newer than this Rouse's {current}: import it with a Rouse at least as new as the one that made it"
        )));
    }
    let tx = conn.transaction()?;
    for table in EXPORTED {
        let held: i64 = tx.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))?;
        if held > 0 {
            return Err(bad(format!(
                "the store is not empty ({table} holds {held} rows); import into a new data dir, before any server starts on it"
            )));
        }
    }
    let mut imported = Vec::new();
    for table in EXPORTED {
        let rows = match tables.get(*table) {
            None => continue,
            Some(Value::Array(rows)) => rows,
            Some(_) => return Err(bad(format!("table `{table}` is not a list of rows"))),
        };
        for (i, row) in rows.iter().enumerate() {
            let Some(row) = row.as_object() else {
                return Err(bad(format!("row {i} of `{table}` is not an object")));
            };
            let columns: Vec<&str> = row.keys().map(String::as_str).collect();
            let mut values = Vec::with_capacity(columns.len());
            for (column, value) in row {
                values.push(match value {
                    Value::Null => Sql::Null,
                    Value::Bool(b) => Sql::Integer(i64::from(*b)),
                    Value::Number(n) => match (n.as_i64(), n.as_f64()) {
                        (Some(i), _) => Sql::Integer(i),
                        (None, Some(x)) => Sql::Real(x),
                        (None, None) => {
                            return Err(bad(format!(
                                "`{table}`.`{column}` of row {i} is out of range: {n}"
                            )));
                        }
                    },
                    Value::String(s) => Sql::Text(s.clone()),
                    Value::Array(_) | Value::Object(_) => {
                        return Err(bad(format!(
                            "`{table}`.`{column}` of row {i} is not a plain value: {value}"
                        )));
                    }
                });
            }
            let names = columns
                .iter()
                .map(|c| format!("\"{}\"", c.replace('"', "\"\"")))
                .collect::<Vec<_>>()
                .join(", ");
            let marks = vec!["?"; columns.len()].join(", ");
            tx.execute(
                &format!("INSERT INTO {table} ({names}) VALUES ({marks})"),
                rusqlite::params_from_iter(values),
            )
            .map_err(|e| bad(format!("row {i} of `{table}` cannot be written: {e}")))?;
        }
        if !rows.is_empty() {
            imported.push(((*table).to_owned(), rows.len()));
        }
    }
    tx.commit()?;
    Ok(imported)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SqliteStore, Store};

    fn service(name: &str) -> rouse_core::Service {
        let project = rouse_core::ProjectName::parse("p").expect("project");
        let name = rouse_core::ServiceName::parse(&project, name).expect("name");
        rouse_core::Service::new(
            project,
            name,
            uuid::Uuid::new_v4(),
            std::time::SystemTime::now(),
        )
    }

    #[test]
    fn every_table_is_exported_or_left_out_on_purpose() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("rouse.db");
        drop(SqliteStore::open(&db).expect("open"));
        let conn = Connection::open(&db).expect("open");
        let mut stmt = conn
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
            )
            .expect("prepare");
        let tables: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("names");
        for table in &tables {
            assert!(
                EXPORTED.contains(&table.as_str()) || LEFT_OUT.contains(&table.as_str()),
                "table `{table}` is neither exported nor left out: decide which"
            );
        }
    }

    #[tokio::test]
    async fn an_import_of_an_export_exports_the_same_document_and_needs_an_empty_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("rouse.db");
        let store = SqliteStore::open(&db).expect("open");
        let mut s = service("kept");
        s.scaling.freeze = true;
        store.insert_service(&s).await.expect("insert");
        let doc = export_sqlite(&db).expect("export");
        assert_eq!(doc["tables"]["services"].as_array().map(Vec::len), Some(1));

        let copy = dir.path().join("copy/rouse.db");
        let imported = import_sqlite(&copy, &doc).expect("import");
        assert!(
            imported.contains(&("services".to_owned(), 1)),
            "{imported:?}"
        );
        let again = export_sqlite(&copy).expect("export the copy");
        assert_eq!(
            serde_json::to_string(&again).expect("json"),
            serde_json::to_string(&doc).expect("json"),
            "the same document"
        );
        let read = SqliteStore::open(&copy)
            .expect("open the copy")
            .get_service_by_uuid(s.uuid)
            .await
            .expect("read")
            .expect("imported");
        let original = store
            .get_service_by_uuid(s.uuid)
            .await
            .expect("read")
            .expect("stored");
        assert_eq!(read, original, "the same record, to the stored microsecond");

        let twice = import_sqlite(&copy, &doc).expect_err("not empty");
        assert!(twice.to_string().contains("not empty"), "{twice}");
        let mut other = doc.clone();
        other["version"] = Value::from(99);
        let newer = import_sqlite(&dir.path().join("x/rouse.db"), &other).expect_err("version");
        assert!(newer.to_string().contains("format version 99"), "{newer}");
        let junk = import_sqlite(&dir.path().join("y/rouse.db"), &serde_json::json!({"a": 1}))
            .expect_err("not an export");
        assert!(junk.to_string().contains("rouse admin export"), "{junk}");
    }
}
