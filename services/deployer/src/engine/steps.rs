//! Executing one step of a plan: scaling a release set (start, drain, stop, wait for health),
//! routing weights, and pause gates. `drive.rs` decides which step runs and what follows it.
//!
//! A route step ends when the routers apply its weights, not when they are written: it
//! announces the weights once, then waits until the registry's table holds them and every
//! live edge router reports serving that table version or a later one. A router is live while
//! it keeps polling discovery (the registry's rule, `discovery.router_grace_ms`); one that
//! stopped is not waited for. With no live router at all (Kubernetes, where the cluster
//! applies weights, or no gateway running) the step ends once the registry holds the weights:
//! there is nobody to wait for, and waiting would only run into the deadline. Past the step's
//! deadline it fails with "routers did not apply the table: <router ids>".
//!
//! Before it announces new weights, it waits until the registry's table has a routable
//! instance of every release they give traffic to: the registry applies the monitor's verdicts
//! on its own consumer and may lag behind the deployer's view (a restarted registry catching
//! up), and a switch before then would have the routers answer 503 for that share.

use chrono::Utc;
use slipway_events::deploy::{ReleaseWeight, Strategy, TrafficChanged};

use super::drive::{Outcome, owner};
use super::fleet::announce;
use super::{Engine, EngineError};
use crate::db::deployments::Deployment;
use crate::db::instances::{self, Instance};
use crate::db::leases::{self, Lease};
use crate::db::state;
use crate::domain::{Check, InstanceHealth, InstanceState};
use crate::domain::{Gate, Set, Step};
use crate::target::Traffic;
use slipway_wire::releases::TargetKind;

impl Engine {
    pub(super) async fn execute(
        &self,
        d: &Deployment,
        lease: &Lease,
        step: &Step,
    ) -> Result<Outcome, EngineError> {
        match step {
            Step::Scale { set, count } => self.scale(d, *set, *count as usize).await,
            Step::Route { weights } => self.route(d, lease, weights).await,
            Step::Pause { seconds, gates } => {
                for gate in gates {
                    if let Some(failure) = self.check_gate(d, gate).await? {
                        return Ok(failure);
                    }
                }
                let since = d.step_started_at.unwrap_or_else(Utc::now);
                let left = since + chrono::Duration::seconds(i64::from(*seconds)) - Utc::now();
                if left <= chrono::Duration::zero() {
                    Ok(Outcome::Done)
                } else {
                    Ok(Outcome::Wait(format!("{} s left", left.num_seconds())))
                }
            }
        }
    }

    /// Announces `weights` unless they are the stored ones already (a step looked at again,
    /// or weights that did not change), then waits for the routers (see the module's doc).
    async fn route(
        &self,
        d: &Deployment,
        lease: &Lease,
        weights: &[ReleaseWeight],
    ) -> Result<Outcome, EngineError> {
        let stored = state::get(
            &mut *self.fleet.pool.acquire().await?,
            d.service_id,
            &d.environment,
        )
        .await?
        .map(|s| s.weights.0)
        .unwrap_or_default();
        if stored != weights
            && let Some(waiting) = self.unroutable(d, weights).await
        {
            return Ok(waiting);
        }
        let mut tx = self.fleet.pool.begin().await?;
        // The weights are not compare-and-set themselves: a replica that lost the lease must
        // not announce them, so the lease is checked (and held) in this transaction.
        leases::fence(&mut tx, lease).await?;
        let stored = state::get(&mut tx, d.service_id, &d.environment)
            .await?
            .map(|s| s.weights.0)
            .unwrap_or_default();
        if stored != weights {
            state::set_weights(
                &mut tx,
                d.service_id,
                &d.service_name,
                &d.environment,
                weights,
            )
            .await?;
            let data = TrafficChanged {
                service_id: d.service_id,
                service_name: d.service_name.clone(),
                environment: d.environment.clone(),
                deployment_id: Some(d.id),
                weights: weights.to_vec(),
                at: Utc::now(),
            };
            let subject = format!("{}/{}", d.service_name, d.environment);
            announce(&mut tx, d.service_id, subject, &data).await?;
        }
        tx.commit().await?;
        // A target that routes traffic itself (Kubernetes) applies the weights too; waited out
        // until the deadline like the routers.
        let traffic = Traffic {
            service_id: d.service_id,
            service_name: d.service_name.clone(),
            environment: d.environment.clone(),
            target: d.target(),
            weights: weights.to_vec(),
        };
        if let Err(e) = self.fleet.target.set_weights(traffic).await {
            return Ok(Outcome::Wait(format!(
                "the target did not apply the weights: {e}"
            )));
        }
        let status = match self
            .fleet
            .registry
            .traffic(d.service_id, &d.environment)
            .await
        {
            Ok(status) => status,
            // Waited out like the routers: an outage until the deadline, then the reason.
            Err(e) => {
                return Ok(Outcome::Wait(format!(
                    "cannot ask the registry whether routers applied the weights: {e}"
                )));
            }
        };
        if status.weights != weights {
            return Ok(Outcome::Wait(
                "the registry has not applied the new weights yet".into(),
            ));
        }
        let lagging = status.lagging(status.version);
        if lagging.is_empty() {
            return Ok(Outcome::Done);
        }
        let ids: Vec<&str> = lagging.iter().map(|r| r.as_str()).collect();
        Ok(Outcome::Wait(format!(
            "routers did not apply the table: {} (version {} needed)",
            ids.join(", "),
            status.version
        )))
    }

    /// Before new weights are announced: a wait when edge routers would have nowhere to send a
    /// weighted release's share. The deployer saw the release's instances healthy (its scale
    /// step), but the registry, which builds the routers' table, applies the same verdicts on
    /// its own consumer and may not have yet (a restarted registry catching up, say): switching
    /// then has the routers answer 503 until it does. Targets that route traffic themselves
    /// (Kubernetes) are not asked about.
    async fn unroutable(&self, d: &Deployment, weights: &[ReleaseWeight]) -> Option<Outcome> {
        if d.target() == TargetKind::Kubernetes {
            return None;
        }
        let status = match self
            .fleet
            .registry
            .traffic(d.service_id, &d.environment)
            .await
        {
            Ok(status) => status,
            Err(e) => {
                return Some(Outcome::Wait(format!(
                    "cannot ask the registry whether the routers can reach the new weights' releases: {e}"
                )));
            }
        };
        let missing = status.unroutable(weights);
        if missing.is_empty() {
            return None;
        }
        let releases: Vec<String> = missing.iter().map(|r| format!("v{r}")).collect();
        Some(Outcome::Wait(format!(
            "the registry has no healthy instance of {} in the routers' table yet (its health \
             verdicts may still be on their way); the weights are announced once it has",
            releases.join(", ")
        )))
    }

    /// The health gate: every instance of the release up, healthy, not crash-looping.
    async fn check_gate(
        &self,
        d: &Deployment,
        gate: &Gate,
    ) -> Result<Option<Outcome>, EngineError> {
        let Gate::Health { release } = gate;
        let rows =
            instances::of_release(&self.fleet.pool, d.service_id, &d.environment, *release).await?;
        let bad = rows.iter().find(|i| {
            i.crash_loop || i.state == InstanceState::Down || i.health == InstanceHealth::Unhealthy
        });
        Ok(bad.map(|i| {
            Outcome::Fail(
                Check::Health,
                format!(
                    "instance {} of v{release} is {} ({}: {})",
                    i.id,
                    if i.crash_loop {
                        "crash-looping"
                    } else {
                        i.health.as_str()
                    },
                    i.health_check.0.describe(),
                    i.health_detail
                        .as_deref()
                        .or(i.last_exit.as_deref())
                        .unwrap_or("no detail")
                ),
            )
        }))
    }

    async fn scale(&self, d: &Deployment, set: Set, count: usize) -> Result<Outcome, EngineError> {
        let fleet = &self.fleet;
        let rows =
            instances::of_release(&fleet.pool, d.service_id, &d.environment, set.release).await?;
        let (leaving, live): (Vec<Instance>, Vec<Instance>) =
            rows.into_iter().partition(|i| i.state.is_leaving());
        let why = if Some(set.release) == d.release {
            "scaled down".to_owned()
        } else {
            format!("replaced by v{}", d.release.unwrap_or_default())
        };
        // Blue-green may ask for its own drain period for the old set.
        let drain = match &d.strategy.0 {
            Strategy::BlueGreen {
                drain_seconds: Some(s),
            } => Some(std::time::Duration::from_secs(u64::from(*s))),
            _ => None,
        };
        if !leaving.is_empty() {
            fleet.retire_many(&leaving, &why, drain).await?;
            return Ok(Outcome::Wait("instances draining".into()));
        }
        if live.len() < count {
            let check = d
                .health_check
                .as_ref()
                .map(|h| h.0.clone())
                .unwrap_or_default();
            fleet
                .start_many(&owner(d), set, &check, count - live.len())
                .await?;
            return Ok(Outcome::Wait("instances starting".into()));
        }
        if live.len() > count {
            // Retire the least useful first: down, then unhealthy, then the newest.
            let mut extras = live;
            extras.sort_by_key(|i| {
                (
                    i.state != InstanceState::Down,
                    i.health != InstanceHealth::Unhealthy,
                    std::cmp::Reverse(i.created_at),
                )
            });
            extras.truncate(extras.len() - count);
            fleet.retire_many(&extras, &why, drain).await?;
            return Ok(Outcome::Wait("instances stopping".into()));
        }
        if let Some(i) = live.iter().find(|i| i.crash_loop) {
            return Ok(Outcome::Fail(
                Check::CrashLoop,
                format!(
                    "instance {} of v{} is crash-looping: {}",
                    i.id,
                    set.release,
                    i.last_exit.as_deref().unwrap_or("exited")
                ),
            ));
        }
        let healthy = live
            .iter()
            .filter(|i| i.state == InstanceState::Running && i.health == InstanceHealth::Healthy)
            .count();
        if healthy >= count {
            return Ok(Outcome::Done);
        }
        let waiting: Vec<String> = live
            .iter()
            .filter(|i| !(i.state == InstanceState::Running && i.health == InstanceHealth::Healthy))
            .map(|i| {
                format!(
                    "instance {} is {} ({}: {})",
                    i.id,
                    i.health,
                    i.health_check.0.describe(),
                    i.health_detail.as_deref().unwrap_or("no result yet")
                )
            })
            .collect();
        Ok(Outcome::Wait(format!(
            "{healthy} of {count} instances of v{} healthy; {}",
            set.release,
            waiting.join("; ")
        )))
    }
}
