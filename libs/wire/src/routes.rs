//! The routing table and its versions.
//!
//! The registry versions the table with its discovery index: one number, bumped in the
//! transaction of every change a router would see (instances, health, weights), so a version
//! names one table. An edge router long-polls `GET /v1/discovery?index=<n>` with the index of
//! the table it serves and names itself in [`ROUTER_HEADER`]; each poll is therefore also its
//! report "router R applies version n", which the registry keeps. The deployer's route step
//! reads [`TrafficStatus`] and ends only when every live router applies at least the version
//! at which the step's weights took effect.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use slipway_ids::{ReplicaId, ServiceId};

use crate::instances::RouteInstance;
pub use slipway_events::deploy::ReleaseWeight;

/// The header carrying the index (the table version) of a discovery answer.
pub const INDEX_HEADER: &str = "x-slipway-index";

/// The header an edge router names itself with (its `ReplicaId`) on each discovery poll. The
/// poll's `index` query is the version of the table it serves.
pub const ROUTER_HEADER: &str = "x-slipway-router";

/// The registry's answer to `GET /v1/discovery` (a blocking query).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Discovery {
    /// The table version; grows whenever anything in `routes` changes. The next poll sends
    /// it back.
    pub index: u64,
    #[serde(default)]
    pub routes: Vec<Route>,
}

/// One service in one environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    /// The service's name: the first label of its host name, the second segment of `/apps/`.
    pub service: String,
    pub service_id: ServiceId,
    pub environment: String,
    /// Traffic share per release; empty means every routable instance shares equally.
    #[serde(default)]
    pub weights: Vec<ReleaseWeight>,
    #[serde(default)]
    pub instances: Vec<RouteInstance>,
}

/// `GET /internal/v1/traffic/{service_id}/{environment}` (deployer only): the weights the
/// registry applied for one service and environment, the table version at which they took
/// effect, and what each router reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrafficStatus {
    pub service_id: ServiceId,
    pub environment: String,
    /// The weights in the table (empty: none set, or set to none).
    pub weights: Vec<ReleaseWeight>,
    /// The table version at which `weights` took effect (0: never set).
    pub version: u64,
    /// The table version now (at least `version`).
    pub index: u64,
    /// Every router heard from recently, live or not.
    pub routers: Vec<RouterStatus>,
    /// Releases with instances the routers may send requests to (running and healthy as the
    /// registry has them), with how many. The registry learns of health from the same verdicts
    /// as the deployer, but on its own consumer: it may lag behind the deployer's view.
    #[serde(default)]
    pub routable: Vec<RoutableRelease>,
}

/// How many routable instances one release has in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutableRelease {
    pub release: i32,
    pub instances: u32,
}

/// What one edge router last reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouterStatus {
    pub router: ReplicaId,
    /// The version of the table it serves.
    pub applied: u64,
    /// When its last poll arrived.
    pub polled_at: DateTime<Utc>,
    /// Whether it counts: it polled within its poll's wait plus the registry's grace
    /// (`discovery.router_grace_ms`). A router that stopped polling is gone, and a route
    /// step does not wait for it.
    pub live: bool,
}

impl TrafficStatus {
    /// The live routers that do not serve `version` yet, by id. Empty when every live router
    /// does, and when no router is live at all (nothing routes through edge routers, e.g. on
    /// Kubernetes, where the cluster applies the weights).
    pub fn lagging(&self, version: u64) -> Vec<&ReplicaId> {
        self.routers
            .iter()
            .filter(|r| r.live && r.applied < version)
            .map(|r| &r.router)
            .collect()
    }

    /// The releases `weights` gives traffic to that have no routable instance in this table,
    /// when live routers would act on it (none live: nothing routes through edge routers).
    /// Announcing such weights would have the routers answer 503 for that share until the
    /// registry sees the release's instances healthy.
    pub fn unroutable(&self, weights: &[ReleaseWeight]) -> Vec<i32> {
        if !self.routers.iter().any(|r| r.live) {
            return Vec::new();
        }
        weights
            .iter()
            .filter(|w| w.weight > 0)
            .filter(|w| {
                !self
                    .routable
                    .iter()
                    .any(|r| r.release == w.release && r.instances > 0)
            })
            .map(|w| w.release)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::instances::{Health, InstanceState};
    use slipway_ids::InstanceId;

    #[test]
    fn discovery_answers_are_typed() {
        let id = InstanceId::new();
        let service = ServiceId::new();
        let answer: Discovery = serde_json::from_value(serde_json::json!({
            "index": 12,
            "routes": [{"service": "hello", "service_id": service, "environment": "prod",
                "weights": [{"release": 1, "weight": 100}],
                "instances": [{"id": id, "address": "127.0.0.1:41234", "release": 1,
                    "health": "healthy", "state": "running", "routable": true}]}]
        }))
        .unwrap();
        let instance = &answer.routes[0].instances[0];
        assert_eq!(instance.id, id);
        assert_eq!(
            (instance.health, instance.state),
            (Health::Healthy, InstanceState::Running)
        );
        let bad = serde_json::json!({"index": 1, "routes": [{"service": "x",
            "service_id": "not-a-uuid", "environment": "prod"}]});
        assert!(serde_json::from_value::<Discovery>(bad).is_err());
    }

    #[test]
    fn only_live_routers_behind_the_version_lag() {
        let router = |name: &str, applied, live| RouterStatus {
            router: ReplicaId::generate(name),
            applied,
            polled_at: Utc::now(),
            live,
        };
        let mut status = TrafficStatus {
            service_id: ServiceId::new(),
            environment: "prod".into(),
            weights: vec![],
            version: 7,
            index: 9,
            routers: vec![
                router("a", 7, true),
                router("b", 6, true),
                router("c", 1, false),
            ],
            routable: vec![],
        };
        let lagging = status.lagging(7);
        assert_eq!(lagging, vec![&status.routers[1].router]);
        status.routers.clear();
        assert!(
            status.lagging(7).is_empty(),
            "no router live: nothing to wait for"
        );
    }

    #[test]
    fn weights_on_a_release_without_routable_instances_are_unroutable_while_routers_live() {
        let weight = |release, weight| ReleaseWeight { release, weight };
        let mut status = TrafficStatus {
            service_id: ServiceId::new(),
            environment: "prod".into(),
            weights: vec![],
            version: 1,
            index: 1,
            routers: vec![RouterStatus {
                router: ReplicaId::generate("edge"),
                applied: 1,
                polled_at: Utc::now(),
                live: true,
            }],
            routable: vec![
                RoutableRelease {
                    release: 1,
                    instances: 2,
                },
                RoutableRelease {
                    release: 3,
                    instances: 0,
                },
            ],
        };
        // v2 has no row, v3 none routable; v1 is fine, and a zero weight asks for nothing.
        let weights = [weight(1, 50), weight(2, 30), weight(3, 20), weight(4, 0)];
        assert_eq!(status.unroutable(&weights), vec![2, 3]);
        assert!(status.unroutable(&[weight(1, 100)]).is_empty());
        // An answer from a registry without the field: nothing is known routable.
        let old: TrafficStatus = serde_json::from_value(serde_json::json!({
            "service_id": status.service_id, "environment": "prod", "weights": [],
            "version": 1, "index": 1, "routers": []}))
        .unwrap();
        assert!(old.routable.is_empty());
        // No live router: nobody would answer 503, so nothing is waited for.
        status.routers[0].live = false;
        assert!(status.unroutable(&weights).is_empty());
    }
}
