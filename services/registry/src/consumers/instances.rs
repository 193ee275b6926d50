//! Instance and traffic facts → the discovered instances and weights routers read.
//!
//! Each event is applied once (inbox) and, when it changed what readers see, bumps the
//! discovery index in the same transaction, which wakes blocking queries on every replica.

use anyhow::anyhow;
use futures::FutureExt;
use slipway_events::deploy::{
    InstanceDraining, InstanceExited, InstanceHealthChanged, InstanceStarted, InstanceStopped,
    InstancesHeartbeat, TrafficChanged,
};
use slipway_events::{CloudEvent, EventData};
use slipway_kafka::{Handled, Handler, HandlerError};
use sqlx::PgPool;

use crate::db::instances;

const CONSUMER: &str = "registry.discovery";

/// One fact the registry applies, parsed before any transaction starts.
enum Fact {
    Started(InstanceStarted),
    Health(InstanceHealthChanged),
    Exited(InstanceExited),
    Draining(InstanceDraining),
    Stopped(InstanceStopped),
    Heartbeat(InstancesHeartbeat),
    Traffic(TrafficChanged),
}

impl Fact {
    /// `None` for event types discovery does not act on (logs, deployment progress, ...).
    fn parse(event: &CloudEvent) -> Result<Option<Self>, HandlerError> {
        fn data<D: EventData>(event: &CloudEvent) -> Result<D, HandlerError> {
            event
                .data_as()
                .map_err(|e| HandlerError::Permanent(anyhow!("{}: {e}", event.ty)))
        }
        Ok(Some(match event.ty.as_str() {
            InstanceStarted::TYPE => Fact::Started(data(event)?),
            InstanceHealthChanged::TYPE => Fact::Health(data(event)?),
            InstanceExited::TYPE => Fact::Exited(data(event)?),
            InstanceDraining::TYPE => Fact::Draining(data(event)?),
            InstanceStopped::TYPE => Fact::Stopped(data(event)?),
            InstancesHeartbeat::TYPE => Fact::Heartbeat(data(event)?),
            TrafficChanged::TYPE => Fact::Traffic(data(event)?),
            _ => return Ok(None),
        }))
    }
}

/// Keeps the instance registry from `slipway.instances` and `slipway.deployments`.
pub struct Discovery {
    pool: PgPool,
}

impl Discovery {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

impl Handler for Discovery {
    async fn handle(&self, event: &CloudEvent) -> Result<Handled, HandlerError> {
        let Some(fact) = Fact::parse(event)? else {
            return Ok(Handled::Ignored);
        };
        slipway_outbox::inbox::apply_once(&self.pool, CONSUMER, event, move |tx| {
            async move {
                let changed = match &fact {
                    Fact::Started(e) => instances::started(tx, e).await?,
                    Fact::Health(e) => {
                        let applied = instances::health(tx, e).await?;
                        if !applied {
                            tracing::debug!(
                                instance = %e.instance.instance_id,
                                restarts = e.restarts,
                                "health verdict on another incarnation, or unchanged; ignored"
                            );
                        }
                        applied
                    }
                    Fact::Exited(e) => instances::exited(tx, e).await?,
                    Fact::Draining(e) => instances::draining(tx, e).await?,
                    Fact::Stopped(e) => instances::stopped(tx, e.instance.instance_id).await?,
                    // Seen-ness is not part of the index (see `db::instances`).
                    Fact::Heartbeat(e) => {
                        instances::heartbeat(tx, e).await?;
                        false
                    }
                    Fact::Traffic(e) => instances::traffic(tx, e).await?,
                };
                if changed {
                    instances::bump(tx).await?;
                }
                Ok(())
            }
            .boxed()
        })
        .await
    }
}
