//! A build's trace context: stored when the build is requested, continued when it is driven.

use slipway_ids::BuildId;
use sqlx::{PgConnection, PgPool};

/// Stores `traceparent` (the consuming span's, or the request event's) on build `id` unless one
/// is stored already (a redelivered request keeps the first).
pub async fn record(
    conn: &mut PgConnection,
    id: BuildId,
    traceparent: Option<&str>,
) -> Result<(), sqlx::Error> {
    if traceparent.is_none() {
        return Ok(());
    }
    sqlx::query("UPDATE builds SET traceparent = $2 WHERE id = $1 AND traceparent IS NULL")
        .bind(id)
        .bind(traceparent)
        .execute(conn)
        .await?;
    Ok(())
}

/// The span a worker drives build `id` in: a child of the request's trace, or a new trace when
/// none was stored (or it cannot be read: tracing must never stop a build).
pub async fn span(pool: &PgPool, id: BuildId) -> tracing::Span {
    let stored: Option<String> = match sqlx::query_scalar(
        "SELECT traceparent FROM builds WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
    {
        Ok(tp) => tp.flatten(),
        Err(e) => {
            tracing::debug!(build.id = %id, error = %e, "cannot read the build's trace context");
            None
        }
    };
    slipway_telemetry::span_with_parent("build.drive", stored.as_deref())
}
