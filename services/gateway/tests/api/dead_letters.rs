//! Dead letters through the real parts: the builder (a real one, on the real broker)
//! dead-letters an event it can never apply, the gateway stores it from the dead-letter topic,
//! a platform admin lists it and replays it; the replay is the original record byte for byte,
//! is verified and handled again (and dead-lettered again, since it still cannot be applied),
//! and a second replay of the same dead letter is refused.

use std::time::Duration;

use rdkafka::Message;
use rdkafka::message::Headers;
use serde_json::{Value, json};
use slipway_events::slipway::{ServiceCreated, sources};
use slipway_events::{CloudEvent, EventData, Topic};
use slipway_ids::ServiceId;
use slipway_kafka::dead_letter::DeadLetter;
use slipway_testkit::plain_consumer;

use crate::helpers::{TestApp, problem, spawn_app};

/// Stores a dead letter of a garbage record on the app's services topic (for the access
/// matrix, where nothing consumes it); its id.
pub async fn insert_sample(app: &TestApp) -> i64 {
    let offset = i64::from(rand_u32());
    let letter = DeadLetter {
        dlq_partition: 0,
        dlq_offset: offset,
        topic: app.kafka.topics().name(Topic::Services),
        partition: 0,
        offset,
        group: "sample".into(),
        reason: "sample".into(),
        attempts: 1,
        key: Some(b"k".to_vec()),
        payload: Some(b"garbage".to_vec()),
        original_headers: vec![("ce_id".into(), Some(offset.to_string().into_bytes()))],
    };
    assert!(
        slipway_gateway::dead_letters::insert(&app.pool, &letter)
            .await
            .unwrap()
    );
    sqlx::query_scalar("SELECT id FROM dead_letters WHERE source_offset = $1")
        .bind(offset)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

fn rand_u32() -> u32 {
    let id = uuid::Uuid::new_v4();
    u32::from_be_bytes(id.as_bytes()[..4].try_into().unwrap())
}

async fn list(app: &TestApp, query: &str) -> Value {
    let res = app
        .client
        .get(app.url(&format!("/v1/admin/dead-letters{query}")))
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

/// The listing once it shows `count` dead letters of event `id` (within a minute).
async fn listed_until(app: &TestApp, id: &str, count: usize) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let listed = list(app, "").await;
        if of_event(&listed, id).len() >= count {
            return listed;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{count} dead letters of {id} never listed: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn of_event<'a>(body: &'a Value, id: &str) -> Vec<&'a Value> {
    body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["event_id"] == id)
        .collect()
}

/// Key, value and every header, as read from the broker.
type Record = (
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Vec<(String, Option<Vec<u8>>)>,
    i32,
    i64,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_is_listed_and_replayed_once_exactly_as_it_was() {
    let app = spawn_app().await;
    // Signed by the registry, which owns the type, but with data no consumer can decode: the
    // builder's catalog refuses it for good.
    let data = ServiceCreated {
        service_id: ServiceId::new(),
        name: "undecodable".into(),
        project: Default::default(),
        repository: None,
        branch: "main".into(),
        created_at: chrono::Utc::now(),
    };
    let mut event = CloudEvent::new(
        sources::REGISTRY,
        data.service_id,
        Some("undecodable".into()),
        &data,
    )
    .unwrap();
    event.data = json!({"service_id": "not a uuid"});
    let producer = slipway_testkit::signing::producer(&app.kafka);
    producer.publish(Topic::Services, &event).await.unwrap();
    let id = event.id.to_string();
    let group = format!("{}slipway-builder-events", app.kafka.topic_prefix);

    let listed = listed_until(&app, &id, 1).await;
    let item = of_event(&listed, &id)[0].clone();
    assert_eq!(item["consumer_group"], group.as_str());
    assert_eq!(item["attempts"], 1);
    assert_eq!(item["event_type"], ServiceCreated::TYPE);
    assert!(
        item["topic"]
            .as_str()
            .unwrap()
            .ends_with("slipway.services"),
        "{item}"
    );
    let reason = item["reason"].as_str().unwrap().to_owned();
    assert!(
        !reason.is_empty() && !reason.starts_with("rejected"),
        "{reason}"
    );
    assert!(item["replayed_at"].is_null());
    assert!(
        item["headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h[0] == "ce_slipwaysig"),
        "the signature is kept: {item}"
    );

    // Filters and pages.
    let q = format!(
        "?group={group}&type={}&topic=slipway.services",
        ServiceCreated::TYPE
    );
    assert_eq!(of_event(&list(&app, &q).await, &id).len(), 1);
    assert!(of_event(&list(&app, "?type=dev.slipway.nothing.v1").await, &id).is_empty());
    assert!(of_event(&list(&app, "?topic=slipway.commands").await, &id).is_empty());
    let page = list(&app, "?limit=1").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert!(page["next"].is_i64(), "{page}");
    for (bad, status) in [
        ("?limit=0", 422),
        ("?limit=501", 422),
        ("?group=", 422),
        ("?colour=red", 400),
        ("?before=x", 400),
    ] {
        let res = app
            .client
            .get(app.url(&format!("/v1/admin/dead-letters{bad}")))
            .bearer_auth(&app.admin_token)
            .send()
            .await
            .unwrap();
        problem(res, status).await;
    }

    // Replay: 202, to the original topic, the record exactly as it was.
    let dl = item["id"].as_i64().unwrap();
    let replay_path = format!("/v1/admin/dead-letters/{dl}/replay");
    let res = app
        .client
        .post(app.url(&replay_path))
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let replayed: Value = res.json().await.unwrap();
    let topic = app.kafka.topics().name(Topic::Services);
    assert_eq!(replayed["topic"], topic.as_str());

    let consumer = plain_consumer(&app.kafka.bootstrap_servers, &[&topic]);
    let mut copies: Vec<Record> = Vec::new();
    while copies.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("the original and the replay are on the topic")
            .unwrap();
        let headers: Vec<(String, Option<Vec<u8>>)> = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        if headers
            .iter()
            .any(|(k, v)| k == "ce_id" && v.as_deref() == Some(id.as_bytes()))
        {
            copies.push((
                m.key().map(<[u8]>::to_vec),
                m.payload().map(<[u8]>::to_vec),
                headers,
                m.partition(),
                m.offset(),
            ));
        }
    }
    let (original, replay) = (&copies[0], &copies[1]);
    assert_eq!(original.0, replay.0, "same key");
    assert_eq!(original.1, replay.1, "same value");
    assert_eq!(original.2, replay.2, "same headers, signature included");
    assert_eq!(replayed["partition"], replay.3);
    assert_eq!(replayed["offset"], replay.4);

    // A second replay of the same dead letter is refused.
    let res = app
        .client
        .post(app.url(&replay_path))
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .unwrap();
    problem(res, 409).await;
    for missing in ["999999999", "abc"] {
        let res = app
            .client
            .post(app.url(&format!("/v1/admin/dead-letters/{missing}/replay")))
            .bearer_auth(&app.admin_token)
            .send()
            .await
            .unwrap();
        problem(res, 404).await;
    }

    // The replay was verified again (its signature still holds: the reason is the handler's,
    // not a rejection) and, still undecodable, dead-lettered again as a new dead letter.
    let listed = listed_until(&app, &id, 2).await;
    let both = of_event(&listed, &id);
    assert!(both[0]["replayed_at"].is_null(), "the new one: {}", both[0]);
    assert_eq!(both[0]["reason"], reason.as_str());
    assert!(
        both[1]["replayed_at"].is_string(),
        "the replayed one: {}",
        both[1]
    );

    // Its consumer is one of the gateway's readiness checks (ready: nothing to wait out).
    let ready: Value = app
        .client
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let name = format!(
        "consumer {}slipway-gateway-dead-letters",
        app.kafka.topic_prefix
    );
    let check = ready["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name.as_str())
        .unwrap_or_else(|| panic!("no check {name}: {ready}"));
    assert_eq!(check["ok"], true, "{ready}");

    // Only platform admins; every replay attempt is in the audit log.
    let viewer = app.token("viewer").await;
    let res = app
        .client
        .get(app.url("/v1/admin/dead-letters"))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    problem(res, 403).await;
    let audited: Vec<i32> =
        sqlx::query_scalar("SELECT status FROM audit_log WHERE path = $1 ORDER BY id")
            .bind(&replay_path)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(audited, [202, 409]);
}
