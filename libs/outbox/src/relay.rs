//! The relay: publishes outbox rows in order and marks them published.
//!
//! Only one relay per schema publishes at a time (a transaction-scoped advisory lock), which
//! keeps events in insertion order even with several replicas; the others wait for their turn.
//! Rows are marked published only after the broker acknowledged them.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::FutureExt;
use prometheus::{IntCounter, Registry};
use slipway_events::{CloudEvent, Topic};
use slipway_ids::{EventId, ProjectName, ServiceId};
use slipway_kafka::EventProducer;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use crate::CHANNEL;

/// Relay counters: `slipway_outbox_published_total`, `slipway_outbox_publish_errors_total`.
#[derive(Clone)]
pub struct RelayMetrics {
    published: IntCounter,
    errors: IntCounter,
}

impl RelayMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let published = IntCounter::new("outbox_published_total", "Outbox events published")?;
        let errors = IntCounter::new(
            "outbox_publish_errors_total",
            "Failed outbox publish attempts",
        )?;
        registry.register(Box::new(published.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        Ok(Self { published, errors })
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    seq: i64,
    event_id: EventId,
    topic: String,
    event_key: ServiceId,
    event_type: String,
    source: String,
    subject: Option<String>,
    time: DateTime<Utc>,
    traceparent: Option<String>,
    tracestate: Option<String>,
    data: serde_json::Value,
    project: Option<ProjectName>,
}

/// Why a relay pass failed (it is retried after a pause).
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("unknown topic `{0}` in the outbox")]
    UnknownTopic(String),
    #[error(transparent)]
    Publish(#[from] slipway_kafka::PublishError),
}

/// Publishes a schema's outbox.
pub struct Relay {
    pool: PgPool,
    producer: EventProducer,
    metrics: RelayMetrics,
    /// Rows per transaction.
    batch: i64,
    /// Fallback poll period, should a notification be missed.
    poll: Duration,
    /// Published rows older than this are deleted (they only serve debugging by then).
    retention: Duration,
    /// Inbox records older than this are deleted: no topic keeps an event that long.
    inbox_retention: Duration,
}

impl Relay {
    pub fn new(pool: PgPool, producer: EventProducer, metrics: RelayMetrics) -> Self {
        Self {
            pool,
            producer,
            metrics,
            batch: 100,
            poll: Duration::from_millis(500),
            retention: Duration::from_secs(7 * 24 * 3600),
            inbox_retention: Duration::from_secs(30 * 24 * 3600),
        }
    }

    /// Runs until `cancel` fires; a pass in progress completes first.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), sqlx::Error> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(CHANNEL).await?;
        let mut failures = 0u32;
        let mut prune = tokio::time::interval(Duration::from_secs(600));
        loop {
            if prune.tick().now_or_never().is_some() {
                self.prune().await;
            }
            match self.pass().await {
                Ok(n) if n as i64 == self.batch => continue, // more may be waiting
                Ok(_) => failures = 0,
                Err(e) => {
                    failures += 1;
                    self.metrics.errors.inc();
                    tracing::warn!(error = %e, failures, "outbox relay pass failed");
                }
            }
            let pause = if failures == 0 {
                self.poll
            } else {
                Duration::from_millis(200 * 2u64.pow(failures.min(6)))
            };
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                n = listener.recv() => {
                    if let Err(e) = n {
                        tracing::warn!(error = %e, "outbox listener error");
                        tokio::time::sleep(pause).await;
                    }
                }
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Deletes published outbox rows past their retention, and inbox records old enough that
    /// their event can no longer be redelivered (far beyond any topic's retention). Failures
    /// only delay the clean-up. Returns the rows deleted from each.
    pub async fn prune(&self) -> (u64, u64) {
        let mut deleted = (0, 0);
        for (i, (sql, keep)) in [
            (
                "DELETE FROM outbox WHERE published_at < now() - make_interval(secs => $1)",
                self.retention,
            ),
            (
                "DELETE FROM inbox WHERE applied_at < now() - make_interval(secs => $1)",
                self.inbox_retention,
            ),
        ]
        .into_iter()
        .enumerate()
        {
            match sqlx::query(sql)
                .bind(keep.as_secs_f64())
                .execute(&self.pool)
                .await
            {
                Ok(done) => {
                    let rows = done.rows_affected();
                    if i == 0 {
                        deleted.0 = rows
                    } else {
                        deleted.1 = rows
                    }
                    if rows > 0 {
                        tracing::info!(
                            rows,
                            table = if i == 0 { "outbox" } else { "inbox" },
                            "pruned"
                        );
                    }
                }
                Err(e) => tracing::warn!(error = %e, "prune failed"),
            }
        }
        deleted
    }

    /// Publishes up to one batch; returns how many rows were published.
    pub async fn pass(&self) -> Result<usize, RelayError> {
        let mut tx = self.pool.begin().await?;
        let locked: bool = sqlx::query_scalar(
            "SELECT pg_try_advisory_xact_lock(hashtext(current_schema() || '.outbox-relay'))",
        )
        .fetch_one(&mut *tx)
        .await?;
        if !locked {
            return Ok(0);
        }
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT seq, event_id, topic, event_key, event_type, source, subject, time, \
             traceparent, tracestate, data, project FROM outbox WHERE published_at IS NULL \
             ORDER BY seq LIMIT $1",
        )
        .bind(self.batch)
        .fetch_all(&mut *tx)
        .await?;
        let mut published = Vec::with_capacity(rows.len());
        let mut failure = None;
        for row in rows {
            match self.publish(row).await {
                Ok(seq) => published.push(seq),
                Err(e) => {
                    // Stop at the first failure: later rows must not overtake it.
                    failure = Some(e);
                    break;
                }
            }
        }
        if !published.is_empty() {
            sqlx::query("UPDATE outbox SET published_at = now() WHERE seq = ANY($1)")
                .bind(&published)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.metrics.published.inc_by(published.len() as u64);
        match failure {
            Some(e) => Err(e),
            None => Ok(published.len()),
        }
    }

    async fn publish(&self, row: Row) -> Result<i64, RelayError> {
        let topic = Topic::ALL
            .into_iter()
            .find(|t| t.base() == row.topic)
            .ok_or_else(|| RelayError::UnknownTopic(row.topic.clone()))?;
        let event = CloudEvent {
            id: row.event_id,
            source: row.source,
            ty: row.event_type,
            subject: row.subject,
            time: row.time,
            key: row.event_key,
            project: row.project,
            traceparent: row.traceparent,
            tracestate: row.tracestate,
            data: row.data,
        };
        let (partition, offset) = self.producer.publish(topic, &event).await?;
        tracing::debug!(event.id = %event.id, event.r#type = %event.ty, partition, offset, "published");
        Ok(row.seq)
    }
}
