//! [`LeaseStore`] on PostgreSQL.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use deadpool_postgres::GenericClient;

use super::{PgStore, exec, get, row, write_tx};
use crate::leases::until;
use crate::sqlite::{from_micros, micros};
use crate::{Lease, LeaseRecord, LeaseStore, StoreError};
use tokio_postgres::Row;

/// Who holds lease `name` now, as `me` sees it.
async fn current<C: GenericClient>(c: &C, name: &str, me: &str) -> Result<Lease, StoreError> {
    let found = row(
        c,
        "SELECT holder, expires_at_us FROM leases WHERE name = $1",
        &[&name],
    )
    .await?
    .ok_or_else(|| StoreError::Corrupt(format!("lease `{name}` is missing")))?;
    let holder: String = get(&found, 0)?;
    Ok(if holder == me {
        Lease::Held
    } else {
        Lease::Taken {
            holder,
            until: from_micros(get(&found, 1)?),
        }
    })
}

#[async_trait]
impl LeaseStore for PgStore {
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<Lease, StoreError> {
        self.take_lease_from(name, holder, holder, ttl, now).await
    }

    async fn take_lease_from(
        &self,
        name: &str,
        holder: &str,
        previous: &str,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<Lease, StoreError> {
        let (expires, now_us) = (micros(until(now, ttl)), micros(now));
        write_tx!(self, |tx| {
            exec(
                &tx,
                "INSERT INTO leases (name, holder, expires_at_us) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at_us = excluded.expires_at_us \
                 WHERE leases.holder = excluded.holder OR leases.expires_at_us < $4 OR leases.holder = $5",
                &[&name, &holder, &expires, &now_us, &previous],
            )
            .await?;
            current(&tx, name, holder).await
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

    async fn renew_leases(
        &self,
        holder: &str,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<Vec<String>, StoreError> {
        self.all(
            "UPDATE leases SET expires_at_us = $2 WHERE holder = $1 RETURNING name",
            &[&holder, &micros(until(now, ttl))],
            |r| get(r, 0),
        )
        .await
    }

    async fn leases(&self, prefix: &str) -> Result<Vec<LeaseRecord>, StoreError> {
        self.all(
            "SELECT name, holder, expires_at_us FROM leases \
             WHERE left(name, length($1)) = $1 ORDER BY name COLLATE \"C\"",
            &[&prefix],
            read_lease,
        )
        .await
    }
}

fn read_lease(r: &Row) -> Result<LeaseRecord, StoreError> {
    Ok(LeaseRecord {
        name: get(r, 0)?,
        holder: get(r, 1)?,
        until: from_micros(get(r, 2)?),
    })
}
