//! A plan's parts: sets of instances, steps and gates. The engine's `plan.rs` builds plans of
//! them; the deployments table stores them as JSON.

use serde::{Deserialize, Serialize};
use slipway_events::deploy::ReleaseWeight;

/// A set of instances: one release run with one config version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Set {
    pub release: i32,
    pub config_version: i32,
}

/// What a gate checks while a step holds. Health today; metric analysis joins here later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Gate {
    /// Every instance of the release stays healthy and none crash-loops.
    Health { release: i32 },
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Step {
    /// Make exactly `count` instances of `set` run (start missing ones; drain and stop extra
    /// ones), then wait until `count` of them are healthy.
    Scale { set: Set, count: u32 },
    /// Publish a traffic split (applied atomically by routers).
    Route { weights: Vec<ReleaseWeight> },
    /// Hold for `seconds` while the gates are watched.
    Pause { seconds: u32, gates: Vec<Gate> },
}

impl Step {
    /// The kind of step, a bounded label for metrics (`scale`, `route`, `pause`).
    pub fn label(&self) -> &'static str {
        match self {
            Step::Scale { .. } => "scale",
            Step::Route { .. } => "route",
            Step::Pause { .. } => "pause",
        }
    }

    /// How the step is shown to people.
    pub fn describe(&self) -> String {
        match self {
            Step::Scale { set, count } => format!(
                "run {count} instance{} of v{} and wait until healthy",
                if *count == 1 { "" } else { "s" },
                set.release
            ),
            Step::Route { weights } if weights.is_empty() => "route no traffic".into(),
            Step::Route { weights } => {
                let total: u32 = weights.iter().map(|w| w.weight).sum::<u32>().max(1);
                let parts: Vec<String> = weights
                    .iter()
                    .map(|w| format!("v{} {}%", w.release, w.weight * 100 / total))
                    .collect();
                format!("route {}", parts.join(" / "))
            }
            Step::Pause { seconds, .. } => format!("hold {seconds} s while gates are checked"),
        }
    }
}

/// What runs now (absent: nothing is deployed in the environment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Current {
    pub set: Set,
    pub replicas: u32,
}
