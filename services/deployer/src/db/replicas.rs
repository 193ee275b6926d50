//! Liveness of the deployer replicas (`deployer_replicas`): each renews its row every few
//! seconds; a replica whose row is missing or older than the liveness timeout is gone, and its
//! instances are adopted by a live one (see `engine::fleet`).

use slipway_ids::ReplicaId;
use sqlx::PgPool;

/// The process a replica runs as, so a replica on the same node can tell it died.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ReplicaProcess {
    pub pid: i32,
    pub start_time: i64,
    pub boot_id: Option<String>,
    /// `/proc/self/ns/pid`'s target: pids compare only within one namespace.
    pub pid_ns: Option<String>,
}

/// A live replica of a node, as another replica sees it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Neighbour {
    pub replica: ReplicaId,
    #[sqlx(flatten)]
    pub process: ReplicaProcess,
}

/// Records that `me` (running its instances on `node`, as `process`) is alive, and renews its
/// open claims (those on instances it still owns), in one transaction. Answers whether its row
/// had expired (older than `ttl_ms`, or declared gone by a neighbour): then others may have
/// adopted its instances, and it must let go of all of them before acting again.
pub async fn renew(
    pool: &PgPool,
    me: &ReplicaId,
    node: &str,
    process: Option<&ReplicaProcess>,
    ttl_ms: i64,
) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let expired: Option<bool> = sqlx::query_scalar(
        "SELECT heartbeat_at < now() - $2::bigint * interval '1 millisecond' \
         FROM deployer_replicas WHERE replica = $1 FOR UPDATE",
    )
    .bind(me)
    .bind(ttl_ms)
    .fetch_optional(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO deployer_replicas (replica, node, pid, start_time, boot_id, pid_ns) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (replica) DO UPDATE SET heartbeat_at = now(), node = EXCLUDED.node, \
         pid = EXCLUDED.pid, start_time = EXCLUDED.start_time, boot_id = EXCLUDED.boot_id, \
         pid_ns = EXCLUDED.pid_ns",
    )
    .bind(me)
    .bind(node)
    .bind(process.map(|p| p.pid))
    .bind(process.map(|p| p.start_time))
    .bind(process.and_then(|p| p.boot_id.clone()))
    .bind(process.and_then(|p| p.pid_ns.clone()))
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
    tx.commit().await?;
    Ok(expired.unwrap_or(false))
}

/// The other replicas of `node` that still look alive (not expired) and say what process they
/// run as.
pub async fn neighbours(
    pool: &PgPool,
    me: &ReplicaId,
    node: &str,
    ttl_ms: i64,
) -> Result<Vec<Neighbour>, sqlx::Error> {
    sqlx::query_as(
        "SELECT replica, pid, start_time, boot_id, pid_ns FROM deployer_replicas \
         WHERE node = $2 AND replica <> $1 AND pid IS NOT NULL AND start_time IS NOT NULL \
         AND heartbeat_at >= now() - $3::bigint * interval '1 millisecond'",
    )
    .bind(me)
    .bind(node)
    .bind(ttl_ms)
    .fetch_all(pool)
    .await
}

/// Declares `n` gone (its process was seen dead): its row expires now (twice `ttl_ms` ago, so
/// it is not forgotten before a replica wrongly declared gone could see it), if it still names
/// that process. Answers whether it did.
pub async fn declare_gone(pool: &PgPool, n: &Neighbour, ttl_ms: i64) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE deployer_replicas SET heartbeat_at = now() - 2 * $4::bigint * \
         interval '1 millisecond' WHERE replica = $1 AND pid = $2 AND start_time = $3",
    )
    .bind(&n.replica)
    .bind(n.process.pid)
    .bind(n.process.start_time)
    .bind(ttl_ms)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
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
