use std::time::Duration;

use serde_json::{Value, json};
use slipway_events::Topic;
use slipway_testkit::{header, next_of_type, plain_consumer};

use crate::helpers::spawn_app;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_stores_the_service_and_publishes_service_created() {
    let app = spawn_app().await;
    let res = app
        .create(json!({"name": "hello", "repository": "https://git.example/acme/hello.git"}))
        .await;
    assert_eq!(res.status(), 201);
    assert_eq!(res.headers()["location"], "/v1/services/hello");
    let service: Value = res.json().await.unwrap();
    assert_eq!(service["name"], "hello");
    assert_eq!(service["branch"], "main");
    let id = service["id"].as_str().unwrap().to_owned();

    let got: Value = app
        .client
        .get(format!("{}/v1/services/hello", app.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got, service);

    let topic = app.settings.kafka.topics().name(Topic::Services);
    let consumer = plain_consumer(&app.settings.kafka.bootstrap_servers, &[&topic]);
    let m = next_of_type(
        &consumer,
        "dev.slipway.service.created.v1",
        Duration::from_secs(30),
    )
    .await
    .expect("service created event published");
    use rdkafka::Message;
    assert_eq!(m.key(), Some(id.as_bytes()));
    assert_eq!(
        header(&m, "ce_source").as_deref(),
        Some("/slipway/registry")
    );
    assert_eq!(header(&m, "ce_subject").as_deref(), Some("hello"));
    let data: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
    assert_eq!(data["service_id"], id.as_str());
    assert_eq!(data["repository"], "https://git.example/acme/hello.git");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_and_duplicate_services_are_refused_and_leave_nothing_behind() {
    let app = spawn_app().await;
    assert_eq!(app.create(json!({"name": "dup"})).await.status(), 201);

    let cases = [
        (json!({"name": "dup"}), 409, None),
        (json!({"name": "Not_A_Label"}), 422, Some("name")),
        (
            json!({"name": "ok", "repository": "ftp://x/y"}),
            422,
            Some("repository"),
        ),
        (
            json!({"name": "ok", "repository": "https://ghp_s3cr3tt0ken@github.com/acme/x.git"}),
            422,
            Some("repository"),
        ),
        (
            json!({"name": "ok", "repository": "https://user:hunter2@github.com/acme/x.git"}),
            422,
            Some("repository"),
        ),
        // Local repositories need `[services] allow_local_repositories`, off here.
        (
            json!({"name": "ok", "repository": "file:///srv/git/x.git"}),
            422,
            Some("repository"),
        ),
        (
            json!({"name": "ok", "repository": "/srv/git/x.git"}),
            422,
            Some("repository"),
        ),
        (json!({"name": "ok", "branch": "a..b"}), 422, Some("branch")),
        (json!({"name": "ok", "colour": "blue"}), 422, None),
        (json!({"nom": "ok"}), 422, None),
    ];
    for (body, status, field) in cases {
        let res = app.create(body.clone()).await;
        assert_eq!(res.status(), status, "{body}");
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        let problem: Value = res.json().await.unwrap();
        for secret in ["s3cr3t", "hunter2"] {
            assert!(!problem.to_string().contains(secret), "echoed: {problem}");
        }
        assert_eq!(problem["status"], status);
        assert!(!problem["detail"].as_str().unwrap().is_empty());
        if let Some(field) = field {
            assert_eq!(problem["errors"][0]["field"], field, "{problem}");
        }
    }
    assert_eq!(app.count("services").await, 1);
    assert_eq!(
        app.count("outbox").await,
        1,
        "no event for a refused create"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_by_name_and_unknown_names_are_404() {
    let app = spawn_app().await;
    for name in ["charlie", "alpha", "bravo"] {
        assert_eq!(app.create(json!({"name": name})).await.status(), 201);
    }
    let page: Value = app
        .client
        .get(format!("{}/v1/services?limit=2", app.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alpha", "bravo"]);
    assert_eq!(page["next"], "bravo");
    let rest: Value = app
        .client
        .get(format!("{}/v1/services?limit=2&after=bravo", app.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rest["items"][0]["name"], "charlie");
    assert_eq!(rest["next"], Value::Null);

    let bad = app
        .client
        .get(format!("{}/v1/services?limit=0", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);
    let missing = app
        .client
        .get(format!("{}/v1/services/nope", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let problem: Value = missing.json().await.unwrap();
    assert!(problem["detail"].as_str().unwrap().contains("nope"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_endpoints_answer() {
    let app = spawn_app().await;
    for path in ["/healthz", "/readyz", "/metrics"] {
        let res = app
            .client
            .get(format!("{}{path}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{path}");
    }
    let metrics = app
        .client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("slipway_http_requests_total"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_are_found_by_any_form_of_their_repository_url() {
    let app = spawn_app().await;
    let created = app
        .create(json!({"name": "web", "repository": "git@github.com:Acme/Web.git"}))
        .await;
    assert_eq!(created.status(), 201);
    app.create(json!({"name": "other", "repository": "https://github.com/acme/other.git"}))
        .await;
    for form in [
        "https://github.com/acme/web.git",
        "https://github.com/acme/web",
        "ssh://git@github.com/acme/web",
    ] {
        let page: Value = app
            .client
            .get(format!("{}/v1/services", app.address))
            .query(&[("repository", form)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let names: Vec<&str> = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["web"], "{form}");
    }
    let stored: String =
        sqlx::query_scalar("SELECT repository_key FROM services WHERE name = 'web'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(stored, "github.com/acme/web");
}
