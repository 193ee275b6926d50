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
    _stop: oneshot::Sender<()>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(true).await
}

/// A builder; `allow_local`: its `[services] allow_local_repositories`.
pub async fn spawn_app_with(allow_local: bool) -> TestApp {
    let base = slipway_testkit::base_settings("builder").await;
    let workdir = std::env::temp_dir().join(format!(
        "slipway-builder-test-{}",
        slipway_testkit::unique()
    ));
    let settings = Settings {
        base: base.clone(),
        builds: BuildSettings {
            workdir: workdir.display().to_string(),
            max_parallel: 2,
            step_timeout_seconds: 60,
            reason_lines: 10,
            path: "/usr/local/bin:/usr/bin:/bin".into(),
            uid: BUILD_UID,
            gid: BUILD_UID,
        },
        registry: RegistrySettings {
            address: slipway_testkit::oci_registry(),
            insecure: true,
            repository_prefix: format!("t{}/", slipway_testkit::unique()),
            auth: Default::default(),
        },
        secrets: SecretSettings {
            key: slipway_testkit::secrets_key().into(),
        },
        // The test repositories are `file://` bare repositories.
        services: ServiceSettings {
            allow_local_repositories: allow_local,
        },
    };
    let app = Application::build(settings).await.expect("builder starts");
    let address = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));
    TestApp {
        address,
        producer: slipway_testkit::signing::producer(&base.kafka),
        database: base.database.clone(),
        kafka: base.kafka,
        // The builder's API is called by the gateway in production.
        client: slipway_testkit::identity::client(
            slipway_testkit::identity::ServiceCaller::Gateway,
        ),
        _stop: stop,
    }
}

impl TestApp {
    /// Publishes a build request as the gateway would.
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
