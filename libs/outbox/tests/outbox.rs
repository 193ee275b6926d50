//! Outbox and inbox against the real PostgreSQL and broker.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

use std::time::Duration;

use futures::FutureExt;
use rdkafka::Message;
use rdkafka::message::Headers;
use slipway_events::slipway::{ServiceCreated, sources};
use slipway_events::{CloudEvent, Topic};
use slipway_ids::ServiceId;
use slipway_kafka::signing::Service;
use slipway_kafka::{EventProducer, Handled, Keys};
use slipway_outbox::{Relay, RelayMetrics};
use slipway_testkit::{fresh_database, kafka_settings, plain_consumer, signing};
use sqlx::PgPool;

static NO_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate::Migrator::DEFAULT;

async fn pool() -> PgPool {
    let db = fresh_database("outbox_test").await;
    let pool = db.connect_and_migrate(&NO_MIGRATIONS).await.unwrap();
    slipway_outbox::migrate(&pool).await.unwrap();
    slipway_outbox::migrate(&pool).await.unwrap(); // idempotent
    pool
}

fn event(name: &str, key: ServiceId) -> CloudEvent {
    let data = ServiceCreated {
        service_id: key,
        name: name.into(),
        project: Default::default(),
        repository: None,
        branch: "main".into(),
        created_at: chrono::Utc::now(),
    };
    CloudEvent::new(sources::REGISTRY, key, Some(name.into()), &data).unwrap()
}

/// The registry's producer: it signs with the registry's key only, as in the service.
fn producer(settings: &slipway_kafka::KafkaSettings) -> EventProducer {
    let keys = Keys::from_settings(&signing::settings("registry"), "registry").unwrap();
    EventProducer::new(settings, keys.signer).unwrap()
}

async fn pending(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_events_are_published_in_order_and_rolled_back_ones_never() {
    let pool = pool().await;
    let settings = kafka_settings();
    slipway_kafka::admin::ensure_topics(&settings)
        .await
        .unwrap();
    let producer = producer(&settings);
    let key = ServiceId::new();

    let mut committed = Vec::new();
    for i in 0..3 {
        let e = event(&format!("kept-{i}"), key);
        let mut tx = pool.begin().await.unwrap();
        slipway_outbox::enqueue(&mut tx, Topic::Services, &e)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        committed.push(e.id.to_string());
    }
    let mut tx = pool.begin().await.unwrap();
    slipway_outbox::enqueue(&mut tx, Topic::Services, &event("dropped", key))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(pending(&pool).await, 3);

    let metrics = RelayMetrics::register(&prometheus::Registry::new()).unwrap();
    let relay = Relay::new(pool.clone(), producer, metrics);
    assert_eq!(relay.pass().await.unwrap(), 3);
    assert_eq!(pending(&pool).await, 0);
    assert_eq!(relay.pass().await.unwrap(), 0, "nothing is published twice");

    let consumer = plain_consumer(
        &settings.bootstrap_servers,
        &[&settings.topics().name(Topic::Services)],
    );
    let mut ids = Vec::new();
    while ids.len() < 3 {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("published")
            .unwrap();
        assert_eq!(
            slipway_kafka::record::verify(&signing::verifier(), &m),
            Ok(Service::Registry),
            "relayed events carry the registry's signature"
        );
        let id = m
            .headers()
            .unwrap()
            .iter()
            .find(|h| h.key == "ce_id")
            .and_then(|h| h.value)
            .unwrap();
        ids.push(String::from_utf8_lossy(id).into_owned());
    }
    assert_eq!(ids, committed);
    // The rolled-back event never shows up.
    let extra = tokio::time::timeout(Duration::from_secs(2), consumer.recv()).await;
    assert!(extra.is_err(), "unexpected extra record");
}

/// The relay hands a whole batch to the producer before awaiting the acknowledgements: each
/// key's events still arrive in the order they were committed, and all are marked published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_sent_together_keeps_each_keys_order() {
    let pool = pool().await;
    let settings = kafka_settings();
    slipway_kafka::admin::ensure_topics(&settings)
        .await
        .unwrap();
    let keys: Vec<ServiceId> = (0..4).map(|_| ServiceId::new()).collect();
    let mut committed: std::collections::HashMap<ServiceId, Vec<String>> = Default::default();
    // 90 rows (under one batch of 100), the keys interleaved, in one transaction each.
    for i in 0..90 {
        let key = keys[i % keys.len()];
        let e = event(&format!("row-{i}"), key);
        let mut tx = pool.begin().await.unwrap();
        slipway_outbox::enqueue(&mut tx, Topic::Services, &e)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        committed.entry(key).or_default().push(e.id.to_string());
    }
    let metrics = RelayMetrics::register(&prometheus::Registry::new()).unwrap();
    let relay = Relay::new(pool.clone(), producer(&settings), metrics);
    assert_eq!(
        relay.pass().await.unwrap(),
        90,
        "one pass publishes the batch"
    );
    assert_eq!(pending(&pool).await, 0);

    let consumer = plain_consumer(
        &settings.bootstrap_servers,
        &[&settings.topics().name(Topic::Services)],
    );
    let mut received: std::collections::HashMap<ServiceId, Vec<String>> = Default::default();
    for _ in 0..90 {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("published")
            .unwrap();
        let header = |name: &str| {
            m.headers()
                .unwrap()
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap()
        };
        let key: ServiceId = String::from_utf8_lossy(m.key().unwrap()).parse().unwrap();
        received.entry(key).or_default().push(header("ce_id"));
    }
    assert_eq!(received, committed, "every key's events, in commit order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_wakes_on_notify_and_stops_on_cancel() {
    let pool = pool().await;
    let settings = kafka_settings();
    slipway_kafka::admin::ensure_topics(&settings)
        .await
        .unwrap();
    let producer = producer(&settings);
    let metrics = RelayMetrics::register(&prometheus::Registry::new()).unwrap();
    let relay = Relay::new(pool.clone(), producer, metrics);
    let cancel = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(relay.run(cancel.clone()));

    let mut tx = pool.begin().await.unwrap();
    slipway_outbox::enqueue(&mut tx, Topic::Services, &event("live", ServiceId::new()))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(
        slipway_testkit::wait_until(Duration::from_secs(20), || async {
            pending(&pool).await == 0
        })
        .await
    );
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbox_applies_each_event_once() {
    let pool = pool().await;
    sqlx::query("CREATE TABLE effects (n INT)")
        .execute(&pool)
        .await
        .unwrap();
    let e = event("once", ServiceId::new());
    let apply = || {
        slipway_outbox::inbox::apply_once(&pool, "test", &e, |tx| {
            async move {
                sqlx::query("INSERT INTO effects VALUES (1)")
                    .execute(tx)
                    .await
                    .map(|_| ())
            }
            .boxed()
        })
    };
    assert_eq!(apply().await.unwrap(), Handled::Applied);
    assert_eq!(apply().await.unwrap(), Handled::Duplicate);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM effects")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 1);

    // A failing effect rolls the inbox row back too, so a retry applies it.
    let other = event("fails", ServiceId::new());
    let failed = slipway_outbox::inbox::apply_once(&pool, "test", &other, |tx| {
        async move {
            sqlx::query("INSERT INTO no_such_table VALUES (1)")
                .execute(tx)
                .await
                .map(|_| ())
        }
        .boxed()
    })
    .await;
    assert!(failed.is_err());
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox WHERE event_id = $1")
        .bind(other.id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(recorded, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_published_rows_and_old_inbox_records_are_pruned() {
    let pool = pool().await;
    let settings = kafka_settings();
    let producer = producer(&settings);
    let metrics = RelayMetrics::register(&prometheus::Registry::new()).unwrap();
    let relay = Relay::new(pool.clone(), producer, metrics);
    let key = ServiceId::new();
    for (name, published) in [
        ("old", "now() - interval '8 days'"),
        ("recent", "now()"),
        ("pending", "NULL"),
    ] {
        let mut tx = pool.begin().await.unwrap();
        slipway_outbox::enqueue(&mut tx, Topic::Services, &event(name, key))
            .await
            .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE outbox SET published_at = {published} WHERE subject = '{name}'"
        )))
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }
    for (name, age) in [("old", "31 days"), ("recent", "1 day")] {
        let mut tx = pool.begin().await.unwrap();
        let e = event(name, key);
        assert!(
            slipway_outbox::inbox::record(&mut tx, "test", &e)
                .await
                .unwrap()
        );
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE inbox SET applied_at = now() - interval '{age}' WHERE event_id = '{}'",
            e.id
        )))
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }
    assert_eq!(relay.prune().await, (1, 1));
    let left: Vec<String> = sqlx::query_scalar("SELECT subject FROM outbox ORDER BY seq")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        left,
        ["recent", "pending"],
        "unpublished rows are never pruned"
    );
    let inbox: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(inbox, 1);
}

// One thread: the test's subscriber is the thread's default, so every poll sees it.
#[tokio::test(flavor = "current_thread")]
async fn enqueue_fills_the_trace_context_of_the_current_span() {
    use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
    use tracing::Instrument;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::layer::SubscriberExt;

    let pool = pool().await;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _default = tracing::subscriber::set_default(subscriber);
    let span = tracing::info_span!("change");
    let trace_id = span.context().span().span_context().trace_id().to_string();

    let traced = event("traced", ServiceId::new());
    let mut given = event("given", ServiceId::new());
    given.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
    let untraced = event("untraced", ServiceId::new());
    async {
        let mut tx = pool.begin().await.unwrap();
        for e in [&traced, &given] {
            slipway_outbox::enqueue(&mut tx, Topic::Services, e)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
    }
    .instrument(span)
    .await;
    // Outside any span: nothing to fill in.
    let mut tx = pool.begin().await.unwrap();
    slipway_outbox::enqueue(&mut tx, Topic::Services, &untraced)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let stored: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT subject, traceparent FROM outbox ORDER BY seq")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(stored[0].0, "traced");
    let tp = stored[0].1.as_deref().expect("filled from the span");
    assert!(tp.starts_with(&format!("00-{trace_id}-")), "{tp}");
    assert_eq!(
        stored[1].1.as_deref(),
        given.traceparent.as_deref(),
        "an event's own context is kept"
    );
    assert_eq!(stored[2], ("untraced".to_owned(), None));
}
