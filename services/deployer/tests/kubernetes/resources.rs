//! The CPUs and memory a release's run spec asks for become its Deployment's container
//! resources (requests and limits alike); a release that names none sets none.

use slipway_events::slipway::RunSpec;

use super::Harness;

#[tokio::test]
async fn the_run_specs_cpus_and_memory_are_the_containers_requests_and_limits() {
    let h = Harness::new(600).await;
    let mut limited = h.spec(1, 1, "hello");
    limited.run = Some(
        serde_json::from_value::<RunSpec>(serde_json::json!({
            "command": ["./app"], "cpus": 0.5, "memory": "1GiB"
        }))
        .unwrap(),
    );
    h.start(&limited).await;
    let d = h.object("deployments", "shop-staging-v1");
    let resources = &d["spec"]["template"]["spec"]["containers"][0]["resources"];
    let want = serde_json::json!({"cpu": "500m", "memory": "1Gi"});
    assert_eq!(resources["limits"], want, "{resources}");
    assert_eq!(resources["requests"], want, "{resources}");

    // Only memory: only memory; no run spec at all: no resources (the namespace's defaults).
    let mut memory_only = h.spec(2, 1, "hello");
    memory_only.run = Some(
        serde_json::from_value::<RunSpec>(
            serde_json::json!({"command": ["./app"], "memory": "256MiB"}),
        )
        .unwrap(),
    );
    h.start(&memory_only).await;
    let d = h.object("deployments", "shop-staging-v2");
    let resources = &d["spec"]["template"]["spec"]["containers"][0]["resources"];
    assert_eq!(resources["limits"], serde_json::json!({"memory": "256Mi"}));
    h.start(&h.spec(3, 1, "hello")).await;
    let d = h.object("deployments", "shop-staging-v3");
    let container = &d["spec"]["template"]["spec"]["containers"][0];
    assert!(container["resources"].is_null(), "{container}");
}
