//! A request for a commit the service already has queued, running or built is served by that
//! build: no second build, no second artifact (so no second release). Failed commits are built
//! again; other services build their own.

use std::time::Duration;

use serde_json::Value;
use slipway_events::slipway::{BuildRequested, BuildTrigger};
use slipway_ids::{BuildId, ServiceId};
use slipway_testkit::git::{Repo, example_dir};
use slipway_testkit::wait_until;

use crate::helpers::{TestApp, spawn_app};

async fn listed(app: &TestApp) -> Vec<Value> {
    let list: Value = app
        .client
        .get(format!("{}/v1/builds?service=hello", app.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    list["items"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_requests_for_one_commit_make_one_build() {
    let app = spawn_app().await;
    let repo = Repo::from_dir(&example_dir("hello-python"));
    let commit = repo.head();
    let service = ServiceId::new();
    let first = app.request_for(service, &repo.url, Some(&commit), 1).await;
    let second = app.request_for(service, &repo.url, Some(&commit), 1).await;

    let built = app.wait_finished(first).await;
    assert_eq!(built["status"], "succeeded", "{built}");
    assert!(built.get("reused_for").is_none(), "{built}");
    // The second request is answered with the first build, and says so.
    let reused = app.wait_finished(second).await;
    assert_eq!(reused["id"], first.to_string(), "{reused}");
    assert_eq!(reused["reused_for"], second.to_string(), "{reused}");
    assert_eq!(reused["image"], built["image"]);

    // Once built, a later request (a replayed webhook) reuses it too.
    let third = app.request_for(service, &repo.url, Some(&commit), 1).await;
    let again = app.wait_finished(third).await;
    assert_eq!(again["id"], first.to_string(), "{again}");

    assert_eq!(listed(&app).await.len(), 1, "one build in the list");
    let logs = app.log_text(second).await;
    assert_eq!(
        logs.matches("Ran 3 tests").count(),
        1,
        "the gate ran once, logs read through the reusing request: {logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_is_built_again_and_services_do_not_share_builds() {
    let app = spawn_app().await;
    let repo = Repo::from_dir(&example_dir("hello-python"));
    let missing = "0123456789abcdef0123456789abcdef01234567";
    let service = ServiceId::new();
    let failed = app.request_for(service, &repo.url, Some(missing), 1).await;
    let build = app.wait_finished(failed).await;
    assert_eq!(build["status"], "failed", "{build}");

    let retried = app.request_for(service, &repo.url, Some(missing), 1).await;
    let build = app.wait_finished(retried).await;
    assert_eq!(build["id"], retried.to_string(), "built again: {build}");
    assert_eq!(build["status"], "failed", "{build}");

    let other = app
        .request_for(ServiceId::new(), &repo.url, Some(missing), 1)
        .await;
    let build = app.wait_finished(other).await;
    assert_eq!(build["id"], other.to_string(), "its own build: {build}");
    assert_eq!(listed(&app).await.len(), 3);
}

fn requested(service: ServiceId, repository: &str, commit: &str) -> BuildRequested {
    BuildRequested {
        build_id: BuildId::new(),
        service_id: service,
        service_name: "race".into(),
        project: None,
        repository: Some(repository.into()),
        git_ref: "refs/heads/main".into(),
        commit: Some(commit.into()),
        upload: None,
        trigger: BuildTrigger {
            kind: "api".into(),
            delivery: None,
            actor: Some("test".into()),
        },
        requested_at: chrono::Utc::now(),
    }
}

/// Two builders storing requests for one commit at the same moment: the unique index makes
/// the second wait for the first and then reuse its build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_for_one_commit_share_a_build() {
    let app = spawn_app().await;
    let pool = sqlx::PgPool::connect_with(app.database.connect_options())
        .await
        .unwrap();
    // A commit that builds: the build stays queued, running or succeeded throughout.
    let repo = Repo::from_dir(&example_dir("hello-python"));
    let commit = repo.head();
    let commit = commit.as_str();
    let service = ServiceId::new();
    let (a, b) = (
        requested(service, &repo.url, commit),
        requested(service, &repo.url, commit),
    );

    let mut first = pool.begin().await.unwrap();
    slipway_builder::builds::enqueue(&mut first, &a)
        .await
        .unwrap();
    let racing = {
        let pool = pool.clone();
        let b = b.clone();
        tokio::spawn(async move {
            let mut second = pool.begin().await.unwrap();
            slipway_builder::builds::enqueue(&mut second, &b)
                .await
                .unwrap();
            second.commit().await.unwrap();
        })
    };
    // The second insert waits on the first's uncommitted row.
    let waiting = wait_until(Duration::from_secs(10), || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
             AND query LIKE 'INSERT INTO builds%'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        n > 0
    })
    .await;
    assert!(waiting, "the second request waits for the first");
    first.commit().await.unwrap();
    racing.await.unwrap();

    let builds: i64 = sqlx::query_scalar("SELECT count(*) FROM builds WHERE reuse_commit = $1")
        .bind(commit)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(builds, 1);
    let served_by: BuildId =
        sqlx::query_scalar("SELECT build_id FROM build_reuses WHERE request_id = $1")
            .bind(b.build_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(served_by, a.build_id);
}
