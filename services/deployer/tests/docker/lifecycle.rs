//! Start, reachability, environment and labels, limits and security options, logs, a
//! `docker kill` healed, a crash loop, stop with grace, a published port, an image without a
//! base refused, and a container that cannot reach the platform's loopback.

use std::time::Duration;

use slipway_deployer::target::docker::NO_BASE;
use slipway_deployer::target::{Target, TargetError};

use crate::support::*;

#[tokio::test]
async fn a_container_serves_is_healed_after_docker_kill_and_stops_with_grace() {
    let (settings, cleanup) = settings();
    let images = images().await;
    let (target, mut events) = connect(settings).await;
    assert_eq!(target.kind(), "docker");

    let spec = spec(&images.app);
    let id = spec.instance_id;
    let placement = target.start(spec).await.unwrap();
    assert_eq!(placement.port, 8080);
    assert!(placement.process.is_none());
    let env = env_of(&placement.address).await;
    assert_eq!(
        env["GREETING"], "hello-secret-value",
        "config reaches the instance"
    );
    assert_eq!(env["SLIPWAY_RELEASE"], "v3");
    assert_eq!(env["SLIPWAY_INSTANCE"], id.to_string());
    assert_eq!(env["PORT"], "8080");
    assert_eq!(env["FROM_IMAGE"], "yes", "the image's Env too");

    // What the engine was told.
    let container = container_of(&cleanup, id);
    let seen = inspect(&container);
    let labels = seen["Config"]["Labels"].as_object().unwrap();
    assert_eq!(labels["dev.slipway.instance"], id.to_string());
    assert_eq!(labels["dev.slipway.service"], "pytest");
    assert_eq!(labels["dev.slipway.environment"], "staging");
    assert_eq!(labels["dev.slipway.release"], "3");
    assert_eq!(labels["dev.slipway.replica"], "replica-test");
    let all_labels = serde_json::to_string(labels).unwrap();
    assert!(
        !all_labels.contains("hello-secret-value"),
        "no config in labels: {all_labels}"
    );
    let host = &seen["HostConfig"];
    assert_eq!(host["CapDrop"], serde_json::json!(["ALL"]));
    assert_eq!(
        host["SecurityOpt"],
        serde_json::json!(["no-new-privileges:true"])
    );
    assert_eq!(host["Privileged"], false);
    assert_eq!(host["ReadonlyRootfs"], true);
    assert!(host["Tmpfs"]["/tmp"].is_string(), "{}", host["Tmpfs"]);
    assert_eq!(host["NanoCpus"], 500_000_000);
    assert_eq!(host["Memory"], 128 * 1024 * 1024);
    assert_eq!(host["PidsLimit"], 512);
    assert_eq!(host["RestartPolicy"]["Name"], "no");
    assert_eq!(seen["Config"]["User"], "10001:10001");
    assert_eq!(running_instances(&cleanup), [id].into());
    assert_eq!(target.supervised(), [id].into());

    // Logs: both streams, numbered without gaps.
    events.line(id, "served /env").await;
    let lines = events.lines(id);
    assert!(lines.contains(&"listening on 8080".to_owned()), "{lines:?}");
    assert!(lines.contains(&"ready".to_owned()), "stderr too: {lines:?}");
    let mut expected = 0;
    for (first_seq, len) in events.batches(id) {
        assert_eq!(
            first_seq, expected,
            "batches follow each other without gaps"
        );
        expected += len as u64;
    }

    // `docker kill`: reported, then healed by Slipway (the engine's policy is "no").
    docker(&["kill", &container]);
    let (exit, restarts, crash_loop, last_lines) = events.exited(id).await;
    assert_eq!(exit, "killed by signal 9");
    assert_eq!((restarts, crash_loop), (0, false));
    assert!(
        last_lines.iter().any(|l| l.starts_with("served")),
        "{last_lines:?}"
    );
    let (address, restarts) = events.restarted(id).await;
    assert_eq!(restarts, 1);
    assert_eq!(env_of(&address).await["SLIPWAY_INSTANCE"], id.to_string());
    assert_eq!(
        container_of(&cleanup, id),
        container,
        "the same container, started again"
    );
    // The second run's lines continue the numbering (the first run's are not sent again).
    events.lines_equal(id, "listening on 8080", 2).await;
    events.lines_equal(id, "served /env", 2).await;
    let mut expected = 0;
    for (first_seq, len) in events.batches(id) {
        assert_eq!(
            first_seq,
            expected,
            "no line sent twice: {:?}",
            events.batches(id)
        );
        expected += len as u64;
    }

    // Stop with grace: SIGTERM reaches the program, the container is removed.
    target.stop(id, Duration::from_secs(5)).await.unwrap();
    events.pump();
    assert!(
        events.lines(id).contains(&"got SIGTERM".to_owned()),
        "{:?}",
        events.lines(id)
    );
    assert!(
        cleanup.containers(true).is_empty(),
        "the container is removed"
    );
    assert!(target.supervised().is_empty());
    // Stopping what does not run is no error.
    target.stop(id, Duration::from_secs(1)).await.unwrap();
}

#[tokio::test]
async fn a_crashing_container_is_restarted_until_it_counts_as_a_crash_loop() {
    let (mut settings, cleanup) = settings();
    settings.crash_loop_restarts = 3;
    let images = images().await;
    let (target, mut events) = connect(settings).await;
    let mut spec = spec(&images.app);
    spec.env.insert("CRASH".into(), "1".into());
    let id = spec.instance_id;
    target.start(spec).await.unwrap();

    let mut seen = Vec::new();
    loop {
        let (exit, restarts, crash_loop, last_lines) = events.exited(id).await;
        assert_eq!(exit, "exit code 3");
        assert!(
            last_lines.contains(&"crashing".to_owned()),
            "{last_lines:?}"
        );
        seen.push((restarts, crash_loop));
        if crash_loop {
            break;
        }
        assert!(seen.len() < 5, "no crash loop after {seen:?}");
    }
    assert_eq!(seen, [(0, false), (1, false), (2, true)]);
    // Stopped while it waits for its next start: removed all the same.
    target.stop(id, Duration::from_secs(1)).await.unwrap();
    assert!(cleanup.containers(true).is_empty());
}

#[tokio::test]
async fn a_published_port_on_loopback_reaches_the_container() {
    let (mut settings, cleanup) = settings();
    settings.network = None;
    settings.publish_host = Some("127.0.0.1".into());
    let images = images().await;
    let (target, _events) = connect(settings).await;
    let spec = spec(&images.app);
    let id = spec.instance_id;
    let placement = target.start(spec).await.unwrap();
    assert!(placement.address.starts_with("127.0.0.1:"), "{placement:?}");
    assert_ne!(placement.port, 8080, "an ephemeral host port");
    assert_eq!(
        env_of(&placement.address).await["SLIPWAY_INSTANCE"],
        id.to_string()
    );
    target.stop(id, Duration::from_secs(2)).await.unwrap();
    assert!(cleanup.containers(true).is_empty());
}

#[tokio::test]
async fn an_image_without_a_base_layer_is_refused_with_the_reason() {
    let (settings, cleanup) = settings();
    let images = images().await;
    let (target, _events) = connect(settings).await;
    let e = target.start(spec(&images.service_only)).await.unwrap_err();
    assert!(matches!(e, TargetError::Artifact { .. }), "{e:?}");
    assert!(e.to_string().contains(NO_BASE), "{e}");
    assert!(cleanup.containers(true).is_empty(), "nothing was created");
}

#[tokio::test]
async fn a_container_cannot_reach_what_the_platform_serves_on_loopback() {
    let (settings, cleanup) = settings();
    let images = images().await;
    let (target, _events) = connect(settings).await;
    // A platform port: listening on the machine's loopback, as the services do by default.
    let platform = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = platform.local_addr().unwrap().port();
    let spec = spec(&images.app);
    let id = spec.instance_id;
    let placement = target.start(spec).await.unwrap();

    let seen = inspect(&container_of(&cleanup, id));
    let network = &seen["NetworkSettings"]["Networks"][&cleanup.network];
    let gateway = network["Gateway"].as_str().unwrap().to_owned();
    let own = network["IPAddress"].as_str().unwrap().to_owned();
    // The probe works: the container reaches its own port.
    let answer = get(&placement.address, &format!("/connect/{own}:8080")).await;
    assert_eq!(answer, "connected");
    for host in ["127.0.0.1", gateway.as_str()] {
        let answer = get(&placement.address, &format!("/connect/{host}:{port}")).await;
        assert!(
            answer.starts_with("failed"),
            "{host}:{port} reached from the container: {answer}"
        );
    }
    drop(platform);
    target.stop(id, Duration::from_secs(2)).await.unwrap();
}
