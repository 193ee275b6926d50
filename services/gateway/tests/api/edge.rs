//! The edge router mounted in the gateway: routes from the registry's discovery endpoint (a
//! stand-in here), requests by path prefix or host name reaching a real backend.

use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use slipway_edge::standin::DiscoveryStandIn;
use slipway_edge::standin::build::{healthy, route};
use slipway_gateway::startup::UpstreamSettings;

use crate::helpers::start_gateway;

async fn backend(req: HttpRequest) -> HttpResponse {
    HttpResponse::Ok().body(format!("hello from {}?{}", req.path(), req.query_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_requests_reach_a_backend_through_the_gateway() {
    let server = HttpServer::new(|| App::new().default_service(web::to(backend)))
        .workers(1)
        .disable_signals()
        .bind(("127.0.0.1", 0))
        .unwrap();
    let address = server.addrs()[0].to_string();
    let server = server.run();
    let _backend = server.handle();
    tokio::spawn(server);
    let discovery = DiscoveryStandIn::start(vec![route(
        "hello",
        "prod",
        &[],
        vec![healthy("i1", &address, 1)],
    )])
    .unwrap();

    let base = slipway_testkit::base_settings("gateway").await;
    let upstreams = UpstreamSettings {
        registry: discovery.url().to_owned(),
        builder: "http://127.0.0.1:9".to_owned(),
        deployer: "http://127.0.0.1:9".to_owned(),
        monitor: "http://127.0.0.1:9".to_owned(),
        timeout_seconds: 5,
        connect_timeout_seconds: 3,
    };
    let app = start_gateway(base, upstreams, Vec::new()).await;

    // Routes arrive asynchronously after start-up.
    let url = app.url("/apps/hello/prod/greet?x=1");
    let client = app.client.clone();
    assert!(
        slipway_testkit::wait_until(Duration::from_secs(10), || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                client
                    .get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
            }
        })
        .await,
        "the gateway never routed /apps/hello/prod to the backend"
    );
    let res = app.client.get(&url).send().await.unwrap();
    assert_eq!(res.text().await.unwrap(), "hello from /greet?x=1");

    // A service's host name wins over the gateway's own API, which stays on other hosts.
    let port = app.address.rsplit(':').next().unwrap();
    let res = app
        .client
        .get(app.url("/v1/services"))
        .header("host", format!("hello.prod.localhost:{port}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.text().await.unwrap(), "hello from /v1/services?");
    let res = app
        .client
        .get(app.url("/v1/services"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "the gateway's API still authenticates");

    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap();
    let text = metrics.text().await.unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("slipway_edge_requests_total{")
                && l.contains(r#"release="1""#)
                && l.contains(r#"code="2xx""#)),
        "{text}"
    );
}
