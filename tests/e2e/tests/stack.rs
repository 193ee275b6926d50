//! The whole platform: the five service binaries, started as child processes on the real
//! broker and PostgreSQL, driven through the gateway; events read by a plain rdkafka consumer.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use serde_json::{Value, json};
use support::Stack;

/// What an outside team would write: plain rdkafka, its own group, no slipway code.
fn outside_subscriber(bootstrap: &str, topic: &str) -> StreamConsumer {
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set(
            "group.id",
            format!("outside-team-{}", slipway_testkit::unique()),
        )
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    consumer
}

/// A received record: key, headers, body.
struct Received {
    key: String,
    headers: HashMap<String, String>,
    body: Value,
}

async fn receive(consumer: &StreamConsumer, timeout: Duration) -> Option<Received> {
    let m = tokio::time::timeout(timeout, consumer.recv())
        .await
        .ok()?
        .ok()?;
    let headers = m
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| {
                    (
                        h.key.to_owned(),
                        String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Some(Received {
        key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
        headers,
        body: serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or(Value::Null),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walking_skeleton_through_all_five_services() {
    let mut stack = Stack::start().await;
    let subscriber = outside_subscriber(&stack.kafka, &stack.topic("slipway.services"));

    // Create through the gateway with the admin token.
    let res = stack
        .post("/v1/services", &stack.admin_token, json!({"name": "hello"}))
        .await;
    assert_eq!(res.status(), 201);
    let created: Value = res.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(created["webhook_secret"].as_str().unwrap().len() >= 32);

    // Read back.
    let got: Value = stack
        .get("/v1/services/hello", &stack.admin_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(got["id"], id.as_str());
    let list: Value = stack
        .get("/v1/services", &stack.admin_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"][0]["name"], "hello");

    // Refusals, each a problem document.
    let viewer = stack.token("viewer").await;
    for (token, body, status) in [
        (stack.admin_token.as_str(), json!({"name": "hello"}), 409),
        (
            stack.admin_token.as_str(),
            json!({"name": "Not Valid"}),
            422,
        ),
        ("", json!({"name": "anon"}), 401),
        (viewer.as_str(), json!({"name": "viewer-made"}), 403),
    ] {
        let res = stack.post("/v1/services", token, body).await;
        assert_eq!(res.status(), status);
        assert_eq!(res.headers()["content-type"], "application/problem+json");
    }

    // The outside subscriber sees exactly one CloudEvent for the one service created.
    let event = receive(&subscriber, Duration::from_secs(30))
        .await
        .expect("service created event");
    assert_eq!(event.key, id);
    assert_eq!(event.headers["ce_specversion"], "1.0");
    assert_eq!(event.headers["ce_type"], "dev.slipway.service.created.v1");
    assert_eq!(event.headers["ce_source"], "/slipway/registry");
    assert_eq!(event.headers["ce_subject"], "hello");
    assert_eq!(event.headers["content-type"], "application/json");
    assert_eq!(event.headers["ce_id"].len(), 36);
    assert!(event.headers["ce_time"].ends_with('Z'));
    assert_eq!(event.body["name"], "hello");
    assert_eq!(event.body["service_id"], id.as_str());
    assert!(
        receive(&subscriber, Duration::from_secs(2)).await.is_none(),
        "refused creates publish nothing"
    );

    // Builder, deployer and monitor each consumed and applied it.
    for service in ["builder", "deployer", "monitor"] {
        stack.wait_applied(service, 1).await;
    }

    // Each service logged in as its own role, which owns its schema only: the registry's role
    // reads its own tables but not the gateway's tokens, nor can it make tables elsewhere.
    let registry_db = sqlx::PgPool::connect_with(stack.db_roles["registry"].connect_options())
        .await
        .unwrap();
    let own: i64 = sqlx::query_scalar("SELECT count(*) FROM services")
        .fetch_one(&registry_db)
        .await
        .unwrap();
    assert_eq!(own, 1, "the registry's role reads its own tables");
    for statement in [
        "SELECT count(*) FROM gateway.api_tokens",
        "CREATE TABLE public.stolen (token text)",
        "CREATE SCHEMA stolen",
    ] {
        let denied = sqlx::query(statement)
            .execute(&registry_db)
            .await
            .expect_err(statement);
        assert!(
            denied.to_string().contains("permission denied"),
            "{statement}: {denied}"
        );
    }
    registry_db.close().await;

    // SIGTERM: each service drains (consumers commit, relay finishes) and exits cleanly.
    for service in support::SERVICES {
        let status = stack.terminate(service).await;
        assert!(status.success(), "{service} exited with {status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_killed_after_create_loses_no_event_and_applies_none_twice() {
    let mut stack = Stack::start().await;
    let subscriber = outside_subscriber(&stack.kafka, &stack.topic("slipway.services"));

    let mut ids = HashSet::new();
    for i in 0..5 {
        let res = stack
            .post(
                "/v1/services",
                &stack.admin_token,
                json!({"name": format!("svc-{i}")}),
            )
            .await;
        assert_eq!(res.status(), 201);
        let body: Value = res.json().await.unwrap();
        ids.insert(body["id"].as_str().unwrap().to_owned());
        if i == 4 {
            // Right after the last create answered: its outbox row may not be published yet.
            stack.kill9("registry");
        }
    }
    stack.restart("registry").await;
    let res = stack
        .post(
            "/v1/services",
            &stack.admin_token,
            json!({"name": "after-restart"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();
    ids.insert(body["id"].as_str().unwrap().to_owned());

    // Every service's event arrives; a redelivery (published, killed before marked) would
    // carry the same ce_id, so at most one distinct event per service.
    let mut event_ids: HashMap<String, HashSet<String>> = HashMap::new();
    while event_ids.len() < ids.len() {
        let event = receive(&subscriber, Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("missing events: got {} of {}", event_ids.len(), ids.len()));
        event_ids
            .entry(event.key)
            .or_default()
            .insert(event.headers["ce_id"].clone());
    }
    assert_eq!(event_ids.keys().cloned().collect::<HashSet<_>>(), ids);
    assert!(event_ids.values().all(|ce| ce.len() == 1), "{event_ids:?}");

    // The consumers applied each event exactly once.
    for service in ["builder", "deployer", "monitor"] {
        stack.wait_applied(service, ids.len()).await;
    }
    // And nothing more: give late duplicates a moment to show up wrongly.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for service in ["builder", "deployer", "monitor"] {
        assert_eq!(stack.applied(service).await, ids.len() as u64, "{service}");
    }
    let stored: i64 = stack
        .count("registry.outbox WHERE published_at IS NOT NULL")
        .await;
    assert_eq!(
        stored,
        ids.len() as i64,
        "every outbox row was eventually published"
    );
}
