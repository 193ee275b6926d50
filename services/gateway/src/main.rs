use anyhow::Context;
use slipway_gateway::{Application, Settings};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::load().context("loading settings")?;
    let _telemetry = slipway_telemetry::init("slipway-gateway", &settings.base.telemetry)?;
    let app = Application::build(settings)
        .await
        .context("starting the gateway")?;
    app.run_until_stopped().await.map_err(anyhow::Error::msg)
}
