//! The gateway calls its upstreams with its service credential; a registry that does not know
//! it is a misconfiguration the client sees as 502, never as the registry's 401.

use slipway_gateway::startup::UpstreamSettings;
use slipway_testkit::identity::ServiceCaller;
use tokio::sync::oneshot;

use crate::helpers::{problem, start_gateway};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_refusing_the_gateway_credential_is_a_502() {
    let base = slipway_testkit::base_settings("gateway").await;
    // A registry that knows only the deployer as a caller.
    let mut registry_base = slipway_testkit::sibling(&base, "registry");
    registry_base.identity = slipway_testkit::identity::settings_accepting(
        ServiceCaller::Registry,
        &[ServiceCaller::Deployer],
    );
    let registry = slipway_registry::Application::build(slipway_registry::Settings {
        base: registry_base,
        secrets: slipway_registry::startup::SecretSettings {
            key: slipway_testkit::secrets_key().into(),
        },
        services: Default::default(),
    })
    .await
    .expect("registry starts");
    let url = format!("http://127.0.0.1:{}", registry.port());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(registry.run_until(async move {
        let _ = stopped.await;
    }));
    let upstreams = UpstreamSettings {
        registry: url,
        builder: "http://127.0.0.1:9".to_owned(),
        deployer: "http://127.0.0.1:9".to_owned(),
        monitor: "http://127.0.0.1:9".to_owned(),
        timeout_seconds: 5,
        connect_timeout_seconds: 3,
    };
    let app = start_gateway(base, upstreams, vec![stop]).await;
    let token = app.admin_token.clone();

    let res = app
        .client
        .get(app.url("/v1/services"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let body = problem(res, 502).await;
    assert!(
        !body["detail"].as_str().unwrap().contains("credential"),
        "the registry's refusal is logged, not shown: {body}"
    );
}
