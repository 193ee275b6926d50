//! Instances as the registry answers them to routers.

use serde::{Deserialize, Serialize};
use slipway_ids::InstanceId;

pub use slipway_events::deploy::{Health, InstanceState};

/// One instance in the routing table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteInstance {
    pub id: InstanceId,
    /// `host:port` the instance listens on (plain HTTP).
    pub address: String,
    /// Release number.
    pub release: i32,
    /// From the monitor.
    pub health: Health,
    /// From the deployer.
    pub state: InstanceState,
    /// Whether it takes requests: see [`RouteInstance::new`]. Sent so that readers other than
    /// the edge router (people, scripts) need not repeat the rule.
    pub routable: bool,
}

impl RouteInstance {
    /// Only running instances the monitor found healthy receive traffic: a draining instance
    /// finishes what it has, a starting one is not ready yet. The one place that rule lives.
    pub fn new(
        id: InstanceId,
        address: String,
        release: i32,
        health: Health,
        state: InstanceState,
    ) -> Self {
        Self {
            id,
            address,
            release,
            health,
            state,
            routable: state == InstanceState::Running && health == Health::Healthy,
        }
    }
}
