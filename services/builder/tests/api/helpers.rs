use std::time::Duration;

use serde_json::Value;
use slipway_builder::builds::package::RegistrySettings;
use slipway_builder::builds::worker::BuildSettings;
use slipway_builder::{Application, SecretSettings, ServiceSettings, Settings};
use slipway_events::slipway::{BuildRequested, BuildTrigger, sources};
use slipway_events::{CloudEvent, EventData};
use slipway_ids::{BuildId, ServiceId};
use slipway_kafka::{EventProducer, KafkaSettings};
use tokio::sync::oneshot;

/// The uid builds run as when the tests run as root.
pub const BUILD_UID: u32 = 64900;

pub struct TestApp {
    pub address: String,
    pub kafka: KafkaSettings,
    /// The builder's database settings (its schema), for tests that read or race it directly.
    pub database: slipway_settings::DatabaseSettings,
    pub client: reqwest::Client,
    producer: EventProducer,
    _stop: Box<dyn std::any::Any + Send>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(true).await
}

/// A builder; `allow_local`: its `[services] allow_local_repositories`.
pub async fn spawn_app_with(allow_local: bool) -> TestApp {
    let mut settings = test_settings().await;
    settings.services.allow_local_repositories = allow_local;
    spawn_configured(settings).await
}

/// A fresh database and broker prefix, and the builder's settings for tests.
pub async fn test_settings() -> Settings {
    let base = slipway_testkit::base_settings("builder").await;
    Settings {
        base,
        builds: BuildSettings {
            workdir: workdir(),
            max_parallel: 2,
            step_timeout_seconds: 60,
            fetch_timeout_seconds: 60,
            reason_lines: 10,
            max_line_bytes: 16 * 1024,
            max_log_bytes: 8 * 1024 * 1024,
            lease_ttl_ms: 15_000,
            path: "/usr/local/bin:/usr/bin:/bin".into(),
            uid: BUILD_UID,
            gid: BUILD_UID,
        },
        registry: RegistrySettings {
            address: slipway_testkit::oci_registry(),
            insecure: true,
            repository_prefix: format!("t{}/", slipway_testkit::unique()),
            auth: Default::default(),
            push_timeout_seconds: 60,
        },
        docker: Default::default(),
        images: Default::default(),
        secrets: SecretSettings {
            key: slipway_testkit::secrets_key().into(),
        },
        // The test repositories are `file://` bare repositories.
        services: ServiceSettings {
            allow_local_repositories: true,
        },
        retention: Default::default(),
        replica: None,
    }
}

/// A work dir of its own (replicas on one machine may share one; tests keep them apart).
pub fn workdir() -> String {
    std::env::temp_dir()
        .join(format!(
            "slipway-builder-test-{}",
            slipway_testkit::unique()
        ))
        .display()
        .to_string()
}

/// A builder with `settings`.
pub async fn spawn_configured(settings: Settings) -> TestApp {
    let app = Application::build(settings.clone())
        .await
        .expect("builder starts");
    let port = app.port();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));
    TestApp::new(settings, port, Box::new(stop))
}

/// A builder on a thread and runtime of its own, which the test can freeze and thaw: frozen,
/// none of its tasks runs (as if its process got SIGSTOP), while its build commands go on.
pub struct Freezable {
    pub app: TestApp,
    freeze: std::sync::mpsc::Sender<std::sync::mpsc::Receiver<()>>,
}

impl Freezable {
    /// Freezes the builder until the returned sender is dropped or sent to.
    pub fn freeze(&self) -> std::sync::mpsc::Sender<()> {
        let (thaw, frozen) = std::sync::mpsc::channel();
        self.freeze.send(frozen).expect("the builder's thread runs");
        thaw
    }
}

pub async fn spawn_freezable(settings: Settings) -> Freezable {
    let (port_tx, port_rx) = oneshot::channel();
    let (freeze, freezes) = std::sync::mpsc::channel::<std::sync::mpsc::Receiver<()>>();
    let (stop, stopped) = oneshot::channel::<()>();
    let app_settings = settings.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async move {
            let app = Application::build(app_settings)
                .await
                .expect("builder starts");
            let _ = port_tx.send(app.port());
            // The freezer: blocking this one thread stops every task of the runtime.
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    if let Ok(frozen) = freezes.try_recv() {
                        let _ = frozen.recv();
                    }
                }
            });
            let _ = app
                .run_until(async move {
                    let _ = stopped.await;
                })
                .await;
        });
    });
    let port = port_rx.await.expect("the builder started");
    Freezable {
        app: TestApp::new(settings, port, Box::new(stop)),
        freeze,
    }
}

impl TestApp {
    /// Publishes a build request as the gateway would.
    fn new(settings: Settings, port: u16, stop: Box<dyn std::any::Any + Send>) -> Self {
        let base = &settings.base;
        TestApp {
            address: format!("http://127.0.0.1:{port}"),
            producer: slipway_testkit::signing::producer(&base.kafka),
            database: base.database.clone(),
            kafka: base.kafka.clone(),
            // The builder's API is called by the gateway in production.
            client: slipway_testkit::identity::client(
                slipway_testkit::identity::ServiceCaller::Gateway,
            ),
            _stop: stop,
        }
    }

    /// A pool on the builder's database (its schema), for tests that read or race it directly.
    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect_with(self.database.connect_options())
            .await
            .unwrap()
    }

    pub async fn request(&self, repository: &str, commit: Option<&str>) -> BuildId {
        self.request_times(repository, commit, 1).await
    }

    /// Publishes the same request (same event id) `times` times, as a redelivery would.
    pub async fn request_times(
        &self,
        repository: &str,
        commit: Option<&str>,
        times: usize,
    ) -> BuildId {
        self.request_for(ServiceId::new(), repository, commit, times)
            .await
    }

    /// Publishes a request (a new build id) for `service`, `times` times.
    pub async fn request_for(
        &self,
        service: ServiceId,
        repository: &str,
        commit: Option<&str>,
        times: usize,
    ) -> BuildId {
        let data = BuildRequested {
            build_id: BuildId::new(),
            service_id: service,
            service_name: "hello".into(),
            project: None,
            repository: Some(repository.into()),
            git_ref: "refs/heads/main".into(),
            commit: commit.map(str::to_owned),
            upload: None,
            trigger: BuildTrigger {
                kind: "api".into(),
                delivery: None,
                actor: Some("test".into()),
            },
            requested_at: chrono::Utc::now(),
        };
        let event = CloudEvent::new(
            sources::GATEWAY,
            data.service_id,
            Some(data.build_id.to_string()),
            &data,
        )
        .unwrap();
        for _ in 0..times {
            self.producer
                .publish(BuildRequested::TOPIC, &event)
                .await
                .unwrap();
        }
        data.build_id
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn build(&self, id: BuildId) -> Option<Value> {
        let res = self
            .client
            .get(format!("{}/v1/builds/{id}", self.address))
            .send()
            .await
            .unwrap();
        if res.status() == 404 {
            return None;
        }
        Some(res.json().await.unwrap())
    }

    /// Waits until the build's status satisfies `done`.
    pub async fn wait_for(&self, id: BuildId, done: impl Fn(&str) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(build) = self.build(id).await
                && done(build["status"].as_str().unwrap())
            {
                return build;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "build {id} did not get there"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_finished(&self, id: BuildId) -> Value {
        self.wait_for(id, |s| matches!(s, "succeeded" | "failed" | "cancelled"))
            .await
    }

    pub async fn log_text(&self, id: BuildId) -> String {
        let page: Value = self
            .client
            .get(format!("{}/v1/builds/{id}/logs", self.address))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        page["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["line"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A server that accepts connections and never answers (a hung registry or git server): its
/// `host:port`, and the connections it holds open (so the test can see it was reached).
pub async fn hanging_server() -> (
    String,
    std::sync::Arc<tokio::sync::Mutex<Vec<tokio::net::TcpStream>>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let held = std::sync::Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            keep.lock().await.push(conn); // read nothing, answer nothing, never close
        }
    });
    (address, held)
}
