//! Deployments: queued on request, driven by the engine, finished once.

use chrono::{DateTime, Utc};
use serde::Serialize;
use slipway_events::deploy::{DeployRequested, FailureReason, HealthCheck, Strategy};
use slipway_ids::ServiceId;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::engine::plan::Step;

/// A deployment as stored and shown.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Deployment {
    pub id: Uuid,
    pub kind: String,
    pub service_id: ServiceId,
    pub service_name: String,
    pub environment: String,
    pub requested_release: Option<i32>,
    pub requested_replicas: Option<i32>,
    pub requested_config: Option<i32>,
    pub strategy: Json<Strategy>,
    pub health_check: Option<Json<HealthCheck>>,
    pub step_timeout_seconds: i32,
    pub auto_rollback: bool,
    pub actor: Option<String>,
    pub release: Option<i32>,
    pub config_version: Option<i32>,
    pub replicas: Option<i32>,
    pub from_release: Option<i32>,
    pub from_config: Option<i32>,
    pub from_replicas: Option<i32>,
    pub status: String,
    pub plan: Json<Vec<Step>>,
    pub rollback_plan: Json<Vec<Step>>,
    pub step_index: i32,
    pub step_started_at: Option<DateTime<Utc>>,
    pub step_deadline: Option<DateTime<Utc>>,
    pub cancel_requested: bool,
    pub reason: Option<Json<FailureReason>>,
    pub requested_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl Deployment {
    /// The steps being executed: the rollout, or the way back once it is rolling back.
    pub fn active_plan(&self) -> &[Step] {
        if self.status == "rolling_back" {
            &self.rollback_plan.0
        } else {
            &self.plan.0
        }
    }

    /// The API view: the stored row plus the steps described for people.
    pub fn view(&self) -> serde_json::Value {
        let describe = |plan: &[Step]| -> Vec<serde_json::Value> {
            plan.iter()
                .enumerate()
                .map(|(i, s)| serde_json::json!({ "index": i, "step": s.describe(), "detail": s }))
                .collect()
        };
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["steps"] = serde_json::json!(describe(&self.plan.0));
        v["rollback_steps"] = serde_json::json!(describe(&self.rollback_plan.0));
        v["current_step"] = match self.active_plan().get(self.step_index as usize) {
            Some(s) if !is_terminal(&self.status) => serde_json::json!(s.describe()),
            _ => serde_json::Value::Null,
        };
        v["url"] = serde_json::json!(format!("/v1/deployments/{}", self.id));
        v
    }
}

pub fn is_terminal(status: &str) -> bool {
    matches!(status, "succeeded" | "failed" | "rolled_back" | "cancelled")
}

/// Records a request as `queued`; a redelivered command changes nothing.
pub async fn insert(
    conn: &mut PgConnection,
    r: &DeployRequested,
    default_timeout: u32,
) -> Result<bool, sqlx::Error> {
    let kind = match r.kind {
        slipway_events::deploy::DeployKind::Deploy => "deploy",
        slipway_events::deploy::DeployKind::Rollback => "rollback",
        slipway_events::deploy::DeployKind::Scale => "scale",
    };
    let done = sqlx::query(
        "INSERT INTO deployments (id, kind, service_id, service_name, environment, \
         requested_release, requested_replicas, requested_config, strategy, health_check, \
         step_timeout_seconds, auto_rollback, actor, status, requested_at) \
         VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,'queued',$14) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(r.deployment_id)
    .bind(kind)
    .bind(r.service_id)
    .bind(&r.service_name)
    .bind(&r.environment)
    .bind(r.release)
    .bind(r.replicas.map(|n| n as i32))
    .bind(r.config_version)
    .bind(Json(&r.strategy))
    .bind(r.health_check.as_ref().map(Json))
    .bind(r.step_timeout_seconds.unwrap_or(default_timeout) as i32)
    .bind(r.auto_rollback.unwrap_or(true))
    .bind(&r.actor)
    .bind(r.requested_at)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<Deployment>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM deployments WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
}

pub async fn list(
    pool: &PgPool,
    service_name: &str,
    environment: &str,
    limit: i64,
) -> Result<Vec<Deployment>, sqlx::Error> {
    sqlx::query_as(
        "SELECT * FROM deployments WHERE service_name = $1 AND environment = $2 \
         ORDER BY created_at DESC LIMIT $3",
    )
    .bind(service_name)
    .bind(environment)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Deployments the engine must drive: active ones, and the oldest queued one of each service
/// and environment that has no active one.
pub async fn runnable(pool: &PgPool) -> Result<Vec<Deployment>, sqlx::Error> {
    sqlx::query_as(
        "SELECT * FROM deployments d WHERE d.status IN ('progressing', 'rolling_back') \
         OR (d.status = 'queued' AND NOT EXISTS (SELECT 1 FROM deployments a \
             WHERE a.service_id = d.service_id AND a.environment = d.environment \
             AND (a.status IN ('progressing', 'rolling_back') \
                  OR (a.status = 'queued' AND a.created_at < d.created_at)))) \
         ORDER BY d.created_at",
    )
    .fetch_all(pool)
    .await
}

/// Marks a cancel request; answers the deployment's status, if it exists.
pub async fn request_cancel(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE deployments SET cancel_requested = true WHERE id = $1 RETURNING status",
    )
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Starts a queued deployment with its resolved plan.
#[allow(clippy::too_many_arguments)]
pub async fn start(
    conn: &mut PgConnection,
    id: Uuid,
    release: i32,
    config_version: i32,
    replicas: i32,
    from: Option<(i32, i32, i32)>,
    plan: &[Step],
    health_check: &HealthCheck,
    deadline: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE deployments SET status = 'progressing', release = $2, config_version = $3, \
         replicas = $4, from_release = $5, from_config = $6, from_replicas = $7, plan = $8, \
         step_index = 0, step_started_at = now(), step_deadline = $9, started_at = now(), \
         health_check = $10 WHERE id = $1",
    )
    .bind(id)
    .bind(release)
    .bind(config_version)
    .bind(replicas)
    .bind(from.map(|f| f.0))
    .bind(from.map(|f| f.1))
    .bind(from.map(|f| f.2))
    .bind(Json(plan))
    .bind(deadline)
    .bind(Json(health_check))
    .execute(conn)
    .await?;
    Ok(())
}

/// Moves to step `index` with a fresh deadline.
pub async fn advance(
    conn: &mut PgConnection,
    id: Uuid,
    index: i32,
    deadline: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE deployments SET step_index = $2, step_started_at = now(), step_deadline = $3 \
         WHERE id = $1",
    )
    .bind(id)
    .bind(index)
    .bind(deadline)
    .execute(conn)
    .await?;
    Ok(())
}

/// Switches to the way back (`rolling_back`), keeping the reason.
pub async fn begin_rollback(
    conn: &mut PgConnection,
    id: Uuid,
    plan: &[Step],
    reason: Option<&FailureReason>,
    deadline: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE deployments SET status = 'rolling_back', rollback_plan = $2, reason = $3, \
         step_index = 0, step_started_at = now(), step_deadline = $4 WHERE id = $1",
    )
    .bind(id)
    .bind(Json(plan))
    .bind(reason.map(Json))
    .bind(deadline)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn finish(
    conn: &mut PgConnection,
    id: Uuid,
    status: &str,
    reason: Option<&FailureReason>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE deployments SET status = $2, reason = coalesce($3, reason), finished_at = now(), \
         step_deadline = NULL WHERE id = $1",
    )
    .bind(id)
    .bind(status)
    .bind(reason.map(Json))
    .execute(conn)
    .await?;
    Ok(())
}
