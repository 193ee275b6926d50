//! Heartbeats: deployers' periodic snapshots of what they supervise, which re-insert lost rows
//! and drive the only reaping there is.
//!
//! The rule. An instance is reaped when heartbeats listing its service and environment keep
//! arriving and, for `stale_after` of their intervals, none lists it: its owner's heartbeats
//! go on without it, or its owner is gone while another's go on. Time is the heartbeats' own
//! (`at`, capped at now), compared with the time a heartbeat last listed the row. So nothing
//! arriving at all, what a broker or registry outage looks like, reaps nothing, and a backlog
//! applied in a burst after one is judged by when it was sent. All heartbeats of a service
//! share its partition, so they are applied in the order they were sent.

use slipway_events::deploy::{
    EnvironmentInstances, HeartbeatInstance, InstancesHeartbeat, InstancesHeartbeatV1,
    InstancesHeartbeatV2,
};
use slipway_ids::{InstanceId, ServiceId};
use sqlx::PgConnection;

use super::instances::health_text;

/// An instance the reaping removed.
#[derive(Debug, sqlx::FromRow)]
pub struct Reaped {
    pub id: InstanceId,
    pub service_name: String,
    pub environment: String,
}

/// What applying one heartbeat did.
#[derive(Debug, Default)]
pub struct Applied {
    /// Instances the registry did not have, inserted from the heartbeat.
    pub inserted: Vec<InstanceId>,
    pub reaped: Vec<Reaped>,
}

impl Applied {
    /// Whether a reader of discovery would see a difference (the caller then bumps).
    pub fn changed(&self) -> bool {
        !self.inserted.is_empty() || !self.reaped.is_empty()
    }
}

/// Applies a heartbeat: inserts every listed instance missing here (unless it was stopped on
/// purpose lately), refreshes the others, then reaps by the rule above in every environment
/// it lists.
///
/// A row that exists keeps its state and health: the instance events (ordered on the same
/// partition) and the monitor's verdicts are newer than the deployer's view in a heartbeat.
/// Only an inserted row takes them from the heartbeat, so a healthy instance is routable again
/// at once instead of waiting for a verdict that only comes on a change.
pub async fn apply(
    conn: &mut PgConnection,
    e: &InstancesHeartbeat,
    default_ms: u64,
    stale_after: u32,
) -> Result<Applied, sqlx::Error> {
    let interval = interval_ms(e.interval_ms, default_ms);
    let mut applied = Applied::default();
    for (environment, i) in e.instances() {
        if upsert(conn, e, environment, i, interval).await? {
            applied.inserted.push(i.instance_id);
        }
    }
    let listed: Vec<InstanceId> = e.instances().map(|(_, i)| i.instance_id).collect();
    let environments: Vec<&str> = e
        .environments
        .iter()
        .map(|g| g.environment.as_str())
        .collect();
    applied.reaped = reap(
        conn,
        (e.service_id, &environments),
        &listed,
        e.at,
        interval,
        stale_after,
    )
    .await?;
    Ok(applied)
}

/// Applies a version-2 heartbeat (one environment, from a deployer not yet upgraded) as a
/// version 3 listing that environment alone.
pub async fn apply_v2(
    conn: &mut PgConnection,
    e: &InstancesHeartbeatV2,
    default_ms: u64,
    stale_after: u32,
) -> Result<Applied, sqlx::Error> {
    let beat = InstancesHeartbeat {
        service_id: e.service_id,
        service_name: e.service_name.clone(),
        owner: e.owner.clone(),
        environments: vec![EnvironmentInstances {
            environment: e.environment.clone(),
            instances: e.instances.clone(),
        }],
        interval_ms: e.interval_ms,
        at: e.at,
    };
    apply(conn, &beat, default_ms, stale_after).await
}

/// Applies a version-1 heartbeat (ids only, from a deployer not yet upgraded): refreshes the
/// listed rows, then reaps by the same rule. It cannot insert: it does not carry the records.
pub async fn apply_v1(
    conn: &mut PgConnection,
    e: &InstancesHeartbeatV1,
    default_ms: u64,
    stale_after: u32,
) -> Result<Applied, sqlx::Error> {
    let interval = interval_ms(e.interval_ms, default_ms);
    let listed = e.instances.as_slice();
    sqlx::query(
        "UPDATE instances SET last_seen = now(), heartbeat_ms = $4, \
             listed_at = greatest(listed_at, least($5, now())) \
         WHERE service_id = $1 AND environment = $2 AND id = ANY($3)",
    )
    .bind(e.service_id)
    .bind(&e.environment)
    .bind(listed)
    .bind(interval)
    .bind(e.at)
    .execute(&mut *conn)
    .await?;
    let reaped = reap(
        conn,
        (e.service_id, &[e.environment.as_str()]),
        listed,
        e.at,
        interval,
        stale_after,
    )
    .await?;
    Ok(Applied {
        inserted: Vec::new(),
        reaped,
    })
}

/// The announced interval, else the default (a heartbeat saying 0 would reap at once).
fn interval_ms(announced: u64, default_ms: u64) -> i64 {
    let ms = if announced == 0 {
        default_ms
    } else {
        announced
    };
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// Inserts `i` when missing and not stopped lately, else refreshes who owns it and when it
/// was listed. Returns whether it inserted.
async fn upsert(
    conn: &mut PgConnection,
    e: &InstancesHeartbeat,
    environment: &str,
    i: &HeartbeatInstance,
    interval: i64,
) -> Result<bool, sqlx::Error> {
    let health = i.health.map(health_text).unwrap_or("starting");
    let inserted: Option<bool> = sqlx::query_scalar(
        "INSERT INTO instances (id, service_id, service_name, environment, release, address, \
             target, restarts, health, state, health_check, detail, started_at, last_seen, \
             heartbeat_ms, owner, listed_at) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, now(), $14, $15, \
             least($16, now()) \
         WHERE NOT EXISTS (SELECT 1 FROM stopped_instances WHERE id = $1) \
         ON CONFLICT (id) DO UPDATE SET last_seen = now(), heartbeat_ms = EXCLUDED.heartbeat_ms, \
             owner = EXCLUDED.owner, \
             listed_at = greatest(instances.listed_at, EXCLUDED.listed_at) \
         RETURNING (xmax = 0)",
    )
    .bind(i.instance_id)
    .bind(e.service_id)
    .bind(&e.service_name)
    .bind(environment)
    .bind(i.release)
    .bind(&i.address)
    .bind(&i.target)
    .bind(i64::from(i.restarts))
    .bind(health)
    .bind(i.state.as_str())
    .bind(i.health_check.describe())
    .bind(&i.detail)
    .bind(i.started_at)
    .bind(interval)
    .bind(&e.owner)
    .bind(e.at)
    .fetch_optional(conn)
    .await?;
    Ok(inserted.unwrap_or(false))
}

/// Deletes the instances of `service` in `environments` not in `listed` whose last listing is
/// more than `stale_after` intervals (their own last announced one, else this heartbeat's)
/// older than this heartbeat.
async fn reap(
    conn: &mut PgConnection,
    (service, environments): (ServiceId, &[&str]),
    listed: &[InstanceId],
    at: chrono::DateTime<chrono::Utc>,
    interval: i64,
    stale_after: u32,
) -> Result<Vec<Reaped>, sqlx::Error> {
    sqlx::query_as(
        "DELETE FROM instances \
         WHERE service_id = $1 AND environment = ANY($2) AND id <> ALL($3) \
           AND coalesce(listed_at, last_seen) \
               < least($4, now()) - (coalesce(heartbeat_ms, $5) * $6) * interval '1 millisecond' \
         RETURNING id, service_name, environment",
    )
    .bind(service)
    .bind(environments)
    .bind(listed)
    .bind(at)
    .bind(interval)
    .bind(i64::from(stale_after))
    .fetch_all(conn)
    .await
}

/// Forgets stopped-instance marks older than `keep_seconds` (housekeeping).
pub async fn prune_stopped(conn: &mut PgConnection, keep_seconds: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM stopped_instances WHERE stopped_at < now() - $1 * interval '1 second'",
    )
    .bind(keep_seconds)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}
