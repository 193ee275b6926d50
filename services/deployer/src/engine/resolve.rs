//! Resolving a request into a plan, and deciding the way back: pure functions of the request
//! and what the engine looked up (what runs, the release, config versions). The engine gathers
//! the facts (`drive.rs`), these decide; a request that cannot be honoured is a [`Refusal`].

use slipway_events::deploy::{FailureReason, HealthCheck, ProbePath, Strategy};

use super::plan;
use crate::domain::{Check, Current, DeploymentKind, DeploymentStatus, Set, Step};
use crate::target::{NotSetUp, TargetKind};

/// What a deployment asks for, as stored.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub kind: DeploymentKind,
    pub release: Option<i32>,
    pub config_version: Option<i32>,
    pub replicas: Option<u32>,
    pub strategy: &'a Strategy,
    pub health_check: Option<&'a HealthCheck>,
}

/// Why a request cannot be honoured: it ends `failed`, check `request`, with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("nothing is deployed in this environment to scale")]
    NothingToScale,
    #[error("no earlier release ran in this environment")]
    NoEarlierRelease,
    #[error("the request names no release")]
    NoRelease,
    /// The registry does not know the release (its words).
    #[error("{0}")]
    UnknownRelease(String),
    /// The environment has no config version to run with (the registry's words).
    #[error("{0}")]
    NoConfig(String),
    /// The registry does not know the environment (its words).
    #[error("{0}")]
    UnknownEnvironment(String),
    /// The environment is recorded on a target this deployer has not set up.
    #[error(transparent)]
    NotSetUp(#[from] NotSetUp),
}

impl Refusal {
    /// The reason the deployment ends with.
    pub fn reason(&self) -> FailureReason {
        FailureReason {
            step_index: 0,
            step: "resolve the request".into(),
            check: Check::Request.to_string(),
            message: self.to_string(),
        }
    }
}

/// Which release the request is about: the one named, what runs (scale), or for a rollback
/// without a release the one that ran before (`previous`).
pub fn release(
    req: &Request<'_>,
    running: Option<Current>,
    previous: Option<i32>,
) -> Result<i32, Refusal> {
    match req.kind {
        DeploymentKind::Deploy => req.release.ok_or(Refusal::NoRelease),
        DeploymentKind::Scale => running
            .map(|c| c.set.release)
            .ok_or(Refusal::NothingToScale),
        DeploymentKind::Rollback => req.release.or(previous).ok_or(Refusal::NoEarlierRelease),
    }
}

/// What the engine found out about the release and the environment.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    /// What runs now.
    pub running: Option<Current>,
    /// The release [`release`] chose.
    pub release: i32,
    /// The health path the release declares (its `[run] health_path`).
    pub health_path: Option<&'a ProbePath>,
    /// The config version the release recorded for the environment when it was made.
    pub recorded_config: Option<i32>,
    /// Rollback: the config version the release last ran with in the environment.
    pub last_config: Option<i32>,
    /// The environment's newest config version, looked up only when [`config_version`]
    /// answers `None` (absent: not looked up; `Err`: there is none, in the registry's words).
    pub latest_config: Option<Result<i32, String>>,
    /// Replicas when neither the request nor what runs says.
    pub default_replicas: u32,
    /// The target the registry records for the environment (where the deployment runs).
    pub target: TargetKind,
}

/// The config version to run, when known without asking for the environment's newest: the
/// request's, else the one remembered (a rollback restores the config the release last ran
/// with; a scale keeps what runs), else the one the release recorded.
pub fn config_version(req: &Request<'_>, facts: &Facts<'_>) -> Option<i32> {
    let remembered = match req.kind {
        DeploymentKind::Rollback => facts.last_config,
        DeploymentKind::Scale => facts.running.map(|c| c.set.config_version),
        DeploymentKind::Deploy => None,
    };
    req.config_version.or(remembered).or(facts.recorded_config)
}

/// A request resolved: what to run and the steps that get there.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub to: Set,
    /// Where its instances run.
    pub target: TargetKind,
    pub replicas: u32,
    pub health_check: HealthCheck,
    pub from: Option<Current>,
    pub plan: Vec<Step>,
}

/// Resolves the request against the facts: the set to run, how many, the health check, and the
/// plan for the request's kind and strategy.
pub fn resolve(req: &Request<'_>, facts: &Facts<'_>) -> Result<Resolved, Refusal> {
    let config_version = match config_version(req, facts) {
        Some(v) => v,
        None => match &facts.latest_config {
            Some(Ok(v)) => *v,
            Some(Err(why)) => return Err(Refusal::NoConfig(why.clone())),
            None => {
                return Err(Refusal::NoConfig(
                    "the environment's config version was not looked up".into(),
                ));
            }
        },
    };
    let from = facts.running;
    let replicas = req
        .replicas
        .or_else(|| from.map(|c| c.replicas).filter(|n| *n > 0))
        .unwrap_or(facts.default_replicas);
    // The request's check, else the release's own health path: a release that changed its
    // health endpoint is probed where it says.
    let health_check = req.health_check.cloned().unwrap_or_else(|| HealthCheck {
        path: facts.health_path.cloned().unwrap_or_default(),
        ..HealthCheck::default()
    });
    let to = Set {
        release: facts.release,
        config_version,
    };
    let plan = match req.kind {
        DeploymentKind::Deploy => plan::rollout(req.strategy, from, to, replicas),
        // No canary steps on the way back to another release.
        DeploymentKind::Rollback => match from {
            Some(c) if c.set.release != to.release => plan::immediate(c.set, to, replicas),
            _ => plan::rollout(req.strategy, from, to, replicas),
        },
        DeploymentKind::Scale if replicas == 0 => stop_all(to),
        DeploymentKind::Scale => plan::rollout(req.strategy, from, to, replicas),
    };
    Ok(Resolved {
        to,
        target: facts.target,
        replicas,
        health_check,
        from,
        plan,
    })
}

fn stop_all(set: Set) -> Vec<Step> {
    vec![
        Step::Route { weights: vec![] },
        Step::Scale { set, count: 0 },
    ]
}

/// What a deployment being failed does next.
#[derive(Debug, Clone, PartialEq)]
pub enum WayBack {
    /// End now with this status.
    End(DeploymentStatus),
    /// Run these steps back (`rolling_back`).
    Back(Vec<Step>),
}

/// What a failing deployment knows about itself.
#[derive(Debug, Clone, Copy)]
pub struct Failing {
    pub kind: DeploymentKind,
    pub status: DeploymentStatus,
    pub auto_rollback: bool,
    pub cancelled: bool,
    /// The set it was rolling out.
    pub to: Set,
    /// What ran before it: set and replicas.
    pub from: Option<Current>,
}

/// A gate failed, the deadline passed or a cancel came: go back to what ran before (or stop,
/// with nothing before), or end `failed` when automatic rollback is off. A failure on the way
/// back, and a scale, end at once.
pub fn way_back(f: &Failing) -> WayBack {
    let to_back = f.status == DeploymentStatus::Progressing && (f.auto_rollback || f.cancelled);
    if !to_back || f.kind == DeploymentKind::Scale {
        return WayBack::End(if f.cancelled {
            DeploymentStatus::Cancelled
        } else {
            DeploymentStatus::Failed
        });
    }
    match f.from {
        Some(c) if c.set.release != f.to.release => {
            WayBack::Back(plan::immediate(f.to, c.set, c.replicas))
        }
        None => WayBack::Back(stop_all(f.to)),
        // Same release before and after: nothing to go back to.
        Some(_) => WayBack::End(DeploymentStatus::Failed),
    }
}

/// How a deployment whose active plan ran to its end ends: `succeeded` for a rollout; for the
/// way back `rolled_back`, `cancelled` when a cancel sent it back, `failed` when nothing ran
/// before (it was stopped, not rolled back).
pub fn completed(status: DeploymentStatus, cancelled: bool, had_before: bool) -> DeploymentStatus {
    if status != DeploymentStatus::RollingBack {
        return DeploymentStatus::Succeeded;
    }
    match (cancelled, had_before) {
        (true, _) => DeploymentStatus::Cancelled,
        (false, true) => DeploymentStatus::RolledBack,
        (false, false) => DeploymentStatus::Failed,
    }
}

#[cfg(test)]
#[path = "resolve_tests.rs"]
mod tests;
