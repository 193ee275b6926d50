use serde_json::{Value, json};

use crate::helpers::{problem, spawn_app, spawn_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_then_read_back_through_the_gateway() {
    let app = spawn_app().await;
    let res = app
        .create_service(
            &app.admin_token,
            json!({"name": "hello", "repository": "https://git.example/hello.git"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let created: Value = res.json().await.unwrap();
    assert_eq!(created["name"], "hello");
    assert!(created["id"].as_str().unwrap().len() == 36);
    let secret = created["webhook_secret"].as_str().unwrap();
    assert!(secret.len() >= 32, "a generated secret is strong");
    assert_eq!(created["webhook_secret_generated"], true);

    let got: Value = app
        .client
        .get(app.url("/v1/services/hello"))
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["id"], created["id"]);
    assert!(
        got.get("webhook_secret").is_none(),
        "the secret is shown once, at creation"
    );

    let list: Value = app
        .client
        .get(app.url("/v1/services?limit=10"))
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);

    let res = app
        .client
        .get(app.url("/v1/services/nobody"))
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .unwrap();
    problem(res, 404).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_given_webhook_secret_is_kept() {
    let app = spawn_app().await;
    let res = app
        .create_service(
            &app.admin_token,
            json!({"name": "mine", "webhook_secret": "0123456789abcdef0123"}),
        )
        .await;
    let created: Value = res.json().await.unwrap();
    assert_eq!(created["webhook_secret"], "0123456789abcdef0123");
    assert_eq!(created["webhook_secret_generated"], false);
    let stored: String = sqlx::query_scalar("SELECT sealed FROM webhook_secrets")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(
        !stored.contains("0123456789abcdef0123"),
        "sealed at rest: {stored}"
    );
    let plain: Option<String> = sqlx::query_scalar("SELECT secret FROM webhook_secrets")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(plain, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_creates_leave_no_secret_behind() {
    let app = spawn_app().await;
    assert_eq!(
        app.create_service(&app.admin_token, json!({"name": "taken"}))
            .await
            .status(),
        201
    );

    problem(
        app.create_service(&app.admin_token, json!({"name": "taken"}))
            .await,
        409,
    )
    .await;
    let p = problem(
        app.create_service(&app.admin_token, json!({"name": "Bad Name"}))
            .await,
        422,
    )
    .await;
    assert_eq!(p["errors"][0]["field"], "name");
    let p = problem(
        app.create_service(
            &app.admin_token,
            json!({"name": "ok", "webhook_secret": "short"}),
        )
        .await,
        422,
    )
    .await;
    assert_eq!(p["errors"][0]["field"], "webhook_secret");
    problem(
        app.create_service(&app.admin_token, json!({"name": "ok", "extra": 1}))
            .await,
        422,
    )
    .await;
    let res = app
        .client
        .post(app.url("/v1/services"))
        .bearer_auth(&app.admin_token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    problem(res, 400).await;

    assert_eq!(
        app.count("webhook_secrets").await,
        1,
        "only the successful create kept a secret"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_registry_is_503_and_changes_nothing() {
    let app = spawn_with(false).await;
    let p = problem(
        app.create_service(&app.admin_token, json!({"name": "later"}))
            .await,
        503,
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("registry"));
    assert_eq!(app.count("webhook_secrets").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_secrets_stored_in_plain_text_before_sealing_get_sealed() {
    let app = spawn_app().await;
    let legacy = slipway_ids::ServiceId::new();
    sqlx::query(
        "INSERT INTO webhook_secrets (service_id, secret) VALUES ($1, 'plain-legacy-secret-1234')",
    )
    .bind(legacy)
    .execute(&app.pool)
    .await
    .unwrap();
    let sealer = slipway_secrets::SecretBox::from_base64(&slipway_testkit::secrets_key()).unwrap();
    slipway_gateway::startup::seal_legacy_webhook_secrets(&app.pool, &sealer)
        .await
        .unwrap();
    slipway_gateway::startup::seal_legacy_webhook_secrets(&app.pool, &sealer)
        .await
        .unwrap(); // idempotent
    let (plain, sealed): (Option<String>, Option<String>) =
        sqlx::query_as("SELECT secret, sealed FROM webhook_secrets WHERE service_id = $1")
            .bind(legacy)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(plain, None, "the plain text is gone");
    assert_eq!(
        sealer.open(&sealed.unwrap()).unwrap(),
        "plain-legacy-secret-1234"
    );
}
