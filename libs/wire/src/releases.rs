//! Releases, environments and run config, as the registry answers them and the deployer reads
//! them.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use slipway_events::slipway::RunSpec;
use slipway_ids::{BuildId, ServiceId};

/// `GET /v1/services/{name}/releases/{n}`: one immutable release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    pub id: uuid::Uuid,
    pub service_id: ServiceId,
    /// 1, 2, 3, ... per service.
    pub number: i32,
    /// `v<number>`.
    pub version: String,
    pub build_id: BuildId,
    /// The artifact's package URL.
    pub artifact_purl: String,
    /// Pullable by digest.
    pub image: String,
    pub digest: String,
    pub commit: String,
    /// How instances start; absent for releases made before run specs.
    pub run: Option<RunSpec>,
    /// Environment → config version in force when the release was made.
    #[serde(default)]
    pub config: BTreeMap<String, i32>,
    pub created_at: DateTime<Utc>,
}

/// `GET /v1/services/{name}/environments`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Environments {
    pub items: Vec<Environment>,
}

/// Where an environment's instances run. Recorded per environment by the registry (the
/// authority: the deployer starts instances on the target the environment names) and stored
/// as `TEXT` by both (`process`, `docker`, `kubernetes`, the migrations' `CHECK` lists).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    sqlx::Type,
)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "TEXT", rename_all = "lowercase")]
pub enum TargetKind {
    /// Supervised local processes on the deployer's machine.
    #[default]
    Process,
    /// Containers on Docker Engines.
    Docker,
    /// Pods of a Deployment per release in a cluster.
    Kubernetes,
}

impl TargetKind {
    pub const ALL: [TargetKind; 3] = [Self::Process, Self::Docker, Self::Kubernetes];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Process => "process",
            Self::Docker => "docker",
            Self::Kubernetes => "kubernetes",
        }
    }
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Not one of [`TargetKind::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a target: must be `process`, `docker` or `kubernetes`")]
pub struct UnknownTarget(pub String);

impl std::str::FromStr for TargetKind {
    type Err = UnknownTarget;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownTarget(s.to_owned()))
    }
}

/// One environment of a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    pub name: String,
    /// Where it runs.
    pub target: TargetKind,
    /// The latest config version (0: none yet).
    pub config_version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// `GET /internal/v1/services/{name}/environments/{env}/config/{version}` (deployer only): the
/// config an instance runs with, secrets opened. Its `Debug` names the keys, never a value.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// The version answered (0: the empty config).
    pub version: i32,
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
}

impl fmt::Debug for RunConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunConfig")
            .field("version", &self.version)
            .field("vars", &self.vars.keys().collect::<Vec<_>>())
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn target_kinds_keep_their_names_and_refuse_others() {
        for kind in TargetKind::ALL {
            let wire = serde_json::to_value(kind).unwrap();
            assert_eq!(wire, kind.as_str());
            assert_eq!(serde_json::from_value::<TargetKind>(wire).unwrap(), kind);
            assert_eq!(kind.as_str().parse::<TargetKind>().unwrap(), kind);
        }
        assert!(serde_json::from_value::<TargetKind>(serde_json::json!("vm")).is_err());
        assert_eq!(
            "Docker".parse::<TargetKind>().unwrap_err().to_string(),
            "`Docker` is not a target: must be `process`, `docker` or `kubernetes`"
        );
    }

    #[test]
    fn run_config_debug_hides_values() {
        let config = RunConfig {
            version: 2,
            vars: BTreeMap::from([("MODE".into(), "fast".into())]),
            secrets: BTreeMap::from([("TOKEN".into(), "s3cret".into())]),
        };
        let shown = format!("{config:?}");
        assert!(shown.contains("TOKEN") && shown.contains("MODE"), "{shown}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("fast"),
            "{shown}"
        );
    }
}
