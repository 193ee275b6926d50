//! Deployments: queued on request, driven by the engine, finished once.

use chrono::{DateTime, Utc};
use serde::Serialize;
use slipway_events::deploy::{DeployRequested, FailureReason, HealthCheck, Strategy};
use slipway_ids::{DeploymentId, ServiceId};
use slipway_wire::releases::TargetKind;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};

use super::leases::{FencedError, Lease};
use crate::domain::{DeploymentKind, DeploymentStatus, Step};

/// A deployment as stored and shown.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Deployment {
    pub id: DeploymentId,
    pub kind: DeploymentKind,
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
    pub status: DeploymentStatus,
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
    /// The replica driving it (absent: nobody; a queued or ended deployment).
    pub lease_owner: Option<String>,
    /// How many times it was claimed; the driver's writes are fenced on it.
    pub lease_epoch: i64,
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Where its instances run: the target the registry recorded for the environment when
    /// the deployment started (absent while queued, and for old ended ones).
    pub target: Option<TargetKind>,
}

impl Deployment {
    /// The steps being executed: the rollout, or the way back once it is rolling back.
    pub fn active_plan(&self) -> &[Step] {
        if self.status == DeploymentStatus::RollingBack {
            &self.rollback_plan.0
        } else {
            &self.plan.0
        }
    }

    /// The target its instances run on. A started deployment always has one (the migration
    /// gave those in flight before targets were recorded theirs); a queued one has none yet,
    /// so the built-in default stands in, though nothing starts before the deployment does.
    pub fn target(&self) -> TargetKind {
        self.target.unwrap_or_default()
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
            Some(s) if !self.status.is_terminal() => serde_json::json!(s.describe()),
            _ => serde_json::Value::Null,
        };
        v["url"] = serde_json::json!(format!("/v1/deployments/{}", self.id));
        v
    }

    /// Whether `lease` is the lease this row was read under.
    pub fn held_by(&self, lease: &Lease) -> bool {
        self.lease_epoch == lease.epoch && self.lease_owner.as_deref() == Some(lease.owner.as_str())
    }
}

/// Records a request as `queued`; a redelivered command changes nothing.
pub async fn insert(
    conn: &mut PgConnection,
    r: &DeployRequested,
    default_timeout: u32,
) -> Result<bool, sqlx::Error> {
    let kind = DeploymentKind::from(r.kind);
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

pub async fn get(pool: &PgPool, id: DeploymentId) -> Result<Option<Deployment>, sqlx::Error> {
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

/// Marks a cancel request; answers the deployment's status, if it exists.
pub async fn request_cancel(
    conn: &mut PgConnection,
    id: DeploymentId,
) -> Result<Option<DeploymentStatus>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE deployments SET cancel_requested = true WHERE id = $1 RETURNING status",
    )
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// What a deployment resolved to when it starts.
pub struct Start<'a> {
    pub release: i32,
    pub config_version: i32,
    pub replicas: i32,
    /// What ran before: release, config version, replicas.
    pub from: Option<(i32, i32, i32)>,
    pub plan: &'a [Step],
    pub health_check: &'a HealthCheck,
    pub deadline: DateTime<Utc>,
    /// The environment's target, as the registry records it.
    pub target: TargetKind,
}

/// Starts a queued deployment with its resolved plan (fenced on `lease`).
pub async fn start(
    conn: &mut PgConnection,
    lease: &Lease,
    s: &Start<'_>,
) -> Result<(), FencedError> {
    let done = sqlx::query(
        "UPDATE deployments SET status = 'progressing', release = $2, config_version = $3, \
         replicas = $4, from_release = $5, from_config = $6, from_replicas = $7, plan = $8, \
         step_index = 0, step_started_at = now(), step_deadline = $9, started_at = now(), \
         health_check = $10, target = $13 WHERE id = $1 AND status = 'queued' \
         AND lease_owner = $11 AND lease_epoch = $12",
    )
    .bind(lease.deployment)
    .bind(s.release)
    .bind(s.config_version)
    .bind(s.replicas)
    .bind(s.from.map(|f| f.0))
    .bind(s.from.map(|f| f.1))
    .bind(s.from.map(|f| f.2))
    .bind(Json(s.plan))
    .bind(s.deadline)
    .bind(Json(s.health_check))
    .bind(&lease.owner)
    .bind(lease.epoch)
    .bind(s.target)
    .execute(conn)
    .await?;
    lease.fenced(done)
}

/// Gives a queued deployment its deadline for being resolved, once: a request whose release or
/// config cannot be looked up (the registry unreachable) fails then instead of waiting forever.
pub async fn set_resolve_deadline(
    conn: &mut PgConnection,
    lease: &Lease,
    deadline: DateTime<Utc>,
) -> Result<(), FencedError> {
    let done = sqlx::query(
        "UPDATE deployments SET step_deadline = coalesce(step_deadline, $2) \
         WHERE id = $1 AND lease_owner = $3 AND lease_epoch = $4",
    )
    .bind(lease.deployment)
    .bind(deadline)
    .bind(&lease.owner)
    .bind(lease.epoch)
    .execute(conn)
    .await?;
    lease.fenced(done)
}

/// Moves from step `from` to step `from + 1` with a fresh deadline (fenced on `lease`, and on
/// the step, so a step is completed once).
pub async fn advance(
    conn: &mut PgConnection,
    lease: &Lease,
    from: i32,
    deadline: DateTime<Utc>,
) -> Result<(), FencedError> {
    let done = sqlx::query(
        "UPDATE deployments SET step_index = $2 + 1, step_started_at = now(), step_deadline = $3 \
         WHERE id = $1 AND step_index = $2 AND lease_owner = $4 AND lease_epoch = $5",
    )
    .bind(lease.deployment)
    .bind(from)
    .bind(deadline)
    .bind(&lease.owner)
    .bind(lease.epoch)
    .execute(conn)
    .await?;
    lease.fenced(done)
}

/// Switches to the way back (`rolling_back`), keeping the reason (fenced on `lease`).
pub async fn begin_rollback(
    conn: &mut PgConnection,
    lease: &Lease,
    plan: &[Step],
    reason: Option<&FailureReason>,
    deadline: DateTime<Utc>,
) -> Result<(), FencedError> {
    let done = sqlx::query(
        "UPDATE deployments SET status = 'rolling_back', rollback_plan = $2, reason = $3, \
         step_index = 0, step_started_at = now(), step_deadline = $4 \
         WHERE id = $1 AND status = 'progressing' AND lease_owner = $5 AND lease_epoch = $6",
    )
    .bind(lease.deployment)
    .bind(Json(plan))
    .bind(reason.map(Json))
    .bind(deadline)
    .bind(&lease.owner)
    .bind(lease.epoch)
    .execute(conn)
    .await?;
    lease.fenced(done)
}

/// Ends the deployment with `status` and lets go of its lease, in the caller's transaction
/// (fenced on `lease`: a deployment ends once, by its owner).
pub async fn finish(
    conn: &mut PgConnection,
    lease: &Lease,
    status: DeploymentStatus,
    reason: Option<&FailureReason>,
) -> Result<(), FencedError> {
    let done = sqlx::query(
        "UPDATE deployments SET status = $2, reason = coalesce($3, reason), finished_at = now(), \
         step_deadline = NULL WHERE id = $1 AND status IN ('queued', 'progressing', 'rolling_back') \
         AND lease_owner = $4 AND lease_epoch = $5",
    )
    .bind(lease.deployment)
    .bind(status)
    .bind(reason.map(Json))
    .bind(&lease.owner)
    .bind(lease.epoch)
    .execute(&mut *conn)
    .await?;
    lease.fenced(done)?;
    super::leases::release(conn, lease).await
}
