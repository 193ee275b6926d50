//! Targets: an environment runs on the target the registry records for it. The deployer's
//! `[targets] enabled` only says which targets it sets up: `docker` here is started and wired
//! at start-up; an environment recorded on a target that is not set up fails its deployment at
//! once, saying which settings to add.

use std::sync::Arc;

use slipway_events::deploy::DeployKind;
use slipway_ids::ServiceId;

use crate::helpers::{request, spawn_app_on};
use crate::stand_in::StandInRegistry;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_environment_recorded_on_the_docker_target_pulls_through_the_engine() {
    let scope = format!("slipway-test-{}", slipway_testkit::unique());
    let registry = Arc::new(StandInRegistry::start().await);
    let base = slipway_testkit::base_settings("deployer").await;
    let app = spawn_app_on(
        base,
        registry,
        &[
            ("SLIPWAY_TARGETS__ENABLED", "process,docker"),
            ("SLIPWAY_DOCKER__SCOPE", &scope),
        ],
    )
    .await;
    app.registry.add_release("hello", 3, &["staging", "qa"]);
    app.registry.set_target("hello", "staging", "docker");

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
    assert_eq!(d["target"], "docker", "recorded on the deployment: {d}");
    assert_eq!(d["reason"]["check"], "artifact", "{d}");
    let message = d["reason"]["message"].as_str().unwrap();
    assert!(message.contains("127.0.0.1:1/hello@sha256:"), "{d}");
    assert!(
        message.contains("the pull on unix://"),
        "the engine's answer: {d}"
    );

    // QA is recorded on the process target, which fetches the image itself.
    let r = request(DeployKind::Deploy, ServiceId::new(), "hello", "qa", Some(3));
    let d = app.ended(app.command(&r).await).await;
    assert_eq!(d["status"], "failed", "{d}");
    assert_eq!(d["target"], "process", "{d}");
    let message = d["reason"]["message"].as_str().unwrap();
    assert!(
        !message.contains("the pull on unix://"),
        "not through the engine: {d}"
    );

    // A release asking for more CPUs than the environment may use (`docker.cpus`, 1 by
    // default) fails its deployment before anything is pulled or created.
    app.registry.add_release("hello", 4, &["staging"]);
    app.registry.set_run(
        "hello",
        4,
        serde_json::json!({"command": ["./app"], "cpus": 4, "memory": "64MiB"}),
    );
    let r = request(
        DeployKind::Deploy,
        ServiceId::new(),
        "hello",
        "staging",
        Some(4),
    );
    let d = app.ended(app.command(&r).await).await;
    assert_eq!(d["status"], "failed", "{d}");
    assert_eq!(d["reason"]["check"], "start", "{d}");
    let message = d["reason"]["message"].as_str().unwrap();
    assert!(
        message.contains("run.cpus = 4, more than the 1 CPUs") && message.contains("`docker.cpus`"),
        "{d}"
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_environment_recorded_on_a_target_not_set_up_fails_at_once_naming_the_settings() {
    // Only the process target (the default settings), and the Kubernetes target with no
    // cluster for the environment.
    let plain = spawn_app_on(
        slipway_testkit::base_settings("deployer").await,
        Arc::new(StandInRegistry::start().await),
        &[],
    )
    .await;
    let kube = spawn_app_on(
        slipway_testkit::base_settings("deployer").await,
        Arc::new(StandInRegistry::start().await),
        &[("SLIPWAY_TARGETS__ENABLED", "kubernetes")],
    )
    .await;
    for (app, target, settings) in [
        (
            &plain,
            "docker",
            "add `docker` to the deployer's `[targets] enabled`",
        ),
        (
            &plain,
            "kubernetes",
            "add `kubernetes` to the deployer's `[targets] enabled`",
        ),
        (
            &kube,
            "kubernetes",
            "add a `[kubernetes.environments.prod]` table",
        ),
    ] {
        app.registry.add_release("hello", 1, &["prod"]);
        app.registry.set_target("hello", "prod", target);
        let r = request(
            DeployKind::Deploy,
            ServiceId::new(),
            "hello",
            "prod",
            Some(1),
        );
        let d = app.ended(app.command(&r).await).await;
        assert_eq!(d["status"], "failed", "{d}");
        assert_eq!(
            d["reason"]["check"], "request",
            "refused before any step: {d}"
        );
        assert_eq!(d["reason"]["step"], "resolve the request", "{d}");
        let message = d["reason"]["message"].as_str().unwrap();
        let expected = format!(
            "environment `prod` is recorded on the {target} target, which this deployer has \
             not set up: {settings}"
        );
        assert!(message.starts_with(&expected), "{message}");
        assert!(d["started_at"].is_null(), "never started: {d}");
        assert!(d["target"].is_null(), "nothing recorded: {d}");
        assert!(
            !app.registry
                .saw("/internal/v1/services/hello/environments/prod/config/1"),
            "no instance was started"
        );
    }
}
