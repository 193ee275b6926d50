//! The `probes` table: each instance's latest incarnation, its check and its health.

use chrono::{DateTime, Utc};
use slipway_events::deploy::{Health, HealthCheck, InstanceRef, InstanceStarted};
use slipway_ids::{InstanceId, ServiceId};
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};

/// One probed instance as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub instance: InstanceRef,
    pub address: String,
    pub check: HealthCheck,
    /// The incarnation: the `restarts` of its `InstanceStarted`.
    pub restarts: u32,
    pub probing: bool,
    pub health: Health,
    pub detail: String,
    pub started_at: DateTime<Utc>,
    pub since: DateTime<Utc>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

#[derive(sqlx::FromRow)]
struct Row {
    instance_id: InstanceId,
    service_id: ServiceId,
    service_name: String,
    environment: String,
    release: i32,
    address: String,
    health_check: Json<HealthCheck>,
    restarts: i64,
    probing: bool,
    health: String,
    detail: String,
    started_at: DateTime<Utc>,
    since: DateTime<Utc>,
    traceparent: Option<String>,
    tracestate: Option<String>,
}

const COLUMNS: &str = "instance_id, service_id, service_name, environment, release, address, \
    health_check, restarts, probing, health, detail, started_at, since, traceparent, tracestate";

impl TryFrom<Row> for Probe {
    type Error = sqlx::Error;

    fn try_from(r: Row) -> Result<Self, sqlx::Error> {
        Ok(Self {
            instance: InstanceRef {
                instance_id: r.instance_id,
                service_id: r.service_id,
                service_name: r.service_name,
                environment: r.environment,
                release: r.release,
            },
            address: r.address,
            check: r.health_check.0,
            restarts: u32::try_from(r.restarts).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
            probing: r.probing,
            health: parse_health(&r.health)?,
            detail: r.detail,
            started_at: r.started_at,
            since: r.since,
            traceparent: r.traceparent,
            tracestate: r.tracestate,
        })
    }
}

/// The stored spelling of a health (the same as on the wire).
pub fn health_name(health: Health) -> &'static str {
    match health {
        Health::Starting => "starting",
        Health::Healthy => "healthy",
        Health::Unhealthy => "unhealthy",
    }
}

fn parse_health(text: &str) -> Result<Health, sqlx::Error> {
    match text {
        "starting" => Ok(Health::Starting),
        "healthy" => Ok(Health::Healthy),
        "unhealthy" => Ok(Health::Unhealthy),
        other => Err(sqlx::Error::Decode(
            format!("unknown health `{other}`").into(),
        )),
    }
}

fn rows(rows: Vec<Row>) -> Result<Vec<Probe>, sqlx::Error> {
    rows.into_iter().map(Probe::try_from).collect()
}

/// What an `InstanceStarted` did to the stored incarnation.
#[derive(Debug)]
pub enum Started {
    /// A new incarnation (or a new instance), stored as `starting`: probe it.
    New(Box<Probe>),
    /// The same incarnation, still probed (a repeated announcement): keep probing it.
    Same(Box<Probe>),
    /// An earlier incarnation than the stored one, or one that already exited: ignored.
    Stale,
}

/// Stores `started` as the instance's incarnation unless a later one is known.
pub async fn start(
    conn: &mut PgConnection,
    started: &InstanceStarted,
    trace: (Option<String>, Option<String>),
) -> Result<Started, sqlx::Error> {
    let id = started.instance.instance_id;
    let restarts = i64::from(started.restarts);
    let known: Option<(i64, bool)> =
        sqlx::query_as("SELECT restarts, probing FROM probes WHERE instance_id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
    match known {
        Some((r, _)) if r > restarts => return Ok(Started::Stale),
        Some((r, false)) if r == restarts => return Ok(Started::Stale),
        Some((r, true)) if r == restarts => {
            return get(conn, id)
                .await?
                .map(|p| Started::Same(Box::new(p)))
                .ok_or(sqlx::Error::RowNotFound);
        }
        _ => {}
    }
    let sql = format!(
        "INSERT INTO probes (instance_id, service_id, service_name, environment, release, \
         address, health_check, restarts, probing, health, successes, failures, detail, \
         started_at, since, traceparent, tracestate) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, true, 'starting', 0, 0, '', $9, now(), $10, $11) \
         ON CONFLICT (instance_id) DO UPDATE SET service_id = EXCLUDED.service_id, \
         service_name = EXCLUDED.service_name, environment = EXCLUDED.environment, \
         release = EXCLUDED.release, address = EXCLUDED.address, \
         health_check = EXCLUDED.health_check, restarts = EXCLUDED.restarts, probing = true, \
         health = 'starting', successes = 0, failures = 0, detail = '', \
         started_at = EXCLUDED.started_at, since = now(), traceparent = EXCLUDED.traceparent, \
         tracestate = EXCLUDED.tracestate RETURNING {COLUMNS}"
    );
    let row: Row = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(started.instance.service_id)
        .bind(&started.instance.service_name)
        .bind(&started.instance.environment)
        .bind(started.instance.release)
        .bind(&started.address)
        .bind(Json(&started.health_check))
        .bind(restarts)
        .bind(started.at)
        .bind(trace.0)
        .bind(trace.1)
        .fetch_one(&mut *conn)
        .await?;
    Ok(Started::New(Box::new(row.try_into()?)))
}

/// One instance's row, if known.
pub async fn get(conn: &mut PgConnection, id: InstanceId) -> Result<Option<Probe>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM probes WHERE instance_id = $1");
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    row.map(Probe::try_from).transpose()
}

/// Records that incarnation `restarts` of `id` exited: no longer probed, `unhealthy` with
/// `detail`. Returns the row as it was before, or `None` when the instance is unknown or a
/// later incarnation is stored (a stale exit).
pub async fn exit(
    conn: &mut PgConnection,
    id: InstanceId,
    restarts: u32,
    detail: &str,
) -> Result<Option<Probe>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM probes WHERE instance_id = $1 FOR UPDATE");
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(before) = row.map(Probe::try_from).transpose()? else {
        return Ok(None);
    };
    if before.restarts > restarts {
        return Ok(None);
    }
    sqlx::query(
        "UPDATE probes SET probing = false, restarts = $2, health = 'unhealthy', detail = $3, \
         since = CASE WHEN health = 'unhealthy' THEN since ELSE now() END \
         WHERE instance_id = $1",
    )
    .bind(id)
    .bind(i64::from(restarts))
    .bind(detail)
    .execute(&mut *conn)
    .await?;
    Ok(Some(before))
}

/// Forgets an instance that was stopped on purpose.
pub async fn forget(conn: &mut PgConnection, id: InstanceId) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM probes WHERE instance_id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await
        .map(|_| ())
}

/// A health transition seen by the prober of incarnation `restarts`.
pub struct Transition<'a> {
    pub id: InstanceId,
    pub restarts: u32,
    pub health: Health,
    pub successes: u32,
    pub failures: u32,
    pub detail: &'a str,
}

/// Writes a transition; `false` when the incarnation is no longer the probed one (replaced,
/// exited or forgotten meanwhile), so the prober is stale and writes nothing.
pub async fn transition(conn: &mut PgConnection, t: &Transition<'_>) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE probes SET health = $3, successes = $4, failures = $5, detail = $6, since = now() \
         WHERE instance_id = $1 AND restarts = $2 AND probing",
    )
    .bind(t.id)
    .bind(i64::from(t.restarts))
    .bind(health_name(t.health))
    .bind(i64::from(t.successes))
    .bind(i64::from(t.failures))
    .bind(t.detail)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Every incarnation still to probe, as `(instance, restarts)`: what a shard round compares
/// with the probers running. Read every round, so only these two columns; the whole rows of
/// the few that need a prober come from [`probing_of`].
pub async fn probing(pool: &PgPool) -> Result<Vec<(InstanceId, u32)>, sqlx::Error> {
    let rows: Vec<(InstanceId, i64)> =
        sqlx::query_as("SELECT instance_id, restarts FROM probes WHERE probing")
            .fetch_all(pool)
            .await?;
    rows.into_iter()
        .map(|(id, restarts)| {
            u32::try_from(restarts)
                .map(|r| (id, r))
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))
        })
        .collect()
}

/// The incarnations still to probe among `ids`, whole.
pub async fn probing_of(pool: &PgPool, ids: &[InstanceId]) -> Result<Vec<Probe>, sqlx::Error> {
    let ids: Vec<uuid::Uuid> = ids.iter().map(InstanceId::as_uuid).collect();
    let sql = format!(
        "SELECT {COLUMNS} FROM probes WHERE probing AND instance_id = ANY($1) ORDER BY instance_id"
    );
    rows(
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(ids)
            .fetch_all(pool)
            .await?,
    )
}

/// The instances of a service (by name), optionally in one environment.
pub async fn of_service(
    pool: &PgPool,
    name: &str,
    environment: Option<&str>,
) -> Result<Vec<Probe>, sqlx::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM probes WHERE service_name = $1 \
         AND ($2::text IS NULL OR environment = $2) ORDER BY environment, release, instance_id"
    );
    rows(
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(name)
            .bind(environment)
            .fetch_all(pool)
            .await?,
    )
}
