//! The configured bootstrap token across restarts: never stored twice, and once revoked it stays
//! revoked (the gateway still starts, with a newly generated admin token).

use serde_json::Value;
use slipway_gateway::auth::tokens;
use slipway_gateway::startup::UpstreamSettings;

use crate::helpers::{TestApp, start_gateway};

fn nowhere() -> UpstreamSettings {
    // Nothing listens on the discard port: no upstream is needed here.
    let closed = "http://127.0.0.1:9".to_owned();
    UpstreamSettings {
        registry: closed.clone(),
        builder: closed.clone(),
        deployer: closed.clone(),
        monitor: closed,
        timeout_seconds: 2,
        connect_timeout_seconds: 3,
    }
}

async fn list_tokens(app: &TestApp) -> reqwest::Response {
    app.client
        .get(app.url("/v1/tokens"))
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_bootstrap_token_stays_revoked_across_restarts() {
    let base = slipway_testkit::base_settings("gateway").await;
    let app = start_gateway(base.clone(), nowhere(), Vec::new()).await;
    let listed: Value = list_tokens(&app).await.json().await.unwrap();
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{listed}");
    let bootstrap = items[0]["id"].as_str().unwrap().to_owned();

    // A restart while it is live stores nothing new.
    let app = start_gateway(base.clone(), nowhere(), Vec::new()).await;
    assert_eq!(app.count("api_tokens").await, 1);

    // The only admin revokes itself.
    let res = app
        .client
        .delete(app.url(&format!("/v1/tokens/{bootstrap}")))
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(list_tokens(&app).await.status(), 401);

    // The next start succeeds (it used to fail on the unique hash) and the token stays revoked.
    let app = start_gateway(base, nowhere(), Vec::new()).await;
    assert_eq!(list_tokens(&app).await.status(), 401, "still revoked");
    let rows: Vec<(String, bool)> = sqlx::query_as(
        "SELECT token_hash, revoked_at IS NOT NULL FROM api_tokens WHERE platform_admin \
         ORDER BY created_at",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(
        rows[0],
        (tokens::hash(&app.admin_token), true),
        "revoked, once"
    );
    assert!(
        !rows[1].1,
        "a generated admin token keeps the platform manageable"
    );
}
