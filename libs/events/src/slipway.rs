//! Slipway's own event types, for facts CDEvents does not define.
//!
//! Types are reverse-DNS with a major-version suffix (`dev.slipway.<subject>.<predicate>.v<N>`).
//! A field may be added within a version; removing or changing one makes a new version.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use slipway_ids::{BuildId, ProjectName, ServiceId};

pub use crate::inputs::{Command, EnvName, InvalidInput, ProbePath};
pub use crate::resources::{Cpus, Memory};
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

/// How an instance of a release is started (from the service's `slipway.toml`). Every field is
/// parsed into a type that holds only valid values, so `slipway.toml` (read by the builder) and
/// every event carrying a run spec refuse the same inputs, with errors naming the field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    /// Program and arguments, run in the unpacked image's `/app`. Never empty.
    #[serde(deserialize_with = "run_command")]
    pub command: Command,
    /// The environment variable the instance reads its port from. Not a `SLIPWAY_` name: those
    /// are the platform's.
    #[serde(default = "default_port_env", deserialize_with = "run_port_env")]
    pub port_env: EnvName,
    /// The HTTP path health checks probe, on the instance's own address.
    #[serde(default, deserialize_with = "run_health_path")]
    pub health_path: ProbePath,
    /// CPUs an instance may use (absent: the target's default). Container targets enforce it,
    /// up to the ceiling their settings allow; the process target does not.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "run_cpus"
    )]
    pub cpus: Option<Cpus>,
    /// Memory an instance may use (absent: the target's default), like `cpus`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "run_memory"
    )]
    pub memory: Option<Memory>,
}

fn default_port_env() -> EnvName {
    EnvName::parse("PORT").unwrap_or_else(|_| unreachable!("`PORT` is a valid name"))
}

fn run_command<'de, D: Deserializer<'de>>(d: D) -> Result<Command, D::Error> {
    let args = Vec::<String>::deserialize(d)?;
    Command::new(args).map_err(|e| serde::de::Error::custom(format!("run.command: {e}")))
}

fn run_port_env<'de, D: Deserializer<'de>>(d: D) -> Result<EnvName, D::Error> {
    let raw = String::deserialize(d)?;
    let fail = |why: String| serde::de::Error::custom(format!("run.port_env: {why}"));
    let name = EnvName::parse(&raw).map_err(|e| fail(e.to_string()))?;
    if name.starts_with("SLIPWAY_") {
        return Err(fail(format!(
            "`{name}`: names starting with `SLIPWAY_` are reserved for the platform"
        )));
    }
    Ok(name)
}

fn run_health_path<'de, D: Deserializer<'de>>(d: D) -> Result<ProbePath, D::Error> {
    ProbePath::named("run.health_path", d)
}

fn run_cpus<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Cpus>, D::Error> {
    Cpus::named("run.cpus", d)
}

fn run_memory<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Memory>, D::Error> {
    Memory::named("run.memory", d)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_specs_keep_their_wire_format_and_refuse_bad_fields_by_name() {
        let wire = serde_json::json!({
            "command": ["python3", "app.py"], "port_env": "HTTP_PORT", "health_path": "/ready"
        });
        let run: RunSpec = serde_json::from_value(wire.clone()).unwrap();
        assert_eq!(run.command.program(), "python3");
        assert_eq!(run.port_env, "HTTP_PORT");
        assert_eq!(run.health_path, "/ready");
        assert_eq!(serde_json::to_value(&run).unwrap(), wire);
        let defaults: RunSpec =
            serde_json::from_value(serde_json::json!({"command": ["./app"]})).unwrap();
        assert_eq!(
            (defaults.port_env.as_str(), defaults.health_path.as_str()),
            ("PORT", "/healthz")
        );
        // Run specs from before limits decode without them, and are written as before.
        assert_eq!((defaults.cpus, defaults.memory), (None, None));
        assert!(!serde_json::to_string(&defaults).unwrap().contains("cpus"));
        let limited = serde_json::json!({
            "command": ["./app"], "port_env": "PORT", "health_path": "/healthz",
            "cpus": 0.5, "memory": "1GiB"
        });
        let run: RunSpec = serde_json::from_value(limited.clone()).unwrap();
        assert_eq!(run.cpus.map(Cpus::millis), Some(500));
        assert_eq!(run.memory.map(Memory::mib), Some(1024));
        assert_eq!(serde_json::to_value(&run).unwrap(), limited);
        let nulls: RunSpec = serde_json::from_value(
            serde_json::json!({"command": ["./app"], "cpus": null, "memory": null}),
        )
        .unwrap();
        assert_eq!((nulls.cpus, nulls.memory), (None, None));

        for (field, value, named) in [
            (
                "health_path",
                serde_json::json!("@169.254.169.254/latest"),
                "run.health_path",
            ),
            (
                "health_path",
                serde_json::json!("//evil/x"),
                "run.health_path",
            ),
            ("command", serde_json::json!([]), "run.command"),
            ("command", serde_json::json!([""]), "run.command"),
            ("port_env", serde_json::json!("PO RT"), "run.port_env"),
            (
                "port_env",
                serde_json::json!("SLIPWAY_INSTANCE"),
                "run.port_env",
            ),
            ("cpus", serde_json::json!(0), "run.cpus"),
            ("cpus", serde_json::json!(65), "run.cpus"),
            ("cpus", serde_json::json!("2"), "run.cpus"),
            ("memory", serde_json::json!("8MiB"), "run.memory"),
            ("memory", serde_json::json!("65GiB"), "run.memory"),
            ("memory", serde_json::json!("1 GB"), "run.memory"),
            ("memory", serde_json::json!(1024), "run.memory"),
        ] {
            let mut body = serde_json::json!({"command": ["./app"]});
            body[field] = value;
            let err = serde_json::from_value::<RunSpec>(body)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(named), "{field}: {err}");
        }
    }
}
