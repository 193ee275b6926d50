//! Replayed webhook deliveries produce nothing: the same delivery id, or the same signed body
//! under another id, answers `duplicate` with what the first one made; deliveries without an id,
//! and GitHub pushes older than the retention, are refused; old delivery ids are pruned.

use serde_json::{Value, json};

use crate::helpers::{TestApp, problem, spawn_app, spawn_with};
use crate::webhooks::{COMMIT, REPO, SECRET, github_as, push, sign, with_service};

const DELIVERY: &str = "c0ffee00-0000-4000-8000-000000000001";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_github_delivery_makes_one_build() {
    let app = spawn_app().await;
    with_service(&app).await;
    let body = push("refs/heads/main");
    let signature = sign(SECRET, &body);
    let deliver = |id: &'static str| {
        github_as(
            &app,
            Some(id),
            "push",
            body.clone(),
            Some(signature.clone()),
        )
    };

    let res = deliver(DELIVERY).await;
    assert_eq!(res.status(), 202);
    let first: Value = res.json().await.unwrap();
    assert_eq!(first["status"], "accepted", "{first}");
    let build = first["builds"][0]["id"].clone();

    // The same delivery again: GitHub's "Redeliver", or a captured delivery replayed.
    let res = deliver(DELIVERY).await;
    assert_eq!(res.status(), 200);
    let again: Value = res.json().await.unwrap();
    assert_eq!(again["status"], "duplicate", "{again}");
    assert_eq!(again["first"]["status"], "accepted");
    assert_eq!(
        again["first"]["builds"][0]["id"], build,
        "it points at the build made"
    );
    assert!(
        again["detail"]
            .as_str()
            .unwrap()
            .contains("already handled"),
        "{again}"
    );

    // `X-GitHub-Delivery` is not signed: the same signed body under a new id is a replay too.
    let res = deliver("replayed-under-a-new-id").await;
    assert_eq!(res.status(), 200);
    let again: Value = res.json().await.unwrap();
    assert_eq!(again["status"], "duplicate", "{again}");
    assert_eq!(again["first"]["delivery"], DELIVERY);
    assert_eq!(again["first"]["builds"][0]["id"], build);

    assert_eq!(app.count("operations").await, 1, "one build was requested");
    assert_eq!(app.count("webhook_deliveries").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_copies_of_a_delivery_make_one_build() {
    let app = spawn_app().await;
    with_service(&app).await;
    let body = push("refs/heads/main");
    let signature = sign(SECRET, &body);
    let copies = (0..4).map(|_| {
        github_as(
            &app,
            Some(DELIVERY),
            "push",
            body.clone(),
            Some(signature.clone()),
        )
    });
    let mut statuses: Vec<u16> = futures::future::join_all(copies)
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        [200, 200, 200, 202],
        "one accepted, three duplicates"
    );
    assert_eq!(app.count("operations").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_without_an_id_or_older_than_the_retention_produce_nothing() {
    let app = spawn_app().await;
    with_service(&app).await;
    let body = push("refs/heads/main");
    let signature = sign(SECRET, &body);

    let p = problem(
        github_as(&app, None, "push", body.clone(), Some(signature.clone())).await,
        400,
    )
    .await;
    assert!(
        p["detail"].as_str().unwrap().contains("X-GitHub-Delivery"),
        "{p}"
    );
    let long = "x".repeat(200);
    problem(
        github_as(&app, Some(&long), "push", body.clone(), Some(signature)).await,
        400,
    )
    .await;

    let gitlab = app
        .client
        .post(app.url("/v1/webhooks/gitlab"))
        .header("content-type", "application/json")
        .header("x-gitlab-event", "Push Hook")
        .header("x-gitlab-token", SECRET)
        .body(
            serde_json::to_vec(&json!({
                "ref": "refs/heads/main", "after": COMMIT, "project": {"git_http_url": REPO}
            }))
            .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let p = problem(gitlab, 400).await;
    assert!(
        p["detail"].as_str().unwrap().contains("Idempotency-Key"),
        "{p}"
    );

    // A push GitHub dates (signed) eight days ago: past the 7-day retention, so a replay.
    let stale = serde_json::to_vec(&json!({
        "ref": "refs/heads/main",
        "after": COMMIT,
        "repository": {
            "clone_url": REPO,
            "pushed_at": (chrono::Utc::now() - chrono::Duration::days(8)).timestamp(),
        },
    }))
    .unwrap();
    let res = github_as(
        &app,
        Some(DELIVERY),
        "push",
        stale.clone(),
        Some(sign(SECRET, &stale)),
    )
    .await;
    assert_eq!(res.status(), 202);
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer["status"], "ignored", "{answer}");
    assert!(
        answer["reason"].as_str().unwrap().contains("replay"),
        "{answer}"
    );

    assert_eq!(app.count("operations").await, 0, "no build was requested");
    assert_eq!(app.count("webhook_deliveries").await, 0);
}

async fn delivery_at(app: &TestApp, id: &str, days_ago: i64) {
    sqlx::query(
        "INSERT INTO webhook_deliveries (provider, delivery_id, body_sha256, outcome, received_at) \
         VALUES ('github', $1, $1, '{}', now() - make_interval(days => $2::int))",
    )
    .bind(id)
    .bind(days_ago as i32)
    .execute(&app.pool)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_ids_are_forgotten_after_the_retention() {
    let app = spawn_with(false).await;
    delivery_at(&app, "old", 8).await;
    delivery_at(&app, "recent", 6).await;
    let policy =
        slipway_gateway::retention::Policy::new(&Default::default(), chrono::Duration::days(7));
    let pruned = slipway_gateway::retention::prune_table(
        &app.pool,
        &policy,
        slipway_gateway::retention::Table::WebhookDeliveries,
    )
    .await
    .unwrap();
    assert_eq!(pruned, 1);
    let left: Vec<String> = sqlx::query_scalar("SELECT delivery_id FROM webhook_deliveries")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(left, ["recent"]);
}
