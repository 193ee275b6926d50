//! Environments and their versioned config.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use slipway_ids::ServiceId;
use slipway_wire::releases::TargetKind;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};

/// An environment of a service.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Environment {
    pub name: String,
    pub target: TargetKind,
    /// The latest config version (0: none yet).
    pub config_version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One stored config version (secrets still sealed).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredConfig {
    pub version: i32,
    pub vars: Json<BTreeMap<String, String>>,
    pub secrets: Json<BTreeMap<String, String>>,
    pub created_at: DateTime<Utc>,
}

/// Creates or changes an environment; `true` when it was created. `target` absent: a new
/// environment is recorded on `default`, an existing one keeps its target.
pub async fn upsert_environment(
    conn: &mut PgConnection,
    service: ServiceId,
    name: &str,
    target: Option<TargetKind>,
    default: TargetKind,
) -> Result<bool, sqlx::Error> {
    let created: bool = sqlx::query_scalar(
        "INSERT INTO environments (service_id, name, target) VALUES ($1, $2, COALESCE($3, $4)) \
         ON CONFLICT (service_id, name) DO UPDATE \
         SET target = COALESCE($3, environments.target), updated_at = now() \
         RETURNING (xmax = 0)",
    )
    .bind(service)
    .bind(name)
    .bind(target)
    .bind(default)
    .fetch_one(conn)
    .await?;
    Ok(created)
}

const ENV_COLUMNS: &str = "e.name, e.target, coalesce((SELECT max(version) FROM config_versions c \
    WHERE c.service_id = e.service_id AND c.environment = e.name), 0) AS config_version, \
    e.created_at, e.updated_at";

pub async fn environments(
    pool: &PgPool,
    service: ServiceId,
) -> Result<Vec<Environment>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ENV_COLUMNS} FROM environments e WHERE e.service_id = $1 ORDER BY e.name"
    )))
    .bind(service)
    .fetch_all(pool)
    .await
}

/// One environment, read without locking it.
pub async fn environment_of(
    pool: &PgPool,
    service: ServiceId,
    name: &str,
) -> Result<Option<Environment>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ENV_COLUMNS} FROM environments e WHERE e.service_id = $1 AND e.name = $2"
    )))
    .bind(service)
    .bind(name)
    .fetch_optional(pool)
    .await
}

pub async fn environment(
    conn: &mut PgConnection,
    service: ServiceId,
    name: &str,
) -> Result<Option<Environment>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ENV_COLUMNS} FROM environments e WHERE e.service_id = $1 AND e.name = $2 FOR UPDATE"
    )))
    .bind(service)
    .bind(name)
    .fetch_optional(conn)
    .await
}

/// The latest config of an environment, if any.
pub async fn latest(
    conn: &mut PgConnection,
    service: ServiceId,
    env: &str,
) -> Result<Option<StoredConfig>, sqlx::Error> {
    sqlx::query_as(
        "SELECT version, vars, secrets, created_at FROM config_versions \
         WHERE service_id = $1 AND environment = $2 ORDER BY version DESC LIMIT 1",
    )
    .bind(service)
    .bind(env)
    .fetch_optional(conn)
    .await
}

/// Stores the next version (the caller holds the environment's row lock).
pub async fn insert_version(
    conn: &mut PgConnection,
    service: ServiceId,
    env: &str,
    version: i32,
    vars: &BTreeMap<String, String>,
    secrets: &BTreeMap<String, String>,
) -> Result<StoredConfig, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO config_versions (service_id, environment, version, vars, secrets) \
         VALUES ($1, $2, $3, $4, $5) RETURNING version, vars, secrets, created_at",
    )
    .bind(service)
    .bind(env)
    .bind(version)
    .bind(Json(vars))
    .bind(Json(secrets))
    .fetch_one(conn)
    .await
}

/// Environment → latest config version: what a release made now records.
pub async fn current_versions(
    conn: &mut PgConnection,
    service: ServiceId,
) -> Result<BTreeMap<String, i32>, sqlx::Error> {
    let rows: Vec<(String, i32)> = sqlx::query_as(
        "SELECT environment, max(version) FROM config_versions WHERE service_id = $1 GROUP BY environment",
    )
    .bind(service)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().collect())
}

/// One config version of an environment, if it exists.
pub async fn version(
    conn: &mut PgConnection,
    service: ServiceId,
    env: &str,
    version: i32,
) -> Result<Option<StoredConfig>, sqlx::Error> {
    sqlx::query_as(
        "SELECT version, vars, secrets, created_at FROM config_versions \
         WHERE service_id = $1 AND environment = $2 AND version = $3",
    )
    .bind(service)
    .bind(env)
    .bind(version)
    .fetch_optional(conn)
    .await
}
