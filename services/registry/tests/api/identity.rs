//! Service identity on the registry: who may call what, against the real service.

use serde_json::{Value, json};
use slipway_testkit::identity::{ServiceCaller, client};

use crate::helpers::{TestApp, spawn_app};

const CONFIG: &str = "/internal/v1/services/web/environments/prod/config/latest";

async fn problem(res: reqwest::Response, status: u16) -> Value {
    assert_eq!(res.status(), status, "{}", res.url());
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], status, "{body}");
    body
}

/// Service `web` with environment `prod` holding a secret, made as the gateway does.
async fn with_a_secret(app: &TestApp) {
    let res = app
        .create(json!({"name": "web", "repository": "https://git.example/web.git"}))
        .await;
    assert_eq!(res.status(), 201);
    let url = format!("{}/v1/services/web/environments/prod", app.address);
    assert_eq!(app.client.put(&url).send().await.unwrap().status(), 201);
    let res = app
        .client
        .put(format!("{url}/config"))
        .json(&json!({"vars": {}, "secrets": {"DB_PASSWORD": "s3cr3t-plain-value"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_without_a_known_credential_is_refused_but_ops_endpoints_stay_open() {
    let app = spawn_app().await;
    with_a_secret(&app).await;
    let anonymous = reqwest::Client::new();
    for path in [CONFIG, "/v1/services", "/v1/discovery", "/v1/nothing-here"] {
        let url = format!("{}{path}", app.address);
        let res = anonymous.get(&url).send().await.unwrap();
        assert_eq!(res.headers()["www-authenticate"], "Bearer");
        let body = problem(res, 401).await;
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("Authorization: Bearer"),
            "{body}"
        );
        let res = anonymous
            .get(&url)
            .bearer_auth("not-a-credential-of-any-slipway-service")
            .send()
            .await
            .unwrap();
        let body = problem(res, 401).await;
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("not that of any service"),
            "{body}"
        );
        assert!(!body.to_string().contains("s3cr3t"), "{body}");
    }
    for path in ["/healthz", "/readyz", "/metrics"] {
        let res = anonymous
            .get(format!("{}{path}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_deployer_reads_decrypted_config() {
    let app = spawn_app().await;
    with_a_secret(&app).await;
    let url = format!("{}{CONFIG}", app.address);

    let res = client(ServiceCaller::Deployer)
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let config: Value = res.json().await.unwrap();
    assert_eq!(config["secrets"]["DB_PASSWORD"], "s3cr3t-plain-value");

    for caller in [
        ServiceCaller::Gateway,
        ServiceCaller::Builder,
        ServiceCaller::Monitor,
        ServiceCaller::Registry,
    ] {
        let res = client(caller).get(&url).send().await.unwrap();
        let body = problem(res, 403).await;
        let detail = body["detail"].as_str().unwrap();
        assert!(
            detail.contains(&format!("the {caller} may not call"))
                && detail
                    .contains("`/internal/v1/services/{name}/environments/{env}/config/{version}`")
                && detail.contains("(allowed: deployer)"),
            "{detail}"
        );
        assert!(!body.to_string().contains("s3cr3t"), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_caller_reaches_only_its_own_routes() {
    let app = spawn_app().await;
    with_a_secret(&app).await;
    let deployer = client(ServiceCaller::Deployer);
    let url = |path: &str| format!("{}{path}", app.address);

    // What the deployer reads to run a release passes the guard (404: no release yet).
    let res = deployer
        .get(url("/v1/services/web/releases/1"))
        .send()
        .await
        .unwrap();
    problem(res, 404).await;
    let res = deployer
        .get(url("/v1/services/web/environments"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    // The rest of the API is the gateway's: the deployer may neither follow discovery nor
    // write anything.
    let res = deployer.get(url("/v1/discovery")).send().await.unwrap();
    let body = problem(res, 403).await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("(allowed: gateway)"),
        "{body}"
    );
    let res = deployer
        .put(url("/v1/services/web/environments/prod/config"))
        .json(&json!({"vars": {"X": "1"}}))
        .send()
        .await
        .unwrap();
    problem(res, 403).await;
    let res = deployer
        .post(url("/v1/services"))
        .json(&json!({"name": "evil", "repository": "https://git.example/e.git"}))
        .send()
        .await
        .unwrap();
    problem(res, 403).await;
    assert_eq!(app.count("services").await, 1);

    // The gateway follows discovery; an unknown path is an ordinary 404 for a known caller.
    let res = app.client.get(url("/v1/discovery")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let res = app
        .client
        .get(url("/v1/nothing-here"))
        .send()
        .await
        .unwrap();
    problem(res, 404).await;
}
