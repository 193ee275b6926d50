//! What the deployer reacts to: deploy/rollback/scale/cancel commands, the monitor's health
//! verdicts, new releases (auto-deploy), and the registry's services (its catalog).

use std::sync::Arc;

use chrono::Utc;
use futures::FutureExt;
use slipway_events::deploy::{
    DeployCancelRequested, DeployKind, DeployRequested, InstanceHealthChanged,
};
use slipway_events::slipway::ReleaseCreated;
use slipway_events::{CloudEvent, EventData};
use slipway_ids::DeploymentId;
use slipway_kafka::{Handled, Handler, HandlerError};
use slipway_runtime::catalog::ServiceCatalog;
use sqlx::PgPool;
use tokio::sync::Notify;

use crate::db::{deployments, instances, state, trace};
use crate::domain::InstanceHealth;
use crate::engine::Nudges;

/// Handles the command and services topics.
pub struct Commands {
    pub pool: PgPool,
    pub catalog: ServiceCatalog,
    pub wake: Arc<Notify>,
    pub nudges: Arc<Nudges>,
    pub default_timeout: u32,
}

fn permanent(e: impl std::error::Error + Send + Sync + 'static) -> HandlerError {
    HandlerError::Permanent(e.into())
}

impl Handler for Commands {
    async fn handle(&self, event: &CloudEvent) -> Result<Handled, HandlerError> {
        // Whom the command concerns: the drivers of its environment, or (not known) everybody.
        let mut environment = None;
        let handled = match event.ty.as_str() {
            DeployRequested::TYPE => {
                let data: DeployRequested = event.data_as().map_err(permanent)?;
                environment = Some((data.service_id, data.environment.clone()));
                let timeout = self.default_timeout;
                // The engine continues this trace when it drives the deployment.
                let trace = trace::of_command(event);
                slipway_outbox::inbox::apply_once(
                    &self.pool,
                    "deployer.commands",
                    event,
                    move |tx| {
                        async move {
                            deployments::insert(tx, &data, timeout).await?;
                            trace::record(tx, data.deployment_id, trace.as_deref()).await
                        }
                        .boxed()
                    },
                )
                .await?
            }
            DeployCancelRequested::TYPE => {
                let data: DeployCancelRequested = event.data_as().map_err(permanent)?;
                slipway_outbox::inbox::apply_once(
                    &self.pool,
                    "deployer.commands",
                    event,
                    move |tx| {
                        async move {
                            deployments::request_cancel(tx, data.deployment_id)
                                .await
                                .map(|_| ())
                        }
                        .boxed()
                    },
                )
                .await?
            }
            ReleaseCreated::TYPE => self.auto_deploy(event).await?,
            _ => return self.catalog.handle(event).await,
        };
        self.wake.notify_one();
        match environment {
            Some((service, env)) => self.nudges.environment(service, &env),
            None => self.nudges.everyone(),
        }
        Ok(handled)
    }
}

impl Commands {
    /// A new release deploys itself to every environment whose policy says so.
    async fn auto_deploy(&self, event: &CloudEvent) -> Result<Handled, HandlerError> {
        let data: ReleaseCreated = event.data_as().map_err(permanent)?;
        // An auto-deploy continues the release's trace (the build's, the webhook's).
        let trace = trace::of_command(event);
        slipway_outbox::inbox::apply_once(&self.pool, "deployer.auto-deploy", event, move |tx| {
            async move {
                for policy in state::auto_deploy_policies(tx, data.service_id).await? {
                    // Never backwards: a late or replayed release older than what runs (or is
                    // already on its way) would roll the environment back. People still can,
                    // with an explicit deploy or rollback.
                    let newest =
                        state::newest_release(tx, data.service_id, &policy.environment).await?;
                    if let Some(newest) = newest.filter(|n| data.number <= *n) {
                        tracing::info!(
                            service.name = %data.service_name,
                            environment = %policy.environment,
                            release = data.number,
                            newest,
                            "auto-deploy skipped: release {} is not newer than release {newest}, \
                             which runs or is being deployed there",
                            data.number
                        );
                        continue;
                    }
                    // The inbox record in this transaction keeps a redelivery from deploying twice.
                    let id = DeploymentId::new();
                    let request = DeployRequested {
                        deployment_id: id,
                        kind: DeployKind::Deploy,
                        service_id: data.service_id,
                        service_name: data.service_name.clone(),
                        project: None,
                        environment: policy.environment.clone(),
                        release: Some(data.number),
                        strategy: policy.strategy.0.clone(),
                        replicas: None,
                        config_version: None,
                        health_check: None,
                        step_timeout_seconds: None,
                        auto_rollback: Some(true),
                        actor: Some("auto-deploy".into()),
                        requested_at: Utc::now(),
                    };
                    deployments::insert(tx, &request, 120).await?;
                    trace::record(tx, id, trace.as_deref()).await?;
                }
                Ok(())
            }
            .boxed()
        })
        .await
    }
}

/// Applies the monitor's verdicts to the instances (the gates read them).
pub struct HealthVerdicts {
    pub pool: PgPool,
    pub wake: Arc<Notify>,
    pub nudges: Arc<Nudges>,
}

impl Handler for HealthVerdicts {
    async fn handle(&self, event: &CloudEvent) -> Result<Handled, HandlerError> {
        if event.ty != InstanceHealthChanged::TYPE {
            return Ok(Handled::Ignored);
        }
        let data: InstanceHealthChanged = event.data_as().map_err(permanent)?;
        let health = InstanceHealth::from(data.health);
        let detail = data.detail.clone();
        // Verdicts are idempotent (last write for an incarnation wins): no inbox needed.
        let mut conn = self.pool.acquire().await.map_err(HandlerError::from_sqlx)?;
        instances::set_health(
            &mut conn,
            data.instance.instance_id,
            data.restarts,
            health,
            &detail,
        )
        .await
        .map_err(HandlerError::from_sqlx)?;
        self.wake.notify_one();
        // Only the drivers of the instance's environment read its health.
        self.nudges
            .environment(data.instance.service_id, &data.instance.environment);
        Ok(Handled::Applied)
    }
}
