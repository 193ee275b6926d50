//! The router against a real registry (real PostgreSQL and broker) that is stopped mid-test:
//! it keeps routing to a real upstream on its last table, says how old that table is, and
//! the registry knew which table version it served.

use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use slipway_edge::{Edge, EdgeSettings};
use slipway_events::deploy::{
    Health, HealthCheck, InstanceHealthChanged, InstanceRef, InstanceStarted,
};
use slipway_events::slipway::sources;
use slipway_events::{CloudEvent, EventData};
use slipway_ids::{InstanceId, ReplicaId, ServiceId};
use slipway_registry::{Application, Settings};
use slipway_testkit::identity::{ServiceCaller, client};
use slipway_testkit::wait_until;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::helpers::Backend;

const SETTLE: Duration = Duration::from_secs(45);

/// The value of gauge `name` on `metrics`.
fn gauge(metrics: &slipway_http::Metrics, name: &str) -> f64 {
    metrics
        .registry
        .gather()
        .iter()
        .find(|f| f.name() == name)
        .and_then(|f| f.get_metric().first().map(|m| m.get_gauge().get_value()))
        .unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_keeps_its_table_while_the_registry_is_down() {
    // A real registry.
    let base = slipway_testkit::base_settings("registry").await;
    let app = Application::build(Settings {
        base: base.clone(),
        secrets: slipway_registry::startup::SecretSettings {
            key: slipway_testkit::secrets_key().into(),
        },
        services: Default::default(),
    })
    .await
    .expect("registry starts");
    let registry = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));
    let gateway = client(ServiceCaller::Gateway);
    let res = gateway
        .post(format!("{registry}/v1/services"))
        .json(&json!({"name": "hello", "repository": "https://git.example/hello.git"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let service: Value = res.json().await.unwrap();
    let service_id: ServiceId = service["id"].as_str().unwrap().parse().unwrap();

    // A real upstream, announced the way the deployer and the monitor do.
    let backend = Backend::start("v1");
    let producer = slipway_testkit::signing::producer(&base.kafka);
    let instance = InstanceRef {
        instance_id: InstanceId::new(),
        service_id,
        service_name: "hello".into(),
        environment: "prod".into(),
        release: 1,
    };
    let started = InstanceStarted {
        instance: instance.clone(),
        address: backend.address.clone(),
        target: "process".into(),
        health_check: HealthCheck::default(),
        restarts: 0,
        at: Utc::now(),
    };
    let healthy = InstanceHealthChanged {
        instance,
        health: Health::Healthy,
        check: "http GET /healthz".into(),
        detail: "HTTP 200".into(),
        restarts: 0,
        at: Utc::now(),
    };
    let event = CloudEvent::new(sources::DEPLOYER, service_id, None, &started).unwrap();
    producer
        .publish(InstanceStarted::TOPIC, &event)
        .await
        .unwrap();
    let event = CloudEvent::new(sources::MONITOR, service_id, None, &healthy).unwrap();
    producer
        .publish(InstanceHealthChanged::TOPIC, &event)
        .await
        .unwrap();

    // The router, following the registry.
    let metrics = slipway_http::Metrics::new("gateway");
    let credential = slipway_testkit::identity::settings(ServiceCaller::Gateway).credential;
    let edge = Edge::new(
        &EdgeSettings {
            discovery_wait_seconds: 1,
            ..EdgeSettings::default()
        },
        &registry,
        &credential,
        &metrics.registry,
    )
    .unwrap()
    .with_router_id(ReplicaId::from_name("edge-outage"));
    let cancel = CancellationToken::new();
    let _stop_following = cancel.clone().drop_guard();
    tokio::spawn(edge.clone().follow_discovery(cancel.clone()));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let front = edge.serve(listener, None, cancel.clone()).unwrap();
    let port = front.port();
    tokio::spawn(front.wait());
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("http://127.0.0.1:{port}/apps/hello/prod/x");
    let get = || async { http.get(&url).send().await.unwrap() };

    let routed = wait_until(SETTLE, || async { get().await.status() == 200 }).await;
    assert!(routed, "the router never routed to the announced instance");
    let index = edge.table_index().unwrap();

    // The registry knows the version this router serves.
    let deployer = client(ServiceCaller::Deployer);
    let status_url = format!("{registry}/internal/v1/traffic/{service_id}/prod");
    let reported = wait_until(SETTLE, || async {
        let status: Value = deployer
            .get(&status_url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        status["routers"].as_array().unwrap().iter().any(|r| {
            r["router"] == "edge-outage"
                && r["applied"].as_u64() >= Some(index)
                && r["live"] == true
        })
    })
    .await;
    assert!(
        reported,
        "the registry never learnt the router's table version"
    );
    assert_eq!(
        gauge(&metrics, "slipway_edge_routing_table_age_seconds"),
        0.0
    );

    // The registry goes away.
    stop.send(()).unwrap();
    serving.await.unwrap().unwrap();
    let down = wait_until(Duration::from_secs(30), || async {
        http.get(format!("{registry}/healthz"))
            .send()
            .await
            .is_err()
    })
    .await;
    assert!(down, "the registry still answers");
    // The table is kept and grows old: its age shows once polls have failed for a while.
    let aged = wait_until(Duration::from_secs(30), || async {
        gauge(&metrics, "slipway_edge_routing_table_age_seconds") >= 1.0
    })
    .await;
    assert!(aged, "the table's age never showed the outage");
    for _ in 0..5 {
        let res = get().await;
        assert_eq!(
            res.status(),
            200,
            "the router stopped routing while discovery is down"
        );
        assert_eq!(res.headers()["x-backend"], "v1");
    }
    assert_eq!(edge.table_index(), Some(index), "the table was replaced");
}
