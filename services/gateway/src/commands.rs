//! Turning accepted requests into command events: an `operations` row and the event, in one
//! transaction through the outbox, so a 202 is never answered for a command that is then lost.

use chrono::Utc;
use serde::Deserialize;
use slipway_events::slipway::{BuildRequested, BuildTrigger, sources};
use slipway_events::{CloudEvent, EventData};
use slipway_http::Problem;
use slipway_ids::{BuildId, ServiceId};
use sqlx::PgPool;

use crate::routes::internal;

/// A service as the registry describes it (the fields the gateway needs).
#[derive(Debug, Clone, Deserialize)]
pub struct ServiceRef {
    pub id: ServiceId,
    pub name: String,
    pub repository: Option<String>,
    pub branch: String,
}

/// Records the build and enqueues `dev.slipway.build.requested.v1`; returns its id.
pub async fn request_build(
    pool: &PgPool,
    service: &ServiceRef,
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
        repository: service.repository.clone(),
        git_ref,
        commit,
        upload,
        trigger: trigger.clone(),
        requested_at: Utc::now(),
    };
    let mut event = CloudEvent::new(
        sources::GATEWAY,
        service.id,
        Some(build_id.to_string()),
        &data,
    )
    .map_err(|e| internal("serialise event", e))?;
    let trace = slipway_telemetry::current_context();
    event.traceparent = trace.get("traceparent").cloned();
    event.tracestate = trace.get("tracestate").cloned();

    let mut tx = pool.begin().await.map_err(|e| internal("begin", e))?;
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
    slipway_outbox::enqueue(&mut tx, BuildRequested::TOPIC, &event)
        .await
        .map_err(|e| internal("enqueue build request", e))?;
    tx.commit().await.map_err(|e| internal("commit", e))?;
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
