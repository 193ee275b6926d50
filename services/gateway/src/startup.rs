//! Settings and start-up.

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use slipway_runtime::{Access, BaseSettings, Running, Runtime, StartError};

use slipway_secrets::SecretBox;

use crate::auth::tokens;
pub use crate::upstream::UpstreamSettings;
use crate::upstream::Upstreams;

/// Authentication settings.
#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    /// The first admin token, when none exists yet; empty to generate one.
    pub bootstrap_token: SecretString,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    #[serde(flatten)]
    pub base: BaseSettings,
    pub upstreams: UpstreamSettings,
    pub auth: AuthSettings,
    /// The key sealing webhook secrets at rest.
    pub secrets: slipway_secrets::SecretSettings,
    /// The edge router in front of the services slipway runs (`[edge]`; defaults apply).
    #[serde(default)]
    pub edge: slipway_edge::EdgeSettings,
    /// Git webhooks (`[webhooks]`; defaults apply).
    #[serde(default)]
    pub webhooks: crate::deliveries::WebhookSettings,
    /// How long audit entries, operations and service creations are kept (`[retention]`;
    /// defaults apply).
    #[serde(default)]
    pub retention: crate::retention::RetentionSettings,
}

impl Settings {
    pub fn load() -> Result<Self, slipway_settings::SettingsError> {
        slipway_settings::load(include_str!("../config/default.toml"))
    }
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayStartError {
    #[error(transparent)]
    Runtime(#[from] StartError),
    #[error("invalid upstream settings: {0}")]
    Upstreams(String),
    #[error(transparent)]
    Edge(#[from] slipway_edge::EdgeError),
    #[error("cannot create the first admin token: {0}")]
    Bootstrap(#[from] tokens::BootstrapError),
    #[error(transparent)]
    Secrets(#[from] slipway_secrets::SecretError),
    #[error("cannot seal webhook secrets stored before sealing existed")]
    SealLegacy(#[source] sqlx::Error),
    #[error("cannot register the pruning metrics")]
    Metrics(#[source] prometheus::Error),
}

/// Seals webhook secrets stored in plain text by gateways before sealing existed (idempotent).
pub async fn seal_legacy_webhook_secrets(
    pool: &sqlx::PgPool,
    sealer: &SecretBox,
) -> Result<(), sqlx::Error> {
    let legacy: Vec<(slipway_ids::ServiceId, String)> =
        sqlx::query_as("SELECT service_id, secret FROM webhook_secrets WHERE sealed IS NULL AND secret IS NOT NULL")
            .fetch_all(pool)
            .await?;
    for (service, secret) in &legacy {
        sqlx::query("UPDATE webhook_secrets SET sealed = $2, secret = NULL WHERE service_id = $1")
            .bind(service)
            .bind(sealer.seal(secret))
            .execute(pool)
            .await?;
    }
    if !legacy.is_empty() {
        tracing::info!(
            count = legacy.len(),
            "sealed webhook secrets stored in plain text"
        );
    }
    Ok(())
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

pub struct Application {
    running: Running,
    /// The public port: the edge router's listener, in front of the API.
    port: u16,
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, GatewayStartError> {
        let upstreams = Upstreams::new(&settings.upstreams, &settings.base.identity.credential)
            .map_err(GatewayStartError::Upstreams)?;
        let sealer = SecretBox::from_settings(&settings.secrets)?;
        let mut runtime = Runtime::build("gateway", &settings.base, &MIGRATOR).await?;
        runtime.relay_outbox()?;
        // Every service's dead letters, for `/v1/admin/dead-letters`.
        runtime.consume_dead_letters(crate::dead_letters::Store::new(runtime.pool.clone()));
        // The edge router takes the public port and passes what is not its own to the API on
        // a loopback port. Routes are learnt from the registry's discovery endpoint in the
        // background. The gateway's listeners and its upstreams are never routes, whatever
        // discovery says.
        let public_port = runtime.port();
        let (public, api) = runtime.front_listener()?;
        let mut edge_settings = settings.edge.clone();
        edge_settings
            .platform_addresses
            .push(format!("{}:{}", settings.base.http.host, public_port));
        edge_settings.platform_addresses.push(api.to_string());
        edge_settings
            .platform_addresses
            .extend(settings.upstreams.addresses());
        let edge = slipway_edge::Edge::new(
            &edge_settings,
            &settings.upstreams.registry,
            &settings.base.identity.credential,
            &runtime.metrics.registry,
        )?;
        runtime.spawn(
            "edge discovery",
            edge.clone().follow_discovery(runtime.cancel.clone()),
        );
        let front = edge.serve(public, Some(api), runtime.cancel.clone())?;
        runtime.spawn("edge router", front.wait());

        let bootstrap = settings.auth.bootstrap_token.expose_secret();
        let given = (!bootstrap.is_empty()).then(|| bootstrap.to_owned());
        if let Some(created) = tokens::bootstrap_admin(&runtime.pool, given).await?
            && created.generated
        {
            // Printed once, on stdout and outside the JSON logs, like an initial admin password.
            println!(
                "slipway admin token (shown once, store it now): {}",
                created.token
            );
        }

        seal_legacy_webhook_secrets(&runtime.pool, &sealer)
            .await
            .map_err(GatewayStartError::SealLegacy)?;
        let cancel = runtime.cancel.clone();
        let prune_metrics = crate::retention::PruneMetrics::register(&runtime.metrics.registry)
            .map_err(GatewayStartError::Metrics)?;
        runtime.spawn(
            "retention pruning",
            crate::retention::prune_until(
                runtime.pool.clone(),
                crate::retention::Policy::new(&settings.retention, settings.webhooks.retention()),
                std::time::Duration::from_secs(u64::from(
                    settings.retention.interval_seconds.get(),
                )),
                prune_metrics,
                async move { cancel.cancelled().await },
            ),
        );

        let pool = actix_web::web::Data::new(runtime.pool.clone());
        let upstreams = actix_web::web::Data::new(upstreams);
        let sealer = actix_web::web::Data::new(sealer);
        let webhooks = actix_web::web::Data::new(settings.webhooks.clone());
        let producer = actix_web::web::Data::new(runtime.producer.clone());
        let running = runtime.start(Access::Public, move |cfg| {
            cfg.app_data(pool.clone())
                .app_data(upstreams.clone())
                .app_data(sealer.clone())
                .app_data(webhooks.clone())
                .app_data(producer.clone())
                .configure(crate::routes::configure);
        })?;
        Ok(Self {
            running,
            port: public_port,
        })
    }

    /// The public port (the edge router's, in front of the API).
    pub fn port(&self) -> u16 {
        self.port
    }

    pub async fn run_until_stopped(self) -> Result<(), String> {
        self.running.run_until_stopped().await
    }

    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<(), String> {
        self.running.run_until(shutdown).await
    }
}
