use std::time::Duration;

use rdkafka::Message;
use reqwest::StatusCode;
use serde_json::{Value, json};
use slipway_events::Topic;
use slipway_events::cdevents::CdEvent;
use slipway_ids::BuildId;
use slipway_testkit::{next_of_type, plain_consumer};

use crate::helpers::{TestApp, spawn_app};

async fn put_config(app: &TestApp, if_match: Option<&str>, body: Value) -> reqwest::Response {
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
    req.send().await.unwrap()
}

async fn with_environment(app: &TestApp) {
    assert_eq!(
        app.create(json!({"name": "web", "repository": "https://git.example/web.git"}))
            .await
            .status(),
        201
    );
    let res = app
        .client
        .put(format!("{}/v1/services/web/environments/prod", app.address))
        .json(&json!({"target": "process"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let again = app
        .client
        .put(format!("{}/v1/services/web/environments/prod", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200, "the second PUT changes, not creates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_versions_are_optimistic_and_secrets_stay_sealed() {
    let app = spawn_app().await;
    with_environment(&app).await;

    let res = put_config(
        &app,
        None,
        json!({"vars": {"GREETING": "hi"}, "secrets": {"DB_PASSWORD": "s3cr3t-plain-value"}}),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["etag"], "\"1\"");
    let text = res.text().await.unwrap();
    assert!(!text.contains("s3cr3t-plain-value"), "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["secrets"]["DB_PASSWORD"], "set");
    assert_eq!(body["vars"]["GREETING"], "hi");

    // A change must name the version it replaces.
    assert_eq!(
        put_config(&app, None, json!({"vars": {}})).await.status(),
        StatusCode::PRECONDITION_REQUIRED
    );
    assert_eq!(
        put_config(&app, Some("\"0\""), json!({"vars": {}}))
            .await
            .status(),
        StatusCode::PRECONDITION_FAILED
    );
    let res = put_config(
        &app,
        Some("\"1\""),
        json!({"secrets": {"API_KEY": "another-secret-value"}}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["version"], 2);
    assert_eq!(body["vars"]["GREETING"], "hi", "absent vars are kept");
    assert_eq!(
        body["secrets"],
        json!({"API_KEY": "set", "DB_PASSWORD": "set"})
    );
    let res = put_config(
        &app,
        Some("\"2\""),
        json!({"secrets": {"DB_PASSWORD": null}}),
    )
    .await;
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body["secrets"],
        json!({"API_KEY": "set"}),
        "null removes a secret"
    );

    // Bad names and unknown environments change nothing.
    for (body, field) in [
        (json!({"vars": {"lower": "x"}}), "vars"),
        (json!({"vars": {"PORT": "1"}}), "vars"),
        (json!({"secrets": {"SLIPWAY_X": "1"}}), "secrets"),
    ] {
        let res = put_config(&app, Some("\"3\""), body).await;
        assert_eq!(res.status(), 422);
        let p: Value = res.json().await.unwrap();
        assert_eq!(p["errors"][0]["field"], field);
    }
    let res = app
        .client
        .put(format!(
            "{}/v1/services/web/environments/nope/config",
            app.address
        ))
        .json(&json!({"vars": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);

    // At rest: sealed.
    let stored: Vec<String> = sqlx::query_scalar("SELECT secrets::text FROM config_versions")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored.len(), 3);
    assert!(
        stored
            .iter()
            .all(|s| !s.contains("s3cr3t-plain-value") && !s.contains("another-secret-value"))
    );
}

/// What the builder publishes for a pushed image.
fn published(service_id: &str, build: BuildId, digest_hex: &str) -> slipway_events::CloudEvent {
    let purl = format!("pkg:oci/web@sha256%3A{digest_hex}");
    CdEvent::artifact_published("/slipway/builder", &purl)
        .with_custom_data(json!({
            "service_id": service_id, "service": "web", "build_id": build, "commit": "abc123",
            "image": format!("127.0.0.1:5000/web@sha256:{digest_hex}"), "digest": format!("sha256:{digest_hex}"),
            "run": {"command": ["python3", "app.py"], "port_env": "PORT", "health_path": "/healthz"}
        }))
        .into_cloud_event(service_id.parse().unwrap(), Some("web".into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_artifacts_become_numbered_immutable_releases() {
    let app = spawn_app().await;
    with_environment(&app).await;
    put_config(&app, None, json!({"vars": {"GREETING": "hi"}})).await;
    let service: Value = app
        .client
        .get(format!("{}/v1/services/web", app.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let service_id = service["id"].as_str().unwrap();

    let producer = slipway_testkit::signing::producer(&app.settings.kafka);
    let first = published(service_id, BuildId::new(), &"a".repeat(64));
    producer.publish(Topic::Builds, &first).await.unwrap();
    producer.publish(Topic::Builds, &first).await.unwrap(); // redelivered: still one release
    producer
        .publish(
            Topic::Builds,
            &published(service_id, BuildId::new(), &"b".repeat(64)),
        )
        .await
        .unwrap();

    let releases = || async {
        let page: Value = app
            .client
            .get(format!("{}/v1/services/web/releases", app.address))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        page["items"].as_array().unwrap().clone()
    };
    assert!(
        slipway_testkit::wait_until(Duration::from_secs(30), || async {
            releases().await.len() == 2
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(500)).await; // a duplicate would show up by now
    let items = releases().await;
    assert_eq!(
        items.len(),
        2,
        "the redelivered event made no third release"
    );
    assert_eq!(items[0]["version"], "v2");
    assert_eq!(items[1]["version"], "v1");
    assert_eq!(items[1]["digest"], format!("sha256:{}", "a".repeat(64)));
    assert_eq!(
        items[1]["config"],
        json!({"prod": 1}),
        "the config version in force is recorded"
    );
    assert_eq!(items[1]["run"]["command"], json!(["python3", "app.py"]));

    let v1: Value = app
        .client
        .get(format!("{}/v1/services/web/releases/v1", app.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v1["number"], 1);
    assert_eq!(
        app.client
            .get(format!("{}/v1/services/web/releases/v9", app.address))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // Immutable in the database itself.
    let update = sqlx::query("UPDATE releases SET commit = 'other'")
        .execute(&app.pool)
        .await;
    assert!(update.unwrap_err().to_string().contains("immutable"));

    let consumer = plain_consumer(
        &app.settings.kafka.bootstrap_servers,
        &[&app.settings.kafka.topics().name(Topic::Services)],
    );
    let m = next_of_type(
        &consumer,
        "dev.slipway.release.created.v1",
        Duration::from_secs(30),
    )
    .await
    .expect("release created event");
    let data: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
    assert_eq!(data["version"], "v1");
    assert_eq!(data["config"], json!({"prod": 1}));
}
