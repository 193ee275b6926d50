//! Instance and traffic facts → the discovered instances and weights routers read.
//!
//! Each event is applied once (inbox) and, when it changed what readers see, bumps the
//! discovery index in the same transaction, which wakes blocking queries on every replica.
//! A traffic change also records that index as the version its weights took effect at, which
//! the deployer's route step waits for routers to reach. Heartbeats insert rows the registry
//! lost and are the only thing that reaps (see `db::heartbeats`).

use anyhow::anyhow;
use futures::FutureExt;
use slipway_events::deploy::{
    InstanceDraining, InstanceExited, InstanceHealthChanged, InstanceStarted, InstanceStopped,
    InstancesHeartbeat, InstancesHeartbeatV1, InstancesHeartbeatV2, TrafficChanged,
};
use slipway_events::{CloudEvent, EventData};
use slipway_kafka::{Handled, Handler, HandlerError};
use sqlx::PgPool;

use crate::db::heartbeats::{self, Applied};
use crate::db::instances;
use crate::discovery::DiscoverySettings;

const CONSUMER: &str = "registry.discovery";

/// One fact the registry applies, parsed before any transaction starts.
enum Fact {
    Started(InstanceStarted),
    Health(InstanceHealthChanged),
    Exited(InstanceExited),
    Draining(InstanceDraining),
    Stopped(InstanceStopped),
    Heartbeat(InstancesHeartbeat),
    HeartbeatV2(InstancesHeartbeatV2),
    HeartbeatV1(InstancesHeartbeatV1),
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
            InstancesHeartbeatV2::TYPE => Fact::HeartbeatV2(data(event)?),
            InstancesHeartbeatV1::TYPE => Fact::HeartbeatV1(data(event)?),
            TrafficChanged::TYPE => Fact::Traffic(data(event)?),
            _ => return Ok(None),
        }))
    }
}

/// Keeps the instance registry from `slipway.instances` and `slipway.deployments`.
pub struct Discovery {
    pool: PgPool,
    /// The interval assumed when a heartbeat announces none.
    default_heartbeat_ms: u64,
    /// Intervals of heartbeats without an instance before it is reaped.
    stale_after: u32,
}

impl Discovery {
    pub fn new(pool: PgPool, settings: &DiscoverySettings) -> Self {
        Self {
            pool,
            default_heartbeat_ms: settings.default_heartbeat_ms,
            stale_after: settings.stale_after_intervals,
        }
    }
}

/// Logs what a heartbeat put back or reaped (both are worth an operator's eye).
fn log_applied(applied: &Applied, service: &str) {
    if !applied.inserted.is_empty() {
        tracing::info!(
            service,
            instances = ?applied.inserted,
            "instances missing from discovery inserted from a heartbeat"
        );
    }
    for r in &applied.reaped {
        tracing::info!(
            instance = %r.id,
            service = %r.service_name,
            environment = %r.environment,
            "instance reaped: heartbeats for its environment go on without it"
        );
    }
}

impl Handler for Discovery {
    async fn handle(&self, event: &CloudEvent) -> Result<Handled, HandlerError> {
        let Some(fact) = Fact::parse(event)? else {
            return Ok(Handled::Ignored);
        };
        let (default_ms, stale_after) = (self.default_heartbeat_ms, self.stale_after);
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
                    // Seen-ness is not part of the index (see `db::instances`); only rows
                    // inserted or reaped are.
                    Fact::Heartbeat(e) => {
                        let applied = heartbeats::apply(tx, e, default_ms, stale_after).await?;
                        log_applied(&applied, &e.service_name);
                        applied.changed()
                    }
                    Fact::HeartbeatV2(e) => {
                        let applied = heartbeats::apply_v2(tx, e, default_ms, stale_after).await?;
                        log_applied(&applied, &e.service_name);
                        applied.changed()
                    }
                    Fact::HeartbeatV1(e) => {
                        let applied = heartbeats::apply_v1(tx, e, default_ms, stale_after).await?;
                        log_applied(&applied, &e.service_name);
                        applied.changed()
                    }
                    Fact::Traffic(e) => instances::traffic(tx, e).await?,
                };
                if changed {
                    let index = instances::bump(tx).await?;
                    if let Fact::Traffic(e) = &fact {
                        instances::traffic_version(tx, e.service_id, &e.environment, index).await?;
                    }
                } else if let Fact::Heartbeat(InstancesHeartbeat { service_name, .. })
                | Fact::HeartbeatV2(InstancesHeartbeatV2 { service_name, .. })
                | Fact::HeartbeatV1(InstancesHeartbeatV1 { service_name, .. }) = &fact
                {
                    // `last_seen` moved: kept answers of this service go (no bump, see above).
                    instances::seen(tx, service_name).await?;
                }
                Ok(())
            }
            .boxed()
        })
        .await
    }
}
