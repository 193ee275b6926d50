use serde_json::{Value, json};

use crate::helpers::{problem, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_valid_token_are_401() {
    let app = spawn_app().await;
    let res = app
        .client
        .get(app.url("/v1/services"))
        .send()
        .await
        .unwrap();
    let body = problem(res, 401).await;
    assert!(body["detail"].as_str().unwrap().contains("Bearer"));

    let res = app
        .client
        .get(app.url("/v1/services"))
        .bearer_auth("slw_wrong")
        .send()
        .await
        .unwrap();
    problem(res, 401).await;
    let res = app
        .client
        .get(app.url("/v1/services"))
        .header("authorization", format!("Basic {}", app.admin_token))
        .send()
        .await
        .unwrap();
    problem(res, 401).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_gate_what_a_token_may_do() {
    let app = spawn_app().await;
    let viewer = app.token("viewer").await;
    let deployer = app.token("deployer").await;

    // Viewers read but do not change.
    let res = app
        .client
        .get(app.url("/v1/services"))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body = problem(
        app.create_service(&viewer, json!({"name": "nope"})).await,
        403,
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("deployer"),
        "{body}"
    );

    // Deployers change services but do not manage tokens.
    assert_eq!(
        app.create_service(&deployer, json!({"name": "yes"}))
            .await
            .status(),
        201
    );
    let res = app
        .client
        .post(app.url("/v1/tokens"))
        .bearer_auth(&deployer)
        .json(&json!({"name": "x", "role": "admin"}))
        .send()
        .await
        .unwrap();
    problem(res, 403).await;

    // Revoked tokens stop working.
    let tokens: Value = app
        .client
        .get(app.url("/v1/tokens"))
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed = tokens["items"].as_array().unwrap();
    assert_eq!(listed.len(), 3);
    assert!(
        listed
            .iter()
            .all(|t| t.get("token").is_none() && t.get("token_hash").is_none())
    );
    let viewer_id = listed
        .iter()
        .find(|t| t["grants"] == json!([{"project": "default", "role": "viewer"}]))
        .unwrap()["id"]
        .as_str()
        .unwrap();
    let res = app
        .client
        .delete(app.url(&format!("/v1/tokens/{viewer_id}")))
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let res = app
        .client
        .get(app.url("/v1/services"))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    problem(res, 401).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_requests_are_validated() {
    let app = spawn_app().await;
    for (body, field) in [
        (json!({"name": "x", "role": "root"}), "role"),
        (json!({"name": "", "role": "viewer"}), "name"),
    ] {
        let res = app
            .client
            .post(app.url("/v1/tokens"))
            .bearer_auth(&app.admin_token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let p = problem(res, 422).await;
        assert_eq!(p["errors"][0]["field"], field);
    }
    let res = app
        .client
        .delete(app.url("/v1/tokens/not-a-uuid"))
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .unwrap();
    problem(res, 404).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mutation_is_audited_including_refusals() {
    let app = spawn_app().await;
    let viewer = app.token("viewer").await;
    app.create_service(&app.admin_token, json!({"name": "audited"}))
        .await;
    app.create_service(&viewer, json!({"name": "refused"}))
        .await;
    app.create_service("slw_bogus", json!({"name": "anonymous"}))
        .await;
    app.client
        .get(app.url("/v1/services"))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();

    let audit: Value = app
        .client
        .get(app.url("/v1/audit"))
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entries: Vec<(String, String, i64, Option<String>)> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["method"].as_str().unwrap().to_owned(),
                e["path"].as_str().unwrap().to_owned(),
                e["status"].as_i64().unwrap(),
                e["role"].as_str().map(str::to_owned),
            )
        })
        .collect();
    // Newest first: anonymous 401, viewer 403, admin 201, token creation 201. No GETs. The
    // role is the one the call acted with: the viewer's in `default`, or platform admin.
    assert_eq!(entries.len(), 4, "{entries:?}");
    assert_eq!(
        entries[0],
        ("POST".into(), "/v1/services".into(), 401, None)
    );
    assert_eq!(
        entries[1],
        (
            "POST".into(),
            "/v1/services".into(),
            403,
            Some("viewer".into())
        )
    );
    assert_eq!(
        entries[2],
        (
            "POST".into(),
            "/v1/services".into(),
            201,
            Some("platform-admin".into())
        )
    );
    assert_eq!(
        entries[3],
        (
            "POST".into(),
            "/v1/tokens".into(),
            201,
            Some("platform-admin".into())
        )
    );
}
