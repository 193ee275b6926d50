//! `/v1/discovery`, blocking queries, and bad query values (reaping: `heartbeats.rs`).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use slipway_events::deploy::Health;
use slipway_ids::InstanceId;

use crate::helpers::spawn_app;
use crate::instances::{Facts, eventually, get, item};

/// The route of `service` in `env` in a discovery answer.
fn route<'a>(body: &'a Value, service: &str, env: &str) -> Option<&'a Value> {
    body["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["service"] == service && r["environment"] == env)
}

fn routable(route: &Value) -> Vec<String> {
    route["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["routable"] == true)
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_gives_weights_and_routes_only_to_running_healthy_instances() {
    let app = spawn_app().await;
    let facts = Facts::new(&app, "hello").await;
    let (ok, draining, down, unhealthy) = (
        InstanceId::new(),
        InstanceId::new(),
        InstanceId::new(),
        InstanceId::new(),
    );
    for id in [ok, draining, down, unhealthy] {
        facts.started(id, "prod", 1, 0).await;
    }
    for id in [ok, draining, down] {
        facts.health(id, "prod", Health::Healthy, 0).await;
    }
    facts.health(unhealthy, "prod", Health::Unhealthy, 0).await;
    facts.draining(draining, "prod").await;
    facts.exited(down, "prod", 0).await;
    facts.traffic("prod", &[(1, 90), (2, 10)]).await;
    // Weights alone make a route too (nothing started there yet).
    facts.traffic("staging", &[(2, 100)]).await;

    // Traffic and instance facts travel on different topics, so either may be applied first:
    // wait for the last of each (the exit is the last instance fact, all on one partition).
    let body = eventually(&app, "/v1/discovery", |b| {
        let exited = route(b, "hello", "prod").is_some_and(|p| {
            p["instances"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["id"] == down.to_string() && i["state"] == "down")
        });
        exited && route(b, "hello", "staging").is_some()
    })
    .await;
    let prod = route(&body, "hello", "prod").unwrap();
    assert_eq!(prod["service_id"], facts.service_id.to_string());
    assert_eq!(
        prod["weights"],
        json!([{"release": 1, "weight": 90}, {"release": 2, "weight": 10}])
    );
    assert_eq!(prod["instances"].as_array().unwrap().len(), 4);
    assert_eq!(
        routable(prod),
        vec![ok.to_string()],
        "draining, down and unhealthy are not routable: {prod:#}"
    );
    let by_id = |id: InstanceId| {
        prod["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"] == id.to_string())
            .unwrap()
            .clone()
    };
    assert_eq!(by_id(draining)["state"], "draining");
    assert_eq!(by_id(down)["state"], "down");
    assert_eq!(by_id(unhealthy)["health"], "unhealthy");
    assert!(by_id(ok)["address"].as_str().unwrap().contains(':'));
    let staging = route(&body, "hello", "staging").unwrap();
    assert_eq!(staging["instances"], json!([]));

    // Empty weights: no traffic; with no instances either, the route disappears.
    facts.traffic("staging", &[]).await;
    eventually(&app, "/v1/discovery", |b| {
        route(b, "hello", "staging").is_none()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_queries_wake_on_a_change_and_time_out_without_one() {
    let app = spawn_app().await;
    let facts = Facts::new(&app, "hello").await;
    let a = InstanceId::new();
    facts.started(a, "prod", 1, 0).await;
    let path = "/v1/services/hello/instances";
    let body = eventually(&app, path, |b| item(b, a).is_some()).await;
    let index = body["index"].as_i64().unwrap();

    // Nothing changes: the answer comes when `wait` passes, with the same index.
    let started = Instant::now();
    let same = get(&app, &format!("{path}?index={index}&wait=700ms")).await;
    let waited = started.elapsed();
    assert_eq!(same["index"], index);
    assert!(
        waited >= Duration::from_millis(650),
        "answered after {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(10),
        "answered after {waited:?}"
    );

    // An older index answers at once.
    let started = Instant::now();
    get(&app, &format!("{path}?index={}&wait=1m", index - 1)).await;
    assert!(started.elapsed() < Duration::from_secs(5));

    // A change wakes both kinds of waiters long before their 60 s.
    let instances = {
        let app = &app;
        let url = format!("{path}?index={index}&wait=60s");
        async move { get(app, &url).await }
    };
    let routes = {
        let app = &app;
        let url = format!("/v1/discovery?index={index}&wait=1m");
        async move { get(app, &url).await }
    };
    let change = async {
        facts.health(a, "prod", Health::Healthy, 0).await;
        Instant::now()
    };
    let started = Instant::now();
    let (woken, routes, _) = tokio::time::timeout(
        Duration::from_secs(30),
        futures::future::join3(instances, routes, change),
    )
    .await
    .expect("blocking queries woke on the change");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(woken["index"].as_i64().unwrap() > index);
    assert_eq!(item(&woken, a).unwrap()["health"], "healthy");
    assert!(routes["index"].as_i64().unwrap() > index);
    assert_eq!(
        route(&routes, "hello", "prod").unwrap()["instances"][0]["routable"],
        true
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_query_values_are_problems() {
    let app = spawn_app().await;
    Facts::new(&app, "hello").await;
    for (query, field) in [
        ("/v1/services/hello/instances?index=abc", "index"),
        ("/v1/services/hello/instances?index=-1", "index"),
        ("/v1/services/hello/instances?index=1&wait=soon", "wait"),
        ("/v1/services/hello/instances?index=1&wait=30", "wait"),
        ("/v1/services/hello/instances?index=1&wait=5m", "wait"),
        (
            "/v1/services/hello/instances?environment=Not_Valid",
            "environment",
        ),
        ("/v1/discovery?index=x", "index"),
        ("/v1/discovery?wait=3h", "wait"),
        ("/v1/discovery?environment=prod", "environment"),
    ] {
        let res = app
            .client
            .get(format!("{}{query}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 422, "{query}");
        assert_eq!(
            res.headers()["content-type"],
            "application/problem+json",
            "{query}"
        );
        let problem: Value = res.json().await.unwrap();
        assert_eq!(problem["errors"][0]["field"], field, "{query}: {problem}");
    }
}
