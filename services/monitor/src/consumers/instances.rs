//! `slipway.instances`: what the deployer says about instances.
//!
//! - `InstanceStarted`: stores the incarnation (unless a later one is known) and (re)starts
//!   its prober in `starting` if this replica holds the instance's shard; otherwise it wakes
//!   the replicas' shard rounds, and the holder starts it.
//! - `InstanceExited`: stops probing that incarnation and records it `unhealthy` with the exit
//!   text, announcing the change if the health changed. An exit of an earlier incarnation than
//!   the stored one is stale and changes nothing.
//! - `InstanceStopped`: stops probing and forgets the instance.
//! - `InstanceLogs`: stores the lines; `(instance_id, seq)` makes a redelivered batch harmless,
//!   so logs skip the inbox (one row per batch would be pure overhead).
//! - `InstanceDraining` and the monitor's own `InstanceHealthChanged` are ignored (draining
//!   instances keep being probed).
//!
//! Database effects are applied once per event id (inbox) in one transaction with the events
//! they announce; probers are started and stopped after the commit. If the process dies in between,
//! start-up loads every incarnation still to probe, so nothing is lost.

use slipway_events::deploy::{
    Health, InstanceExited, InstanceHealthChanged, InstanceLogs, InstanceStarted, InstanceStopped,
};
use slipway_events::{CloudEvent, EventData};
use slipway_kafka::{Handled, Handler, HandlerError};
use sqlx::PgPool;

use crate::db::{self, probes};
use crate::health::{Probers, health_changed, project_of};

/// The inbox name of this handler.
const CONSUMER: &str = "monitor.health";

/// Applies instance facts to the probe set and the log store.
pub struct InstanceEvents {
    pool: PgPool,
    probers: Probers,
}

impl InstanceEvents {
    pub fn new(pool: PgPool, probers: Probers) -> Self {
        Self { pool, probers }
    }

    async fn started(&self, event: &CloudEvent) -> Result<Handled, HandlerError> {
        let data: InstanceStarted = parse(event)?;
        let trace = (event.traceparent.clone(), event.tracestate.clone());
        let Some(mut tx) = self.begin(event).await? else {
            return Ok(Handled::Duplicate);
        };
        let outcome = probes::start(&mut tx, &data, trace).await.map_err(retry)?;
        // The replica holding the instance's shard may be another one: wake it (on commit).
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(crate::health::shards::WAKE)
            .execute(&mut *tx)
            .await
            .map_err(retry)?;
        tx.commit().await.map_err(retry)?;
        match outcome {
            probes::Started::New(probe) => self.probers.start(*probe).await,
            probes::Started::Same(probe) => self.probers.ensure(*probe).await,
            probes::Started::Stale => {
                tracing::debug!(instance = %data.instance.instance_id, restarts = data.restarts, "stale start ignored");
            }
        }
        Ok(Handled::Applied)
    }

    async fn exited(&self, event: &CloudEvent) -> Result<Handled, HandlerError> {
        let data: InstanceExited = parse(event)?;
        let id = data.instance.instance_id;
        let Some(mut tx) = self.begin(event).await? else {
            return Ok(Handled::Duplicate);
        };
        let before = probes::exit(&mut tx, id, data.restarts, &data.exit)
            .await
            .map_err(retry)?;
        let Some(mut probe) = before else {
            tracing::debug!(instance = %id, restarts = data.restarts, "stale or unknown exit ignored");
            tx.commit().await.map_err(retry)?;
            return Ok(Handled::Applied);
        };
        if probe.health != Health::Unhealthy || probe.restarts != data.restarts {
            probe.instance = data.instance.clone();
            probe.restarts = data.restarts;
            let mut ce = health_changed(&probe, Health::Unhealthy, &data.exit)
                .map_err(|e| HandlerError::Permanent(e.into()))?;
            (ce.traceparent, ce.tracestate) = (event.traceparent.clone(), event.tracestate.clone());
            ce.project = project_of(&mut tx, data.instance.service_id)
                .await
                .map_err(retry)?;
            slipway_outbox::enqueue(&mut tx, InstanceHealthChanged::TOPIC, &ce)
                .await
                .map_err(retry)?;
        }
        tx.commit().await.map_err(retry)?;
        // After the commit the row no longer says `probing`, so even a prober that has not
        // stopped yet cannot write a transition for this incarnation.
        self.probers.stop(id, Some(data.restarts)).await;
        Ok(Handled::Applied)
    }

    async fn stopped(&self, event: &CloudEvent) -> Result<Handled, HandlerError> {
        let data: InstanceStopped = parse(event)?;
        let id = data.instance.instance_id;
        let Some(mut tx) = self.begin(event).await? else {
            return Ok(Handled::Duplicate);
        };
        probes::forget(&mut tx, id).await.map_err(retry)?;
        tx.commit().await.map_err(retry)?;
        self.probers.stop(id, None).await;
        Ok(Handled::Applied)
    }

    /// Opens the transaction of `event`'s effect with its id recorded in the inbox, or `None`
    /// when it was applied before.
    async fn begin(
        &self,
        event: &CloudEvent,
    ) -> Result<Option<sqlx::Transaction<'static, sqlx::Postgres>>, HandlerError> {
        let mut tx = self.pool.begin().await.map_err(retry)?;
        let first = slipway_outbox::inbox::record(&mut tx, CONSUMER, event)
            .await
            .map_err(retry)?;
        Ok(first.then_some(tx))
    }

    async fn logs(&self, event: &CloudEvent) -> Result<Handled, HandlerError> {
        let data: InstanceLogs = parse(event)?;
        let stored = db::logs::store(&self.pool, &data)
            .await
            .map_err(|e| HandlerError::Retryable(e.into()))?;
        Ok(if stored == 0 && !data.lines.is_empty() {
            Handled::Duplicate
        } else {
            Handled::Applied
        })
    }
}

/// Database errors may pass: the runner retries with backoff.
fn retry(e: sqlx::Error) -> HandlerError {
    HandlerError::Retryable(e.into())
}

fn parse<D: EventData>(event: &CloudEvent) -> Result<D, HandlerError> {
    event
        .data_as()
        .map_err(|e| HandlerError::Permanent(e.into()))
}

impl Handler for InstanceEvents {
    async fn handle(&self, event: &CloudEvent) -> Result<Handled, HandlerError> {
        match event.ty.as_str() {
            InstanceStarted::TYPE => self.started(event).await,
            InstanceExited::TYPE => self.exited(event).await,
            InstanceStopped::TYPE => self.stopped(event).await,
            InstanceLogs::TYPE => self.logs(event).await,
            _ => Ok(Handled::Ignored),
        }
    }
}
