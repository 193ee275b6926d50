//! Only an event signed by its type's owning service reaches a handler: forgeries written
//! straight to the real broker are dead-lettered with the reason and never applied.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use slipway_events::deploy::{DeployRequested, InstanceStarted};
use slipway_events::slipway::sources;
use slipway_events::{CloudEvent, EventData, SIGNATURE_HEADER, Topic};
use slipway_ids::{EventId, ServiceId};
use slipway_kafka::consumer::ConsumerMetrics;
use slipway_kafka::record::headers;
use slipway_kafka::signing::{Service, Signer};
use slipway_kafka::{ConsumerRunner, Handled, Handler, HandlerError, KafkaSettings};
use slipway_testkit::{kafka_settings, plain_consumer, signing, wait_until};
use tokio_util::sync::CancellationToken;

#[derive(Clone, Default)]
struct Applied(Arc<Mutex<Vec<EventId>>>);

impl Handler for Applied {
    async fn handle(&self, event: &CloudEvent) -> Result<Handled, HandlerError> {
        self.0.lock().unwrap().push(event.id);
        Ok(Handled::Applied)
    }
}

fn event(source: &str, ty: &str, key: ServiceId) -> CloudEvent {
    CloudEvent {
        id: EventId::new(),
        source: source.into(),
        ty: ty.into(),
        subject: Some("hello".into()),
        time: chrono::Utc::now(),
        key,
        project: None,
        traceparent: None,
        tracestate: None,
        // What a forger wants applied: the registry's internal port as an instance address.
        data: serde_json::json!({"address": "127.0.0.1:8082"}),
    }
}

/// Writes `event` with plain rdkafka, as anyone on the broker can: its envelope headers, then
/// `extra` headers (a signature, or a smuggled second `ce_type`).
async fn write(settings: &KafkaSettings, topic: Topic, event: &CloudEvent, extra: &[(&str, &str)]) {
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &settings.bootstrap_servers)
        .create()
        .unwrap();
    let mut all: OwnedHeaders = headers(event);
    for (key, value) in extra {
        all = all.insert(Header {
            key,
            value: Some(value.as_bytes()),
        });
    }
    let name = settings.topics().name(topic);
    let key = event.key.to_string();
    let body = event.body();
    producer
        .send(
            FutureRecord::to(&name)
                .key(&key)
                .payload(&body)
                .headers(all),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
}

fn stranger() -> Signer {
    // A key of the right shape that is nobody's.
    let seed = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    Signer::from_seeds(Service::ALL.map(|s| (s, seed.as_str()))).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_events_signed_by_their_owner_are_applied() {
    let settings = kafka_settings();
    slipway_kafka::admin::ensure_topics(&settings)
        .await
        .unwrap();
    let key = ServiceId::new(); // one partition: the genuine event comes last
    let owner = signing::impersonator();

    let unsigned = event(sources::GATEWAY, DeployRequested::TYPE, key);
    write(&settings, Topic::Commands, &unsigned, &[]).await;

    let wrong_key = event(sources::GATEWAY, DeployRequested::TYPE, key);
    let sig = stranger().sign(&wrong_key).unwrap();
    write(
        &settings,
        Topic::Commands,
        &wrong_key,
        &[(SIGNATURE_HEADER, &sig)],
    )
    .await;

    // The deployer's genuine key, on a command only the gateway may give.
    let not_owner = event(sources::DEPLOYER, DeployRequested::TYPE, key);
    let sig = owner.sign(&not_owner).unwrap();
    write(
        &settings,
        Topic::Commands,
        &not_owner,
        &[(SIGNATURE_HEADER, &sig)],
    )
    .await;

    // A genuine deployer event with a second `ce_type` appended, hoping the handler reads it.
    let smuggled = event(sources::DEPLOYER, InstanceStarted::TYPE, key);
    let sig = owner.sign(&smuggled).unwrap();
    write(
        &settings,
        Topic::Commands,
        &smuggled,
        &[(SIGNATURE_HEADER, &sig), ("ce_type", DeployRequested::TYPE)],
    )
    .await;

    // Published by the slipway producer, signed with the gateway's key.
    let genuine = event(sources::GATEWAY, DeployRequested::TYPE, key);
    signing::producer(&settings)
        .publish(Topic::Commands, &genuine)
        .await
        .unwrap();

    let applied = Applied::default();
    let runner = ConsumerRunner::new(
        settings.clone(),
        "group-signatures",
        &[Topic::Commands],
        applied.clone(),
        signing::producer(&settings),
        ConsumerMetrics::register(&prometheus::Registry::new()).unwrap(),
        signing::verifier(),
    );
    let cancel = CancellationToken::new();
    let task = tokio::spawn(runner.run(cancel.clone()));
    assert!(
        wait_until(Duration::from_secs(60), || async {
            !applied.0.lock().unwrap().is_empty()
        })
        .await,
        "the genuine command is applied"
    );
    cancel.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(
        *applied.0.lock().unwrap(),
        [genuine.id],
        "only the genuine command reached the handler"
    );

    let dlq = plain_consumer(
        &settings.bootstrap_servers,
        &[&settings.topics().name(Topic::DeadLetter)],
    );
    let mut reasons = Vec::new();
    while reasons.len() < 4 {
        let m = tokio::time::timeout(Duration::from_secs(30), dlq.recv())
            .await
            .expect("dead letters")
            .unwrap();
        let h = rdkafka::Message::headers(&m).unwrap();
        let get = |name: &str| {
            h.iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        reasons.push((get("ce_id").unwrap(), get("slipway_dlq_reason").unwrap()));
    }
    let expect = [
        (unsigned.id, "rejected: signature missing"),
        (wrong_key.id, "rejected: signature invalid"),
        (
            not_owner.id,
            "rejected: signed by deployer but gateway owns type dev.slipway.deploy.requested.v1",
        ),
        (
            smuggled.id,
            "rejected: header ce_type appears more than once",
        ),
    ];
    for ((id, reason), (want_id, want)) in reasons.iter().zip(expect) {
        assert_eq!(*id, want_id.to_string());
        assert!(
            reason.starts_with(want),
            "{reason:?} should start with {want:?}"
        );
    }
}
