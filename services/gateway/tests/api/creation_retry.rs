//! Retry-safe service creation and webhook secret rotation, on a real registry: a create whose
//! answer is lost (the registry created the service; a proxy drops its answer) is completed by
//! a retry, and the secret it answers signs webhooks; a rotated secret replaces the old one.

use serde_json::{Value, json};

use slipway_gateway::startup::UpstreamSettings;

use crate::helpers::{
    TestApp, problem, spawn_app, spawn_with_registry_behind, spawn_with_stand_ins,
    start_gateway_with, start_registry,
};
use crate::lossy_proxy::LossyProxy;
use crate::stand_in::StandIn;
use crate::webhooks::{REPO, github_as, sign};

/// A gateway whose registry loses the answer to the first `POST /v1/services`.
async fn losing_the_first_create() -> (TestApp, LossyProxy) {
    let mut proxy = None;
    let app = spawn_with_registry_behind(|registry| {
        let proxy = &mut proxy;
        async move {
            let started = LossyProxy::start(&registry, "POST /v1/services ").await;
            let url = started.url.clone();
            *proxy = Some(started);
            url
        }
    })
    .await;
    (app, proxy.unwrap())
}

async fn create(app: &TestApp, token: &str, key: Option<&str>, body: &Value) -> reqwest::Response {
    let mut req = app
        .client
        .post(app.url("/v1/services"))
        .bearer_auth(token)
        .json(body);
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    req.send().await.unwrap()
}

/// A signed GitHub push of `commit` to `main` of [`REPO`]; its status.
async fn push_signed_with(app: &TestApp, secret: &str, commit: &str) -> u16 {
    let body = serde_json::to_vec(&json!({
        "ref": "refs/heads/main",
        "before": "0000000000000000000000000000000000000000",
        "after": commit,
        "deleted": false,
        "repository": {"full_name": "acme/web", "clone_url": REPO,
                       "html_url": "https://github.com/acme/web"},
        "pusher": {"name": "octocat", "email": "octocat@example.com"}
    }))
    .unwrap();
    let delivery = uuid::Uuid::new_v4().to_string();
    let signature = sign(secret, &body);
    github_as(app, Some(&delivery), "push", body, Some(signature))
        .await
        .status()
        .as_u16()
}

fn commit(n: u8) -> String {
    format!("{n:02x}").repeat(20)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_whose_answer_was_lost_is_completed_by_its_retry() {
    let (app, proxy) = losing_the_first_create().await;
    let body = json!({"name": "web", "repository": REPO});

    let lost = create(&app, &app.admin_token, None, &body).await;
    assert!(proxy.lost(), "the registry's answer was dropped");
    let p = problem(lost, 503).await;
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("send the same request again"),
        "{p}"
    );
    // The registry did create it, and the gateway kept its secret under the same id.
    let stored: Value = app
        .client
        .get(app.url("/v1/services/web"))
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(app.count("webhook_secrets").await, 1);

    let retried = create(&app, &app.admin_token, None, &body).await;
    assert_eq!(retried.status(), 201);
    let created: Value = retried.json().await.unwrap();
    assert_eq!(
        created["id"], stored["id"],
        "the service the first attempt made"
    );
    assert_eq!(created["webhook_secret_generated"], true);
    let secret = created["webhook_secret"].as_str().unwrap();
    assert_eq!(push_signed_with(&app, secret, &commit(1)).await, 202);

    // Done now: a further retry is an ordinary taken name.
    problem(create(&app, &app.admin_token, None, &body).await, 409).await;
    assert_eq!(app.count("webhook_secrets").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_gets_the_same_answer_and_refuses_another_body() {
    let (app, _proxy) = losing_the_first_create().await;
    let body =
        json!({"name": "web", "repository": REPO, "webhook_secret": "given-secret-0123456789"});

    problem(
        create(&app, &app.admin_token, Some("k-1"), &body).await,
        503,
    )
    .await;
    let first = create(&app, &app.admin_token, Some("k-1"), &body).await;
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["webhook_secret"], "given-secret-0123456789");

    let again = create(&app, &app.admin_token, Some("k-1"), &body).await;
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again, first, "the same answer, secret included");

    let mut other = body.clone();
    other["branch"] = json!("develop");
    let p = problem(
        create(&app, &app.admin_token, Some("k-1"), &other).await,
        422,
    )
    .await;
    assert!(
        p["detail"].as_str().unwrap().contains("Idempotency-Key"),
        "{p}"
    );
    let mut other_secret = body.clone();
    other_secret["webhook_secret"] = json!("another-secret-0123456789");
    problem(
        create(&app, &app.admin_token, Some("k-1"), &other_secret).await,
        422,
    )
    .await;

    // Keys are the token's own: another token's `k-1` is a request of its own, and the name
    // is taken.
    let other_token = app.token("deployer").await;
    problem(create(&app, &other_token, Some("k-1"), &body).await, 409).await;
    problem(
        app.client
            .post(app.url("/v1/services"))
            .bearer_auth(&app.admin_token)
            .header("idempotency-key", "")
            .json(&body)
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    assert_eq!(app.count("webhook_secrets").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_replaces_the_old_one_at_once() {
    let app = spawn_app().await;
    let body = json!({"name": "web", "repository": REPO});
    let created: Value = create(&app, &app.admin_token, None, &body)
        .await
        .json()
        .await
        .unwrap();
    let old = created["webhook_secret"].as_str().unwrap().to_owned();
    assert_eq!(push_signed_with(&app, &old, &commit(1)).await, 202);
    // Suppose that answer was lost on its way to the client: a retry cannot show it again.
    problem(create(&app, &app.admin_token, None, &body).await, 409).await;

    let rotate = |token: String| {
        let app = &app;
        async move {
            app.client
                .post(app.url("/v1/services/web/webhook-secret"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
        }
    };
    let deployer = app.token("deployer").await;
    problem(rotate(deployer).await, 403).await;
    problem(
        app.client
            .post(app.url("/v1/services/nobody/webhook-secret"))
            .bearer_auth(&app.admin_token)
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;

    let res = rotate(app.admin_token.clone()).await;
    assert_eq!(res.status(), 200);
    let rotated: Value = res.json().await.unwrap();
    let new = rotated["webhook_secret"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert!(new.len() >= 32);
    assert_eq!(rotated["id"], created["id"]);
    assert!(rotated["rotated_at"].is_string());

    assert_eq!(
        push_signed_with(&app, &old, &commit(2)).await,
        401,
        "old refused"
    );
    assert_eq!(push_signed_with(&app, &new, &commit(3)).await, 202);

    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE method = 'POST' \
         AND path = '/v1/services/web/webhook-secret' AND status = 200 AND role IS NOT NULL",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(audited, 1);
    let refused: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE path = '/v1/services/web/webhook-secret' \
         AND status = 403",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(refused, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_cut_short_is_completed_through_another_gateway() {
    // Two gateways on one database, as after a restart or behind a load balancer: what the
    // first one started is in the database, not in its memory.
    let base = slipway_testkit::base_settings("gateway").await;
    let mut stops = Vec::new();
    let registry = start_registry(&base, &mut stops).await;
    let proxy = LossyProxy::start(&registry, "POST /v1/services ").await;
    let upstreams = || UpstreamSettings {
        registry: proxy.url.clone(),
        builder: "http://127.0.0.1:9".to_owned(),
        deployer: "http://127.0.0.1:9".to_owned(),
        monitor: "http://127.0.0.1:9".to_owned(),
        timeout_seconds: 5,
        connect_timeout_seconds: 3,
    };
    let key = slipway_testkit::secrets_key();
    let first = start_gateway_with(
        base.clone(),
        upstreams(),
        Vec::new(),
        Default::default(),
        key.clone(),
    )
    .await;
    let body =
        json!({"name": "web", "repository": REPO, "webhook_secret": "given-secret-0123456789"});
    problem(
        create(&first, &first.admin_token, Some("k"), &body).await,
        503,
    )
    .await;
    drop(first);

    let second = start_gateway_with(base, upstreams(), stops, Default::default(), key).await;
    let res = create(&second, &second.admin_token, Some("k"), &body).await;
    let status = res.status();
    let created: Value = res.json().await.unwrap();
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["webhook_secret"], "given-secret-0123456789");
    assert_eq!(
        push_signed_with(&second, "given-secret-0123456789", &commit(1)).await,
        202
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_registry_keeps_the_creation_for_the_retry() {
    let registry = StandIn::start().await;
    let (deployer, monitor) = (StandIn::start().await, StandIn::start().await);
    let failure = json!({"type": "https://slipway.dev/problems/internal", "title": "Internal",
                         "status": 500, "detail": "the database went away"});
    registry.answer("POST", "/v1/services", 500, failure);
    let app = spawn_with_stand_ins(&registry, &deployer, &monitor).await;
    let body = json!({"name": "web"});

    let p = problem(create(&app, &app.admin_token, None, &body).await, 502).await;
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("the creation is kept"),
        "{p}"
    );
    assert!(
        !p["detail"].as_str().unwrap().contains("database"),
        "the registry's detail is logged, not answered"
    );

    registry.answer(
        "POST",
        "/v1/services",
        201,
        json!({"id": uuid::Uuid::now_v7(), "name": "web", "project": "default",
               "repository": null, "branch": "main", "created_at": "2026-12-01T10:00:00Z"}),
    );
    let res = create(&app, &app.admin_token, None, &body).await;
    assert_eq!(res.status(), 201);
    assert_eq!(
        app.count("webhook_secrets").await,
        1,
        "the retry completed the kept creation instead of starting another"
    );
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM service_creations WHERE completed_at IS NULL")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(pending, 0);
}
