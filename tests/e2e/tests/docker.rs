//! The Docker target through the five binaries and a real Docker Engine: the sample Python
//! service (no Dockerfile), uploaded from its folder, built into a runnable image on a base image made from Debian packages
//! (`SLIPWAY_TEST_BASE_IMAGE`, scripts/base-image), deployed in containers under steady traffic
//! through the edge router: rolling, blue-green and canary without a failed request, a
//! `docker kill` healed, a release that never becomes healthy rolled back with the old config,
//! and a deployer restart that adopts its containers and removes an orphan; `docker ps` matches
//! the deployer's instances one to one. Then the same service from a repository with its own
//! Dockerfile, built through the engine, rolled out and healed the same way.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::deploy::{ClientLoop, SECRET, assert_no_loss};
use support::{Stack, StackOptions};

/// One stack at a time: two at once (the test harness runs tests in parallel) overload two
/// cores, and their image builds and containers compete for the one engine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn quick_check() -> Value {
    json!({"interval_ms": 300, "timeout_ms": 500, "failure_threshold": 2, "grace_seconds": 20})
}

/// `docker` with `args`; its stdout. Panics (the test fails) with what docker said otherwise.
fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("the docker command runs (Docker Engine client)");
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Removes every container of the test's scope when the test ends, passed or not.
struct Scope(String);

impl Scope {
    fn filter(&self) -> String {
        format!("label=dev.slipway.scope={}", self.0)
    }

    /// Running containers of this scope: instance id → container id.
    fn running(&self) -> Vec<(String, String)> {
        let text = docker(&[
            "ps",
            "--filter",
            &self.filter(),
            "--format",
            "{{.Label \"dev.slipway.instance\"}} {{.ID}}",
        ]);
        text.lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(i, c)| (i.to_owned(), c.to_owned()))
            .collect()
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let ids = Command::new("docker")
            .args(["ps", "-aq", "--filter", &self.filter()])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for id in ids.split_whitespace() {
            let _ = Command::new("docker").args(["rm", "-f", id]).output();
        }
    }
}

/// The deployer's instances of `prod` by id.
async fn instance_ids(stack: &Stack) -> BTreeSet<String> {
    let state = stack.state("prod").await;
    state["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

/// `docker ps` (this scope) holds exactly the deployer's instances, one container each.
async fn assert_ps_matches(stack: &Stack, scope: &Scope, when: &str) {
    // A retired container is stopped and removed a moment after the deployment ends.
    let matched = slipway_testkit::wait_until(Duration::from_secs(30), || async {
        let ps: BTreeSet<String> = scope.running().into_iter().map(|(i, _)| i).collect();
        ps == instance_ids(stack).await && ps.len() == scope.running().len()
    })
    .await;
    assert!(
        matched,
        "{when}: docker ps {:?} vs the deployer's instances {:?}",
        scope.running(),
        instance_ids(stack).await
    );
}

/// Waits until instance `victim` of `prod` has restarted at least `restarts` times and is healthy
/// again; fails the test with the state otherwise.
async fn assert_healed(stack: &Stack, victim: &str, restarts: i64, what: &str) {
    let healed = slipway_testkit::wait_until(Duration::from_secs(60), || async {
        let state = stack.state("prod").await;
        state["instances"].as_array().unwrap().iter().any(|i| {
            i["id"] == victim
                && i["restarts"].as_i64() >= Some(restarts)
                && i["health"] == "healthy"
        })
    })
    .await;
    assert!(healed, "{what} not healed: {}", stack.state("prod").await);
}

/// Fails the test, saying so, when no Docker Engine answers; answers the base image.
fn engine_and_base() -> String {
    if Command::new("docker")
        .arg("info")
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        panic!("no Docker Engine answers `docker info`: this test needs one (see README)");
    }
    std::env::var("SLIPWAY_TEST_BASE_IMAGE")
        .expect("SLIPWAY_TEST_BASE_IMAGE names the base image (scripts/test pushes it)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docker_target_rolls_out_heals_rolls_back_and_adopts_under_traffic() {
    let _one = ONE_AT_A_TIME.lock().await;
    let base = engine_and_base();
    let scope = Scope(format!("e2e{}", slipway_testkit::unique()));
    let options = StackOptions::default()
        .env("SLIPWAY_IMAGES__DEFAULT_BASE", &base)
        .env("SLIPWAY_TARGETS__ENVIRONMENTS__PROD__KIND", "docker")
        .env("SLIPWAY_DOCKER__SCOPE", &scope.0)
        .env("SLIPWAY_DOCKER__PUBLISH_HOST", "127.0.0.1");
    let mut stack = Stack::start_with(options).await;
    let repo = stack.hello_service(SECRET).await;
    let res = stack
        .put(
            "/v1/services/hello/environments/prod",
            json!({"target": "docker"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    assert_eq!(
        stack.set_config("prod", json!({"GREETING": "one"})).await,
        1
    );
    stack.release(&repo, 1).await;

    // v1 in two containers.
    let id = stack
        .deploy(
            "prod",
            json!({"release": "v1", "replicas": 2, "health_check": quick_check()}),
        )
        .await;
    let d = stack.finished(&id, Duration::from_secs(180)).await;
    assert_eq!(d["status"], "succeeded", "{d}");
    stack.serves_only("prod", "v1").await;
    let (_, _, greeting) = stack.through_edge(&reqwest::Client::new(), "prod").await;
    assert_eq!(greeting, "one");
    assert_ps_matches(&stack, &scope, "v1 deployed").await;
    // Runs as the non-root user, without capabilities.
    let (_, container) = scope.running()[0].clone();
    let inspect = docker(&[
        "inspect",
        "--format",
        "{{.Config.User}} {{.HostConfig.CapDrop}} {{.HostConfig.Privileged}}",
        &container,
    ]);
    assert!(
        inspect.starts_with("10001") && inspect.contains("ALL") && inspect.contains("false"),
        "{inspect}"
    );

    // Rolling to v2 (config 2), blue-green back to v1, a canary of v3: no request fails.
    assert_eq!(
        stack.set_config("prod", json!({"GREETING": "two"})).await,
        2
    );
    repo.change("NOTES.md", "v2\n");
    stack.release(&repo, 2).await;
    repo.change("NOTES.md", "v3\n");
    stack.release(&repo, 3).await;
    let traffic = ClientLoop::start(&stack, "prod");
    for body in [
        json!({"release": "v2", "strategy": {"type": "rolling", "max_surge": 1, "max_unavailable": 0},
               "health_check": quick_check()}),
        json!({"release": "v1", "strategy": {"type": "blue_green"}, "health_check": quick_check()}),
        json!({"release": "v3", "strategy": {"type": "canary", "steps": [{"weight": 30, "pause_seconds": 6}]},
               "health_check": quick_check()}),
    ] {
        let id = stack.deploy("prod", body.clone()).await;
        let d = stack.finished(&id, Duration::from_secs(180)).await;
        assert_eq!(d["status"], "succeeded", "{body}: {d}");
        assert_ps_matches(&stack, &scope, &body["strategy"]["type"].to_string()).await;
    }
    stack.serves_only("prod", "v3").await;
    let answers = traffic.stop().await;
    assert_no_loss("rolling, blue-green and canary on docker", &answers);
    for release in ["v1", "v2", "v3"] {
        assert!(
            answers.iter().any(|a| a.2 == release),
            "{release} served during the rollouts"
        );
    }

    // `docker kill` of a container: Slipway's supervision starts it again; no request fails.
    let traffic = ClientLoop::start(&stack, "prod");
    let (victim, container) = scope.running()[0].clone();
    let killed_at = Instant::now();
    docker(&["kill", &container]);
    assert_healed(&stack, &victim, 1, "container").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_no_loss("a container killed and healed", &traffic.since(killed_at));
    assert_no_loss("a container killed and healed", &traffic.stop().await);
    assert_ps_matches(&stack, &scope, "after the kill").await;

    // v4 never becomes healthy (wrong health path) and ships with config 3: rolled back to v3
    // at its deadline, with config 2 again.
    assert_eq!(
        stack.set_config("prod", json!({"GREETING": "three"})).await,
        3
    );
    let recipe = repo.read("slipway.toml").replace("/healthz", "/not-there");
    repo.change("slipway.toml", &recipe);
    stack.release(&repo, 4).await;
    let id = stack
        .deploy("prod", json!({"release": "v4", "step_timeout_seconds": 20}))
        .await;
    let d = stack.finished(&id, Duration::from_secs(120)).await;
    assert_eq!(d["status"], "rolled_back", "{d}");
    assert_eq!(d["reason"]["check"], "deadline", "{d}");
    stack.serves_only("prod", "v3").await;
    let (_, _, greeting) = stack.through_edge(&reqwest::Client::new(), "prod").await;
    assert_eq!(greeting, "two", "v3's config is back");
    assert_ps_matches(&stack, &scope, "after the rollback").await;

    // A deployer restart adopts the running containers (the same ones, not new copies) and
    // removes an orphan: a container of this scope whose instance the deployer never knew.
    let before = scope.running();
    let orphan = docker(&[
        "run",
        "-d",
        "--label",
        &format!("dev.slipway.scope={}", scope.0),
        "--label",
        &format!("dev.slipway.instance={}", uuid::Uuid::new_v4()),
        "--label",
        "dev.slipway.service=hello",
        "--label",
        "dev.slipway.environment=prod",
        &base,
        "sleep",
        "600",
    ]);
    let orphan = orphan.trim().to_owned();
    stack.kill9("deployer");
    stack.restart("deployer").await;
    let swept = slipway_testkit::wait_until(Duration::from_secs(60), || async {
        !scope
            .running()
            .iter()
            .any(|(_, c)| orphan.starts_with(c.as_str()))
    })
    .await;
    assert!(
        swept,
        "the orphan container {orphan} still runs: {:?}",
        scope.running()
    );
    let after = scope.running();
    assert_eq!(
        after, before,
        "the restarted deployer adopted the same containers"
    );
    assert_ps_matches(&stack, &scope, "after the deployer restart").await;
    // Adopted containers are supervised again: a kill is healed by the new deployer.
    let (victim, container) = after[0].clone();
    docker(&["kill", &container]);
    assert_healed(&stack, &victim, 2, "an adopted container").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_with_its_own_dockerfile_runs_on_the_docker_target() {
    let _one = ONE_AT_A_TIME.lock().await;
    let base = engine_and_base();
    let scope = Scope(format!("e2edf{}", slipway_testkit::unique()));
    let options = StackOptions::default()
        // The builder builds Dockerfiles through the engine.
        .env("SLIPWAY_DOCKER__HOST", "unix:///var/run/docker.sock")
        .env("SLIPWAY_TARGETS__ENVIRONMENTS__PROD__KIND", "docker")
        .env("SLIPWAY_DOCKER__SCOPE", &scope.0)
        .env("SLIPWAY_DOCKER__PUBLISH_HOST", "127.0.0.1");
    let stack = Stack::start_with(options).await;
    let repo = stack.hello_service(SECRET).await;
    let res = stack
        .put(
            "/v1/services/hello/environments/prod",
            json!({"target": "docker"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    repo.change(
        "Dockerfile",
        "ARG BASE\nFROM ${BASE}\nWORKDIR /app\nCOPY app.py /app/app.py\nUSER 10001:10001\n\
         CMD [\"python3\", \"app.py\"]\n",
    );
    repo.change(
        "slipway.toml",
        &format!(
            "[test]\ncommand = \"python3 -m unittest -v\"\n\n[image]\nbase = \"{base}\"\n\
             dockerfile = \"Dockerfile\"\n\n[run]\ncommand = [\"python3\", \"app.py\"]\n\
             port_env = \"PORT\"\nhealth_path = \"/healthz\"\n"
        ),
    );
    let release = stack.release(&repo, 1).await;
    assert!(
        release["image"]
            .as_str()
            .is_some_and(|i| i.contains("@sha256:")),
        "{release}"
    );
    let id = stack
        .deploy(
            "prod",
            json!({"release": "v1", "replicas": 2, "health_check": quick_check()}),
        )
        .await;
    let d = stack.finished(&id, Duration::from_secs(180)).await;
    assert_eq!(d["status"], "succeeded", "{d}");
    stack.serves_only("prod", "v1").await;
    assert_ps_matches(&stack, &scope, "v1 from its Dockerfile").await;

    repo.change("NOTES.md", "v2\n");
    stack.release(&repo, 2).await;
    let traffic = ClientLoop::start(&stack, "prod");
    let id = stack
        .deploy(
            "prod",
            json!({"release": "v2", "strategy": {"type": "rolling", "max_surge": 1, "max_unavailable": 0},
                   "health_check": quick_check()}),
        )
        .await;
    let d = stack.finished(&id, Duration::from_secs(180)).await;
    assert_eq!(d["status"], "succeeded", "{d}");
    stack.serves_only("prod", "v2").await;
    let (victim, container) = scope.running()[0].clone();
    docker(&["kill", &container]);
    assert_healed(&stack, &victim, 1, "container").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_no_loss(
        "a Dockerfile-built release rolled out and healed",
        &traffic.stop().await,
    );
    assert_ps_matches(&stack, &scope, "v2 from its Dockerfile").await;
}
