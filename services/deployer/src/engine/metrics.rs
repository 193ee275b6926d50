//! The engine's metrics, on the service's registry (so on `/metrics`, prefixed `slipway_`):
//! how deployments end, which checks fail at which kind of step, and how often a lease is taken
//! over from a replica that stopped renewing it.

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

use crate::domain::{Check, DeploymentKind, DeploymentStatus};

#[derive(Clone)]
pub struct EngineMetrics {
    finished: IntCounterVec,
    step_failures: IntCounterVec,
    takeovers: IntCounter,
}

impl EngineMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let finished = IntCounterVec::new(
            Opts::new(
                "deployments_finished_total",
                "Deployments ended, by kind, strategy and outcome (final status)",
            ),
            &["kind", "strategy", "outcome"],
        )?;
        let step_failures = IntCounterVec::new(
            Opts::new(
                "deployment_step_failures_total",
                "Failed checks that turned a deployment back or ended it, by kind of step \
                 (scale, route, pause, resolve) and check (health, crash_loop, deadline, ...)",
            ),
            &["step", "check"],
        )?;
        let takeovers = IntCounter::new(
            "deployment_leases_taken_over_total",
            "Deployments claimed after another replica's lease on them expired unreleased",
        )?;
        registry.register(Box::new(finished.clone()))?;
        registry.register(Box::new(step_failures.clone()))?;
        registry.register(Box::new(takeovers.clone()))?;
        Ok(Self {
            finished,
            step_failures,
            takeovers,
        })
    }

    pub fn finished(&self, kind: DeploymentKind, strategy: &str, outcome: DeploymentStatus) {
        self.finished
            .with_label_values(&[kind.as_str(), strategy, outcome.as_str()])
            .inc();
    }

    /// `step`: the kind of step (`Step::label`) or `resolve`.
    pub fn step_failed(&self, step: &'static str, check: Check) {
        self.step_failures
            .with_label_values(&[step, check.as_str()])
            .inc();
    }

    pub fn taken_over(&self) {
        self.takeovers.inc();
    }
}
