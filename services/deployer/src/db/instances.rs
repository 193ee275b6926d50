//! The instances this deployer runs: written before a process exists, so a crash between the
//! two leaves a row to clean up rather than an unknown process.

use chrono::{DateTime, Utc};
use serde::Serialize;
use slipway_events::deploy::{HealthCheck, InstanceRef};
use slipway_events::slipway::RunSpec;
use slipway_ids::ServiceId;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::{InstanceHealth, InstanceState};

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
    pub target: String,
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
}

impl Instance {
    pub fn reference(&self) -> InstanceRef {
        InstanceRef {
            instance_id: self.id,
            service_id: self.service_id,
            service_name: self.service_name.clone(),
            environment: self.environment.clone(),
            release: self.release,
        }
    }
}

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
    pub target: &'a str,
    pub deployment_id: Option<Uuid>,
}

pub async fn insert(pool: &PgPool, n: &NewInstance<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO instances (id, service_id, service_name, environment, release, \
         config_version, image, run, health_check, target, deployment_id, state) \
         VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,'starting')",
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
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn get(conn: &mut PgConnection, id: Uuid) -> Result<Option<Instance>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM instances WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// Every instance, for recovery and heartbeats.
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

/// The process runs at `address`: a (re)start.
pub async fn started(
    conn: &mut PgConnection,
    id: Uuid,
    address: &str,
    port: u16,
    pid: Option<u32>,
    restarts: u32,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE instances SET state = CASE WHEN state IN ('draining', 'stopping') THEN state \
         ELSE 'running' END, address = $2, port = $3, pid = $4, restarts = $5, \
         health = 'starting', health_detail = NULL, updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(address)
    .bind(port as i32)
    .bind(pid.map(|p| p as i32))
    .bind(restarts as i32)
    .execute(conn)
    .await?;
    Ok(())
}

/// The process ended without being asked to.
pub async fn exited(
    conn: &mut PgConnection,
    id: Uuid,
    exit: &str,
    restarts: u32,
    crash_loop: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE instances SET state = CASE WHEN state IN ('draining', 'stopping') THEN state \
         ELSE 'down' END, health = 'unhealthy', health_detail = $2, last_exit = $2, \
         restarts = $3, crash_loop = $4, updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(exit)
    .bind(restarts as i32)
    .bind(crash_loop)
    .execute(conn)
    .await?;
    Ok(())
}

/// The monitor's verdict, applied only to the incarnation it is about.
pub async fn set_health(
    conn: &mut PgConnection,
    id: Uuid,
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

pub async fn delete(conn: &mut PgConnection, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM instances WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}
