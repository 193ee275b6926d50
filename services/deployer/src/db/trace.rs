//! A deployment's trace context: stored when the command arrives, continued when it is driven.

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// Stores `traceparent` (the consuming span's, or the command event's) on deployment `id`
/// unless one is stored already (a redelivered command keeps the first).
pub async fn record(
    conn: &mut PgConnection,
    id: Uuid,
    traceparent: Option<&str>,
) -> Result<(), sqlx::Error> {
    if traceparent.is_none() {
        return Ok(());
    }
    sqlx::query("UPDATE deployments SET traceparent = $2 WHERE id = $1 AND traceparent IS NULL")
        .bind(id)
        .bind(traceparent)
        .execute(conn)
        .await?;
    Ok(())
}

/// The trace context to store for work asked for by `event`: the current (consuming) span's,
/// or the event's own when tracing is off here.
pub fn of_command(event: &slipway_events::CloudEvent) -> Option<String> {
    slipway_telemetry::current_traceparent().or_else(|| event.traceparent.clone())
}

/// The span the engine drives deployment `id` in: a child of the command's trace, or a new
/// trace when none was stored (or it cannot be read: tracing must never stop a deployment).
pub async fn span(pool: &PgPool, id: Uuid) -> tracing::Span {
    let stored: Option<String> = match sqlx::query_scalar(
        "SELECT traceparent FROM deployments WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
    {
        Ok(tp) => tp.flatten(),
        Err(e) => {
            tracing::debug!(deployment.id = %id, error = %e, "cannot read the deployment's trace context");
            None
        }
    };
    slipway_telemetry::span_with_parent("deployment.drive", stored.as_deref())
}
