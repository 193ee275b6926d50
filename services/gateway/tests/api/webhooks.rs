//! Webhooks and on-demand builds: what reaches the command topic, and what is refused.

use std::time::Duration;

use hmac::{Hmac, Mac};
use rdkafka::Message;
use serde_json::{Value, json};
use sha2::Sha256;
use slipway_events::Topic;
use slipway_testkit::{header, next_of_type, plain_consumer};

use crate::helpers::{TestApp, problem, spawn_app};

pub(crate) const REPO: &str = "https://github.com/acme/web.git";
pub(crate) const SECRET: &str = "a-webhook-secret-of-some-length";
pub(crate) const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// Signs exactly as GitHub does: HMAC-SHA256 of the raw body, hex, `sha256=` prefix.
pub(crate) fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

pub(crate) fn push(git_ref: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "ref": git_ref,
        "before": "0000000000000000000000000000000000000000",
        "after": COMMIT,
        "deleted": false,
        "repository": {
            "full_name": "acme/web",
            "clone_url": REPO,
            "html_url": "https://github.com/acme/web",
            "ssh_url": "git@github.com:acme/web.git"
        },
        "pusher": {"name": "octocat", "email": "octocat@example.com"}
    }))
    .unwrap()
}

/// A GitHub delivery with a fresh delivery id.
async fn github(
    app: &TestApp,
    event: &str,
    body: Vec<u8>,
    signature: Option<String>,
) -> reqwest::Response {
    let id = uuid::Uuid::new_v4().to_string();
    github_as(app, Some(&id), event, body, signature).await
}

/// A GitHub delivery with delivery id `delivery` (none: the header is left out).
pub(crate) async fn github_as(
    app: &TestApp,
    delivery: Option<&str>,
    event: &str,
    body: Vec<u8>,
    signature: Option<String>,
) -> reqwest::Response {
    let mut req = app
        .client
        .post(app.url("/v1/webhooks/github"))
        .header("content-type", "application/json")
        .header("x-github-event", event)
        .body(body);
    if let Some(id) = delivery {
        req = req.header("x-github-delivery", id);
    }
    if let Some(s) = signature {
        req = req.header("x-hub-signature-256", s);
    }
    req.send().await.unwrap()
}

pub(crate) async fn with_service(app: &TestApp) {
    let res = app
        .create_service(
            &app.admin_token,
            json!({"name": "web", "repository": REPO, "webhook_secret": SECRET}),
        )
        .await;
    assert_eq!(res.status(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_push_to_the_tracked_branch_requests_a_build_of_that_commit() {
    let app = spawn_app().await;
    with_service(&app).await;
    let body = push("refs/heads/main");
    let res = github_as(
        &app,
        Some("72d3162e-cc78-11e3-81ab-4c9367dc0958"),
        "push",
        body.clone(),
        Some(sign(SECRET, &body)),
    )
    .await;
    assert_eq!(res.status(), 202);
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer["status"], "accepted");
    let build_id = answer["builds"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(answer["builds"][0]["url"], format!("/v1/builds/{build_id}"));

    let consumer = plain_consumer(
        &app.kafka.bootstrap_servers,
        &[&app.kafka.topics().name(Topic::Commands)],
    );
    let m = next_of_type(
        &consumer,
        "dev.slipway.build.requested.v1",
        Duration::from_secs(30),
    )
    .await
    .expect("build requested event");
    assert_eq!(header(&m, "ce_subject").as_deref(), Some(build_id.as_str()));
    let data: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
    assert_eq!(data["commit"], COMMIT);
    assert_eq!(data["git_ref"], "refs/heads/main");
    assert_eq!(data["repository"], REPO);
    assert_eq!(data["trigger"]["kind"], "github");
    assert_eq!(data["trigger"]["actor"], "octocat");
    assert_eq!(
        data["trigger"]["delivery"],
        "72d3162e-cc78-11e3-81ab-4c9367dc0958"
    );
    assert_eq!(app.count("operations").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_missing_and_misdirected_deliveries_change_nothing() {
    let app = spawn_app().await;
    with_service(&app).await;
    let body = push("refs/heads/main");

    let p = problem(
        github(
            &app,
            "push",
            body.clone(),
            Some(sign("not-the-secret", &body)),
        )
        .await,
        401,
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("signature"));
    problem(github(&app, "push", body.clone(), None).await, 401).await;
    // Signed, then altered in transit.
    let signature = sign(SECRET, &body);
    let tampered = push("refs/heads/evil");
    problem(github(&app, "push", tampered, Some(signature)).await, 401).await;

    // A repository no service builds from.
    let other = String::from_utf8(body.clone())
        .unwrap()
        .replace("acme/web", "acme/unknown")
        .into_bytes();
    let p = problem(
        github(&app, "push", other.clone(), Some(sign(SECRET, &other))).await,
        404,
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("acme/unknown"));

    // Not JSON at all.
    problem(
        github(
            &app,
            "push",
            b"payload=x".to_vec(),
            Some(sign(SECRET, b"payload=x")),
        )
        .await,
        400,
    )
    .await;

    assert_eq!(app.count("operations").await, 0, "no build was requested");
    assert_eq!(app.count("outbox").await, 0, "no command was enqueued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_and_untracked_branches_are_acknowledged_and_explained() {
    let app = spawn_app().await;
    with_service(&app).await;

    let body = push("refs/heads/feature");
    let res = github(&app, "push", body.clone(), Some(sign(SECRET, &body))).await;
    assert_eq!(res.status(), 202);
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer["status"], "ignored");
    assert!(
        answer["ignored"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("not the tracked branch"),
        "{answer}"
    );

    let ping = serde_json::to_vec(&json!({"zen": "Keep it logically awesome.", "hook_id": 1, "repository": {"clone_url": REPO}})).unwrap();
    let res = github(&app, "ping", ping.clone(), Some(sign(SECRET, &ping))).await;
    assert_eq!(res.status(), 200);
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer["services"][0], "web");
    assert_eq!(app.count("operations").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_push_hooks_are_checked_by_token() {
    let app = spawn_app().await;
    with_service(&app).await;
    let body = serde_json::to_vec(&json!({
        "object_kind": "push",
        "ref": "refs/heads/main",
        "after": COMMIT,
        "user_username": "jsmith",
        "project": {"git_http_url": "https://github.com/acme/web.git", "git_ssh_url": "git@github.com:acme/web.git"}
    }))
    .unwrap();
    let send = |token: &'static str| {
        app.client
            .post(app.url("/v1/webhooks/gitlab"))
            .header("content-type", "application/json")
            .header("x-gitlab-event", "Push Hook")
            .header("x-gitlab-token", token)
            .header("idempotency-key", "f8b9a3c2-1d2e-4f5a-9b8c-7d6e5f4a3b2c")
            .body(body.clone())
            .send()
    };
    problem(send("wrong-token-wrong-token").await.unwrap(), 401).await;
    assert_eq!(app.count("operations").await, 0);
    let res = send(SECRET).await.unwrap();
    assert_eq!(res.status(), 202);
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer["status"], "accepted");
    assert_eq!(app.count("operations").await, 1);

    // GitLab's retry of the delivery (same `Idempotency-Key`) does nothing again.
    let res = send(SECRET).await.unwrap();
    assert_eq!(res.status(), 200);
    let again: Value = res.json().await.unwrap();
    assert_eq!(again["status"], "duplicate", "{again}");
    assert_eq!(again["first"]["builds"], answer["builds"]);
    assert_eq!(app.count("operations").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_on_demand_are_role_checked_and_validated() {
    let app = spawn_app().await;
    with_service(&app).await;
    let viewer = app.token("viewer").await;
    let build = |token: String, path: &'static str, body: Value| {
        app.client
            .post(app.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let res = build(
        app.admin_token.clone(),
        "/v1/services/web/builds",
        json!({"ref": "main"}),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 202);
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer["status"], "requested");
    assert_eq!(
        res_location(&answer),
        format!("/v1/builds/{}", answer["id"].as_str().unwrap())
    );

    problem(
        build(viewer, "/v1/services/web/builds", json!({}))
            .await
            .unwrap(),
        403,
    )
    .await;
    problem(
        build(
            app.admin_token.clone(),
            "/v1/services/nope/builds",
            json!({}),
        )
        .await
        .unwrap(),
        404,
    )
    .await;
    let p = problem(
        build(
            app.admin_token.clone(),
            "/v1/services/web/builds",
            json!({"commit": "xyz"}),
        )
        .await
        .unwrap(),
        422,
    )
    .await;
    assert_eq!(p["errors"][0]["field"], "commit");
    let p = problem(
        build(
            app.admin_token.clone(),
            "/v1/services/web/builds",
            json!({"ref": "a..b"}),
        )
        .await
        .unwrap(),
        422,
    )
    .await;
    assert_eq!(p["errors"][0]["field"], "ref");
    assert_eq!(app.count("operations").await, 1);
}

fn res_location(answer: &Value) -> String {
    answer["url"].as_str().unwrap().to_owned()
}
