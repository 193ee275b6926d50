//! Liveness of the deployer replicas (`deployer_replicas`): each renews its row every few
//! seconds; a replica whose row is missing or older than the liveness timeout is gone, and its
//! instances are adopted by a live one (see `engine::fleet`).

use slipway_ids::ReplicaId;
use sqlx::PgPool;

/// Records that `me` (running its instances on `node`) is alive, and renews its open claims
/// (those on instances it still owns), in one transaction.
pub async fn renew(pool: &PgPool, me: &ReplicaId, node: &str) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO deployer_replicas (replica, node) VALUES ($1, $2) \
         ON CONFLICT (replica) DO UPDATE SET heartbeat_at = now(), node = EXCLUDED.node",
    )
    .bind(me)
    .bind(node)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE instance_claims c SET renewed_at = now() FROM instances i \
         WHERE c.owner = $1 AND c.released_at IS NULL AND i.id = c.instance_id \
         AND i.owner = c.owner AND i.owner_epoch = c.epoch",
    )
    .bind(me)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// `me` stops (a clean shutdown): its row goes, so the other replicas adopt its instances at
/// once instead of after the liveness timeout, and its claims end.
pub async fn retire(pool: &PgPool, me: &ReplicaId) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "UPDATE instance_claims SET released_at = now() WHERE owner = $1 AND released_at IS NULL",
    )
    .bind(me)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM deployer_replicas WHERE replica = $1")
        .bind(me)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// Forgets replicas gone for longer than `ms` milliseconds that own nothing any more.
pub async fn forget_gone(pool: &PgPool, ms: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM deployer_replicas r WHERE r.heartbeat_at < now() - $1::bigint * \
         interval '1 millisecond' AND NOT EXISTS (SELECT 1 FROM instances i \
         WHERE i.owner = r.replica)",
    )
    .bind(ms)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
