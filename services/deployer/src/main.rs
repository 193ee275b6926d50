use anyhow::Context;
use slipway_deployer::{Application, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::load().context("loading settings")?;
    let _telemetry = slipway_telemetry::init("slipway-deployer", &settings.base.telemetry)?;
    let app = Application::build(settings)
        .await
        .context("starting the deployer")?;
    app.run_until_stopped().await.map_err(anyhow::Error::msg)
}
