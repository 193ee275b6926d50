//! The Kafka plumbing against the real broker `scripts/test` starts.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::anyhow;
use rdkafka::Message;
use rdkafka::message::Headers;
use slipway_events::slipway::{ServiceCreated, sources};
use slipway_events::{CloudEvent, Topic};
use slipway_ids::{EventId, ServiceId};
use slipway_kafka::consumer::ConsumerMetrics;
use slipway_kafka::{ConsumerRunner, Handled, Handler, HandlerError, KafkaSettings};
use slipway_testkit::{kafka_settings, plain_consumer, wait_until};
use tokio_util::sync::CancellationToken;

fn event(name: &str) -> CloudEvent {
    let data = ServiceCreated {
        service_id: ServiceId::new(),
        name: name.into(),
        project: Default::default(),
        repository: None,
        branch: "main".into(),
        created_at: chrono::Utc::now(),
    };
    CloudEvent::new(sources::REGISTRY, data.service_id, Some(name.into()), &data).unwrap()
}

/// Records events; fails the ones whose subject says so.
#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<(EventId, String)>>>,
    attempts: Arc<Mutex<std::collections::HashMap<EventId, u32>>>,
    /// While set, `blocked-*` events fail transiently (a dependency is down).
    outage: Arc<std::sync::atomic::AtomicBool>,
}

impl Handler for Recorder {
    async fn handle(&self, event: &CloudEvent) -> Result<Handled, HandlerError> {
        let subject = event.subject.clone().unwrap_or_default();
        let attempt = {
            let mut attempts = self.attempts.lock().unwrap();
            let a = attempts.entry(event.id).or_default();
            *a += 1;
            *a
        };
        if subject.starts_with("poison") {
            return Err(HandlerError::Permanent(anyhow!(
                "{subject} can never be applied"
            )));
        }
        if subject.starts_with("flaky") && attempt < 3 {
            return Err(HandlerError::Retryable(anyhow!(
                "transient failure {attempt}"
            )));
        }
        if subject.starts_with("blocked") && self.outage.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(HandlerError::Retryable(anyhow!("the dependency is down")));
        }
        self.seen.lock().unwrap().push((event.id, subject));
        Ok(Handled::Applied)
    }
}

fn spawn_runner(
    settings: &KafkaSettings,
    group: &str,
    handler: Recorder,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let (cancel, task, _) = spawn_watched(settings, group, handler, &prometheus::Registry::new());
    (cancel, task)
}

fn spawn_watched(
    settings: &KafkaSettings,
    group: &str,
    handler: Recorder,
    registry: &prometheus::Registry,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<()>,
    slipway_kafka::ConsumerStatus,
) {
    let producer = slipway_testkit::signing::producer(settings);
    let metrics = ConsumerMetrics::register(registry).unwrap();
    let runner = ConsumerRunner::new(
        settings.clone(),
        group,
        &[Topic::Services],
        handler,
        producer,
        metrics,
        slipway_testkit::signing::verifier(),
    );
    let status = runner.status();
    let cancel = CancellationToken::new();
    let token = cancel.clone();
    let task = tokio::spawn(async move { runner.run(token).await.unwrap() });
    (cancel, task, status)
}

fn names(recorder: &Recorder) -> Vec<String> {
    recorder
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|(_, s)| s.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produced_events_arrive_with_their_envelope_and_in_order_per_key() {
    let settings = kafka_settings();
    slipway_kafka::admin::ensure_topics(&settings)
        .await
        .unwrap();
    // Idempotent: a second call (another service starting) succeeds too.
    slipway_kafka::admin::ensure_topics(&settings)
        .await
        .unwrap();
    let producer = slipway_testkit::signing::producer(&settings);
    producer.ping().await.unwrap();

    let key = ServiceId::new();
    let mut sent = Vec::new();
    for i in 0..5 {
        let mut e = event(&format!("svc-{i}"));
        e.key = key;
        e.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        producer.publish(Topic::Services, &e).await.unwrap();
        sent.push(e);
    }

    let consumer = plain_consumer(
        &settings.bootstrap_servers,
        &[&settings.topics().name(Topic::Services)],
    );
    let mut received = Vec::new();
    while received.len() < sent.len() {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("events arrive")
            .unwrap();
        let headers: Vec<(String, String)> = m
            .headers()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h.key.to_owned(),
                    String::from_utf8_lossy(h.value.unwrap()).into_owned(),
                )
            })
            .collect();
        let get = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("ce_specversion").as_deref(), Some("1.0"));
        assert_eq!(
            get("ce_type").as_deref(),
            Some("dev.slipway.service.created.v1")
        );
        assert_eq!(get("content-type").as_deref(), Some("application/json"));
        assert!(get("traceparent").is_some());
        assert!(get("ce_slipwaysig").is_some(), "signed: {headers:?}");
        assert_eq!(m.key(), Some(key.to_string().as_bytes()));
        received.push(get("ce_id").unwrap());
    }
    let expected: Vec<String> = sent.iter().map(|e| e.id.to_string()).collect();
    assert_eq!(received, expected, "one key, one partition, publish order");
}

/// Keys whose events land on partitions 0 and 1 of `settings`' topics (two partitions).
async fn keys_on_two_partitions(producer: &slipway_kafka::EventProducer) -> (ServiceId, ServiceId) {
    let mut found: [Option<ServiceId>; 2] = [None, None];
    while found.iter().any(Option::is_none) {
        let e = event("probe");
        let (partition, _) = producer.publish(Topic::Services, &e).await.unwrap();
        found[usize::try_from(partition).unwrap()].get_or_insert(e.key);
    }
    (found[0].unwrap(), found[1].unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_waited_out_with_the_partition_paused_and_poison_dead_lettered() {
    let mut settings = kafka_settings();
    // Retries at most every half second, so the test sees the recovery quickly.
    settings.retry_max_backoff_ms = 500;
    slipway_kafka::admin::ensure_topics(&settings)
        .await
        .unwrap();
    let producer = slipway_testkit::signing::producer(&settings);
    let (waiting, flowing) = keys_on_two_partitions(&producer).await;
    // One partition: an event that waits for its dependency, then one after it.
    for name in ["blocked-1", "ok-2"] {
        let mut e = event(name);
        e.key = waiting;
        producer.publish(Topic::Services, &e).await.unwrap();
    }
    // The other: flaky (two transient failures), poison (permanent), a plain one, and a record
    // that is not a CloudEvent at all.
    for name in ["flaky-3", "poison-4", "ok-5"] {
        let mut e = event(name);
        e.key = flowing;
        producer.publish(Topic::Services, &e).await.unwrap();
    }
    producer_raw(&settings, flowing).await;

    let recorder = Recorder::default();
    recorder
        .outage
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let registry = prometheus::Registry::new();
    let (cancel, task, status) = spawn_watched(&settings, "group-dlq", recorder.clone(), &registry);
    // The other partition flows while the first waits: nothing of the waiting key is applied,
    // not even `ok-2` behind the blocked event.
    assert!(
        wait_until(Duration::from_secs(60), || async {
            names(&recorder)
                .iter()
                .filter(|n| !n.starts_with("probe"))
                .count()
                == 2
        })
        .await,
        "applied: {:?}",
        names(&recorder)
    );
    let applied: Vec<String> = names(&recorder)
        .into_iter()
        .filter(|n| !n.starts_with("probe"))
        .collect();
    assert_eq!(applied, ["flaky-3", "ok-5"]);
    assert!(
        wait_until(Duration::from_secs(10), || async {
            recorder.attempts.lock().unwrap().values().any(|a| *a >= 3) && status.check().is_err()
        })
        .await
    );
    let reason = status.check().unwrap_err();
    assert!(
        reason.starts_with("consumer group group-dlq: waiting out a transient failure since "),
        "{reason}"
    );
    assert!(reason.ends_with(": the dependency is down"), "{reason}");
    let metrics = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    assert!(
        metrics.contains("consumer_waiting_partitions{group=\"group-dlq\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("consumer_retries_total{cause=\"transient\",group=\"group-dlq\"}"),
        "{metrics}"
    );

    // The dependency comes back: the waiting partition resumes, in order.
    recorder
        .outage
        .store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(
        wait_until(Duration::from_secs(60), || async {
            names(&recorder)
                .iter()
                .filter(|n| !n.starts_with("probe"))
                .count()
                == 4
        })
        .await,
        "applied: {:?}",
        names(&recorder)
    );
    let applied: Vec<String> = names(&recorder)
        .into_iter()
        .filter(|n| !n.starts_with("probe"))
        .collect();
    assert_eq!(&applied[2..], ["blocked-1", "ok-2"]);
    assert!(
        wait_until(Duration::from_secs(5), || async { status.check().is_ok() }).await,
        "{:?}",
        status.check()
    );

    // Only the permanent failures were dead-lettered: poison and the invalid record.
    let dlq = plain_consumer(
        &settings.bootstrap_servers,
        &[&settings.topics().name(Topic::DeadLetter)],
    );
    let mut reasons = Vec::new();
    while reasons.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(30), dlq.recv())
            .await
            .expect("dead letters")
            .unwrap();
        let h = m.headers().unwrap();
        let reason = h
            .iter()
            .find(|h| h.key == "slipway_dlq_reason")
            .and_then(|h| h.value)
            .unwrap();
        let topic = h
            .iter()
            .find(|h| h.key == "slipway_dlq_topic")
            .and_then(|h| h.value)
            .unwrap();
        assert_eq!(topic, settings.topics().name(Topic::Services).as_bytes());
        reasons.push(String::from_utf8_lossy(reason).into_owned());
    }
    assert!(
        reasons[0].contains("poison-4 can never be applied"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].contains("not a valid slipway CloudEvent"),
        "{reasons:?}"
    );
    assert!(
        tokio::time::timeout(Duration::from_secs(3), dlq.recv())
            .await
            .is_err(),
        "nothing else was dead-lettered"
    );

    cancel.cancel();
    task.await.unwrap();

    // Offsets were committed: the same group resumes after the last message, redoing nothing.
    let again = Recorder::default();
    let late = event("ok-6");
    producer.publish(Topic::Services, &late).await.unwrap();
    let (cancel, task) = spawn_runner(&settings, "group-dlq", again.clone());
    assert!(
        wait_until(Duration::from_secs(60), || async {
            !names(&again).is_empty()
        })
        .await
    );
    cancel.cancel();
    task.await.unwrap();
    assert_eq!(
        names(&again),
        ["ok-6"],
        "nothing before the committed offset was redelivered"
    );
}

async fn producer_raw(settings: &KafkaSettings, key: ServiceId) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let p: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &settings.bootstrap_servers)
        .create()
        .unwrap();
    let topic = settings.topics().name(Topic::Services);
    let key = key.to_string();
    p.send(
        FutureRecord::to(&topic).key(&key).payload("garbage"),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
}
