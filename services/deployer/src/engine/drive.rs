//! Driving one deployment: one pass at a time it starts it (`start.rs`), runs its current
//! step (`steps.rs`), turns it back when a check fails or a deadline passes, and finishes it
//! with its events. Every write to the deployment's row is compare-and-set on the driver's
//! lease (`db::leases`), in the transaction that enqueues its events: a driver whose lease was
//! taken over publishes nothing more.

use chrono::{DateTime, Utc};
use slipway_events::cdevents::{CdEvent, EnvironmentRef};
use slipway_events::deploy::{
    DeployKind, DeploymentFinished, DeploymentRef, DeploymentStep, FailureReason,
};
use slipway_events::slipway::sources;

use super::fleet::{Owner, announce, project_of};
use super::resolve::{self, Failing, Request, WayBack};
use super::{Engine, EngineError};
use crate::db::deployments::{self, Deployment};
use crate::db::leases::{FencedError, Lease};
use crate::db::state;
use crate::domain::{Check, Current, DeploymentKind, DeploymentStatus, Step};
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
    /// It is not this driver's to drive now (another deployment of its environment became
    /// active first): let go of the lease.
    Yield,
}

/// What executing a step found.
pub(super) enum Outcome {
    Done,
    /// Not yet; the text says what is awaited (shown if the deadline passes).
    Wait(String),
    /// A verdict: the check that failed and why.
    Fail(Check, String),
}

pub(super) fn reference(d: &Deployment) -> DeploymentRef {
    DeploymentRef {
        deployment_id: d.id,
        kind: DeployKind::from(d.kind),
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
        target: d.target(),
        // fleet.rs keeps bare UUIDs for now (it is being rewritten elsewhere).
        deployment_id: Some(d.id.as_uuid()),
    }
}

pub(super) fn request(d: &Deployment) -> Request<'_> {
    Request {
        kind: d.kind,
        release: d.requested_release,
        config_version: d.requested_config,
        replicas: d.requested_replicas.map(|n| n.max(0) as u32),
        strategy: &d.strategy.0,
        health_check: d.health_check.as_ref().map(|h| &h.0),
    }
}

/// What ran before the deployment, as recorded when it started.
fn before(d: &Deployment) -> Option<Current> {
    match (d.from_release, d.from_config, d.from_replicas) {
        (Some(release), Some(config_version), Some(n)) => Some(Current {
            set: crate::domain::Set {
                release,
                config_version,
            },
            replicas: n.max(0) as u32,
        }),
        _ => None,
    }
}

/// Errors that are verdicts on the deployment rather than reasons to retry.
fn verdict(e: EngineError) -> Result<Outcome, EngineError> {
    match e {
        EngineError::Registry(RegistryError::NotFound(m)) => Ok(Outcome::Fail(Check::Release, m)),
        EngineError::Target(TargetError::Artifact { image, reason }) => Ok(Outcome::Fail(
            Check::Artifact,
            format!("cannot fetch {image}: {reason}"),
        )),
        EngineError::Target(TargetError::Start(m)) => Ok(Outcome::Fail(Check::Start, m)),
        other => Err(other),
    }
}

pub(super) fn past(deadline: Option<DateTime<Utc>>) -> bool {
    deadline.is_some_and(|t| Utc::now() > t)
}

impl Engine {
    pub(super) fn deadline(&self, d: &Deployment, step: Option<&Step>) -> DateTime<Utc> {
        let mut seconds = i64::from(d.step_timeout_seconds);
        if let Some(Step::Pause { seconds: s, .. }) = step {
            seconds += i64::from(*s);
        }
        Utc::now() + chrono::Duration::seconds(seconds)
    }

    /// One pass over a deployment: whether it ended, moved on, or waits.
    pub(super) async fn step_once(&self, lease: &Lease) -> Result<Progress, EngineError> {
        let pool = &self.fleet.pool;
        let Some(d) = deployments::get(pool, lease.deployment).await? else {
            return Ok(Progress::Ended);
        };
        if !d.held_by(lease) {
            return Err(FencedError::Lost {
                deployment: lease.deployment,
                epoch: lease.epoch,
            }
            .into());
        }
        if d.status.is_terminal() {
            return Ok(Progress::Ended);
        }
        if d.status == DeploymentStatus::Queued && d.cancel_requested {
            // Never started: nothing to undo.
            let reason = FailureReason {
                step_index: 0,
                step: "wait for the deployment before it".into(),
                check: Check::Cancelled.to_string(),
                message: "cancelled on request before it started".into(),
            };
            self.finish(&d, lease, DeploymentStatus::Cancelled, Some(reason), None)
                .await?;
            return Ok(Progress::Ended);
        }
        if d.status == DeploymentStatus::Queued {
            return self.begin(&d, lease).await;
        }
        if d.cancel_requested && d.status == DeploymentStatus::Progressing {
            self.fail(&d, lease, Check::Cancelled, "cancelled on request".into())
                .await?;
            return Ok(Progress::Moved);
        }
        let plan = d.active_plan();
        let index = d.step_index.max(0) as usize;
        let Some(step) = plan.get(index) else {
            self.complete(&d, lease).await?;
            return Ok(Progress::Ended);
        };
        let outcome = match self.execute(&d, lease, step).await.or_else(verdict) {
            Ok(o) => o,
            // A step that keeps failing (the registry or the target unreachable, say) is retried
            // until its deadline, then fails like any other: never stuck `progressing`.
            Err(e) if past(d.step_deadline) => Outcome::Fail(
                Check::Error,
                format!("the step kept failing until its deadline: {e}"),
            ),
            Err(e) => return Err(e),
        };
        match outcome {
            Outcome::Done => {
                let next = plan.get(index + 1);
                let mut tx = pool.begin().await?;
                deployments::advance(&mut tx, lease, index as i32, self.deadline(&d, next)).await?;
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
                    let Some(d) = deployments::get(pool, d.id).await? else {
                        return Ok(Progress::Ended);
                    };
                    self.complete(&d, lease).await?;
                    return Ok(Progress::Ended);
                }
                Ok(Progress::Moved)
            }
            Outcome::Wait(awaiting) => {
                if past(d.step_deadline) {
                    let message = format!(
                        "step {} ({}) did not finish within its deadline of {} s: {awaiting}",
                        index + 1,
                        step.describe(),
                        d.step_timeout_seconds
                    );
                    self.fail(&d, lease, Check::Deadline, message).await?;
                    return Ok(Progress::Moved);
                }
                Ok(Progress::Waiting)
            }
            Outcome::Fail(check, message) => {
                self.fail(&d, lease, check, message).await?;
                Ok(Progress::Moved)
            }
        }
    }

    fn reason(&self, d: &Deployment, check: Check, message: String) -> FailureReason {
        let index = d.step_index.max(0) as u32;
        FailureReason {
            step_index: index,
            step: d
                .active_plan()
                .get(index as usize)
                .map(Step::describe)
                .unwrap_or_default(),
            check: check.to_string(),
            message,
        }
    }

    /// A gate failed, the deadline passed or a cancel came: turn back or end (`resolve.rs`
    /// decides which).
    async fn fail(
        &self,
        d: &Deployment,
        lease: &Lease,
        check: Check,
        message: String,
    ) -> Result<(), EngineError> {
        tracing::warn!(deployment.id = %d.id, %check, %message, "deployment failed");
        let reason = self.reason(d, check, message);
        let cancelled = check == Check::Cancelled;
        if !cancelled {
            let step = d
                .active_plan()
                .get(d.step_index.max(0) as usize)
                .map_or("resolve", Step::label);
            self.metrics.step_failed(step, check);
        }
        let failing = Failing {
            kind: d.kind,
            status: d.status,
            auto_rollback: d.auto_rollback,
            cancelled,
            to: crate::domain::Set {
                release: d.release.unwrap_or_default(),
                config_version: d.config_version.unwrap_or_default(),
            },
            from: before(d),
        };
        let back = match resolve::way_back(&failing) {
            WayBack::End(status) => {
                return self.finish(d, lease, status, Some(reason), d.release).await;
            }
            WayBack::Back(steps) => steps,
        };
        let mut tx = self.fleet.pool.begin().await?;
        deployments::begin_rollback(
            &mut tx,
            lease,
            &back,
            Some(&reason),
            self.deadline(d, back.first()),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The active plan ran to its end.
    async fn complete(&self, d: &Deployment, lease: &Lease) -> Result<(), EngineError> {
        let cancelled = d
            .reason
            .as_ref()
            .is_some_and(|r| Check::Cancelled.is(&r.0.check));
        let status = resolve::completed(d.status, cancelled, d.from_release.is_some());
        let running = if d.status == DeploymentStatus::RollingBack {
            d.from_release
        } else {
            d.release
        };
        self.finish(d, lease, status, None, running).await
    }

    /// Ends a deployment: its row, the desired state, the history, and the events.
    pub(super) async fn finish(
        &self,
        d: &Deployment,
        lease: &Lease,
        status: DeploymentStatus,
        reason: Option<FailureReason>,
        running_release: Option<i32>,
    ) -> Result<(), EngineError> {
        let env = EnvironmentRef {
            id: d.environment.clone(),
            source: Some(sources::REGISTRY.into()),
        };
        // The artifacts name the CDEvent. A deployment still ends when they cannot be looked
        // up (a release the registry forgot, or the registry unreachable past the deadline, say
        // for a new owner whose cache is empty): without the CDEvent, never stuck.
        let purl_of = |release: Option<i32>| async move {
            let Some(r) = release else {
                return Ok(None);
            };
            match self.fleet.release(&d.service_name, r).await {
                Ok(i) => Ok(Some(i.artifact_purl)),
                Err(EngineError::Registry(RegistryError::NotFound(_))) => Ok(None),
                Err(e) if past(d.step_deadline) => {
                    tracing::warn!(deployment.id = %d.id, release = r, error = %e,
                        "artifact unknown; the deployment ends without its CDEvent");
                    Ok(None)
                }
                Err(e) => Err(e),
            }
        };
        let new_purl = purl_of(d.release).await?;
        let old_purl = purl_of(d.from_release).await?;
        let mut tx = self.fleet.pool.begin().await?;
        deployments::finish(&mut tx, lease, status, reason.as_ref()).await?;
        let mut cdevent = None;
        let health_check = d.health_check.as_ref().map(|h| &h.0);
        match status {
            DeploymentStatus::Succeeded => {
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
                cdevent =
                    match (d.kind, &new_purl) {
                        (DeploymentKind::Scale, _) if replicas == 0 => Some(
                            CdEvent::service_removed(sources::DEPLOYER, &d.service_name, &env),
                        ),
                        (DeploymentKind::Scale, _) | (_, None) => None,
                        (DeploymentKind::Rollback, Some(p)) => Some(CdEvent::service_rolled_back(
                            sources::DEPLOYER,
                            &d.service_name,
                            &env,
                            p,
                        )),
                        (DeploymentKind::Deploy, Some(p)) if d.from_release.is_none() => Some(
                            CdEvent::service_deployed(sources::DEPLOYER, &d.service_name, &env, p),
                        ),
                        (DeploymentKind::Deploy, Some(p)) => Some(CdEvent::service_upgraded(
                            sources::DEPLOYER,
                            &d.service_name,
                            &env,
                            p,
                        )),
                    };
            }
            DeploymentStatus::RolledBack | DeploymentStatus::Cancelled
                if d.status == DeploymentStatus::RollingBack =>
            {
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
                    && status == DeploymentStatus::RolledBack
                {
                    cdevent = Some(CdEvent::service_rolled_back(
                        sources::DEPLOYER,
                        &d.service_name,
                        &env,
                        p,
                    ));
                }
            }
            DeploymentStatus::Failed if d.status == DeploymentStatus::RollingBack => {
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
            status: status.as_str().to_owned(),
            reason: final_reason,
            running_release,
            at: Utc::now(),
        };
        announce(&mut tx, d.service_id, d.id.to_string(), &data).await?;
        tx.commit().await?;
        self.metrics.finished(d.kind, d.strategy.0.name(), status);
        tracing::info!(deployment.id = %d.id, %status, "deployment finished");
        Ok(())
    }
}
