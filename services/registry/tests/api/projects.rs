//! Every service belongs to a project: given at creation (by the gateway, which checked the
//! caller may create services there), shown, filtered on, and announced in "service created".
//! Every fact the registry publishes about a service names its project (`ce_slipwayproject`).

use std::time::Duration;

use rdkafka::Message;
use serde_json::{Value, json};
use slipway_events::cdevents::{CdEvent, CdEventKind};
use slipway_events::{EventData, Topic};
use slipway_ids::{BuildId, ServiceId};
use slipway_testkit::{header, next_of_type, plain_consumer};

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
            (data["project"].clone(), header(&m, "ce_slipwayproject")),
        );
    }
    assert_eq!(
        announced["pay"],
        (json!("payments"), Some("payments".into()))
    );
    assert_eq!(announced["web"], (json!("default"), Some("default".into())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registrys_facts_name_the_services_project() {
    let app = spawn_app().await;
    let res = app
        .create(json!({"name": "pay", "project": "payments"}))
        .await;
    assert_eq!(res.status(), 201);
    let service: ServiceId = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let res = app
        .client
        .put(format!("{}/v1/services/pay/environments/prod", app.address))
        .json(&json!({"target": "process"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    // The builder's artifact names no project: the registry takes it from its own services.
    let digest = "c".repeat(64);
    let published = CdEvent::artifact_published(
        "/slipway/builder",
        &format!("pkg:oci/pay@sha256%3A{digest}"),
    )
    .with_custom_data(json!({
        "service_id": service, "service": "pay", "build_id": BuildId::new(), "commit": "abc123",
        "image": format!("127.0.0.1:5000/pay@sha256:{digest}"), "digest": format!("sha256:{digest}"),
    }))
    .into_cloud_event(service, Some("pay".into()));
    assert_eq!(published.project, None);
    slipway_testkit::signing::producer(&app.settings.kafka)
        .publish(Topic::Builds, &published)
        .await
        .unwrap();

    let topic = app.settings.kafka.topics().name(Topic::Services);
    let consumer = plain_consumer(&app.settings.kafka.bootstrap_servers, &[&topic]);
    // Keyed by the same service, so on one partition in the order they were made.
    for ty in [
        CdEventKind::EnvironmentCreated.type_str(),
        slipway_events::slipway::ReleaseCreated::TYPE,
    ] {
        let m = next_of_type(&consumer, ty, Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("{ty} published"));
        assert_eq!(
            header(&m, "ce_slipwayproject").as_deref(),
            Some("payments"),
            "{ty}"
        );
    }
}
