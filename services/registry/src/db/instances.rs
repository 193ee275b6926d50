//! Discovered instances, traffic weights, and the discovery index.
//!
//! Invariant: every function that changes what a reader of `/v1/services/{name}/instances` or
//! `/v1/discovery` would see returns whether it changed something, and the caller then calls
//! [`bump`] in the same transaction. So an index names one state, and a watcher that saw index
//! `n` is woken by any change after it. Heartbeats only move `last_seen` and do not bump: a
//! bump per heartbeat would wake every watcher every interval for nothing; they notify
//! [`SEEN_CHANNEL`] instead, which only drops kept answers. Heartbeats and reaping live in
//! [`super::heartbeats`].

use chrono::{DateTime, Utc};
use serde::Serialize;
use slipway_events::deploy::{
    Health, InstanceDraining, InstanceExited, InstanceHealthChanged, InstanceStarted,
    ReleaseWeight, TrafficChanged,
};
use slipway_ids::{InstanceId, ServiceId};
use sqlx::PgConnection;
use sqlx::types::Json;

/// The channel `NOTIFY` is sent on after each bump; its payload is the new index.
pub const CHANNEL: &str = "slipway_discovery";

/// Whether an instance takes requests (the event contract's own type).
pub use slipway_events::deploy::InstanceState as State;

fn parse_state(text: &str) -> Result<State, sqlx::Error> {
    State::parse(text)
        .ok_or_else(|| sqlx::Error::Decode(format!("unknown instance state `{text}`").into()))
}

pub(super) fn health_text(health: Health) -> &'static str {
    match health {
        Health::Starting => "starting",
        Health::Healthy => "healthy",
        Health::Unhealthy => "unhealthy",
    }
}

pub(super) fn parse_health(text: &str) -> Result<Health, sqlx::Error> {
    match text {
        "starting" => Ok(Health::Starting),
        "healthy" => Ok(Health::Healthy),
        "unhealthy" => Ok(Health::Unhealthy),
        other => Err(sqlx::Error::Decode(
            format!("unknown instance health `{other}`").into(),
        )),
    }
}

/// One discovered instance, as the APIs show it.
#[derive(Debug, Clone, Serialize)]
pub struct Instance {
    pub id: InstanceId,
    #[serde(skip)]
    pub service_id: ServiceId,
    #[serde(skip)]
    pub service_name: String,
    pub environment: String,
    pub release: i32,
    pub address: String,
    pub target: String,
    pub health: Health,
    pub state: State,
    /// The monitor's check, e.g. `http GET /healthz` (from the start until a verdict).
    pub check: Option<String>,
    /// What the last probe saw, or how the process exited.
    pub detail: Option<String>,
    pub restarts: i64,
    /// Only `running` and `healthy` instances take requests.
    pub routable: bool,
    pub started_at: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
}

/// The row as stored; checked into an [`Instance`].
#[derive(sqlx::FromRow)]
struct Row {
    id: InstanceId,
    service_id: ServiceId,
    service_name: String,
    environment: String,
    release: i32,
    address: String,
    target: String,
    health: String,
    state: String,
    health_check: Option<String>,
    detail: Option<String>,
    restarts: i64,
    started_at: DateTime<Utc>,
    last_seen: DateTime<Utc>,
}

impl TryFrom<Row> for Instance {
    type Error = sqlx::Error;

    fn try_from(r: Row) -> Result<Self, sqlx::Error> {
        let health = parse_health(&r.health)?;
        let state = parse_state(&r.state)?;
        Ok(Instance {
            id: r.id,
            service_id: r.service_id,
            service_name: r.service_name,
            environment: r.environment,
            release: r.release,
            address: r.address,
            target: r.target,
            health,
            state,
            check: r.health_check,
            detail: r.detail,
            restarts: r.restarts,
            routable: state == State::Running && health == Health::Healthy,
            started_at: r.started_at,
            last_seen: r.last_seen,
        })
    }
}

const COLUMNS: &str = "id, service_id, service_name, environment, release, address, target, \
    health, state, health_check, detail, restarts, started_at, last_seen";

/// Traffic weights of one service and environment.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Traffic {
    pub service_id: ServiceId,
    pub service_name: String,
    pub environment: String,
    pub weights: Json<Vec<ReleaseWeight>>,
}

/// Moves the index on and notifies listeners (delivered when the transaction commits).
pub async fn bump(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    let index: i64 =
        sqlx::query_scalar("UPDATE discovery_index SET value = value + 1 RETURNING value")
            .fetch_one(&mut *conn)
            .await?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(index.to_string())
        .execute(&mut *conn)
        .await?;
    Ok(index)
}

/// The channel a heartbeat that changed nothing else notifies on, its payload the service's
/// name: `last_seen` moved, so replicas drop the answers they keep for that service (see
/// `crate::answers`) though the index stays.
pub const SEEN_CHANNEL: &str = "slipway_discovery_seen";

/// Tells every replica that `service`'s instances were seen again (delivered on commit).
pub async fn seen(conn: &mut PgConnection, service: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(SEEN_CHANNEL)
        .bind(service)
        .execute(conn)
        .await?;
    Ok(())
}

/// The current index.
pub async fn index(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT value FROM discovery_index")
        .fetch_one(conn)
        .await
}

/// Records a (re)start: health back to `starting`, state `running`. A start of an older
/// incarnation than the one stored is ignored.
pub async fn started(conn: &mut PgConnection, e: &InstanceStarted) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO instances (id, service_id, service_name, environment, release, address, \
             target, restarts, health, state, health_check, detail, started_at, last_seen, \
             listed_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'starting', 'running', $9, NULL, $10, now(), \
             least($10, now())) \
         ON CONFLICT (id) DO UPDATE SET service_id = EXCLUDED.service_id, \
             service_name = EXCLUDED.service_name, environment = EXCLUDED.environment, \
             release = EXCLUDED.release, address = EXCLUDED.address, target = EXCLUDED.target, \
             restarts = EXCLUDED.restarts, health = 'starting', state = 'running', \
             health_check = EXCLUDED.health_check, detail = NULL, \
             started_at = EXCLUDED.started_at, last_seen = now(), \
             listed_at = greatest(instances.listed_at, EXCLUDED.listed_at) \
         WHERE instances.restarts <= EXCLUDED.restarts",
    )
    .bind(e.instance.instance_id)
    .bind(e.instance.service_id)
    .bind(&e.instance.service_name)
    .bind(&e.instance.environment)
    .bind(e.instance.release)
    .bind(&e.address)
    .bind(&e.target)
    .bind(i64::from(e.restarts))
    .bind(e.health_check.describe())
    .bind(e.at)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Applies a verdict if it is about the stored incarnation (same `restarts`) and says
/// something new; a verdict on an earlier incarnation is stale.
pub async fn health(
    conn: &mut PgConnection,
    e: &InstanceHealthChanged,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE instances SET health = $2, health_check = $3, detail = $4 \
         WHERE id = $1 AND restarts = $5 \
           AND (health, health_check, detail) IS DISTINCT FROM ($2, $3, $4)",
    )
    .bind(e.instance.instance_id)
    .bind(health_text(e.health))
    .bind(&e.check)
    .bind(&e.detail)
    .bind(i64::from(e.restarts))
    .execute(conn)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Marks a crashed instance `down` with how it exited.
pub async fn exited(conn: &mut PgConnection, e: &InstanceExited) -> Result<bool, sqlx::Error> {
    let detail = if e.crash_loop {
        format!("{} (crash loop)", e.exit)
    } else {
        e.exit.clone()
    };
    let done = sqlx::query(
        "UPDATE instances SET state = 'down', detail = $2 WHERE id = $1 AND restarts <= $3",
    )
    .bind(e.instance.instance_id)
    .bind(detail)
    .bind(i64::from(e.restarts))
    .execute(conn)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Takes an instance out of rotation.
pub async fn draining(conn: &mut PgConnection, e: &InstanceDraining) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE instances SET state = 'draining' WHERE id = $1 AND state <> 'draining'",
    )
    .bind(e.instance.instance_id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Forgets a stopped instance, and remembers for a while that it was stopped, so that a
/// heartbeat composed before the stop and applied after it does not bring it back.
pub async fn stopped(conn: &mut PgConnection, id: InstanceId) -> Result<bool, sqlx::Error> {
    sqlx::query(
        "INSERT INTO stopped_instances (id) VALUES ($1) \
         ON CONFLICT (id) DO UPDATE SET stopped_at = now()",
    )
    .bind(id)
    .execute(&mut *conn)
    .await?;
    let done = sqlx::query("DELETE FROM instances WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// Replaces the weights of a service and environment, when they differ from the stored ones.
/// No weights is stored too (as an empty list, which discovery leaves out), so the version at
/// which a split was removed stays known. The caller records that version with
/// [`traffic_version`] after its bump.
pub async fn traffic(conn: &mut PgConnection, e: &TrafficChanged) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO traffic (service_id, service_name, environment, weights) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (service_id, environment) DO UPDATE \
         SET service_name = EXCLUDED.service_name, weights = EXCLUDED.weights, \
             updated_at = now() \
         WHERE traffic.weights IS DISTINCT FROM EXCLUDED.weights",
    )
    .bind(e.service_id)
    .bind(&e.service_name)
    .bind(&e.environment)
    .bind(Json(&e.weights))
    .execute(conn)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Records `version` as the table version at which the split of `service` in `environment`
/// took effect.
pub async fn traffic_version(
    conn: &mut PgConnection,
    service: ServiceId,
    environment: &str,
    version: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE traffic SET version = $3 WHERE service_id = $1 AND environment = $2")
        .bind(service)
        .bind(environment)
        .bind(version)
        .execute(conn)
        .await?;
    Ok(())
}

/// The instances of a service, optionally of one environment.
pub async fn of_service(
    conn: &mut PgConnection,
    service: ServiceId,
    environment: Option<&str>,
) -> Result<Vec<Instance>, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM instances WHERE service_id = $1 \
         AND ($2::text IS NULL OR environment = $2) \
         ORDER BY environment, release, started_at, id"
    )))
    .bind(service)
    .bind(environment)
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(Instance::try_from).collect()
}

/// Every instance, for the router's view.
pub async fn all(conn: &mut PgConnection) -> Result<Vec<Instance>, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM instances ORDER BY service_name, environment, release, started_at, id"
    )))
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(Instance::try_from).collect()
}

/// Every traffic split with weights (a split set to none is no route).
pub async fn all_traffic(conn: &mut PgConnection) -> Result<Vec<Traffic>, sqlx::Error> {
    sqlx::query_as(
        "SELECT service_id, service_name, environment, weights FROM traffic \
         WHERE jsonb_array_length(weights) > 0",
    )
    .fetch_all(conn)
    .await
}
