//! `outbox_dead`: outbox rows the relay gave up on.
//!
//! A row lands here when publishing it failed for a permanent reason (the broker refuses its
//! size, its topic is unknown, it cannot be signed) on several passes in a row. It is moved in
//! the relay's transaction (inserted here, deleted from `outbox`), so it is never both pending
//! and dead. Later rows of the same key are then published: the dead event is *skipped*, and
//! consumers never see it unless an admin fixes the cause (a broker limit, a topic) and calls
//! [`requeue_dead`], which puts it back at the end of the outbox (after the rows of its key that
//! overtook it, so its original order is lost; the event id is unchanged).

use chrono::{DateTime, Utc};
use slipway_ids::{EventId, ServiceId};
use sqlx::{PgConnection, PgPool};

use crate::CHANNEL;

/// One dead-lettered outbox row, as an admin sees it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeadRow {
    /// Its place in the outbox when it died.
    pub seq: i64,
    pub event_id: EventId,
    pub topic: String,
    pub event_key: ServiceId,
    pub event_type: String,
    /// Publish attempts that failed for a permanent reason.
    pub attempts: i32,
    /// Why the relay gave up (the last error).
    pub reason: String,
    pub moved_at: DateTime<Utc>,
}

/// Moves outbox row `seq` to `outbox_dead` after `attempts` failures, the last for `reason`,
/// inside the relay's transaction. Returns whether a row was moved.
pub(crate) async fn move_to_dead(
    conn: &mut PgConnection,
    seq: i64,
    attempts: i32,
    reason: &str,
) -> Result<bool, sqlx::Error> {
    let moved = sqlx::query(
        "WITH gone AS (DELETE FROM outbox WHERE seq = $1 RETURNING *) \
         INSERT INTO outbox_dead (seq, event_id, topic, event_key, event_type, source, subject, \
           time, traceparent, tracestate, data, created_at, published_at, project, attempts, \
           last_error, reason) \
         SELECT seq, event_id, topic, event_key, event_type, source, subject, time, traceparent, \
           tracestate, data, created_at, published_at, project, $3, last_error, $2 \
         FROM gone",
    )
    .bind(seq)
    .bind(reason)
    .bind(attempts)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(moved == 1)
}

/// The dead-lettered rows, oldest first, at most `limit`.
pub async fn dead_letters(pool: &PgPool, limit: i64) -> Result<Vec<DeadRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT seq, event_id, topic, event_key, event_type, attempts, reason, moved_at \
         FROM outbox_dead ORDER BY seq LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Moves dead event `id` back to the outbox (a new `seq`, attempts reset) for the relay to try
/// again, e.g. after the broker's limit was raised. Returns `false` if no such dead row exists.
pub async fn requeue_dead(pool: &PgPool, id: EventId) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let moved = sqlx::query(
        "WITH back AS (DELETE FROM outbox_dead WHERE event_id = $1 RETURNING *) \
         INSERT INTO outbox (event_id, topic, event_key, event_type, source, subject, time, \
           traceparent, tracestate, data, created_at, project) \
         SELECT event_id, topic, event_key, event_type, source, subject, time, traceparent, \
           tracestate, data, created_at, project FROM back",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if moved == 1 {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(CHANNEL)
            .execute(&mut *tx)
            .await?;
        tracing::info!(event.id = %id, "dead outbox row requeued");
    }
    tx.commit().await?;
    Ok(moved == 1)
}
