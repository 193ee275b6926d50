//! Leases: how several builder replicas share the queue without ever driving one build twice.
//!
//! A replica claims a build whose lease is free (queued) or ran out (running, but its owner
//! stopped renewing): in one transaction it bumps `lease_epoch`, becomes `lease_owner` until
//! `lease_expires_at`, and records the claim in `build_claims`. While it builds it renews the
//! lease every third of the ttl ([`keep`]). Every later write of the build (step, log lines,
//! requeue, finish) is compare-and-set on owner and epoch: when no row matches, the lease was
//! taken over, and the write fails with [`LeaseError::Lost`]; the old owner then stops without
//! publishing anything. Invariant (the chaos suite checks it on `build_claims`): claim k+1 of a
//! build starts after claim k was released, or after claim k's `renewed_at` + ttl.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use slipway_events::cdevents::CdEvent;
use slipway_events::slipway::sources;
use slipway_ids::{BuildId, ReplicaId};
use sqlx::{FromRow, PgPool, Row};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Build, COLUMNS, announce};

/// Why a fenced write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another replica holds the build now (or it ended): stop driving it, publish nothing.
    #[error("the build's lease was taken over by another replica")]
    Lost,
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// The right of one replica to drive one build, for one epoch. Only [`claim_next`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    build: BuildId,
    owner: ReplicaId,
    epoch: i64,
}

impl Lease {
    pub fn build(&self) -> BuildId {
        self.build
    }

    pub fn owner(&self) -> &ReplicaId {
        &self.owner
    }

    pub fn epoch(&self) -> i64 {
        self.epoch
    }
}

/// A claimed build.
#[derive(Debug)]
pub struct Claimed {
    pub build: Build,
    pub lease: Lease,
    /// The replica whose expired lease this claim took over (`None`: the build was queued).
    pub taken_from: Option<String>,
}

fn millis(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

/// Claims the oldest build that is queued or whose lease ran out, for `ttl`, as `me`. A build
/// taken over restarts from scratch (its status stays `running`; no second `build.started`).
pub async fn claim_next(
    pool: &PgPool,
    me: &ReplicaId,
    ttl: Duration,
) -> Result<Option<Claimed>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "WITH next AS ( \
             SELECT id, status AS prior_status, lease_owner AS prior_owner FROM builds \
             WHERE status = 'queued' \
                OR (status = 'running' AND (lease_expires_at IS NULL OR lease_expires_at < now())) \
             ORDER BY queued_at FOR UPDATE SKIP LOCKED LIMIT 1) \
         UPDATE builds b SET status = 'running', started_at = now(), step = 'fetch', \
             lease_owner = $1, lease_epoch = b.lease_epoch + 1, \
             lease_expires_at = now() + make_interval(secs => $2::float8 / 1000) \
         FROM next WHERE b.id = next.id \
         RETURNING {}, next.prior_status, next.prior_owner",
        COLUMNS
            .split(", ")
            .map(|c| format!("b.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", ")
    )))
    .bind(me.as_str())
    .bind(millis(ttl))
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        tx.commit().await?;
        return Ok(None);
    };
    let build = Build::from_row(&row)?;
    let prior_status: String = row.try_get("prior_status")?;
    let prior_owner: Option<String> = row.try_get("prior_owner")?;
    let lease = Lease {
        build: build.id,
        owner: me.clone(),
        epoch: build.lease_epoch,
    };
    sqlx::query("INSERT INTO build_claims (build_id, epoch, owner) VALUES ($1, $2, $3)")
        .bind(build.id)
        .bind(lease.epoch)
        .bind(me.as_str())
        .execute(&mut *tx)
        .await?;
    let taken_from = if prior_status == "queued" {
        let started = CdEvent::build_started(sources::BUILDER, &build.id.to_string());
        announce(&mut tx, &build, started).await?;
        None
    } else {
        Some(prior_owner.unwrap_or_else(|| "an earlier builder".into()))
    };
    tx.commit().await?;
    Ok(Some(Claimed {
        build,
        lease,
        taken_from,
    }))
}

/// Extends the lease by `ttl`; `Ok(false)`: it is not ours any more.
pub async fn renew(pool: &PgPool, lease: &Lease, ttl: Duration) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "WITH renewed AS ( \
             UPDATE builds SET lease_expires_at = now() + make_interval(secs => $4::float8 / 1000) \
             WHERE id = $1 AND lease_owner = $2 AND lease_epoch = $3 AND status = 'running' \
             RETURNING id) \
         UPDATE build_claims SET renewed_at = now() \
         WHERE build_id = $1 AND epoch = $3 AND EXISTS (SELECT 1 FROM renewed)",
    )
    .bind(lease.build)
    .bind(lease.owner.as_str())
    .bind(lease.epoch)
    .bind(millis(ttl))
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Marks the claim released (in the caller's transaction, with the write that ends it).
pub(super) async fn release(
    conn: &mut sqlx::PgConnection,
    lease: &Lease,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE build_claims SET released_at = now() \
         WHERE build_id = $1 AND epoch = $2 AND released_at IS NULL",
    )
    .bind(lease.build)
    .bind(lease.epoch)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Running builds without a lease (left by a builder from before leases) go back to the
/// queue. Builds a replica holds are left alone, live or not: one whose lease ran out is taken
/// over by [`claim_next`], which records whose it was.
pub async fn requeue_interrupted(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE builds SET status = 'queued', step = NULL, started_at = NULL \
         WHERE status = 'running' AND lease_owner IS NULL",
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Gives a running build back to the queue (its builder is stopping), releasing the lease so
/// another replica may claim it at once.
pub async fn requeue(pool: &PgPool, lease: &Lease) -> Result<(), LeaseError> {
    let mut tx = pool.begin().await?;
    let done = sqlx::query(
        "UPDATE builds SET status = 'queued', step = NULL, started_at = NULL, \
         lease_owner = NULL, lease_expires_at = NULL \
         WHERE id = $1 AND lease_owner = $2 AND lease_epoch = $3 AND status = 'running'",
    )
    .bind(lease.build)
    .bind(lease.owner.as_str())
    .bind(lease.epoch)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        return Err(LeaseError::Lost);
    }
    release(&mut tx, lease).await?;
    tx.commit().await?;
    Ok(())
}

/// Records the step now running (fenced).
pub async fn set_step(pool: &PgPool, lease: &Lease, step: &str) -> Result<(), LeaseError> {
    let done = sqlx::query(
        "UPDATE builds SET step = $4 \
         WHERE id = $1 AND lease_owner = $2 AND lease_epoch = $3 AND status = 'running'",
    )
    .bind(lease.build)
    .bind(lease.owner.as_str())
    .bind(lease.epoch)
    .bind(step)
    .execute(pool)
    .await?;
    if done.rows_affected() == 0 {
        return Err(LeaseError::Lost);
    }
    Ok(())
}

/// Set once a build's lease is lost; the job then stops without writing or publishing.
#[derive(Debug, Clone, Default)]
pub struct Lost(Arc<AtomicBool>);

impl Lost {
    pub fn is_lost(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Renews `lease` every `ttl / 3` until it is lost, then sets `lost` and cancels `on_loss`
/// (the build's steps). It runs until aborted: the job aborts it once the build is recorded,
/// so the lease holds while a cancelled build still winds down. A replica that cannot reach
/// the database (or gets no answer) for a whole ttl fences itself the same way: by then
/// another replica may have taken the build over.
pub async fn keep(
    pool: PgPool,
    lease: Lease,
    ttl: Duration,
    lost: Lost,
    on_loss: CancellationToken,
) {
    let every = (ttl / 3).max(Duration::from_millis(10));
    let mut renewed = Instant::now();
    loop {
        tokio::time::sleep(every).await;
        let gone = match tokio::time::timeout(every, renew(&pool, &lease, ttl)).await {
            Ok(Ok(true)) => {
                renewed = Instant::now();
                false
            }
            Ok(Ok(false)) => true,
            Ok(Err(e)) => {
                tracing::warn!(build.id = %lease.build, error = %e, "cannot renew the build's lease");
                renewed.elapsed() >= ttl
            }
            Err(_) => {
                tracing::warn!(build.id = %lease.build, "renewing the build's lease timed out");
                renewed.elapsed() >= ttl
            }
        };
        if gone {
            tracing::warn!(
                build.id = %lease.build,
                epoch = lease.epoch,
                "the build's lease is lost; stopping it without publishing"
            );
            lost.0.store(true, Ordering::SeqCst);
            on_loss.cancel();
            return;
        }
    }
}
