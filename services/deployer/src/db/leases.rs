//! Leases on deployments: which replica drives which deployment, in which epoch, until when.
//!
//! A claim takes runnable deployments whose lease is free or expired, increments their epoch
//! and records the claim, all in one transaction (`SKIP LOCKED`, so two replicas claiming at
//! once never take the same row). Every later write of the driver is compare-and-set on
//! `(lease_owner, lease_epoch)` ([`FencedError::Lost`] when no row matches): a replica whose
//! lease expired and was taken over writes nothing more, and so publishes nothing more.

use std::time::Duration;

use slipway_ids::ReplicaId;
use sqlx::postgres::PgQueryResult;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// A replica's hold on one deployment in one epoch: what the driver's writes are fenced on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub deployment: Uuid,
    pub owner: ReplicaId,
    pub epoch: i64,
}

/// A lease just claimed.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub lease: Lease,
    /// The owner whose lease had expired without being released (a takeover), if any.
    pub taken_over_from: Option<String>,
}

/// Why a fenced write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum FencedError {
    #[error("database")]
    Database(#[from] sqlx::Error),
    /// Another replica holds the deployment now (or the lease was released): stop driving.
    #[error("the lease on deployment {deployment} (epoch {epoch}) is no longer held")]
    Lost { deployment: Uuid, epoch: i64 },
}

impl Lease {
    /// Answers `Lost` when a compare-and-set write matched no row.
    pub fn fenced(&self, done: PgQueryResult) -> Result<(), FencedError> {
        if done.rows_affected() == 0 {
            return Err(FencedError::Lost {
                deployment: self.deployment,
                epoch: self.epoch,
            });
        }
        Ok(())
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Claims up to `limit` runnable deployments for `owner` for `ttl`: active ones, and the oldest
/// queued one of each service and environment that has no active one, whose lease is free or
/// expired, skipping `driving` (the ones this replica drives already).
pub async fn claim(
    pool: &PgPool,
    owner: &ReplicaId,
    ttl: Duration,
    driving: &[Uuid],
    limit: i64,
) -> Result<Vec<Claimed>, sqlx::Error> {
    let rows: Vec<(Uuid, i64, Option<String>)> = sqlx::query_as(
        "WITH picked AS ( \
             SELECT d.id, d.lease_owner AS previous FROM deployments d \
             WHERE (d.lease_owner IS NULL OR d.lease_expires_at < now()) \
             AND NOT (d.id = ANY($3)) \
             AND (d.status IN ('progressing', 'rolling_back') \
                  OR (d.status = 'queued' AND NOT EXISTS (SELECT 1 FROM deployments a \
                      WHERE a.service_id = d.service_id AND a.environment = d.environment \
                      AND (a.status IN ('progressing', 'rolling_back') \
                           OR (a.status = 'queued' AND a.created_at < d.created_at))))) \
             ORDER BY d.created_at LIMIT $4 \
             FOR UPDATE OF d SKIP LOCKED), \
         claimed AS ( \
             UPDATE deployments u SET lease_owner = $1, lease_epoch = u.lease_epoch + 1, \
             lease_expires_at = now() + $2 * interval '1 millisecond' \
             FROM picked WHERE u.id = picked.id \
             RETURNING u.id, u.lease_epoch, picked.previous), \
         history AS ( \
             INSERT INTO deployment_claims (deployment_id, epoch, owner) \
             SELECT id, lease_epoch, $1 FROM claimed) \
         SELECT id, lease_epoch, previous FROM claimed",
    )
    .bind(owner)
    .bind(millis(ttl))
    .bind(driving)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(deployment, epoch, previous)| Claimed {
            lease: Lease {
                deployment,
                owner: owner.clone(),
                epoch,
            },
            taken_over_from: previous,
        })
        .collect())
}

/// Extends the lease by `ttl` from now; `Lost` when it is no longer held. An expired lease that
/// nobody took over is still this owner's, so renewing it is safe.
pub async fn renew(pool: &PgPool, lease: &Lease, ttl: Duration) -> Result<(), FencedError> {
    let done = sqlx::query(
        "WITH renewed AS ( \
             UPDATE deployments SET lease_expires_at = now() + $4 * interval '1 millisecond' \
             WHERE id = $1 AND lease_owner = $2 AND lease_epoch = $3 RETURNING id) \
         UPDATE deployment_claims SET renewed_at = now() \
         WHERE deployment_id = $1 AND epoch = $3 AND EXISTS (SELECT 1 FROM renewed)",
    )
    .bind(lease.deployment)
    .bind(&lease.owner)
    .bind(lease.epoch)
    .bind(millis(ttl))
    .execute(pool)
    .await?;
    lease.fenced(done)
}

/// Lets go of the lease (the deployment ended, or this replica gives it up): another replica
/// may claim it at once. In the caller's transaction, so a finish and its release are one.
/// A queued deployment given up also loses its deadline for being resolved: the next claim
/// gives it a fresh one (a takeover after its owner died keeps it, so it still ends).
pub async fn release(conn: &mut PgConnection, lease: &Lease) -> Result<(), FencedError> {
    let done = sqlx::query(
        "WITH released AS ( \
             UPDATE deployments SET lease_owner = NULL, lease_expires_at = NULL, \
             step_deadline = CASE WHEN status = 'queued' THEN NULL ELSE step_deadline END \
             WHERE id = $1 AND lease_owner = $2 AND lease_epoch = $3 RETURNING id) \
         UPDATE deployment_claims SET released_at = now(), renewed_at = now() \
         WHERE deployment_id = $1 AND epoch = $3 AND EXISTS (SELECT 1 FROM released)",
    )
    .bind(lease.deployment)
    .bind(&lease.owner)
    .bind(lease.epoch)
    .execute(conn)
    .await?;
    lease.fenced(done)
}

/// Checks inside the caller's transaction that `lease` is still held, and keeps it so (the
/// row stays locked, so no takeover commits) until that transaction ends. For writes that are
/// not themselves compare-and-set on the lease, such as the route step's weights.
pub async fn fence(conn: &mut PgConnection, lease: &Lease) -> Result<(), FencedError> {
    let done = sqlx::query(
        "UPDATE deployments SET lease_epoch = lease_epoch \
         WHERE id = $1 AND lease_owner = $2 AND lease_epoch = $3",
    )
    .bind(lease.deployment)
    .bind(&lease.owner)
    .bind(lease.epoch)
    .execute(conn)
    .await?;
    lease.fenced(done)
}

/// One claim of the history.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct Claim {
    pub deployment_id: Uuid,
    pub epoch: i64,
    pub owner: String,
    pub claimed_at: chrono::DateTime<chrono::Utc>,
    pub renewed_at: chrono::DateTime<chrono::Utc>,
    pub released_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The claims of one deployment, oldest first.
pub async fn history(pool: &PgPool, deployment: Uuid) -> Result<Vec<Claim>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM deployment_claims WHERE deployment_id = $1 ORDER BY epoch")
        .bind(deployment)
        .fetch_all(pool)
        .await
}
