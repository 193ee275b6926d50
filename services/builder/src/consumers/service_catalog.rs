//! Keeps the builder's copy of each service's source up to date.

use futures::FutureExt;
use slipway_events::slipway::ServiceCreated;
use slipway_events::{CloudEvent, EventData};
use slipway_kafka::{Handled, Handler, HandlerError};
use sqlx::PgPool;

/// The inbox name of this handler.
const CONSUMER: &str = "builder.service-catalog";

/// Keeps `build_sources` in step with the registry's "service created" events; other types are
/// left to the other handlers.
pub struct ServiceCatalog {
    pool: PgPool,
}

impl ServiceCatalog {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
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
        slipway_outbox::inbox::apply_once(&self.pool, CONSUMER, event, move |tx| {
            async move {
                sqlx::query(
                    "INSERT INTO build_sources (service_id, name, repository, branch) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (service_id) DO UPDATE SET \
                     name = EXCLUDED.name, repository = EXCLUDED.repository, \
                     branch = EXCLUDED.branch, updated_at = now()",
                )
                .bind(data.service_id)
                .bind(&data.name)
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
