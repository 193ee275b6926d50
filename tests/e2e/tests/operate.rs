//! Operating a running service through the five binaries: scaling 3 → 5 → 1 without a new
//! release, cancelling a canary back to a consistent state, and a deployer SIGKILLed in the
//! middle of a rolling update that, restarted, finishes it with no orphan or duplicate
//! process left in the process table.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::Stack;
use support::deploy::SECRET;

fn quick_check() -> Value {
    json!({"interval_ms": 300, "timeout_ms": 500, "failure_threshold": 2, "grace_seconds": 10})
}

/// The instance ids the deployer runs, and those the process table shows for this stack:
/// they must be the same set, one process each.
async fn processes_match(stack: &Stack, expected: usize) {
    let ok = slipway_testkit::wait_until(Duration::from_secs(30), || async {
        let state = stack.state("prod").await;
        let known: BTreeSet<String> = state["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_owned())
            .collect();
        let running: Vec<String> = stack
            .instance_processes()
            .into_iter()
            .map(|(_, id)| id)
            .collect();
        let unique: BTreeSet<String> = running.iter().cloned().collect();
        known.len() == expected && running.len() == expected && unique == known
    })
    .await;
    assert!(
        ok,
        "expected {expected} instances, one process each; deployer: {}; process table: {:?}",
        stack.state("prod").await["instances"],
        stack.instance_processes()
    );
}

async fn scale(stack: &Stack, replicas: u32) -> Value {
    let res = reqwest::Client::new()
        .put(stack.url("gateway", "/v1/services/hello/environments/prod/scale"))
        .bearer_auth(&stack.admin_token)
        .json(&json!({ "replicas": replicas }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    stack.finished(&id, Duration::from_secs(90)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_cancel_and_a_deployer_killed_mid_rollout() {
    let mut stack = Stack::start().await;
    let repo = stack.hello_service(SECRET).await;
    let res = stack
        .put(
            "/v1/services/hello/environments/prod",
            json!({"target": "process"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    stack.set_config("prod", json!({"GREETING": "hi"})).await;
    stack.release(&repo, 1).await;
    repo.change("NOTES.md", "v2\n");
    stack.release(&repo, 2).await;

    let id = stack
        .deploy(
            "prod",
            json!({"release": 1, "replicas": 3, "health_check": quick_check()}),
        )
        .await;
    assert_eq!(
        stack.finished(&id, Duration::from_secs(90)).await["status"],
        "succeeded"
    );
    processes_match(&stack, 3).await;

    // Scale 3 → 5 → 1: same release, no new deployment of code.
    let d = scale(&stack, 5).await;
    assert_eq!(d["status"], "succeeded", "{d}");
    assert_eq!(d["kind"], "scale");
    processes_match(&stack, 5).await;
    let d = scale(&stack, 1).await;
    assert_eq!(d["status"], "succeeded", "{d}");
    processes_match(&stack, 1).await;
    stack.serves_only("prod", "v1").await;

    // A canary of v2 cancelled during its hold: back to v1 alone, v2's instances gone.
    let id = stack
        .deploy(
            "prod",
            json!({"release": 2, "strategy": {"type": "canary", "steps": [{"weight": 50, "pause_seconds": 120}]},
                   "health_check": quick_check()}),
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stack.deployment(&id).await["current_step"]
        .as_str()
        .is_some_and(|s| s.starts_with("hold"))
    {
        assert!(Instant::now() < deadline, "canary never reached its hold");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // One deployment at a time: a scale asked for meanwhile waits, `queued`.
    let res = reqwest::Client::new()
        .put(stack.url("gateway", "/v1/services/hello/environments/prod/scale"))
        .bearer_auth(&stack.admin_token)
        .json(&json!({ "replicas": 2 }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let waiting = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    stack.reaches(&waiting, "queued").await;
    assert_eq!(stack.deployment(&id).await["status"], "progressing");

    let res = stack
        .post(
            &format!("/v1/deployments/{id}/cancel"),
            &stack.admin_token,
            json!({}),
        )
        .await;
    assert_eq!(res.status(), 202);
    let d = stack.finished(&id, Duration::from_secs(60)).await;
    assert_eq!(d["status"], "cancelled", "{d}");
    assert_eq!(d["reason"]["check"], "cancelled");
    // The queued scale runs once the canary is over, on what runs then (v1).
    let scaled = stack.finished(&waiting, Duration::from_secs(60)).await;
    assert_eq!(scaled["status"], "succeeded", "{scaled}");
    assert_eq!(scaled["release"], 1, "{scaled}");
    processes_match(&stack, 2).await;
    assert_eq!(scale(&stack, 1).await["status"], "succeeded");
    stack.serves_only("prod", "v1").await;
    let state = stack.state("prod").await;
    assert_eq!(state["state"]["release"], 1, "{state}");
    assert_eq!(state["state"]["replicas"], 1, "{state}");
    processes_match(&stack, 1).await;

    // Back to 3, then a rolling update to v2 during which the deployer is SIGKILLed.
    assert_eq!(scale(&stack, 3).await["status"], "succeeded");
    let id = stack
        .deploy(
            "prod",
            json!({"release": 2, "strategy": {"type": "rolling", "max_surge": 1},
                   "health_check": quick_check()}),
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let d = stack.deployment(&id).await;
        if d["step_index"].as_i64() >= Some(1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rolling update never progressed: {d}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stack.kill9("deployer");
    assert!(
        !stack.instance_processes().is_empty(),
        "instances keep serving while the deployer is away"
    );
    stack.restart("deployer").await;
    let d = stack.finished(&id, Duration::from_secs(120)).await;
    assert!(
        matches!(d["status"].as_str(), Some("succeeded" | "rolled_back")),
        "{d}"
    );
    processes_match(&stack, 3).await;
    let release = if d["status"] == "succeeded" {
        "v2"
    } else {
        "v1"
    };
    stack.serves_only("prod", release).await;

    // Auto-deploy: with the policy on, the next release rolls itself out, blue-green.
    let res = stack
        .put(
            "/v1/services/hello/environments/prod/policy",
            json!({"auto_deploy": true, "strategy": {"type": "blue_green"}}),
        )
        .await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    repo.change("NOTES.md", "v3\n");
    stack.release(&repo, 3).await;
    let deployed = slipway_testkit::wait_until(Duration::from_secs(90), || async {
        stack.state("prod").await["state"]["release"] == 3
    })
    .await;
    assert!(
        deployed,
        "v3 did not deploy itself: {}",
        stack.state("prod").await
    );
    stack.serves_only("prod", "v3").await;
    let history: Value = stack
        .get(
            "/v1/services/hello/environments/prod/deployments",
            &stack.admin_token,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(history["items"][0]["actor"], "auto-deploy", "{history}");
    processes_match(&stack, 3).await;
}
