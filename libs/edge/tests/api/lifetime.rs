//! The router's threads belong to whoever started them.

use std::time::{Duration, Instant};

use slipway_edge::standin::DiscoveryStandIn;
use slipway_edge::standin::build::{healthy, route};
use slipway_edge::{Edge, EdgeSettings};
use slipway_testkit::identity::ServiceCaller;
use tokio_util::sync::CancellationToken;

/// A runtime dropped without the router being shut down (what a gateway test does when it
/// ends: its cancel token never fires) stops the router's threads, and the drop returns. It
/// used to wait forever, no CPU used, for a blocking task joining threads nobody told to stop.
#[test]
fn dropping_the_owning_runtime_stops_the_router() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let port = runtime.block_on(async {
        let metrics = slipway_http::Metrics::new("gateway");
        let credential = slipway_testkit::identity::settings(ServiceCaller::Gateway).credential;
        let settings = EdgeSettings {
            first_table_wait_ms: 200,
            ..EdgeSettings::default()
        };
        let edge = Edge::new(
            &settings,
            "http://127.0.0.1:9",
            &credential,
            &metrics.registry,
        )
        .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        // Never cancelled.
        let front = edge
            .serve(listener, None, CancellationToken::new())
            .unwrap();
        let port = front.port();
        tokio::spawn(front.wait());
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let res = http
            .get(format!("http://127.0.0.1:{port}/apps/hello/prod/"))
            .send()
            .await
            .unwrap();
        // Served: no routes learnt yet.
        assert_eq!(res.status(), 503);
        port
    });
    drop(runtime);

    // The threads stopped, so nothing listens on the port any more.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut closed = false;
    while !closed && Instant::now() < deadline {
        closed = std::net::TcpStream::connect(("127.0.0.1", port)).is_err();
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        closed,
        "the router still listens on {port} after its runtime was dropped"
    );
}

/// A router with `settings`, following `discovery`, serving on a fresh port (its cancel token
/// fires on drop of the returned guard).
async fn started(settings: &EdgeSettings, discovery: &str) -> (u16, tokio_util::sync::DropGuard) {
    let metrics = slipway_http::Metrics::new("gateway");
    let credential = slipway_testkit::identity::settings(ServiceCaller::Gateway).credential;
    let edge = Edge::new(settings, discovery, &credential, &metrics.registry).unwrap();
    let cancel = CancellationToken::new();
    tokio::spawn(edge.clone().follow_discovery(cancel.clone()));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let front = edge.serve(listener, None, cancel.clone()).unwrap();
    let port = front.port();
    tokio::spawn(front.wait());
    (port, cancel.drop_guard())
}

/// A router that just started, whose first discovery answer comes late (the registry failed
/// its first polls), holds the requests that came before it and routes them once it has its
/// table: clients that connected while a gateway restarted are served, not answered 503.
#[tokio::test]
async fn requests_before_the_first_table_wait_for_it() {
    let backend = crate::helpers::Backend::start("a");
    let discovery = DiscoveryStandIn::start(vec![route(
        "hello",
        "prod",
        &[],
        vec![healthy("a", &backend.address, 1)],
    )])
    .unwrap();
    discovery.fail(true);
    let (port, _stop) = started(&EdgeSettings::default(), discovery.url()).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let early = tokio::spawn(
        http.get(format!("http://127.0.0.1:{port}/apps/hello/prod/x"))
            .send(),
    );
    // Still waiting while discovery fails.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !early.is_finished(),
        "the early request was answered before any table"
    );
    assert!(discovery.polls() >= 1, "the router never polled discovery");
    discovery.fail(false);
    let res = early.await.unwrap().unwrap();
    assert_eq!(res.status(), 200, "{:?}", res.text().await);
    assert_eq!(res.headers()["x-backend"], "a");
    assert_eq!(backend.hits(), 1);
}

/// The wait for the first table is bounded: past `edge.first_table_wait_ms` the request gets
/// the 503 problem saying why.
#[tokio::test]
async fn the_wait_for_the_first_table_is_bounded() {
    let discovery = DiscoveryStandIn::start(Vec::new()).unwrap();
    discovery.fail(true);
    let settings = EdgeSettings {
        first_table_wait_ms: 300,
        ..EdgeSettings::default()
    };
    let (port, _stop) = started(&settings, discovery.url()).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let res = http
        .get(format!("http://127.0.0.1:{port}/apps/hello/prod/"))
        .send()
        .await
        .unwrap();
    let body = crate::helpers::assert_problem(res, 503).await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("has not received its routes"),
        "{body}"
    );
}

/// Client connections opened in one burst (a load balancer's pool opening) are spread over the
/// router's threads, whichever thread the shared socket woke: each serves about half, counted
/// in `slipway_edge_client_connections`, and each is uncounted when its connection ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_connections_is_spread_over_the_threads() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let backend = crate::helpers::Backend::start("a");
    let settings = EdgeSettings {
        workers: 2,
        ..EdgeSettings::default()
    };
    let router = crate::helpers::Router::start_to(settings, &backend).await;
    let open =
        |thread: &str| router.metric("slipway_edge_client_connections", &[("thread", thread)]);
    let connects = (0..12).map(|_| tokio::net::TcpStream::connect(("127.0.0.1", router.port)));
    let mut connections = futures::future::try_join_all(connects).await.unwrap();
    // Each connection answers once (it is being served, wherever it landed), and stays open.
    for c in &mut connections {
        c.write_all(b"GET /apps/hello/prod/ HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 12];
        c.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
    }
    let (first, second) = (open("0"), open("1"));
    assert_eq!(
        first + second,
        12.0,
        "every open connection is counted once"
    );
    assert!(
        (first - second).abs() <= 2.0,
        "thread 0 serves {first}, thread 1 serves {second}"
    );
    drop(connections);
    assert!(
        slipway_testkit::wait_until(Duration::from_secs(10), || async {
            open("0") + open("1") == 0.0
        })
        .await,
        "closed connections are still counted: {} and {}",
        open("0"),
        open("1")
    );
}

/// At shutdown a request in flight is still answered, whole, and its connection then closed;
/// no new connection is accepted.
#[tokio::test]
async fn a_request_in_flight_at_shutdown_is_answered() {
    let backend = crate::helpers::Backend::start("a");
    let settings = EdgeSettings {
        upstream_timeout_seconds: 10,
        ..EdgeSettings::default()
    };
    let router = crate::helpers::Router::start_to(settings, &backend).await;
    let started = Instant::now();
    let in_flight = tokio::spawn(
        router
            .client
            .get(router.url("/apps/hello/prod/slow"))
            .send(),
    );
    // The request reached the backend (which answers /slow after 3 s) before the shutdown.
    assert!(
        slipway_testkit::wait_until(Duration::from_secs(5), || async { backend.hits() == 1 }).await,
        "the request never reached the backend"
    );
    router.shut_down();
    let res = in_flight.await.unwrap().unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()
            .get("connection")
            .is_some_and(|v| v == "close"),
        "the connection is closed after the answer: {:?}",
        res.headers()
    );
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["path"], "/slow");
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "answered by the backend, after its wait"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", router.port)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the router still accepts connections after its shutdown"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
