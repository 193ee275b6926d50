//! The deployer's periodic heartbeat: every instance a deployer replica supervises, as a whole
//! record, so the registry can put back what it lost (a row reaped or deleted while the broker
//! or the registry was away) instead of only refreshing what it still has.
//!
//! Version 3 is one event per service (chunked by environments) instead of one per service
//! and environment: at thousands of environments, one event each per interval flooded the
//! instances topic and the registry's one transaction per event. Version 2 (per environment)
//! replaced version 1 (a bare list of ids). Registries apply all three during a rolling
//! upgrade ([`InstancesHeartbeatV2`], [`InstancesHeartbeatV1`]); deployers send only version
//! 3. Upgrade the registry before the deployer: an older registry ignores a type it does not
//! know, and would reap on its old clock.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use slipway_ids::{InstanceId, ReplicaId, ServiceId};

use super::{Health, HealthCheck};
use crate::{EventData, Topic};

/// What an instance's process is doing, as its owner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// Its process runs; routable once healthy.
    Running,
    /// Being taken out of rotation before it stops.
    Draining,
    /// Its process ended (crash); the deployer may restart it.
    Down,
}

impl InstanceState {
    /// The name used on the wire and in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Running => "running",
            InstanceState::Draining => "draining",
            InstanceState::Down => "down",
        }
    }

    /// The inverse of [`Self::as_str`].
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "running" => Some(InstanceState::Running),
            "draining" => Some(InstanceState::Draining),
            "down" => Some(InstanceState::Down),
            _ => None,
        }
    }
}

/// One instance in a heartbeat: everything the registry needs to insert its row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatInstance {
    pub instance_id: InstanceId,
    /// Release number.
    pub release: i32,
    /// `host:port` reachable by the edge router and the monitor.
    pub address: String,
    /// `process`, `docker` or `kubernetes`.
    pub target: String,
    pub state: InstanceState,
    /// The monitor's last verdict as the deployer heard it; absent before the first. The
    /// registry uses it only when it inserts the row: the monitor's own events stay the
    /// authority on health (they may be newer than what the deployer heard).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    pub health_check: HealthCheck,
    /// What the last probe saw, or how the process exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The incarnation (see [`super::InstanceStarted::restarts`]).
    pub restarts: u32,
    pub started_at: DateTime<Utc>,
}

/// One environment of a heartbeat: every instance the owner supervises there, possibly none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvironmentInstances {
    pub environment: String,
    pub instances: Vec<HeartbeatInstance>,
}

/// The instances one deployer replica (`owner`) supervises for one service, per environment,
/// sent every `interval_ms`. Every environment of the service with a desired state is listed
/// in one of the owner's heartbeats of an interval (a service with many instances takes
/// several, each with whole environments); one with none of the owner's instances is listed
/// empty, which is how the registry learns that instances once listed are gone while
/// heartbeats keep flowing. The registry inserts any listed instance it does not have, and
/// reaps an instance of a listed environment only when heartbeats for it have gone on for
/// `discovery.stale_after_intervals` intervals without listing it: never because heartbeats
/// stopped arriving altogether (which is what a broker or registry outage looks like).
/// Subject: `<service>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstancesHeartbeat {
    pub service_id: ServiceId,
    pub service_name: String,
    /// The deployer replica supervising every instance listed.
    pub owner: ReplicaId,
    pub environments: Vec<EnvironmentInstances>,
    /// How often this owner sends heartbeats.
    pub interval_ms: u64,
    pub at: DateTime<Utc>,
}

impl EventData for InstancesHeartbeat {
    const TYPE: &'static str = "dev.slipway.instances.heartbeat.v3";
    const TOPIC: Topic = Topic::Instances;
}

impl InstancesHeartbeat {
    /// Every instance listed, in all environments.
    pub fn instances(&self) -> impl Iterator<Item = (&str, &HeartbeatInstance)> {
        self.environments
            .iter()
            .flat_map(|e| e.instances.iter().map(move |i| (e.environment.as_str(), i)))
    }
}

/// Version 2: one event per service and environment, with the same records. No longer sent;
/// still applied, like version 3 with that one environment. Subject: `<service>/<env>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstancesHeartbeatV2 {
    pub service_id: ServiceId,
    pub service_name: String,
    pub environment: String,
    /// The deployer replica supervising every instance listed.
    pub owner: ReplicaId,
    pub instances: Vec<HeartbeatInstance>,
    /// How often this owner sends heartbeats.
    pub interval_ms: u64,
    pub at: DateTime<Utc>,
}

impl EventData for InstancesHeartbeatV2 {
    const TYPE: &'static str = "dev.slipway.instances.heartbeat.v2";
    const TOPIC: Topic = Topic::Instances;
}

/// Version 1: only the ids of the instances. No longer sent; still applied (as a refresh of
/// the listed rows) so that a registry upgraded before its deployers keeps their instances.
/// Subject: `<service>/<env>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstancesHeartbeatV1 {
    pub service_id: ServiceId,
    pub service_name: String,
    pub environment: String,
    pub instances: Vec<InstanceId>,
    pub interval_ms: u64,
    pub at: DateTime<Utc>,
}

impl EventData for InstancesHeartbeatV1 {
    const TYPE: &'static str = "dev.slipway.instances.heartbeat.v1";
    const TOPIC: Topic = Topic::Instances;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_heartbeat_carries_whole_records_and_omits_unknown_health() {
        let record = HeartbeatInstance {
            instance_id: InstanceId::new(),
            release: 3,
            address: "127.0.0.1:4000".into(),
            target: "process".into(),
            state: InstanceState::Running,
            health: None,
            health_check: HealthCheck::default(),
            detail: None,
            restarts: 0,
            started_at: Utc::now(),
        };
        let beat = InstancesHeartbeat {
            service_id: ServiceId::new(),
            service_name: "hello".into(),
            owner: ReplicaId::generate("deployer"),
            environments: vec![
                EnvironmentInstances {
                    environment: "prod".into(),
                    instances: vec![record.clone()],
                },
                EnvironmentInstances {
                    environment: "staging".into(),
                    instances: Vec::new(),
                },
            ],
            interval_ms: 5000,
            at: Utc::now(),
        };
        let wire = serde_json::to_value(&beat).unwrap();
        let prod = &wire["environments"][0]["instances"][0];
        assert_eq!(prod["state"], "running");
        assert!(prod.get("health").is_none(), "{wire}");
        assert_eq!(wire["environments"][1]["environment"], "staging");
        let listed: Vec<(&str, &HeartbeatInstance)> = beat.instances().collect();
        assert_eq!(listed, [("prod", &record)]);
        let back: InstancesHeartbeat = serde_json::from_value(wire).unwrap();
        assert_eq!(back, beat);
        for state in [
            InstanceState::Running,
            InstanceState::Draining,
            InstanceState::Down,
        ] {
            assert_eq!(InstanceState::parse(state.as_str()), Some(state));
        }
    }
}
