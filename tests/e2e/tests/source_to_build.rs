//! From a signed push to a built commit, through the five service binaries: the webhook, the
//! command on Kafka, the builder's gate and build, the logs followed live over SSE.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

mod support;

use std::time::Duration;

use serde_json::Value;
use slipway_testkit::git::Repo;
use support::Stack;

const SECRET: &str = "e2e-webhook-secret-0123456789";

fn signed_push(repo: &Repo, commit: &str) -> (Vec<(&'static str, String)>, Vec<u8>) {
    support::github_push(&repo.url, commit, SECRET)
}

/// Follows `/v1/builds/{id}/logs?follow=true` to its end; returns the raw event stream.
async fn follow(stack: &Stack, id: &str) -> String {
    let mut res = stack
        .get(
            &format!("/v1/builds/{id}/logs?follow=true"),
            &stack.admin_token,
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut text = String::new();
    let read = async {
        while let Some(chunk) = res.chunk().await.unwrap() {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    tokio::time::timeout(Duration::from_secs(120), read)
        .await
        .expect("the stream ends with the build");
    text
}

async fn push_and_build(stack: &Stack, repo: &Repo, commit: &str) -> (String, String, Value) {
    let (headers, body) = signed_push(repo, commit);
    let res = stack.webhook("/v1/webhooks/github", &headers, body).await;
    assert_eq!(res.status(), 202);
    let answer: Value = res.json().await.unwrap();
    let id = answer["builds"][0]["id"].as_str().unwrap().to_owned();
    let events = follow(stack, &id).await;
    let build: Value = stack
        .get(&format!("/v1/builds/{id}"), &stack.admin_token)
        .await
        .json()
        .await
        .unwrap();
    (id, events, build)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_push_is_built_and_its_logs_can_be_followed() {
    let stack = Stack::start().await;
    let repo = stack.hello_service(SECRET).await;

    // A good commit: the gate passes, the build succeeds, the stream shows it as it happens.
    let good = repo.head();
    let (id, events, build) = push_and_build(&stack, &repo, &good).await;
    assert!(events.contains("event: line"), "{events}");
    assert!(
        events.contains("Ran 3 tests"),
        "test output streamed: {events}"
    );
    assert!(
        events.contains("event: end\ndata: {\"status\":\"succeeded\"}"),
        "{events}"
    );
    assert_eq!(build["status"], "succeeded", "{build}");
    assert_eq!(build["commit_built"], good.as_str());

    // Resuming after the last line seen gives only what came after it.
    let last_seq = events
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .filter_map(|s| s.parse::<i64>().ok())
        .max()
        .unwrap();
    let rest: Value = stack
        .get(
            &format!("/v1/builds/{id}/logs?after={last_seq}"),
            &stack.admin_token,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(rest["lines"].as_array().unwrap().len(), 0);
    assert_eq!(rest["finished"], true);

    // A commit whose tests fail: the build fails at the gate and says why.
    let broken = repo
        .read("test_app.py")
        .replace("(200, \"ok\")", "(200, \"not ok\")");
    let bad = repo.change("test_app.py", &broken);
    let (_, events, build) = push_and_build(&stack, &repo, &bad).await;
    assert!(events.contains("{\"status\":\"failed\"}"), "{events}");
    assert_eq!(build["status"], "failed");
    assert_eq!(build["step"], "test");
    assert!(
        build["reason"]
            .as_str()
            .unwrap()
            .contains("exited with code 1"),
        "{build}"
    );
    assert!(build["image"].is_null(), "a failed build pushes no image");
    // The good build made release v1; the failed one made none.
    let v1 = slipway_testkit::wait_until(Duration::from_secs(30), || async {
        stack
            .get("/v1/services/hello/releases/v1", &stack.admin_token)
            .await
            .status()
            == 200
    })
    .await;
    assert!(v1, "the good build became release v1");
    let releases: Value = stack
        .get("/v1/services/hello/releases", &stack.admin_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        releases["items"].as_array().unwrap().len(),
        1,
        "no release from a failed build"
    );

    let list: Value = stack
        .get("/v1/services/hello/builds", &stack.admin_token)
        .await
        .json()
        .await
        .unwrap();
    let statuses: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["failed", "succeeded"], "newest first");

    // Unknown builds are 404 problems; a forged delivery changes nothing.
    let res = stack
        .get(&format!("/v1/builds/{}", uuid_like()), &stack.admin_token)
        .await;
    assert_eq!(res.status(), 404);
    let (mut headers, body) = signed_push(&repo, &bad);
    headers[2].1 = "sha256=00".into();
    assert_eq!(
        stack
            .webhook("/v1/webhooks/github", &headers, body)
            .await
            .status(),
        401
    );
    let list: Value = stack
        .get("/v1/services/hello/builds", &stack.admin_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
}

fn uuid_like() -> String {
    "019aa8c3-0d41-7e55-b1a2-9c4f1e7d3b20".to_owned()
}
