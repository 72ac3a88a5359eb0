//! [`NodeStore`] on SQLite.

use async_trait::async_trait;
use rusqlite::params;

use crate::sqlite::{Cached, from_micros, micros};
use crate::{NodeRecord, NodeStore, SqliteStore, StoreError};

pub(crate) const NODE_COLUMNS: &str =
    "name, docker_host, capacity, labels, draining, created_at_us";

/// The labels column: a JSON object of strings.
pub(crate) fn labels_json(node: &NodeRecord) -> String {
    serde_json::to_string(&node.labels).unwrap_or_else(|_| "{}".into())
}

pub(crate) fn labels_from(
    json: &str,
) -> Result<std::collections::BTreeMap<String, String>, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("node labels: {e}")))
}

#[async_trait]
impl NodeStore for SqliteStore {
    async fn insert_node(&self, node: &NodeRecord) -> Result<(), StoreError> {
        let node = node.clone();
        self.write(move |conn| {
            let n = conn.run(
                &format!(
                    "INSERT OR IGNORE INTO nodes ({NODE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
                ),
                params![
                    node.name,
                    node.docker_host,
                    node.capacity,
                    labels_json(&node),
                    node.draining,
                    micros(node.created_at)
                ],
            )?;
            if n == 0 {
                return Err(StoreError::Duplicate {
                    what: "node",
                    name: node.name,
                });
            }
            Ok(())
        })
        .await
    }

    async fn list_nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        self.with(|conn| {
            let mut stmt =
                conn.prepare_cached(&format!("SELECT {NODE_COLUMNS} FROM nodes ORDER BY name"))?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, u32>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, bool>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            })?;
            rows.map(|row| {
                let (name, docker_host, capacity, labels, draining, created) = row?;
                Ok(NodeRecord {
                    name,
                    docker_host,
                    capacity,
                    labels: labels_from(&labels)?,
                    draining,
                    created_at: from_micros(created),
                })
            })
            .collect()
        })
        .await
    }

    async fn set_node_draining(&self, name: &str, draining: bool) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.write(move |conn| {
            Ok(conn.run(
                "UPDATE nodes SET draining = ?2 WHERE name = ?1",
                params![name, draining],
            )? == 1)
        })
        .await
    }

    async fn delete_node(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.write(move |conn| Ok(conn.run("DELETE FROM nodes WHERE name = ?1", [name])? == 1))
            .await
    }
}
