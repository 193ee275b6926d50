//! The relay: publishes outbox rows in order and marks them published.
//!
//! Only one relay per schema publishes at a time (a transaction-scoped advisory lock), which
//! keeps events in insertion order even with several replicas; the others wait for their turn.
//! Rows are marked published only after the broker acknowledged them.
//!
//! A failure is either *transient* (broker or database unreachable, timeouts: the pass stops
//! and is retried with backoff, forever) or *permanent* (the row itself can never be published:
//! too large, unknown or invalid topic, unsignable). A permanently failing row holds back only
//! the later rows of its own key, for at most `dead_after` passes; then it moves to
//! `outbox_dead` ([`crate::dead`]) and its key continues.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::FutureExt;
use prometheus::{IntCounter, Registry};
use slipway_events::{CloudEvent, Topic};
use slipway_ids::{EventId, ProjectName, ServiceId};
use slipway_kafka::{Delivery, EventProducer};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use crate::CHANNEL;

/// Relay counters: `slipway_outbox_published_total`, `slipway_outbox_publish_errors_total`,
/// `slipway_outbox_dead_lettered_total` (alert on any increase: an event was not published).
#[derive(Clone)]
pub struct RelayMetrics {
    published: IntCounter,
    errors: IntCounter,
    dead_lettered: IntCounter,
}

impl RelayMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let published = IntCounter::new("outbox_published_total", "Outbox events published")?;
        let errors = IntCounter::new(
            "outbox_publish_errors_total",
            "Failed outbox publish attempts",
        )?;
        let dead_lettered = IntCounter::new(
            "outbox_dead_lettered_total",
            "Outbox events moved to outbox_dead after permanent publish failures",
        )?;
        registry.register(Box::new(published.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(dead_lettered.clone()))?;
        Ok(Self {
            published,
            errors,
            dead_lettered,
        })
    }

    /// Events dead-lettered so far by this process.
    pub fn dead_lettered(&self) -> u64 {
        self.dead_lettered.get()
    }

    /// Failed relay passes so far (transient or permanent).
    pub fn errors(&self) -> u64 {
        self.errors.get()
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
    attempts: i32,
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

impl RelayError {
    /// Whether this row can never be published as it is, however often it is retried.
    pub fn is_permanent(&self) -> bool {
        use rdkafka::types::RDKafkaErrorCode as Code;
        use slipway_kafka::PublishError;
        match self {
            RelayError::Database(_) => false,
            RelayError::UnknownTopic(_) => true,
            RelayError::Publish(PublishError::Sign { .. }) => true,
            RelayError::Publish(PublishError::Create(_)) => false,
            RelayError::Publish(PublishError::Send { source, .. }) => matches!(
                source.rdkafka_error_code(),
                Some(
                    Code::MessageSizeTooLarge
                        | Code::InvalidMessageSize
                        | Code::MessageBatchTooLarge
                        | Code::InvalidMessage
                        | Code::InvalidRecord
                        | Code::InvalidTopic
                        | Code::InvalidArgument
                        | Code::BadMessage
                        | Code::KeySerialization
                        | Code::ValueSerialization
                )
            ),
        }
    }
}

/// Publishes a schema's outbox.
pub struct Relay {
    pool: PgPool,
    /// Replaced by a fresh one when it can no longer send (fenced after a broker hang).
    producer: std::sync::Mutex<EventProducer>,
    metrics: RelayMetrics,
    /// Rows per transaction.
    batch: i64,
    /// Fallback poll period, should a notification be missed.
    poll: Duration,
    /// Published rows older than this are deleted (they only serve debugging by then).
    retention: Duration,
    /// Inbox records older than this are deleted: no topic keeps an event that long.
    inbox_retention: Duration,
    /// Passes a row may fail permanently before it moves to `outbox_dead`.
    dead_after: i32,
}

impl Relay {
    pub fn new(pool: PgPool, producer: EventProducer, metrics: RelayMetrics) -> Self {
        Self {
            pool,
            producer: std::sync::Mutex::new(producer),
            metrics,
            batch: 100,
            poll: Duration::from_millis(500),
            retention: Duration::from_secs(7 * 24 * 3600),
            inbox_retention: Duration::from_secs(30 * 24 * 3600),
            dead_after: 3,
        }
    }

    /// Sets how many passes a row may fail for a permanent reason before it is dead-lettered
    /// (at least 1; default 3: a permanent error is rarely a fluke, but a broker restarting
    /// with another configuration can answer oddly once).
    pub fn dead_after(self, attempts: u32) -> Self {
        Self {
            dead_after: i32::try_from(attempts.max(1)).unwrap_or(i32::MAX),
            ..self
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
             traceparent, tracestate, data, project, attempts FROM outbox \
             WHERE published_at IS NULL ORDER BY seq LIMIT $1",
        )
        .bind(self.batch)
        .fetch_all(&mut *tx)
        .await?;
        let producer = self
            .producer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut outcome = Outcome::default();
        // Phase 1: every row handed to the producer in seq order, without waiting: the
        // producer keeps that order per partition, and the batch travels in few requests.
        let mut sent = Vec::with_capacity(rows.len());
        for row in rows {
            if outcome.held.contains(&row.event_key) {
                continue;
            }
            let failed = Failed::of(&row);
            match self.enqueue(&producer, row) {
                Ok(delivery) => sent.push((failed, delivery)),
                Err(e) if e.is_permanent() => outcome.refused(&mut tx, failed, e, self).await?,
                Err(e) => {
                    // Transient (the queue is full, the producer is gone): the later rows
                    // would fail alike, and rows of this key must not overtake it.
                    outcome.failure = Some(e);
                    break;
                }
            }
        }
        // Phase 2: the acknowledgements, in the same order. A row acknowledged after one that
        // failed is on the broker all the same, so it is marked published.
        for (failed, delivery) in sent {
            match delivery.acknowledged().await {
                Ok((partition, offset)) => {
                    tracing::debug!(event.id = %failed.event_id, event.r#type = %failed.event_type,
                        partition, offset, "published");
                    outcome.published.push(failed.seq);
                }
                Err(e) => {
                    self.renew_if_stuck(&producer, &e);
                    let e = RelayError::from(e);
                    if e.is_permanent() {
                        outcome.refused(&mut tx, failed, e, self).await?;
                    } else {
                        outcome.failure.get_or_insert(e);
                    }
                }
            }
        }
        let Outcome {
            published,
            dead,
            failure,
            ..
        } = outcome;
        if !published.is_empty() {
            sqlx::query("UPDATE outbox SET published_at = now() WHERE seq = ANY($1)")
                .bind(&published)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.metrics.published.inc_by(published.len() as u64);
        for (event_id, event_type, key, attempts, reason) in dead {
            self.metrics.dead_lettered.inc();
            tracing::error!(
                event.id = %event_id,
                event.r#type = %event_type,
                event.key = %key,
                attempts,
                reason = %reason,
                "outbox event moved to outbox_dead: it is skipped (later events of its key are \
                 published) until an admin requeues it"
            );
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(published.len()),
        }
    }

    /// Swaps a producer that can no longer send for a fresh one (the next pass uses it).
    fn renew_if_stuck(&self, producer: &EventProducer, error: &slipway_kafka::PublishError) {
        let slipway_kafka::PublishError::Send { source, .. } = error else {
            return;
        };
        if !producer.is_stuck(source) {
            return;
        }
        match producer.fresh() {
            Ok(fresh) => {
                tracing::warn!(error = %source, "the producer can no longer send; using a new one");
                *self
                    .producer
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
            }
            Err(e) => tracing::warn!(error = %e, "cannot create a new producer"),
        }
    }

    /// Hands a row to the producer ([`EventProducer::enqueue`]).
    fn enqueue(&self, producer: &EventProducer, row: Row) -> Result<Delivery, RelayError> {
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
        producer.enqueue(topic, &event).map_err(|e| {
            self.renew_if_stuck(producer, &e);
            e.into()
        })
    }
}

/// What a row that may fail needs to be recorded as failed.
struct Failed {
    seq: i64,
    event_id: EventId,
    event_type: String,
    key: ServiceId,
    attempts: i32,
}

impl Failed {
    fn of(row: &Row) -> Self {
        Self {
            seq: row.seq,
            event_id: row.event_id,
            event_type: row.event_type.clone(),
            key: row.event_key,
            attempts: row.attempts,
        }
    }
}

/// One pass's results, written in its transaction.
#[derive(Default)]
struct Outcome {
    published: Vec<i64>,
    /// Keys whose oldest pending row failed permanently this pass: their later rows wait.
    held: HashSet<ServiceId>,
    /// Dead-lettered this pass: (event id, type, key, attempts, reason), reported on commit.
    dead: Vec<(EventId, String, ServiceId, i32, String)>,
    /// The pass's first error, returned once the rest is recorded.
    failure: Option<RelayError>,
}

impl Outcome {
    /// Records a permanent failure: one more attempt, or the row moves to `outbox_dead` once
    /// it has failed `dead_after` times (then its key is not held: its next rows go on).
    async fn refused(
        &mut self,
        tx: &mut sqlx::PgConnection,
        row: Failed,
        error: RelayError,
        relay: &Relay,
    ) -> Result<(), sqlx::Error> {
        let attempts = row.attempts.saturating_add(1);
        let reason = error.to_string();
        if attempts >= relay.dead_after {
            crate::dead::move_to_dead(tx, row.seq, attempts, &reason).await?;
            self.dead
                .push((row.event_id, row.event_type, row.key, attempts, reason));
        } else {
            sqlx::query("UPDATE outbox SET attempts = $2, last_error = $3 WHERE seq = $1")
                .bind(row.seq)
                .bind(attempts)
                .bind(&reason)
                .execute(&mut *tx)
                .await?;
            self.held.insert(row.key);
            self.failure.get_or_insert(error);
        }
        Ok(())
    }
}
