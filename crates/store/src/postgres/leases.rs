//! [`LeaseStore`] on PostgreSQL.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use super::{PgStore, exec, get, row, write_tx};
use crate::leases::until;
use crate::sqlite::{from_micros, micros};
use crate::{Lease, LeaseStore, StoreError};

#[async_trait]
impl LeaseStore for PgStore {
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<Lease, StoreError> {
        let (expires, now_us) = (micros(until(now, ttl)), micros(now));
        write_tx!(self, |tx| {
            exec(
                &tx,
                "INSERT INTO leases (name, holder, expires_at_us) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at_us = excluded.expires_at_us \
                 WHERE leases.holder = excluded.holder OR leases.expires_at_us < $4",
                &[&name, &holder, &expires, &now_us],
            )
            .await?;
            let found = row(
                &tx,
                "SELECT holder, expires_at_us FROM leases WHERE name = $1",
                &[&name],
            )
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("lease `{name}` vanished")))?;
            let current: String = get(&found, 0)?;
            Ok(if current == holder {
                Lease::Held
            } else {
                Lease::Taken {
                    holder: current,
                    until: from_micros(get(&found, 1)?),
                }
            })
        })
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let c = self.client().await?;
        exec(
            &c,
            "DELETE FROM leases WHERE name = $1 AND holder = $2",
            &[&name, &holder],
        )
        .await?;
        Ok(())
    }
}
