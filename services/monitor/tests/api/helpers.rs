use std::time::Duration;

use chrono::Utc;
use rdkafka::Message;
use rdkafka::consumer::StreamConsumer;
use slipway_events::deploy::{
    HealthCheck, InstanceExited, InstanceHealthChanged, InstanceRef, InstanceStarted,
};
use slipway_events::slipway::sources;
use slipway_events::{CloudEvent, EventData, Topic};
use slipway_ids::{InstanceId, ServiceId};
use slipway_kafka::EventProducer;
use slipway_monitor::{Application, LogSettings, Settings};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct TestApp {
    pub address: String,
    pub settings: Settings,
    pub pool: sqlx::PgPool,
    pub client: reqwest::Client,
    pub producer: EventProducer,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), String>>>,
}

/// Settings for a monitor with a fresh database and its own topics; logs pruned often.
pub async fn test_settings() -> Settings {
    Settings {
        base: slipway_testkit::base_settings("monitor").await,
        logs: LogSettings {
            retention_hours: 24,
            prune_interval_ms: 200,
        },
        shards: slipway_monitor::ShardSettings::default(),
    }
}

/// Starts a monitor on port 0.
pub async fn spawn_app() -> TestApp {
    spawn_with(test_settings().await).await
}

/// Starts a monitor with `settings` (e.g. those of a stopped one, to test a restart).
pub async fn spawn_with(settings: Settings) -> TestApp {
    let app = Application::build(settings.clone())
        .await
        .expect("monitor starts");
    let address = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));
    let pool = sqlx::PgPool::connect_with(settings.base.database.connect_options())
        .await
        .unwrap();
    let producer = slipway_testkit::signing::producer(&settings.base.kafka);
    TestApp {
        address,
        settings,
        pool,
        // The monitor's API is called by the gateway in production.
        client: slipway_testkit::identity::client(
            slipway_testkit::identity::ServiceCaller::Gateway,
        ),
        producer,
        stop: Some(stop),
        task: Some(task),
    }
}

impl TestApp {
    /// Shuts the monitor down and waits until it has drained.
    pub async fn stop(mut self) -> Settings {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
        self.settings.clone()
    }

    pub async fn publish<D: EventData>(&self, key: ServiceId, subject: InstanceId, data: &D) {
        let event =
            CloudEvent::new(sources::DEPLOYER, key, Some(subject.to_string()), data).unwrap();
        self.publish_event(&event).await;
    }

    pub async fn publish_event(&self, event: &CloudEvent) {
        self.producer
            .publish(Topic::Instances, event)
            .await
            .unwrap();
    }

    /// A consumer of the instance topic from its beginning.
    pub fn instances_consumer(&self) -> StreamConsumer {
        let topic = self.settings.base.kafka.topics().name(Topic::Instances);
        slipway_testkit::plain_consumer(&self.settings.base.kafka.bootstrap_servers, &[&topic])
    }

    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let res = self
            .client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        if status >= 400 {
            assert_eq!(
                res.headers()["content-type"],
                "application/problem+json",
                "{path}"
            );
        }
        (status, res.json().await.unwrap())
    }

    /// The health of `instance` as the API shows it.
    pub async fn health_of(
        &self,
        service: &str,
        instance: InstanceId,
    ) -> Option<serde_json::Value> {
        let (status, body) = self.get(&format!("/v1/services/{service}/health")).await;
        if status == 404 {
            return None;
        }
        assert_eq!(status, 200, "{body}");
        body["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["instance_id"] == instance.to_string())
            .cloned()
    }
}

/// An instance of service `web` in `prod`, release 1.
pub fn instance(service: ServiceId) -> InstanceRef {
    InstanceRef {
        instance_id: InstanceId::new(),
        service_id: service,
        service_name: "web".into(),
        environment: "prod".into(),
        release: 1,
    }
}

/// A fast HTTP check: every 100 ms, 300 ms timeout.
pub fn fast_check() -> HealthCheck {
    HealthCheck {
        interval_ms: 100,
        timeout_ms: 300,
        failure_threshold: 3,
        success_threshold: 1,
        grace_seconds: 0,
        ..HealthCheck::default()
    }
}

pub fn started(
    instance: &InstanceRef,
    address: &str,
    check: HealthCheck,
    restarts: u32,
) -> InstanceStarted {
    InstanceStarted {
        instance: instance.clone(),
        address: address.to_owned(),
        target: "process".into(),
        health_check: check,
        restarts,
        at: Utc::now(),
    }
}

pub fn exited(instance: &InstanceRef, restarts: u32, exit: &str) -> InstanceExited {
    InstanceExited {
        instance: instance.clone(),
        exit: exit.to_owned(),
        restarts,
        restart_in_ms: 1000,
        crash_loop: false,
        last_lines: vec![],
        at: Utc::now(),
    }
}

/// The next health verdict on `instance` within `timeout`, skipping other instances'.
pub async fn next_health(
    consumer: &StreamConsumer,
    instance: InstanceId,
    timeout: Duration,
) -> Option<InstanceHealthChanged> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let m = slipway_testkit::next_of_type(consumer, InstanceHealthChanged::TYPE, left).await?;
        let data: InstanceHealthChanged = serde_json::from_slice(m.payload().unwrap()).unwrap();
        if data.instance.instance_id == instance {
            assert_eq!(
                slipway_testkit::header(&m, "ce_source").as_deref(),
                Some(sources::MONITOR)
            );
            assert_eq!(
                m.key(),
                Some(data.instance.service_id.to_string().as_bytes())
            );
            return Some(data);
        }
    }
}

pub const WAIT: Duration = Duration::from_secs(30);
