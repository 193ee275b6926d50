//! Settings and start-up.

use serde::Deserialize;
use slipway_runtime::{BaseSettings, Running, Runtime, StartError};

/// The registry's settings: only the shared sections so far.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    #[serde(flatten)]
    pub base: BaseSettings,
}

impl Settings {
    /// Built-in defaults, then `$SLIPWAY_CONFIG`, then `SLIPWAY_*` variables.
    pub fn load() -> Result<Self, slipway_settings::SettingsError> {
        slipway_settings::load(include_str!("../config/default.toml"))
    }
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The running registry.
pub struct Application {
    running: Running,
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, StartError> {
        let mut runtime = Runtime::build("registry", &settings.base, &MIGRATOR).await?;
        runtime.relay_outbox()?;
        let pool = actix_web::web::Data::new(runtime.pool.clone());
        let running = runtime.start(move |cfg| {
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
