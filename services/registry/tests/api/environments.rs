//! Environments and the target each is recorded on: what the deployer runs it on.

use serde_json::{Value, json};
use slipway_registry::startup::ServiceSettings;
use slipway_wire::releases::{Environments, TargetKind};

use crate::helpers::{TestApp, spawn_app_with_services};

async fn put(app: &TestApp, env: &str, body: Option<Value>) -> reqwest::Response {
    let mut req = app.client.put(format!(
        "{}/v1/services/shop/environments/{env}",
        app.address
    ));
    if let Some(body) = body {
        req = req.json(&body);
    }
    req.send().await.unwrap()
}

/// What the deployer reads (`GET /v1/services/{name}/environments`, as the deployer).
async fn targets(app: &TestApp) -> Vec<(String, TargetKind)> {
    let answer =
        slipway_testkit::identity::client(slipway_testkit::identity::ServiceCaller::Deployer)
            .get(format!("{}/v1/services/shop/environments", app.address))
            .send()
            .await
            .unwrap();
    assert_eq!(answer.status(), 200);
    let envs: Environments = answer.json().await.unwrap();
    envs.items.into_iter().map(|e| (e.name, e.target)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environments_answer_their_target_and_new_ones_get_the_default_one() {
    let app = spawn_app_with_services(ServiceSettings {
        default_target: TargetKind::Docker,
        ..ServiceSettings::default()
    })
    .await;
    assert_eq!(app.create(json!({"name": "shop"})).await.status(), 201);

    // No target: the registry's default; a named one as named.
    let res = put(&app, "dev", None).await;
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["target"], "docker", "{body}");
    assert_eq!(
        put(&app, "prod", Some(json!({"target": "kubernetes"})))
            .await
            .status(),
        201
    );
    assert_eq!(
        targets(&app).await,
        [
            ("dev".to_owned(), TargetKind::Docker),
            ("prod".to_owned(), TargetKind::Kubernetes)
        ]
    );

    // A change names its target; a PUT without one keeps the recorded target.
    assert_eq!(
        put(&app, "dev", Some(json!({"target": "process"})))
            .await
            .status(),
        200
    );
    let res = put(&app, "prod", None).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        targets(&app).await,
        [
            ("dev".to_owned(), TargetKind::Process),
            ("prod".to_owned(), TargetKind::Kubernetes)
        ]
    );

    // Anything else is refused by name, and nothing changes.
    let res = put(&app, "dev", Some(json!({"target": "vm"}))).await;
    assert_eq!(res.status(), 422);
    assert_eq!(
        res.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    let problem: Value = res.json().await.unwrap();
    let shown = problem.to_string();
    assert!(
        shown.contains("target") && shown.contains("`vm`"),
        "{shown}"
    );
    assert_eq!(targets(&app).await[0].1, TargetKind::Process);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_environment_is_read_without_the_list_and_a_missing_one_is_a_problem() {
    let app = spawn_app_with_services(ServiceSettings::default()).await;
    assert_eq!(app.create(json!({"name": "shop"})).await.status(), 201);
    let created = put(&app, "prod", Some(json!({"target": "docker"}))).await;
    assert_eq!(created.status(), 201);
    let get = |env: &str| {
        app.client
            .get(format!(
                "{}/v1/services/shop/environments/{env}",
                app.address
            ))
            .send()
    };
    let res = get("prod").await.unwrap();
    assert_eq!(res.status(), 200);
    let one: slipway_wire::releases::Environment = res.json().await.unwrap();
    assert_eq!(
        (one.name.as_str(), one.target),
        ("prod", TargetKind::Docker)
    );

    let res = get("staging").await.unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let problem: Value = res.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("no environment `staging`"),
        "{problem}"
    );
    assert_eq!(get("Not_A_Label").await.unwrap().status(), 422);
}
