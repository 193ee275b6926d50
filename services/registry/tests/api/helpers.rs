use slipway_registry::discovery::DiscoverySettings;
use slipway_registry::startup::ServiceSettings;
use slipway_registry::{Application, Settings};
use slipway_runtime::BaseSettings;
use tokio::sync::oneshot;

pub struct TestApp {
    pub address: String,
    pub settings: BaseSettings,
    pub pool: sqlx::PgPool,
    pub client: reqwest::Client,
    _stop: oneshot::Sender<()>,
}

/// Starts a registry on port 0 with a fresh database and its own topics.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(DiscoverySettings::default()).await
}

/// [`spawn_app`] with chosen discovery settings (a short reaper interval).
pub async fn spawn_app_with(discovery: DiscoverySettings) -> TestApp {
    spawn(discovery, ServiceSettings::default()).await
}

/// [`spawn_app`] with chosen `[services]` settings.
pub async fn spawn_app_with_services(services: ServiceSettings) -> TestApp {
    spawn(DiscoverySettings::default(), services).await
}

/// Another replica of `of`'s registry: the same database, topics and consumer group.
pub async fn spawn_replica(of: &TestApp, discovery: DiscoverySettings) -> TestApp {
    spawn_on(of.settings.clone(), discovery, ServiceSettings::default()).await
}

async fn spawn(discovery: DiscoverySettings, services: ServiceSettings) -> TestApp {
    let base = slipway_testkit::base_settings("registry").await;
    spawn_on(base, discovery, services).await
}

async fn spawn_on(
    base: BaseSettings,
    discovery: DiscoverySettings,
    services: ServiceSettings,
) -> TestApp {
    let app = Application::build_with(
        Settings {
            base: base.clone(),
            secrets: slipway_registry::startup::SecretSettings {
                key: slipway_testkit::secrets_key().into(),
            },
            services,
        },
        discovery,
    )
    .await
    .expect("registry starts");
    let address = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));
    let pool = sqlx::PgPool::connect_with(base.database.connect_options())
        .await
        .unwrap();
    TestApp {
        address,
        settings: base,
        pool,
        // The registry's API is called by the gateway in production.
        client: slipway_testkit::identity::client(
            slipway_testkit::identity::ServiceCaller::Gateway,
        ),
        _stop: stop,
    }
}

impl TestApp {
    pub async fn create(&self, body: serde_json::Value) -> reqwest::Response {
        self.client
            .post(format!("{}/v1/services", self.address))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}
