//! Heartbeats heal discovery: they put back rows the registry lost, and they are the only
//! thing that reaps, so an outage (no heartbeats at all) reaps nothing.

use std::time::{Duration, Instant};

use slipway_events::deploy::Health;
use slipway_ids::InstanceId;
use slipway_registry::discovery::DiscoverySettings;

use crate::helpers::{TestApp, spawn_app_with};
use crate::instances::{Facts, eventually, get, item};

const PATH: &str = "/v1/services/hello/instances";

/// Reaping after 3 intervals of the heartbeats' own 100 ms.
async fn quick_app() -> TestApp {
    spawn_app_with(DiscoverySettings {
        stale_after_intervals: 3,
        default_heartbeat_ms: 100,
        reap_every_ms: 50,
        ..DiscoverySettings::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_puts_back_instances_the_registry_lost_healthy_at_once() {
    let app = quick_app().await;
    let facts = Facts::new(&app, "hello").await;
    let a = InstanceId::new();
    facts.started(a, "prod", 1, 0).await;
    facts.health(a, "prod", Health::Healthy, 0).await;
    eventually(&app, PATH, |b| {
        item(b, a).is_some_and(|i| i["routable"] == true)
    })
    .await;
    // What an old-style reaping during an outage did: the rows are gone, the process runs.
    sqlx::query("DELETE FROM instances")
        .execute(&app.pool)
        .await
        .unwrap();
    // Rows deleted behind the registry's back move no index: answers kept in memory show
    // the loss once they expire (`answer_ttl_ms`).
    let gone = eventually(&app, PATH, |b| item(b, a).is_none()).await;
    let index = gone["index"].as_i64().unwrap();

    facts
        .heartbeat_of(
            "deployer-a",
            "prod",
            vec![facts.record(a, Some(Health::Healthy))],
            5_000,
        )
        .await;
    let back = eventually(&app, PATH, |b| item(b, a).is_some()).await;
    let row = item(&back, a).unwrap();
    assert_eq!(
        row["routable"], true,
        "health came with the record: {row:#}"
    );
    assert_eq!(row["address"], crate::instances::address_of(a));
    assert!(
        back["index"].as_i64().unwrap() > index,
        "an insert is a change routers must see"
    );
    let owner: Option<String> = sqlx::query_scalar("SELECT owner FROM instances WHERE id = $1")
        .bind(a)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(owner.as_deref(), Some("deployer-a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_reaped_while_no_heartbeat_arrives_at_all() {
    let app = quick_app().await;
    let facts = Facts::new(&app, "hello").await;
    let (a, b) = (InstanceId::new(), InstanceId::new());
    facts.started(a, "prod", 1, 0).await;
    facts.started(b, "prod", 1, 0).await;
    facts.heartbeat("prod", &[a, b], 100).await;
    eventually(&app, PATH, |body| {
        item(body, a).is_some() && item(body, b).is_some()
    })
    .await;
    // Silence (a broker or registry outage) for many times the 300 ms reaping window, while
    // the housekeeping runs every 50 ms: a wait for time itself, not for readiness.
    let silent_until = Instant::now() + Duration::from_millis(1_500);
    while Instant::now() < silent_until {
        let body = get(&app, PATH).await;
        assert!(
            item(&body, a).is_some() && item(&body, b).is_some(),
            "reaped without any heartbeat arriving: {body:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The first heartbeat after the silence lists both: still nothing is reaped.
    facts.heartbeat("prod", &[a, b], 100).await;
    facts.health(a, "prod", Health::Healthy, 0).await;
    let body = eventually(&app, PATH, |body| {
        item(body, a).is_some_and(|i| i["health"] == "healthy")
    })
    .await;
    assert!(item(&body, b).is_some(), "{body:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_its_owners_heartbeats_go_on_without_is_reaped() {
    let app = quick_app().await;
    let facts = Facts::new(&app, "hello").await;
    let (kept, dropped, elsewhere) = (InstanceId::new(), InstanceId::new(), InstanceId::new());
    for id in [kept, dropped] {
        facts.started(id, "prod", 1, 0).await;
    }
    facts.started(elsewhere, "staging", 1, 0).await;
    facts.heartbeat("prod", &[kept, dropped], 100).await;
    let body = eventually(&app, PATH, |b| item(b, dropped).is_some()).await;
    let index = body["index"].as_i64().unwrap();

    // The owner keeps heartbeating, without `dropped`: after 3 intervals it goes.
    let reaped = slipway_testkit::wait_until(Duration::from_secs(30), || {
        let (app, facts) = (&app, &facts);
        async move {
            facts.heartbeat("prod", &[kept], 100).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            item(&get(app, PATH).await, dropped).is_none()
        }
    })
    .await;
    assert!(
        reaped,
        "an instance left out of its owner's heartbeats stayed"
    );
    let body = get(&app, PATH).await;
    assert!(item(&body, kept).is_some(), "{body:#}");
    assert!(
        item(&body, elsewhere).is_some(),
        "another environment's heartbeats decide about it, and there were none: {body:#}"
    );
    assert!(
        body["index"].as_i64().unwrap() > index,
        "reaping is a change"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_applied_after_a_stop_does_not_bring_the_instance_back() {
    let app = quick_app().await;
    let facts = Facts::new(&app, "hello").await;
    let (a, marker) = (InstanceId::new(), InstanceId::new());
    facts.started(a, "prod", 1, 0).await;
    facts.stopped(a, "prod").await;
    // Composed before the stop, applied after it (the deployer read its rows, then stopped).
    facts.heartbeat("prod", &[a], 5_000).await;
    // Facts of one service are applied in order: once the marker is in, so is the heartbeat.
    facts.started(marker, "prod", 1, 0).await;
    let body = eventually(&app, PATH, |b| item(b, marker).is_some()).await;
    assert!(
        item(&body, a).is_none(),
        "a stopped instance came back: {body:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_heartbeat_speaks_for_every_environment_it_lists_and_no_other() {
    let app = quick_app().await;
    let facts = Facts::new(&app, "hello").await;
    let ids: Vec<InstanceId> = (0..4).map(|_| InstanceId::new()).collect();
    let [kept, dropped, emptied, unlisted] = ids[..] else {
        unreachable!()
    };
    for (id, env) in [
        (kept, "prod"),
        (dropped, "prod"),
        (emptied, "staging"),
        (unlisted, "qa"),
    ] {
        facts.started(id, env, 1, 0).await;
    }
    eventually(&app, PATH, |b| ids.iter().all(|id| item(b, *id).is_some())).await;

    // One deployer's heartbeats list prod with `kept` only and staging empty, never qa.
    let reaped = slipway_testkit::wait_until(Duration::from_secs(30), || {
        let (app, facts) = (&app, &facts);
        async move {
            let prod = vec![facts.record(kept, None)];
            facts
                .heartbeat_for(
                    "deployer-a",
                    &[("prod", prod), ("staging", Vec::new())],
                    100,
                )
                .await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            let body = get(app, PATH).await;
            item(&body, dropped).is_none() && item(&body, emptied).is_none()
        }
    })
    .await;
    assert!(reaped, "instances left out of a listed environment stayed");
    let body = get(&app, PATH).await;
    assert!(item(&body, kept).is_some(), "{body:#}");
    assert!(
        item(&body, unlisted).is_some(),
        "an environment no heartbeat lists is not reaped: {body:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_2_heartbeat_still_puts_back_and_reaps_its_environment() {
    let app = quick_app().await;
    let facts = Facts::new(&app, "hello").await;
    let (lost, dropped) = (InstanceId::new(), InstanceId::new());
    facts.started(dropped, "prod", 1, 0).await;
    eventually(&app, PATH, |b| item(b, dropped).is_some()).await;
    // A deployer not yet upgraded lists `lost` (which the registry never had) without
    // `dropped`: the first comes in, the second goes after 3 intervals.
    let healed = slipway_testkit::wait_until(Duration::from_secs(30), || {
        let (app, facts) = (&app, &facts);
        async move {
            facts
                .heartbeat_v2("prod", vec![facts.record(lost, Some(Health::Healthy))], 100)
                .await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            let body = get(app, PATH).await;
            item(&body, lost).is_some() && item(&body, dropped).is_none()
        }
    })
    .await;
    assert!(healed, "{:#}", get(&app, PATH).await);
}
