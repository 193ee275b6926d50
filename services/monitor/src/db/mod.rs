//! Queries on the monitor's own tables.

pub mod logs;
pub mod probes;

use sqlx::PgPool;

/// Whether the monitor knows a service named `name`: from the registry's events
/// (`watched_services`) or from its instances' events.
pub async fn service_known(pool: &PgPool, name: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM watched_services WHERE name = $1) \
         OR EXISTS (SELECT 1 FROM probes WHERE service_name = $1) \
         OR EXISTS (SELECT 1 FROM instance_logs WHERE service_name = $1)",
    )
    .bind(name)
    .fetch_one(pool)
    .await
}
