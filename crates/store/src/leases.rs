//! [`LeaseStore`] on SQLite.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use rusqlite::params;

use crate::sqlite::{from_micros, micros};
use crate::{Lease, LeaseRecord, LeaseStore, SqliteStore, StoreError};

/// Takes the lease if it is free, expired, the holder's own, or still held
/// by the previous holder named last (known to be dead).
pub(crate) const ACQUIRE: &str = "INSERT INTO leases (name, holder, expires_at_us) VALUES (?1, ?2, ?3) \
     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at_us = excluded.expires_at_us \
     WHERE leases.holder = excluded.holder OR leases.expires_at_us < ?4 OR leases.holder = ?5";

pub(crate) fn until(now: SystemTime, ttl: Duration) -> SystemTime {
    now.checked_add(ttl).unwrap_or(now)
}

/// Who holds lease `name` now, as `me` sees it.
fn current(conn: &rusqlite::Connection, name: &str, me: &str) -> Result<Lease, StoreError> {
    let (holder, expires): (String, i64) = conn.query_row(
        "SELECT holder, expires_at_us FROM leases WHERE name = ?1",
        [name],
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
        let (name, me, previous) = (name.to_owned(), holder.to_owned(), previous.to_owned());
        self.write(move |conn| {
            conn.execute(
                ACQUIRE,
                params![name, me, micros(until(now, ttl)), micros(now), previous],
            )?;
            current(conn, &name, &me)
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

    async fn renew_leases(
        &self,
        holder: &str,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<Vec<String>, StoreError> {
        let holder = holder.to_owned();
        self.write(move |conn| {
            let mut stmt = conn.prepare_cached(
                "UPDATE leases SET expires_at_us = ?2 WHERE holder = ?1 RETURNING name",
            )?;
            let names = stmt
                .query_map(params![holder, micros(until(now, ttl))], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(names)
        })
        .await
    }

    async fn leases(&self, prefix: &str) -> Result<Vec<LeaseRecord>, StoreError> {
        let prefix = prefix.to_owned();
        self.with(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT name, holder, expires_at_us FROM leases \
                 WHERE substr(name, 1, length(?1)) = ?1 ORDER BY name",
            )?;
            let rows = stmt
                .query_map([prefix], |r| {
                    Ok(LeaseRecord {
                        name: r.get(0)?,
                        holder: r.get(1)?,
                        until: from_micros(r.get(2)?),
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }
}
