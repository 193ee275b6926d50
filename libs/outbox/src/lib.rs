//! The transactional outbox and inbox.
//!
//! - **Outbox:** a service writes its state change and the events announcing it in one
//!   transaction ([`enqueue`]); the [`Relay`] publishes pending rows in insertion order with the
//!   idempotent producer and marks them published after the broker acknowledged. A crash between
//!   the two republishes the row with the *same* event id, so delivery is at-least-once and
//!   consumers deduplicate by id.
//! - **Inbox:** a consumer records each event id it applies ([`inbox::record`]) in the same
//!   transaction as the effect; a redelivered event finds its id there and is skipped.
//!
//! - **Bounds:** [`enqueue`] refuses an event the broker would refuse as too large
//!   ([`EnqueueError::TooLarge`] from [`try_enqueue`], see [`set_max_message_bytes`]), so it
//!   never reaches the relay.
//!   A row the relay still cannot publish for a permanent reason (too large for a broker with a
//!   lower limit, unknown topic, unsignable) is retried a few times, then moved to
//!   `outbox_dead` ([`dead`]) with an ERROR log and `outbox_dead_lettered_total`; later rows of
//!   its key are published after it, so the dead one is *skipped* and an admin may requeue it
//!   ([`dead::requeue_dead`]). Transient failures (broker down) are retried without limit; a
//!   producer the broker fenced meanwhile (after sends timed out) is replaced by a fresh one.
//! - **Trace context:** [`enqueue`] fills `traceparent`/`tracestate` from the current span when
//!   the event has none, so one trace runs through every service a change passes.
//!
//! The tables live in the owning service's schema; [`migrate`] creates them.

pub mod dead;
pub mod inbox;
mod relay;

use std::sync::atomic::{AtomicUsize, Ordering};

pub use relay::{Relay, RelayError, RelayMetrics};
use slipway_events::{CloudEvent, Topic};
use slipway_ids::EventId;
use sqlx::PgConnection;

/// The channel `NOTIFY`'d on every enqueue, so the relay wakes without waiting for its poll.
pub const CHANNEL: &str = "slipway_outbox";

/// The DDL of the outbox and inbox tables (idempotent). Kept here, not in each service's
/// migrations, so every service gets the same tables; it runs before the service's migrations.
const DDL: &str = r#"
CREATE TABLE IF NOT EXISTS outbox (
    seq          BIGSERIAL PRIMARY KEY,
    event_id     UUID NOT NULL UNIQUE,
    topic        TEXT NOT NULL,
    event_key    UUID NOT NULL,
    event_type   TEXT NOT NULL,
    source       TEXT NOT NULL,
    subject      TEXT,
    time         TIMESTAMPTZ NOT NULL,
    traceparent  TEXT,
    tracestate   TEXT,
    data         JSONB NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at TIMESTAMPTZ
);
-- Added after the table: the project of the event's service (`ce_slipwayproject`), if known.
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS project TEXT;
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (seq) WHERE published_at IS NULL;
-- Added later: failed publish attempts for a permanent reason, and the last one's error.
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS attempts INT NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS last_error TEXT;
-- Rows the relay gave up on (a permanent failure, several times): the outbox's columns, why,
-- and when. `requeue_dead` moves one back to the outbox.
CREATE TABLE IF NOT EXISTS outbox_dead (
    seq          BIGINT PRIMARY KEY,
    event_id     UUID NOT NULL UNIQUE,
    topic        TEXT NOT NULL,
    event_key    UUID NOT NULL,
    event_type   TEXT NOT NULL,
    source       TEXT NOT NULL,
    subject      TEXT,
    time         TIMESTAMPTZ NOT NULL,
    traceparent  TEXT,
    tracestate   TEXT,
    data         JSONB NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    published_at TIMESTAMPTZ,
    project      TEXT,
    attempts     INT NOT NULL,
    last_error   TEXT,
    reason       TEXT NOT NULL,
    moved_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS inbox (
    consumer    TEXT NOT NULL,
    event_id    UUID NOT NULL,
    event_type  TEXT NOT NULL,
    applied_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
"#;

/// Creates the outbox and inbox tables in the pool's schema if they do not exist.
pub async fn migrate(pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
    // Serialise concurrent start-ups of replicas: CREATE ... IF NOT EXISTS can still race.
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.outbox'))")
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(DDL).execute(&mut *tx).await?;
    tx.commit().await
}

/// Bytes of a broker record kept free beside the event for what is added at publish time: the
/// signature header (`ce_slipwaysig`, under 200 bytes) and the record and batch framing (under
/// 100 bytes), with a wide margin.
pub const HEADER_ROOM: usize = 4096;

/// The largest event [`enqueue`] accepts: `kafka.message_max_bytes` minus [`HEADER_ROOM`].
static MAX_EVENT_BYTES: AtomicUsize =
    AtomicUsize::new(slipway_kafka::settings::KAFKA_DEFAULT_MESSAGE_MAX_BYTES - HEADER_ROOM);

/// Sets the broker's record limit (`kafka.message_max_bytes`, the same value the producer
/// gets as `message.max.bytes`) for every later [`enqueue`] in this process. Called once at
/// start-up by the service runtime; the default is Apache Kafka's default.
pub fn set_max_message_bytes(bytes: usize) {
    MAX_EVENT_BYTES.store(bytes.saturating_sub(HEADER_ROOM), Ordering::Relaxed);
}

/// The largest event [`enqueue`] accepts now, in bytes (see [`event_size`]).
pub fn max_event_bytes() -> usize {
    MAX_EVENT_BYTES.load(Ordering::Relaxed)
}

/// The bytes `event` takes in a Kafka record without its signature: key, value and headers.
pub fn event_size(event: &CloudEvent) -> usize {
    let headers: usize = event
        .headers()
        .iter()
        .map(|(name, value)| name.len() + value.len())
        .sum();
    event.key.to_string().len() + event.body().len() + headers
}

/// Why an event was not added to the outbox.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    /// The event would exceed the broker's record limit: the caller must make it smaller
    /// (truncate a log, split a batch); it would never be published.
    #[error(
        "event {event_type} {event_id} is {size} bytes, over the {limit} bytes the broker accepts"
    )]
    TooLarge {
        event_type: String,
        event_id: EventId,
        size: usize,
        limit: usize,
    },
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

impl EnqueueError {
    /// The size refusal inside a `sqlx::Error` returned by [`enqueue`], if that is what it is.
    pub fn too_large(error: &sqlx::Error) -> Option<&EnqueueError> {
        match error {
            sqlx::Error::Encode(source) => source
                .downcast_ref::<EnqueueError>()
                .filter(|e| matches!(e, EnqueueError::TooLarge { .. })),
            _ => None,
        }
    }
}

/// Lets callers whose errors are `sqlx::Error` keep using `?`: a too-large event becomes an
/// `Encode` error whose source is the [`EnqueueError`] ([`EnqueueError::too_large`]).
impl From<EnqueueError> for sqlx::Error {
    fn from(e: EnqueueError) -> Self {
        match e {
            EnqueueError::Database(e) => e,
            too_large => sqlx::Error::Encode(Box::new(too_large)),
        }
    }
}

/// Adds `event` to the outbox inside the caller's transaction. It is published only if that
/// transaction commits. An event without trace context gets the current span's, so consumers
/// continue this trace.
///
/// An event over [`max_event_bytes`] is refused and nothing is written: the error is then
/// `sqlx::Error::Encode` holding an [`EnqueueError::TooLarge`] ([`EnqueueError::too_large`]
/// finds it). Callers that want to handle that case use [`try_enqueue`].
pub async fn enqueue(
    conn: &mut PgConnection,
    topic: Topic,
    event: &CloudEvent,
) -> Result<(), sqlx::Error> {
    try_enqueue(conn, topic, event).await.map_err(Into::into)
}

/// [`enqueue`] with the typed error: [`EnqueueError::TooLarge`] for an event the broker would
/// refuse (make it smaller: truncate a log, split a batch), [`EnqueueError::Database`] else.
pub async fn try_enqueue(
    conn: &mut PgConnection,
    topic: Topic,
    event: &CloudEvent,
) -> Result<(), EnqueueError> {
    enqueue_bounded(conn, topic, event, max_event_bytes()).await
}

/// [`enqueue`] with an explicit size limit in bytes.
pub async fn enqueue_bounded(
    conn: &mut PgConnection,
    topic: Topic,
    event: &CloudEvent,
    limit: usize,
) -> Result<(), EnqueueError> {
    let (traceparent, tracestate) = if event.traceparent.is_some() {
        (event.traceparent.clone(), event.tracestate.clone())
    } else {
        let mut trace = slipway_telemetry::current_context();
        (trace.remove("traceparent"), trace.remove("tracestate"))
    };
    let added: usize = [("traceparent", &traceparent), ("tracestate", &tracestate)]
        .iter()
        .filter(|_| event.traceparent.is_none())
        .filter_map(|(name, value)| value.as_ref().map(|v| name.len() + v.len()))
        .sum();
    let size = event_size(event) + added;
    if size > limit {
        return Err(EnqueueError::TooLarge {
            event_type: event.ty.clone(),
            event_id: event.id,
            size,
            limit,
        });
    }
    sqlx::query(
        "INSERT INTO outbox (event_id, topic, event_key, event_type, source, subject, time, \
         traceparent, tracestate, data, project) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(event.id)
    .bind(topic.base())
    .bind(event.key)
    .bind(&event.ty)
    .bind(&event.source)
    .bind(&event.subject)
    .bind(event.time)
    .bind(&traceparent)
    .bind(&tracestate)
    .bind(&event.data)
    .bind(&event.project)
    .execute(&mut *conn)
    .await?;
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(CHANNEL)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
