//! The instances the deployer replicas run: written before a process exists, so a crash between
//! the two leaves a row to clean up rather than an unknown process.
//!
//! Each row names its owner, the replica that supervises it; the owner's writes about its
//! process (started, exited) are compare-and-set on `owner`, and a change of owner is
//! compare-and-set on `owner_epoch` with a claim row in `instance_claims` (see [`claim`]).

use chrono::{DateTime, Utc};
use serde::Serialize;
use slipway_events::deploy::{HealthCheck, InstanceRef};
use slipway_events::slipway::RunSpec;
use std::collections::HashSet;
use std::time::Duration;

use slipway_ids::{InstanceId, ReplicaId, ServiceId};
use slipway_wire::releases::TargetKind;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::{InstanceHealth, InstanceState};
use crate::target::ProcessIdentity;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Instance {
    pub id: Uuid,
    pub service_id: ServiceId,
    pub service_name: String,
    pub environment: String,
    pub release: i32,
    pub config_version: i32,
    pub image: String,
    pub run: Option<Json<RunSpec>>,
    pub health_check: Json<HealthCheck>,
    /// The target it runs on (its deployment's): stops, restarts and adoption go there.
    pub target: TargetKind,
    pub deployment_id: Option<Uuid>,
    pub address: Option<String>,
    pub port: Option<i32>,
    pub pid: Option<i32>,
    pub state: InstanceState,
    pub health: InstanceHealth,
    pub health_detail: Option<String>,
    pub restarts: i32,
    pub crash_loop: bool,
    pub last_exit: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The replica that supervises it (absent: none yet, rows from before replicas).
    pub owner: Option<ReplicaId>,
    pub owner_epoch: i64,
    /// Where it runs ([`crate::target::Target::node`]).
    pub node: Option<String>,
    pub pgid: Option<i32>,
    pub start_time: Option<i64>,
    pub boot_id: Option<String>,
}

impl Instance {
    /// Its current process as recorded here, if complete.
    pub fn process(&self) -> Option<ProcessIdentity> {
        Some(ProcessIdentity {
            pid: u32::try_from(self.pid?).ok()?,
            pgid: self.pgid?,
            start_time: u64::try_from(self.start_time?).ok()?,
            boot_id: self.boot_id.clone(),
            uid: None,
        })
    }

    pub fn reference(&self) -> InstanceRef {
        InstanceRef {
            instance_id: InstanceId::from_uuid(self.id),
            service_id: self.service_id,
            service_name: self.service_name.clone(),
            environment: self.environment.clone(),
            release: self.release,
        }
    }
}

/// A claim's `renewed_at` is its owner's last liveness renewal (not the claim's own time): the
/// owner acts on the instance only under a lease that ends before that renewal + the liveness
/// timeout, which is what the next claim waits for.
const INSERT_CLAIM: &str = "INSERT INTO instance_claims (instance_id, epoch, owner, renewed_at) \
     VALUES ($1, $2, $3, COALESCE((SELECT heartbeat_at FROM deployer_replicas \
     WHERE replica = $3), now()))";

/// A row for an instance about to be started.
pub struct NewInstance<'a> {
    pub id: Uuid,
    pub service_id: ServiceId,
    pub service_name: &'a str,
    pub environment: &'a str,
    pub release: i32,
    pub config_version: i32,
    pub image: &'a str,
    pub run: Option<&'a RunSpec>,
    pub health_check: &'a HealthCheck,
    pub target: TargetKind,
    pub deployment_id: Option<Uuid>,
    /// The replica that starts it, its first owner.
    pub owner: &'a ReplicaId,
    pub node: &'a str,
}

/// The row (owned by `n.owner`, epoch 1) and its first claim.
pub async fn insert(pool: &PgPool, n: &NewInstance<'_>) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO instances (id, service_id, service_name, environment, release, \
         config_version, image, run, health_check, target, deployment_id, state, owner, \
         owner_epoch, node) \
         VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,'starting',$12,1,$13)",
    )
    .bind(n.id)
    .bind(n.service_id)
    .bind(n.service_name)
    .bind(n.environment)
    .bind(n.release)
    .bind(n.config_version)
    .bind(n.image)
    .bind(n.run.map(Json))
    .bind(Json(n.health_check))
    .bind(n.target)
    .bind(n.deployment_id)
    .bind(n.owner)
    .bind(n.node)
    .execute(&mut *tx)
    .await?;
    sqlx::query(INSERT_CLAIM)
        .bind(n.id)
        .bind(1_i64)
        .bind(n.owner)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

pub async fn get(conn: &mut PgConnection, id: Uuid) -> Result<Option<Instance>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM instances WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// Every instance (all replicas').
pub async fn all(pool: &PgPool) -> Result<Vec<Instance>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM instances ORDER BY created_at")
        .fetch_all(pool)
        .await
}

/// The instances of one release in an environment.
pub async fn of_release(
    pool: &PgPool,
    service: ServiceId,
    environment: &str,
    release: i32,
) -> Result<Vec<Instance>, sqlx::Error> {
    sqlx::query_as(
        "SELECT * FROM instances WHERE service_id = $1 AND environment = $2 AND release = $3 \
         ORDER BY created_at",
    )
    .bind(service)
    .bind(environment)
    .bind(release)
    .fetch_all(pool)
    .await
}

/// The instances of an environment.
pub async fn of_environment(
    pool: &PgPool,
    service: ServiceId,
    environment: &str,
) -> Result<Vec<Instance>, sqlx::Error> {
    sqlx::query_as(
        "SELECT * FROM instances WHERE service_id = $1 AND environment = $2 ORDER BY created_at",
    )
    .bind(service)
    .bind(environment)
    .fetch_all(pool)
    .await
}

/// A (re)start of the process, written by its owner only: answers false (nothing written)
/// when `owner` does not own the instance any more.
pub async fn started(
    conn: &mut PgConnection,
    id: Uuid,
    owner: &ReplicaId,
    address: &str,
    port: u16,
    process: Option<&ProcessIdentity>,
    restarts: u32,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE instances SET state = CASE WHEN state IN ('draining', 'stopping') THEN state \
         ELSE 'running' END, address = $3, port = $4, pid = $5, pgid = $6, start_time = $7, \
         boot_id = $8, restarts = $9, health = 'starting', health_detail = NULL, \
         updated_at = now() WHERE id = $1 AND owner = $2",
    )
    .bind(id)
    .bind(owner)
    .bind(address)
    .bind(port as i32)
    .bind(process.and_then(|p| i32::try_from(p.pid).ok()))
    .bind(process.map(|p| p.pgid))
    .bind(process.and_then(|p| i64::try_from(p.start_time).ok()))
    .bind(process.and_then(|p| p.boot_id.clone()))
    .bind(restarts as i32)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The process ended without being asked to (written by its owner only, like [`started`]).
pub async fn exited(
    conn: &mut PgConnection,
    id: Uuid,
    owner: &ReplicaId,
    exit: &str,
    restarts: u32,
    crash_loop: bool,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE instances SET state = CASE WHEN state IN ('draining', 'stopping') THEN state \
         ELSE 'down' END, health = 'unhealthy', health_detail = $3, last_exit = $3, \
         restarts = $4, crash_loop = $5, updated_at = now() WHERE id = $1 AND owner = $2",
    )
    .bind(id)
    .bind(owner)
    .bind(exit)
    .bind(restarts as i32)
    .bind(crash_loop)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The instances `owner` supervises.
pub async fn owned(pool: &PgPool, owner: &ReplicaId) -> Result<Vec<Instance>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM instances WHERE owner = $1 ORDER BY created_at")
        .bind(owner)
        .fetch_all(pool)
        .await
}

/// The SQL condition "the owner of `i` is gone" (no liveness row, or one older than `$ttl_ms`
/// milliseconds), with `$me` (the asking replica) counting as gone too: a replica asks only
/// about instances it does not supervise.
macro_rules! owner_gone {
    () => {
        "(i.owner IS NULL OR i.owner = $1 OR NOT EXISTS (SELECT 1 FROM deployer_replicas r \
         WHERE r.replica = i.owner AND r.heartbeat_at >= now() - $2::bigint * \
         interval '1 millisecond'))"
    };
}

/// The instances of `node` whose owner is gone (or is `me`), candidates for adoption.
pub async fn adoptable(
    pool: &PgPool,
    me: &ReplicaId,
    ttl: Duration,
    node: &str,
) -> Result<Vec<Instance>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT * FROM instances i WHERE (i.node = $3 OR i.node IS NULL) AND ",
        owner_gone!(),
        " ORDER BY created_at"
    ))
    .bind(me)
    .bind(ttl.as_millis() as i64)
    .bind(node)
    .fetch_all(pool)
    .await
}

/// Makes `me` the owner of instance `id`, if it still is at `epoch` and its owner is gone:
/// compare-and-set, so of two replicas adopting at once one wins. Answers the new epoch.
pub async fn claim(
    pool: &PgPool,
    id: Uuid,
    epoch: i64,
    me: &ReplicaId,
    ttl: Duration,
) -> Result<Option<i64>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let won: Option<i64> = sqlx::query_scalar(concat!(
        "UPDATE instances i SET owner = $1, owner_epoch = owner_epoch + 1, updated_at = now() \
         WHERE i.id = $3 AND i.owner_epoch = $4 AND ",
        owner_gone!(),
        " RETURNING owner_epoch"
    ))
    .bind(me)
    .bind(ttl.as_millis() as i64)
    .bind(id)
    .bind(epoch)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(epoch) = won {
        sqlx::query(INSERT_CLAIM)
            .bind(id)
            .bind(epoch)
            .bind(me)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(won)
}

/// Which of `ids` have a row (any owner).
pub async fn existing(pool: &PgPool, ids: &[Uuid]) -> Result<HashSet<Uuid>, sqlx::Error> {
    let rows: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM instances WHERE id = ANY($1)")
        .bind(ids)
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().collect())
}

/// The monitor's verdict, applied only to the incarnation it is about.
pub async fn set_health(
    conn: &mut PgConnection,
    id: InstanceId,
    restarts: u32,
    health: InstanceHealth,
    detail: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE instances SET health = $3, health_detail = $4, updated_at = now(), \
         crash_loop = CASE WHEN $3 = 'healthy' THEN false ELSE crash_loop END \
         WHERE id = $1 AND restarts = $2 AND state IN ('running', 'draining')",
    )
    .bind(id)
    .bind(restarts as i32)
    .bind(health)
    .bind(detail)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn set_state(
    conn: &mut PgConnection,
    id: Uuid,
    state: InstanceState,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE instances SET state = $2, updated_at = now() WHERE id = $1")
        .bind(id)
        .bind(state)
        .execute(conn)
        .await?;
    Ok(())
}

/// Forgets the instance; its open claim ends.
pub async fn delete(conn: &mut PgConnection, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM instances WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "UPDATE instance_claims SET released_at = now() WHERE instance_id = $1 \
         AND released_at IS NULL",
    )
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}
