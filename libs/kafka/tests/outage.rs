//! Outages through the real parts: a PostgreSQL the handler cannot reach for a while (a TCP
//! proxy in front of the test database, cut and restored), and a broker hang (a Tansu child
//! process of this test, stopped with SIGSTOP for longer than every client timeout, then
//! continued). Events are applied once afterwards, never dead-lettered, and consumers and the
//! producer resume by themselves. Before the consumer watchdog, the hang test failed the way
//! the builder did: the member sat outside its group (librdkafka join state
//! `wait-unassign-to-complete`) and consumed nothing, with no error and no end.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::anyhow;
use futures::FutureExt;
use slipway_events::slipway::{ServiceCreated, sources};
use slipway_events::{CloudEvent, Topic};
use slipway_ids::ServiceId;
use slipway_kafka::consumer::ConsumerMetrics;
use slipway_kafka::{
    ConsumerRunner, ConsumerStatus, Handled, Handler, HandlerError, KafkaSettings,
};
use slipway_testkit::{kafka_settings, plain_consumer, unique, wait_until};
use tokio::net::{TcpListener, TcpStream};
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

fn spawn(
    settings: &KafkaSettings,
    group: &str,
    handler: impl Handler,
    registry: &prometheus::Registry,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<()>,
    ConsumerStatus,
) {
    let producer = slipway_testkit::signing::producer(settings);
    let runner = ConsumerRunner::new(
        settings.clone(),
        group,
        &[Topic::Services],
        handler,
        producer,
        ConsumerMetrics::register(registry).unwrap(),
        slipway_testkit::signing::verifier(),
    );
    let status = runner.status();
    let cancel = CancellationToken::new();
    let token = cancel.clone();
    let task = tokio::spawn(async move { runner.run(token).await.unwrap() });
    (cancel, task, status)
}

fn metric(registry: &prometheus::Registry, name: &str) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .map(|m| m.get_counter().get_value() + m.get_gauge().get_value())
        .sum()
}

// --- the database outage ------------------------------------------------------------------

/// A TCP proxy in front of PostgreSQL that can be cut: while down it closes every connection,
/// open or new, as a database that went away does.
struct Proxy {
    port: u16,
    down: Arc<AtomicBool>,
    live: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = Arc::new(AtomicBool::new(false));
        let live: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (d, l) = (down.clone(), live.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if d.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let upstream = upstream.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                l.lock().unwrap().push(task.abort_handle());
            }
        });
        Self { port, down, live }
    }

    fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        for task in self.live.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

/// Applies each event once (inbox) into `applied`, through the proxied pool.
struct Applier {
    pool: sqlx::PgPool,
    attempts: Arc<AtomicU32>,
}

impl Handler for Applier {
    async fn handle(&self, event: &CloudEvent) -> Result<Handled, HandlerError> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        let subject = event.subject.clone().unwrap_or_default();
        slipway_outbox::inbox::apply_once(&self.pool, "test.applier", event, move |tx| {
            async move {
                sqlx::query("INSERT INTO applied (subject) VALUES ($1)")
                    .bind(subject)
                    .execute(tx)
                    .await
                    .map(|_| ())
            }
            .boxed()
        })
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_waited_out_and_the_event_applied_once_after() {
    let db = slipway_testkit::fresh_database("public").await;
    let direct = sqlx::PgPool::connect_with(db.connect_options())
        .await
        .unwrap();
    slipway_outbox::migrate(&direct).await.unwrap();
    sqlx::query("CREATE TABLE applied (subject TEXT NOT NULL)")
        .execute(&direct)
        .await
        .unwrap();
    let proxy = Proxy::start(format!("{}:{}", db.host, db.port)).await;
    let proxied = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(1))
        .connect_with(db.connect_options().host("127.0.0.1").port(proxy.port))
        .await
        .unwrap();

    let mut settings = kafka_settings();
    settings.retry_max_backoff_ms = 500;
    slipway_kafka::admin::ensure_topics(&settings)
        .await
        .unwrap();
    let producer = slipway_testkit::signing::producer(&settings);
    let attempts = Arc::new(AtomicU32::new(0));
    let registry = prometheus::Registry::new();
    let group = format!("outage-{}", unique());
    let handler = Applier {
        pool: proxied,
        attempts: attempts.clone(),
    };
    let (cancel, task, status) = spawn(&settings, &group, handler, &registry);

    producer
        .publish(Topic::Services, &event("before"))
        .await
        .unwrap();
    let count = |subject: &'static str| {
        let direct = direct.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM applied WHERE subject = $1")
                .bind(subject)
                .fetch_one(&direct)
                .await
                .unwrap()
        }
    };
    assert!(
        wait_until(Duration::from_secs(60), || async {
            count("before").await == 1
        })
        .await
    );

    // The database goes away; an event arrives meanwhile.
    proxy.cut();
    producer
        .publish(Topic::Services, &event("during"))
        .await
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || async {
            metric(&registry, "consumer_retries_total") >= 3.0 && status.check().is_err()
        })
        .await,
        "the handler was retried: {} attempts, {:?}",
        attempts.load(Ordering::SeqCst),
        status.check()
    );
    let reason = status.check().unwrap_err();
    assert!(
        reason.starts_with(&format!(
            "consumer group {group}: waiting out a database outage since "
        )),
        "{reason}"
    );
    assert_eq!(metric(&registry, "consumer_waiting_partitions"), 1.0);

    // It comes back: the event is applied once, the consumer is ready again.
    proxy.restore();
    assert!(
        wait_until(Duration::from_secs(30), || async {
            count("during").await == 1
        })
        .await,
        "applied after the outage"
    );
    assert!(wait_until(Duration::from_secs(5), || async { status.check().is_ok() }).await);
    assert_eq!(metric(&registry, "consumer_waiting_partitions"), 0.0);

    // Not dead-lettered, and not applied twice.
    let dlq = plain_consumer(
        &settings.bootstrap_servers,
        &[&settings.topics().name(Topic::DeadLetter)],
    );
    assert!(
        tokio::time::timeout(Duration::from_secs(3), dlq.recv())
            .await
            .is_err(),
        "nothing was dead-lettered"
    );
    assert_eq!(count("during").await, 1);
    cancel.cancel();
    task.await.unwrap();
}

// --- the broker hang ----------------------------------------------------------------------

/// A Tansu broker of this test alone (it is stopped and continued), on a free port.
struct Tansu {
    child: std::process::Child,
    port: u16,
    dir: PathBuf,
}

impl Tansu {
    fn start() -> Self {
        // `scripts/test` exports TANSU_BIN (the binary it installed or found on PATH).
        let bin = std::env::var("TANSU_BIN").unwrap_or_else(|_| "tansu".to_owned());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("slipway-tansu-{}", unique()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::fs::File::create(dir.join("tansu.log")).unwrap();
        let url = format!("tcp://127.0.0.1:{port}");
        // As scripts/lib.sh starts it: its own directory (it reads a .env there), no schema
        // registry, both listener and advertised URL set.
        let child = std::process::Command::new(&bin)
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
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin} (set TANSU_BIN): {e}"));
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "tansu did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port, dir }
    }

    fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        // SIGKILL works on a stopped process too.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Records the subjects it applies.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<String>>>);

impl Handler for Seen {
    async fn handle(&self, event: &CloudEvent) -> Result<Handled, HandlerError> {
        let subject = event
            .subject
            .clone()
            .ok_or_else(|| HandlerError::Permanent(anyhow!("no subject")))?;
        self.0.lock().unwrap().push(subject);
        Ok(Handled::Applied)
    }
}

impl Seen {
    fn has(&self, subject: &str) -> bool {
        self.0.lock().unwrap().iter().any(|s| s == subject)
    }
}

/// How long the broker hangs: past the consumer's session timeout (10 s) and librdkafka's
/// request timeout (`socket.timeout.ms`, 60 s), like the 90 s hang that left the builder deaf.
/// `SLIPWAY_TEST_HANG_SECONDS` changes it.
fn hang() -> Duration {
    let seconds = std::env::var("SLIPWAY_TEST_HANG_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(75);
    Duration::from_secs(seconds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_and_the_producer_come_back_after_a_broker_hang() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let tansu = Tansu::start();
    let mut settings = KafkaSettings::new(format!("127.0.0.1:{}", tansu.port));
    settings.topic_prefix = format!("t{}.", unique());
    settings.partitions = 2;
    settings.retry_backoff_ms = 20;
    settings.retry_max_backoff_ms = 1000;
    // Static membership, as services run by default.
    settings.instance_id = "hang-test".into();
    slipway_kafka::admin::ensure_topics(&settings)
        .await
        .unwrap();
    let producer = slipway_testkit::signing::producer(&settings);
    let seen = Seen::default();
    let registry = prometheus::Registry::new();
    let (cancel, task, status) = spawn(&settings, "hang", seen.clone(), &registry);

    producer
        .publish(Topic::Services, &event("before"))
        .await
        .unwrap();
    assert!(wait_until(Duration::from_secs(60), || async { seen.has("before") }).await);

    tansu.signal("-STOP");
    // The outage itself, not a wait for readiness.
    tokio::time::sleep(hang()).await;
    tansu.signal("-CONT");
    let back = std::time::Instant::now();

    // The producer made before the hang publishes again...
    tokio::time::timeout(
        Duration::from_secs(60),
        producer.publish(Topic::Services, &event("after")),
    )
    .await
    .expect("the producer publishes within a minute of the broker's return")
    .unwrap();
    // ...and the consumer group member made before it consumes again, within seconds.
    assert!(
        wait_until(Duration::from_secs(45), || async { seen.has("after") }).await,
        "not consumed {:?} after the broker came back; status {:?}, restarts {}",
        back.elapsed(),
        status.check(),
        metric(&registry, "consumer_restarts_total"),
    );
    println!(
        "consumed {:?} after the broker came back; consumer restarts: {}",
        back.elapsed(),
        metric(&registry, "consumer_restarts_total")
    );
    cancel.cancel();
    task.await.unwrap();
}
