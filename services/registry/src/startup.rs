//! Settings and start-up.

use serde::Deserialize;
use slipway_events::Topic;
use slipway_runtime::{Access, BaseSettings, Running, Runtime, StartError};

use crate::consumers::{Discovery, ReleaseMaker};
use crate::discovery::{DiscoverySettings, IndexWatch, InvalidDiscoverySettings, RouterGrace};
use slipway_secrets::SecretBox;
pub use slipway_secrets::SecretSettings;

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    #[serde(flatten)]
    pub base: BaseSettings,
    pub secrets: SecretSettings,
    #[serde(default)]
    pub services: ServiceSettings,
}

/// Settings of section `[services]`: what a service (and its environments) may be created with.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ServiceSettings {
    /// Accept `file://` URLs and local paths as repositories: for one machine, where teams try
    /// Slipway with a repository on disk (scripts/up turns it on). Off in shared installs: a
    /// local path lets a service build any repository the builder can read.
    #[serde(default)]
    pub allow_local_repositories: bool,
    /// The target an environment is recorded on when it is created without one
    /// (`PUT /v1/services/{name}/environments/{env}` with no `target`). The recorded target is
    /// where the deployer runs the environment's instances.
    #[serde(default)]
    pub default_target: slipway_wire::releases::TargetKind,
}

impl Settings {
    /// Built-in defaults, then `$SLIPWAY_CONFIG`, then `SLIPWAY_*` variables.
    pub fn load() -> Result<Self, slipway_settings::SettingsError> {
        slipway_settings::load(include_str!("../config/default.toml"))
    }
}

/// Why the registry could not start.
#[derive(Debug, thiserror::Error)]
pub enum RegistryStartError {
    #[error(transparent)]
    Runtime(#[from] StartError),
    #[error(transparent)]
    Secrets(#[from] slipway_secrets::SecretError),
    #[error(transparent)]
    Discovery(#[from] InvalidDiscoverySettings),
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The running registry.
pub struct Application {
    running: Running,
}

impl Application {
    /// Starts with the default `[discovery]` settings.
    pub async fn build(settings: Settings) -> Result<Self, RegistryStartError> {
        Self::build_with(settings, DiscoverySettings::default()).await
    }

    /// Starts with explicit discovery settings. They are a separate argument rather than a
    /// field of [`Settings`] so that code building `Settings` by hand (other services' tests
    /// start a registry) keeps compiling; `main` loads both from the same layers.
    pub async fn build_with(
        settings: Settings,
        discovery: DiscoverySettings,
    ) -> Result<Self, RegistryStartError> {
        // Checked before anything else starts: a bad key or setting must stop the process at once.
        let sealer = SecretBox::from_settings(&settings.secrets)?;
        discovery.validate()?;
        let mut runtime = Runtime::build("registry", &settings.base, &MIGRATOR).await?;
        runtime.relay_outbox()?;
        runtime.consume(
            "events",
            &[Topic::Builds],
            ReleaseMaker::new(runtime.pool.clone()),
        );
        runtime.consume(
            "discovery",
            &[Topic::Instances, Topic::Deployments],
            Discovery::new(runtime.pool.clone(), &discovery),
        );
        let (index_sender, index_receiver) = tokio::sync::watch::channel(0_i64);
        let answers = std::sync::Arc::new(crate::answers::AnswerCache::new(
            std::time::Duration::from_millis(discovery.answer_ttl_ms),
        ));
        runtime.spawn(
            "discovery index watcher",
            crate::discovery::watch_index(
                runtime.pool.clone(),
                index_sender,
                answers.clone(),
                runtime.cancel.clone(),
            ),
        );
        let answers = actix_web::web::Data::from(answers);
        let grace = actix_web::web::Data::new(RouterGrace(std::time::Duration::from_millis(
            discovery.router_grace_ms,
        )));
        runtime.spawn(
            "discovery housekeeping",
            crate::discovery::housekeeping(runtime.pool.clone(), discovery, runtime.cancel.clone()),
        );
        let pool = actix_web::web::Data::new(runtime.pool.clone());
        let sealer = actix_web::web::Data::new(sealer);
        let services = actix_web::web::Data::new(settings.services.clone());
        let index = actix_web::web::Data::new(IndexWatch(index_receiver));
        let running = runtime.start(Access::Services(crate::routes::ACCESS), move |cfg| {
            cfg.app_data(pool.clone())
                .app_data(sealer.clone())
                .app_data(services.clone())
                .app_data(index.clone())
                .app_data(grace.clone())
                .app_data(answers.clone())
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
