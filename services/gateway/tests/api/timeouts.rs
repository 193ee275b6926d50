//! Every call to an internal API has a deadline: an upstream that does not answer in time is a
//! 504 naming it and the call, not a hung request or a 500.

use serde_json::json;

use crate::helpers::{problem, spawn_with_stand_ins};
use crate::stand_in::StandIn;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_answers_504_naming_what_timed_out() {
    let registry = StandIn::start().await;
    let deployer = StandIn::start().await;
    let monitor = StandIn::start().await;
    registry.answer(
        "GET",
        "/v1/services",
        200,
        json!({"items": [], "next": null}),
    );
    // The gateway's upstream timeout is 2 s here; the stand-in holds this answer for 3 s.
    let app = spawn_with_stand_ins(&registry, &deployer, &monitor).await;
    let started = std::time::Instant::now();
    let res = app
        .client
        .get(app.url("/v1/services?wait=3s"))
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .unwrap();
    let p = problem(res, 504).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    let detail = p["detail"].as_str().unwrap();
    assert!(detail.contains("registry"), "{detail}");
    assert!(detail.contains("within 2 s"), "{detail}");
    assert!(detail.contains("GET /v1/services?"), "{detail}");

    // Without the wait it answers as usual: the deadline is per call.
    let res = app
        .client
        .get(app.url("/v1/services"))
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}
