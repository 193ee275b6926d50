//! Executing deployments: start, steps, gates, deadlines, rollback, cancel, finish.

use chrono::{DateTime, Utc};
use slipway_events::cdevents::{CdEvent, EnvironmentRef};
use slipway_events::deploy::{
    DeployKind, DeploymentFinished, DeploymentRef, DeploymentStarted, DeploymentStep, FailureReason,
};
use slipway_events::slipway::sources;
use uuid::Uuid;

use super::fleet::{Owner, announce, project_of};
use super::plan::{self, Current, Set, Step};
use super::{Engine, EngineError};
use crate::db::deployments::{self, Deployment};

use crate::db::state;
use crate::registry::RegistryError;
use crate::target::TargetError;

/// Where one pass left a deployment.
pub(super) enum Progress {
    /// It is over.
    Ended,
    /// It moved on (started, finished a step, turned back): look again at once.
    Moved,
    /// It waits for something (health, a pause, its turn): look again when woken or ticked.
    Waiting,
}

/// What executing a step found.
pub(super) enum Outcome {
    Done,
    /// Not yet; the text says what is awaited (shown if the deadline passes).
    Wait(String),
    /// A verdict: the check that failed and why.
    Fail(&'static str, String),
}

fn kind_of(d: &Deployment) -> DeployKind {
    match d.kind.as_str() {
        "rollback" => DeployKind::Rollback,
        "scale" => DeployKind::Scale,
        _ => DeployKind::Deploy,
    }
}

fn reference(d: &Deployment) -> DeploymentRef {
    DeploymentRef {
        deployment_id: d.id,
        kind: kind_of(d),
        service_id: d.service_id,
        service_name: d.service_name.clone(),
        environment: d.environment.clone(),
        release: d.release.or(d.requested_release),
        strategy: d.strategy.0.name().to_owned(),
    }
}

pub(super) fn owner(d: &Deployment) -> Owner {
    Owner {
        service_id: d.service_id,
        service_name: d.service_name.clone(),
        environment: d.environment.clone(),
        deployment_id: Some(d.id),
    }
}

/// Errors that are verdicts on the deployment rather than reasons to retry.
fn verdict(e: EngineError) -> Result<Outcome, EngineError> {
    match e {
        EngineError::Registry(RegistryError::NotFound(m)) => Ok(Outcome::Fail("release", m)),
        EngineError::Target(TargetError::Artifact { image, reason }) => Ok(Outcome::Fail(
            "artifact",
            format!("cannot fetch {image}: {reason}"),
        )),
        EngineError::Target(TargetError::Start(m)) => Ok(Outcome::Fail("start", m)),
        other => Err(other),
    }
}

impl Engine {
    fn deadline(&self, d: &Deployment, step: Option<&Step>) -> DateTime<Utc> {
        let mut seconds = i64::from(d.step_timeout_seconds);
        if let Some(Step::Pause { seconds: s, .. }) = step {
            seconds += i64::from(*s);
        }
        Utc::now() + chrono::Duration::seconds(seconds)
    }

    /// One pass over a deployment: whether it ended, moved on, or waits.
    pub(super) async fn step_once(&self, id: Uuid) -> Result<Progress, EngineError> {
        let pool = &self.fleet.pool;
        let Some(d) = deployments::get(pool, id).await? else {
            return Ok(Progress::Ended);
        };
        if deployments::is_terminal(&d.status) {
            return Ok(Progress::Ended);
        }
        if d.status == "queued" && d.cancel_requested {
            // Never started: nothing to undo.
            let reason = FailureReason {
                step_index: 0,
                step: "wait for the deployment before it".into(),
                check: "cancelled".into(),
                message: "cancelled on request before it started".into(),
            };
            self.finish(&d, "cancelled", Some(reason), None).await?;
            return Ok(Progress::Ended);
        }
        if d.status == "queued" {
            return self.begin(&d).await;
        }
        if d.cancel_requested && d.status == "progressing" {
            let reason = self.reason(&d, "cancelled", "cancelled on request".into());
            self.fail(&d, reason).await?;
            return Ok(Progress::Moved);
        }
        let plan = d.active_plan();
        let index = d.step_index as usize;
        let Some(step) = plan.get(index) else {
            self.complete(&d).await?;
            return Ok(Progress::Ended);
        };
        let outcome = match self.execute(&d, step).await.or_else(verdict) {
            Ok(o) => o,
            // A step that keeps failing (the registry or the target unreachable, say) is retried
            // until its deadline, then fails like any other: never stuck `progressing`.
            Err(e) if d.step_deadline.is_some_and(|t| Utc::now() > t) => Outcome::Fail(
                "error",
                format!("the step kept failing until its deadline: {e}"),
            ),
            Err(e) => return Err(e),
        };
        match outcome {
            Outcome::Done => {
                let next = plan.get(index + 1);
                let mut tx = pool.begin().await?;
                deployments::advance(&mut tx, d.id, index as i32 + 1, self.deadline(&d, next))
                    .await?;
                let data = DeploymentStep {
                    deployment: reference(&d),
                    index: index as u32,
                    step: step.describe(),
                    phase: "completed".into(),
                    at: Utc::now(),
                };
                announce(&mut tx, d.service_id, d.id.to_string(), &data).await?;
                tx.commit().await?;
                tracing::info!(deployment.id = %d.id, index, step = %step.describe(), "step completed");
                if next.is_none() {
                    let Some(d) = deployments::get(pool, id).await? else {
                        return Ok(Progress::Ended);
                    };
                    self.complete(&d).await?;
                    return Ok(Progress::Ended);
                }
                Ok(Progress::Moved)
            }
            Outcome::Wait(awaiting) => {
                if d.step_deadline.is_some_and(|t| Utc::now() > t) {
                    let message = format!(
                        "step {} ({}) did not finish within its deadline of {} s: {awaiting}",
                        index + 1,
                        step.describe(),
                        d.step_timeout_seconds
                    );
                    let reason = self.reason(&d, "deadline", message);
                    self.fail(&d, reason).await?;
                    return Ok(Progress::Moved);
                }
                Ok(Progress::Waiting)
            }
            Outcome::Fail(check, message) => {
                let reason = self.reason(&d, check, message);
                self.fail(&d, reason).await?;
                Ok(Progress::Moved)
            }
        }
    }

    fn reason(&self, d: &Deployment, check: &str, message: String) -> FailureReason {
        let index = d.step_index.max(0) as u32;
        FailureReason {
            step_index: index,
            step: d
                .active_plan()
                .get(index as usize)
                .map(Step::describe)
                .unwrap_or_default(),
            check: check.to_owned(),
            message,
        }
    }

    /// Resolves what a queued deployment means now (release, config, replicas, what it
    /// replaces), plans it and starts it. A request that cannot be honoured ends `failed`
    /// with the reason.
    async fn begin(&self, d: &Deployment) -> Result<Progress, EngineError> {
        let pool = &self.fleet.pool;
        let mut conn = pool.acquire().await?;
        let current = state::get(&mut conn, d.service_id, &d.environment).await?;
        let running = current
            .as_ref()
            .and_then(|s| Some((s.release?, s.config_version?, s.replicas.max(0) as u32)));
        let from = running.map(|(release, config_version, replicas)| Current {
            set: Set {
                release,
                config_version,
            },
            replicas,
        });
        let refuse = |message: String| FailureReason {
            step_index: 0,
            step: "resolve the request".into(),
            check: "request".into(),
            message,
        };
        let release = match kind_of(d) {
            DeployKind::Deploy => d.requested_release,
            DeployKind::Scale => running.map(|r| r.0),
            DeployKind::Rollback => match d.requested_release {
                Some(r) => Some(r),
                None => state::previous(
                    &mut conn,
                    d.service_id,
                    &d.environment,
                    running.map(|r| r.0),
                )
                .await?
                .map(|(r, _)| r),
            },
        };
        let Some(release) = release else {
            let why = match kind_of(d) {
                DeployKind::Scale => "nothing is deployed in this environment to scale",
                DeployKind::Rollback => "no earlier release ran in this environment",
                DeployKind::Deploy => "the request names no release",
            };
            self.finish(d, "failed", Some(refuse(why.into())), running.map(|r| r.0))
                .await?;
            return Ok(Progress::Ended);
        };
        let info = match self.fleet.release(&d.service_name, release).await {
            Ok(info) => info,
            Err(EngineError::Registry(RegistryError::NotFound(m))) => {
                self.finish(d, "failed", Some(refuse(m)), running.map(|r| r.0))
                    .await?;
                return Ok(Progress::Ended);
            }
            Err(e) => return Err(e),
        };
        // Rollback restores the config the release last ran with; a deploy takes the config
        // recorded in the release; either falls back to the environment's latest.
        let remembered = match kind_of(d) {
            DeployKind::Rollback => {
                state::last_config_of(&mut conn, d.service_id, &d.environment, release).await?
            }
            DeployKind::Scale => running.map(|r| r.1),
            DeployKind::Deploy => None,
        };
        let config_version = match d
            .requested_config
            .or(remembered)
            .or_else(|| info.config.get(&d.environment).copied())
        {
            Some(v) => v,
            None => {
                match self
                    .fleet
                    .registry
                    .latest_config_version(&d.service_name, &d.environment)
                    .await
                {
                    Ok(v) => v,
                    Err(RegistryError::NotFound(m)) => {
                        self.finish(d, "failed", Some(refuse(m)), running.map(|r| r.0))
                            .await?;
                        return Ok(Progress::Ended);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let replicas = d
            .requested_replicas
            .map(|n| n.max(0) as u32)
            .or_else(|| running.map(|r| r.2).filter(|n| *n > 0))
            .unwrap_or(self.settings.default_replicas);
        // The request's check, else the release's own health path: a release that changed its
        // health endpoint is probed where it says.
        let health_check = d
            .health_check
            .as_ref()
            .map(|h| h.0.clone())
            .unwrap_or_else(|| self.default_check(info.run.as_ref().map(|r| &r.health_path)));
        let to = Set {
            release,
            config_version,
        };
        let plan = match kind_of(d) {
            DeployKind::Deploy => plan::rollout(&d.strategy.0, from, to, replicas),
            DeployKind::Rollback => match from {
                Some(c) if c.set.release != release => plan::immediate(c.set, to, replicas),
                _ => plan::rollout(&d.strategy.0, from, to, replicas),
            },
            DeployKind::Scale if replicas == 0 => vec![
                Step::Route { weights: vec![] },
                Step::Scale { set: to, count: 0 },
            ],
            DeployKind::Scale => plan::rollout(&d.strategy.0, from, to, replicas),
        };
        drop(conn);
        let mut tx = pool.begin().await?;
        let started = deployments::start(
            &mut tx,
            d.id,
            release,
            config_version,
            replicas as i32,
            from.map(|c| (c.set.release, c.set.config_version, c.replicas as i32)),
            &plan,
            &health_check,
            self.deadline(d, plan.first()),
        )
        .await;
        if let Err(sqlx::Error::Database(e)) = &started
            && e.is_unique_violation()
        {
            // Another deployment of this environment became active first: stay queued.
            return Ok(Progress::Waiting);
        }
        started?;
        let mut shown = reference(d);
        shown.release = Some(release);
        let data = DeploymentStarted {
            deployment: shown,
            steps: plan.iter().map(Step::describe).collect(),
            at: Utc::now(),
        };
        announce(&mut tx, d.service_id, d.id.to_string(), &data).await?;
        tx.commit().await?;
        tracing::info!(deployment.id = %d.id, release, config_version, replicas, steps = plan.len(), "deployment started");
        Ok(Progress::Moved)
    }

    /// A gate failed, the deadline passed or a cancel came: go back to what ran before (or
    /// stop, with nothing before), or end `failed` when automatic rollback is off.
    async fn fail(&self, d: &Deployment, reason: FailureReason) -> Result<(), EngineError> {
        tracing::warn!(deployment.id = %d.id, check = %reason.check, message = %reason.message, "deployment failed");
        let cancelled = reason.check == "cancelled";
        let to_back = d.status == "progressing" && (d.auto_rollback || cancelled);
        if !to_back || kind_of(d) == DeployKind::Scale {
            let status = if cancelled { "cancelled" } else { "failed" };
            return self.finish(d, status, Some(reason), d.release).await;
        }
        let new = Set {
            release: d.release.unwrap_or_default(),
            config_version: d.config_version.unwrap_or_default(),
        };
        let back = match (d.from_release, d.from_config, d.from_replicas) {
            (Some(r), Some(c), Some(n)) if r != new.release => plan::immediate(
                new,
                Set {
                    release: r,
                    config_version: c,
                },
                n.max(0) as u32,
            ),
            (None, ..) => vec![
                Step::Route { weights: vec![] },
                Step::Scale { set: new, count: 0 },
            ],
            // Same release before and after: nothing to go back to.
            _ => return self.finish(d, "failed", Some(reason), d.release).await,
        };
        let mut tx = self.fleet.pool.begin().await?;
        deployments::begin_rollback(
            &mut tx,
            d.id,
            &back,
            Some(&reason),
            self.deadline(d, back.first()),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The active plan ran to its end.
    async fn complete(&self, d: &Deployment) -> Result<(), EngineError> {
        if d.status == "rolling_back" {
            let cancelled = d.reason.as_ref().is_some_and(|r| r.0.check == "cancelled");
            let status = match (cancelled, d.from_release) {
                (true, _) => "cancelled",
                (false, Some(_)) => "rolled_back",
                (false, None) => "failed",
            };
            return self.finish(d, status, None, d.from_release).await;
        }
        self.finish(d, "succeeded", None, d.release).await
    }

    /// Ends a deployment: its row, the desired state, the history, and the events.
    async fn finish(
        &self,
        d: &Deployment,
        status: &str,
        reason: Option<FailureReason>,
        running_release: Option<i32>,
    ) -> Result<(), EngineError> {
        let env = EnvironmentRef {
            id: d.environment.clone(),
            source: Some(sources::REGISTRY.into()),
        };
        let purl_of = |release: Option<i32>| async move {
            match release {
                Some(r) => self
                    .fleet
                    .release(&d.service_name, r)
                    .await
                    .map(|i| Some(i.artifact_purl)),
                None => Ok(None),
            }
        };
        let new_purl = purl_of(d.release).await?;
        let old_purl = purl_of(d.from_release).await?;
        let mut tx = self.fleet.pool.begin().await?;
        deployments::finish(&mut tx, d.id, status, reason.as_ref()).await?;
        let mut cdevent = None;
        let health_check = d.health_check.as_ref().map(|h| &h.0);
        match status {
            "succeeded" => {
                let (release, config) = (d.release, d.config_version);
                let replicas = d.replicas.unwrap_or_default();
                state::set_running(
                    &mut tx,
                    d.service_id,
                    &d.service_name,
                    &d.environment,
                    release,
                    config,
                    replicas,
                    health_check,
                )
                .await?;
                if let (Some(r), Some(c)) = (release, config) {
                    state::record_success(&mut tx, d.service_id, &d.environment, r, c, d.id)
                        .await?;
                }
                cdevent = match (kind_of(d), &new_purl) {
                    (DeployKind::Scale, _) if replicas == 0 => Some(CdEvent::service_removed(
                        sources::DEPLOYER,
                        &d.service_name,
                        &env,
                    )),
                    (DeployKind::Scale, _) | (_, None) => None,
                    (DeployKind::Rollback, Some(p)) => Some(CdEvent::service_rolled_back(
                        sources::DEPLOYER,
                        &d.service_name,
                        &env,
                        p,
                    )),
                    (DeployKind::Deploy, Some(p)) if d.from_release.is_none() => Some(
                        CdEvent::service_deployed(sources::DEPLOYER, &d.service_name, &env, p),
                    ),
                    (DeployKind::Deploy, Some(p)) => Some(CdEvent::service_upgraded(
                        sources::DEPLOYER,
                        &d.service_name,
                        &env,
                        p,
                    )),
                };
            }
            "rolled_back" | "cancelled" if d.status == "rolling_back" => {
                let replicas = if d.from_release.is_some() {
                    d.from_replicas.unwrap_or_default()
                } else {
                    0
                };
                state::set_running(
                    &mut tx,
                    d.service_id,
                    &d.service_name,
                    &d.environment,
                    d.from_release,
                    d.from_config,
                    replicas,
                    None,
                )
                .await?;
                if let Some(p) = &old_purl
                    && status == "rolled_back"
                {
                    cdevent = Some(CdEvent::service_rolled_back(
                        sources::DEPLOYER,
                        &d.service_name,
                        &env,
                        p,
                    ));
                }
            }
            "failed" if d.status == "rolling_back" => {
                state::set_running(
                    &mut tx,
                    d.service_id,
                    &d.service_name,
                    &d.environment,
                    None,
                    None,
                    0,
                    None,
                )
                .await?;
            }
            _ => {}
        }
        let final_reason = reason
            .clone()
            .or_else(|| d.reason.as_ref().map(|r| r.0.clone()));
        if let Some(event) = cdevent {
            let event = event.with_custom_data(serde_json::json!({
                "deployment": d.id,
                "release": running_release,
                "reason": final_reason,
            }));
            let topic = event.kind().topic();
            let project = project_of(&mut tx, d.service_id).await?;
            slipway_outbox::enqueue(
                &mut tx,
                topic,
                &event
                    .into_cloud_event(d.service_id, Some(d.service_name.clone()))
                    .with_project(project),
            )
            .await?;
        }
        let data = DeploymentFinished {
            deployment: reference(d),
            status: status.to_owned(),
            reason: final_reason,
            running_release,
            at: Utc::now(),
        };
        announce(&mut tx, d.service_id, d.id.to_string(), &data).await?;
        tx.commit().await?;
        tracing::info!(deployment.id = %d.id, %status, "deployment finished");
        Ok(())
    }
}
