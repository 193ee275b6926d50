//! The consumer runner: at-least-once, in order per partition, poison messages dead-lettered.
//!
//! States: *consuming* (poll, handle, store the offset) → *draining* (the cancellation token
//! fired: finish the message in hand, stop polling) → *done* (stored offsets committed
//! synchronously, the group left). Auto-commit only commits offsets that were *stored*, and an
//! offset is stored only once its message was handled or dead-lettered, so a crash at any point
//! redelivers, never skips. Handlers make redelivery harmless by recording event ids in an inbox
//! in the same transaction as their effect (see `slipway-outbox`).
//!
//! Before any handler sees an event its signature and its signer's ownership of its type are
//! checked ([`crate::signing`]); a record failing that is dead-lettered with the reason, never
//! handed to the handler and never retried.

use std::collections::HashMap;

use prometheus::{IntCounterVec, Opts, Registry};
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use slipway_events::{CloudEvent, Topic};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::record::{event_of, verify};
use crate::signing::Verifier;
use crate::{EventProducer, KafkaSettings};

/// What a handler did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Its effect was applied.
    Applied,
    /// It had been applied before (its id was in the inbox); nothing done.
    Duplicate,
    /// Not an event this handler acts on.
    Ignored,
}

/// Why a handler could not apply an event.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Might succeed later (database down, a dependency timed out): retried with backoff.
    #[error("{0:#}")]
    Retryable(anyhow::Error),
    /// Will never succeed (malformed payload): dead-lettered at once.
    #[error("{0:#}")]
    Permanent(anyhow::Error),
}

/// Applies events. Called once per message, in partition order; must be idempotent.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        event: &CloudEvent,
    ) -> impl Future<Output = Result<Handled, HandlerError>> + Send;
}

/// Why the runner stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("cannot create the consumer for group `{group}`: {source}")]
    Create {
        group: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("cannot subscribe group `{group}` to {topics:?}: {source}")]
    Subscribe {
        group: String,
        topics: Vec<String>,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("cannot dead-letter {topic}/{partition}@{offset}: {source}")]
    DeadLetter {
        topic: String,
        partition: i32,
        offset: i64,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("cannot store the offset of {topic}/{partition}@{offset}: {source}")]
    StoreOffset {
        topic: String,
        partition: i32,
        offset: i64,
        #[source]
        source: rdkafka::error::KafkaError,
    },
}

/// Counters for every consumer of a process: `slipway_events_consumed_total`.
#[derive(Clone)]
pub struct ConsumerMetrics {
    consumed: IntCounterVec,
}

impl ConsumerMetrics {
    /// Registers the counters on `registry` (once per process; clone the result for more
    /// runners).
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let consumed = IntCounterVec::new(
            Opts::new(
                "events_consumed_total",
                "Events consumed, by consumer group, topic, CloudEvents type and outcome \
                 (applied, duplicate, ignored, dead_lettered, rejected: unsigned or not its \
                 owner's, dead-lettered too)",
            ),
            &["group", "topic", "type", "outcome"],
        )?;
        registry.register(Box::new(consumed.clone()))?;
        Ok(Self { consumed })
    }
}

/// Runs one consumer group member over some topics with one handler.
pub struct ConsumerRunner<H> {
    settings: KafkaSettings,
    group: String,
    topics: Vec<Topic>,
    handler: H,
    dead_letters: EventProducer,
    metrics: ConsumerMetrics,
    verifier: Verifier,
}

impl<H: Handler> ConsumerRunner<H> {
    /// `group` is the consumer group id (one per service and purpose, e.g. `slipway-builder`);
    /// `verifier` decides which records reach `handler`.
    pub fn new(
        settings: KafkaSettings,
        group: impl Into<String>,
        topics: &[Topic],
        handler: H,
        dead_letters: EventProducer,
        metrics: ConsumerMetrics,
        verifier: Verifier,
    ) -> Self {
        Self {
            settings,
            group: group.into(),
            topics: topics.to_vec(),
            handler,
            dead_letters,
            metrics,
            verifier,
        }
    }

    fn consumer(&self) -> Result<StreamConsumer, ConsumerError> {
        let mut config = self.settings.client_config();
        if let Some(instance) = self.settings.group_instance_id(&self.group) {
            config.set("group.instance.id", instance);
        }
        config
            .set("group.id", &self.group)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            .set("fetch.wait.max.ms", self.settings.fetch_wait_ms.to_string())
            .create()
            .map_err(|source| ConsumerError::Create {
                group: self.group.clone(),
                source,
            })
    }

    /// Consumes until `cancel` fires, then drains and commits.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), ConsumerError> {
        let consumer = self.consumer()?;
        let names: Vec<String> = self
            .topics
            .iter()
            .map(|t| self.settings.topics().name(*t))
            .collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        consumer
            .subscribe(&refs)
            .map_err(|source| ConsumerError::Subscribe {
                group: self.group.clone(),
                topics: names.clone(),
                source,
            })?;
        tracing::info!(group = %self.group, topics = ?names, "consuming");

        let result = self.consume(&consumer, &cancel).await;
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => {}
            // Nothing was stored since the last commit.
            Err(rdkafka::error::KafkaError::ConsumerCommit(
                rdkafka::types::RDKafkaErrorCode::NoOffset,
            )) => {}
            Err(e) => tracing::warn!(group = %self.group, error = %e, "final commit failed"),
        }
        consumer.unsubscribe();
        tracing::info!(group = %self.group, "consumer stopped");
        result
    }

    async fn consume(
        &self,
        consumer: &StreamConsumer,
        cancel: &CancellationToken,
    ) -> Result<(), ConsumerError> {
        loop {
            let message = tokio::select! {
                biased;
                () = cancel.cancelled() => return Ok(()),
                m = consumer.recv() => m,
            };
            let message = match message {
                Ok(m) => m,
                Err(e) => {
                    // librdkafka reconnects by itself; pause so a broker outage is not a hot loop.
                    tracing::warn!(group = %self.group, error = %e, "poll error");
                    tokio::select! {
                        () = cancel.cancelled() => return Ok(()),
                        () = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                    }
                    continue;
                }
            };
            let Some((ty, outcome)) = self.process(&message, cancel).await? else {
                // Cancelled while retrying: leave the offset unstored so it is redelivered.
                return Ok(());
            };
            consumer
                .store_offset_from_message(&message)
                .map_err(|source| ConsumerError::StoreOffset {
                    topic: message.topic().to_owned(),
                    partition: message.partition(),
                    offset: message.offset(),
                    source,
                })?;
            self.metrics
                .consumed
                .with_label_values(&[self.group.as_str(), message.topic(), ty.as_str(), outcome])
                .inc();
        }
    }

    /// Handles one message: `Some((type, outcome))` when done with it, `None` if cancelled.
    async fn process(
        &self,
        message: &BorrowedMessage<'_>,
        cancel: &CancellationToken,
    ) -> Result<Option<(String, &'static str)>, ConsumerError> {
        let event = match event_of(message) {
            Ok(event) => event,
            Err(e) => {
                let reason = format!("not a valid slipway CloudEvent: {e}");
                self.dead_letter(message, &reason, 0).await?;
                return Ok(Some(("invalid".into(), "dead_lettered")));
            }
        };
        if let Err(rejection) = verify(&self.verifier, message) {
            let reason = format!("rejected: {rejection}");
            tracing::warn!(
                group = %self.group,
                topic = message.topic(),
                event.id = %event.id,
                event.r#type = %event.ty,
                event.source = %event.source,
                reason = %reason,
                "dead-lettering an event that is not its owner's"
            );
            self.dead_letter(message, &reason, 0).await?;
            // Anyone can write any type on the broker: only known types become metric labels.
            let label = match slipway_events::trust::owner(&event.ty) {
                Some(_) => event.ty,
                None => "unknown".to_owned(),
            };
            return Ok(Some((label, "rejected")));
        }
        let span = tracing::info_span!(
            "consume",
            group = %self.group,
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            event.id = %event.id,
            event.r#type = %event.ty,
        );
        let carrier: HashMap<String, String> = [
            ("traceparent", &event.traceparent),
            ("tracestate", &event.tracestate),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k.to_owned(), v)))
        .collect();
        slipway_telemetry::set_parent(&span, &carrier);

        let mut attempt = 1;
        loop {
            let result = self.handler.handle(&event).instrument(span.clone()).await;
            let error = match result {
                Ok(handled) => {
                    let outcome = match handled {
                        Handled::Applied => "applied",
                        Handled::Duplicate => "duplicate",
                        // Any producer can send any type; only the handled ones become labels.
                        Handled::Ignored => return Ok(Some(("other".into(), "ignored"))),
                    };
                    return Ok(Some((event.ty, outcome)));
                }
                Err(e) => e,
            };
            let give_up = match &error {
                HandlerError::Permanent(_) => true,
                HandlerError::Retryable(_) => attempt >= self.settings.max_attempts,
            };
            if give_up {
                let reason = format!("{error}");
                span.in_scope(
                    || tracing::error!(attempt, reason = %reason, "dead-lettering event"),
                );
                self.dead_letter(message, &reason, attempt).await?;
                return Ok(Some((event.ty, "dead_lettered")));
            }
            let delay = self.settings.backoff(attempt);
            span.in_scope(
                || tracing::warn!(attempt, ?delay, error = %error, "handler failed; retrying"),
            );
            tokio::select! {
                () = cancel.cancelled() => return Ok(None),
                () = tokio::time::sleep(delay) => {}
            }
            attempt += 1;
        }
    }

    /// Copies the record, headers and all, to the dead-letter topic with why and where from.
    async fn dead_letter(
        &self,
        message: &BorrowedMessage<'_>,
        reason: &str,
        attempts: u32,
    ) -> Result<(), ConsumerError> {
        let mut headers = OwnedHeaders::new();
        if let Some(original) = message.headers() {
            for h in original.iter() {
                headers = headers.insert(h);
            }
        }
        let extra = [
            ("slipway_dlq_reason", reason.to_owned()),
            ("slipway_dlq_group", self.group.clone()),
            ("slipway_dlq_topic", message.topic().to_owned()),
            ("slipway_dlq_partition", message.partition().to_string()),
            ("slipway_dlq_offset", message.offset().to_string()),
            ("slipway_dlq_attempts", attempts.to_string()),
        ];
        for (key, value) in &extra {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        let topic = self.settings.topics().name(Topic::DeadLetter);
        self.dead_letters
            .send_bytes(&topic, message.key(), message.payload(), headers)
            .await
            .map_err(|source| ConsumerError::DeadLetter {
                topic: message.topic().to_owned(),
                partition: message.partition(),
                offset: message.offset(),
                source,
            })
    }
}
