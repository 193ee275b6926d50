//! Slipway's own event types, for facts CDEvents does not define.
//!
//! Types are reverse-DNS with a major-version suffix (`dev.slipway.<subject>.<predicate>.v<N>`).
//! A field may be added within a version; removing or changing one makes a new version.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use slipway_ids::{BuildId, ProjectName, ServiceId};

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
    /// The project it belongs to; absent in events from before projects, which mean `default`.
    #[serde(default)]
    pub project: ProjectName,
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

/// What started a build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildTrigger {
    /// `github`, `gitlab`, `api` or `upload`.
    pub kind: String,
    /// The code host's delivery id (`X-GitHub-Delivery`), when a webhook started it.
    pub delivery: Option<String>,
    /// Who pushed, or the name of the API token that asked.
    pub actor: Option<String>,
}

/// A build was asked for (gateway command). Key: the service id. Subject: the build id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildRequested {
    /// Chosen by the gateway and answered to the client, so it can follow the build at once.
    pub build_id: BuildId,
    pub service_id: ServiceId,
    pub service_name: String,
    /// The service's project, as the gateway checked it; absent in commands from before
    /// projects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<ProjectName>,
    /// Where to fetch from (absent for uploads).
    pub repository: Option<String>,
    /// The ref to build, e.g. `refs/heads/main`.
    pub git_ref: String,
    /// The exact commit, when known (a push names it); otherwise the ref's head at fetch time.
    pub commit: Option<String>,
    /// An uploaded source archive (held by the builder) to build instead of a repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<uuid::Uuid>,
    pub trigger: BuildTrigger,
    pub requested_at: DateTime<Utc>,
}

impl EventData for BuildRequested {
    const TYPE: &'static str = "dev.slipway.build.requested.v1";
    const TOPIC: Topic = Topic::Commands;
}

/// How an instance of a release is started (from the service's `slipway.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    /// Program and arguments, run in the unpacked image's `/app`.
    pub command: Vec<String>,
    /// The environment variable the instance reads its port from.
    #[serde(default = "default_port_env")]
    pub port_env: String,
    /// The HTTP path health checks probe.
    #[serde(default = "default_health_path")]
    pub health_path: String,
}

fn default_port_env() -> String {
    "PORT".into()
}

fn default_health_path() -> String {
    "/healthz".into()
}

/// A release was made (registry): an immutable, numbered pairing of an artifact with the config
/// version in force for each environment. Key: the service id. Subject: `<service>/v<N>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseCreated {
    pub release_id: uuid::Uuid,
    pub service_id: ServiceId,
    pub service_name: String,
    /// 1, 2, 3, ... per service.
    pub number: i32,
    /// `v<number>`.
    pub version: String,
    /// The artifact's package URL.
    pub artifact: String,
    /// Pullable by digest.
    pub image: String,
    pub digest: String,
    pub commit: String,
    pub build_id: BuildId,
    pub run: Option<RunSpec>,
    /// Environment name → config version in force when the release was made.
    pub config: std::collections::BTreeMap<String, i32>,
    pub created_at: DateTime<Utc>,
}

impl EventData for ReleaseCreated {
    const TYPE: &'static str = "dev.slipway.release.created.v1";
    const TOPIC: Topic = Topic::Services;
}
