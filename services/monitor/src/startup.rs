//! Settings and start-up.

use serde::Deserialize;
use slipway_events::Topic;
use slipway_runtime::{BaseSettings, Running, Runtime, StartError};

use slipway_runtime::catalog::ServiceCatalog;

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    #[serde(flatten)]
    pub base: BaseSettings,
}

impl Settings {
    pub fn load() -> Result<Self, slipway_settings::SettingsError> {
        slipway_settings::load(include_str!("../config/default.toml"))
    }
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

pub struct Application {
    running: Running,
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, StartError> {
        let mut runtime = Runtime::build("monitor", &settings.base, &MIGRATOR).await?;
        let handler = ServiceCatalog::new(
            runtime.pool.clone(),
            "monitor.service-catalog",
            "watched_services",
        );
        runtime.consume(
            "events",
            &[Topic::Services, Topic::Instances, Topic::Deployments],
            handler,
        );
        runtime.relay_outbox()?;
        let running = runtime.start(|_| {})?;
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
