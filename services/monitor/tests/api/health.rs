use std::time::Duration;

use slipway_events::deploy::{Health, HealthCheck, InstanceStopped, ProbeKind};
use slipway_ids::ServiceId;
use slipway_testkit::wait_until;

use crate::backend::Backend;
use crate::helpers::{
    WAIT, exited, fast_check, instance, next_health, spawn_app, spawn_with, started,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_probes_turn_healthy_then_unhealthy_after_the_failure_threshold() {
    let app = spawn_app().await;
    let events = app.instances_consumer();
    let backend = Backend::start(200).await;
    let service = ServiceId::new();
    let i = instance(service);
    app.publish(
        service,
        i.instance_id,
        &started(&i, &backend.address, fast_check(), 0),
    )
    .await;

    let healthy = next_health(&events, i.instance_id, WAIT)
        .await
        .expect("healthy");
    assert_eq!(healthy.health, Health::Healthy);
    assert_eq!(healthy.check, "http GET /healthz");
    assert_eq!(healthy.detail, "HTTP 200");
    assert_eq!(healthy.restarts, 0);
    assert_eq!(healthy.instance, i);

    let before = backend.hits();
    backend.set(500);
    let unhealthy = next_health(&events, i.instance_id, WAIT)
        .await
        .expect("unhealthy");
    assert_eq!(unhealthy.health, Health::Unhealthy);
    assert_eq!(unhealthy.detail, "HTTP 500");
    assert!(
        backend.hits() - before >= 3,
        "declared unhealthy after {} failing probes; the threshold is 3",
        backend.hits() - before
    );

    // Recovery, and the API shows the current verdict.
    backend.set(204);
    let again = next_health(&events, i.instance_id, WAIT)
        .await
        .expect("healthy again");
    assert_eq!(
        (again.health, again.detail.as_str()),
        (Health::Healthy, "HTTP 204")
    );
    let shown = app.health_of("web", i.instance_id).await.unwrap();
    assert_eq!(shown["health"], "healthy");
    assert_eq!(shown["detail"], "HTTP 204");
    assert_eq!(shown["address"], backend.address);
    assert_eq!(shown["environment"], "prod");
    assert_eq!(shown["release"], 1);
    assert_eq!(shown["check"], "http GET /healthz");
    assert!(shown["since"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_during_the_grace_period_do_not_make_a_starting_instance_unhealthy() {
    let app = spawn_app().await;
    let events = app.instances_consumer();
    let service = ServiceId::new();

    // A slow starter: failing at first, answering once the test says so, within its grace.
    let slow = Backend::start(503).await;
    let check = HealthCheck {
        failure_threshold: 1,
        grace_seconds: 600,
        ..fast_check()
    };
    let s = instance(service);
    app.publish(
        service,
        s.instance_id,
        &started(&s, &slow.address, check, 0),
    )
    .await;
    assert!(
        wait_until(WAIT, || async { slow.hits() >= 5 }).await,
        "the slow starter is probed"
    );
    assert_eq!(
        app.health_of("web", s.instance_id).await.unwrap()["health"],
        "starting"
    );
    slow.set(200);
    // What the probes saw while starting is announced once (not per probe), so a rollout
    // waiting on the instance can say why; the next verdict is healthy.
    let first = next_health(&events, s.instance_id, WAIT)
        .await
        .expect("a verdict");
    assert_eq!(
        (first.health, first.detail.as_str()),
        (Health::Starting, "HTTP 503"),
    );
    let second = next_health(&events, s.instance_id, WAIT)
        .await
        .expect("a verdict");
    assert_eq!(
        (second.health, second.detail.as_str()),
        (Health::Healthy, "HTTP 200"),
        "a slow starter is never unhealthy within its grace"
    );

    // Once a short grace is over, failures count.
    let broken = Backend::start(503).await;
    let check = HealthCheck {
        failure_threshold: 2,
        grace_seconds: 1,
        ..fast_check()
    };
    let b = instance(service);
    let sent = std::time::Instant::now();
    app.publish(
        service,
        b.instance_id,
        &started(&b, &broken.address, check, 0),
    )
    .await;
    let starting = next_health(&events, b.instance_id, WAIT)
        .await
        .expect("a verdict");
    assert_eq!(starting.health, Health::Starting);
    let verdict = next_health(&events, b.instance_id, WAIT)
        .await
        .expect("a verdict");
    assert_eq!(
        (verdict.health, verdict.detail.as_str()),
        (Health::Unhealthy, "HTTP 503")
    );
    assert!(
        sent.elapsed() >= Duration::from_secs(1),
        "not before the grace ended"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_probes_connect_and_failures_are_described() {
    let app = spawn_app().await;
    let events = app.instances_consumer();
    let service = ServiceId::new();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let tcp = HealthCheck {
        kind: ProbeKind::Tcp,
        failure_threshold: 1,
        ..fast_check()
    };
    let t = instance(service);
    app.publish(service, t.instance_id, &started(&t, &address, tcp, 0))
        .await;
    let up = next_health(&events, t.instance_id, WAIT)
        .await
        .expect("healthy");
    assert_eq!(
        (up.health, up.check.as_str(), up.detail.as_str()),
        (Health::Healthy, "tcp connect", "connected")
    );
    drop(listener);
    let down = next_health(&events, t.instance_id, WAIT)
        .await
        .expect("unhealthy");
    assert_eq!(
        (down.health, down.detail.as_str()),
        (Health::Unhealthy, "connection refused")
    );

    // An HTTP server that accepts connections but never answers: the probe times out.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let h = instance(service);
    let check = HealthCheck {
        failure_threshold: 1,
        timeout_ms: 200,
        ..fast_check()
    };
    app.publish(
        service,
        h.instance_id,
        &started(&h, &silent.local_addr().unwrap().to_string(), check, 0),
    )
    .await;
    let hung = next_health(&events, h.instance_id, WAIT)
        .await
        .expect("unhealthy");
    assert_eq!(
        (hung.health, hung.detail.as_str()),
        (Health::Unhealthy, "timed out after 200 ms")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exits_are_unhealthy_unless_stale_and_a_restart_is_probed_anew() {
    let app = spawn_app().await;
    let events = app.instances_consumer();
    let backend = Backend::start(200).await;
    let service = ServiceId::new();
    let i = instance(service);
    app.publish(
        service,
        i.instance_id,
        &started(&i, &backend.address, fast_check(), 1),
    )
    .await;
    let healthy = next_health(&events, i.instance_id, WAIT)
        .await
        .expect("healthy");
    assert_eq!((healthy.health, healthy.restarts), (Health::Healthy, 1));

    // An exit of the incarnation before (restarts 0) arrives late: it changes nothing.
    app.publish(service, i.instance_id, &exited(&i, 0, "exit code 2"))
        .await;
    app.publish(service, i.instance_id, &exited(&i, 1, "exit code 1"))
        .await;
    let verdict = next_health(&events, i.instance_id, WAIT)
        .await
        .expect("unhealthy");
    assert_eq!(
        (verdict.health, verdict.detail.as_str(), verdict.restarts),
        (Health::Unhealthy, "exit code 1", 1),
        "the first verdict after the stale exit is about the current incarnation's exit"
    );
    let shown = app.health_of("web", i.instance_id).await.unwrap();
    assert_eq!(
        (shown["health"].as_str(), shown["detail"].as_str()),
        (Some("unhealthy"), Some("exit code 1"))
    );

    // The exited incarnation is no longer probed.
    let hits = backend.hits();
    assert!(
        !wait_until(Duration::from_millis(600), || async {
            backend.hits() > hits + 1
        })
        .await,
        "an exited incarnation is not probed"
    );

    // The restart (restarts 2) starts over in `starting` and becomes healthy.
    app.publish(
        service,
        i.instance_id,
        &started(&i, &backend.address, fast_check(), 2),
    )
    .await;
    let back = next_health(&events, i.instance_id, WAIT)
        .await
        .expect("healthy");
    assert_eq!((back.health, back.restarts), (Health::Healthy, 2));

    // Stopped: forgotten, and no longer probed.
    app.publish(
        service,
        i.instance_id,
        &InstanceStopped {
            instance: i.clone(),
            reason: "scaled down".into(),
            at: chrono::Utc::now(),
        },
    )
    .await;
    assert!(
        wait_until(WAIT, || async {
            app.health_of("web", i.instance_id).await.is_none()
        })
        .await,
        "a stopped instance is forgotten"
    );
    let hits = backend.hits();
    assert!(
        !wait_until(Duration::from_millis(600), || async {
            backend.hits() > hits + 1
        })
        .await,
        "a stopped instance is not probed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_monitor_resumes_probing_known_instances() {
    let app = spawn_app().await;
    let events = app.instances_consumer();
    let backend = Backend::start(200).await;
    let service = ServiceId::new();
    let i = instance(service);
    app.publish(
        service,
        i.instance_id,
        &started(&i, &backend.address, fast_check(), 0),
    )
    .await;
    assert_eq!(
        next_health(&events, i.instance_id, WAIT)
            .await
            .unwrap()
            .health,
        Health::Healthy
    );
    let settings = app.stop().await;

    backend.set(503);
    let hits = backend.hits();
    let app = spawn_with(settings).await;
    let down = next_health(&events, i.instance_id, WAIT)
        .await
        .expect("unhealthy");
    assert_eq!(
        (down.health, down.detail.as_str()),
        (Health::Unhealthy, "HTTP 503")
    );
    assert!(backend.hits() > hits);
    assert_eq!(
        app.health_of("web", i.instance_id).await.unwrap()["health"],
        "unhealthy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_api_filters_and_answers_problems() {
    let app = spawn_app().await;
    let backend = Backend::start(200).await;
    let service = ServiceId::new();
    let prod = instance(service);
    let mut staging = instance(service);
    staging.environment = "staging".into();
    for i in [&prod, &staging] {
        app.publish(
            service,
            i.instance_id,
            &started(i, &backend.address, fast_check(), 0),
        )
        .await;
    }
    assert!(
        wait_until(WAIT, || async {
            let (_, body) = app.get("/v1/services/web/health").await;
            body["items"].as_array().is_some_and(|a| a.len() == 2)
        })
        .await
    );
    let (status, body) = app.get("/v1/services/web/health?environment=staging").await;
    assert_eq!(status, 200);
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["instance_id"], staging.instance_id.to_string());

    let (status, body) = app.get("/v1/services/nope/health").await;
    assert_eq!(status, 404);
    assert!(body["detail"].as_str().unwrap().contains("nope"));
    let (status, body) = app.get("/v1/services/web/health?environment=").await;
    assert_eq!(status, 422);
    assert_eq!(body["errors"][0]["field"], "environment");
    let (status, body) = app.get("/v1/services/web/health?env=prod").await;
    assert_eq!(status, 400);
    assert!(body["detail"].as_str().unwrap().contains("env"), "{body}");
}
