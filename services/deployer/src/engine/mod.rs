//! The deployment engine: drives each deployment through its plan, one step at a time, with
//! every position and deadline in the database.
//!
//! Layout:
//! - [`plan`]: strategies turned into idempotent steps (pure).
//! - `drive.rs`: starting a queued deployment, executing steps, gates, deadlines, rollback,
//!   cancel, and finishing (with its events).
//! - [`fleet`]: instances on the target (start, drain and stop, recovery, heartbeats).
//!
//! One task per active deployment, started by a loop that wakes on new commands, health
//! verdicts and a short tick. At start-up every `progressing` or `rolling_back` deployment is
//! picked up again at its stored step, so a deployer killed mid-rollout resumes it.

mod drive;
pub mod fleet;
pub mod plan;
mod steps;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use slipway_events::deploy::{HealthCheck, ProbePath};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::db::deployments;
use crate::registry::RegistryError;
use crate::target::TargetError;
pub use fleet::Fleet;

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
    /// How often the engine re-checks active deployments without being woken.
    pub tick_ms: u64,
    /// How often live instances are announced to the registry.
    pub heartbeat_ms: u64,
}

pub struct Engine {
    pub fleet: Arc<Fleet>,
    settings: DeploySettings,
    /// Woken by commands and health verdicts (the loop that starts drivers).
    pub wake: Arc<Notify>,
    /// Every driver waiting on health or its turn wakes on this (health verdicts, commands).
    pub nudge: Arc<Notify>,
    driving: Mutex<HashSet<Uuid>>,
}

impl Engine {
    pub fn new(fleet: Arc<Fleet>, settings: DeploySettings) -> Arc<Self> {
        Arc::new(Self {
            fleet,
            settings,
            wake: Arc::new(Notify::new()),
            nudge: Arc::new(Notify::new()),
            driving: Mutex::default(),
        })
    }

    fn tick(&self) -> Duration {
        Duration::from_millis(self.settings.tick_ms.max(20))
    }

    /// The health check instances get when neither the request nor the environment names one.
    fn default_check(&self, health_path: Option<&ProbePath>) -> HealthCheck {
        HealthCheck {
            path: health_path.cloned().unwrap_or_default(),
            ..HealthCheck::default()
        }
    }

    /// Starts a driver for every runnable deployment not driven yet, until cancelled.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) -> Result<(), EngineError> {
        loop {
            match deployments::runnable(&self.fleet.pool).await {
                Ok(runnable) => {
                    for d in runnable {
                        let fresh = self.driving.lock().map(|mut s| s.insert(d.id));
                        if fresh.unwrap_or(false) {
                            let engine = self.clone();
                            let cancel = cancel.clone();
                            tokio::spawn(async move {
                                // Continues the command's trace: the events it enqueues carry it.
                                let span = crate::db::trace::span(&engine.fleet.pool, d.id).await;
                                engine.drive(d.id, cancel).instrument(span).await;
                                if let Ok(mut s) = engine.driving.lock() {
                                    s.remove(&d.id);
                                }
                                engine.wake.notify_one();
                            });
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot list deployments"),
            }
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.tick() * 5) => {}
            }
        }
    }

    /// Drives one deployment until it ends or the deployer stops (it resumes at next start).
    async fn drive(&self, id: Uuid, cancel: CancellationToken) {
        loop {
            if cancel.is_cancelled() {
                return;
            }
            // Registered before the pass, so a verdict arriving during it is not missed.
            let nudged = self.nudge.notified();
            tokio::pin!(nudged);
            nudged.as_mut().enable();
            match self.step_once(id).await {
                Ok(drive::Progress::Ended) => return,
                Ok(drive::Progress::Moved) => continue,
                Ok(drive::Progress::Waiting) => {}
                Err(e) => {
                    tracing::warn!(deployment.id = %id, error = %e, "deployment step failed; retrying")
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = nudged => {}
                _ = tokio::time::sleep(self.tick()) => {}
            }
        }
    }
}
