//! The router never leads to the platform's own listeners, and follows discovery as the gateway.

use slipway_edge::EdgeSettings;
use slipway_edge::standin::build::{healthy, route};
use slipway_testkit::identity::{ServiceCaller, credential};

use crate::helpers::{Backend, Router, assert_problem};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_at_a_platform_address_is_never_routed() {
    // Stands for the registry's internal port; a forged `instance.started` names it.
    let internal = Backend::start("registry-internal-api");
    let app = Backend::start("app");
    let port = internal.address.rsplit(':').next().unwrap();
    let router = Router::start_with(
        EdgeSettings {
            upstream_timeout_seconds: 1,
            platform_addresses: vec![internal.address.clone()],
            ..EdgeSettings::default()
        },
        vec![
            route(
                "hello",
                "prod",
                &[],
                vec![
                    healthy("forged", &internal.address, 1),
                    healthy("real", &app.address, 1),
                ],
            ),
            // Another local name for the same listener is the same listener.
            route(
                "evil",
                "prod",
                &[],
                vec![healthy("forged-too", &format!("localhost:{port}"), 1)],
            ),
        ],
    )
    .await;

    for _ in 0..10 {
        let seen = router.get_json("/apps/hello/prod/internal/v1/x").await;
        assert_eq!(seen["name"], "app");
    }
    let body = assert_problem(router.get("/apps/evil/prod/internal/v1/x").await, 503).await;
    assert!(body["detail"].as_str().unwrap().contains("evil"), "{body}");
    assert_eq!(internal.hits(), 0, "the platform listener was reached");
    assert_eq!(app.hits(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_is_polled_with_the_gateway_credential() {
    let router = Router::start(vec![]).await;
    assert_eq!(
        router.discovery.last_authorization(),
        Some(format!("Bearer {}", credential(ServiceCaller::Gateway)))
    );
}
