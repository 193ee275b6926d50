//! Bounds of the outbox against the real PostgreSQL and broker: the size check at enqueue, the
//! dead-letter table for rows that can never be published, and a broker outage waited out.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::StreamConsumer;
use slipway_events::slipway::{ServiceCreated, sources};
use slipway_events::{CloudEvent, Topic};
use slipway_ids::ServiceId;
use slipway_kafka::{EventProducer, KafkaSettings, Keys};
use slipway_outbox::{EnqueueError, Relay, RelayMetrics};
use slipway_testkit::{fresh_database, kafka_settings, plain_consumer, signing, wait_until};
use sqlx::PgPool;

static NO_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate::Migrator::DEFAULT;

async fn pool() -> PgPool {
    let db = fresh_database("outbox_bounds").await;
    let pool = db.connect_and_migrate(&NO_MIGRATIONS).await.unwrap();
    slipway_outbox::migrate(&pool).await.unwrap();
    slipway_outbox::migrate(&pool).await.unwrap(); // idempotent, the new tables too
    pool
}

/// A `ServiceCreated` whose name pads it to about `bytes`.
fn event(name: &str, key: ServiceId, bytes: usize) -> CloudEvent {
    let data = ServiceCreated {
        service_id: key,
        name: format!("{name}{}", "x".repeat(bytes.saturating_sub(name.len()))),
        project: Default::default(),
        repository: None,
        branch: "main".into(),
        created_at: chrono::Utc::now(),
    };
    CloudEvent::new(sources::REGISTRY, key, Some(name.into()), &data).unwrap()
}

fn producer(settings: &KafkaSettings) -> EventProducer {
    let keys = Keys::from_settings(&signing::settings("registry"), "registry").unwrap();
    EventProducer::new(settings, keys.signer).unwrap()
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

async fn enqueue(pool: &PgPool, e: &CloudEvent) {
    let mut tx = pool.begin().await.unwrap();
    slipway_outbox::enqueue(&mut tx, Topic::Services, e)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

/// The `ce_subject`s of the next `n` records of `consumer`.
async fn subjects(consumer: &StreamConsumer, n: usize) -> Vec<String> {
    let mut seen = Vec::new();
    while seen.len() < n {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("a record")
            .unwrap()
            .detach();
        seen.push(slipway_testkit::header(&m, "ce_subject").unwrap());
        assert!(m.payload().is_some());
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_over_the_broker_limit_is_refused_at_enqueue() {
    let pool = pool().await;
    let key = ServiceId::new();
    let big = event("big", key, 2 * 1024 * 1024);
    assert!(slipway_outbox::event_size(&big) > slipway_outbox::max_event_bytes());

    let mut tx = pool.begin().await.unwrap();
    match slipway_outbox::try_enqueue(&mut tx, Topic::Services, &big).await {
        Err(EnqueueError::TooLarge {
            event_id,
            size,
            limit,
            ..
        }) => {
            assert_eq!(event_id, big.id);
            assert!(size > limit);
            assert_eq!(
                limit,
                slipway_kafka::settings::KAFKA_DEFAULT_MESSAGE_MAX_BYTES
                    - slipway_outbox::HEADER_ROOM
            );
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // `enqueue` (sqlx::Error, for callers using `?`) keeps the typed refusal inside.
    let as_sqlx = slipway_outbox::enqueue(&mut tx, Topic::Services, &big)
        .await
        .unwrap_err();
    assert!(matches!(
        EnqueueError::too_large(&as_sqlx),
        Some(EnqueueError::TooLarge { size, .. }) if *size > 2 * 1024 * 1024
    ));
    let small =
        slipway_outbox::enqueue_bounded(&mut tx, Topic::Services, &event("small", key, 100), 50)
            .await;
    assert!(matches!(
        small,
        Err(EnqueueError::TooLarge { limit: 50, .. })
    ));
    // An event that fits is written, in the same transaction.
    slipway_outbox::enqueue(&mut tx, Topic::Services, &event("fits", key, 900 * 1024))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(count(&pool, "SELECT count(*) FROM outbox").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_the_broker_refuses_is_dead_lettered_and_its_key_goes_on() {
    let pool = pool().await;
    let mut settings = kafka_settings();
    slipway_kafka::admin::ensure_topics(&settings)
        .await
        .unwrap();
    // A broker limit below what the outbox lets through: the row reaches the relay, as it
    // would after the brokers' limit was lowered.
    settings.message_max_bytes = 20_000;
    let registry = prometheus::Registry::new();
    let metrics = RelayMetrics::register(&registry).unwrap();
    let relay = Relay::new(pool.clone(), producer(&settings), metrics.clone()).dead_after(2);
    let (one, two) = (ServiceId::new(), ServiceId::new());
    for e in [
        event("one-a", one, 100),
        event("one-big", one, 50_000),
        event("one-b", one, 100),
        event("two-a", two, 100),
    ] {
        enqueue(&pool, &e).await;
    }
    // A topic no release of slipway knows (written by hand: enqueue takes only known topics).
    sqlx::query(
        "INSERT INTO outbox (event_id, topic, event_key, event_type, source, time, data) \
         VALUES (gen_random_uuid(), 'slipway.nowhere', $1, 'x', '/x', now(), '{}')",
    )
    .bind(two)
    .execute(&pool)
    .await
    .unwrap();

    // First pass: the big row fails, so only the rest of its key waits; the other key's first
    // row goes out, its bad-topic row fails and holds that key.
    let first = relay.pass().await;
    assert!(first.is_err(), "{first:?}");
    assert!(first.unwrap_err().is_permanent());
    let pending: Vec<String> = sqlx::query_scalar(
        "SELECT coalesce(subject, topic) FROM outbox WHERE published_at IS NULL ORDER BY seq",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(pending, ["one-big", "one-b", "slipway.nowhere"]);
    assert_eq!(metrics.dead_lettered(), 0);

    // Second pass: both reach `dead_after`, move to outbox_dead, and their keys continue.
    assert_eq!(relay.pass().await.unwrap(), 1);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM outbox WHERE published_at IS NULL"
        )
        .await,
        0
    );
    assert_eq!(metrics.dead_lettered(), 2);
    let rendered = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    assert!(
        rendered.contains("outbox_dead_lettered_total 2"),
        "{rendered}"
    );
    let dead = slipway_outbox::dead::dead_letters(&pool, 10).await.unwrap();
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0].event_key, one);
    assert_eq!(dead[0].attempts, 2);
    assert!(
        dead[0].reason.to_lowercase().contains("size") || dead[0].reason.contains("large"),
        "{}",
        dead[0].reason
    );
    assert!(
        dead[1].reason.contains("unknown topic"),
        "{}",
        dead[1].reason
    );

    let consumer = plain_consumer(
        &settings.bootstrap_servers,
        &[&settings.topics().name(Topic::Services)],
    );
    let mut seen = subjects(&consumer, 3).await;
    let one_order: Vec<&String> = seen.iter().filter(|s| s.starts_with("one")).collect();
    assert_eq!(one_order, ["one-a", "one-b"], "the key keeps its order");
    seen.sort();
    assert_eq!(seen, ["one-a", "one-b", "two-a"]);

    // An admin requeues one after raising the limit: it is published (after its key's later
    // rows: its original place is gone) with its original id.
    let big_id = dead[0].event_id;
    assert!(
        !slipway_outbox::dead::requeue_dead(&pool, slipway_ids::EventId::new())
            .await
            .unwrap()
    );
    assert!(
        slipway_outbox::dead::requeue_dead(&pool, big_id)
            .await
            .unwrap()
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM outbox_dead").await,
        1,
        "the other stays dead"
    );
    settings.message_max_bytes = slipway_kafka::settings::KAFKA_DEFAULT_MESSAGE_MAX_BYTES;
    let relay = Relay::new(pool.clone(), producer(&settings), metrics.clone());
    assert_eq!(relay.pass().await.unwrap(), 1);
    assert_eq!(subjects(&consumer, 1).await, ["one-big"]);
}

/// A Tansu broker of this test's own, on a free port, so it can be frozen.
struct Broker {
    child: Child,
    address: String,
    _dir: tempdir::Dir,
}

mod tempdir {
    /// A directory removed on drop (Tansu reads a `.env` from its working directory).
    pub struct Dir(pub std::path::PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Broker {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("outbox-tansu-{}", slipway_testkit::unique()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("tcp://127.0.0.1:{port}");
        let bin = std::env::var("TANSU_BIN").unwrap_or_else(|_| "tansu".into());
        let child = Command::new(bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .current_dir(&dir)
            .env_remove("SCHEMA_REGISTRY")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu on PATH (scripts/test installs it)");
        Self {
            child,
            address: format!("127.0.0.1:{port}"),
            _dir: tempdir::Dir(dir),
        }
    }

    async fn ready(&self) -> bool {
        wait_until(Duration::from_secs(30), || async {
            tokio::net::TcpStream::connect(&self.address).await.is_ok()
        })
        .await
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.signal("-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_waits_out_a_broker_outage_and_resumes_by_itself() {
    let broker = Broker::start();
    assert!(broker.ready().await, "tansu listens");
    let pool = pool().await;
    let mut settings = kafka_settings();
    settings.bootstrap_servers = broker.address.clone();
    settings.message_timeout_ms = 1500;
    slipway_kafka::admin::ensure_topics(&settings)
        .await
        .unwrap();
    let metrics = RelayMetrics::register(&prometheus::Registry::new()).unwrap();
    let relay = Relay::new(pool.clone(), producer(&settings), metrics.clone()).dead_after(1);
    let cancel = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(relay.run(cancel.clone()));
    let pending = || async {
        count(
            &pool,
            "SELECT count(*) FROM outbox WHERE published_at IS NULL",
        )
        .await
    };
    let key = ServiceId::new();
    enqueue(&pool, &event("before", key, 100)).await;
    assert!(wait_until(Duration::from_secs(30), || async { pending().await == 0 }).await);

    // Frozen broker: sends time out, again and again, and nothing is given up on even though
    // a single permanent failure would dead-letter (`dead_after(1)`).
    broker.signal("-STOP");
    let errors = metrics.errors();
    enqueue(&pool, &event("during-1", key, 100)).await;
    enqueue(&pool, &event("during-2", key, 100)).await;
    assert!(
        wait_until(Duration::from_secs(30), || async {
            metrics.errors() >= errors + 3
        })
        .await,
        "the relay keeps retrying"
    );
    assert_eq!(pending().await, 2);
    assert_eq!(count(&pool, "SELECT count(*) FROM outbox_dead").await, 0);
    assert_eq!(metrics.dead_lettered(), 0);

    broker.signal("-CONT");
    assert!(
        wait_until(Duration::from_secs(60), || async { pending().await == 0 }).await,
        "the relay resumed by itself"
    );
    let consumer = plain_consumer(
        &settings.bootstrap_servers,
        &[&settings.topics().name(Topic::Services)],
    );
    // At least once: a send that timed out may have reached the broker before it froze, so a
    // record may come twice, but in order.
    let mut seen = Vec::new();
    while !seen.iter().any(|s| s == "during-2") {
        seen.extend(subjects(&consumer, 1).await);
    }
    seen.dedup();
    assert_eq!(seen, ["before", "during-1", "during-2"]);
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
