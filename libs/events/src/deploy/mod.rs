//! Deploy-and-run events: the gateway's deploy/rollback/scale/cancel commands, the deployer's
//! deployment, instance and traffic facts, and the monitor's health verdicts.
//!
//! Who writes and reads what:
//! - gateway → `slipway.commands`: [`DeployRequested`], [`DeployCancelRequested`] (read by the
//!   deployer, which keeps one deployment at a time per service and environment).
//! - deployer → `slipway.deployments`: [`DeploymentStarted`], [`DeploymentStep`],
//!   [`DeploymentFinished`], [`TrafficChanged`] and the CDEvents service.* events.
//! - deployer → `slipway.instances`: [`InstanceStarted`], [`InstanceDraining`],
//!   [`InstanceExited`], [`InstanceStopped`], [`InstancesHeartbeat`] (see `heartbeat.rs`),
//!   [`InstanceLogs`].
//! - monitor → `slipway.instances`: [`InstanceHealthChanged`] (read by registry and deployer).
//!
//! Every record's key is the service id.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use slipway_ids::{DeploymentId, InstanceId, ProjectName, ServiceId};

use crate::{EventData, Topic};

mod heartbeat;
mod spec;

pub use crate::inputs::ProbePath;
pub use heartbeat::{
    EnvironmentInstances, HeartbeatInstance, InstanceState, InstancesHeartbeat,
    InstancesHeartbeatV1, InstancesHeartbeatV2,
};
pub use spec::{CanaryStep, HealthCheck, ProbeKind, Strategy};

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
    pub deployment_id: DeploymentId,
    pub kind: DeployKind,
    pub service_id: ServiceId,
    pub service_name: String,
    /// The service's project, as the gateway checked it; absent in commands from before
    /// projects and in those the deployer makes itself (auto-deploy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<ProjectName>,
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
    pub deployment_id: DeploymentId,
    pub service_id: ServiceId,
    /// The service's project, as the gateway checked it; absent in commands from before
    /// projects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<ProjectName>,
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
    pub deployment_id: DeploymentId,
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
    pub deployment_id: Option<DeploymentId>,
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
    pub instance_id: InstanceId,
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
    #![allow(clippy::unwrap_used)]

    use uuid::Uuid;

    use super::*;

    /// Deployment ids were bare `Uuid`s in these events before [`DeploymentId`]: events
    /// already in the log (and consumers not yet upgraded) must see the very same JSON.
    #[test]
    fn deployment_ids_are_written_and_read_as_the_bare_uuids_they_were() {
        let raw = Uuid::now_v7();
        let bare = serde_json::to_value(raw).unwrap();
        let id = DeploymentId::from_uuid(raw);
        let deployment = DeploymentRef {
            deployment_id: id,
            kind: DeployKind::Deploy,
            service_id: ServiceId::new(),
            service_name: "hello".into(),
            environment: "prod".into(),
            release: Some(2),
            strategy: "rolling".into(),
        };
        let started = DeploymentStarted {
            deployment,
            steps: vec!["start 1".into()],
            at: Utc::now(),
        };
        let wire = serde_json::to_value(&started).unwrap();
        assert_eq!(
            wire["deployment_id"], bare,
            "flattened, as a UUID string: {wire}"
        );
        let back: DeploymentStarted = serde_json::from_value(wire).unwrap();
        assert_eq!(back, started);

        let cancel = DeployCancelRequested {
            deployment_id: id,
            service_id: ServiceId::new(),
            project: None,
            actor: None,
            requested_at: Utc::now(),
        };
        let wire = serde_json::to_value(&cancel).unwrap();
        assert_eq!(wire["deployment_id"], bare);
        assert_eq!(
            serde_json::from_value::<DeployCancelRequested>(wire).unwrap(),
            cancel
        );

        for deployment_id in [Some(id), None] {
            let traffic = TrafficChanged {
                service_id: ServiceId::new(),
                service_name: "hello".into(),
                environment: "prod".into(),
                deployment_id,
                weights: vec![],
                at: Utc::now(),
            };
            let wire = serde_json::to_value(&traffic).unwrap();
            let expected = deployment_id.map_or(serde_json::Value::Null, |_| bare.clone());
            assert_eq!(wire["deployment_id"], expected);
            assert_eq!(
                serde_json::from_value::<TrafficChanged>(wire).unwrap(),
                traffic
            );
        }
    }

    #[test]
    fn a_deployment_id_that_is_not_a_uuid_is_rejected() {
        let wire = serde_json::json!({
            "deployment_id": "not-a-uuid",
            "service_id": ServiceId::new(),
            "actor": null,
            "requested_at": Utc::now(),
        });
        assert!(serde_json::from_value::<DeployCancelRequested>(wire).is_err());
    }

    /// Instance ids were bare `Uuid`s in these events before [`InstanceId`]: events already in
    /// the log (and consumers not yet upgraded) must see the very same JSON, and a JSON written
    /// from a bare `Uuid` must read back as the same id.
    #[test]
    fn instance_ids_are_written_and_read_as_the_bare_uuids_they_were() {
        let raw = Uuid::now_v7();
        let started = InstanceStarted {
            instance: InstanceRef {
                instance_id: InstanceId::from_uuid(raw),
                service_id: ServiceId::new(),
                service_name: "hello".into(),
                environment: "prod".into(),
                release: 2,
            },
            address: "127.0.0.1:4000".into(),
            target: "process".into(),
            health_check: HealthCheck::default(),
            restarts: 0,
            at: Utc::now(),
        };
        let wire = serde_json::to_value(&started).unwrap();
        assert_eq!(
            wire["instance_id"],
            serde_json::Value::String(raw.to_string()),
            "flattened, as a UUID string: {wire}"
        );
        let back: InstanceStarted = serde_json::from_value(wire).unwrap();
        assert_eq!(back, started);

        let beat = InstancesHeartbeatV1 {
            service_id: ServiceId::new(),
            service_name: "hello".into(),
            environment: "prod".into(),
            instances: vec![InstanceId::from_uuid(raw)],
            interval_ms: 5000,
            at: Utc::now(),
        };
        let wire = serde_json::to_value(&beat).unwrap();
        assert_eq!(wire["instances"], serde_json::json!([raw.to_string()]));
        let back: InstancesHeartbeatV1 = serde_json::from_value(wire).unwrap();
        assert_eq!(back.instances[0].as_uuid(), raw);

        let mut bad = serde_json::to_value(&started).unwrap();
        bad["instance_id"] = "not-a-uuid".into();
        assert!(serde_json::from_value::<InstanceStarted>(bad).is_err());
    }
}
