//! A route step ends when every live edge router reports the table version holding its
//! weights, and fails at its deadline naming the routers that did not.
//!
//! Both tests reach a route step the quick way: a first deployment whose release cannot be
//! fetched turns back, and its way back starts with "route no traffic".

use std::time::Duration;

use serde_json::json;
use slipway_events::deploy::DeployKind;
use slipway_ids::ServiceId;
use slipway_testkit::wait_until;

use crate::helpers::{request, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_step_waits_until_every_live_router_serves_its_table() {
    let app = spawn_app().await;
    app.registry.add_release("hello", 3, &["staging"]);
    let service = ServiceId::new();
    // The registry holds the step's weights (none) at version 5; edge-b serves an older table.
    app.registry.set_traffic(
        service,
        "staging",
        json!([]),
        5,
        &[("edge-a", 5), ("edge-b", 4)],
    );
    let r = request(DeployKind::Deploy, service, "hello", "staging", Some(3));
    let id = app.command(&r).await;

    let d = app
        .deployment_when(id, |d| d["status"] == "rolling_back")
        .await;
    assert_eq!(d["step_index"], 0, "{d}");
    // It keeps asking and stays on the route step while edge-b lags.
    let asked = wait_until(Duration::from_secs(20), || async {
        app.registry.traffic_asks() >= 5
    })
    .await;
    assert!(
        asked,
        "the route step never asked for the routers' versions"
    );
    let d = app.deployment(id).await.unwrap();
    assert_eq!(
        (d["status"].as_str(), d["step_index"].as_i64()),
        (Some("rolling_back"), Some(0)),
        "the route step ended before edge-b served its table: {d}"
    );

    // edge-b applies the table: the step ends and the way back finishes.
    app.registry.set_traffic(
        service,
        "staging",
        json!([]),
        5,
        &[("edge-a", 6), ("edge-b", 5)],
    );
    let d = app.ended(id).await;
    assert_eq!(d["status"], "failed", "{d}");
    assert_eq!(
        d["reason"]["check"], "artifact",
        "the first failure stays the reason: {d}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_step_fails_at_its_deadline_naming_the_routers_that_lag() {
    let app = spawn_app().await;
    app.registry.add_release("hello", 3, &["staging"]);
    let service = ServiceId::new();
    app.registry.set_traffic(
        service,
        "staging",
        json!([]),
        9,
        &[("edge-a", 9), ("edge-stuck", 2)],
    );
    let mut r = request(DeployKind::Deploy, service, "hello", "staging", Some(3));
    r.step_timeout_seconds = Some(2);
    let id = app.command(&r).await;

    let d = app.ended(id).await;
    assert_eq!(d["status"], "failed", "{d}");
    assert_eq!(d["reason"]["check"], "deadline", "{d}");
    let message = d["reason"]["message"].as_str().unwrap();
    assert!(
        message.contains("routers did not apply the table: edge-stuck"),
        "{message}"
    );
    assert!(
        !message.contains("edge-a"),
        "edge-a serves the table: {message}"
    );
}
