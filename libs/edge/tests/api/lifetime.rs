//! The router's threads belong to whoever started them.

use std::time::{Duration, Instant};

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
        let edge = Edge::new(
            &EdgeSettings::default(),
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
