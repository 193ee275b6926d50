//! Slipway's own event types, for facts CDEvents does not define.
//!
//! Types are reverse-DNS with a major-version suffix (`dev.slipway.<subject>.<predicate>.v<N>`).
//! A field may be added within a version; removing or changing one makes a new version.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use slipway_ids::ServiceId;

use crate::{EventData, Topic};

/// The `source` attribute of events each service publishes.
pub mod sources {
    pub const GATEWAY: &str = "/slipway/gateway";
    pub const BUILDER: &str = "/slipway/builder";
    pub const REGISTRY: &str = "/slipway/registry";
    pub const DEPLOYER: &str = "/slipway/deployer";
    pub const MONITOR: &str = "/slipway/monitor";
}

/// A service was registered (registry). Key: the service id. Subject: the service name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceCreated {
    /// The new service's id (also the record key).
    pub service_id: ServiceId,
    /// Its unique name, a DNS label.
    pub name: String,
    /// The git repository builds are fetched from, if any.
    pub repository: Option<String>,
    /// The branch whose pushes trigger builds.
    pub branch: String,
    /// When the registry stored it.
    pub created_at: DateTime<Utc>,
}

impl EventData for ServiceCreated {
    const TYPE: &'static str = "dev.slipway.service.created.v1";
    const TOPIC: Topic = Topic::Services;
}
