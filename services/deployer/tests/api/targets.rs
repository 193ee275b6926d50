//! Targets per environment: `[targets.environments.<env>] kind = "docker"` sends that
//! environment's instances to the Docker target (started and wired at start-up), the others
//! stay on the default process target.

use std::sync::Arc;

use slipway_events::deploy::DeployKind;
use slipway_ids::ServiceId;

use crate::helpers::{request, spawn_app_on};
use crate::stand_in::StandInRegistry;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_environment_on_the_docker_target_pulls_through_the_engine() {
    let scope = format!("slipway-test-{}", slipway_testkit::unique());
    let registry = Arc::new(StandInRegistry::start().await);
    let base = slipway_testkit::base_settings("deployer").await;
    let app = spawn_app_on(
        base,
        registry,
        &[
            ("SLIPWAY_TARGETS__ENVIRONMENTS__STAGING__KIND", "docker"),
            ("SLIPWAY_DOCKER__SCOPE", &scope),
        ],
    )
    .await;
    app.registry.add_release("hello", 3, &["staging", "qa"]);

    // Staging: the engine is asked to pull from a registry that is not there, and says so.
    let r = request(
        DeployKind::Deploy,
        ServiceId::new(),
        "hello",
        "staging",
        Some(3),
    );
    let d = app.ended(app.command(&r).await).await;
    assert_eq!(d["status"], "failed", "{d}");
    assert_eq!(d["reason"]["check"], "artifact", "{d}");
    let message = d["reason"]["message"].as_str().unwrap();
    assert!(message.contains("127.0.0.1:1/hello@sha256:"), "{d}");
    assert!(
        message.contains("the pull on unix://"),
        "the engine's answer: {d}"
    );

    // QA stays on the process target, which fetches the image itself.
    let r = request(DeployKind::Deploy, ServiceId::new(), "hello", "qa", Some(3));
    let d = app.ended(app.command(&r).await).await;
    assert_eq!(d["status"], "failed", "{d}");
    let message = d["reason"]["message"].as_str().unwrap();
    assert!(
        !message.contains("the pull on unix://"),
        "not through the engine: {d}"
    );

    let filter = format!("label=dev.slipway.scope={scope}");
    let out = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter", &filter])
        .output()
        .expect("the docker CLI runs");
    assert!(
        out.status.success(),
        "no Docker Engine answers: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "nothing was created");
}
