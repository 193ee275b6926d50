//! Reads: a deployment, the history of an environment, its current state.

use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{problem, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_malformed_deployment_ids_answer_404_problems_naming_them() {
    let app = spawn_app().await;

    let body = problem(app.get("/v1/deployments/not-a-uuid").await, 404).await;
    assert!(
        body["detail"].as_str().unwrap().contains("not-a-uuid"),
        "{body}"
    );

    let id = Uuid::now_v7();
    let body = problem(app.get(&format!("/v1/deployments/{id}")).await, 404).await;
    assert!(
        body["detail"].as_str().unwrap().contains(&id.to_string()),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_checks_its_query_and_is_empty_before_any_deployment() {
    let app = spawn_app().await;
    let path = "/v1/services/hello/environments/staging/deployments";

    for limit in ["0", "201", "500", "-1"] {
        let body = problem(app.get(&format!("{path}?limit={limit}")).await, 422).await;
        assert_eq!(body["errors"][0]["field"], "limit", "limit={limit}: {body}");
    }
    let body = problem(app.get(&format!("{path}?colour=blue")).await, 400).await;
    assert!(
        body["detail"].as_str().unwrap().contains("colour"),
        "{body}"
    );
    problem(app.get(&format!("{path}?limit=many")).await, 400).await;

    for query in ["", "?limit=1", "?limit=200"] {
        let res = app.get(&format!("{path}{query}")).await;
        assert_eq!(res.status(), 200, "{query}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body, json!({"items": []}), "{query}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_of_an_environment_never_deployed_is_a_404_problem() {
    let app = spawn_app().await;
    let body = problem(
        app.get("/v1/services/hello/environments/staging/state")
            .await,
        404,
    )
    .await;
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("hello") && detail.contains("staging"),
        "{body}"
    );
}
