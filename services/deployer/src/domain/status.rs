//! Closed sets of values, stored as `TEXT` (the migrations' `CHECK` constraints and these
//! enums' snake_case names are the same lists) and shown with the same names in the API.

use serde::{Deserialize, Serialize};
use slipway_events::deploy::{DeployKind, Health};

/// Where a deployment is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "TEXT", rename_all = "snake_case")]
pub enum DeploymentStatus {
    /// Waiting for its turn (one active deployment per service and environment).
    Queued,
    /// Running its plan.
    Progressing,
    /// Running the way back after a failed gate, a deadline or a cancel.
    RollingBack,
    Succeeded,
    Failed,
    RolledBack,
    Cancelled,
}

impl DeploymentStatus {
    /// Final: nothing drives it any more.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::RolledBack | Self::Cancelled
        )
    }

    /// The name stored and shown (also the metrics' `outcome` label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Progressing => "progressing",
            Self::RollingBack => "rolling_back",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::RolledBack => "rolled_back",
            Self::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for DeploymentStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a deployment was asked to do (the command's [`DeployKind`], stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "TEXT", rename_all = "snake_case")]
pub enum DeploymentKind {
    Deploy,
    Rollback,
    Scale,
}

impl DeploymentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deploy => "deploy",
            Self::Rollback => "rollback",
            Self::Scale => "scale",
        }
    }
}

impl From<DeployKind> for DeploymentKind {
    fn from(k: DeployKind) -> Self {
        match k {
            DeployKind::Deploy => Self::Deploy,
            DeployKind::Rollback => Self::Rollback,
            DeployKind::Scale => Self::Scale,
        }
    }
}

impl From<DeploymentKind> for DeployKind {
    fn from(k: DeploymentKind) -> Self {
        match k {
            DeploymentKind::Deploy => Self::Deploy,
            DeploymentKind::Rollback => Self::Rollback,
            DeploymentKind::Scale => Self::Scale,
        }
    }
}

/// Where an instance is in its life on the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "TEXT", rename_all = "snake_case")]
pub enum InstanceState {
    /// The row is written, the process may not exist yet.
    Starting,
    Running,
    /// Crashed; the target restarts it with backoff.
    Down,
    /// Out of rotation, still serving what it has.
    Draining,
    /// Being stopped.
    Stopping,
}

impl InstanceState {
    /// Leaving: draining or stopping (never counted as part of a set any more).
    pub fn is_leaving(self) -> bool {
        matches!(self, Self::Draining | Self::Stopping)
    }
}

/// The monitor's last verdict on an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "TEXT", rename_all = "snake_case")]
pub enum InstanceHealth {
    Starting,
    Healthy,
    Unhealthy,
}

impl InstanceHealth {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Healthy => "healthy",
            Self::Unhealthy => "unhealthy",
        }
    }
}

impl std::fmt::Display for InstanceHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Health> for InstanceHealth {
    fn from(h: Health) -> Self {
        match h {
            Health::Starting => Self::Starting,
            Health::Healthy => Self::Healthy,
            Health::Unhealthy => Self::Unhealthy,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names are the ones the migration's CHECK constraint allows and the API shows.
    #[test]
    fn statuses_are_named_as_stored() {
        let all = [
            DeploymentStatus::Queued,
            DeploymentStatus::Progressing,
            DeploymentStatus::RollingBack,
            DeploymentStatus::Succeeded,
            DeploymentStatus::Failed,
            DeploymentStatus::RolledBack,
            DeploymentStatus::Cancelled,
        ];
        for s in all {
            let json = serde_json::to_value(s).unwrap_or_default();
            assert_eq!(json, s.as_str());
        }
        let migration = include_str!("../../migrations/0002_deployments.sql");
        for s in all {
            assert!(migration.contains(&format!("'{}'", s.as_str())), "{s}");
        }
        assert_eq!(
            serde_json::to_value(InstanceState::Draining).unwrap_or_default(),
            "draining"
        );
        assert!(
            all.iter().filter(|s| s.is_terminal()).count() == 4
                && !DeploymentStatus::RollingBack.is_terminal()
        );
    }
}
