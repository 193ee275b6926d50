//! The deploy API's reads, forwarded to the registry, deployer and monitor (stand-ins), and
//! who may do what.

use serde_json::{Value, json};

use crate::deployments::{DEPLOYMENTS, accepted, setup};
use crate::helpers::problem;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_reads_but_cannot_deploy_roll_back_scale_or_cancel() {
    let s = setup().await;
    let viewer = s.app.token("viewer").await;
    let admin = s.app.admin_token.clone();
    let id = accepted(
        s.post(DEPLOYMENTS, &admin, json!({"release": 1})).await,
        "deploy",
    )
    .await;
    for (method, path, body) in [
        (
            reqwest::Method::POST,
            DEPLOYMENTS.to_owned(),
            json!({"release": 2}),
        ),
        (
            reqwest::Method::POST,
            "/v1/services/web/environments/prod/rollback".to_owned(),
            json!({}),
        ),
        (
            reqwest::Method::PUT,
            "/v1/services/web/environments/prod/scale".to_owned(),
            json!({"replicas": 2}),
        ),
        (
            reqwest::Method::POST,
            format!("/v1/deployments/{id}/cancel"),
            json!({}),
        ),
    ] {
        let p = problem(s.send(method, &path, &viewer, Some(body)).await, 403).await;
        assert!(p["detail"].as_str().unwrap().contains("deployer"), "{p}");
    }
    assert_eq!(
        s.app.count("operations").await,
        1,
        "only the admin's deploy"
    );
    let res = s
        .send(
            reqwest::Method::GET,
            &format!("/v1/deployments/{id}"),
            &viewer,
            None,
        )
        .await;
    assert_eq!(res.status(), 200);
    let res = s
        .app
        .client
        .post(s.app.url(DEPLOYMENTS))
        .json(&json!({"release": 1}))
        .send()
        .await
        .unwrap();
    problem(res, 401).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_forwarded_to_their_owner_with_status_body_and_query() {
    let s = setup().await;
    s.deployer.answer(
        "GET",
        "/v1/services/web/environments/prod/state",
        200,
        json!({"release": 2, "replicas": 3, "weights": [{"release": 2, "weight": 100}]}),
    );
    s.deployer.answer(
        "GET",
        "/v1/services/web/environments/prod/deployments",
        200,
        json!({"items": [{"id": "d1"}]}),
    );
    s.monitor.answer(
        "GET",
        "/v1/services/web/health",
        200,
        json!({"items": [{"health": "healthy"}]}),
    );
    s.monitor.answer(
        "GET",
        "/v1/services/web/environments/prod/logs",
        422,
        json!({"type": "https://slipway.dev/problems/validation", "title": "Unprocessable Entity",
               "status": 422, "detail": "`limit`: must be 1..=1000"}),
    );
    s.registry.answer(
        "GET",
        "/v1/services/web/instances",
        200,
        json!({"index": 7, "items": []}),
    );

    let state: Value = s
        .get("/v1/services/web/environments/prod/state")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(state["weights"][0]["weight"], 100);
    let list: Value = s
        .get("/v1/services/web/environments/prod/deployments?limit=5")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"][0]["id"], "d1");
    let health: Value = s
        .get("/v1/services/web/health?environment=prod")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(health["items"][0]["health"], "healthy");
    let p = problem(
        s.get("/v1/services/web/environments/prod/logs?instance=0190f5a4-7b9e-7c3a-8000-000000000001&since_seq=10&limit=5000")
            .await,
        422,
    )
    .await;
    assert_eq!(
        p["detail"], "`limit`: must be 1..=1000",
        "the owner's problem, unchanged"
    );
    // A blocking query longer than the gateway's 2 s upstream timeout still gets its answer.
    let res = s
        .get("/v1/services/web/instances?environment=prod&index=6&wait=3s")
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["index"], 7);
    // The deployer's own 404 (no such environment there) passes through.
    problem(s.get("/v1/services/web/environments/qa/state").await, 404).await;

    assert_eq!(
        s.deployer.seen(),
        [
            "GET /v1/services/web/environments/prod/state",
            "GET /v1/services/web/environments/prod/deployments?limit=5",
            "GET /v1/services/web/environments/qa/state",
        ]
    );
    assert_eq!(
        s.monitor.seen(),
        [
            "GET /v1/services/web/health?environment=prod",
            "GET /v1/services/web/environments/prod/logs?instance=0190f5a4-7b9e-7c3a-8000-000000000001&since_seq=10&limit=5000",
        ]
    );
    assert!(
        s.registry.seen().contains(
            &"GET /v1/services/web/instances?environment=prod&index=6&wait=3s".to_owned()
        )
    );

    // An owner failing is a 502, never its internals; a path that cannot name anything is 404
    // and is not forwarded.
    s.monitor.answer(
        "GET",
        "/v1/services/web/health",
        500,
        json!({"detail": "db password is hunter2"}),
    );
    let p = problem(s.get("/v1/services/web/health").await, 502).await;
    assert!(!p.to_string().contains("hunter2"));
    problem(s.get("/v1/services/we_b/health").await, 404).await;
    problem(
        s.get("/v1/services/web/environments/pr.od/state").await,
        404,
    )
    .await;
    assert_eq!(s.monitor.seen().len(), 3);
    assert_eq!(s.deployer.seen().len(), 3);
}
