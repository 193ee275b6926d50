//! Instance facts published on the real broker become the instances the API answers.

use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use slipway_events::deploy::{
    EnvironmentInstances, Health, HealthCheck, HeartbeatInstance, InstanceDraining, InstanceExited,
    InstanceHealthChanged, InstanceRef, InstanceStarted, InstanceState, InstanceStopped,
    InstancesHeartbeat, InstancesHeartbeatV2, ReleaseWeight, TrafficChanged,
};
use slipway_events::slipway::sources;
use slipway_events::{CloudEvent, EventData};
use slipway_ids::{InstanceId, ReplicaId, ServiceId};
use slipway_kafka::EventProducer;

use crate::helpers::{TestApp, spawn_app};

/// The address the facts give instance `id`.
pub fn address_of(id: InstanceId) -> String {
    format!(
        "127.0.0.1:{}",
        20_000 + (id.as_uuid().as_u128() % 10_000) as u16
    )
}

/// Publishes the deployer's and monitor's facts about one service, as they would.
pub struct Facts {
    producer: EventProducer,
    pub service_id: ServiceId,
    pub service: String,
}

impl Facts {
    /// Registers service `name` through the API and prepares a producer.
    pub async fn new(app: &TestApp, name: &str) -> Self {
        let res = app
            .create(json!({"name": name, "repository": format!("https://git.example/{name}.git")}))
            .await;
        assert_eq!(res.status(), 201);
        let service: Value = res.json().await.unwrap();
        Self {
            producer: slipway_testkit::signing::producer(&app.settings.kafka),
            service_id: service["id"].as_str().unwrap().parse().unwrap(),
            service: name.to_owned(),
        }
    }

    fn at(&self, id: InstanceId, env: &str, release: i32) -> InstanceRef {
        InstanceRef {
            instance_id: id,
            service_id: self.service_id,
            service_name: self.service.clone(),
            environment: env.to_owned(),
            release,
        }
    }

    pub async fn send<D: EventData>(&self, source: &str, data: &D) {
        let event = CloudEvent::new(source, self.service_id, None, data).unwrap();
        self.producer.publish(D::TOPIC, &event).await.unwrap();
    }

    pub async fn started(&self, id: InstanceId, env: &str, release: i32, restarts: u32) {
        let data = InstanceStarted {
            instance: self.at(id, env, release),
            address: address_of(id),
            target: "process".into(),
            health_check: HealthCheck::default(),
            restarts,
            at: Utc::now(),
        };
        self.send(sources::DEPLOYER, &data).await;
    }

    pub async fn health(&self, id: InstanceId, env: &str, health: Health, restarts: u32) {
        let data = InstanceHealthChanged {
            instance: self.at(id, env, 1),
            health,
            check: "http GET /healthz".into(),
            detail: format!("verdict on incarnation {restarts}"),
            restarts,
            at: Utc::now(),
        };
        self.send(sources::MONITOR, &data).await;
    }

    pub async fn exited(&self, id: InstanceId, env: &str, restarts: u32) {
        let data = InstanceExited {
            instance: self.at(id, env, 1),
            exit: "exit code 1".into(),
            restarts,
            restart_in_ms: 100,
            crash_loop: false,
            last_lines: vec!["boom".into()],
            at: Utc::now(),
        };
        self.send(sources::DEPLOYER, &data).await;
    }

    pub async fn draining(&self, id: InstanceId, env: &str) {
        let data = InstanceDraining {
            instance: self.at(id, env, 1),
            at: Utc::now(),
        };
        self.send(sources::DEPLOYER, &data).await;
    }

    pub async fn stopped(&self, id: InstanceId, env: &str) {
        let data = InstanceStopped {
            instance: self.at(id, env, 1),
            reason: "scaled down".into(),
            at: Utc::now(),
        };
        self.send(sources::DEPLOYER, &data).await;
    }

    /// A heartbeat of owner `deployer-test` listing `ids` as running instances of release 1
    /// (health unknown), at the addresses [`Facts::started`] gives them.
    pub async fn heartbeat(&self, env: &str, ids: &[InstanceId], interval_ms: u64) {
        let records = ids.iter().map(|id| self.record(*id, None)).collect();
        self.heartbeat_of("deployer-test", env, records, interval_ms)
            .await;
    }

    /// What a deployer's heartbeat says of instance `id` (release 1, running).
    pub fn record(&self, id: InstanceId, health: Option<Health>) -> HeartbeatInstance {
        HeartbeatInstance {
            instance_id: id,
            release: 1,
            address: address_of(id),
            target: "process".into(),
            state: InstanceState::Running,
            health,
            health_check: HealthCheck::default(),
            detail: None,
            restarts: 0,
            started_at: Utc::now(),
        }
    }

    /// A heartbeat of `owner` for `env` with whole `records`.
    pub async fn heartbeat_of(
        &self,
        owner: &str,
        env: &str,
        records: Vec<HeartbeatInstance>,
        interval_ms: u64,
    ) {
        self.heartbeat_for(owner, &[(env, records)], interval_ms)
            .await;
    }

    /// A heartbeat of `owner` listing each environment with its whole records (none: empty).
    pub async fn heartbeat_for(
        &self,
        owner: &str,
        environments: &[(&str, Vec<HeartbeatInstance>)],
        interval_ms: u64,
    ) {
        let data = InstancesHeartbeat {
            service_id: self.service_id,
            service_name: self.service.clone(),
            owner: ReplicaId::from_name(owner),
            environments: environments
                .iter()
                .map(|(env, records)| EnvironmentInstances {
                    environment: (*env).to_owned(),
                    instances: records.clone(),
                })
                .collect(),
            interval_ms,
            at: Utc::now(),
        };
        self.send(sources::DEPLOYER, &data).await;
    }

    /// A version-2 heartbeat (one environment), as a deployer not yet upgraded sends it.
    pub async fn heartbeat_v2(&self, env: &str, records: Vec<HeartbeatInstance>, interval_ms: u64) {
        let data = InstancesHeartbeatV2 {
            service_id: self.service_id,
            service_name: self.service.clone(),
            environment: env.to_owned(),
            owner: ReplicaId::from_name("deployer-old"),
            instances: records,
            interval_ms,
            at: Utc::now(),
        };
        self.send(sources::DEPLOYER, &data).await;
    }

    pub async fn traffic(&self, env: &str, weights: &[(i32, u32)]) {
        let data = TrafficChanged {
            service_id: self.service_id,
            service_name: self.service.clone(),
            environment: env.to_owned(),
            deployment_id: None,
            weights: weights
                .iter()
                .map(|(release, weight)| ReleaseWeight {
                    release: *release,
                    weight: *weight,
                })
                .collect(),
            at: Utc::now(),
        };
        self.send(sources::DEPLOYER, &data).await;
    }
}

/// `GET path` answered 200: its body, after checking the index header matches the body.
pub async fn get(app: &TestApp, path: &str) -> Value {
    let res = app
        .client
        .get(format!("{}{path}", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "GET {path}");
    let header: i64 = res.headers()["x-slipway-index"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["index"], header, "header and body name one index");
    body
}

/// Polls `GET path` until `check` holds (30 s deadline); the body that satisfied it.
pub async fn eventually(app: &TestApp, path: &str, check: impl Fn(&Value) -> bool) -> Value {
    let check = &check;
    let held = slipway_testkit::wait_until(Duration::from_secs(30), || async move {
        check(&get(app, path).await)
    })
    .await;
    let last = get(app, path).await;
    assert!(
        held,
        "GET {path} never satisfied the condition; last: {last:#}"
    );
    last
}

/// The item with `id` in an instances answer.
pub fn item(body: &Value, id: InstanceId) -> Option<&Value> {
    body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == id.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_follow_their_lifecycle_and_ignore_stale_verdicts() {
    let app = spawn_app().await;
    let facts = Facts::new(&app, "hello").await;
    let path = "/v1/services/hello/instances";
    let (a, b) = (InstanceId::new(), InstanceId::new());

    facts.started(a, "prod", 1, 0).await;
    facts.started(b, "prod", 1, 0).await;
    let body = eventually(&app, path, |b| b["items"].as_array().unwrap().len() == 2).await;
    let first = item(&body, a).unwrap();
    assert_eq!(first["environment"], "prod");
    assert_eq!(first["release"], 1);
    assert_eq!(first["target"], "process");
    assert_eq!(first["health"], "starting");
    assert_eq!(first["state"], "running");
    assert_eq!(first["restarts"], 0);
    assert_eq!(first["check"], "http GET /healthz");
    assert_eq!(first["routable"], false, "starting is not routable");
    assert!(first["address"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(first["started_at"].is_string() && first["last_seen"].is_string());

    facts.health(a, "prod", Health::Healthy, 0).await;
    let body = eventually(&app, path, |b| item(b, a).unwrap()["health"] == "healthy").await;
    assert_eq!(item(&body, a).unwrap()["routable"], true);

    // A crash takes it down; the restart (same id, higher count) starts over as `starting`.
    facts.exited(a, "prod", 0).await;
    let body = eventually(&app, path, |b| item(b, a).unwrap()["state"] == "down").await;
    let down = item(&body, a).unwrap();
    assert_eq!(down["detail"], "exit code 1");
    assert_eq!(down["routable"], false);
    facts.started(a, "prod", 1, 1).await;
    let body = eventually(&app, path, |b| item(b, a).unwrap()["restarts"] == 1).await;
    let restarted = item(&body, a).unwrap();
    assert_eq!(restarted["health"], "starting");
    assert_eq!(restarted["state"], "running");

    // A late verdict on the crashed incarnation must not make the new one routable. The verdict
    // on `b` follows it on the same partition, so once `b` is healthy the stale one was handled.
    facts.health(a, "prod", Health::Healthy, 0).await;
    facts.health(b, "prod", Health::Healthy, 0).await;
    let body = eventually(&app, path, |x| item(x, b).unwrap()["health"] == "healthy").await;
    assert_eq!(
        item(&body, a).unwrap()["health"],
        "starting",
        "stale verdict applied"
    );
    facts.health(a, "prod", Health::Healthy, 1).await;
    eventually(&app, path, |b| item(b, a).unwrap()["routable"] == true).await;

    // Draining keeps the row (health unchanged) but out of rotation; stopping removes it.
    facts.draining(b, "prod").await;
    let body = eventually(&app, path, |x| item(x, b).unwrap()["state"] == "draining").await;
    assert_eq!(item(&body, b).unwrap()["health"], "healthy");
    assert_eq!(item(&body, b).unwrap()["routable"], false);
    facts.stopped(b, "prod").await;
    eventually(&app, path, |x| item(x, b).is_none()).await;

    // Environments filter.
    let c = InstanceId::new();
    facts.started(c, "staging", 2, 0).await;
    let staging = eventually(&app, &format!("{path}?environment=staging"), |x| {
        x["items"].as_array().unwrap().len() == 1
    })
    .await;
    assert_eq!(staging["items"][0]["release"], 2);
    let prod = get(&app, &format!("{path}?environment=prod")).await;
    let ids: Vec<&Value> = prod["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| &i["id"])
        .collect();
    assert_eq!(ids, vec![&json!(a.to_string())]);

    let res = app
        .client
        .get(format!("{}/v1/services/nope/instances", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let problem: Value = res.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("nope"),
        "{problem}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_facts_apply_once_and_heartbeats_keep_the_index() {
    let app = spawn_app().await;
    let facts = Facts::new(&app, "hello").await;
    let path = "/v1/services/hello/instances";
    let a = InstanceId::new();
    facts.started(a, "prod", 1, 0).await;
    let before = eventually(&app, path, |b| item(b, a).is_some()).await;
    let index = before["index"].as_i64().unwrap();

    // A heartbeat moves `last_seen` but not the index; a redelivered event changes nothing.
    facts.heartbeat("prod", &[a], 5_000).await;
    eventually(&app, path, |b| {
        item(b, a).unwrap()["last_seen"] != item(&before, a).unwrap()["last_seen"]
    })
    .await;
    let event = CloudEvent::new(
        sources::MONITOR,
        facts.service_id,
        None,
        &InstanceHealthChanged {
            instance: facts.at(a, "prod", 1),
            health: Health::Unhealthy,
            check: "http GET /healthz".into(),
            detail: "HTTP 500".into(),
            restarts: 0,
            at: Utc::now(),
        },
    )
    .unwrap();
    facts
        .producer
        .publish(InstanceHealthChanged::TOPIC, &event)
        .await
        .unwrap();
    let after = eventually(&app, path, |b| item(b, a).unwrap()["health"] == "unhealthy").await;
    assert_eq!(item(&after, a).unwrap()["detail"], "HTTP 500");
    assert_eq!(
        after["index"].as_i64().unwrap(),
        index + 1,
        "one bump for the verdict, none for the heartbeat"
    );
    facts
        .producer
        .publish(InstanceHealthChanged::TOPIC, &event)
        .await
        .unwrap();
    // Something after it on the same partition: once applied, the duplicate was handled.
    facts.traffic("prod", &[(1, 100)]).await;
    let last = eventually(&app, "/v1/discovery", |b| {
        b["routes"][0]["weights"] == json!([{"release": 1, "weight": 100}])
    })
    .await;
    assert_eq!(
        last["index"].as_i64().unwrap(),
        index + 2,
        "the duplicate bumped nothing"
    );
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox WHERE event_id = $1")
        .bind(event.id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(applied, 1);
}
