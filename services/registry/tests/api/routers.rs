//! Route table versions: each discovery poll of a named router is its report of the version
//! it serves; the traffic status shows the deployer the version its weights took effect at.

use serde_json::Value;
use slipway_testkit::identity::{ServiceCaller, client};
use slipway_wire::routes::TrafficStatus;

use crate::helpers::TestApp;
use crate::helpers::spawn_app;
use crate::instances::{Facts, get};

/// A poll of `/v1/discovery` by router `router` serving version `index`, held at most `wait`.
async fn poll(app: &TestApp, router: &str, index: u64, wait: &str) -> reqwest::Response {
    app.client
        .get(format!(
            "{}/v1/discovery?index={index}&wait={wait}",
            app.address
        ))
        .header("x-slipway-router", router)
        .send()
        .await
        .unwrap()
}

async fn status(app: &TestApp, facts: &Facts, env: &str) -> TrafficStatus {
    let res = client(ServiceCaller::Deployer)
        .get(format!(
            "{}/internal/v1/traffic/{}/{env}",
            app.address, facts.service_id
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routers_report_the_version_they_serve_and_traffic_says_when_weights_took_effect() {
    let app = spawn_app().await;
    let facts = Facts::new(&app, "hello").await;
    let before = status(&app, &facts, "prod").await;
    assert_eq!((before.version, before.weights.len()), (0, 0), "never set");
    assert!(before.routers.is_empty());

    let index = get(&app, "/v1/discovery").await["index"].as_u64().unwrap();
    let res = poll(&app, "edge-a", index, "100ms").await;
    assert_eq!(res.status(), 200);
    let seen = status(&app, &facts, "prod").await;
    let edge = &seen.routers[0];
    assert_eq!(
        (edge.router.as_str(), edge.applied, edge.live),
        ("edge-a", index, true)
    );

    facts.traffic("prod", &[(1, 90), (2, 10)]).await;
    let changed = slipway_testkit::wait_until(std::time::Duration::from_secs(30), || async {
        !status(&app, &facts, "prod").await.weights.is_empty()
    })
    .await;
    assert!(changed, "the traffic change never arrived");
    let after = status(&app, &facts, "prod").await;
    assert!(after.version > index, "{after:?}");
    assert_eq!(after.weights[0].weight, 90);
    assert_eq!(
        after.lagging(after.version),
        vec![&edge.router],
        "edge-a still serves the older table"
    );
    // The router applies the new table and polls again with its index.
    let res = poll(&app, "edge-a", after.version, "100ms").await;
    assert_eq!(res.status(), 200);
    let applied = status(&app, &facts, "prod").await;
    assert!(applied.lagging(after.version).is_empty(), "{applied:?}");

    // The same weights again change nothing: the version they took effect at stays.
    facts.traffic("prod", &[(1, 90), (2, 10)]).await;
    facts.traffic("staging", &[(2, 100)]).await;
    let staged = slipway_testkit::wait_until(std::time::Duration::from_secs(30), || async {
        status(&app, &facts, "staging").await.version > 0
    })
    .await;
    assert!(staged);
    assert_eq!(status(&app, &facts, "prod").await.version, after.version);

    // Weights set to none keep a version, so a route step removing traffic can wait too.
    facts.traffic("prod", &[]).await;
    let removed = slipway_testkit::wait_until(std::time::Duration::from_secs(30), || async {
        status(&app, &facts, "prod").await.weights.is_empty()
    })
    .await;
    assert!(removed);
    assert!(status(&app, &facts, "prod").await.version > after.version);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_router_ids_and_service_ids_are_problems_and_only_the_deployer_reads_traffic() {
    let app = spawn_app().await;
    let facts = Facts::new(&app, "hello").await;
    for bad in ["", "has space", &"x".repeat(129), "slash/y"] {
        let res = poll(&app, bad, 0, "1s").await;
        assert_eq!(res.status(), 422, "{bad:?}");
        let problem: Value = res.json().await.unwrap();
        assert_eq!(
            problem["errors"][0]["field"], "x-slipway-router",
            "{problem}"
        );
    }
    let deployer = client(ServiceCaller::Deployer);
    for (path, status) in [
        ("/internal/v1/traffic/not-a-uuid/prod".to_owned(), 422),
        (
            format!("/internal/v1/traffic/{}/Not_Valid", facts.service_id),
            422,
        ),
    ] {
        let res = deployer
            .get(format!("{}{path}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), status, "{path}");
        assert_eq!(res.headers()["content-type"], "application/problem+json");
    }
    let res = app
        .client
        .get(format!(
            "{}/internal/v1/traffic/{}/prod",
            app.address, facts.service_id
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403, "the gateway may not read it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_counts_the_routable_instances_of_each_release_as_the_registry_sees_them() {
    use slipway_events::deploy::Health;
    let app = spawn_app().await;
    let facts = Facts::new(&app, "hello").await;
    let id = slipway_ids::InstanceId::new();
    facts.started(id, "prod", 1, 0).await;
    let counted = |release, n| {
        let facts = &facts;
        let app = &app;
        async move {
            status(app, facts, "prod")
                .await
                .routable
                .iter()
                .any(|r| r.release == release && r.instances == n)
        }
    };
    // Started, no verdict yet: known, but nothing to route to.
    assert!(
        slipway_testkit::wait_until(std::time::Duration::from_secs(30), || counted(1, 0)).await,
        "{:?}",
        status(&app, &facts, "prod").await
    );
    facts.health(id, "prod", Health::Healthy, 0).await;
    assert!(
        slipway_testkit::wait_until(std::time::Duration::from_secs(30), || counted(1, 1)).await,
        "{:?}",
        status(&app, &facts, "prod").await
    );
    let weights = [slipway_events::deploy::ReleaseWeight {
        release: 2,
        weight: 100,
    }];
    // No live router: nothing waits on it (the route step's rule; lib tests cover the rest).
    assert!(
        status(&app, &facts, "prod")
            .await
            .unroutable(&weights)
            .is_empty()
    );
}
