//! Source to release through the five binaries: a signed push and a folder upload each become
//! an immutable release pinned to the config in force; a secret set in config shows up in no
//! API answer, log line or event.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

mod support;

use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use serde_json::{Value, json};
use slipway_testkit::git::{Repo, example_dir};
use support::Stack;

const SECRET: &str = "e2e-webhook-secret-0123456789";
const CONFIG_SECRET: &str = "pa55-do-not-leak-7f3a9c";

fn signed_push(repo: &Repo, commit: &str) -> (Vec<(&'static str, String)>, Vec<u8>) {
    support::github_push(&repo.url, commit, SECRET)
}

use support::tarball;

async fn wait_build(stack: &Stack, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let build: Value = stack
            .get(&format!("/v1/builds/{id}"), &stack.admin_token)
            .await
            .json()
            .await
            .unwrap();
        if matches!(
            build["status"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        ) {
            return build;
        }
        assert!(
            Instant::now() < deadline,
            "build {id} did not finish: {build}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_release(stack: &Stack, n: u32) -> (Value, Instant) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let res = stack
            .get(
                &format!("/v1/services/hello/releases/v{n}"),
                &stack.admin_token,
            )
            .await;
        if res.status() == 200 {
            return (res.json().await.unwrap(), Instant::now());
        }
        assert!(Instant::now() < deadline, "release v{n} never appeared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn put(stack: &Stack, path: &str, if_match: Option<&str>, body: Value) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .put(stack.url("gateway", path))
        .bearer_auth(&stack.admin_token)
        .json(&body);
    if let Some(v) = if_match {
        req = req.header("if-match", v);
    }
    req.send().await.unwrap()
}

async fn upload(stack: &Stack, body: Vec<u8>) -> reqwest::Response {
    reqwest::Client::new()
        .post(stack.url("gateway", "/v1/services/hello/sources"))
        .bearer_auth(&stack.admin_token)
        .header("content-type", "application/gzip")
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_and_uploads_become_releases_and_secrets_never_leak() {
    let stack = Stack::start().await;
    let repo = stack.hello_service(SECRET).await;

    // Config for prod, with a secret.
    assert_eq!(
        put(
            &stack,
            "/v1/services/hello/environments/prod",
            None,
            json!({"target": "process"})
        )
        .await
        .status(),
        201
    );
    let res = put(
        &stack,
        "/v1/services/hello/environments/prod/config",
        None,
        json!({"vars": {"GREETING": "hello, prod"}, "secrets": {"DB_PASSWORD": CONFIG_SECRET}}),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["etag"], "\"1\"");
    let stale = put(
        &stack,
        "/v1/services/hello/environments/prod/config",
        Some("\"0\""),
        json!({"vars": {}}),
    )
    .await;
    assert_eq!(stale.status(), 412);

    // A signed push: a build, then release v1 pinned to config version 1.
    let (headers, body) = signed_push(&repo, &repo.head());
    let t_push = Instant::now();
    let t_push_wall = chrono_now();
    let res = stack.webhook("/v1/webhooks/github", &headers, body).await;
    assert_eq!(res.status(), 202);
    let answer: Value = res.json().await.unwrap();
    let build = wait_build(&stack, answer["builds"][0]["id"].as_str().unwrap()).await;
    let t_built = Instant::now();
    assert_eq!(build["status"], "succeeded", "{build}");
    let (v1, t_release) = wait_release(&stack, 1).await;
    assert_eq!(v1["digest"], build["artifact_digest"]);
    assert_eq!(v1["commit"], repo.head().as_str());
    assert_eq!(v1["config"], json!({"prod": 1}));
    println!(
        "push to build finished {:?}; build finished to release visible {:?}",
        t_built - t_push,
        t_release - t_built
    );
    overhead(&stack, &build, &v1, t_push_wall).await;

    // Uploads: a folder becomes release v2; unsafe or oversized archives are refused.
    let example = example_dir("hello-python");
    let read = |f: &str| std::fs::read(example.join(f)).unwrap();
    let (app, tests, recipe) = (read("app.py"), read("test_app.py"), read("slipway.toml"));
    let good = tarball(&[
        ("app.py", &app),
        ("test_app.py", &tests),
        ("slipway.toml", &recipe),
    ]);
    let res = upload(&stack, good).await;
    assert_eq!(res.status(), 202);
    let answer: Value = res.json().await.unwrap();
    let build = wait_build(&stack, answer["id"].as_str().unwrap()).await;
    assert_eq!(build["status"], "succeeded", "{build}");
    assert!(
        build["commit_built"]
            .as_str()
            .unwrap()
            .starts_with("upload-")
    );
    let (v2, _) = wait_release(&stack, 2).await;
    assert_eq!(v2["digest"], build["artifact_digest"]);

    let evil = tarball(&[("../../etc/cron.d/evil", b"* * * * * root true")]);
    let res = upload(&stack, evil).await;
    assert_eq!(res.status(), 422);
    let problem: Value = res.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("climbs out"),
        "{problem}"
    );
    let res = upload(&stack, vec![0u8; 51 * 1024 * 1024]).await;
    assert_eq!(res.status(), 413);
    let res = upload(&stack, b"not an archive".to_vec()).await;
    assert_eq!(res.status(), 422);
    let releases: Value = stack
        .get("/v1/services/hello/releases", &stack.admin_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        releases["items"].as_array().unwrap().len(),
        2,
        "refused uploads made nothing"
    );

    // The secret: in no answer, no event, no log line.
    let mut answers = String::new();
    for path in [
        "/v1/services/hello",
        "/v1/services/hello/environments",
        "/v1/services/hello/environments/prod/config",
        "/v1/services/hello/releases",
        "/v1/services/hello/builds",
        "/v1/audit",
    ] {
        answers.push_str(
            &stack
                .get(path, &stack.admin_token)
                .await
                .text()
                .await
                .unwrap(),
        );
    }
    assert!(
        answers.contains("DB_PASSWORD"),
        "the secret's name is shown"
    );
    assert!(
        !answers.contains(CONFIG_SECRET),
        "an answer shows the secret"
    );

    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka)
        .set(
            "group.id",
            format!("leak-check-{}", slipway_testkit::unique()),
        )
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    let topics: Vec<String> = [
        "commands",
        "services",
        "builds",
        "deployments",
        "instances",
        "monitoring",
        "deadletter",
    ]
    .iter()
    .map(|t| stack.topic(&format!("slipway.{t}")))
    .collect();
    consumer
        .subscribe(&topics.iter().map(String::as_str).collect::<Vec<_>>())
        .unwrap();
    let mut seen = 0;
    while let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(3), consumer.recv()).await {
        seen += 1;
        let payload = String::from_utf8_lossy(m.payload().unwrap_or_default());
        assert!(
            !payload.contains(CONFIG_SECRET),
            "an event carries the secret: {payload}"
        );
    }
    assert!(seen >= 10, "the events were read ({seen})");
    for service in support::SERVICES {
        let log = stack.log_text(service);
        assert!(!log.is_empty(), "{service} logged");
        assert!(
            !log.contains(CONFIG_SECRET),
            "{service}'s log shows the secret"
        );
    }
}

fn chrono_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn seconds(rfc3339: &str) -> f64 {
    // "2026-11-22T01:02:03.456789Z": seconds since the epoch, from the services' clocks (the
    // same machine's clock as the test's).
    let parsed = chrono::DateTime::parse_from_rfc3339(rfc3339).unwrap();
    parsed.timestamp() as f64 + f64::from(parsed.timestamp_subsec_nanos()) / 1e9
}

/// Prints the platform's own overhead around a build (figures for the closing note, not
/// asserted): from the webhook to the first build command starting, and from the last build
/// command ending to the release existing.
async fn overhead(stack: &Stack, build: &Value, release: &Value, pushed_at: f64) {
    let id = build["id"].as_str().unwrap();
    let page: Value = stack
        .get(&format!("/v1/builds/{id}/logs"), &stack.admin_token)
        .await
        .json()
        .await
        .unwrap();
    let lines = page["lines"].as_array().unwrap();
    let at = |pred: &dyn Fn(&Value) -> bool| {
        lines
            .iter()
            .find(|l| pred(l))
            .map(|l| seconds(l["at"].as_str().unwrap()))
    };
    let first_command = at(&|l| l["line"].as_str().unwrap_or_default().starts_with("$ ")).unwrap();
    let packaging = at(&|l| l["step"] == "package").unwrap();
    let released = seconds(release["created_at"].as_str().unwrap());
    println!(
        "overhead: webhook -> first build command {:.0} ms (fetch included); \
         build commands done -> release exists {:.0} ms (packaging and push included)",
        (first_command - pushed_at) * 1000.0,
        (released - packaging) * 1000.0
    );
}
