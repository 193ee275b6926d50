use anyhow::Context;
use slipway_monitor::{Application, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::load().context("loading settings")?;
    let _telemetry = slipway_telemetry::init("slipway-monitor", &settings.base.telemetry)?;
    let app = Application::build(settings)
        .await
        .context("starting the monitor")?;
    app.run_until_stopped().await.map_err(anyhow::Error::msg)
}
