//! Commands over Kafka: requests that cannot be honoured end `failed` with the reason (and say
//! so on the deployments topic), redeliveries change nothing, a queued deployment can be
//! cancelled before it starts.

use chrono::Utc;
use rdkafka::Message;
use rdkafka::consumer::StreamConsumer;
use rdkafka::message::OwnedMessage;
use serde_json::Value;
use slipway_events::deploy::{
    DeployCancelRequested, DeployKind, DeploymentFinished, DeploymentStarted,
};
use slipway_events::slipway::sources;
use slipway_events::{EventData, Topic};
use slipway_ids::{DeploymentId, ServiceId};
use slipway_testkit::{header, next_of_type, plain_consumer, wait_until};

use crate::helpers::{SETTLE, TestApp, problem, request, spawn_app};

fn deployments_topic(app: &TestApp) -> StreamConsumer {
    let topic = app.settings.kafka.topics().name(Topic::Deployments);
    plain_consumer(&app.settings.kafka.bootstrap_servers, &[&topic])
}

/// The next "deployment finished" record (its data parsed).
async fn next_finished(consumer: &StreamConsumer) -> (OwnedMessage, Value) {
    let m = next_of_type(consumer, DeploymentFinished::TYPE, SETTLE)
        .await
        .expect("a deployment finished event is published");
    let data = serde_json::from_slice(m.payload().unwrap()).unwrap();
    (m, data)
}

fn reason(d: &Value) -> (&str, &str) {
    (
        d["reason"]["check"].as_str().unwrap_or_default(),
        d["reason"]["message"].as_str().unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_an_environment_with_nothing_deployed_fails_and_says_so_on_the_topic() {
    let app = spawn_app().await;
    let finished = deployments_topic(&app);
    let service = ServiceId::new();
    let mut r = request(DeployKind::Scale, service, "hello", "staging", None);
    r.replicas = Some(2);
    let id = app.command(&r).await;

    let d = app.ended(id).await;
    assert_eq!(d["status"], "failed", "{d}");
    assert_eq!(d["kind"], "scale");
    assert_eq!(d["service_id"], service.to_string());
    assert_eq!(d["requested_replicas"], 2);
    assert_eq!(d["actor"], "api-test");
    assert_eq!(d["url"], format!("/v1/deployments/{id}"));
    assert!(d["started_at"].is_null(), "never started: {d}");
    assert!(d["finished_at"].is_string(), "{d}");
    assert!(d["current_step"].is_null(), "{d}");
    let (check, message) = reason(&d);
    assert_eq!(check, "request", "{d}");
    assert!(message.contains("nothing is deployed"), "{d}");

    // A refused request leaves no desired state behind.
    problem(
        app.get("/v1/services/hello/environments/staging/state")
            .await,
        404,
    )
    .await;

    let (m, data) = next_finished(&finished).await;
    assert_eq!(m.key(), Some(service.to_string().as_bytes()));
    assert_eq!(header(&m, "ce_source").as_deref(), Some(sources::DEPLOYER));
    assert_eq!(header(&m, "ce_subject"), Some(id.to_string()));
    assert_eq!(data["deployment_id"], id.to_string());
    assert_eq!(data["kind"], "scale");
    assert_eq!(data["environment"], "staging");
    assert_eq!(data["status"], "failed");
    assert_eq!(data["reason"], d["reason"]);
    assert!(data["running_release"].is_null(), "{data}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_command_creates_one_deployment() {
    let app = spawn_app().await;
    let service = ServiceId::new();
    let r = request(DeployKind::Scale, service, "hello", "staging", None);
    let event = app
        .publish(sources::GATEWAY, service, &r.deployment_id.to_string(), &r)
        .await;
    app.publish_again(Topic::Commands, &event).await;
    // Same key, same partition: once a later command was applied, both copies were handled.
    let later = request(DeployKind::Scale, service, "hello", "staging", None);
    let later_id = app.command(&later).await;
    assert_eq!(app.ended(later_id).await["status"], "failed");
    assert_eq!(app.ended(r.deployment_id).await["status"], "failed");

    let ids: Vec<Value> = app
        .history("hello", "staging")
        .await
        .iter()
        .map(|d| d["id"].clone())
        .collect();
    assert_eq!(
        ids,
        [later_id.to_string(), r.deployment_id.to_string()],
        "newest first, the redelivered command once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploying_what_the_registry_does_not_have_fails_with_its_reason() {
    let app = spawn_app().await;
    app.registry.add_release("hello", 3, &["staging"]);
    let service = ServiceId::new();

    // A release the registry answers 404 for.
    let unknown = request(DeployKind::Deploy, service, "hello", "staging", Some(7));
    // No release at all.
    let none = request(DeployKind::Deploy, service, "hello", "qa", None);
    // A release that exists, to an environment the service does not have.
    let nowhere = request(DeployKind::Deploy, service, "hello", "nowhere", Some(3));
    for r in [&unknown, &none, &nowhere] {
        app.command(r).await;
    }

    let d = app.ended(unknown.deployment_id).await;
    assert_eq!(d["status"], "failed", "{d}");
    assert_eq!(d["requested_release"], 7);
    let (check, message) = reason(&d);
    assert_eq!(check, "request", "{d}");
    assert!(message.contains("release 7"), "{d}");
    assert!(app.registry.saw("/v1/services/hello/releases/7"));

    let d = app.ended(none.deployment_id).await;
    assert_eq!(d["status"], "failed", "{d}");
    assert_eq!(reason(&d), ("request", "the request names no release"));

    let d = app.ended(nowhere.deployment_id).await;
    assert_eq!(d["status"], "failed", "{d}");
    let (check, message) = reason(&d);
    assert_eq!(check, "request", "{d}");
    assert!(message.contains("no environment `nowhere`"), "{d}");
    assert!(app.registry.saw("/v1/services/hello/releases/3"));
    assert!(app.registry.saw("/v1/services/hello/environments"));

    for (env, id) in [
        ("staging", unknown.deployment_id),
        ("qa", none.deployment_id),
        ("nowhere", nowhere.deployment_id),
    ] {
        let history = app.history("hello", env).await;
        assert_eq!(history.len(), 1, "{env}: {history:?}");
        assert_eq!(history[0]["id"], id.to_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_queued_behind_another_can_be_cancelled_before_it_starts() {
    let app = spawn_app().await;
    let finished = deployments_topic(&app);
    let service = ServiceId::new();
    // The first deployment stays in its start (the registry holds its answer).
    app.registry.hold("hello", 5);
    let first = request(DeployKind::Deploy, service, "hello", "staging", Some(5));
    app.command(&first).await;
    assert!(
        wait_until(SETTLE, || async {
            app.registry.saw("/v1/services/hello/releases/5")
        })
        .await,
        "the first deployment never asked for its release"
    );

    let second = request(DeployKind::Scale, service, "hello", "staging", None);
    app.command(&second).await;
    let cancel = DeployCancelRequested {
        deployment_id: second.deployment_id,
        service_id: service,
        project: None,
        actor: Some("api-test".into()),
        requested_at: Utc::now(),
    };
    app.publish(
        sources::GATEWAY,
        service,
        &second.deployment_id.to_string(),
        &cancel,
    )
    .await;
    let d = app
        .deployment_when(second.deployment_id, |d| d["cancel_requested"] == true)
        .await;
    assert_eq!(d["status"], "queued", "waits behind the first: {d}");
    let d = app.deployment(first.deployment_id).await.unwrap();
    assert_eq!(d["status"], "queued", "{d}");

    // A cancel for a deployment nobody asked for changes nothing (and blocks nothing).
    let stray = DeployCancelRequested {
        deployment_id: DeploymentId::new(),
        ..cancel.clone()
    };
    app.publish(sources::GATEWAY, service, "stray", &stray)
        .await;

    app.registry.open_gate();
    let d = app.ended(first.deployment_id).await;
    assert_eq!(d["status"], "failed", "{d}");
    assert!(reason(&d).1.contains("release 5"), "{d}");

    let d = app.ended(second.deployment_id).await;
    assert_eq!(d["status"], "cancelled", "{d}");
    assert_eq!(reason(&d).0, "cancelled", "{d}");
    assert!(d["started_at"].is_null(), "never started: {d}");
    assert!(app.deployment(stray.deployment_id).await.is_none());

    // Both endings are announced, in order (same key, same partition).
    let mut ends = Vec::new();
    for _ in 0..2 {
        let (_, data) = next_finished(&finished).await;
        ends.push((
            data["deployment_id"].as_str().unwrap().to_owned(),
            data["status"].as_str().unwrap().to_owned(),
        ));
    }
    assert_eq!(
        ends,
        [
            (first.deployment_id.to_string(), "failed".to_owned()),
            (second.deployment_id.to_string(), "cancelled".to_owned()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_cannot_be_fetched_fails_its_first_deployment_and_nothing_runs() {
    let app = spawn_app().await;
    let events = deployments_topic(&app);
    app.registry.add_release("hello", 3, &["staging"]);
    let service = ServiceId::new();
    let r = request(DeployKind::Deploy, service, "hello", "staging", Some(3));
    let id = app.command(&r).await;

    let d = app.ended(id).await;
    assert_eq!(d["status"], "failed", "{d}");
    let (check, message) = reason(&d);
    assert_eq!(check, "artifact", "{d}");
    assert!(message.contains("127.0.0.1:1/hello@sha256:"), "{d}");
    // It started (release, config from the release, default replicas) and then went back.
    assert!(d["started_at"].is_string(), "{d}");
    assert_eq!(d["release"], 3);
    assert_eq!(d["config_version"], 1);
    assert_eq!(d["replicas"], 3);
    assert!(d["from_release"].is_null(), "{d}");
    assert!(!d["steps"].as_array().unwrap().is_empty(), "{d}");
    assert!(!d["rollback_steps"].as_array().unwrap().is_empty(), "{d}");

    let res = app
        .get("/v1/services/hello/environments/staging/state")
        .await;
    assert_eq!(res.status(), 200);
    let state: Value = res.json().await.unwrap();
    assert!(state["state"]["release"].is_null(), "{state}");
    assert_eq!(state["state"]["replicas"], 0, "{state}");
    assert_eq!(state["instances"], serde_json::json!([]), "{state}");

    let started = next_of_type(&events, DeploymentStarted::TYPE, SETTLE)
        .await
        .expect("a deployment started event is published");
    let data: Value = serde_json::from_slice(started.payload().unwrap()).unwrap();
    assert_eq!(data["deployment_id"], id.to_string());
    assert_eq!(data["release"], 3);
    let (_, data) = next_finished(&events).await;
    assert_eq!(data["deployment_id"], id.to_string());
    assert_eq!(data["status"], "failed");
    assert_eq!(data["reason"]["check"], "artifact");
    assert!(data["running_release"].is_null(), "{data}");
}
