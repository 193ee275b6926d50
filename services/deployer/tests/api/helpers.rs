use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use reqwest::Response;
use serde_json::Value;
use slipway_deployer::{Application, Settings};
use slipway_events::deploy::{DeployKind, DeployRequested, Strategy};
use slipway_events::slipway::{ServiceCreated, sources};
use slipway_events::{CloudEvent, EventData};
use slipway_ids::ServiceId;
use slipway_kafka::EventProducer;
use slipway_runtime::BaseSettings;
use slipway_testkit::identity::ServiceCaller;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::stand_in::StandInRegistry;

/// How long a command may take to be consumed and driven to its end (a fresh consumer group
/// joins first).
pub const SETTLE: Duration = Duration::from_secs(45);

/// Removes the deployer's work directory when the test ends.
struct Workdir(PathBuf);

impl Drop for Workdir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct TestApp {
    pub address: String,
    pub settings: BaseSettings,
    pub client: reqwest::Client,
    /// Publishes commands and registry facts as the gateway and the registry would.
    pub producer: EventProducer,
    pub registry: Arc<StandInRegistry>,
    _workdir: Workdir,
    _stop: oneshot::Sender<()>,
}

/// Starts a deployer on port 0 with a fresh database, its own topics, its own work directory
/// and a stand-in registry.
pub async fn spawn_app() -> TestApp {
    let registry = Arc::new(StandInRegistry::start().await);
    let base = slipway_testkit::base_settings("deployer").await;
    spawn_app_on(base, registry, &[]).await
}

/// Starts a deployer on `base`'s database and topics (another replica when a deployer already
/// runs there), asking `registry`, with further `SLIPWAY_*` settings.
pub async fn spawn_app_on(
    base: BaseSettings,
    registry: Arc<StandInRegistry>,
    extra: &[(&str, &str)],
) -> TestApp {
    let workdir = std::env::temp_dir().join(format!(
        "slipway-deployer-api-{}",
        slipway_testkit::unique()
    ));
    // The service's own defaults file, with the test's upstream, work directory, identity and
    // a short engine tick; nothing is read from the process environment.
    let mut settings: Settings = slipway_settings::load_from(
        include_str!("../../config/default.toml"),
        [
            (
                "SLIPWAY_UPSTREAMS__REGISTRY".to_owned(),
                registry.url.clone(),
            ),
            (
                "SLIPWAY_PROCESS__WORKDIR".to_owned(),
                workdir.display().to_string(),
            ),
            ("SLIPWAY_DEPLOY__TICK_MS".to_owned(), "50".to_owned()),
            (
                "SLIPWAY_DEPLOY__STEP_TIMEOUT_SECONDS".to_owned(),
                "20".to_owned(),
            ),
        ]
        .into_iter()
        .chain(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        )
        .chain(slipway_testkit::identity::env(ServiceCaller::Deployer)),
    )
    .expect("deployer settings");
    settings.base = base.clone();
    let app = Application::build(settings).await.expect("deployer starts");
    let address = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));
    let producer = slipway_testkit::signing::producer(&base.kafka);
    TestApp {
        address,
        settings: base,
        // The deployer's API is the gateway's to call.
        client: slipway_testkit::identity::client(ServiceCaller::Gateway),
        producer,
        registry,
        _workdir: Workdir(workdir),
        _stop: stop,
    }
}

/// A command as the gateway sends it, for an environment of a service.
pub fn request(
    kind: DeployKind,
    service_id: ServiceId,
    service: &str,
    environment: &str,
    release: Option<i32>,
) -> DeployRequested {
    DeployRequested {
        deployment_id: Uuid::now_v7(),
        kind,
        service_id,
        service_name: service.to_owned(),
        project: None,
        environment: environment.to_owned(),
        release,
        strategy: Strategy::default(),
        replicas: None,
        config_version: None,
        health_check: None,
        step_timeout_seconds: None,
        auto_rollback: None,
        actor: Some("api-test".into()),
        requested_at: Utc::now(),
    }
}

/// Reads a problem answer: checks the status, the media type and the body's `status` and
/// `detail`; returns the body.
pub async fn problem(res: Response, status: u16) -> Value {
    assert_eq!(res.status(), status, "{}", res.url());
    assert_eq!(
        res.headers()["content-type"],
        "application/problem+json",
        "{}",
        res.url()
    );
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], status, "{body}");
    assert!(
        !body["detail"].as_str().unwrap_or_default().is_empty(),
        "{body}"
    );
    body
}

impl TestApp {
    pub async fn get(&self, path: &str) -> Response {
        self.client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .unwrap()
    }

    /// The deployer's `/metrics` text.
    pub async fn metrics(&self) -> String {
        let res = self.get("/metrics").await;
        assert_eq!(res.status(), 200);
        res.text().await.unwrap()
    }

    pub async fn put_json(&self, path: &str, body: &Value) -> Response {
        self.client
            .put(format!("{}{path}", self.address))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// A PUT with a body sent as is, labelled JSON.
    pub async fn put_raw(&self, path: &str, body: &'static str) -> Response {
        self.client
            .put(format!("{}{path}", self.address))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// Publishes `data` on its topic, keyed by `key`; answers the event (to publish it again).
    pub async fn publish<D: EventData>(
        &self,
        source: &str,
        key: ServiceId,
        subject: &str,
        data: &D,
    ) -> CloudEvent {
        let event = CloudEvent::new(source, key, Some(subject.to_owned()), data).unwrap();
        self.publish_again(D::TOPIC, &event).await;
        event
    }

    pub async fn publish_again(&self, topic: slipway_events::Topic, event: &CloudEvent) {
        self.producer.publish(topic, event).await.unwrap();
    }

    /// Publishes a deploy command; answers its deployment id.
    pub async fn command(&self, r: &DeployRequested) -> Uuid {
        self.publish(
            sources::GATEWAY,
            r.service_id,
            &r.deployment_id.to_string(),
            r,
        )
        .await;
        r.deployment_id
    }

    /// Registers a service with the deployer the way the registry does (a "service created"
    /// event) and waits until it is known (its policy stops answering 404).
    pub async fn register(&self, name: &str) -> ServiceId {
        let id = ServiceId::new();
        let data = ServiceCreated {
            service_id: id,
            name: name.to_owned(),
            project: Default::default(),
            repository: None,
            branch: "main".into(),
            created_at: Utc::now(),
        };
        self.publish(sources::REGISTRY, id, name, &data).await;
        let path = format!("/v1/services/{name}/environments/staging/policy");
        let body = serde_json::json!({"auto_deploy": false});
        let known = slipway_testkit::wait_until(SETTLE, || async {
            self.put_json(&path, &body).await.status() != 404
        })
        .await;
        assert!(
            known,
            "service `{name}` never reached the deployer's catalog"
        );
        id
    }

    /// The deployment as `GET /v1/deployments/{id}` shows it, if it exists.
    pub async fn deployment(&self, id: Uuid) -> Option<Value> {
        let res = self.get(&format!("/v1/deployments/{id}")).await;
        match res.status().as_u16() {
            200 => Some(res.json().await.unwrap()),
            404 => None,
            s => panic!(
                "GET deployment {id}: HTTP {s}: {}",
                res.text().await.unwrap()
            ),
        }
    }

    /// Waits until deployment `id` exists and satisfies `condition`; answers it.
    pub async fn deployment_when(&self, id: Uuid, condition: impl Fn(&Value) -> bool) -> Value {
        let last = std::sync::Mutex::new(None);
        let reached = slipway_testkit::wait_until(SETTLE, || async {
            let seen = self.deployment(id).await;
            let done = seen.as_ref().is_some_and(&condition);
            *last.lock().unwrap() = seen;
            done
        })
        .await;
        let last = last.into_inner().unwrap();
        assert!(
            reached,
            "deployment {id} did not get there; last seen: {last:?}"
        );
        last.unwrap()
    }

    /// Waits until deployment `id` has ended; answers it.
    pub async fn ended(&self, id: Uuid) -> Value {
        self.deployment_when(id, |d| {
            matches!(
                d["status"].as_str(),
                Some("succeeded" | "failed" | "rolled_back" | "cancelled")
            )
        })
        .await
    }

    /// The history of a service in an environment (newest first).
    pub async fn history(&self, service: &str, environment: &str) -> Vec<Value> {
        let res = self
            .get(&format!(
                "/v1/services/{service}/environments/{environment}/deployments"
            ))
            .await;
        assert_eq!(res.status(), 200);
        let body: Value = res.json().await.unwrap();
        body["items"].as_array().unwrap().clone()
    }
}
