//! [`LeaseStore`] on SQLite.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use rusqlite::params;

use crate::sqlite::{from_micros, micros};
use crate::{Lease, LeaseStore, SqliteStore, StoreError};

/// Takes the lease if it is free, expired or the holder's own.
pub(crate) const ACQUIRE: &str = "INSERT INTO leases (name, holder, expires_at_us) VALUES (?1, ?2, ?3) \
     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at_us = excluded.expires_at_us \
     WHERE leases.holder = excluded.holder OR leases.expires_at_us < ?4";

pub(crate) fn until(now: SystemTime, ttl: Duration) -> SystemTime {
    now.checked_add(ttl).unwrap_or(now)
}

#[async_trait]
impl LeaseStore for SqliteStore {
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<Lease, StoreError> {
        let (name, me) = (name.to_owned(), holder.to_owned());
        self.write(move |conn| {
            conn.execute(
                ACQUIRE,
                params![name, me, micros(until(now, ttl)), micros(now)],
            )?;
            let (holder, expires): (String, i64) = conn.query_row(
                "SELECT holder, expires_at_us FROM leases WHERE name = ?1",
                [&name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            Ok(if holder == me {
                Lease::Held
            } else {
                Lease::Taken {
                    holder,
                    until: from_micros(expires),
                }
            })
        })
        .await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.write(move |conn| {
            conn.execute(
                "DELETE FROM leases WHERE name = ?1 AND holder = ?2",
                params![name, holder],
            )?;
            Ok(())
        })
        .await
    }
}
