use secrecy::SecretString;
use serde_json::Value;
use slipway_gateway::startup::{AuthSettings, UpstreamSettings};
use slipway_gateway::{Application, Settings};
use tokio::sync::oneshot;

pub struct TestApp {
    pub address: String,
    pub kafka: slipway_kafka::KafkaSettings,
    pub admin_token: String,
    pub pool: sqlx::PgPool,
    pub client: reqwest::Client,
    _stops: Vec<oneshot::Sender<()>>,
}

async fn until(stopped: oneshot::Receiver<()>) {
    let _ = stopped.await;
}

/// A registry and a gateway in front of it, sharing a fresh database (one schema each).
/// `registry_up = false` points the gateway at a closed port instead.
pub async fn spawn_with(registry_up: bool) -> TestApp {
    let base = slipway_testkit::base_settings("gateway").await;
    let mut stops = Vec::new();
    let registry_url = if registry_up {
        start_registry(&base, &mut stops).await
    } else {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://127.0.0.1:{}", closed.local_addr().unwrap().port());
        drop(closed);
        url
    };
    let builder_url = if registry_up {
        let builder_settings = slipway_builder::Settings {
            base: slipway_testkit::sibling(&base, "builder"),
            builds: slipway_builder::builds::worker::BuildSettings {
                workdir: std::env::temp_dir()
                    .join(format!("slipway-gw-builds-{}", slipway_testkit::unique()))
                    .display()
                    .to_string(),
                max_parallel: 2,
                step_timeout_seconds: 60,
                fetch_timeout_seconds: 60,
                reason_lines: 10,
                max_line_bytes: 16 * 1024,
                max_log_bytes: 8 * 1024 * 1024,
                lease_ttl_ms: 15_000,
                path: "/usr/local/bin:/usr/bin:/bin".into(),
                uid: 64900,
                gid: 64900,
            },
            registry: slipway_builder::builds::package::RegistrySettings {
                address: slipway_testkit::oci_registry(),
                insecure: true,
                repository_prefix: format!("t{}/", slipway_testkit::unique()),
                auth: Default::default(),
                push_timeout_seconds: 60,
            },
            docker: Default::default(),
            images: Default::default(),
            secrets: slipway_secrets::SecretSettings {
                key: slipway_testkit::secrets_key().into(),
            },
            services: Default::default(),
            retention: Default::default(),
            replica: None,
        };
        let builder = slipway_builder::Application::build(builder_settings)
            .await
            .expect("builder starts");
        let url = format!("http://127.0.0.1:{}", builder.port());
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(builder.run_until(until(stopped)));
        stops.push(stop);
        url
    } else {
        "http://127.0.0.1:9".to_owned()
    };
    let upstreams = UpstreamSettings {
        registry: registry_url,
        builder: builder_url,
        // Nothing listens on the discard port: these answer 503 here.
        deployer: "http://127.0.0.1:9".to_owned(),
        monitor: "http://127.0.0.1:9".to_owned(),
        timeout_seconds: 5,
        connect_timeout_seconds: 3,
    };
    start_gateway(base, upstreams, stops).await
}

/// Starts a real registry on `base`'s database; its URL. `stops` keeps it up.
pub async fn start_registry(
    base: &slipway_runtime::BaseSettings,
    stops: &mut Vec<oneshot::Sender<()>>,
) -> String {
    let registry_settings = slipway_registry::Settings {
        base: slipway_testkit::sibling(base, "registry"),
        secrets: slipway_registry::startup::SecretSettings {
            key: slipway_testkit::secrets_key().into(),
        },
        services: Default::default(),
    };
    let registry = slipway_registry::Application::build(registry_settings)
        .await
        .expect("registry starts");
    let url = format!("http://127.0.0.1:{}", registry.port());
    let (stop, stopped) = oneshot::channel();
    tokio::spawn(registry.run_until(until(stopped)));
    stops.push(stop);
    url
}

/// A real registry reached through `proxy(registry_url)` (which answers the URL the gateway
/// calls instead), no builder.
pub async fn spawn_with_registry_behind<P, F>(proxy: P) -> TestApp
where
    P: FnOnce(String) -> F,
    F: Future<Output = String>,
{
    let base = slipway_testkit::base_settings("gateway").await;
    let mut stops = Vec::new();
    let registry = start_registry(&base, &mut stops).await;
    let upstreams = UpstreamSettings {
        registry: proxy(registry).await,
        builder: "http://127.0.0.1:9".to_owned(),
        deployer: "http://127.0.0.1:9".to_owned(),
        monitor: "http://127.0.0.1:9".to_owned(),
        timeout_seconds: 5,
        connect_timeout_seconds: 3,
    };
    start_gateway(base, upstreams, stops).await
}

/// A gateway whose registry, deployer and monitor are stand-ins (see `stand_in.rs`); no
/// builder. Upstream calls time out after 2 s, so a longer blocking query proves its own
/// timeout.
pub async fn spawn_with_stand_ins(
    registry: &crate::stand_in::StandIn,
    deployer: &crate::stand_in::StandIn,
    monitor: &crate::stand_in::StandIn,
) -> TestApp {
    let base = slipway_testkit::base_settings("gateway").await;
    let upstreams = UpstreamSettings {
        registry: registry.url.clone(),
        builder: "http://127.0.0.1:9".to_owned(),
        deployer: deployer.url.clone(),
        monitor: monitor.url.clone(),
        timeout_seconds: 2,
        connect_timeout_seconds: 3,
    };
    start_gateway(base, upstreams, Vec::new()).await
}

/// Starts the gateway with `upstreams`; `stops` are the senders keeping sibling services up.
pub async fn start_gateway(
    base: slipway_runtime::BaseSettings,
    upstreams: UpstreamSettings,
    stops: Vec<oneshot::Sender<()>>,
) -> TestApp {
    let key = slipway_testkit::secrets_key();
    start_gateway_with(base, upstreams, stops, Default::default(), key).await
}

/// [`start_gateway`] with `retention` settings, sealing webhook secrets with `secrets_key`
/// (two gateways on one database share it, as replicas do).
pub async fn start_gateway_with(
    base: slipway_runtime::BaseSettings,
    upstreams: UpstreamSettings,
    mut stops: Vec<oneshot::Sender<()>>,
    retention: slipway_gateway::retention::RetentionSettings,
    secrets_key: String,
) -> TestApp {
    let admin_token = format!("slw_{}", "a1".repeat(32));
    let settings = Settings {
        base: base.clone(),
        upstreams,
        auth: AuthSettings {
            bootstrap_token: SecretString::from(admin_token.clone()),
        },
        secrets: slipway_secrets::SecretSettings {
            key: secrets_key.into(),
        },
        edge: slipway_edge::EdgeSettings::default(),
        webhooks: Default::default(),
        retention,
    };
    let gateway = Application::build(settings).await.expect("gateway starts");
    let address = format!("http://127.0.0.1:{}", gateway.port());
    let (stop, stopped) = oneshot::channel();
    tokio::spawn(gateway.run_until(until(stopped)));
    stops.push(stop);
    let pool = sqlx::PgPool::connect_with(base.database.connect_options())
        .await
        .unwrap();
    TestApp {
        address,
        kafka: base.kafka.clone(),
        admin_token,
        pool,
        client: reqwest::Client::new(),
        _stops: stops,
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_with(true).await
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// Creates a token with `role` using the admin token.
    pub async fn token(&self, role: &str) -> String {
        let res = self
            .client
            .post(self.url("/v1/tokens"))
            .bearer_auth(&self.admin_token)
            .json(&serde_json::json!({"name": format!("{role}-test"), "role": role}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        let body: Value = res.json().await.unwrap();
        body["token"].as_str().unwrap().to_owned()
    }

    pub async fn create_service(&self, token: &str, body: Value) -> reqwest::Response {
        self.client
            .post(self.url("/v1/services"))
            .bearer_auth(token)
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

/// Asserts `res` is a problem document with `status`; returns it.
pub async fn problem(res: reqwest::Response, status: u16) -> Value {
    assert_eq!(res.status(), status);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], status);
    assert!(
        !body["detail"].as_str().unwrap_or_default().is_empty(),
        "{body}"
    );
    body
}
