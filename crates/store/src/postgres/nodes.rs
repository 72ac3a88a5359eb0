//! [`NodeStore`] on PostgreSQL.

use async_trait::async_trait;
use tokio_postgres::Row;

use super::{PgStore, exec, get};
use crate::nodes::{NODE_COLUMNS, labels_from, labels_json};
use crate::sqlite::{from_micros, micros};
use crate::{NodeRecord, NodeStore, StoreError};

fn read_node(r: &Row) -> Result<NodeRecord, StoreError> {
    let capacity: i64 = get(r, 2)?;
    let labels: String = get(r, 3)?;
    Ok(NodeRecord {
        name: get(r, 0)?,
        docker_host: get(r, 1)?,
        capacity: u32::try_from(capacity)
            .map_err(|e| StoreError::Corrupt(format!("node capacity: {e}")))?,
        labels: labels_from(&labels)?,
        draining: get(r, 4)?,
        created_at: from_micros(get(r, 5)?),
    })
}

#[async_trait]
impl NodeStore for PgStore {
    async fn insert_node(&self, node: &NodeRecord) -> Result<(), StoreError> {
        let c = self.client().await?;
        let n = exec(
            &c,
            &format!(
                "INSERT INTO nodes ({NODE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (name) DO NOTHING"
            ),
            &[
                &node.name,
                &node.docker_host,
                &i64::from(node.capacity),
                &labels_json(node),
                &node.draining,
                &micros(node.created_at),
            ],
        )
        .await?;
        if n == 0 {
            return Err(StoreError::Duplicate {
                what: "node",
                name: node.name.clone(),
            });
        }
        Ok(())
    }

    async fn list_nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        self.all(
            &format!("SELECT {NODE_COLUMNS} FROM nodes ORDER BY name COLLATE \"C\""),
            &[],
            read_node,
        )
        .await
    }

    async fn set_node_draining(&self, name: &str, draining: bool) -> Result<bool, StoreError> {
        let c = self.client().await?;
        let n = exec(
            &c,
            "UPDATE nodes SET draining = $2 WHERE name = $1",
            &[&name, &draining],
        )
        .await?;
        Ok(n == 1)
    }

    async fn delete_node(&self, name: &str) -> Result<bool, StoreError> {
        let c = self.client().await?;
        Ok(exec(&c, "DELETE FROM nodes WHERE name = $1", &[&name]).await? == 1)
    }
}
