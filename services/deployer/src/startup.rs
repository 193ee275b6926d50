//! Settings and start-up.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use slipway_events::Topic;
use slipway_ids::ReplicaId;
use slipway_runtime::catalog::ServiceCatalog;
use slipway_runtime::{Access, BaseSettings, Running, Runtime, StartError};
use tokio::sync::mpsc;

use crate::consumers::{Commands, HealthVerdicts};
use crate::db::uids::PgUids;
use crate::engine::fleet::{FleetSettings, ReplicaSettings};
use crate::engine::{DeploySettings, Engine, EngineMetrics, Fleet};
use crate::registry::RegistryClient;
use crate::target::docker::{DockerSettings, DockerTarget};
use crate::target::process::{ProcessSettings, ProcessTarget, Users, running_as_root};
use crate::target::router::{RouterError, TargetRouter, TargetsSettings};
use crate::target::{Target, TargetError, TargetKind};

/// Where the registry's API is.
#[derive(Debug, Clone, Deserialize)]
pub struct UpstreamSettings {
    pub registry: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    #[serde(flatten)]
    pub base: BaseSettings,
    pub upstreams: UpstreamSettings,
    pub deploy: DeploySettings,
    pub process: ProcessSettings,
    /// Which targets this deployer sets up (an environment runs on the one the registry
    /// records for it).
    #[serde(default)]
    pub targets: TargetsSettings,
    /// The Docker target (set up when `[targets] enabled` names it).
    #[serde(default)]
    pub docker: DockerSettings,
    /// The Kubernetes target's clusters per environment (none: no environment runs there).
    #[serde(default)]
    pub kubernetes: crate::target::kubernetes::KubernetesSettings,
    /// Liveness of this replica, and adoption of the instances of replicas that are gone.
    #[serde(default)]
    pub replicas: ReplicaSettings,
}

impl Settings {
    pub fn load() -> Result<Self, slipway_settings::SettingsError> {
        slipway_settings::load(include_str!("../config/default.toml"))
    }
}

/// Why the deployer could not start.
#[derive(Debug, thiserror::Error)]
pub enum DeployerStartError {
    #[error(transparent)]
    Runtime(#[from] StartError),
    #[error("cannot set up a target: {0}")]
    Target(#[from] TargetError),
    #[error(transparent)]
    Router(#[from] RouterError),
    #[error("invalid registry URL: {0}")]
    Registry(#[from] reqwest::Error),
    #[error(transparent)]
    RegistryAuth(#[from] slipway_settings::RegistryAuthError),
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connections of the pool renewing liveness and leases ([`Fleet::with_liveness_pool`]): the
/// replica's row, and the leases of the deployments driven at once (each renewed every third of
/// its time to live, in a few milliseconds).
const LIVENESS_CONNECTIONS: u32 = 3;

/// Who the process target runs instances as: one uid per service when the deployer is root,
/// else the deployer's own user, said loudly since nothing then separates them.
fn instance_users(pool: &sqlx::PgPool, process: &ProcessSettings) -> Users {
    if running_as_root() {
        tracing::info!(uid_range = %process.uid_range,
            "process target: each service's instances run as their own uid");
        return Users::PerService(Arc::new(PgUids::new(pool.clone(), process.uid_range)));
    }
    tracing::warn!(
        "process target: the deployer does not run as root, so every instance runs as the \
         deployer's own user: instances are NOT isolated from the deployer or from each other \
         (each can read the others' files and environments, secrets included). Run the \
         deployer as root for one uid per service (`process.uid_range`)"
    );
    Users::Shared
}

/// The targets the settings set up behind one router. The process target is always there (first:
/// its node is the replica's); the others share its lease.
async fn targets(
    settings: &Settings,
    events: mpsc::UnboundedSender<crate::target::TargetEvent>,
    users: Users,
    replica: &ReplicaId,
) -> Result<Arc<dyn Target>, DeployerStartError> {
    let process = ProcessTarget::new(settings.process.clone(), events.clone(), users)?;
    let lease = process.lease();
    let mut targets: Vec<(TargetKind, Arc<dyn Target>)> =
        vec![(TargetKind::Process, Arc::new(process))];
    let kinds = settings.targets.kinds();
    if kinds.contains(&TargetKind::Docker) {
        let docker = DockerTarget::connect(
            settings.docker.clone(),
            events.clone(),
            lease.clone(),
            replica.to_string(),
        )
        .await?;
        tracing::info!(hosts = ?settings.docker.all_hosts(), "Docker target ready");
        targets.push((TargetKind::Docker, Arc::new(docker)));
    }
    if kinds.contains(&TargetKind::Kubernetes) {
        // Synchronous: each cluster's client connects on first use.
        let kubernetes = crate::target::kubernetes::KubernetesTarget::new(
            settings.kubernetes.clone(),
            events.clone(),
        )?;
        tracing::info!("Kubernetes target ready");
        targets.push((TargetKind::Kubernetes, Arc::new(kubernetes)));
    }
    Ok(Arc::new(TargetRouter::new(targets, lease)))
}

pub struct Application {
    running: Running,
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, DeployerStartError> {
        // Checked before anything binds: bad settings stop the process at once.
        settings.targets.validate()?;
        settings
            .process
            .registry_auth
            .login(crate::target::process::REGISTRY_AUTH)?;
        if settings.targets.kinds().contains(&TargetKind::Docker) {
            settings
                .docker
                .registry_auth
                .login(crate::target::docker::REGISTRY_AUTH)?;
        }
        let mut runtime = Runtime::build("deployer", &settings.base, &MIGRATOR).await?;
        let (events, mut target_events) = mpsc::unbounded_channel();
        let users = instance_users(&runtime.pool, &settings.process);
        // One identity for the process: the owner of its leases and of its instances.
        let replica = ReplicaId::for_process("deployer");
        tracing::info!(replica = %replica, "deployer replica");
        let target = targets(&settings, events, users, &replica).await?;
        let registry = RegistryClient::new(
            &settings.upstreams.registry,
            &settings.base.identity.credential,
        )?;
        let deploy = settings.deploy.clone();
        let fleet = Arc::new(
            Fleet::new(
                runtime.pool.clone(),
                target,
                registry,
                runtime.producer.clone(),
                FleetSettings {
                    drain: Duration::from_millis(deploy.drain_ms),
                    stop_grace: Duration::from_secs(deploy.stop_grace_seconds),
                    heartbeat: Duration::from_millis(deploy.heartbeat_ms.max(100)),
                    replica: replica.clone(),
                    replicas: settings.replicas.clone(),
                },
            )
            .with_liveness_pool(slipway_settings::side_pool(
                &runtime.pool,
                LIVENESS_CONNECTIONS,
            )),
        );
        let metrics = EngineMetrics::register(&runtime.metrics.registry)
            .map_err(slipway_http::metrics::MetricsError)
            .map_err(StartError::from)?;
        let engine = Engine::new(fleet.clone(), deploy.clone(), replica, metrics);

        runtime.consume(
            "commands",
            &[Topic::Services, Topic::Commands],
            Commands {
                pool: runtime.pool.clone(),
                catalog: ServiceCatalog::new(
                    runtime.pool.clone(),
                    "deployer.service-catalog",
                    "deploy_targets",
                ),
                wake: engine.wake.clone(),
                nudges: engine.nudges.clone(),
                default_timeout: deploy.step_timeout_seconds,
            },
        );
        runtime.consume(
            "health",
            &[Topic::Instances],
            HealthVerdicts {
                pool: runtime.pool.clone(),
                wake: engine.wake.clone(),
                nudges: engine.nudges.clone(),
            },
        );
        runtime.relay_outbox()?;

        let on_events = fleet.clone();
        let cancel = runtime.cancel.clone();
        runtime.spawn("target events", async move {
            loop {
                let event = tokio::select! {
                    _ = cancel.cancelled() => return Ok::<(), String>(()),
                    event = target_events.recv() => event,
                };
                let Some(event) = event else {
                    return Ok(());
                };
                if let Err(e) = on_events.on_target_event(event).await {
                    tracing::warn!(error = %e, "target event not recorded");
                }
            }
        });
        let beats = fleet.clone();
        let cancel = runtime.cancel.clone();
        runtime.spawn("heartbeats", async move { beats.heartbeats(cancel).await });
        let cancel = runtime.cancel.clone();
        runtime.spawn("engine", async move {
            // Instances first: a resumed rollout must see what runs.
            loop {
                match fleet.recover().await {
                    Ok(()) => break,
                    Err(e) => tracing::warn!(error = %e, "recovery failed; retrying"),
                }
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            let supervising = tokio::spawn(fleet.clone().supervise(cancel.clone()));
            let result = engine.run(cancel).await;
            // Instances keep serving while the deployer is away; another replica or the next
            // start adopts them (the supervision loop detaches and retires this replica).
            let _ = supervising.await;
            result
        });

        let pool = actix_web::web::Data::new(runtime.pool.clone());
        let running = runtime.start(Access::Services(crate::routes::ACCESS), move |cfg| {
            cfg.app_data(pool.clone())
                .configure(crate::routes::configure);
        })?;
        Ok(Self { running })
    }

    pub fn port(&self) -> u16 {
        self.running.port()
    }

    pub async fn run_until_stopped(self) -> Result<(), String> {
        self.running.run_until_stopped().await
    }

    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<(), String> {
        self.running.run_until(shutdown).await
    }
}
