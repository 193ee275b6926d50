//! The builder's facts name the project of their service (`ce_slipwayproject`), as its catalog
//! learnt it from "service created"; a service the catalog has not heard of gets none.

use std::collections::HashMap;
use std::time::Duration;

use slipway_events::slipway::{ServiceCreated, sources};
use slipway_events::{CloudEvent, EventData, Topic};
use slipway_ids::{ProjectName, ServiceId};
use slipway_testkit::{header, next_of_type, plain_consumer, wait_until};

use crate::helpers::spawn_app;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_facts_carry_the_project_the_catalog_knows() {
    let app = spawn_app().await;
    let known = ServiceId::new();
    let created = ServiceCreated {
        service_id: known,
        name: "hello".into(),
        project: ProjectName::parse("payments").unwrap(),
        repository: None,
        branch: "main".into(),
        created_at: chrono::Utc::now(),
    };
    let event = CloudEvent::new(sources::REGISTRY, known, Some("hello".into()), &created).unwrap();
    slipway_testkit::signing::producer(&app.kafka)
        .publish(ServiceCreated::TOPIC, &event)
        .await
        .unwrap();
    let pool = sqlx::PgPool::connect_with(app.database.connect_options())
        .await
        .unwrap();
    let in_catalog = wait_until(Duration::from_secs(30), || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM build_sources WHERE service_id = $1")
                .bind(known)
                .fetch_one(&pool)
                .await
                .is_ok_and(|n| n == 1)
        }
    })
    .await;
    assert!(in_catalog, "the builder's catalog learnt the service");

    // Nothing to clone there: each build is queued, then fails; both announce it.
    let missing = "file:///nonexistent/slipway-test.git";
    let of_known = app.request_for(known, missing, None, 1).await;
    let of_unknown = app.request(missing, None).await;

    let consumer = plain_consumer(
        &app.kafka.bootstrap_servers,
        &[&app.kafka.topics().name(Topic::Builds)],
    );
    let mut projects = HashMap::new();
    for _ in 0..2 {
        let m = next_of_type(
            &consumer,
            "dev.cdevents.build.queued.0.3.0",
            Duration::from_secs(30),
        )
        .await
        .expect("build queued");
        projects.insert(
            header(&m, "ce_subject").unwrap(),
            header(&m, "ce_slipwayproject"),
        );
    }
    assert_eq!(projects[&of_known.to_string()].as_deref(), Some("payments"));
    assert_eq!(projects[&of_unknown.to_string()], None, "never guessed");
}
