//! Settings and start-up.

use std::sync::Arc;

use serde::Deserialize;
use slipway_events::Topic;
use slipway_ids::ReplicaId;
use slipway_runtime::{Access, BaseSettings, Running, Runtime, StartError};
use slipway_secrets::SecretBox;
pub use slipway_secrets::SecretSettings;
use tokio::sync::Notify;

use crate::builds::dockerfile::DockerSettings;
use crate::builds::image::ImageSettings;
use crate::builds::package::RegistrySettings;
use crate::builds::retention::{self, PruneMetrics, RetentionSettings};
use crate::builds::sandbox::SandboxError;
use crate::builds::worker::{BuildSettings, Context, Worker};
use crate::consumers::{BuildRequests, Events, ServiceCatalog};

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    #[serde(flatten)]
    pub base: BaseSettings,
    pub builds: BuildSettings,
    pub registry: RegistrySettings,
    /// The Docker Engine Dockerfile builds go through (section `[docker]`; none: buildah).
    #[serde(default)]
    pub docker: DockerSettings,
    /// Default base images (section `[images]`).
    #[serde(default)]
    pub images: ImageSettings,
    /// Seals clone credentials at rest.
    pub secrets: SecretSettings,
    #[serde(default)]
    pub services: ServiceSettings,
    /// How long uploads and build logs are kept (section `[retention]`).
    #[serde(default)]
    pub retention: RetentionSettings,
    /// Who this process is as a lease owner; unset: `SLIPWAY_REPLICA_ID` or a generated id
    /// (tests running several replicas in one process name them here).
    #[serde(skip)]
    pub replica: Option<ReplicaId>,
}

/// Settings of section `[services]` (the same name and meaning as the registry's).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ServiceSettings {
    /// Fetch from `file://` URLs and local paths (one machine only: scripts/up turns it on).
    #[serde(default)]
    pub allow_local_repositories: bool,
}

/// Why the builder could not start.
#[derive(Debug, thiserror::Error)]
pub enum BuilderStartError {
    #[error(transparent)]
    Runtime(#[from] StartError),
    #[error(transparent)]
    Secrets(#[from] slipway_secrets::SecretError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    RegistryAuth(#[from] slipway_settings::RegistryAuthError),
    #[error("invalid base image in the settings, {0}")]
    Images(#[from] crate::builds::image::BadBase),
}

impl Settings {
    pub fn load() -> Result<Self, slipway_settings::SettingsError> {
        slipway_settings::load(include_str!("../config/default.toml"))
    }
}

/// The builder's migrations (tests prepare a database with them, without a running builder).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

pub struct Application {
    running: Running,
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, BuilderStartError> {
        // Checked before anything binds: bad credentials settings, a bad key or work dir stop
        // the process at once.
        settings.registry.oci_auth()?;
        settings.images.check()?;
        let sealer = SecretBox::from_settings(&settings.secrets)?;
        let sandbox = settings.builds.sandbox()?;
        let mut runtime = Runtime::build("builder", &settings.base, &MIGRATOR).await?;
        let wake = Arc::new(Notify::new());
        let handler = Events {
            catalog: ServiceCatalog::new(
                runtime.pool.clone(),
                "builder.service-catalog",
                "build_sources",
            ),
            builds: BuildRequests::new(runtime.pool.clone(), wake.clone()),
        };
        runtime.consume("events", &[Topic::Services, Topic::Commands], handler);
        runtime.relay_outbox()?;
        let metrics = PruneMetrics::register(&runtime.metrics.registry)
            .map_err(|e| StartError::Metrics(slipway_http::metrics::MetricsError(e)))?;
        let cancel = runtime.cancel.clone();
        runtime.spawn(
            "retention",
            retention::run(
                runtime.pool.clone(),
                settings.retention.clone(),
                metrics,
                cancel,
            ),
        );
        let ctx = Context {
            pool: runtime.pool.clone(),
            settings: settings.builds.clone(),
            registry: settings.registry.clone(),
            docker: settings.docker.clone(),
            images: settings.images.clone(),
            sandbox,
            sealer: sealer.clone(),
            allow_local: settings.services.allow_local_repositories,
            replica: settings
                .replica
                .clone()
                .unwrap_or_else(|| ReplicaId::for_process("builder")),
        };
        let worker = Worker::new(ctx, wake);
        let cancel = runtime.cancel.clone();
        runtime.spawn("build worker", worker.run(cancel));
        let pool = actix_web::web::Data::new(runtime.pool.clone());
        let sealer = actix_web::web::Data::new(sealer);
        let running = runtime.start(Access::Services(crate::routes::ACCESS), move |cfg| {
            cfg.app_data(pool.clone())
                .app_data(sealer.clone())
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
