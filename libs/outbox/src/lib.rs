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
//! Both tables live in the owning service's schema; [`migrate`] creates them.

pub mod inbox;
mod relay;

pub use relay::{Relay, RelayMetrics};
use slipway_events::{CloudEvent, Topic};
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

/// Adds `event` to the outbox inside the caller's transaction. It is published only if that
/// transaction commits.
pub async fn enqueue(
    conn: &mut PgConnection,
    topic: Topic,
    event: &CloudEvent,
) -> Result<(), sqlx::Error> {
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
    .bind(&event.traceparent)
    .bind(&event.tracestate)
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
