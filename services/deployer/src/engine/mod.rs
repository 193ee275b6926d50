//! The deployment engine: drives each deployment through its plan, one step at a time, with
//! every position and deadline in the database, under a lease so that of several deployer
//! replicas exactly one drives each deployment.
//!
//! Layout:
//! - [`plan`]: strategies turned into idempotent steps (pure).
//! - `resolve.rs`: a request and what runs turned into a plan or a refusal, and the way back
//!   of a failed deployment (pure).
//! - `start.rs`: starting a queued deployment (looking up the facts `resolve.rs` needs).
//! - `drive.rs`: one pass over a deployment: running its step, failing it, finishing it (with
//!   its events).
//! - `steps.rs`: executing one step (scale, route, pause gates).
//! - `lease.rs`: keeping a claimed lease alive while its deployment is driven.
//! - `metrics.rs`: outcomes, failed checks and takeovers.
//! - `nudge.rs`: waking the drivers that wait on one environment (or all of them).
//! - [`fleet`]: instances on the target (start, drain and stop, recovery, heartbeats).
//!
//! A loop claims runnable deployments whose lease is free or expired (`db::leases`), waking on
//! new commands, health verdicts and a short tick, and runs one task per claimed deployment; a
//! waiting task wakes on its tick and on the facts about its own environment (`nudge.rs`).
//! Every write of that task to the deployment is compare-and-set on its lease, and each pass
//! starts by checking the lease (and pauses while renewals fail): when another replica took the
//! deployment over (this one stopped renewing: it hung, or lost the database), the task stops
//! and publishes nothing more. (The route step's weights and the fleet's instance rows are not
//! fenced in their own transactions yet; `db::leases::fence` is there for them.) The new owner resumes at the stored step, as a restarted
//! deployer does (a restart is a new replica; a deployer stopped cleanly hands its leases back).

mod drive;
pub mod fleet;
mod lease;
pub mod metrics;
mod nudge;
pub mod plan;
mod resolve;
mod start;
mod steps;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use slipway_ids::{DeploymentId, ReplicaId};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::db::leases::{self, FencedError};
use crate::registry::RegistryError;
use crate::target::TargetError;
pub use fleet::Fleet;
use lease::Held;
pub use metrics::EngineMetrics;
pub use nudge::Nudges;

/// Why the engine could not do something (retried on the next tick unless it is a verdict).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("registry: {0}")]
    Registry(#[from] RegistryError),
    #[error("target: {0}")]
    Target(#[from] TargetError),
    #[error("event: {0}")]
    Event(#[from] serde_json::Error),
    #[error("instance {0} vanished")]
    Gone(Uuid),
    /// Another replica drives the deployment now: this driver stops.
    #[error("the lease on deployment {deployment} (epoch {epoch}) is no longer held")]
    LeaseLost {
        deployment: DeploymentId,
        epoch: i64,
    },
}

impl From<FencedError> for EngineError {
    fn from(e: FencedError) -> Self {
        match e {
            FencedError::Database(e) => Self::Database(e),
            FencedError::Lost { deployment, epoch } => Self::LeaseLost { deployment, epoch },
        }
    }
}

/// Engine settings (section `[deploy]`).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct DeploySettings {
    /// Replicas of a first deployment that does not say.
    pub default_replicas: u32,
    /// Deadline of a step when the request does not say.
    pub step_timeout_seconds: u32,
    /// How long a draining instance keeps serving before it is stopped.
    pub drain_ms: u64,
    /// SIGTERM → SIGKILL grace when stopping instances.
    pub stop_grace_seconds: u64,
    /// How often the engine re-checks active deployments without being woken, at first: a
    /// deployment that keeps waiting is looked at less and less often, up to `wait_max_ms`
    /// (woken at once by facts about its environment: health verdicts, commands).
    pub tick_ms: u64,
    /// The longest a waiting deployment goes unchecked when nothing wakes it (what a route step
    /// waiting for the routers, or a pause, may run late by).
    #[serde(default = "default_wait_max_ms")]
    pub wait_max_ms: u64,
    /// How often live instances are announced to the registry.
    pub heartbeat_ms: u64,
    /// How long a replica's lease on a deployment lasts unrenewed (renewed every third of it);
    /// after that another replica takes the deployment over.
    pub lease_ttl_ms: u64,
}

fn default_wait_max_ms() -> u64 {
    1000
}

/// How long a driver sleeps (unless woken) after its `waits`-th pass in a row that found its
/// deployment waiting: `tick` doubled each time, up to `max` (never below `tick`). Many
/// deployments waiting at once (a thousand, on their health checks and routers) then cost a
/// pass each per `max` rather than per tick.
fn backoff(tick: Duration, max: Duration, waits: u32) -> Duration {
    let doubled = tick.saturating_mul(1u32 << waits.saturating_sub(1).min(16));
    doubled.min(max).max(tick)
}

pub struct Engine {
    pub fleet: Arc<Fleet>,
    settings: DeploySettings,
    /// This process: the owner of the leases it claims.
    replica: ReplicaId,
    metrics: EngineMetrics,
    /// Woken by commands and health verdicts (the loop that starts drivers).
    pub wake: Arc<Notify>,
    /// Drivers waiting on health or their turn wake on these: the ones of an environment on
    /// its health verdicts and commands, all of them on facts of no one environment.
    pub nudges: Arc<Nudges>,
    driving: Mutex<HashSet<DeploymentId>>,
}

impl Engine {
    pub fn new(
        fleet: Arc<Fleet>,
        settings: DeploySettings,
        replica: ReplicaId,
        metrics: EngineMetrics,
    ) -> Arc<Self> {
        Arc::new(Self {
            fleet,
            settings,
            replica,
            metrics,
            wake: Arc::new(Notify::new()),
            nudges: Arc::default(),
            driving: Mutex::default(),
        })
    }

    fn tick(&self) -> Duration {
        Duration::from_millis(self.settings.tick_ms.max(20))
    }

    fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.settings.lease_ttl_ms.max(300))
    }

    /// Claims runnable deployments and drives each claimed one, until cancelled; then hands
    /// the leases back (briefly waiting for the drivers), so another replica resumes at once.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) -> Result<(), EngineError> {
        let mut drivers = JoinSet::new();
        loop {
            let driving: Vec<DeploymentId> = self
                .driving
                .lock()
                .map(|s| s.iter().copied().collect())
                .unwrap_or_default();
            let sent = Instant::now();
            let ttl = self.lease_ttl();
            match leases::claim(&self.fleet.pool, &self.replica, ttl, &driving, 64).await {
                Ok(claimed) => {
                    for c in claimed {
                        if let Some(from) = &c.taken_over_from {
                            self.metrics.taken_over();
                            tracing::warn!(deployment.id = %c.lease.deployment,
                                epoch = c.lease.epoch, previous_owner = %from,
                                "took over a deployment whose lease expired; resuming at its stored step");
                        }
                        let id = c.lease.deployment;
                        if let Ok(mut s) = self.driving.lock() {
                            s.insert(id);
                        }
                        let held = Held::new(c.lease, ttl, sent);
                        let engine = self.clone();
                        let cancel = cancel.clone();
                        drivers.spawn(async move {
                            // Continues the command's trace: the events it enqueues carry it.
                            let span = crate::db::trace::span(&engine.fleet.pool, id).await;
                            engine.drive(held, cancel).instrument(span).await;
                            if let Ok(mut s) = engine.driving.lock() {
                                s.remove(&id);
                            }
                            engine.wake.notify_one();
                        });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot claim deployments"),
            }
            while drivers.try_join_next().is_some() {}
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.tick() * 5) => {}
            }
        }
        let drained = async { while drivers.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(5), drained)
            .await
            .is_err()
        {
            tracing::warn!(
                "some deployments were still being driven at shutdown; their leases expire"
            );
        }
        Ok(())
    }

    /// Drives one deployment under `held` until it ends, the lease is lost, or the deployer
    /// stops; then lets go of the lease unless it was lost.
    async fn drive(&self, held: Arc<Held>, cancel: CancellationToken) {
        let stop = cancel.child_token();
        let renewer = {
            let (held, pool, stop) = (held.clone(), self.fleet.liveness.clone(), stop.clone());
            tokio::spawn(async move { held.keep_alive(&pool, stop).await })
        };
        // Which environment's facts wake this driver (unknown if the read fails: it then wakes
        // on its tick and on nudges for everybody only).
        let environment =
            match crate::db::deployments::get(&self.fleet.pool, held.lease.deployment).await {
                Ok(Some(d)) => Some((d.service_id, d.environment)),
                _ => None,
            };
        let nudged = self
            .nudges
            .subscribe(environment.as_ref().map(|(s, e)| (*s, e.as_str())));
        self.passes(&held, &cancel, &nudged).await;
        stop.cancel();
        let _ = renewer.await;
        if held.lost.is_cancelled() {
            return;
        }
        // An ended deployment released its lease when it finished (this then matches nothing).
        let released = async {
            let mut conn = self.fleet.pool.acquire().await?;
            leases::release(&mut conn, &held.lease).await
        };
        match released.await {
            Ok(()) | Err(FencedError::Lost { .. }) => {}
            Err(e) => tracing::warn!(deployment.id = %held.lease.deployment, error = %e,
                "lease not handed back; it expires"),
        }
        // Another deployment of the environment may be waiting for its turn.
        if let Some((service, env)) = &environment {
            self.nudges.environment(*service, env);
        }
    }

    async fn passes(&self, held: &Held, cancel: &CancellationToken, nudges: &nudge::Subscription) {
        let id = held.lease.deployment;
        let max_wait = Duration::from_millis(self.settings.wait_max_ms);
        // Passes in a row that found the deployment waiting (or failing): the sleep grows.
        let mut waits = 0u32;
        loop {
            if cancel.is_cancelled() || held.lost.is_cancelled() {
                return;
            }
            // Registered before the pass, so a verdict arriving during it is not missed.
            let nudged = nudges.notified();
            // Renewals are failing: act on nothing until one succeeds (or the lease is lost).
            if held.usable() {
                match self.step_once(&held.lease).await {
                    Ok(drive::Progress::Ended | drive::Progress::Yield) => return,
                    Ok(drive::Progress::Moved) => {
                        waits = 0;
                        continue;
                    }
                    Ok(drive::Progress::Waiting) => waits += 1,
                    Err(EngineError::LeaseLost { epoch, .. }) => {
                        tracing::warn!(deployment.id = %id, epoch,
                            "another replica drives the deployment now; stopping");
                        held.lost.cancel();
                        return;
                    }
                    Err(e) => {
                        waits += 1;
                        tracing::warn!(deployment.id = %id, error = %e, "deployment step failed; retrying")
                    }
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = held.lost.cancelled() => return,
                // A fact about its environment: look at once, then from the first tick again.
                _ = nudged => waits = 0,
                _ = tokio::time::sleep(backoff(self.tick(), max_wait, waits)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn a_waiting_deployment_is_looked_at_less_often_up_to_the_ceiling() {
        let (tick, max) = (Duration::from_millis(200), Duration::from_millis(1000));
        let sleeps: Vec<u128> = (0..6).map(|n| backoff(tick, max, n).as_millis()).collect();
        assert_eq!(sleeps, [200, 200, 400, 800, 1000, 1000]);
        // Many waits in a row neither overflow nor go past the ceiling.
        assert_eq!(backoff(tick, max, u32::MAX), max);
        // A ceiling below the tick leaves the tick.
        assert_eq!(backoff(tick, Duration::from_millis(50), 3), tick);
    }
}
