//! The start-up every slipway service shares, so each service's own code is its domain only.
//!
//! [`Runtime::build`] binds the HTTP listener (port 0 in tests), connects to PostgreSQL in the
//! service's schema and applies the outbox/inbox tables and the service's migrations, creates
//! the idempotent producer and the topics, and prepares `/healthz`, `/readyz` (database and
//! broker, and each consumer: 503 with the reason while one waits out an outage) and `/metrics`.
//! The service then adds what it needs ([`Runtime::relay_outbox`], [`Runtime::consume`],
//! [`Runtime::consume_dead_letters`]) and calls [`Runtime::start`] with its routes and who may call them
//! ([`Access`]: the calling service's credential and the service's rule table, see
//! [`identity`]).

pub mod catalog;
pub mod identity;

use std::net::{TcpListener, ToSocketAddrs};
use std::time::Duration;

use actix_web::{App, HttpServer, middleware, web};
use serde::Deserialize;
use slipway_events::Topic;
use slipway_http::{Lifecycle, Metrics, Readiness, ReadinessCheck, ops, problem};
pub use slipway_identity::{AccessRules, Credential, IdentitySettings, Rule, ServiceCaller};
use slipway_kafka::consumer::ConsumerMetrics;
use slipway_kafka::dead_letter::{DeadLetterRunner, DeadLetterSink};
use slipway_kafka::signing::{Keys, SigningError, SigningSettings, Verifier};
use slipway_kafka::{ConsumerRunner, ConsumerStatus, EventProducer, Handler, KafkaSettings};
use slipway_outbox::{Relay, RelayMetrics};
use slipway_settings::{DatabaseSettings, HttpSettings};
use slipway_telemetry::TelemetrySettings;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use tokio_util::sync::CancellationToken;

pub use identity::Access;

/// The settings every service has (sections `[http]`, `[database]`, `[kafka]`, `[telemetry]`,
/// `[identity]`, `[signing]`).
#[derive(Debug, Clone, Deserialize)]
pub struct BaseSettings {
    pub http: HttpSettings,
    pub database: DatabaseSettings,
    pub kafka: KafkaSettings,
    pub telemetry: TelemetrySettings,
    /// This service's credential and the services allowed to call it (parsed on load: an
    /// empty credential or a malformed hash stops the process before anything is bound).
    pub identity: IdentitySettings,
    /// Absent section: no key, which start-up refuses with the variable to set.
    #[serde(default)]
    pub signing: SigningSettings,
}

/// Why a service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Signing(#[from] SigningError),
    #[error(transparent)]
    Kafka(#[from] slipway_kafka::settings::KafkaSettingsError),
    #[error("cannot bind {address}: {source}")]
    Bind {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Database(#[from] slipway_settings::DatabaseError),
    #[error("cannot create the outbox tables: {0}")]
    Outbox(#[source] sqlx::Error),
    #[error(transparent)]
    Producer(#[from] slipway_kafka::PublishError),
    #[error(transparent)]
    Topics(#[from] slipway_kafka::admin::AdminError),
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] slipway_http::metrics::MetricsError),
    #[error("cannot start the HTTP server: {0}")]
    Serve(#[source] std::io::Error),
}

/// A service being assembled.
pub struct Runtime {
    /// The service's name, e.g. `registry` (metrics label, consumer group suffix).
    pub name: &'static str,
    pub pool: PgPool,
    pub producer: EventProducer,
    pub metrics: Metrics,
    pub kafka: KafkaSettings,
    /// Fired at shutdown; every background task watches it.
    pub cancel: CancellationToken,
    identity: IdentitySettings,
    listener: TcpListener,
    readiness: Readiness,
    consumer_metrics: ConsumerMetrics,
    verifier: Verifier,
    tasks: Vec<(&'static str, BoxedTask)>,
}

type BoxedTask = std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// A started service.
pub struct Running {
    port: u16,
    lifecycle: Lifecycle,
}

impl Running {
    /// The port the HTTP API listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until SIGINT/SIGTERM, then drains.
    pub async fn run_until_stopped(self) -> Result<(), String> {
        self.lifecycle
            .run_until(slipway_http::shutdown_signal())
            .await
    }

    /// Serves until `shutdown` resolves (tests), then drains.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<(), String> {
        self.lifecycle.run_until(shutdown).await
    }
}

impl Runtime {
    /// Binds, connects and migrates; see the crate docs.
    pub async fn build(
        name: &'static str,
        base: &BaseSettings,
        migrator: &Migrator,
    ) -> Result<Self, StartError> {
        // Keys first: a service that cannot sign or verify must not even bind.
        let keys = Keys::from_settings(&base.signing, name)?;
        base.kafka.validate()?;
        // Events are refused at enqueue when the broker would refuse them as too large.
        slipway_outbox::set_max_message_bytes(base.kafka.message_max_bytes);
        let address = base.http.address();
        let listener = bind(&address).map_err(|source| StartError::Bind {
            address: address.clone(),
            source,
        })?;
        let pool = base.database.connect_and_migrate(migrator).await?;
        slipway_outbox::migrate(&pool)
            .await
            .map_err(StartError::Outbox)?;
        let producer = EventProducer::new(&base.kafka, keys.signer)?;
        slipway_kafka::admin::ensure_topics(&base.kafka).await?;

        let metrics = Metrics::new(name);
        let consumer_metrics = ConsumerMetrics::register(&metrics.registry)
            .map_err(slipway_http::metrics::MetricsError)?;
        let db = pool.clone();
        let broker = producer.clone();
        let readiness = Readiness::default()
            .with(ReadinessCheck::new("database", move || {
                let db = db.clone();
                async move {
                    sqlx::query("SELECT 1")
                        .execute(&db)
                        .await
                        .map(|_| ())
                        .map_err(|e| format!("database unreachable: {e}"))
                }
            }))
            .with(ReadinessCheck::new("kafka", move || {
                let broker = broker.clone();
                async move { broker.ping().await }
            }));
        Ok(Self {
            name,
            pool,
            producer,
            metrics,
            kafka: base.kafka.clone(),
            cancel: CancellationToken::new(),
            identity: base.identity.clone(),
            listener,
            readiness,
            consumer_metrics,
            verifier: keys.verifier,
            tasks: Vec::new(),
        })
    }

    /// Hands the public listener to a server in front of the HTTP API (the gateway's edge
    /// router) and binds the API to a loopback port of its own, which that server forwards to;
    /// answers the public listener and the API's new address.
    pub fn front_listener(&mut self) -> Result<(TcpListener, std::net::SocketAddr), StartError> {
        let inner = bind("127.0.0.1:0").map_err(|source| StartError::Bind {
            address: "127.0.0.1:0".into(),
            source,
        })?;
        let address = inner.local_addr().map_err(|source| StartError::Bind {
            address: "127.0.0.1:0".into(),
            source,
        })?;
        Ok((std::mem::replace(&mut self.listener, inner), address))
    }

    /// The port the listener is bound to.
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Runs the outbox relay of this service's schema, on a pool of its own
    /// ([`RELAY_CONNECTIONS`]): with the main pool taken by a burst of work, events would stop
    /// flowing exactly when most are written.
    pub fn relay_outbox(&mut self) -> Result<(), StartError> {
        let metrics = RelayMetrics::register(&self.metrics.registry)
            .map_err(slipway_http::metrics::MetricsError)?;
        let pool = slipway_settings::side_pool(&self.pool, RELAY_CONNECTIONS);
        let relay = Relay::new(pool, self.producer.clone(), metrics);
        let cancel = self.cancel.clone();
        self.tasks.push((
            "outbox relay",
            Box::pin(async move { relay.run(cancel).await.map_err(|e| e.to_string()) }),
        ));
        Ok(())
    }

    /// Consumes `topics` in group `<topic prefix>slipway-<service>-<purpose>` with `handler`.
    /// The topic prefix namespaces groups too, so installations (and test runs) sharing a
    /// broker never share a group. While the consumer waits out an outage, `/readyz` answers
    /// 503 with why (check `consumer <group>`).
    pub fn consume<H: Handler>(&mut self, purpose: &str, topics: &[Topic], handler: H) {
        let group = self.group(purpose);
        let runner = ConsumerRunner::new(
            self.kafka.clone(),
            group,
            topics,
            handler,
            self.producer.clone(),
            self.consumer_metrics.clone(),
            self.verifier.clone(),
        );
        self.watch(runner.status());
        let cancel = self.cancel.clone();
        self.tasks.push((
            "consumer",
            Box::pin(async move { runner.run(cancel).await.map_err(|e| e.to_string()) }),
        ));
    }

    /// Consumes the dead-letter topic into `sink`, in group
    /// `<topic prefix>slipway-<service>-dead-letters` (the gateway keeps them for its admin API).
    pub fn consume_dead_letters<S: DeadLetterSink>(&mut self, sink: S) {
        let runner = DeadLetterRunner::new(
            self.kafka.clone(),
            self.group("dead-letters"),
            sink,
            self.consumer_metrics.clone(),
        );
        self.watch(runner.status());
        let cancel = self.cancel.clone();
        self.tasks.push((
            "dead-letter consumer",
            Box::pin(async move { runner.run(cancel).await.map_err(|e| e.to_string()) }),
        ));
    }

    fn group(&self, purpose: &str) -> String {
        format!("{}slipway-{}-{purpose}", self.kafka.topic_prefix, self.name)
    }

    /// Adds a consumer's state to `/readyz`.
    fn watch(&mut self, status: ConsumerStatus) {
        let name = format!("consumer {}", status.group());
        let check = ReadinessCheck::new(name, move || {
            let status = status.clone();
            async move { status.check() }
        });
        self.readiness = std::mem::take(&mut self.readiness).with(check);
    }

    /// Runs a service-specific background task; it must return when `self.cancel` fires.
    pub fn spawn<F, E>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        self.tasks.push((
            name,
            Box::pin(async move { task.await.map_err(|e| e.to_string()) }),
        ));
    }

    /// Starts the HTTP server with the ops endpoints plus `routes`, callable as `access` says,
    /// and the background tasks.
    pub fn start<F>(self, access: Access, routes: F) -> Result<Running, StartError>
    where
        F: Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
    {
        let port = self.port();
        let metrics = web::Data::new(self.metrics.clone());
        let readiness = web::Data::new(self.readiness.clone());
        let guard = match access {
            Access::Services(rules) => {
                if self.identity.callers.is_empty() {
                    tracing::warn!(
                        "`identity.callers` is empty: every call but the ops endpoints will be refused"
                    );
                }
                Some(web::Data::new(identity::Guard {
                    callers: self.identity.callers.clone(),
                    rules,
                }))
            }
            Access::Public => None,
        };
        let server = HttpServer::new(move || {
            let mut app = App::new();
            if let Some(guard) = &guard {
                app = app.app_data(guard.clone());
            }
            // Innermost: refusals are still counted and traced by the two outer ones.
            app.wrap(middleware::Condition::new(
                guard.is_some(),
                middleware::from_fn(identity::guard),
            ))
            .wrap(middleware::from_fn(slipway_http::metrics::record))
            .wrap(middleware::from_fn(slipway_http::trace::trace_request))
            .app_data(metrics.clone())
            .app_data(readiness.clone())
            .configure(problem::configure(256 * 1024))
            .configure(ops::routes)
            .configure(routes.clone())
            .default_service(web::to(problem::not_found))
        })
        .listen(self.listener)
        .map_err(StartError::Serve)?
        .shutdown_timeout(10)
        .run();
        let mut lifecycle = Lifecycle::new(server, self.cancel.clone(), Duration::from_secs(15));
        for (name, task) in self.tasks {
            lifecycle.spawn(name, task);
        }
        let producer = self.producer;
        let cancel = self.cancel;
        lifecycle.spawn("producer flush", async move {
            cancel.cancelled().await;
            // Whatever the relay handed over must reach the broker before exit.
            tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5)))
                .await
                .map_err(|e| e.to_string())
        });
        tracing::info!(port, "listening");
        Ok(Running { port, lifecycle })
    }
}

/// Connections the kernel queues for a listener before they are accepted (capped by
/// `net.core.somaxconn`). std's `TcpListener::bind` listens with 128: a burst of a thousand
/// clients (or the edge router opening as many connections to the API behind it) overflowed
/// that, the dropped SYNs were resent a second later, and the edge's 1 s connect timeout
/// answered 502. nginx listens with 511, tokio with 1024.
const LISTEN_BACKLOG: i32 = 4096;

/// Connections of the outbox relay's own pool: one holds the pass's transaction, one is spare
/// (its notification listener has a connection of its own besides).
pub const RELAY_CONNECTIONS: u32 = 2;

/// Binds `address` (`host:port`, the first address it resolves to) as std's `bind` does
/// (`SO_REUSEADDR` set), listening with [`LISTEN_BACKLOG`].
fn bind(address: &str) -> std::io::Result<TcpListener> {
    let addr = address.to_socket_addrs()?.next().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("`{address}` resolves to no address"),
        )
    })?;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

#[cfg(test)]
mod listen_tests {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn listeners_queue_a_burst_of_connections() {
        let listener = super::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        // The kernel caps the backlog at net.core.somaxconn (4096 on current kernels).
        let cap: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(128);
        let n = cap.min(600);
        // Nothing accepts: with std's 128, connects past it wait for a resent SYN and time out.
        let clients: Vec<_> = (0..n)
            .map(|_| {
                std::net::TcpStream::connect_timeout(
                    &address,
                    std::time::Duration::from_millis(500),
                )
            })
            .collect();
        let connected = clients.iter().filter(|c| c.is_ok()).count();
        assert_eq!(connected, n, "{connected} of {n} connected");
        assert!(super::bind("definitely not an address").is_err());
    }
}
