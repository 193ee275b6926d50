//! Settings and start-up.

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use slipway_runtime::{Access, BaseSettings, Running, Runtime, StartError};

use slipway_secrets::SecretBox;

use crate::auth::tokens;
use crate::upstream::Upstreams;

/// Where the internal APIs are.
#[derive(Debug, Clone, Deserialize)]
pub struct UpstreamSettings {
    /// Base URL of the registry's internal API.
    pub registry: String,
    /// Base URL of the builder's internal API.
    pub builder: String,
    /// Base URL of the deployer's internal API (deployments, desired state).
    pub deployer: String,
    /// Base URL of the monitor's internal API (health verdicts, instance logs).
    pub monitor: String,
    pub timeout_seconds: u64,
}

impl UpstreamSettings {
    /// `host:port` of every upstream: the edge router must never route to them.
    pub fn addresses(&self) -> Vec<String> {
        [&self.registry, &self.builder, &self.deployer, &self.monitor]
            .into_iter()
            .filter_map(|u| url::Url::parse(u).ok())
            .filter_map(|u| Some(format!("{}:{}", u.host()?, u.port_or_known_default()?)))
            .collect()
    }
}

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
    #[error("cannot seal webhook secrets stored before sealing existed: {0}")]
    SealLegacy(#[source] sqlx::Error),
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
        // Routes are learnt from the registry's discovery endpoint in the background. The
        // gateway's own listener and its upstreams are never routes, whatever discovery says.
        let mut edge_settings = settings.edge.clone();
        edge_settings.platform_addresses.push(format!(
            "{}:{}",
            settings.base.http.host,
            runtime.port()
        ));
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
        let edge_routes = edge.configure();

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
        runtime.spawn(
            "webhook delivery pruning",
            crate::deliveries::prune_until(
                runtime.pool.clone(),
                settings.webhooks.retention(),
                async move { cancel.cancelled().await },
            ),
        );

        let pool = actix_web::web::Data::new(runtime.pool.clone());
        let upstreams = actix_web::web::Data::new(upstreams);
        let sealer = actix_web::web::Data::new(sealer);
        let webhooks = actix_web::web::Data::new(settings.webhooks.clone());
        let producer = actix_web::web::Data::new(runtime.producer.clone());
        let running = runtime.start(Access::Public, move |cfg| {
            // First: a service's host name must win over the gateway's own routes.
            cfg.configure(edge_routes.clone())
                .app_data(pool.clone())
                .app_data(upstreams.clone())
                .app_data(sealer.clone())
                .app_data(webhooks.clone())
                .app_data(producer.clone())
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
