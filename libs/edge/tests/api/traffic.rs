//! Weights, switches, retries and failures: where requests go, and what is counted.

use std::collections::HashMap;

use slipway_edge::standin::build::{healthy, route};

use crate::helpers::{Backend, Router, assert_problem, closed_address, hanging_up};

/// How many of `n` requests each backend answered.
async fn spread(router: &Router, path: &str, n: usize) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        let res = router.get(path).await;
        assert_eq!(res.status(), 200);
        let name = res.headers()["x-backend"].to_str().unwrap().to_owned();
        *seen.entry(name).or_default() += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_split_traffic_between_releases_and_are_counted_per_release() {
    let (v1, v2) = (Backend::start("v1"), Backend::start("v2"));
    let router = Router::start(vec![route(
        "hello",
        "prod",
        &[(1, 80), (2, 20)],
        vec![healthy("a", &v1.address, 1), healthy("b", &v2.address, 2)],
    )])
    .await;

    let seen = spread(&router, "/apps/hello/prod/", 1000).await;
    // 80% of 1000 has a standard deviation of about 13: 60 either side is over 4.5 of them.
    let v1_share = seen["v1"];
    assert!((740..=860).contains(&v1_share), "{seen:?}");
    assert_eq!(v1_share + seen["v2"], 1000);

    let per_release = |release| {
        router.metric(
            "slipway_edge_requests_total",
            &[
                ("service", "hello"),
                ("environment", "prod"),
                ("release", release),
                ("code", "2xx"),
            ],
        )
    };
    assert_eq!(per_release("1"), v1_share as f64);
    assert_eq!(per_release("2"), seen["v2"] as f64);
    assert_eq!(
        router.metric("slipway_edge_request_duration_seconds", &[("release", "2")]),
        seen["v2"] as f64
    );
    assert_eq!(router.metric("slipway_edge_routing_table_index", &[]), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_discovery_answer_switches_all_traffic_at_once() {
    let (v1, v2) = (Backend::start("v1"), Backend::start("v2"));
    let instances = vec![healthy("a", &v1.address, 1), healthy("b", &v2.address, 2)];
    let router = Router::start(vec![route("hello", "prod", &[(1, 100)], instances.clone())]).await;
    assert_eq!(
        spread(&router, "/apps/hello/prod/", 50).await,
        HashMap::from([("v1".to_owned(), 50)])
    );

    // Blue-green: both releases keep running, the weights move.
    let index = router
        .discovery
        .set(vec![route("hello", "prod", &[(2, 100)], instances)]);
    router.wait_index(index).await;
    assert_eq!(
        spread(&router, "/apps/hello/prod/", 50).await,
        HashMap::from([("v2".to_owned(), 50)])
    );
    assert_eq!(
        router.metric("slipway_edge_routing_table_index", &[]),
        index as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_errors_keep_the_last_table() {
    let (v1, v2) = (Backend::start("v1"), Backend::start("v2"));
    let router = Router::start(vec![route(
        "hello",
        "prod",
        &[],
        vec![healthy("a", &v1.address, 1)],
    )])
    .await;

    router.discovery.fail(true);
    let polls = router.discovery.polls();
    router.discovery.set(vec![route(
        "hello",
        "prod",
        &[],
        vec![healthy("b", &v2.address, 2)],
    )]);
    let discovery = &router.discovery;
    assert!(
        slipway_testkit::wait_until(std::time::Duration::from_secs(10), || async move {
            discovery.polls() >= polls + 2
        })
        .await,
        "the router did not poll again after a failure"
    );
    assert_eq!(router.edge.table_index(), Some(1));
    assert_eq!(
        spread(&router, "/apps/hello/prod/", 5).await,
        HashMap::from([("v1".to_owned(), 5)])
    );

    router.discovery.fail(false);
    router.wait_index(2).await;
    assert_eq!(
        spread(&router, "/apps/hello/prod/", 5).await,
        HashMap::from([("v2".to_owned(), 5)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_retried_on_another_instance() {
    let live = Backend::start("live");
    let router = Router::start(vec![route(
        "hello",
        "prod",
        &[],
        vec![
            healthy("dead", &closed_address(), 1),
            healthy("live", &live.address, 1),
        ],
    )])
    .await;

    // Round-robin sends every other request to the closed port first.
    assert_eq!(
        spread(&router, "/apps/hello/prod/", 20).await,
        HashMap::from([("live".to_owned(), 20)])
    );
    let retries = router.metric(
        "slipway_edge_upstream_retries_total",
        &[("service", "hello"), ("environment", "prod")],
    );
    assert!((5.0..=15.0).contains(&retries), "retries: {retries}");

    // With nothing accepting connections the client gets a 502 after the attempts.
    let dead_only = router.discovery.set(vec![route(
        "hello",
        "prod",
        &[],
        vec![
            healthy("d1", &closed_address(), 1),
            healthy("d2", &closed_address(), 1),
        ],
    )]);
    router.wait_index(dead_only).await;
    let body = assert_problem(router.get("/apps/hello/prod/").await, 502).await;
    assert!(
        body["detail"].as_str().unwrap().contains("2 instances"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_error_is_passed_through_and_not_retried() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let router = Router::start(vec![route(
        "hello",
        "prod",
        &[],
        vec![healthy("a", &a.address, 1), healthy("b", &b.address, 1)],
    )])
    .await;

    let res = router.get("/apps/hello/prod/status/500").await;
    assert_eq!(res.status(), 500);
    assert_eq!(res.text().await.unwrap(), "backend failed");
    assert_eq!(a.hits() + b.hits(), 1, "a 500 must not be sent again");
    assert_eq!(
        router.metric(
            "slipway_edge_requests_total",
            &[("release", "1"), ("code", "5xx")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_instance_times_out_with_504_and_is_not_retried() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let router = Router::start(vec![route(
        "hello",
        "prod",
        &[],
        vec![healthy("a", &a.address, 1), healthy("b", &b.address, 1)],
    )])
    .await;

    // The router's upstream timeout is 1 s; the backend takes 3 s.
    let body = assert_problem(router.get("/apps/hello/prod/slow").await, 504).await;
    assert!(
        body["detail"].as_str().unwrap().contains("not retried"),
        "{body}"
    );
    assert_eq!(a.hits() + b.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_broken_before_an_answer_is_retried_for_idempotent_requests_only() {
    let live = Backend::start("live");
    let (broken, accepted) = hanging_up();
    let router = Router::start(vec![route(
        "hello",
        "prod",
        &[],
        vec![
            healthy("broken", &broken, 1),
            healthy("live", &live.address, 1),
        ],
    )])
    .await;

    // GET is idempotent: a hang-up is tried again on the live instance.
    assert_eq!(
        spread(&router, "/apps/hello/prod/", 10).await,
        HashMap::from([("live".to_owned(), 10)])
    );
    assert!(accepted.load(std::sync::atomic::Ordering::Relaxed) >= 3);
    assert_eq!(live.hits(), 10);

    // POST is not: the instance may have acted on it, so a 502 and no second attempt.
    let client = reqwest::Client::new();
    let mut refused = 0;
    for _ in 0..6 {
        let res = client
            .post(router.url("/apps/hello/prod/orders"))
            .body("one order")
            .send()
            .await
            .unwrap();
        if res.status() == 502 {
            let body = assert_problem(res, 502).await;
            assert!(
                body["detail"].as_str().unwrap().contains("not retried"),
                "{body}"
            );
            refused += 1;
        } else {
            assert_eq!(res.status(), 200);
        }
    }
    assert!(
        refused >= 1,
        "round-robin sends some POSTs to the broken instance"
    );
    assert_eq!(live.hits(), 10 + 6 - refused, "no POST was sent twice");
}
