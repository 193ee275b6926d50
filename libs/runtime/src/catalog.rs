//! A service's own copy of the registry's services, kept from "service created" events.
//!
//! Builder, deployer and monitor each keep one (in a table of their schema with the columns
//! `service_id`, `name`, `project`, `repository`, `branch`, `updated_at`), so they never read the
//! registry's tables nor ask it per event.

use futures::FutureExt;
use slipway_events::slipway::ServiceCreated;
use slipway_events::{CloudEvent, EventData};
use slipway_ids::{ProjectName, ServiceId};
use slipway_kafka::{Handled, Handler, HandlerError};
use sqlx::{PgConnection, PgPool};

/// Upserts each created service into `table`; other event types are left to other handlers.
pub struct ServiceCatalog {
    pool: PgPool,
    /// The inbox name, e.g. `builder.service-catalog`.
    consumer: &'static str,
    /// A table of the service's schema; a compile-time constant, never user input.
    table: &'static str,
}

impl ServiceCatalog {
    pub fn new(pool: PgPool, consumer: &'static str, table: &'static str) -> Self {
        Self {
            pool,
            consumer,
            table,
        }
    }
}

impl Handler for ServiceCatalog {
    async fn handle(&self, event: &CloudEvent) -> Result<Handled, HandlerError> {
        if event.ty != ServiceCreated::TYPE {
            return Ok(Handled::Ignored);
        }
        let data: ServiceCreated = event
            .data_as()
            .map_err(|e| HandlerError::Permanent(e.into()))?;
        let sql = format!(
            "INSERT INTO {} (service_id, name, project, repository, branch) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (service_id) DO UPDATE SET \
             name = EXCLUDED.name, project = EXCLUDED.project, repository = EXCLUDED.repository, \
             branch = EXCLUDED.branch, updated_at = now()",
            self.table
        );
        slipway_outbox::inbox::apply_once(&self.pool, self.consumer, event, move |tx| {
            async move {
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(data.service_id)
                    .bind(&data.name)
                    .bind(&data.project)
                    .bind(&data.repository)
                    .bind(&data.branch)
                    .execute(tx)
                    .await
                    .map(|_| ())
            }
            .boxed()
        })
        .await
    }
}

/// The project of `service_id` in the catalog `table` (same contract as [`ServiceCatalog`]'s),
/// read in the caller's transaction so an event enqueued there names the project the service
/// had at that moment; `None` for a service the catalog has not heard of (never guessed).
pub async fn project_of(
    conn: &mut PgConnection,
    table: &'static str,
    service_id: ServiceId,
) -> Result<Option<ProjectName>, sqlx::Error> {
    let sql = format!("SELECT project FROM {table} WHERE service_id = $1");
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(service_id)
        .fetch_optional(conn)
        .await
}
