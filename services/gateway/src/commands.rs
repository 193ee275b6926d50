//! Turning accepted requests into command events: an `operations` row and the event, in one
//! transaction through the outbox, so a 202 is never answered for a command that is then lost.

use chrono::Utc;
use slipway_events::deploy::{DeployCancelRequested, DeployKind, DeployRequested};
use slipway_events::slipway::{BuildRequested, BuildTrigger, sources};
use slipway_events::{CloudEvent, EventData};
use slipway_http::Problem;
use slipway_http::problem::unexpected as internal;
use slipway_ids::{BuildId, ProjectName, ServiceId};
use slipway_wire::service::Service;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// Records the build and enqueues `dev.slipway.build.requested.v1`; returns its id.
pub async fn request_build(
    pool: &PgPool,
    service: &Service,
    git_ref: String,
    commit: Option<String>,
    upload: Option<uuid::Uuid>,
    trigger: BuildTrigger,
) -> Result<BuildId, Problem> {
    let mut tx = pool.begin().await.map_err(|e| internal("begin", e))?;
    let build_id = request_build_in(&mut tx, service, git_ref, commit, upload, trigger).await?;
    tx.commit().await.map_err(|e| internal("commit", e))?;
    Ok(build_id)
}

/// [`request_build`] inside the caller's transaction (a webhook delivery records itself in
/// the same one); the caller commits.
pub async fn request_build_in(
    tx: &mut PgConnection,
    service: &Service,
    git_ref: String,
    commit: Option<String>,
    upload: Option<uuid::Uuid>,
    trigger: BuildTrigger,
) -> Result<BuildId, Problem> {
    let build_id = BuildId::new();
    let data = BuildRequested {
        build_id,
        service_id: service.id,
        service_name: service.name.clone(),
        project: Some(service.project.clone()),
        repository: service.repository.clone(),
        git_ref,
        commit,
        upload,
        trigger: trigger.clone(),
        requested_at: Utc::now(),
    };
    let event =
        command_event(service.id, build_id.to_string(), &data)?.with_project(data.project.clone());
    sqlx::query(
        "INSERT INTO operations (id, kind, service_id, service_name, requested_by, trigger) \
         VALUES ($1, 'build', $2, $3, $4, $5)",
    )
    .bind(build_id)
    .bind(service.id)
    .bind(&service.name)
    .bind(&trigger.actor)
    .bind(&trigger.kind)
    .execute(&mut *tx)
    .await
    .map_err(|e| internal("record operation", e))?;
    slipway_outbox::enqueue(&mut *tx, BuildRequested::TOPIC, &event)
        .await
        .map_err(|e| internal("enqueue build request", e))?;
    tracing::info!(build.id = %build_id, service.name = %service.name, trigger = %trigger.kind, "build requested");
    Ok(build_id)
}

/// The 202 answer for an accepted build.
pub fn accepted(build_id: BuildId) -> actix_web::HttpResponse {
    let url = format!("/v1/builds/{build_id}");
    actix_web::HttpResponse::Accepted()
        .insert_header(("location", url.clone()))
        .json(serde_json::json!({ "id": build_id, "status": "requested", "url": url }))
}

/// A command event from the gateway, carrying the current trace context.
fn command_event<D: EventData>(
    key: ServiceId,
    subject: String,
    data: &D,
) -> Result<CloudEvent, Problem> {
    let mut event = CloudEvent::new(sources::GATEWAY, key, Some(subject), data)
        .map_err(|e| internal("serialise event", e))?;
    let trace = slipway_telemetry::current_context();
    event.traceparent = trace.get("traceparent").cloned();
    event.tracestate = trace.get("tracestate").cloned();
    Ok(event)
}

/// The `operations.kind` of a deploy command.
pub fn kind_name(kind: DeployKind) -> &'static str {
    match kind {
        DeployKind::Deploy => "deploy",
        DeployKind::Rollback => "rollback",
        DeployKind::Scale => "scale",
    }
}

/// Records the deployment (`operations` row of its kind) and enqueues
/// `dev.slipway.deploy.requested.v1`, keyed by the service, with the deployment id as subject.
pub async fn request_deploy(pool: &PgPool, data: &DeployRequested) -> Result<(), Problem> {
    let event = command_event(data.service_id, data.deployment_id.to_string(), data)?
        .with_project(data.project.clone());
    let mut tx = pool.begin().await.map_err(|e| internal("begin", e))?;
    sqlx::query(
        "INSERT INTO operations \
         (id, kind, service_id, service_name, environment, requested_by, trigger) \
         VALUES ($1, $2, $3, $4, $5, $6, 'api')",
    )
    .bind(data.deployment_id)
    .bind(kind_name(data.kind))
    .bind(data.service_id)
    .bind(&data.service_name)
    .bind(&data.environment)
    .bind(&data.actor)
    .execute(&mut *tx)
    .await
    .map_err(|e| internal("record operation", e))?;
    slipway_outbox::enqueue(&mut tx, DeployRequested::TOPIC, &event)
        .await
        .map_err(|e| internal("enqueue deploy request", e))?;
    tx.commit().await.map_err(|e| internal("commit", e))?;
    tracing::info!(
        deployment.id = %data.deployment_id,
        service.name = %data.service_name,
        environment = %data.environment,
        kind = kind_name(data.kind),
        "deployment requested"
    );
    Ok(())
}

/// A deploy, rollback or scale the gateway accepted, as its `operations` row says.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeploymentOperation {
    pub id: Uuid,
    /// `deploy`, `rollback` or `scale`.
    pub kind: String,
    pub service_id: ServiceId,
    pub service_name: String,
    pub environment: Option<String>,
    pub created_at: chrono::DateTime<Utc>,
}

/// The accepted deploy/rollback/scale with id `id`, if the gateway accepted one.
pub async fn deployment_operation(
    pool: &PgPool,
    id: Uuid,
) -> Result<Option<DeploymentOperation>, Problem> {
    sqlx::query_as(
        "SELECT id, kind, service_id, service_name, environment, created_at FROM operations \
         WHERE id = $1 AND kind IN ('deploy', 'rollback', 'scale')",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
    .map_err(|e| internal("read operation", e))
}

/// Records a `cancel` operation pointing at `deployment` and enqueues
/// `dev.slipway.deploy.cancel-requested.v1`; returns the cancel operation's id. Whether there
/// is still anything to cancel is the deployer's call: it owns the deployment's state.
pub async fn request_cancel(
    pool: &PgPool,
    deployment: &DeploymentOperation,
    project: ProjectName,
    actor: &str,
) -> Result<Uuid, Problem> {
    let cancel_id = Uuid::new_v4();
    let data = DeployCancelRequested {
        deployment_id: deployment.id,
        service_id: deployment.service_id,
        project: Some(project),
        actor: Some(actor.to_owned()),
        requested_at: Utc::now(),
    };
    let event = command_event(deployment.service_id, deployment.id.to_string(), &data)?
        .with_project(data.project.clone());
    let mut tx = pool.begin().await.map_err(|e| internal("begin", e))?;
    sqlx::query(
        "INSERT INTO operations \
         (id, kind, service_id, service_name, environment, requested_by, trigger, cancels) \
         VALUES ($1, 'cancel', $2, $3, $4, $5, 'api', $6)",
    )
    .bind(cancel_id)
    .bind(deployment.service_id)
    .bind(&deployment.service_name)
    .bind(&deployment.environment)
    .bind(actor)
    .bind(deployment.id)
    .execute(&mut *tx)
    .await
    .map_err(|e| internal("record operation", e))?;
    slipway_outbox::enqueue(&mut tx, DeployCancelRequested::TOPIC, &event)
        .await
        .map_err(|e| internal("enqueue cancel request", e))?;
    tx.commit().await.map_err(|e| internal("commit", e))?;
    tracing::info!(deployment.id = %deployment.id, service.name = %deployment.service_name, "deployment cancel requested");
    Ok(cancel_id)
}
