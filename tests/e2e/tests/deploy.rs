//! Deploy and run through the five binaries, with steady traffic through the edge router:
//! v1 on 3 instances, a rolling update to v2 and a blue-green switch back to v1 without a lost
//! request, a canary of v3 splitting traffic by its weight, an instance killed and healed
//! without a failed request, and a release that never becomes healthy rolled back at its
//! deadline with its reason, the old config restored.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::Stack;
use support::deploy::{ClientLoop, SECRET, assert_no_loss};

/// Probes quick enough for a test; the defaults (1 s, 30 s grace) suit slow starters.
fn quick_check() -> Value {
    json!({"interval_ms": 300, "timeout_ms": 500, "failure_threshold": 2, "grace_seconds": 10})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollouts_canary_healing_and_automatic_rollback_under_traffic() {
    let stack = Stack::start().await;
    let repo = stack.hello_service(SECRET).await;
    let events =
        slipway_testkit::plain_consumer(&stack.kafka, &[&stack.topic("slipway.deployments")]);
    let res = stack
        .put(
            "/v1/services/hello/environments/prod",
            json!({"target": "process"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    assert_eq!(
        stack.set_config("prod", json!({"GREETING": "one"})).await,
        1
    );
    stack.release(&repo, 1).await;

    // v1 on 3 instances.
    let id = stack
        .deploy(
            "prod",
            json!({"release": "v1", "replicas": 3, "health_check": quick_check()}),
        )
        .await;
    let d = stack.finished(&id, Duration::from_secs(90)).await;
    assert_eq!(d["status"], "succeeded", "{d}");
    stack.serves_only("prod", "v1").await;
    let state = stack.state("prod").await;
    assert_eq!(state["instances"].as_array().unwrap().len(), 3, "{state}");
    let (_, _, greeting) = stack.through_edge(&reqwest::Client::new(), "prod").await;
    assert_eq!(greeting, "one");

    // Rolling update to v2 (built with config 2), then blue-green back to v1, under traffic.
    assert_eq!(
        stack.set_config("prod", json!({"GREETING": "two"})).await,
        2
    );
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
    let d = stack.finished(&id, Duration::from_secs(120)).await;
    assert_eq!(d["status"], "succeeded", "{d}");
    stack.serves_only("prod", "v2").await;
    let id = stack
        .deploy(
            "prod",
            json!({"release": "v1", "strategy": {"type": "blue_green"}, "health_check": quick_check()}),
        )
        .await;
    let d = stack.finished(&id, Duration::from_secs(120)).await;
    assert_eq!(d["status"], "succeeded", "{d}");
    stack.serves_only("prod", "v1").await;
    let answers = traffic.stop().await;
    assert_no_loss("rolling update and blue-green switch", &answers);
    assert!(
        answers.iter().any(|a| a.2 == "v2"),
        "v2 served during the test"
    );
    let last = answers.last().unwrap();
    assert_eq!(
        (last.2.as_str(), last.3.as_str()),
        ("v1", "one"),
        "v1 runs with its own config again"
    );

    // Canary of v3: 30 % for 12 s, measured by the client loop during the hold.
    repo.change("NOTES.md", "v3\n");
    stack.release(&repo, 3).await;
    let traffic = ClientLoop::start(&stack, "prod");
    let id = stack
        .deploy(
            "prod",
            json!({"release": "v3", "strategy": {"type": "canary", "steps": [{"weight": 30, "pause_seconds": 12}]},
                   "health_check": quick_check()}),
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let d = stack.deployment(&id).await;
        if d["current_step"]
            .as_str()
            .is_some_and(|s| s.starts_with("hold"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "canary never reached its hold: {d}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Routers apply the split a moment after the step starts; measure the settled middle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let from = Instant::now();
    tokio::time::sleep(Duration::from_secs(7)).await;
    let window = traffic.since(from);
    let canary = window.iter().filter(|a| a.2 == "v3").count() as f64;
    let share = canary / window.len() as f64;
    println!(
        "canary share {share:.3} of {} requests (weight 30 %)",
        window.len()
    );
    assert!(
        window.len() > 100,
        "too few requests to measure: {}",
        window.len()
    );
    assert!(
        (0.18..=0.42).contains(&share),
        "canary got {share:.3} of traffic, expected ~0.30"
    );
    let d = stack.finished(&id, Duration::from_secs(90)).await;
    assert_eq!(d["status"], "succeeded", "{d}");
    stack.serves_only("prod", "v3").await;

    // SIGKILL of an instance: restarted; no request fails meanwhile.
    let state = stack.state("prod").await;
    let victim = state["instances"][0].clone();
    let pid = victim["pid"].as_i64().unwrap();
    let killed_at = Instant::now();
    std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    let healed = slipway_testkit::wait_until(Duration::from_secs(30), || async {
        let state = stack.state("prod").await;
        state["instances"].as_array().unwrap().iter().any(|i| {
            i["id"] == victim["id"]
                && i["restarts"].as_i64() >= Some(1)
                && i["health"] == "healthy"
                && i["pid"].as_i64() != Some(pid)
        })
    })
    .await;
    assert!(
        healed,
        "instance not restarted: {}",
        stack.state("prod").await
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_no_loss(
        "an instance killed and restarted",
        &traffic.since(killed_at),
    );
    let answers = traffic.stop().await;
    assert_no_loss("canary", &answers);

    // v4 never becomes healthy (its health path is wrong); it ships with config 3. It is
    // rolled back to v3 at its step deadline, with the check as reason, on config 2 again.
    assert_eq!(
        stack.set_config("prod", json!({"GREETING": "three"})).await,
        3
    );
    let recipe = repo.read("slipway.toml").replace("/healthz", "/not-there");
    repo.change("slipway.toml", &recipe);
    stack.release(&repo, 4).await;
    let started = Instant::now();
    let id = stack
        .deploy("prod", json!({"release": "v4", "step_timeout_seconds": 15}))
        .await;
    let d = stack.finished(&id, Duration::from_secs(60)).await;
    let took = started.elapsed();
    assert_eq!(d["status"], "rolled_back", "{d}");
    assert_eq!(d["reason"]["check"], "deadline", "{d}");
    let message = d["reason"]["message"].as_str().unwrap();
    assert!(
        message.contains("http GET /not-there") && message.contains("404"),
        "the reason names the failing check: {message}"
    );
    assert!(
        took < Duration::from_secs(40),
        "rolled back {took:?} after the request"
    );
    stack.serves_only("prod", "v3").await;
    let (_, _, greeting) = stack.through_edge(&reqwest::Client::new(), "prod").await;
    assert_eq!(greeting, "two", "v3's config is back");
    let state = stack.state("prod").await;
    assert_eq!(state["state"]["release"], 3);
    assert_eq!(state["state"]["config_version"], 2);

    // The rollback is announced as a CDEvent with the environment and the artifact.
    let rolled = slipway_testkit::next_of_type(
        &events,
        "dev.cdevents.service.rolledback.0.3.0",
        Duration::from_secs(30),
    )
    .await
    .expect("a service.rolledback CDEvent");
    let body: Value = serde_json::from_slice(rdkafka::Message::payload(&rolled).unwrap()).unwrap();
    assert_eq!(body["subject"]["content"]["environment"]["id"], "prod");
    assert!(
        body["subject"]["content"]["artifactId"]
            .as_str()
            .unwrap()
            .starts_with("pkg:oci/")
    );
    // v5 crashes at start: a crash loop is reported (not spun), and the rollout is rolled back
    // on it at once, long before its deadline, with the exit in the reason.
    let recipe = repo
        .read("slipway.toml")
        .replace("/not-there", "/healthz")
        .replace(
            r#"command = ["python3", "app.py"]"#,
            r#"command = ["python3", "-c", "import sys; print('boom', flush=True); sys.exit(3)"]"#,
        );
    repo.change("slipway.toml", &recipe);
    stack.release(&repo, 5).await;
    let started = Instant::now();
    let id = stack
        .deploy(
            "prod",
            json!({"release": "v5", "step_timeout_seconds": 120, "health_check": quick_check()}),
        )
        .await;
    let d = stack.finished(&id, Duration::from_secs(90)).await;
    assert_eq!(d["status"], "rolled_back", "{d}");
    assert_eq!(d["reason"]["check"], "crash_loop", "{d}");
    assert!(
        d["reason"]["message"]
            .as_str()
            .unwrap()
            .contains("exit code 3"),
        "{d}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "a crash loop ends the rollout before its deadline"
    );
    stack.serves_only("prod", "v3").await;
}
