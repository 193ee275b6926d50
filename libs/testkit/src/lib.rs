//! Test support for integration tests against the real PostgreSQL and Kafka-protocol broker
//! that `scripts/test` starts. Nothing here mocks them.
//!
//! - `SLIPWAY_TEST_DATABASE_URL` (e.g. `postgres://postgres:PASSWORD@127.0.0.1:5433/postgres`,
//!   a superuser): each test gets a fresh database created from it ([`fresh_database`]), and
//!   may give each service its own role in it ([`roles::service_roles`]).
//! - `SLIPWAY_TEST_KAFKA` (`host:port`): each test gets its own topic prefix
//!   ([`kafka_settings`]), so tests share the broker without seeing each other's events.
//!
//! - `SLIPWAY_TEST_OCI_REGISTRY` (`host:port`): the image registry builds push to; tests use
//!   their own repository prefix.
//!
//! Services under test get an `[identity]` from [`identity`]: their clients present the
//! credential of the service that calls them in production ([`identity::client`]).
//!
//! A test run without them fails with a message naming `scripts/test`, rather than skipping:
//! a skipped integration test would look like a passing one.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test support: a panic is the failure report

pub mod git;
pub mod identity;
pub mod oci;
pub mod roles;
pub mod signing;

use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use secrecy::SecretString;
use slipway_kafka::KafkaSettings;
use slipway_settings::DatabaseSettings;
use sqlx::ConnectOptions;
use sqlx::postgres::PgConnectOptions;

fn required(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the tests with scripts/test, which starts PostgreSQL and the broker")
    })
}

/// A short unique suffix for names (databases, topic prefixes, groups).
pub fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// Creates an empty database and returns settings for it with schema `schema`.
pub async fn fresh_database(schema: &str) -> DatabaseSettings {
    let url = required("SLIPWAY_TEST_DATABASE_URL");
    let admin: PgConnectOptions = url.parse().expect("SLIPWAY_TEST_DATABASE_URL is not a URL");
    let name = format!("test_{}", unique());
    let mut conn = admin
        .connect()
        .await
        .expect("connect to the test PostgreSQL");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut conn)
        .await
        .expect("create test database");
    DatabaseSettings {
        host: admin.get_host().to_owned(),
        port: admin.get_port(),
        username: admin.get_username().to_owned(),
        password: SecretString::from(url_password(&url)),
        database: name,
        schema: schema.to_owned(),
        max_connections: 5,
    }
}

pub use slipway_settings::DatabaseSettings as Database;

/// The password of `db`, to hand a child process (`SLIPWAY_DATABASE__PASSWORD`).
pub fn password(db: &DatabaseSettings) -> &str {
    secrecy::ExposeSecret::expose_secret(&db.password)
}

/// The password part of a database URL, percent-decoded (empty when there is none).
/// `PgConnectOptions` parses it too but does not give it back.
fn url_password(url: &str) -> String {
    let parsed = url::Url::parse(url).expect("SLIPWAY_TEST_DATABASE_URL is not a URL");
    let password = parsed.password().unwrap_or_default();
    percent_encoding::percent_decode_str(password)
        .decode_utf8()
        .expect("the password in SLIPWAY_TEST_DATABASE_URL is not UTF-8")
        .into_owned()
}

/// The OCI registry `scripts/test` starts (`host:port`, plain HTTP).
pub fn oci_registry() -> String {
    required("SLIPWAY_TEST_OCI_REGISTRY")
}

/// Broker settings with a topic prefix of their own.
pub fn kafka_settings() -> KafkaSettings {
    let mut settings = KafkaSettings::new(required("SLIPWAY_TEST_KAFKA"));
    settings.topic_prefix = format!("t{}.", unique());
    settings.partitions = 2;
    settings.retry_backoff_ms = 20;
    settings
}

/// A plain consumer (no slipway code) reading `topics` from the beginning in a new group.
pub fn plain_consumer(bootstrap: &str, topics: &[&str]) -> StreamConsumer {
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("plain-{}", unique()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("create plain consumer");
    consumer.subscribe(topics).expect("subscribe");
    consumer
}

/// Polls `condition` every 50 ms until it holds or `timeout` passes; returns whether it held.
pub async fn wait_until<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The service whose schema is `schema` (every service's schema is its name).
fn service_of(schema: &str) -> identity::ServiceCaller {
    schema.parse().unwrap_or_else(|_| {
        panic!("`{schema}` is not a service name; a service's schema is its name")
    })
}

/// Settings for a service under test: port 0, a fresh database with `schema`, own topics,
/// the identity and the signing key of the service `schema` names ([`signing`]).
pub async fn base_settings(schema: &str) -> slipway_runtime::BaseSettings {
    slipway_runtime::BaseSettings {
        identity: identity::settings(service_of(schema)),
        http: slipway_settings::HttpSettings {
            host: "127.0.0.1".into(),
            port: 0,
        },
        database: fresh_database(schema).await,
        kafka: kafka_settings(),
        telemetry: slipway_telemetry::TelemetrySettings {
            log_level: "warn".into(),
            log_format: "json".into(),
            otlp_endpoint: None,
        },
        signing: signing::settings(schema),
    }
}

/// The same database and broker as `base`, for another service (its own schema and key).
pub fn sibling(
    base: &slipway_runtime::BaseSettings,
    schema: &str,
) -> slipway_runtime::BaseSettings {
    let mut other = base.clone();
    other.database.schema = schema.to_owned();
    other.identity = identity::settings(service_of(schema));
    other.signing = signing::settings(schema);
    other
}

/// Reads the next record of `consumer` whose `ce_type` header is `ty`, within `timeout`.
pub async fn next_of_type(
    consumer: &StreamConsumer,
    ty: &str,
    timeout: Duration,
) -> Option<rdkafka::message::OwnedMessage> {
    use rdkafka::Message;
    use rdkafka::message::Headers;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let m = tokio::time::timeout(left, consumer.recv())
            .await
            .ok()?
            .ok()?;
        let matches = m
            .headers()
            .map(|h| {
                h.iter()
                    .any(|h| h.key == "ce_type" && h.value == Some(ty.as_bytes()))
            })
            .unwrap_or(false);
        if matches {
            return Some(m.detach());
        }
    }
}

/// The value of header `name` of a record, as text.
pub fn header(message: &rdkafka::message::OwnedMessage, name: &str) -> Option<String> {
    use rdkafka::Message;
    use rdkafka::message::Headers;
    message
        .headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// A fresh secrets key (base64 of 32 random bytes), as `openssl rand -base64 32` makes.
pub fn secrets_key() -> String {
    use base64::Engine;
    let mut bytes = uuid::Uuid::new_v4().as_bytes().to_vec();
    bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
