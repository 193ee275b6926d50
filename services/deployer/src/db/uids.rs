//! The uid each service's instances run as (process target, deployer run as root): allocated
//! once from the configured range and kept in `service_uids`.
//!
//! Allocation is race-safe without locks: the lowest free uids are read, the first one with no
//! account in the system's user database is inserted with `ON CONFLICT DO NOTHING` (the primary
//! key on the service and the unique uid both count), and a lost race is retried: either another
//! deployer gave this service its uid meanwhile (read back), or took that uid for another
//! service (the next free one is tried).

use futures::future::BoxFuture;
use slipway_ids::ServiceId;
use sqlx::PgPool;

use crate::target::process::{UidRange, UidSource};

/// How many free candidates one attempt reads (some may belong to existing accounts).
const CANDIDATES: i64 = 32;
/// Attempts before giving up (each lost only to a concurrent allocation).
const ATTEMPTS: usize = 20;

/// Uids from `range`, one per service, stored in the deployer's schema.
pub struct PgUids {
    pool: PgPool,
    range: UidRange,
}

impl PgUids {
    pub fn new(pool: PgPool, range: UidRange) -> Self {
        Self { pool, range }
    }

    /// The service's uid, allocated if it has none yet.
    pub async fn uid(&self, service: ServiceId) -> Result<u32, String> {
        let db = |e: sqlx::Error| format!("database: {e}");
        for _ in 0..ATTEMPTS {
            if let Some(uid) = self.existing(service).await.map_err(db)? {
                return Ok(uid);
            }
            let free: Vec<i32> = sqlx::query_scalar(
                "SELECT candidate FROM generate_series($1::INTEGER, $2::INTEGER) AS candidate \
                 WHERE NOT EXISTS (SELECT 1 FROM service_uids WHERE uid = candidate) \
                 ORDER BY candidate LIMIT $3",
            )
            .bind(self.range.first() as i32)
            .bind(self.range.last() as i32)
            .bind(CANDIDATES)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
            if free.is_empty() {
                return Err(format!(
                    "every uid of the range {} is allocated: widen `process.uid_range`",
                    self.range
                ));
            }
            // A uid with an account (a person, a daemon) would share its files: skip it.
            let Some(candidate) = free.into_iter().find(|uid| !has_account(*uid as u32)) else {
                return Err(format!(
                    "the free uids at the start of {} belong to existing accounts: choose a \
                     range no account uses",
                    self.range
                ));
            };
            let inserted: Option<i32> = sqlx::query_scalar(
                "INSERT INTO service_uids (service_id, uid) VALUES ($1, $2) \
                 ON CONFLICT DO NOTHING RETURNING uid",
            )
            .bind(service)
            .bind(candidate)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
            if let Some(uid) = inserted {
                tracing::info!(service = %service, uid, "allocated a uid for the service's instances");
                return Ok(uid as u32);
            }
        }
        Err("could not allocate a uid: too many concurrent allocations".into())
    }

    async fn existing(&self, service: ServiceId) -> Result<Option<u32>, sqlx::Error> {
        let uid: Option<i32> =
            sqlx::query_scalar("SELECT uid FROM service_uids WHERE service_id = $1")
                .bind(service)
                .fetch_optional(&self.pool)
                .await?;
        Ok(uid.map(|u| u as u32))
    }
}

/// Whether the system's user database has an account with `uid`.
fn has_account(uid: u32) -> bool {
    // A lookup error is treated as "taken": better skip a uid than share one.
    !matches!(
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
        Ok(None)
    )
}

impl UidSource for PgUids {
    fn uid_for(&self, service: ServiceId) -> BoxFuture<'_, Result<u32, String>> {
        Box::pin(self.uid(service))
    }
}
