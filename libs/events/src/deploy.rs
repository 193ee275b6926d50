//! Deploy-and-run events: the gateway's deploy/rollback/scale/cancel commands, the deployer's
//! deployment, instance and traffic facts, and the monitor's health verdicts.
//!
//! Who writes and reads what:
//! - gateway → `slipway.commands`: [`DeployRequested`], [`DeployCancelRequested`] (read by the
//!   deployer, which keeps one deployment at a time per service and environment).
//! - deployer → `slipway.deployments`: [`DeploymentStarted`], [`DeploymentStep`],
//!   [`DeploymentFinished`], [`TrafficChanged`] and the CDEvents service.* events.
//! - deployer → `slipway.instances`: [`InstanceStarted`], [`InstanceDraining`],
//!   [`InstanceExited`], [`InstanceStopped`], [`InstancesHeartbeat`], [`InstanceLogs`].
//! - monitor → `slipway.instances`: [`InstanceHealthChanged`] (read by registry and deployer).
//!
//! Every record's key is the service id.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use slipway_ids::ServiceId;
use uuid::Uuid;

use crate::{EventData, Topic};

// ---------------------------------------------------------------------------------------------
// Strategies and health checks: shared by the gateway (validation) and the deployer (execution).
// ---------------------------------------------------------------------------------------------

/// How a release replaces the one running.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Strategy {
    /// Stop every old instance, then start the new ones (downtime; for dev environments).
    /// A struct variant (not a unit one) so that unknown fields are refused here too: serde
    /// ignores `deny_unknown_fields` on unit variants of an internally tagged enum.
    Recreate {},
    /// Replace instances in batches. `max_surge`: new instances started above the replica
    /// count at once; `max_unavailable`: old instances stopped before their replacement is
    /// healthy. At least one of the two is positive.
    Rolling {
        #[serde(default = "one")]
        max_surge: u32,
        #[serde(default)]
        max_unavailable: u32,
    },
    /// Start the whole new set, wait until healthy, switch traffic atomically, drain the old set
    /// for `drain_seconds`, then stop it.
    BlueGreen {
        #[serde(default)]
        drain_seconds: Option<u32>,
    },
    /// Shift traffic to the new release in steps of weight; each step holds for its pause while
    /// its gate is checked. A final full promotion follows the last step.
    Canary { steps: Vec<CanaryStep> },
}

fn one() -> u32 {
    1
}

impl Default for Strategy {
    fn default() -> Self {
        Strategy::Rolling {
            max_surge: 1,
            max_unavailable: 0,
        }
    }
}

/// One canary step: send `weight` percent of traffic to the new release for `pause_seconds`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryStep {
    /// Percent of requests for the canary, 1–100.
    pub weight: u32,
    /// How long the step holds (and its gate is watched) before the next one.
    #[serde(default)]
    pub pause_seconds: u32,
}

impl Strategy {
    /// The strategy's name as shown in APIs (`rolling`, `blue_green`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::Recreate {} => "recreate",
            Strategy::Rolling { .. } => "rolling",
            Strategy::BlueGreen { .. } => "blue_green",
            Strategy::Canary { .. } => "canary",
        }
    }

    /// Checks the parameters; `Err((field, why))` names the offending field.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        match self {
            Strategy::Recreate {} | Strategy::BlueGreen { .. } => Ok(()),
            Strategy::Rolling {
                max_surge,
                max_unavailable,
            } => {
                if *max_surge == 0 && *max_unavailable == 0 {
                    Err((
                        "strategy.max_surge",
                        "max_surge and max_unavailable cannot both be 0".into(),
                    ))
                } else if *max_surge > 100 || *max_unavailable > 100 {
                    Err(("strategy.max_surge", "must be at most 100".into()))
                } else {
                    Ok(())
                }
            }
            Strategy::Canary { steps } => {
                if steps.is_empty() || steps.len() > 20 {
                    return Err(("strategy.steps", "must have 1 to 20 steps".into()));
                }
                let mut last = 0;
                for (i, s) in steps.iter().enumerate() {
                    if s.weight == 0 || s.weight > 100 {
                        return Err((
                            "strategy.steps",
                            format!("step {i}: weight must be 1..=100"),
                        ));
                    }
                    if s.weight < last {
                        return Err((
                            "strategy.steps",
                            format!("step {i}: weights must not decrease"),
                        ));
                    }
                    if s.pause_seconds > 86_400 {
                        return Err((
                            "strategy.steps",
                            format!("step {i}: pause_seconds must be at most 86400"),
                        ));
                    }
                    last = s.weight;
                }
                Ok(())
            }
        }
    }
}

/// How the monitor probes an instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// `http` (GET `path`, healthy on 2xx/3xx) or `tcp` (connect).
    #[serde(default = "http_kind")]
    pub kind: ProbeKind,
    /// The HTTP path, for `http` probes.
    #[serde(default = "healthz")]
    pub path: String,
    #[serde(default = "interval_ms")]
    pub interval_ms: u32,
    #[serde(default = "timeout_ms")]
    pub timeout_ms: u32,
    /// Consecutive failures that make a healthy instance unhealthy.
    #[serde(default = "three")]
    pub failure_threshold: u32,
    /// Consecutive successes that make an instance healthy.
    #[serde(default = "one")]
    pub success_threshold: u32,
    /// After a start, failures are not counted for this long (slow starters); a success still
    /// counts at once.
    #[serde(default = "grace_seconds")]
    pub grace_seconds: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKind {
    Http,
    Tcp,
}

fn http_kind() -> ProbeKind {
    ProbeKind::Http
}
fn healthz() -> String {
    "/healthz".into()
}
fn interval_ms() -> u32 {
    1000
}
fn timeout_ms() -> u32 {
    1000
}
fn three() -> u32 {
    3
}
fn grace_seconds() -> u32 {
    30
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            kind: ProbeKind::Http,
            path: healthz(),
            interval_ms: interval_ms(),
            timeout_ms: timeout_ms(),
            failure_threshold: three(),
            success_threshold: one(),
            grace_seconds: grace_seconds(),
        }
    }
}

impl HealthCheck {
    /// Checks the parameters; `Err((field, why))` names the offending field.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(100..=600_000).contains(&self.interval_ms) {
            return Err(("health_check.interval_ms", "must be 100..=600000".into()));
        }
        if !(50..=60_000).contains(&self.timeout_ms) {
            return Err(("health_check.timeout_ms", "must be 50..=60000".into()));
        }
        if !(1..=100).contains(&self.failure_threshold) {
            return Err(("health_check.failure_threshold", "must be 1..=100".into()));
        }
        if !(1..=100).contains(&self.success_threshold) {
            return Err(("health_check.success_threshold", "must be 1..=100".into()));
        }
        if self.grace_seconds > 3600 {
            return Err(("health_check.grace_seconds", "must be at most 3600".into()));
        }
        if self.kind == ProbeKind::Http && !self.path.starts_with('/') {
            return Err(("health_check.path", "must start with `/`".into()));
        }
        Ok(())
    }

    /// A short human description, e.g. `http GET /healthz`, used in reasons.
    pub fn describe(&self) -> String {
        match self.kind {
            ProbeKind::Http => format!("http GET {}", self.path),
            ProbeKind::Tcp => "tcp connect".into(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Commands (gateway → deployer).
// ---------------------------------------------------------------------------------------------

/// What a deploy command asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeployKind {
    /// Roll `release` out with `strategy`.
    Deploy,
    /// Go back to `release` (or, when absent, the release before the current one) at once,
    /// restoring the config version it last ran with. No canary steps.
    Rollback,
    /// Change the replica count of what runs, without a new release.
    Scale,
}

/// A deployment, rollback or scale was asked for (gateway command). Key: the service id.
/// Subject: the deployment id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployRequested {
    /// Chosen by the gateway and answered to the client.
    pub deployment_id: Uuid,
    pub kind: DeployKind,
    pub service_id: ServiceId,
    pub service_name: String,
    pub environment: String,
    /// The release number (`Deploy`: required; `Rollback`: optional; `Scale`: absent).
    pub release: Option<i32>,
    #[serde(default)]
    pub strategy: Strategy,
    /// Instances wanted; absent keeps the current count (3 for a first deployment).
    pub replicas: Option<u32>,
    /// The config version to run with; absent: the release's, else the environment's latest.
    pub config_version: Option<i32>,
    /// Absent: the default (HTTP GET of the release's health path).
    pub health_check: Option<HealthCheck>,
    /// Deadline of each step (start-up and health waits included), seconds.
    pub step_timeout_seconds: Option<u32>,
    /// Roll back automatically when a gate fails (default true).
    pub auto_rollback: Option<bool>,
    /// Token name or trigger that asked.
    pub actor: Option<String>,
    pub requested_at: DateTime<Utc>,
}

impl EventData for DeployRequested {
    const TYPE: &'static str = "dev.slipway.deploy.requested.v1";
    const TOPIC: Topic = Topic::Commands;
}

/// Cancelling a deployment was asked for (gateway command). Key: the service id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployCancelRequested {
    pub deployment_id: Uuid,
    pub service_id: ServiceId,
    pub actor: Option<String>,
    pub requested_at: DateTime<Utc>,
}

impl EventData for DeployCancelRequested {
    const TYPE: &'static str = "dev.slipway.deploy.cancel-requested.v1";
    const TOPIC: Topic = Topic::Commands;
}

// ---------------------------------------------------------------------------------------------
// Deployment facts (deployer).
// ---------------------------------------------------------------------------------------------

/// Identifies a deployment in its facts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentRef {
    pub deployment_id: Uuid,
    pub kind: DeployKind,
    pub service_id: ServiceId,
    pub service_name: String,
    pub environment: String,
    /// The release being rolled out (number).
    pub release: Option<i32>,
    /// The strategy's name.
    pub strategy: String,
}

/// A deployment left `pending` or `queued` and began. Subject: the deployment id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentStarted {
    #[serde(flatten)]
    pub deployment: DeploymentRef,
    /// The steps planned, in order, as shown in the API.
    pub steps: Vec<String>,
    pub at: DateTime<Utc>,
}

impl EventData for DeploymentStarted {
    const TYPE: &'static str = "dev.slipway.deployment.started.v1";
    const TOPIC: Topic = Topic::Deployments;
}

/// A deployment's step began or completed. Subject: the deployment id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentStep {
    #[serde(flatten)]
    pub deployment: DeploymentRef,
    /// 0-based index into the planned steps.
    pub index: u32,
    pub step: String,
    /// `started` or `completed`.
    pub phase: String,
    pub at: DateTime<Utc>,
}

impl EventData for DeploymentStep {
    const TYPE: &'static str = "dev.slipway.deployment.step.v1";
    const TOPIC: Topic = Topic::Deployments;
}

/// Why a deployment failed: which step, which check, and what it saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureReason {
    /// 0-based index of the failing step, and its description.
    pub step_index: u32,
    pub step: String,
    /// What failed, e.g. `deadline`, `health`, `crash_loop`, `artifact`, `start`.
    pub check: String,
    /// A sentence for people.
    pub message: String,
}

/// A deployment ended. Subject: the deployment id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentFinished {
    #[serde(flatten)]
    pub deployment: DeploymentRef,
    /// `succeeded`, `failed`, `rolled_back` or `cancelled`.
    pub status: String,
    pub reason: Option<FailureReason>,
    /// The release running afterwards.
    pub running_release: Option<i32>,
    pub at: DateTime<Utc>,
}

impl EventData for DeploymentFinished {
    const TYPE: &'static str = "dev.slipway.deployment.finished.v1";
    const TOPIC: Topic = Topic::Deployments;
}

/// One release's share of traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseWeight {
    pub release: i32,
    /// Relative weight; the router picks a release with probability weight / sum of weights of
    /// releases that have a healthy instance.
    pub weight: u32,
}

/// The traffic split of a service in an environment changed. Applied atomically by routers.
/// Subject: `<service>/<env>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrafficChanged {
    pub service_id: ServiceId,
    pub service_name: String,
    pub environment: String,
    pub deployment_id: Option<Uuid>,
    /// Empty: no traffic (nothing deployed).
    pub weights: Vec<ReleaseWeight>,
    pub at: DateTime<Utc>,
}

impl EventData for TrafficChanged {
    const TYPE: &'static str = "dev.slipway.traffic.changed.v1";
    const TOPIC: Topic = Topic::Deployments;
}

// ---------------------------------------------------------------------------------------------
// Instance facts (deployer) and health (monitor).
// ---------------------------------------------------------------------------------------------

/// Identifies an instance in its facts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRef {
    pub instance_id: Uuid,
    pub service_id: ServiceId,
    pub service_name: String,
    pub environment: String,
    /// Release number.
    pub release: i32,
}

/// An instance (re)started and listens at `address`. A restart after a crash sends this again
/// with the same id and a higher `restarts`. Subject: the instance id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceStarted {
    #[serde(flatten)]
    pub instance: InstanceRef,
    /// `host:port` reachable by the edge router and the monitor.
    pub address: String,
    /// `process`, `docker` or `kubernetes`.
    pub target: String,
    pub health_check: HealthCheck,
    pub restarts: u32,
    pub at: DateTime<Utc>,
}

impl EventData for InstanceStarted {
    const TYPE: &'static str = "dev.slipway.instance.started.v1";
    const TOPIC: Topic = Topic::Instances;
}

/// An instance is being taken out of rotation before it stops: routers stop sending it new
/// requests. Subject: the instance id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceDraining {
    #[serde(flatten)]
    pub instance: InstanceRef,
    pub at: DateTime<Utc>,
}

impl EventData for InstanceDraining {
    const TYPE: &'static str = "dev.slipway.instance.draining.v1";
    const TOPIC: Topic = Topic::Instances;
}

/// An instance's process ended without being asked to (crash or kill); it is down and will
/// be restarted after `restart_in_ms` unless `crash_loop`. Subject: the instance id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceExited {
    #[serde(flatten)]
    pub instance: InstanceRef,
    /// e.g. `exit code 1` or `killed by signal 9`.
    pub exit: String,
    pub restarts: u32,
    pub restart_in_ms: u64,
    /// Too many crashes in a short time: restarts continue at the longest backoff, and the
    /// deployment gate treats the instance as failed.
    pub crash_loop: bool,
    /// The last lines the instance wrote, for the reason shown to people.
    pub last_lines: Vec<String>,
    pub at: DateTime<Utc>,
}

impl EventData for InstanceExited {
    const TYPE: &'static str = "dev.slipway.instance.exited.v1";
    const TOPIC: Topic = Topic::Instances;
}

/// An instance was stopped on purpose and removed. Subject: the instance id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceStopped {
    #[serde(flatten)]
    pub instance: InstanceRef,
    /// e.g. `replaced by v3`, `scaled down`, `cancelled`.
    pub reason: String,
    pub at: DateTime<Utc>,
}

impl EventData for InstanceStopped {
    const TYPE: &'static str = "dev.slipway.instance.stopped.v1";
    const TOPIC: Topic = Topic::Instances;
}

/// The instances a deployer runs for one service and environment, sent periodically. The
/// registry reaps registered instances that stop appearing. Subject: `<service>/<env>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstancesHeartbeat {
    pub service_id: ServiceId,
    pub service_name: String,
    pub environment: String,
    pub instances: Vec<Uuid>,
    /// How often heartbeats come; the registry reaps an instance unseen for several intervals
    /// (`discovery.stale_after_intervals`, 12 by default).
    pub interval_ms: u64,
    pub at: DateTime<Utc>,
}

impl EventData for InstancesHeartbeat {
    const TYPE: &'static str = "dev.slipway.instances.heartbeat.v1";
    const TOPIC: Topic = Topic::Instances;
}

/// One line an instance wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    /// `stdout` or `stderr`.
    pub stream: String,
    pub line: String,
    pub at: DateTime<Utc>,
}

/// A batch of an instance's output lines, in order (for the monitor to keep).
/// Subject: the instance id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceLogs {
    #[serde(flatten)]
    pub instance: InstanceRef,
    /// Position of the first line in the instance's output (0-based), so a redelivered batch is
    /// recognised.
    pub first_seq: u64,
    pub lines: Vec<LogLine>,
}

impl EventData for InstanceLogs {
    const TYPE: &'static str = "dev.slipway.instance.logs.v1";
    const TOPIC: Topic = Topic::Instances;
}

/// An instance's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Started, not yet proven healthy.
    Starting,
    Healthy,
    Unhealthy,
}

/// The monitor's verdict on an instance changed. Subject: the instance id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceHealthChanged {
    #[serde(flatten)]
    pub instance: InstanceRef,
    pub health: Health,
    /// The check, e.g. `http GET /healthz`.
    pub check: String,
    /// What the last probe saw, e.g. `HTTP 500` or `connection refused`.
    pub detail: String,
    /// The `restarts` of the [`InstanceStarted`] this verdict is about, so a verdict on an
    /// earlier incarnation is recognised as stale.
    pub restarts: u32,
    pub at: DateTime<Utc>,
}

impl EventData for InstanceHealthChanged {
    const TYPE: &'static str = "dev.slipway.instance.health.changed.v1";
    const TOPIC: Topic = Topic::Instances;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategies_parse_with_defaults_and_refuse_unknown_fields() {
        let s: Strategy = serde_json::from_value(serde_json::json!({"type": "rolling"})).unwrap();
        assert_eq!(
            s,
            Strategy::Rolling {
                max_surge: 1,
                max_unavailable: 0
            }
        );
        let c: Strategy = serde_json::from_value(serde_json::json!({
            "type": "canary", "steps": [{"weight": 20, "pause_seconds": 5}, {"weight": 50}]
        }))
        .unwrap();
        assert!(c.validate().is_ok());
        assert!(
            serde_json::from_value::<Strategy>(serde_json::json!({"type": "rolling", "surge": 1}))
                .is_err()
        );
        let recreate: Strategy =
            serde_json::from_value(serde_json::json!({"type": "recreate"})).unwrap();
        assert_eq!(recreate, Strategy::Recreate {});
        assert_eq!(
            serde_json::to_value(&recreate).unwrap(),
            serde_json::json!({"type": "recreate"})
        );
        assert!(
            serde_json::from_value::<Strategy>(serde_json::json!({"type": "recreate", "speed": 3}))
                .is_err()
        );
        let bad = Strategy::Canary {
            steps: vec![
                CanaryStep {
                    weight: 50,
                    pause_seconds: 0,
                },
                CanaryStep {
                    weight: 20,
                    pause_seconds: 0,
                },
            ],
        };
        assert_eq!(bad.validate().unwrap_err().0, "strategy.steps");
        let none = Strategy::Rolling {
            max_surge: 0,
            max_unavailable: 0,
        };
        assert!(none.validate().is_err());
    }

    #[test]
    fn health_checks_default_and_validate() {
        let h: HealthCheck = serde_json::from_value(serde_json::json!({})).unwrap();
        assert_eq!(h, HealthCheck::default());
        assert_eq!(h.describe(), "http GET /healthz");
        let bad = HealthCheck {
            interval_ms: 10,
            ..HealthCheck::default()
        };
        assert_eq!(bad.validate().unwrap_err().0, "health_check.interval_ms");
    }
}
