//! Starting a queued deployment: looking up what resolving its request needs (what runs, the
//! release, the environment's target and config versions), resolving it (`resolve.rs` decides), and starting its plan, or
//! ending it `failed` when the request cannot be honoured or cannot be resolved in time.

use chrono::Utc;
use slipway_events::deploy::{DeploymentStarted, FailureReason};

use super::drive::{Progress, past, reference, request};
use super::fleet::announce;
use super::resolve::{self, Facts, Refusal, Resolved};
use super::{Engine, EngineError};
use crate::db::deployments::{self, Deployment};
use crate::db::leases::{FencedError, Lease};
use crate::db::state;
use crate::domain::{Check, Current, DeploymentKind, DeploymentStatus, Set, Step};
use crate::registry::RegistryError;

impl Engine {
    /// Looks up what resolving the request needs (what runs, the release, config versions)
    /// and resolves it (`resolve.rs` decides). `Ok(Err(_))`: the request cannot be honoured.
    /// Also answers what runs (a refused request reports it as still running).
    async fn resolve(
        &self,
        d: &Deployment,
    ) -> Result<(Option<Current>, Result<Resolved, Refusal>), EngineError> {
        let pool = &self.fleet.pool;
        let req = request(d);
        let mut conn = pool.acquire().await?;
        let current = state::get(&mut conn, d.service_id, &d.environment).await?;
        let running = current.as_ref().and_then(|s| {
            Some(Current {
                set: Set {
                    release: s.release?,
                    config_version: s.config_version?,
                },
                replicas: s.replicas.max(0) as u32,
            })
        });
        let previous = match (req.kind, req.release) {
            (DeploymentKind::Rollback, None) => state::previous(
                &mut conn,
                d.service_id,
                &d.environment,
                running.map(|c| c.set.release),
            )
            .await?
            .map(|(r, _)| r),
            _ => None,
        };
        let release = match resolve::release(&req, running, previous) {
            Ok(r) => r,
            Err(refusal) => return Ok((running, Err(refusal))),
        };
        let info = match self.fleet.release(&d.service_name, release).await {
            Ok(info) => info,
            Err(EngineError::Registry(RegistryError::NotFound(m))) => {
                return Ok((running, Err(Refusal::UnknownRelease(m))));
            }
            Err(e) => return Err(e),
        };
        let last_config = match req.kind {
            DeploymentKind::Rollback => {
                state::last_config_of(&mut conn, d.service_id, &d.environment, release).await?
            }
            _ => None,
        };
        drop(conn);
        // The environment as the registry records it: the target is authoritative (read at
        // every start, never cached), its newest config version the fallback.
        let environment = match self
            .fleet
            .registry
            .environment(&d.service_name, &d.environment)
            .await
        {
            Ok(e) => e,
            Err(RegistryError::NotFound(m)) => {
                return Ok((running, Err(Refusal::UnknownEnvironment(m))));
            }
            Err(e) => return Err(e.into()),
        };
        if let Err(not_set_up) = self.fleet.target.serves(environment.target, &d.environment) {
            return Ok((running, Err(not_set_up.into())));
        }
        let facts = Facts {
            running,
            release,
            health_path: info.run.as_ref().map(|r| &r.health_path),
            recorded_config: info.config.get(&d.environment).copied(),
            last_config,
            latest_config: Some(Ok(environment.config_version)),
            default_replicas: self.settings.default_replicas,
            target: environment.target,
        };
        Ok((running, resolve::resolve(&req, &facts)))
    }

    /// Resolves what a queued deployment means now and starts it. A request that cannot be
    /// honoured, or whose resolution keeps failing past its deadline, ends `failed`.
    pub(super) async fn begin(
        &self,
        d: &Deployment,
        lease: &Lease,
    ) -> Result<Progress, EngineError> {
        let pool = &self.fleet.pool;
        if d.step_deadline.is_none() {
            let mut conn = pool.acquire().await?;
            deployments::set_resolve_deadline(&mut conn, lease, self.deadline(d, None)).await?;
        }
        let resolved = match self.resolve(d).await {
            Ok((_, Ok(r))) => r,
            Ok((running, Err(refusal))) => {
                self.metrics.step_failed("resolve", Check::Request);
                let running = running.map(|c| c.set.release);
                self.finish(
                    d,
                    lease,
                    DeploymentStatus::Failed,
                    Some(refusal.reason()),
                    running,
                )
                .await?;
                return Ok(Progress::Ended);
            }
            Err(e) if past(d.step_deadline) => {
                self.metrics.step_failed("resolve", Check::Deadline);
                let reason = FailureReason {
                    step_index: 0,
                    step: "resolve the request".into(),
                    check: Check::Deadline.to_string(),
                    message: format!(
                        "the request could not be resolved within {} s: {e}",
                        d.step_timeout_seconds
                    ),
                };
                self.finish(d, lease, DeploymentStatus::Failed, Some(reason), None)
                    .await?;
                return Ok(Progress::Ended);
            }
            Err(e) => return Err(e),
        };
        let Resolved {
            to,
            target,
            replicas,
            health_check,
            from,
            plan,
        } = resolved;
        let mut tx = pool.begin().await?;
        let started = deployments::start(
            &mut tx,
            lease,
            &deployments::Start {
                release: to.release,
                config_version: to.config_version,
                replicas: replicas as i32,
                from: from.map(|c| (c.set.release, c.set.config_version, c.replicas as i32)),
                plan: &plan,
                health_check: &health_check,
                deadline: self.deadline(d, plan.first()),
                target,
            },
        )
        .await;
        if let Err(FencedError::Database(sqlx::Error::Database(e))) = &started
            && e.is_unique_violation()
        {
            // Another deployment of this environment became active first: stay queued.
            return Ok(Progress::Yield);
        }
        started?;
        let mut shown = reference(d);
        shown.release = Some(to.release);
        let data = DeploymentStarted {
            deployment: shown,
            steps: plan.iter().map(Step::describe).collect(),
            at: Utc::now(),
        };
        announce(&mut tx, d.service_id, d.id.to_string(), &data).await?;
        tx.commit().await?;
        tracing::info!(deployment.id = %d.id, %target, release = to.release, config_version = to.config_version, replicas, steps = plan.len(), "deployment started");
        Ok(Progress::Moved)
    }
}
