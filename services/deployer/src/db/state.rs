//! Desired state per service and environment, the release history rollbacks read, and
//! auto-deploy policies.

use serde::Serialize;
use slipway_events::deploy::{HealthCheck, ReleaseWeight, Strategy};
use slipway_ids::{DeploymentId, ServiceId};
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct EnvironmentState {
    pub service_id: ServiceId,
    pub environment: String,
    pub service_name: String,
    pub release: Option<i32>,
    pub config_version: Option<i32>,
    pub replicas: i32,
    pub health_check: Option<Json<HealthCheck>>,
    pub weights: Json<Vec<ReleaseWeight>>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

pub async fn get(
    conn: &mut PgConnection,
    service: ServiceId,
    environment: &str,
) -> Result<Option<EnvironmentState>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM environment_state WHERE service_id = $1 AND environment = $2")
        .bind(service)
        .bind(environment)
        .fetch_optional(conn)
        .await
}

pub async fn by_name(
    pool: &PgPool,
    service_name: &str,
    environment: &str,
) -> Result<Option<EnvironmentState>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM environment_state WHERE service_name = $1 AND environment = $2")
        .bind(service_name)
        .bind(environment)
        .fetch_optional(pool)
        .await
}

/// Every environment with something desired (for heartbeats).
pub async fn all(pool: &PgPool) -> Result<Vec<EnvironmentState>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM environment_state")
        .fetch_all(pool)
        .await
}

/// Records what now runs (a deployment ended, or a scale).
#[allow(clippy::too_many_arguments)]
pub async fn set_running(
    conn: &mut PgConnection,
    service: ServiceId,
    service_name: &str,
    environment: &str,
    release: Option<i32>,
    config_version: Option<i32>,
    replicas: i32,
    health_check: Option<&HealthCheck>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO environment_state (service_id, environment, service_name, release, \
         config_version, replicas, health_check) VALUES ($1,$2,$3,$4,$5,$6,$7) \
         ON CONFLICT (service_id, environment) DO UPDATE SET release = $4, config_version = $5, \
         replicas = $6, health_check = coalesce($7, environment_state.health_check), \
         updated_at = now()",
    )
    .bind(service)
    .bind(environment)
    .bind(service_name)
    .bind(release)
    .bind(config_version)
    .bind(replicas)
    .bind(health_check.map(Json))
    .execute(conn)
    .await?;
    Ok(())
}

/// Records the traffic split last published.
pub async fn set_weights(
    conn: &mut PgConnection,
    service: ServiceId,
    service_name: &str,
    environment: &str,
    weights: &[ReleaseWeight],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO environment_state (service_id, environment, service_name, weights) \
         VALUES ($1,$2,$3,$4) ON CONFLICT (service_id, environment) DO UPDATE \
         SET weights = $4, updated_at = now()",
    )
    .bind(service)
    .bind(environment)
    .bind(service_name)
    .bind(Json(weights))
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn record_success(
    conn: &mut PgConnection,
    service: ServiceId,
    environment: &str,
    release: i32,
    config_version: i32,
    deployment: DeploymentId,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO release_history (service_id, environment, release, config_version, \
         deployment_id) VALUES ($1,$2,$3,$4,$5)",
    )
    .bind(service)
    .bind(environment)
    .bind(release)
    .bind(config_version)
    .bind(deployment)
    .execute(conn)
    .await?;
    Ok(())
}

/// The release that ran before `current` (the newest history entry of another release), with
/// the config it ran with.
pub async fn previous(
    conn: &mut PgConnection,
    service: ServiceId,
    environment: &str,
    current: Option<i32>,
) -> Result<Option<(i32, i32)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT release, config_version FROM release_history WHERE service_id = $1 \
         AND environment = $2 AND release IS DISTINCT FROM $3 ORDER BY deployed_at DESC LIMIT 1",
    )
    .bind(service)
    .bind(environment)
    .bind(current)
    .fetch_optional(conn)
    .await
}

/// The config `release` last ran with in the environment, if it ever succeeded there.
pub async fn last_config_of(
    conn: &mut PgConnection,
    service: ServiceId,
    environment: &str,
    release: i32,
) -> Result<Option<i32>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT config_version FROM release_history WHERE service_id = $1 AND environment = $2 \
         AND release = $3 ORDER BY deployed_at DESC LIMIT 1",
    )
    .bind(service)
    .bind(environment)
    .bind(release)
    .fetch_optional(conn)
    .await
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Policy {
    pub service_id: ServiceId,
    pub environment: String,
    pub service_name: String,
    pub auto_deploy: bool,
    pub strategy: Json<Strategy>,
}

pub async fn put_policy(
    pool: &PgPool,
    service: ServiceId,
    service_name: &str,
    environment: &str,
    auto_deploy: bool,
    strategy: &Strategy,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO policies (service_id, environment, service_name, auto_deploy, strategy) \
         VALUES ($1,$2,$3,$4,$5) ON CONFLICT (service_id, environment) DO UPDATE \
         SET auto_deploy = $4, strategy = $5, updated_at = now()",
    )
    .bind(service)
    .bind(environment)
    .bind(service_name)
    .bind(auto_deploy)
    .bind(Json(strategy))
    .execute(pool)
    .await?;
    Ok(())
}

/// The newest release of the environment: the one running, or one a queued or progressing
/// deploy is taking it to.
pub async fn newest_release(
    conn: &mut PgConnection,
    service: ServiceId,
    environment: &str,
) -> Result<Option<i32>, sqlx::Error> {
    let running: Option<Option<i32>> = sqlx::query_scalar(
        "SELECT release FROM environment_state WHERE service_id = $1 AND environment = $2",
    )
    .bind(service)
    .bind(environment)
    .fetch_optional(&mut *conn)
    .await?;
    let pending: Option<i32> = sqlx::query_scalar(
        "SELECT max(requested_release) FROM deployments WHERE service_id = $1 \
         AND environment = $2 AND kind = 'deploy' AND status IN ('queued', 'progressing')",
    )
    .bind(service)
    .bind(environment)
    .fetch_one(conn)
    .await?;
    Ok(running.flatten().max(pending))
}

pub async fn auto_deploy_policies(
    conn: &mut PgConnection,
    service: ServiceId,
) -> Result<Vec<Policy>, sqlx::Error> {
    sqlx::query_as(
        "SELECT service_id, environment, service_name, auto_deploy, strategy FROM policies \
         WHERE service_id = $1 AND auto_deploy",
    )
    .bind(service)
    .fetch_all(conn)
    .await
}
