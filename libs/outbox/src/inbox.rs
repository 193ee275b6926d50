//! The inbox: which events a consumer has applied.

use slipway_events::CloudEvent;
use sqlx::PgConnection;

/// Records that `consumer` applies `event`, inside the caller's transaction.
///
/// Returns `true` the first time, `false` if the event was applied before: the caller then
/// skips its effect (and may commit or roll back; nothing was written).
pub async fn record(
    conn: &mut PgConnection,
    consumer: &str,
    event: &CloudEvent,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO inbox (consumer, event_id, event_type) VALUES ($1, $2, $3) \
         ON CONFLICT (consumer, event_id) DO NOTHING",
    )
    .bind(consumer)
    .bind(event.id)
    .bind(&event.ty)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Applies `effect` once per event for `consumer`: records the event id and runs the effect in
/// one transaction, or does nothing if the id was recorded before. Database errors are
/// classified ([`slipway_kafka::HandlerError::from_sqlx`]): an outage is retried (the consumer
/// runner backs off and waits it out), a refusal of the event's data (a constraint) is
/// dead-lettered rather than retried for ever.
pub async fn apply_once<F>(
    pool: &sqlx::PgPool,
    consumer: &str,
    event: &CloudEvent,
    effect: F,
) -> Result<slipway_kafka::Handled, slipway_kafka::HandlerError>
where
    F: for<'c> FnOnce(
        &'c mut PgConnection,
    ) -> futures::future::BoxFuture<'c, Result<(), sqlx::Error>>,
{
    use slipway_kafka::{Handled, HandlerError};
    let retry = HandlerError::from_sqlx;
    let mut tx = pool.begin().await.map_err(retry)?;
    if !record(&mut tx, consumer, event).await.map_err(retry)? {
        return Ok(Handled::Duplicate);
    }
    effect(&mut tx).await.map_err(retry)?;
    tx.commit().await.map_err(retry)?;
    Ok(Handled::Applied)
}
