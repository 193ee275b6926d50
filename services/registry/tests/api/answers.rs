//! Instance answers kept in memory (`answers.rs`): a change is seen by the next read once its
//! index is known, on every replica, however long answers are kept otherwise.

use serde_json::Value;
use slipway_events::deploy::Health;
use slipway_ids::InstanceId;
use slipway_registry::discovery::DiscoverySettings;

use crate::helpers::{TestApp, spawn_app_with, spawn_replica};
use crate::instances::{Facts, eventually, get, item};

const PATH: &str = "/v1/services/hello/instances";

/// Answers kept for a minute: only an index change can refresh one within a test.
fn kept_long() -> DiscoverySettings {
    DiscoverySettings {
        answer_ttl_ms: 60_000,
        ..DiscoverySettings::default()
    }
}

fn health_of(body: &Value, id: InstanceId) -> String {
    item(body, id).unwrap()["health"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Blocks on `PATH` past `index` (the replica's watch has seen the change when it answers).
async fn past(app: &TestApp, index: i64) -> Value {
    let body = get(app, &format!("{PATH}?index={index}&wait=30s")).await;
    assert!(body["index"].as_i64().unwrap() > index, "{body:#}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_is_seen_by_the_next_read_though_answers_are_kept() {
    let app = spawn_app_with(kept_long()).await;
    let facts = Facts::new(&app, "hello").await;
    let a = InstanceId::new();
    facts.started(a, "prod", 1, 0).await;
    let first = eventually(&app, PATH, |b| item(b, a).is_some()).await;
    let index = first["index"].as_i64().unwrap();
    // Kept now: the same answer, filtered and not, read after read.
    assert_eq!(get(&app, PATH).await, first);
    let prod = get(&app, &format!("{PATH}?environment=prod")).await;
    assert_eq!(prod["items"], first["items"]);
    assert_eq!(health_of(&first, a), "starting");
    // Read from memory: a row changed behind the registry's back (no bump) does not show.
    sqlx::query("UPDATE instances SET address = 'changed.invalid:1'")
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(get(&app, PATH).await["items"], first["items"]);

    facts.health(a, "prod", Health::Healthy, 0).await;
    let woken = past(&app, index).await;
    assert_eq!(health_of(&woken, a), "healthy");
    // Plain reads right after: not the answer kept at the old index, for either key.
    let next = get(&app, PATH).await;
    assert_eq!(health_of(&next, a), "healthy", "{next:#}");
    assert_eq!(next["index"], woken["index"]);
    let prod = get(&app, &format!("{PATH}?environment=prod")).await;
    assert_eq!(health_of(&prod, a), "healthy", "{prod:#}");
    // The filter still filters.
    let staging = get(&app, &format!("{PATH}?environment=staging")).await;
    assert_eq!(staging["items"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_agree_after_a_change_applied_by_either() {
    let one = spawn_app_with(kept_long()).await;
    let two = spawn_replica(&one, kept_long()).await;
    let facts = Facts::new(&one, "hello").await;
    let (a, b) = (InstanceId::new(), InstanceId::new());
    facts.started(a, "prod", 1, 0).await;
    let seen = eventually(&one, PATH, |body| item(body, a).is_some()).await;
    let index = seen["index"].as_i64().unwrap();
    // Both keep an answer at `index` (the second may have to catch up first).
    let other = eventually(&two, PATH, |body| body["index"] == index).await;
    assert_eq!(other, seen);

    // Whichever replica's consumer applies them, both see the changes.
    facts.started(b, "prod", 1, 0).await;
    facts.health(a, "prod", Health::Unhealthy, 0).await;
    let expect = |body: &Value| item(body, b).is_some() && health_of(body, a) == "unhealthy";
    let last = eventually(&one, PATH, expect).await;
    let last_index = last["index"].as_i64().unwrap();
    assert!(last_index > index);
    let on_two = past(&two, last_index - 1).await;
    assert_eq!(on_two["index"], last_index);
    assert_eq!(
        on_two, last,
        "both replicas answer the same state at the same index"
    );
    assert_eq!(get(&two, PATH).await, last);
    assert_eq!(get(&one, PATH).await, last);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_refreshes_last_seen_in_kept_answers_without_moving_the_index() {
    let app = spawn_app_with(kept_long()).await;
    let facts = Facts::new(&app, "hello").await;
    let a = InstanceId::new();
    facts.started(a, "prod", 1, 0).await;
    let before = eventually(&app, PATH, |b| item(b, a).is_some()).await;
    let seen = |body: &Value| item(body, a).unwrap()["last_seen"].clone();
    assert_eq!(seen(&get(&app, PATH).await), seen(&before), "kept");

    // Answers are kept for a minute, the wait below is 30 s: only the heartbeat's notification
    // can make the new `last_seen` show.
    facts.heartbeat("prod", &[a], 5_000).await;
    let after = eventually(&app, PATH, |b| seen(b) != seen(&before)).await;
    assert_eq!(
        after["index"], before["index"],
        "a heartbeat moves no index"
    );
}
