//! `PUT .../policy`: validation, the service catalog fed by "service created" events, and
//! what a valid policy answers.

use serde_json::{Value, json};

use crate::helpers::{problem, spawn_app};

const PATH: &str = "/v1/services/shop/environments/staging/policy";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_are_validated_and_need_a_service_the_registry_announced() {
    let app = spawn_app().await;

    // Before the registry announced it, the service is unknown.
    let valid = json!({"auto_deploy": true, "strategy": {"type": "recreate"}});
    let body = problem(app.put_json(PATH, &valid).await, 404).await;
    assert!(body["detail"].as_str().unwrap().contains("shop"), "{body}");

    // Invalid strategies are refused naming the field, whether the service exists or not.
    let invalid = [
        (
            json!({"auto_deploy": true, "strategy": {"type": "canary", "steps": [
                {"weight": 50}, {"weight": 10}]}}),
            "strategy.steps",
        ),
        (
            json!({"auto_deploy": true, "strategy": {"type": "canary", "steps": []}}),
            "strategy.steps",
        ),
        (
            json!({"auto_deploy": true, "strategy": {"type": "canary", "steps": [
                {"weight": 101}]}}),
            "strategy.steps",
        ),
        (
            json!({"auto_deploy": false, "strategy": {"type": "rolling",
                "max_surge": 0, "max_unavailable": 0}}),
            "strategy.max_surge",
        ),
    ];
    for (body, field) in &invalid {
        let answer = problem(app.put_json(PATH, body).await, 422).await;
        assert_eq!(answer["errors"][0]["field"], *field, "{body}: {answer}");
    }

    // Bodies of the wrong shape.
    for body in [
        json!({"auto_deploy": true, "colour": "blue"}),
        json!({"auto_deploy": true, "strategy": {"type": "recreate", "speed": 3}}),
        json!({"auto_deploy": true, "strategy": {"type": "teleport"}}),
        json!({"auto_deploy": true, "strategy": {"type": "blue_green", "speed": 3}}),
        json!({"auto_deploy": true, "strategy": {"type": "rolling", "speed": 3}}),
        json!({"auto_deploy": true, "strategy": {"type": "canary", "steps": [
            {"weight": 10, "speed": 3}]}}),
        json!({"strategy": {"type": "recreate"}}),
        json!({"auto_deploy": "yes"}),
    ] {
        let res = app.put_json(PATH, &body).await;
        assert_eq!(res.status(), 422, "{body}");
        problem(res, 422).await;
    }
    let answer = problem(app.put_raw(PATH, "{\"auto_deploy\": tru").await, 400).await;
    assert!(
        answer["detail"]
            .as_str()
            .unwrap()
            .contains("not valid JSON"),
        "{answer}"
    );

    // Once the registry's "service created" event was consumed, the service has policies.
    app.register("shop").await;
    let policy = json!({"auto_deploy": true, "strategy": {"type": "canary", "steps": [
        {"weight": 10, "pause_seconds": 30}, {"weight": 50, "pause_seconds": 0}]}});
    let res = app.put_json(PATH, &policy).await;
    assert_eq!(res.status(), 200);
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer["service"], "shop");
    assert_eq!(answer["environment"], "staging");
    assert_eq!(answer["auto_deploy"], true);
    assert_eq!(answer["strategy"], policy["strategy"]);

    // The strategy may be left out: the default (rolling, one surge) is answered.
    let res = app.put_json(PATH, &json!({"auto_deploy": false})).await;
    assert_eq!(res.status(), 200);
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer["auto_deploy"], false);
    assert_eq!(
        answer["strategy"],
        json!({"type": "rolling", "max_surge": 1, "max_unavailable": 0})
    );

    // Another service still is unknown.
    let other = "/v1/services/other/environments/staging/policy";
    problem(app.put_json(other, &valid).await, 404).await;
}
