//! `dev.slipway.build.requested.v1`: store the build as queued (once) and wake the worker.

use std::sync::Arc;

use futures::FutureExt;
use slipway_events::slipway::BuildRequested;
use slipway_events::{CloudEvent, EventData};
use slipway_kafka::{Handled, Handler, HandlerError};
use sqlx::PgPool;
use tokio::sync::Notify;

const CONSUMER: &str = "builder.build-requests";

pub struct BuildRequests {
    pool: PgPool,
    wake: Arc<Notify>,
}

impl BuildRequests {
    pub fn new(pool: PgPool, wake: Arc<Notify>) -> Self {
        Self { pool, wake }
    }
}

impl Handler for BuildRequests {
    async fn handle(&self, event: &CloudEvent) -> Result<Handled, HandlerError> {
        if event.ty != BuildRequested::TYPE {
            return Ok(Handled::Ignored);
        }
        let request: BuildRequested = event
            .data_as()
            .map_err(|e| HandlerError::Permanent(e.into()))?;
        // The worker continues this trace when it drives the build (any replica, any time).
        let trace = slipway_telemetry::current_traceparent().or_else(|| event.traceparent.clone());
        let handled = slipway_outbox::inbox::apply_once(&self.pool, CONSUMER, event, move |tx| {
            async move {
                crate::builds::enqueue(tx, &request).await?;
                crate::builds::trace::record(tx, request.build_id, trace.as_deref()).await
            }
            .boxed()
        })
        .await?;
        self.wake.notify_one();
        Ok(handled)
    }
}
