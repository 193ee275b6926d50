//! A health path is a path on the instance, never a way to send the monitor elsewhere.

use slipway_events::CloudEvent;
use slipway_events::deploy::Health;
use slipway_events::slipway::sources;
use slipway_ids::ServiceId;

use crate::backend::Backend;
use crate::helpers::{WAIT, fast_check, instance, next_health, spawn_app, started};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_path_naming_another_host_is_refused_and_never_probed() {
    let app = spawn_app().await;
    let events = app.instances_consumer();
    let service = ServiceId::new();
    // The instance, and what a path like `@169.254.169.254/latest` would reach instead when
    // pasted after the address (`http://<instance>@<elsewhere>/latest`): a local stand-in for
    // the metadata service, so the test can count what reaches it.
    let instance_backend = Backend::start(200).await;
    let elsewhere = Backend::start(200).await;

    let forged = instance(service);
    let mut event = CloudEvent::new(
        sources::DEPLOYER,
        service,
        Some(forged.instance_id.to_string()),
        &started(&forged, &instance_backend.address, fast_check(), 0),
    )
    .unwrap();
    // Written past the types, as a producer without them could: the monitor must refuse it.
    event.data["health_check"]["path"] = format!("@{}/latest", elsewhere.address).into();
    app.publish_event(&event).await;

    // Same service, same partition, published after it: once this one is judged, the forged
    // one has been handled.
    let honest = instance(service);
    app.publish(
        service,
        honest.instance_id,
        &started(&honest, &instance_backend.address, fast_check(), 0),
    )
    .await;
    let verdict = next_health(&events, honest.instance_id, WAIT)
        .await
        .expect("the honest instance is judged");
    assert_eq!(verdict.health, Health::Healthy);

    assert_eq!(elsewhere.hits(), 0, "nothing reached the other host");
    assert_eq!(
        app.health_of("web", forged.instance_id).await,
        None,
        "the forged instance is not probed at all"
    );
}
