//! The fleet: starting, retiring and recovering instances on the target, keeping their rows and
//! announcing every change (started, draining, exited, stopped, heartbeats, output).
//!
//! With several deployer replicas, each instance has one owner, the replica that supervises it
//! (restarts, stops, heartbeats): the one that started it, or the one that adopted it when its
//! owner was gone ([`ownership`]). Any replica may take an instance out of rotation; stopping
//! one owned by another replica is asked of its owner (state `stopping`), which stops it.

mod heartbeat;
mod ownership;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::Utc;
use futures::future::join_all;
use slipway_events::deploy::{
    HealthCheck, InstanceDraining, InstanceExited, InstanceLogs, InstanceStarted, InstanceStopped,
};
use slipway_events::slipway::sources;
use slipway_events::{CloudEvent, EventData};
use slipway_ids::{ProjectName, ReplicaId, ServiceId};
use slipway_kafka::EventProducer;
use sqlx::PgPool;
use uuid::Uuid;

use super::EngineError;
use super::plan::Set;
use crate::db::instances::{self, Instance, NewInstance};
use crate::db::replicas;
use crate::domain::InstanceState;
use crate::registry::{RegistryClient, ReleaseInfo};
use crate::target::{InstanceSpec, Placement, Target, TargetError, TargetEvent, TargetKind};
pub use ownership::ReplicaSettings;

/// Who an instance belongs to.
#[derive(Debug, Clone)]
pub struct Owner {
    pub service_id: ServiceId,
    pub service_name: String,
    pub environment: String,
    /// Where its instances run (the deployment's target).
    pub target: TargetKind,
    pub deployment_id: Option<Uuid>,
}

/// How a fleet works (from the `[deploy]` and `[replicas]` settings).
#[derive(Debug, Clone)]
pub struct FleetSettings {
    /// How long a draining instance keeps serving before it is stopped.
    pub drain: Duration,
    /// SIGTERM → SIGKILL grace.
    pub stop_grace: Duration,
    /// How often owned instances are announced.
    pub heartbeat: Duration,
    /// This replica.
    pub replica: ReplicaId,
    pub replicas: ReplicaSettings,
}

pub struct Fleet {
    pub pool: PgPool,
    /// Renewing this replica's liveness and its leases: the main pool can be taken for seconds
    /// by a burst of deployments, and a renewal late past its deadline lets go of everything.
    /// The main pool unless [`Fleet::with_liveness_pool`] gives one of its own.
    pub liveness: PgPool,
    pub target: Arc<dyn Target>,
    pub registry: RegistryClient,
    producer: EventProducer,
    releases: Mutex<HashMap<(String, i32), ReleaseInfo>>,
    /// How long a draining instance keeps serving before it is stopped.
    pub drain: Duration,
    /// SIGTERM → SIGKILL grace.
    pub stop_grace: Duration,
    pub heartbeat: Duration,
    /// This replica: the owner of the instances it starts or adopts.
    pub replica: ReplicaId,
    /// Where the target runs instances ([`Target::node`]).
    node: String,
    replicas: ReplicaSettings,
    /// Instances this replica is starting or stopping right now: left alone by adoption (their
    /// row says "mine, not supervised" for a moment) and by the orphan sweep.
    busy: Mutex<HashSet<Uuid>>,
    /// Adopted instances whose take-over failed, and when to try again.
    retries: Mutex<HashMap<Uuid, tokio::time::Instant>>,
    /// This deployer's own process, recorded with its liveness.
    process: Option<replicas::ReplicaProcess>,
}

/// Marks an instance busy for as long as it lives.
struct Busy<'a> {
    fleet: &'a Fleet,
    id: Uuid,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.fleet.busy_set().remove(&self.id);
    }
}

/// Adds `data` to the outbox in `conn`'s transaction.
pub async fn announce<D: EventData>(
    conn: &mut sqlx::PgConnection,
    key: ServiceId,
    subject: String,
    data: &D,
) -> Result<(), EngineError> {
    let project = project_of(conn, key).await?;
    let event = CloudEvent::new(sources::DEPLOYER, key, Some(subject), data)?.with_project(project);
    slipway_outbox::enqueue(conn, D::TOPIC, &event).await?;
    Ok(())
}

/// The project of `service_id`, from the deployer's catalog (`deploy_targets`).
pub async fn project_of(
    conn: &mut sqlx::PgConnection,
    service_id: ServiceId,
) -> Result<Option<ProjectName>, sqlx::Error> {
    slipway_runtime::catalog::project_of(conn, "deploy_targets", service_id).await
}

impl Fleet {
    pub fn new(
        pool: PgPool,
        target: Arc<dyn Target>,
        registry: RegistryClient,
        producer: EventProducer,
        settings: FleetSettings,
    ) -> Self {
        let node = target.node();
        Self {
            liveness: pool.clone(),
            pool,
            target,
            registry,
            producer,
            releases: Mutex::default(),
            drain: settings.drain,
            stop_grace: settings.stop_grace,
            heartbeat: settings.heartbeat,
            replica: settings.replica,
            node,
            replicas: settings.replicas,
            busy: Mutex::default(),
            retries: Mutex::default(),
            process: ownership::this_process(),
        }
    }

    /// Renews liveness and leases on `pool` rather than on the main pool.
    pub fn with_liveness_pool(self, pool: PgPool) -> Self {
        Self {
            liveness: pool,
            ..self
        }
    }

    fn busy_set(&self) -> std::sync::MutexGuard<'_, HashSet<Uuid>> {
        self.busy.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks `id` busy; `None` if it already is.
    fn busy(&self, id: Uuid) -> Option<Busy<'_>> {
        // The lock is released before a guard exists: dropping one takes the lock again.
        let inserted = self.busy_set().insert(id);
        inserted.then(|| Busy { fleet: self, id })
    }

    fn is_busy(&self, id: Uuid) -> bool {
        self.busy_set().contains(&id)
    }

    /// A release's artifact and run spec (immutable, so cached).
    pub async fn release(&self, service: &str, number: i32) -> Result<ReleaseInfo, EngineError> {
        let key = (service.to_owned(), number);
        if let Some(hit) = self.releases.lock().ok().and_then(|c| c.get(&key).cloned()) {
            return Ok(hit);
        }
        let info = self.registry.release(service, number).await?;
        if let Ok(mut cache) = self.releases.lock() {
            cache.insert(key, info.clone());
        }
        Ok(info)
    }

    async fn spec(&self, row: &Instance) -> Result<InstanceSpec, EngineError> {
        let env = self
            .registry
            .config(&row.service_name, &row.environment, row.config_version)
            .await?;
        Ok(InstanceSpec {
            instance_id: row.id,
            service_id: row.service_id,
            service_name: row.service_name.clone(),
            environment: row.environment.clone(),
            target: row.target,
            release: row.release,
            config_version: row.config_version,
            image: row.image.clone(),
            run: row.run.as_ref().map(|r| r.0.clone()),
            env,
        })
    }

    /// Starts `count` instances of `set` concurrently; the first failure is answered.
    pub async fn start_many(
        &self,
        owner: &Owner,
        set: Set,
        health_check: &HealthCheck,
        count: usize,
    ) -> Result<(), EngineError> {
        let release = self.release(&owner.service_name, set.release).await?;
        let starts = (0..count).map(|_| self.start_one(owner, set, &release, health_check));
        join_all(starts).await.into_iter().collect()
    }

    async fn start_one(
        &self,
        owner: &Owner,
        set: Set,
        release: &ReleaseInfo,
        health_check: &HealthCheck,
    ) -> Result<(), EngineError> {
        let id = Uuid::now_v7();
        let _busy = self.busy(id);
        // The row comes first: a deployer killed right after the spawn finds it at recovery.
        instances::insert(
            &self.pool,
            &NewInstance {
                id,
                service_id: owner.service_id,
                service_name: &owner.service_name,
                environment: &owner.environment,
                release: set.release,
                config_version: set.config_version,
                image: &release.image,
                run: release.run.as_ref(),
                health_check,
                target: owner.target,
                deployment_id: owner.deployment_id,
                owner: &self.replica,
                node: &self.node,
            },
        )
        .await?;
        let row = {
            let mut conn = self.pool.acquire().await?;
            instances::get(&mut conn, id)
                .await?
                .ok_or(EngineError::Gone(id))?
        };
        let spec = self.spec(&row).await?;
        let placement = match self.target.start(spec).await {
            Ok(p) => p,
            Err(e) => {
                let mut conn = self.pool.acquire().await?;
                instances::delete(&mut conn, id).await?;
                return Err(e.into());
            }
        };
        self.record_start(&row, &placement, 0).await?;
        tracing::info!(instance.id = %id, service = %owner.service_name, release = set.release, address = %placement.address, "instance started");
        Ok(())
    }

    /// Records a (re)start by this replica and announces it; nothing when the instance is not
    /// this replica's any more (another adopted it meanwhile: its word counts).
    async fn record_start(
        &self,
        row: &Instance,
        placement: &Placement,
        restarts: u32,
    ) -> Result<(), EngineError> {
        let mut tx = self.pool.begin().await?;
        let mine = instances::started(
            &mut tx,
            row.id,
            &self.replica,
            &placement.address,
            placement.port,
            placement.process.as_ref(),
            restarts,
        )
        .await?;
        if !mine {
            tracing::warn!(instance.id = %row.id, "start not recorded: another replica owns the instance");
            return Ok(());
        }
        self.announce_started(&mut tx, row, &placement.address, restarts)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn announce_started(
        &self,
        conn: &mut sqlx::PgConnection,
        row: &Instance,
        address: &str,
        restarts: u32,
    ) -> Result<(), EngineError> {
        let data = InstanceStarted {
            instance: row.reference(),
            address: address.to_owned(),
            target: row.target.to_string(),
            health_check: row.health_check.0.clone(),
            restarts,
            at: Utc::now(),
        };
        announce(conn, row.service_id, row.id.to_string(), &data).await
    }

    /// Takes instances out of rotation, lets them drain, stops them and forgets them.
    /// `drain`: how long they keep serving once out of rotation (absent: the default).
    pub async fn retire_many(
        &self,
        rows: &[Instance],
        reason: &str,
        drain: Option<Duration>,
    ) -> Result<(), EngineError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        let mut serving = false;
        for row in rows {
            if !row.state.is_leaving() {
                serving |= row.state == InstanceState::Running;
                instances::set_state(&mut tx, row.id, InstanceState::Draining).await?;
                let data = InstanceDraining {
                    instance: row.reference(),
                    at: Utc::now(),
                };
                announce(&mut tx, row.service_id, row.id.to_string(), &data).await?;
            }
        }
        tx.commit().await?;
        if serving {
            // Routers learn of the drain through discovery before the process stops.
            tokio::time::sleep(drain.unwrap_or(self.drain)).await;
        }
        let stops = rows.iter().map(|row| self.stop_one(row, reason));
        join_all(stops).await.into_iter().collect()
    }

    async fn stop_one(&self, row: &Instance, reason: &str) -> Result<(), EngineError> {
        let owner = {
            let mut conn = self.pool.acquire().await?;
            instances::set_state(&mut conn, row.id, InstanceState::Stopping).await?;
            // Who owns it now (the caller's copy of the row may predate an adoption).
            instances::get(&mut conn, row.id)
                .await?
                .and_then(|r| r.owner)
        };
        if owner.as_ref() != Some(&self.replica) {
            // Another replica supervises it: `stopping` asks it to stop it (or, if it is gone,
            // whoever adopts it), and the row goes once it is stopped.
            return self.await_stop(row.id).await;
        }
        let Some(_busy) = self.busy(row.id) else {
            // This replica is stopping it already (a stop request seen by its own loop).
            return self.await_stop(row.id).await;
        };
        self.stop_owned(row, reason).await
    }

    /// Stops an instance this replica owns, forgets its row and announces it.
    async fn stop_owned(&self, row: &Instance, reason: &str) -> Result<(), EngineError> {
        self.target.stop(row.id, self.stop_grace).await?;
        let mut tx = self.pool.begin().await?;
        instances::delete(&mut tx, row.id).await?;
        let data = InstanceStopped {
            instance: row.reference(),
            reason: reason.to_owned(),
            at: Utc::now(),
        };
        announce(&mut tx, row.service_id, row.id.to_string(), &data).await?;
        tx.commit().await?;
        tracing::info!(instance.id = %row.id, %reason, "instance stopped");
        Ok(())
    }

    /// Applies what the target reports.
    pub async fn on_target_event(&self, event: TargetEvent) -> Result<(), EngineError> {
        match event {
            TargetEvent::Restarted {
                instance_id,
                placement,
                restarts,
            } => {
                let row = {
                    let mut conn = self.pool.acquire().await?;
                    instances::get(&mut conn, instance_id).await?
                };
                let Some(row) = row else {
                    return Ok(());
                };
                self.record_start(&row, &placement, restarts).await?;
            }
            TargetEvent::Exited {
                instance_id,
                exit,
                restarts,
                restart_in,
                crash_loop,
                last_lines,
            } => {
                let mut tx = self.pool.begin().await?;
                let Some(row) = instances::get(&mut tx, instance_id).await? else {
                    return Ok(());
                };
                let mine = instances::exited(
                    &mut tx,
                    instance_id,
                    &self.replica,
                    &exit,
                    restarts,
                    crash_loop,
                )
                .await?;
                if !mine {
                    return Ok(());
                }
                let data = InstanceExited {
                    instance: row.reference(),
                    exit: exit.clone(),
                    restarts,
                    restart_in_ms: restart_in.as_millis() as u64,
                    crash_loop,
                    last_lines,
                    at: Utc::now(),
                };
                announce(&mut tx, row.service_id, row.id.to_string(), &data).await?;
                tx.commit().await?;
                tracing::warn!(instance.id = %instance_id, %exit, restarts, crash_loop, "instance exited");
            }
            TargetEvent::Logs {
                instance_id,
                first_seq,
                lines,
            } => {
                let mut conn = self.pool.acquire().await?;
                let Some(row) = instances::get(&mut conn, instance_id).await? else {
                    return Ok(());
                };
                let project = project_of(&mut conn, row.service_id).await?;
                drop(conn);
                // Output is best effort and high volume: published directly, not through the
                // outbox. The monitor stores each (instance, seq) once.
                let data = InstanceLogs {
                    instance: row.reference(),
                    first_seq,
                    lines,
                };
                let event = CloudEvent::new(
                    sources::DEPLOYER,
                    row.service_id,
                    Some(row.id.to_string()),
                    &data,
                )?
                .with_project(project);
                if let Err(e) = self.producer.publish(InstanceLogs::TOPIC, &event).await {
                    tracing::warn!(error = %e, "instance output not published");
                }
            }
            TargetEvent::Health {
                instance_id,
                restarts,
                healthy,
                detail,
            } => {
                // As the monitor's verdicts are applied (consumers.rs): per incarnation.
                let health = if healthy {
                    crate::domain::InstanceHealth::Healthy
                } else {
                    crate::domain::InstanceHealth::Unhealthy
                };
                let mut conn = self.pool.acquire().await?;
                instances::set_health(
                    &mut conn,
                    slipway_ids::InstanceId::from_uuid(instance_id),
                    restarts,
                    health,
                    &detail,
                )
                .await?;
            }
        }
        Ok(())
    }
}
