//! Every service belongs to a project: given at creation (by the gateway, which checked the
//! caller may create services there), shown, filtered on, and announced in "service created".

use std::time::Duration;

use rdkafka::Message;
use serde_json::{Value, json};
use slipway_events::Topic;
use slipway_testkit::{next_of_type, plain_consumer};

use crate::helpers::spawn_app;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_carry_their_project_into_lists_and_events() {
    let app = spawn_app().await;
    let res = app
        .create(json!({"name": "pay", "project": "payments"}))
        .await;
    assert_eq!(res.status(), 201);
    assert_eq!(res.json::<Value>().await.unwrap()["project"], "payments");
    let res = app.create(json!({"name": "web"})).await;
    assert_eq!(res.json::<Value>().await.unwrap()["project"], "default");
    let res = app.create(json!({"name": "ops", "project": "Ops"})).await;
    assert_eq!(res.status(), 422);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["errors"][0]["field"], "project");

    let list = |query: &'static str| {
        let app = &app;
        async move {
            let res = app
                .client
                .get(format!("{}/v1/services{query}", app.address))
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            let body: Value = res.json().await.unwrap();
            let names: Vec<String> = body["items"]
                .as_array()
                .map(|items| {
                    items
                        .iter()
                        .map(|s| s["name"].as_str().unwrap().to_owned())
                        .collect()
                })
                .unwrap_or_default();
            (status, names)
        }
    };
    assert_eq!(list("").await, (200, vec!["pay".into(), "web".into()]));
    assert_eq!(list("?project=payments").await, (200, vec!["pay".into()]));
    assert_eq!(
        list("?project=payments&project=default").await,
        (200, vec!["pay".into(), "web".into()])
    );
    assert_eq!(list("?project=nobody").await, (200, vec![]));
    assert_eq!(list("?project=No").await.0, 422);

    let topic = app.settings.kafka.topics().name(Topic::Services);
    let consumer = plain_consumer(&app.settings.kafka.bootstrap_servers, &[&topic]);
    // Two services, keyed by their ids: on two partitions, in either order.
    let mut announced = std::collections::BTreeMap::new();
    for _ in 0..2 {
        let m = next_of_type(
            &consumer,
            "dev.slipway.service.created.v1",
            Duration::from_secs(30),
        )
        .await
        .expect("service created event published");
        let data: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        announced.insert(
            data["name"].as_str().unwrap().to_owned(),
            data["project"].clone(),
        );
    }
    assert_eq!(announced["pay"], "payments");
    assert_eq!(announced["web"], "default");
}
