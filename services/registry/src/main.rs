use anyhow::Context;
use slipway_registry::discovery::DiscoverySettings;
use slipway_registry::{Application, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::load().context("loading settings")?;
    let _telemetry = slipway_telemetry::init("slipway-registry", &settings.base.telemetry)?;
    let discovery = DiscoverySettings::load().context("loading [discovery] settings")?;
    let app = Application::build_with(settings, discovery)
        .await
        .context("starting the registry")?;
    app.run_until_stopped().await.map_err(anyhow::Error::msg)
}
