//! `PUT/DELETE /v1/services/{name}/clone-credential`, forwarded to a real builder.

use serde_json::json;

use crate::helpers::{problem, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployers_set_and_remove_a_clone_credential_that_is_never_shown() {
    let app = spawn_app().await;
    let res = app
        .create_service(
            &app.admin_token,
            json!({"name": "web", "repository": "https://git.example/web.git"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let deployer = app.token("deployer").await;
    let viewer = app.token("viewer").await;
    let url = app.url("/v1/services/web/clone-credential");
    let body = json!({"token": "ghp_gatewayS3cret"});

    let res = app
        .client
        .put(&url)
        .bearer_auth(&viewer)
        .json(&body)
        .send()
        .await
        .unwrap();
    problem(res, 403).await;
    let res = app.client.put(&url).json(&body).send().await.unwrap();
    problem(res, 401).await;

    let res = app
        .client
        .put(&url)
        .bearer_auth(&deployer)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert!(res.text().await.unwrap().is_empty());
    // The builder validates; its problem passes through, naming the field, not the value.
    let res = app
        .client
        .put(&url)
        .bearer_auth(&deployer)
        .json(&json!({"token": "ghp_bad s3cret"}))
        .send()
        .await
        .unwrap();
    let p = problem(res, 422).await;
    assert_eq!(p["errors"][0]["field"], "token", "{p}");
    assert!(!p.to_string().contains("s3cret"), "{p}");

    let res = app
        .client
        .delete(&url)
        .bearer_auth(&deployer)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let res = app
        .client
        .delete(&url)
        .bearer_auth(&deployer)
        .send()
        .await
        .unwrap();
    problem(res, 404).await;
    let res = app
        .client
        .put(app.url("/v1/services/nope/clone-credential"))
        .bearer_auth(&deployer)
        .json(&body)
        .send()
        .await
        .unwrap();
    problem(res, 404).await;

    // Audited by method, path and status only (the audit log has no body column).
    let rows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE path = '/v1/services/web/clone-credential'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(rows >= 5, "every call is audited (method, path, status)");
}
