//! Edge routers and the table version each serves, and the traffic status route steps wait on.

use chrono::{DateTime, Utc};
use slipway_events::deploy::ReleaseWeight;
use slipway_ids::{ReplicaId, ServiceId};
use sqlx::PgConnection;
use sqlx::types::Json;

/// Records that `router` serves table version `applied`, and stays live for `live_ms` unless
/// it polls again.
pub async fn polled(
    conn: &mut PgConnection,
    router: &ReplicaId,
    applied: i64,
    live_ms: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO routers (id, applied, polled_at, live_until) \
         VALUES ($1, $2, now(), now() + $3 * interval '1 millisecond') \
         ON CONFLICT (id) DO UPDATE SET applied = EXCLUDED.applied, \
             polled_at = EXCLUDED.polled_at, live_until = EXCLUDED.live_until",
    )
    .bind(router)
    .bind(applied)
    .bind(live_ms)
    .execute(conn)
    .await?;
    Ok(())
}

/// A router as stored.
#[derive(Debug, sqlx::FromRow)]
pub struct Router {
    pub id: ReplicaId,
    pub applied: i64,
    pub polled_at: DateTime<Utc>,
    pub live: bool,
}

/// Routers heard from in the last `recent_seconds`, live or not, by id.
pub async fn recent(
    conn: &mut PgConnection,
    recent_seconds: i64,
) -> Result<Vec<Router>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, applied, polled_at, live_until > now() AS live FROM routers \
         WHERE polled_at > now() - $1 * interval '1 second' ORDER BY id",
    )
    .bind(recent_seconds)
    .fetch_all(conn)
    .await
}

/// Forgets routers silent for `keep_seconds` (housekeeping).
pub async fn prune(conn: &mut PgConnection, keep_seconds: i64) -> Result<u64, sqlx::Error> {
    let done =
        sqlx::query("DELETE FROM routers WHERE polled_at < now() - $1 * interval '1 second'")
            .bind(keep_seconds)
            .execute(conn)
            .await?;
    Ok(done.rows_affected())
}

/// The stored split of `service` in `environment` and the version it took effect at;
/// `None` when none was ever set.
pub async fn traffic(
    conn: &mut PgConnection,
    service: ServiceId,
    environment: &str,
) -> Result<Option<(Vec<ReleaseWeight>, i64)>, sqlx::Error> {
    let row: Option<(Json<Vec<ReleaseWeight>>, i64)> = sqlx::query_as(
        "SELECT weights, version FROM traffic WHERE service_id = $1 AND environment = $2",
    )
    .bind(service)
    .bind(environment)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|(weights, version)| (weights.0, version)))
}
