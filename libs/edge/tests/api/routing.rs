//! Matching by host and path, what is forwarded, and the problems the router answers itself.

use serde_json::Value;
use slipway_edge::standin::build::{healthy, route, with};
use slipway_edge::table::{Health, InstanceState};

use crate::helpers::{Backend, Router, assert_problem};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_routing_proxies_the_whole_path_and_wins_over_gateway_routes() {
    let v1 = Backend::start("v1");
    let router = Router::start(vec![route(
        "hello",
        "prod",
        &[],
        vec![healthy("i1", &v1.address, 1)],
    )])
    .await;

    let res = router
        .get_host("hello.prod.localhost", "/x/y?a=1&b=2")
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-backend"], "v1");
    let seen: Value = res.json().await.unwrap();
    assert_eq!(seen["path"], "/x/y");
    assert_eq!(seen["query"], "a=1&b=2");

    // The gateway's own route is shadowed for a service's host name...
    let res = router.get_host("hello.prod.localhost", "/v1/ping").await;
    let seen: Value = res.json().await.unwrap();
    assert_eq!(
        (seen["name"].as_str(), seen["path"].as_str()),
        (Some("v1"), Some("/v1/ping"))
    );
    // ...and untouched for any other host.
    let res = router.get("/v1/ping").await;
    assert_eq!(res.text().await.unwrap(), "gateway");
    let res = router.get_host("localhost", "/v1/ping").await;
    assert_eq!(res.text().await.unwrap(), "gateway");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_prefix_is_stripped_and_the_query_passes_through() {
    let v1 = Backend::start("v1");
    let router = Router::start(vec![route(
        "hello",
        "prod",
        &[],
        vec![healthy("i1", &v1.address, 1)],
    )])
    .await;

    let seen = router.get_json("/apps/hello/prod/x?y=1").await;
    assert_eq!(
        (seen["path"].as_str(), seen["query"].as_str()),
        (Some("/x"), Some("y=1"))
    );
    let seen = router.get_json("/apps/hello/prod").await;
    assert_eq!(seen["path"], "/");
    let seen = router.get_json("/apps/hello/prod/a/b/?q=%20x&r").await;
    assert_eq!(
        (seen["path"].as_str(), seen["query"].as_str()),
        (Some("/a/b/"), Some("q=%20x&r"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_method_body_and_headers_without_hop_by_hop_ones() {
    let v1 = Backend::start("v1");
    let router = Router::start(vec![route(
        "hello",
        "prod",
        &[],
        vec![healthy("i1", &v1.address, 1)],
    )])
    .await;

    let res = router
        .client
        .post(router.url("/apps/hello/prod/echo"))
        .header("x-custom", "kept")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "dropped")
        .header("proxy-authorization", "secret")
        .header("x-forwarded-for", "10.9.8.7")
        .body("hello body")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let seen: Value = res.json().await.unwrap();
    let headers = &seen["headers"];
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["body"], "hello body");
    assert_eq!(headers["x-custom"], "kept");
    assert!(headers.get("x-hop").is_none(), "{headers}");
    assert!(headers.get("proxy-authorization").is_none(), "{headers}");
    assert_eq!(headers["x-forwarded-for"], "10.9.8.7, 127.0.0.1");
    assert_eq!(
        headers["x-forwarded-host"],
        format!("127.0.0.1:{}", router.port)
    );
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(
        headers["host"], v1.address,
        "the instance sees its own address as host"
    );
    assert_eq!(headers["x-request-id"].as_str().unwrap().len(), 36);

    // A client's request id is kept.
    let res = router
        .client
        .get(router.url("/apps/hello/prod/"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    let seen: Value = res.json().await.unwrap();
    assert_eq!(seen["headers"]["x-request-id"], "abc-123");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_missing_instances_are_problems() {
    let down = with(
        "i1",
        "127.0.0.1:9",
        1,
        Health::Unhealthy,
        InstanceState::Running,
    );
    let router = Router::start(vec![route("hello", "prod", &[], vec![down])]).await;

    let body = assert_problem(router.get("/apps/hello/prod/x").await, 503).await;
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("hello") && detail.contains("prod"),
        "{detail}"
    );
    assert_eq!(
        router.metric(
            "slipway_edge_requests_total",
            &[("release", "none"), ("code", "5xx")]
        ),
        1.0
    );

    let body = assert_problem(router.get("/apps/nope/prod/x").await, 404).await;
    assert!(body["detail"].as_str().unwrap().contains("nope"));
    assert_problem(router.get_host("hello.staging.localhost", "/").await, 404).await;
    assert_problem(router.get("/apps/hello").await, 404).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_refused_with_413() {
    let v1 = Backend::start("v1");
    let router = Router::start(vec![route(
        "hello",
        "prod",
        &[],
        vec![healthy("i1", &v1.address, 1)],
    )])
    .await;

    let res = router
        .client
        .post(router.url("/apps/hello/prod/upload"))
        .body(vec![b'x'; 4096])
        .send()
        .await
        .unwrap();
    assert_problem(res, 413).await;
    assert_eq!(v1.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_bodies_are_forwarded_and_cut_at_the_limit() {
    let v1 = Backend::start("v1");
    let router = Router::start(vec![route(
        "hello",
        "prod",
        &[],
        vec![healthy("i1", &v1.address, 1)],
    )])
    .await;
    // No length declared: the body is streamed through (chunked), and counted as it passes.
    let chunked = |chunks: usize| {
        let parts = (0..chunks).map(|_| Ok::<_, std::io::Error>(vec![b'x'; 300]));
        reqwest::Body::wrap_stream(futures::stream::iter(parts))
    };
    let res = router
        .client
        .post(router.url("/apps/hello/prod/upload"))
        .body(chunked(3))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let seen: Value = res.json().await.unwrap();
    assert_eq!(seen["body"].as_str().unwrap().len(), 900);

    let res = router
        .client
        .post(router.url("/apps/hello/prod/upload"))
        .body(chunked(5))
        .send()
        .await
        .unwrap();
    assert_problem(res, 413).await;
}

/// An instance may answer before it read the body (a refusal, typically) while the client is
/// still sending it: that connection is busy for as long as the client takes, so it must not
/// go back to the pool where the next request to the instance would wait on it. One router
/// thread, so both requests meet the same pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_before_the_body_ended_does_not_hold_the_next_request() {
    let instance = crate::helpers::answering_before_the_body();
    let router = Router::start_with(
        slipway_edge::EdgeSettings {
            workers: 1,
            ..slipway_edge::EdgeSettings::default()
        },
        vec![route(
            "hello",
            "prod",
            &[(1, 100)],
            vec![healthy("a", &instance, 1)],
        )],
    )
    .await;

    // A body whose end never comes while the test runs (the sender is kept).
    let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Vec<u8>, std::io::Error>>();
    tx.unbounded_send(Ok(b"first part".to_vec())).unwrap();
    let res = router
        .client
        .post(router.url("/apps/hello/prod/upload"))
        .body(reqwest::Body::wrap_stream(rx))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "ok");

    // Another client's request to the same instance is answered (on a new connection).
    let other = reqwest::Client::builder().no_proxy().build().unwrap();
    let res = other
        .get(router.url("/apps/hello/prod/"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "ok");
    drop(tx);
}
