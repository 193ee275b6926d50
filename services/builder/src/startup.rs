//! Settings and start-up.

use std::sync::Arc;

use serde::Deserialize;
use slipway_events::Topic;
use slipway_runtime::{Access, BaseSettings, Running, Runtime, StartError};
use tokio::sync::Notify;

use crate::builds::package::RegistrySettings;
use crate::builds::worker::{BuildSettings, Worker};
use crate::consumers::{BuildRequests, Events, ServiceCatalog};

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    #[serde(flatten)]
    pub base: BaseSettings,
    pub builds: BuildSettings,
    pub registry: RegistrySettings,
}

impl Settings {
    pub fn load() -> Result<Self, slipway_settings::SettingsError> {
        slipway_settings::load(include_str!("../config/default.toml"))
    }
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Why the builder could not start.
#[derive(Debug, thiserror::Error)]
pub enum BuilderStartError {
    #[error(transparent)]
    Runtime(#[from] StartError),
    #[error(transparent)]
    RegistryAuth(#[from] slipway_settings::RegistryAuthError),
}

pub struct Application {
    running: Running,
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, BuilderStartError> {
        // Checked before anything binds: bad credentials settings stop the process at once.
        settings.registry.oci_auth()?;
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
        let worker = Worker::new(
            runtime.pool.clone(),
            settings.builds.clone(),
            settings.registry.clone(),
            wake,
        );
        let cancel = runtime.cancel.clone();
        runtime.spawn("build worker", worker.run(cancel));
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
