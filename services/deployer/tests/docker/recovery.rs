//! A deployer restart: a new target adopts the running containers of known instances (labels
//! are the record), reports the dead ones, removes orphans, and `docker ps` then matches what
//! it supervises.

use std::time::Duration;

use slipway_deployer::target::{Known, Target};

use crate::support::*;

#[tokio::test]
async fn a_new_target_adopts_running_containers_reports_dead_ones_and_removes_orphans() {
    let (settings, cleanup) = settings();
    let images = images().await;
    let (first, mut first_events) = connect(settings.clone()).await;
    let (alive, dead, orphan) = (spec(&images.app), spec(&images.app), spec(&images.app));
    let alive_at = first.start(alive.clone()).await.unwrap();
    let dead_at = first.start(dead.clone()).await.unwrap();
    first.start(orphan.clone()).await.unwrap();
    first_events
        .line(alive.instance_id, "listening on 8080")
        .await;
    // The deployer goes away; the containers keep running.
    first.detach().await;
    drop(first);
    assert_eq!(
        running_instances(&cleanup),
        [alive.instance_id, dead.instance_id, orphan.instance_id].into()
    );
    docker(&["kill", &container_of(&cleanup, dead.instance_id)]);

    let (second, mut events) = connect(settings).await;
    let mut running = second.running();
    running.sort();
    let mut all = vec![alive.instance_id, dead.instance_id, orphan.instance_id];
    all.sort();
    assert_eq!(
        running, all,
        "every container of the scope, stopped ones too"
    );
    let known = |spec: &slipway_deployer::target::InstanceSpec, at| Known {
        spec: spec.clone(),
        placement: at,
        restarts: 2,
    };
    let adopted = second
        .adopt(vec![known(&alive, alive_at.clone()), known(&dead, dead_at)])
        .await
        .unwrap();
    assert_eq!(adopted.dead, [dead.instance_id]);
    assert_eq!(adopted.running.len(), 1);
    assert_eq!(adopted.running[0], (alive.instance_id, alive_at.clone()));
    assert_eq!(second.supervised(), [alive.instance_id].into());

    // The database does not know the orphan: swept.
    let swept = second
        .sweep(vec![orphan.instance_id, alive.instance_id])
        .await;
    assert_eq!(
        swept,
        [orphan.instance_id],
        "a supervised instance is never swept"
    );
    assert_eq!(
        running_instances(&cleanup),
        [alive.instance_id].into(),
        "docker ps matches"
    );
    assert_eq!(
        cleanup.containers(true).len(),
        1,
        "the dead and the orphan are removed"
    );

    // The adopted output is read again from the start, with the same numbers.
    events.line(alive.instance_id, "listening on 8080").await;
    assert_eq!(events.batches(alive.instance_id)[0].0, 0);
    // And it is healed like any other, its restarts counted on.
    docker(&["kill", &container_of(&cleanup, alive.instance_id)]);
    let (_, restarts, _, _) = events.exited(alive.instance_id).await;
    assert_eq!(restarts, 2);
    let (address, restarts) = events.restarted(alive.instance_id).await;
    assert_eq!(restarts, 3);
    assert_eq!(
        env_of(&address).await["SLIPWAY_INSTANCE"],
        alive.instance_id.to_string()
    );
    second
        .stop(alive.instance_id, Duration::from_secs(2))
        .await
        .unwrap();
    assert!(cleanup.containers(true).is_empty());
}
