//! Outbound calls of a build end at their deadline or on cancel: a git server that never
//! answers, a registry that never answers. The builder then builds the next request.

use std::time::Duration;

use slipway_testkit::git::{Repo, example_dir};

use crate::helpers::{TestApp, hanging_server, spawn_configured, test_settings};

fn running(marker: &str) -> bool {
    let out = std::process::Command::new("pgrep")
        .args(["-f", marker])
        .output()
        .unwrap();
    !out.stdout.is_empty()
}

async fn step_is(app: &TestApp, id: slipway_ids::BuildId, step: &str) -> bool {
    slipway_testkit::wait_until(Duration::from_secs(60), || async {
        app.build(id).await.is_some_and(|b| b["step"] == step)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_git_server_that_never_answers_fails_the_fetch_at_its_deadline() {
    let (address, held) = hanging_server().await;
    let mut settings = test_settings().await;
    settings.builds.fetch_timeout_seconds = 2;
    let app = spawn_configured(settings).await;
    let url = format!("http://{address}/hung.git");
    let id = app.request(&url, None).await;
    let build = app.wait_finished(id).await;
    assert_eq!(build["status"], "failed", "{build}");
    assert_eq!(build["step"], "fetch");
    let reason = build["reason"].as_str().unwrap();
    assert!(reason.contains("did not finish within 2s"), "{reason}");
    assert!(!held.lock().await.is_empty(), "git did reach the server");
    let gone = slipway_testkit::wait_until(Duration::from_secs(10), || async {
        !running(&format!("{address}/hung.git"))
    })
    .await;
    assert!(gone, "git was killed");

    let repo = Repo::from_dir(&example_dir("hello-python"));
    let next = app.request(&repo.url, Some(&repo.head())).await;
    assert_eq!(app.wait_finished(next).await["status"], "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_never_answers_fails_the_push_or_is_cancelled() {
    let (address, _held) = hanging_server().await;
    let mut settings = test_settings().await;
    settings.registry.address = address;
    settings.registry.push_timeout_seconds = 2;
    let app = spawn_configured(settings).await;
    let repo = Repo::from_dir(&example_dir("hello-python"));
    let recipe = |n: u32| format!("[test]\ncommand = \"echo {n}\"\n[build]\ncommand = \"\"\n");

    let commit = repo.change("slipway.toml", &recipe(1));
    let id = app.request(&repo.url, Some(&commit)).await;
    let build = app.wait_finished(id).await;
    assert_eq!(build["status"], "failed", "{build}");
    assert_eq!(build["step"], "package");
    let reason = build["reason"].as_str().unwrap();
    assert!(reason.contains("did not finish within 2s"), "{reason}");

    // A cancel during the push ends it at once, however long the deadline.
    let mut settings = test_settings().await;
    let (address, _held) = hanging_server().await;
    settings.registry.address = address;
    settings.registry.push_timeout_seconds = 600;
    let app = spawn_configured(settings).await;
    let commit = repo.change("slipway.toml", &recipe(2));
    let id = app.request(&repo.url, Some(&commit)).await;
    assert!(step_is(&app, id, "package").await, "the push started");
    let res = app
        .client
        .post(app.url(&format!("/v1/builds/{id}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let build = app.wait_finished(id).await;
    assert_eq!(build["status"], "cancelled", "{build}");
    assert_eq!(build["step"], "package");
}
