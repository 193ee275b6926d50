//! `/internal/v1/.../config/{version}`: the deployer's view of a config, secrets opened.

use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app};

/// As the deployer, the one service allowed to read decrypted config.
async fn internal(app: &TestApp, path: &str) -> reqwest::Response {
    slipway_testkit::identity::client(slipway_testkit::identity::ServiceCaller::Deployer)
        .get(format!("{}/internal/v1/services/{path}", app.address))
        .send()
        .await
        .unwrap()
}

async fn ok(app: &TestApp, path: &str) -> Value {
    let res = internal(app, path).await;
    assert_eq!(res.status(), 200, "{path}");
    assert_eq!(res.headers()["cache-control"], "no-store");
    res.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deployer_reads_configs_with_secrets_decrypted() {
    let app = spawn_app().await;
    assert_eq!(
        app.create(json!({"name": "web", "repository": "https://git.example/web.git"}))
            .await
            .status(),
        201
    );
    let env = app
        .client
        .put(format!("{}/v1/services/web/environments/prod", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(env.status(), 201);

    // No config yet: the empty version 0, by number or as `latest`.
    let empty = json!({"version": 0, "vars": {}, "secrets": {}});
    assert_eq!(ok(&app, "web/environments/prod/config/latest").await, empty);
    assert_eq!(ok(&app, "web/environments/prod/config/0").await, empty);

    let put = |if_match: Option<&'static str>, body: Value| {
        let mut req = app
            .client
            .put(format!(
                "{}/v1/services/web/environments/prod/config",
                app.address
            ))
            .json(&body);
        if let Some(v) = if_match {
            req = req.header("if-match", v);
        }
        req.send()
    };
    let res = put(
        None,
        json!({"vars": {"GREETING": "hi"}, "secrets": {"DB_PASSWORD": "s3cr3t-plain-value"}}),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
    let public: Value = res.json().await.unwrap();
    assert_eq!(
        public["secrets"]["DB_PASSWORD"], "set",
        "the public API never shows it"
    );
    let res = put(
        Some("\"1\""),
        json!({"vars": {"GREETING": "hello"}, "secrets": {"API_KEY": "second-secret"}}),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 200);

    assert_eq!(
        ok(&app, "web/environments/prod/config/1").await,
        json!({"version": 1, "vars": {"GREETING": "hi"}, "secrets": {"DB_PASSWORD": "s3cr3t-plain-value"}})
    );
    assert_eq!(
        ok(&app, "web/environments/prod/config/latest").await,
        json!({
            "version": 2,
            "vars": {"GREETING": "hello"},
            "secrets": {"API_KEY": "second-secret", "DB_PASSWORD": "s3cr3t-plain-value"}
        })
    );

    for (path, mentions) in [
        ("web/environments/prod/config/3", "version 3"),
        ("web/environments/prod/config/newest", "newest"),
        ("web/environments/prod/config/-1", "-1"),
        ("web/environments/dev/config/latest", "dev"),
        ("nope/environments/prod/config/latest", "nope"),
    ] {
        let res = internal(&app, path).await;
        assert_eq!(res.status(), 404, "{path}");
        let problem: Value = res.json().await.unwrap();
        assert!(
            problem["detail"].as_str().unwrap().contains(mentions),
            "{path}: {problem}"
        );
    }
}
